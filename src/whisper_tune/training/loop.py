"""The one training loop, on Hugging Face Accelerate: one CPU process, one GPU, or many processes.

Every backend that trains in this Python environment (reference, cuda-lora, accelerate) runs this loop
with an ``accelerate.Accelerator``; what differs between them is only the accelerator (device, processes,
mixed precision, FSDP / DeepSpeed from the launcher's environment), the model they build and its
``WeightsFormat`` (full or adapter-only). The loop:

* prepares model, optimizer (AdamW over the trainable parameters) and the transformers schedule through
  the accelerator; each epoch's seeded permutation is sharded over the processes (rank ``r`` of ``N`` gets
  batches ``r, r+N, ...``; the last are filled from the start so every rank runs the same steps).
* one optimizer step is ``batch_size x processes x gradient_accumulation_steps`` samples; ``total_steps``
  counts from that global batch, the learning rate is never rescaled. Accumulation carries across epoch
  boundaries.
* **token-weighted loss**: the loss of a step is the sum of the cross-entropy over *all* its label
  tokens (every micro-batch, every process) divided by their count, so a micro-batch with few tokens
  weighs what its tokens weigh, not as much as a long one (the accumulation pitfall of transformers#36119).
  The token count of the step is summed over the processes before its backward passes; each micro-batch's
  summed loss is scaled so that Accelerate's division by the accumulation steps and DDP's mean over
  processes give exactly ``sum / tokens``.
* clipping and mixed precision (autocast, fp16 gradient scaler) through the accelerator; gradients are
  all-reduced only on the last micro-batch of a step.
* evaluation during training (``eval.steps``: best checkpoint, early stopping) via ``BestCheckpoint``;
  a Ctrl-C / SIGTERM saves a checkpoint before returning, so no finished step is lost.
* checkpoints in our own layout (``training/checkpoints.py``): exact resume (weights, optimizer, schedule,
  every process's RNG, data position: the micro-batches already seen are skipped).

The accelerator must be built by ``build_accelerator`` (the schedule is stepped once per global step,
accumulation is counted by the loop, not by the data loader).
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from whisper_tune.backend.launch import MIXED_PRECISION
from whisper_tune.backend.protocol import TrainResult
from whisper_tune.backend.setup import WeightsFormat
from whisper_tune.config.schema import TrainingConfig
from whisper_tune.console import Reporter
from whisper_tune.data.collator import LABEL_PAD, SpeechSeq2SeqCollator
from whisper_tune.data.features import model_inputs
from whisper_tune.disk import size_of, tensor_bytes, writing
from whisper_tune.errors import ConfigError, OutputError
from whisper_tune.training.best_checkpoint import BestCheckpoint
from whisper_tune.training.checkpoints import (
    Totals,
    list_checkpoints,
    load_tensors_file,
    optimizer_file,
    publish_checkpoint,
    read_state,
    read_totals,
    restore_rng,
    rng_file,
    save_rng,
    write_state,
)
from whisper_tune.training.weights import FULL_WEIGHTS, weights_bytes


def build_accelerator(training: TrainingConfig, *, cpu: bool) -> Any:
    """The Accelerator the loop needs: mixed precision from ``training.precision``, accumulation of
    ``training.gradient_accumulation_steps`` micro-batches counted by the loop (not the data loader),
    the schedule stepped once per optimizer step. Distributed settings come from ``accelerate launch``."""
    from accelerate import Accelerator
    from accelerate.utils import GradientAccumulationPlugin

    return Accelerator(
        cpu=cpu,
        mixed_precision=MIXED_PRECISION[training.precision],
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=training.gradient_accumulation_steps, sync_with_dataloader=False
        ),
        step_scheduler_with_optimizer=False,
    )


def check_accelerator(accelerator: Any, accumulation: int) -> None:
    """The accelerator settings the loop relies on (a programming error if they are wrong)."""
    if accelerator.step_scheduler_with_optimizer:
        raise ValueError("build the Accelerator with step_scheduler_with_optimizer=False")
    if accelerator.gradient_accumulation_steps != accumulation:
        raise ValueError(
            f"the Accelerator accumulates {accelerator.gradient_accumulation_steps} micro-batches, "
            f"training.gradient_accumulation_steps is {accumulation}"
        )
    if accelerator.gradient_state.sync_with_dataloader:
        raise ValueError("build the Accelerator's GradientAccumulationPlugin with sync_with_dataloader=False")


def shards_state(accelerator: Any) -> bool:
    """FSDP / DeepSpeed: weights and optimizer state are sharded over the processes."""
    from accelerate.utils import DistributedType

    return bool(accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED))


def total_steps(
    cfg: TrainingConfig,
    num_samples: int,
    drop_last: bool = False,
    world_size: int = 1,
    epoch_samples: Callable[[int], int] | None = None,
) -> int:
    """Optimizer steps: ``max_steps`` if set, else epochs over the data.

    With ``world_size`` data-parallel processes one batch is ``batch_size * world_size`` samples, so an
    epoch is ``num_samples / (batch_size * world_size)`` micro-batches per process. ``epoch_samples``
    gives each epoch's own number of samples when it varies (packed windows, planned per epoch)."""
    if cfg.max_steps is not None:
        return cfg.max_steps
    per_batch = cfg.batch_size * world_size

    def batches(samples: int) -> int:
        return samples // per_batch if drop_last else math.ceil(samples / per_batch)

    if epoch_samples is None:
        micro = cfg.num_epochs * batches(num_samples)
    else:
        whole = int(cfg.num_epochs)
        micro = sum(batches(epoch_samples(e)) for e in range(whole))
        if cfg.num_epochs > whole:
            micro += (cfg.num_epochs - whole) * batches(epoch_samples(whole))
    return max(1, math.ceil(micro / cfg.gradient_accumulation_steps))


