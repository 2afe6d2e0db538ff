"""``TrainLoop`` through Hugging Face Accelerate: data-parallel (DDP), FSDP or DeepSpeed, one process each.

Same recipe as ``loop.TrainLoop.run`` (AdamW, the transformers schedule, accumulation across epoch
boundaries, clipping, seeded per-epoch shuffling, resumable ``step-NNNNNN`` checkpoints), with the pieces
that differ across processes handed to the accelerator:

* ``accelerator.prepare`` wraps model, optimizer and scheduler and shards each epoch's data loader: rank
  ``r`` of ``N`` gets batches ``r, r+N, ...`` of the same seeded permutation (the last ones are filled from
  the start of the permutation so every rank runs the same number of steps).
* one step is ``batch_size x N x gradient_accumulation_steps`` samples; ``total_steps`` counts from that
  global batch. The learning rate is the configured one (no rescaling by N).
* accumulation runs through ``accelerator.accumulate`` (no gradient all-reduce until the last
  micro-batch; DeepSpeed steps inside its engine), clipping through ``accelerator.clip_grad_norm_``, mixed
  precision through the accelerator's autocast and gradient scaler.
* the logged loss is the mean over ranks; the sample count is the sum over ranks.
* checkpoints: every rank takes part in gathering the weights (FSDP / ZeRO-3 shard them); the main
  process writes them in the usual layout. Optimizer state is written once (DDP: identical on every rank)
  or one file per rank when FSDP / DeepSpeed shard it (``optimizer-rankNNNNN.pt``; resuming then needs the
  same number of processes). Checkpoints must be on a filesystem every machine reads to resume. The
  weights are written with ``save_pretrained`` from the gathered state dict (``loop.save_weights`` is not
  used: it would see one shard under FSDP); ``loop.load_weights`` restores them before ``prepare``.

The accelerator must be built with ``step_scheduler_with_optimizer=False`` (the schedule counts global
optimizer steps, so it is stepped once per step, not once per process) and a
``GradientAccumulationPlugin(num_steps=..., sync_with_dataloader=False)`` matching
``training.gradient_accumulation_steps`` (accumulation carries across epochs, as in the plain loop).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from whisper_tune.errors import ConfigError
from whisper_tune.recipe.loop import (
    LoopResult,
    list_checkpoints,
    publish_checkpoint,
    read_state,
    restore_rng,
    save_rng,
    total_steps,
    write_state,
)

if TYPE_CHECKING:
    from whisper_tune.recipe.loop import TrainLoop


def check_accelerator(accelerator: Any, accumulation: int) -> None:
    """The two accelerator settings the loop relies on (a programming error if they are wrong)."""
    if accelerator.step_scheduler_with_optimizer:
        raise ValueError("build the Accelerator with step_scheduler_with_optimizer=False")
    if accelerator.gradient_accumulation_steps != accumulation:
        raise ValueError(
            f"the Accelerator accumulates {accelerator.gradient_accumulation_steps} micro-batches, "
            f"training.gradient_accumulation_steps is {accumulation}"
        )
    if accelerator.gradient_state.sync_with_dataloader:
        raise ValueError("build the Accelerator's GradientAccumulationPlugin with sync_with_dataloader=False")


def shards_optimizer_state(accelerator: Any) -> bool:
    from accelerate.utils import DistributedType

    return bool(accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED))


def run_accelerated(loop: TrainLoop, resume_from: Path | None) -> LoopResult:
    import torch
    from torch.utils.data import DataLoader, RandomSampler
    from transformers import get_scheduler

    acc = loop.accelerator
    cfg = loop.cfg
    check_accelerator(acc, cfg.gradient_accumulation_steps)
    steps = total_steps(cfg, len(loop.dataset), loop.drop_last, acc.num_processes)
    result = LoopResult()
    step = 0
    if resume_from is not None:
        step, result.log_history = read_state(resume_from)
        # Into the plain model before prepare: FSDP / DeepSpeed then shard the restored weights.
        loop.load_weights(loop.model, resume_from / "weights")
    params = [p for p in loop.model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("no trainable parameters: nothing would be learnt")
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(
        cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=steps
    )
    model, optimizer, scheduler = acc.prepare(loop.model, optimizer, scheduler)
    if resume_from is not None:
        _restore_optimizer(acc, resume_from, optimizer, scheduler)
        loop.reporter.info(f"resumed from {resume_from} at step {step}")

    def epoch_loader(epoch: int) -> Any:
        generator = torch.Generator().manual_seed(cfg.seed + epoch)
        loader = DataLoader(
            loop.dataset,
            batch_size=cfg.batch_size,
            sampler=RandomSampler(loop.dataset, generator=generator),
            collate_fn=loop.collator,
            drop_last=loop.drop_last,
            num_workers=loop.num_workers,
        )
        return acc.prepare_data_loader(loader)

    batches_per_epoch = len(epoch_loader(0))  # per process
    if batches_per_epoch == 0:
        raise ConfigError(
            f"training.batch_size {cfg.batch_size} x {acc.num_processes} processes is larger than the "
            f"{len(loop.dataset)} training samples with drop_last"
        )
    micro = step * cfg.gradient_accumulation_steps
    model.train()
    window: list[float] = []
    local_samples = 0
    start = time.perf_counter()
    bar = loop.reporter.progress("train", total=steps, unit="step")
    bar.update(step)
    try:
        with bar:
            while step < steps:
                epoch, skip = divmod(micro, batches_per_epoch)
                loader = epoch_loader(epoch)
                if skip:
                    loader = acc.skip_first_batches(loader, skip)
                for batch in loader:
                    if loop.on_batch is not None:
                        loop.on_batch(batch)
                    with acc.accumulate(model):
                        loss = model(**batch).loss
                        acc.backward(loss)  # divides by the accumulation steps
                        window.append(float(loss.detach()))
                        local_samples += int(batch["labels"].shape[0])
                        micro += 1
                        if not acc.sync_gradients:
                            continue  # accumulation carries across an epoch boundary
                        if cfg.max_grad_norm is not None:
                            acc.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                        optimizer.step()
                        scheduler.step()
                        optimizer.zero_grad(set_to_none=True)
                    step += 1
                    if step % cfg.logging_steps == 0 or step == steps:
                        local = torch.tensor(sum(window) / len(window), device=acc.device)
                        record = {
                            "step": step,
                            "epoch": round(micro / batches_per_epoch, 4),
                            "loss": round(float(acc.reduce(local, reduction="mean")), 5),
                            "learning_rate": scheduler.get_last_lr()[0],
                        }
                        result.log_history.append(record)
                        loop.reporter.log_metrics(record)
                        window = []
                    bar.update(1, loss=result.log_history[-1]["loss"] if result.log_history else None)
                    if cfg.save_steps and step % cfg.save_steps == 0 and step < steps:
                        result.checkpoints = _save(
                            loop, model, optimizer, scheduler, step, result.log_history
                        )
                    if step >= steps:
                        break
    except KeyboardInterrupt:
        result.interrupted = True
        loop.reporter.warning(f"interrupted at step {step}; saving a checkpoint to resume from")
    result.seconds = time.perf_counter() - start
    result.steps = step
    result.samples = int(acc.reduce(torch.tensor(local_samples, device=acc.device), reduction="sum"))
    if step > 0 and (result.interrupted or cfg.save_steps):
        result.checkpoints = _save(loop, model, optimizer, scheduler, step, result.log_history)
    model.eval()
    result.prepared_model = model
    return result


def _save(
    loop: TrainLoop, model: Any, optimizer: Any, scheduler: Any, step: int, history: list[dict[str, float]]
) -> list[Path]:
    """Write ``step-NNNNNN`` (a collective call: every rank must make it at the same step)."""
    import torch

    acc = loop.accelerator
    target = loop.checkpoint_dir / f"step-{step:06d}"
    tmp = loop.checkpoint_dir / f".step-{step:06d}.partial"
    state = acc.get_state_dict(model)  # gathers FSDP / ZeRO-3 shards: all ranks take part
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        acc.unwrap_model(model).save_pretrained(tmp / "weights", state_dict=state, safe_serialization=True)
    acc.wait_for_everyone()
    if shards_optimizer_state(acc):
        torch.save(optimizer.state_dict(), tmp / f"optimizer-rank{acc.process_index:05d}.pt")
    elif acc.is_main_process:
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    acc.wait_for_everyone()
    if acc.is_main_process:
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        save_rng(tmp / "rng.pt")
        write_state(tmp, step, history, processes=acc.num_processes)
        publish_checkpoint(tmp, target, loop.cfg.save_total_limit)
        loop.reporter.debug(f"saved checkpoint {target}")
    acc.wait_for_everyone()
    return list_checkpoints(loop.checkpoint_dir)


def _restore_optimizer(acc: Any, checkpoint: Path, optimizer: Any, scheduler: Any) -> None:
    import torch

    if shards_optimizer_state(acc):
        path = checkpoint / f"optimizer-rank{acc.process_index:05d}.pt"
        if not path.is_file():
            raise ConfigError(
                f"cannot resume from {checkpoint}: no optimizer state for process {acc.process_index}",
                hint="FSDP / DeepSpeed checkpoints resume with the number of processes that wrote them",
            )
    else:
        path = checkpoint / "optimizer.pt"
    optimizer.load_state_dict(torch.load(path, weights_only=True, map_location="cpu"))
    scheduler.load_state_dict(torch.load(checkpoint / "scheduler.pt", weights_only=True))
    restore_rng(checkpoint / "rng.pt")
