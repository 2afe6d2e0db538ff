"""A plain PyTorch training loop with resumable checkpoints, shared by in-process backends.

AdamW, a transformers learning-rate schedule, gradient accumulation and clipping, seeded per-epoch
shuffling, and checkpoints holding the weights (through a backend-supplied ``save_weights``, so LoRA
backends save adapters only) plus optimizer, scheduler, RNG state and the loss history. Resuming
restores all of it and skips the micro-batches already seen, so the loss curve continues.
A Ctrl-C saves a checkpoint before returning, so no finished step is lost.

With an ``accelerator`` (Hugging Face Accelerate) the same loop runs data-parallel: the model, optimizer
and data loader go through ``accelerator.prepare`` (every rank gets its own shard of each epoch's batches),
backward, clipping and mixed precision go through the accelerator, the logged loss is the mean over the
ranks, and checkpoints keep the same layout, written by the main process (``recipe/accelerated.py``). Steps
are counted from the global batch (per-device batch x processes x accumulation). Without one, nothing
changes.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from whisper_tune.config.schema import TrainingConfig
from whisper_tune.errors import ConfigError
from whisper_tune.recipe.collator import SpeechSeq2SeqCollator
from whisper_tune.recipe.progress import Reporter
from whisper_tune.recipe.selection import BestCheckpoint

STATE_FILE = "trainer_state.json"
CHECKPOINT_RE = re.compile(r"^step-(\d+)$")


@dataclass
class LoopResult:
    steps: int = 0
    samples: int = 0
    seconds: float = 0.0
    log_history: list[dict[str, float]] = field(default_factory=list)
    checkpoints: list[Path] = field(default_factory=list)
    interrupted: bool = False
    #: The trained model as the accelerator wrapped it (DDP / FSDP / DeepSpeed); None without one.
    prepared_model: Any = None


def total_steps(cfg: TrainingConfig, num_samples: int, drop_last: bool = False, world_size: int = 1) -> int:
    """Optimizer steps: ``max_steps`` if set, else epochs over the data.

    With ``world_size`` data-parallel processes one batch is ``batch_size * world_size`` samples, so an
    epoch is ``num_samples / (batch_size * world_size)`` micro-batches per process."""
    if cfg.max_steps is not None:
        return cfg.max_steps
    per_batch = cfg.batch_size * world_size
    batches = num_samples // per_batch if drop_last else math.ceil(num_samples / per_batch)
    return max(1, math.ceil(cfg.num_epochs * batches / cfg.gradient_accumulation_steps))


def list_checkpoints(checkpoint_dir: Path) -> list[Path]:
    found = [
        p for p in checkpoint_dir.glob("step-*") if CHECKPOINT_RE.match(p.name) and (p / STATE_FILE).is_file()
    ]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def default_save_weights(model: Any, directory: Path) -> None:
    model.save_pretrained(directory, safe_serialization=True)


def default_load_weights(model: Any, directory: Path) -> None:
    from safetensors.torch import load_file

    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"checkpoint {directory} has no weights (*.safetensors)")
    state: dict[str, Any] = {}
    for f in files:
        state.update(load_file(f))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied weights (proj_out = embed_tokens) are stored once and legitimately "missing".
    real_missing = [k for k in missing if not k.endswith("proj_out.weight")]
    if real_missing or unexpected:
        raise ConfigError(
            f"checkpoint {directory} does not match the model "
            f"(missing {real_missing[:3]}, unexpected {list(unexpected)[:3]})"
        )


def save_rng(path: Path) -> None:
    """Python, NumPy and torch RNG states (restored on resume so the run continues identically)."""
    import torch

    torch.save(
        {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.random.get_rng_state()},
        path,
    )


def restore_rng(path: Path) -> None:
    import torch

    rng = torch.load(path, weights_only=False)
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.random.set_rng_state(rng["torch"])


def write_state(directory: Path, step: int, history: list[dict[str, float]], **extra: Any) -> None:
    (directory / STATE_FILE).write_text(
        json.dumps({"step": step, "log_history": history, **extra}, indent=1), encoding="utf-8"
    )


def read_state(checkpoint: Path) -> tuple[int, list[dict[str, float]]]:
    """(step, log history) of a checkpoint; a ConfigError if it cannot be read."""
    try:
        state = json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot resume from {checkpoint}: {exc}") from None
    return int(state["step"]), list(state["log_history"])


def publish_checkpoint(tmp: Path, target: Path, keep: int) -> list[Path]:
    """Move a finished ``.partial`` checkpoint into place and prune all but the newest ``keep``."""
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    for old in list_checkpoints(target.parent)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return list_checkpoints(target.parent)


@dataclass
class TrainLoop:
    model: Any
    dataset: Any
    collator: SpeechSeq2SeqCollator
    cfg: TrainingConfig
    checkpoint_dir: Path
    reporter: Reporter
    device: Any = "cpu"
    autocast: Callable[[], Any] = contextlib.nullcontext
    drop_last: bool = False
    save_weights: Callable[[Any, Path], None] = default_save_weights
    load_weights: Callable[[Any, Path], None] = default_load_weights
    num_workers: int = 0
    #: evaluation during training (eval.steps): best-checkpoint keeping and early stopping (plain loop)
    best: BestCheckpoint | None = None
    #: An ``accelerate.Accelerator``: data-parallel training through it (see the module docstring).
    accelerator: Any = None
    #: Called with every training batch before its forward pass (a diagnostics hook; accelerator path).
    on_batch: Callable[[dict[str, Any]], None] | None = None

    def run(self, resume_from: Path | None = None) -> LoopResult:
        if self.accelerator is not None:
            from whisper_tune.recipe.accelerated import run_accelerated

            return run_accelerated(self, resume_from)
        import torch
        from torch.utils.data import DataLoader, RandomSampler
        from transformers import get_scheduler

        cfg = self.cfg
        steps = total_steps(cfg, len(self.dataset), self.drop_last)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ConfigError("no trainable parameters: nothing would be learnt")
        optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        scheduler = get_scheduler(
            cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=steps
        )
        result = LoopResult()
        step = 0
        if resume_from is not None:
            step, result.log_history = self._restore(resume_from, optimizer, scheduler)
            self.reporter.info(f"resumed from {resume_from} at step {step}")
        batches_per_epoch = (
            len(self.dataset) // cfg.batch_size
            if self.drop_last
            else math.ceil(len(self.dataset) / cfg.batch_size)
        )
        if batches_per_epoch == 0:
            raise ConfigError(
                f"training.batch_size {cfg.batch_size} is larger than the {len(self.dataset)} "
                "training samples with drop_last"
            )
        micro = step * cfg.gradient_accumulation_steps
        self.model.train()
        window: list[float] = []
        start = time.perf_counter()
        bar = self.reporter.progress("train", total=steps, unit="step")
        bar.update(step)
        stop = False
        last_loss: float | None = None
        try:
            with bar:
                while step < steps and not stop:
                    epoch, skip = divmod(micro, batches_per_epoch)
                    generator = torch.Generator().manual_seed(cfg.seed + epoch)
                    loader = DataLoader(
                        self.dataset,
                        batch_size=cfg.batch_size,
                        sampler=RandomSampler(self.dataset, generator=generator),
                        collate_fn=self.collator,
                        drop_last=self.drop_last,
                        num_workers=self.num_workers,
                        # its own generator for the workers' base seed, which would otherwise be drawn from
                        # the global RNG and shift dropout after a mid-epoch resume
                        generator=torch.Generator().manual_seed(cfg.seed + epoch),
                    )
                    for index, batch in enumerate(loader):
                        if index < skip:
                            continue
                        batch = {k: v.to(self.device) for k, v in batch.items()}
                        with self.autocast():
                            loss = self.model(**batch).loss / cfg.gradient_accumulation_steps
                        loss.backward()
                        window.append(float(loss.detach()) * cfg.gradient_accumulation_steps)
                        result.samples += int(batch["labels"].shape[0])
                        micro += 1
                        if micro % cfg.gradient_accumulation_steps:
                            continue  # accumulation carries across an epoch boundary
                        if cfg.max_grad_norm is not None:
                            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                        optimizer.step()
                        scheduler.step()
                        optimizer.zero_grad(set_to_none=True)
                        step += 1
                        if step % cfg.logging_steps == 0 or step == steps:
                            record = {
                                "step": step,
                                "epoch": round(micro / batches_per_epoch, 4),
                                "loss": round(sum(window) / len(window), 5),
                                "learning_rate": scheduler.get_last_lr()[0],
                            }
                            result.log_history.append(record)
                            self.reporter.log_metrics(record)
                            window = []
                            last_loss = record["loss"]
                        bar.update(1, loss=last_loss)
                        if cfg.save_steps and step % cfg.save_steps == 0 and step < steps:
                            result.checkpoints = self._save(step, optimizer, scheduler, result.log_history)
                        if self.best is not None:
                            seen = len(self.best.history)
                            stop = self.best.after_step(self.model, step, steps)
                            for record in self.best.history[seen:]:
                                result.log_history.append(record)
                                self.reporter.log_metrics(record)
                            self.model.train()
                        if step >= steps or stop:
                            break
        except KeyboardInterrupt:
            result.interrupted = True
            self.reporter.warning(f"interrupted at step {step}; saving a checkpoint to resume from")
        result.seconds = time.perf_counter() - start
        result.steps = step
        if step > 0 and (result.interrupted or cfg.save_steps):
            result.checkpoints = self._save(step, optimizer, scheduler, result.log_history)
        if self.best is not None and not result.interrupted:
            self.best.restore_best(self.model, step)
        self.model.eval()
        return result

    def _save(self, step: int, optimizer: Any, scheduler: Any, history: list[dict[str, float]]) -> list[Path]:
        import torch

        target = self.checkpoint_dir / f"step-{step:06d}"
        tmp = self.checkpoint_dir / f".step-{step:06d}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        self.save_weights(self.model, tmp / "weights")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        save_rng(tmp / "rng.pt")
        write_state(tmp, step, history)
        kept = publish_checkpoint(tmp, target, self.cfg.save_total_limit)
        self.reporter.debug(f"saved checkpoint {target}")
        return kept

    def _restore(
        self, checkpoint: Path, optimizer: Any, scheduler: Any
    ) -> tuple[int, list[dict[str, float]]]:
        import torch

        step, history = read_state(checkpoint)
        self.load_weights(self.model, checkpoint / "weights")
        optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=True))
        scheduler.load_state_dict(torch.load(checkpoint / "scheduler.pt", weights_only=True))
        restore_rng(checkpoint / "rng.pt")
        return step, history