def label_tokens(batch: dict[str, Any]) -> int:
    """The label tokens a batch is scored on (padding excluded)."""
    return int((batch["labels"] != LABEL_PAD).sum())


def summed_token_loss(
    model: Any, batch: dict[str, Any], config: Any, feature_dtype: str | None = None
) -> Any:
    """Cross-entropy summed over the batch's label tokens (the model's own loss is a per-batch mean,
    which cannot be weighted by tokens across micro-batches). The log-mel features are computed here, on
    the batch's device, from its audio; decoder inputs are the labels shifted right, exactly as Whisper's
    forward builds them from ``labels``."""
    import torch
    from transformers.models.whisper.modeling_whisper import shift_tokens_right

    labels = batch["labels"]
    decoder_input_ids = shift_tokens_right(labels, config.pad_token_id, config.decoder_start_token_id)
    dtype = getattr(torch, feature_dtype) if feature_dtype else None
    features = model_inputs(batch, config.num_mel_bins, device=labels.device, dtype=dtype)
    logits = model(input_features=features, decoder_input_ids=decoder_input_ids, use_cache=False).logits
    return torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        labels.reshape(-1),
        ignore_index=LABEL_PAD,
        reduction="sum",
    )


def backward_step(
    accelerator: Any, model: Any, micro_batches: list[dict[str, Any]], feature_dtype: str | None = None
) -> tuple[float, int]:
    """Forward and backward of one optimizer step's micro-batches with the token-weighted loss.

    Leaves the step's gradient ``d(sum of token losses over all processes) / d(theta) / tokens`` in the
    parameters (all-reduced on the last micro-batch). Returns (this process's summed loss, the step's
    token count over all processes). A collective call."""
    import torch

    config = accelerator.unwrap_model(model).config
    local = sum(label_tokens(b) for b in micro_batches)
    tokens = int(accelerator.reduce(torch.tensor(local, device=accelerator.device), reduction="sum"))
    # backward divides by the accumulation steps and DDP averages over the processes: undo both
    scale = accelerator.gradient_accumulation_steps * accelerator.num_processes / max(tokens, 1)
    loss_sum = 0.0
    for batch in micro_batches:
        with accelerator.accumulate(model):
            loss = summed_token_loss(model, batch, config, feature_dtype)
            accelerator.backward(loss * scale)
        loss_sum += float(loss.detach())
    return loss_sum, tokens


@dataclass
class TrainLoop:
    model: Any
    dataset: Any
    collator: SpeechSeq2SeqCollator
    cfg: TrainingConfig
    checkpoint_dir: Path
    reporter: Reporter
    accelerator: Any
    weights: WeightsFormat = FULL_WEIGHTS
    drop_last: bool = False
    num_workers: int = 0
    #: evaluation during training (eval.steps): best-checkpoint keeping and early stopping
    best: BestCheckpoint | None = None
    #: called with every training micro-batch before its forward pass (a diagnostics hook)
    on_batch: Callable[[dict[str, Any]], None] | None = None
    _passes: int = 0
    #: the newest complete checkpoint (the one resumed from, until this run writes one)
    _last_checkpoint: Path | None = None
    _prior: Totals = field(default_factory=Totals)
    #: this session's rows, clips and seconds of speech on this process
    _local: list[float] = field(default_factory=lambda: [0, 0, 0.0])
    _start: float = 0.0
    #: micro-batches per epoch on this process, by epoch (they vary with packing)
    _batches: dict[int, int] = field(default_factory=dict)
    #: after ``run``: the trained model as the accelerator wrapped it (DDP / FSDP / DeepSpeed)
    trained: Any = None

    def run(self, resume_from: Path | None = None) -> TrainResult:
        """Train to the end (or to early stopping / Ctrl-C); the run's ``TrainResult`` so far: steps,
        samples, clips and seconds of every session of the run, the loss log, the checkpoints written.
        The phases add predictions, the final model and memory to the same result."""
        import torch
        from transformers import get_scheduler

        acc, cfg = self.accelerator, self.cfg
        check_accelerator(acc, cfg.gradient_accumulation_steps)
        if self.streaming and cfg.max_steps is None:
            raise ConfigError("a streamed training set needs training.max_steps (its length is unknown)")
        size = 0 if self.streaming else len(self.dataset)
        sizes = (lambda e: len(self._epoch_dataset(e))) if self.windowed else None
        steps = total_steps(cfg, size, self.drop_last, acc.num_processes, sizes)
        log_history: list[dict[str, float]] = []
        checkpoints: list[Path] = []
        interrupted = False
        step = 0
        if resume_from is not None:
            self._last_checkpoint = resume_from
            step, log_history = read_state(resume_from)
            self._prior = read_totals(resume_from)
            # into the plain model before prepare: FSDP / DeepSpeed then shard the restored weights
            self.weights.load(self.model, resume_from / "weights")
        started = step  # a resumed run's own steps come after this one
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ConfigError("no trainable parameters: nothing would be learnt")
        optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        scheduler = get_scheduler(
            cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=steps
        )
        model, optimizer, scheduler = acc.prepare(self.model, optimizer, scheduler)
        self.trained = model
        if resume_from is not None:
            self._restore(resume_from, optimizer, scheduler)
            self.reporter.info(f"resumed from {resume_from} at step {step}")
        if self.best is not None:
            self.best.bind(
                save=lambda d: self._save_weights(model, d),
                load=self._load_best,
                size=lambda: weights_bytes(acc.unwrap_model(model), self.weights),
            )
        # per process; a stream's length is unknown (None): its passes are counted as it restarts
        batches_per_epoch = None if self.streaming else self._epoch_batches(0)
        if batches_per_epoch == 0:
            raise ConfigError(
                f"training.batch_size {cfg.batch_size} x {acc.num_processes} processes is larger than the "
                f"{len(self.dataset)} training samples with drop_last"
            )
        micro = step * cfg.gradient_accumulation_steps
        stream = self._micro_batches(micro, batches_per_epoch)
        model.train()
        window: list[tuple[float, int]] = []  # (local loss sum, global tokens) per step since the last log
        self._local = [0, 0, 0.0]
        self._start = time.perf_counter()
        bar = self.reporter.progress("train", total=steps, unit="step")
        bar.update(step)
        stop = False
        try:
            with bar:
                while step < steps and not stop:
                    group = [next(stream) for _ in range(cfg.gradient_accumulation_steps)]
                    loss_sum, tokens = backward_step(acc, model, group, self.collator.feature_dtype)
                    self._count(group)
                    micro += len(group)
                    if cfg.max_grad_norm is not None:
                        acc.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    step += 1
                    window.append((loss_sum, tokens))
                    if step % cfg.logging_steps == 0 or step == steps:
                        epoch = self._epoch_progress(micro) if batches_per_epoch else self._passes
                        record = self._log(step, epoch, window, scheduler)
                        log_history.append(record)
                        window = []
                    bar.update(1, loss=log_history[-1]["loss"] if log_history else None)
                    if cfg.save_steps and step % cfg.save_steps == 0 and step < steps:
                        checkpoints = self._save(model, optimizer, scheduler, step, log_history)
                    if self.best is not None:
                        seen = len(self.best.history)
                        stop = self.best.after_step(step, steps)
                        for record in self.best.history[seen:]:
                            log_history.append(record)
                            self.reporter.log_metrics(record)
                        model.train()
        except KeyboardInterrupt:
            interrupted = True
            self.reporter.warning(f"interrupted at step {step}; saving a checkpoint to resume from")
        # every session's samples and seconds (a resumed run adds to what its checkpoint had seen)
        totals = self._totals()
        if step > started and (interrupted or cfg.save_last or cfg.save_steps):
            try:
                checkpoints = self._save(model, optimizer, scheduler, step, log_history, last=True)
            except OutputError as exc:
                if interrupted:
                    raise
                # the weights are still in memory: final/ (smaller, no optimizer state) may fit
                self.reporter.warning(
                    f"{exc.message}; writing final/ without it (the run cannot be resumed from step {step})"
                )
        if self.best is not None and not interrupted:
            acc.wait_for_everyone()  # the best weights are on disk for every process
            self.best.restore_best(step)
        model.eval()
        return TrainResult(
            log_history=log_history,
            steps=step,
            train_samples=totals.samples,
            train_clips=totals.clips,
            train_audio_seconds=round(totals.audio_seconds, 3),
            train_seconds=round(totals.seconds, 3),
            checkpoints=checkpoints,
            interrupted=interrupted,
            selection=self.best.summary() if self.best is not None else {},
        )

    def _count(self, group: list[dict[str, Any]]) -> None:
        """Add a step's rows, clips (a packed window holds several) and seconds of speech."""
        for batch in group:
            rows = int(batch["labels"].shape[0])
            self._local[0] += rows
            self._local[1] += int(batch["clips"].sum()) if "clips" in batch else rows
            self._local[2] += float(batch["seconds"].sum()) if "seconds" in batch else 0.0

    def _totals(self) -> Totals:
        """Every session's samples, clips, seconds of speech and training seconds up to now, all
        processes together (a collective call)."""
        import torch

        acc = self.accelerator
        local = torch.tensor(self._local, dtype=torch.float64, device=acc.device)
        samples, clips, audio = (float(x) for x in acc.reduce(local, reduction="sum").tolist())
        prior = self._prior
        return Totals(
            prior.samples + round(samples),
            prior.seconds + time.perf_counter() - self._start,
            prior.clips + round(clips),
            prior.audio_seconds + audio,
        )

    # --- data ------------------------------------------------------------------------------------

    @property
    def streaming(self) -> bool:
        from torch.utils.data import IterableDataset

        return isinstance(self.dataset, IterableDataset)

    @property
    def windowed(self) -> bool:
        """The training set is planned anew each epoch (``data/windows.py``: packing, timestamps,
        no-speech windows)."""
        return hasattr(self.dataset, "for_epoch")

    def _epoch_dataset(self, epoch: int) -> Any:
        return self.dataset.for_epoch(epoch) if self.windowed else self.dataset

    def _epoch_batches(self, epoch: int) -> int:
        """This process's micro-batches in epoch ``epoch`` (the same in every epoch unless windowed)."""
        key = epoch if self.windowed else 0
        if key not in self._batches:
            self._batches[key] = len(self._epoch_loader(key))
        return self._batches[key]

    def _position(self, micro: int) -> tuple[int, int]:
        """(epoch, micro-batches into it) of the ``micro``-th micro-batch of the run."""
        if not self.windowed:
            return divmod(micro, self._epoch_batches(0))
        epoch = 0
        while micro >= self._epoch_batches(epoch):
            micro -= self._epoch_batches(epoch)
            epoch += 1
        return epoch, micro

    def _epoch_progress(self, micro: int) -> float:
        epoch, into = self._position(micro)
        return epoch + into / self._epoch_batches(epoch)

    def _epoch_loader(self, epoch: int) -> Any:
        """Epoch ``epoch``'s batches for this process: a permutation seeded by ``seed + epoch``, sharded
        (a stream: its batches in order, dispatched to the processes by Accelerate)."""
        import torch
        from torch.utils.data import DataLoader, RandomSampler

        if self.streaming:
            stream = DataLoader(self.dataset, batch_size=self.cfg.batch_size, collate_fn=self.collator)
            return self.accelerator.prepare_data_loader(stream)
        seed = self.cfg.seed + epoch
        dataset = self._epoch_dataset(epoch)
        loader = DataLoader(
            dataset,
            batch_size=self.cfg.batch_size,
            sampler=RandomSampler(dataset, generator=torch.Generator().manual_seed(seed)),
            collate_fn=self.collator,
            drop_last=self.drop_last,
            num_workers=self.num_workers,
            # the workers' base seed from its own generator, not the global RNG (which would shift
            # dropout after a mid-epoch resume)
            generator=torch.Generator().manual_seed(seed),
        )
        return self.accelerator.prepare_data_loader(loader)

    def _micro_batches(self, micro: int, batches_per_epoch: int | None) -> Iterator[dict[str, Any]]:
        """This process's micro-batches from position ``micro`` on, epoch after epoch (a stream: pass
        after pass, the first ``micro`` batches read and skipped)."""
        if batches_per_epoch is None:
            skip = micro
            while True:
                self._passes += 1
                empty = True
                for batch in self._epoch_loader(self._passes - 1):
                    empty = False
                    if skip:
                        skip -= 1
                        continue
                    if self.on_batch is not None:
                        self.on_batch(batch)
                    yield batch
                if empty:
                    raise ConfigError("the training stream yielded no usable sample")
        epoch, skip = self._position(micro)
        while True:
            loader = self._epoch_loader(epoch)
            if skip:
                loader = self.accelerator.skip_first_batches(loader, skip)
            for batch in loader:
                if self.on_batch is not None:
                    self.on_batch(batch)
                yield batch
            epoch, skip = epoch + 1, 0

    def _log(
        self, step: int, epoch: float, window: list[tuple[float, int]], scheduler: Any
    ) -> dict[str, float]:
        """The token-weighted mean loss of the steps since the last record, over all processes."""
        import torch

        acc = self.accelerator
        local = torch.tensor(sum(loss for loss, _ in window), dtype=torch.float64, device=acc.device)
        tokens = sum(t for _, t in window)  # already global
        total = float(acc.reduce(local, reduction="sum"))
        record = {
            "step": step,
            "epoch": round(epoch, 4),
            "loss": round(total / max(tokens, 1), 5),
            "learning_rate": scheduler.get_last_lr()[0],
        }
        if self.windowed:  # rows are windows: say how many windows and clips the run has seen
            totals = self._totals()
            record.update(windows=totals.samples, clips=totals.clips)
        self.reporter.log_metrics(record)
        return record

    # --- checkpoints -----------------------------------------------------------------------------

    def _save_weights(self, model: Any, directory: Path) -> None:
        """Write the weights in the backend's format (a collective call: FSDP / ZeRO-3 gather shards on
        every process; the main process writes)."""
        acc = self.accelerator
        state = acc.get_state_dict(model) if shards_state(acc) else None
        if acc.is_main_process:
            self.weights.save(acc.unwrap_model(model), directory, state)
        acc.wait_for_everyone()

    def _load_best(self, directory: Path) -> None:
        self.weights.load(self.accelerator.unwrap_model(self.model), directory)

    def _save(
        self,
        model: Any,
        optimizer: Any,
        scheduler: Any,
        step: int,
        history: list[dict[str, float]],
        *,
        last: bool = False,
    ) -> list[Path]:
        """Write ``step-NNNNNN`` (a collective call: every process makes it at the same step). A full disk
        removes the partial checkpoint and stops the run with how much space it needs (``disk.writing``);
        the previous checkpoint is untouched (checkpoints are written aside and renamed when complete).
        ``last``: the checkpoint at the end of training (the caller goes on to write final/ without it)."""
        acc = self.accelerator
        tmp = self.checkpoint_dir / f".step-{step:06d}.partial"
        previous = self._last_checkpoint
        run_name = self.checkpoint_dir.parent.name

        def needs() -> int:
            return size_of(previous) or self._checkpoint_bytes(model, optimizer)

        def kept() -> str | None:
            if previous is not None:
                return f"{previous} is intact"
            return None if last else f"no earlier checkpoint holds the {step} steps trained: they are lost"

        def hint() -> str:
            if previous is None:
                return "free space there (or set output.dir to a larger disk) and run again"
            here = previous.parent == self.checkpoint_dir
            resume = f"latest output.run_name={run_name}" if here else str(previous)
            return (
                "free space there (or lower training.save_total_limit), then resume: the same command with "
                f"training.resume_from={resume}"
            )

        with writing(
            f"checkpoint step-{step:06d}",
            self.checkpoint_dir / f"step-{step:06d}",
            needs=needs,
            kept=kept,
            hint=hint,
            partial=tmp if acc.is_main_process else None,
        ):
            kept_checkpoints = self._write_checkpoint(model, optimizer, scheduler, step, history, tmp)
        self._last_checkpoint = kept_checkpoints[-1] if kept_checkpoints else None
        return kept_checkpoints

    def _checkpoint_bytes(self, model: Any, optimizer: Any) -> int:
        """About the bytes of a checkpoint: the weights in the backend's format and the optimizer state."""
        unwrapped = self.accelerator.unwrap_model(model)
        return weights_bytes(unwrapped, self.weights) + tensor_bytes(optimizer.state_dict())

    def _write_checkpoint(
        self,
        model: Any,
        optimizer: Any,
        scheduler: Any,
        step: int,
        history: list[dict[str, float]],
        tmp: Path,
    ) -> list[Path]:
        import torch

        acc = self.accelerator
        target = self.checkpoint_dir / f"step-{step:06d}"
        totals = self._totals()  # collective
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self._save_weights(model, tmp / "weights")
        if shards_state(acc):
            torch.save(optimizer.state_dict(), tmp / optimizer_file(acc.process_index))
        elif acc.is_main_process:
            torch.save(optimizer.state_dict(), tmp / optimizer_file(None))
        save_rng(tmp / rng_file(acc.process_index))
        acc.wait_for_everyone()
        if acc.is_main_process:
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            write_state(
                tmp,
                step,
                history,
                processes=acc.num_processes,
                samples=totals.samples,
                seconds=round(totals.seconds, 3),
                clips=totals.clips,
                audio_seconds=round(totals.audio_seconds, 3),
            )
            publish_checkpoint(tmp, target, self.cfg.save_total_limit)
            self.reporter.debug(f"saved checkpoint {target}")
        acc.wait_for_everyone()
        return list_checkpoints(self.checkpoint_dir)

    def _restore(self, checkpoint: Path, optimizer: Any, scheduler: Any) -> None:
        acc = self.accelerator
        if shards_state(acc):
            name = optimizer_file(acc.process_index)
            if not (checkpoint / name).is_file():
                raise ConfigError(
                    f"cannot resume from {checkpoint}: no optimizer state for process {acc.process_index}",
                    hint="FSDP / DeepSpeed checkpoints resume with the number of processes that wrote them",
                )
        else:
            name = optimizer_file(None)
        optimizer.load_state_dict(load_tensors_file(checkpoint, name))
        scheduler.load_state_dict(load_tensors_file(checkpoint, "scheduler.pt"))
        restore_rng(checkpoint, acc.process_index)
