"""One training process: ``python -m whisper_tune_accelerate.worker worker-machine<R>.json``.

Started by ``accelerate launch`` (see ``launch``), never by hand. Every rank loads the model, takes part in
evaluation (before / after) and training through ``TrainLoop(accelerator=...)``; the main process writes
checkpoints and the final model; the local main process of each machine writes the result file its parent
reads. A failure is written to ``failure-rank<N>.json`` (and an unexpected one's traceback next to it), so
the parent reports one error instead of every rank's traceback.

Diagnostics: with ``WHISPER_TUNE_ACCELERATE_TRACE=<dir>`` every rank writes ``<dir>/trace-rank<N>.json``
with the labels of every batch it trained on and a SHA-256 of its weights after training (the tests use
it to show the data is sharded and the ranks end with identical weights).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from whisper_tune.backend.protocol import TrainJob
from whisper_tune.errors import HardwareError, WhisperTuneError
from whisper_tune.recipe.collator import LABEL_PAD
from whisper_tune.recipe.progress import Reporter
from whisper_tune_accelerate.launch import LaunchFiles
from whisper_tune_accelerate.options import AccelerateOptions, precision_to_mixed

TRACE_ENV = "WHISPER_TUNE_ACCELERATE_TRACE"


def load_job(spec: dict[str, Any]) -> TrainJob:
    """The ``TrainJob`` of a worker file, its config validated again (backend options included)."""
    from whisper_tune.backend.registry import Registry
    from whisper_tune.config.load import validate
    from whisper_tune_accelerate.backend import AccelerateBackend

    registry = Registry(eps=[], instances={"accelerate": AccelerateBackend()})
    config = validate(spec["config"], registry=registry)
    return TrainJob(config=config, **spec["job"])


def weights_digest(state: dict[str, Any]) -> str:
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def peak_memory_bytes(accelerator: Any) -> int:
    import torch

    if accelerator.device.type == "cuda":
        local = torch.cuda.max_memory_allocated(accelerator.device)
    else:
        local = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return int(accelerator.reduce(torch.tensor(local, device=accelerator.device), reduction="max"))


def train(job: TrainJob, console: dict[str, bool], result_path: Path) -> None:
    import torch
    from accelerate import Accelerator
    from accelerate.utils import GradientAccumulationPlugin, broadcast_object_list, set_seed

    from whisper_tune.recipe.collator import SpeechSeq2SeqCollator
    from whisper_tune.recipe.loop import TrainLoop
    from whisper_tune.recipe.model import load_model
    from whisper_tune.recipe.prepared import PreparedDataset
    from whisper_tune_accelerate.evaluate import gathered_predictions

    cfg = job.config
    opts = cfg.backend.options
    assert isinstance(opts, AccelerateOptions)
    accelerator = Accelerator(
        cpu=opts.cpu,
        mixed_precision=precision_to_mixed(cfg.training.precision),
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=cfg.training.gradient_accumulation_steps, sync_with_dataloader=False
        ),
        step_scheduler_with_optimizer=False,
    )
    if accelerator.state.deepspeed_plugin is not None:
        # DeepSpeed reads the micro-batch from the data loaders given to prepare(); ours come later.
        ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
        ds_config["train_micro_batch_size_per_gpu"] = cfg.training.batch_size
    if accelerator.is_main_process:
        reporter = Reporter(quiet=console["quiet"], progress=console["progress"], verbose=console["verbose"])
        reporter.log_to(Path(job.run_dir) / "run.log")  # appends to the parent's log
    else:
        reporter = Reporter.silent()
    world = accelerator.num_processes
    reporter.info(
        f"accelerate: {world} processes ({accelerator.distributed_type.value}, {accelerator.device.type}, "
        f"mixed precision {accelerator.mixed_precision}); global batch {cfg.training.batch_size} per device "
        f"x {world} processes x {cfg.training.gradient_accumulation_steps} accumulation = "
        f"{cfg.training.batch_size * world * cfg.training.gradient_accumulation_steps}; "
        f"learning rate {cfg.training.learning_rate} (not rescaled)"
    )
    set_seed(cfg.training.seed)
    model = load_model(job.model_dir, cfg.model, dtype=torch.float32)
    if cfg.training.freeze_encoder:
        model.model.encoder.requires_grad_(False)
    if cfg.training.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    collator = SpeechSeq2SeqCollator(model.config.decoder_start_token_id)
    eval_sets = {name: PreparedDataset(path) for name, path in job.eval_data.items()}
    predictions: dict[str, dict[str, list[list[int]]]] = {}
    eval_seconds: dict[str, float] = {}
    trace_dir = os.environ.get(TRACE_ENV)
    seen: list[list[int]] = []

    def evaluate(phase: str, prepared: Any) -> None:
        t0 = time.perf_counter()
        predictions[phase] = {
            name: gathered_predictions(
                accelerator,
                prepared,
                ds,
                collator,
                model_cfg=cfg.model,
                eval_cfg=cfg.eval,
                reporter=reporter,
                name=f"{name} ({phase})",
            )
            for name, ds in eval_sets.items()
        }
        eval_seconds[phase] = round(time.perf_counter() - t0, 2)

    def record(batch: dict[str, Any]) -> None:
        seen.extend([t for t in row if t != LABEL_PAD] for row in batch["labels"].tolist())

    loop = loop_result = None
    trained = model
    if job.train and job.train_data is not None:
        # Machine 0's checkpoint folder for every rank: with several machines each has its own run
        # directory, and sharded optimizer state is written by every rank into the main one's checkpoint.
        checkpoints = [str(Path(job.run_dir) / "checkpoints")]
        broadcast_object_list(checkpoints, from_process=0)
        loop = TrainLoop(
            model,
            PreparedDataset(job.train_data),
            collator,
            cfg.training,
            Path(checkpoints[0]),
            reporter,
            num_workers=opts.num_workers,
            accelerator=accelerator,
            on_batch=record if trace_dir else None,
        )
    if job.evaluate_before and eval_sets:
        # The starting weights, whole on every process (before FSDP / DeepSpeed shard them for training).
        evaluate("before", model.to(accelerator.device))
    if loop is not None:
        loop_result = loop.run(resume_from=Path(job.resume_from) if job.resume_from else None)
        trained = loop_result.prepared_model
    final_dir = None
    finished = loop_result is not None and not loop_result.interrupted
    state = None
    if finished and (cfg.output.save_final_model or trace_dir):
        state = accelerator.get_state_dict(trained)  # all ranks: gathers FSDP / ZeRO-3 shards
    if finished and cfg.output.save_final_model:
        final_dir = Path(cfg.output.model_dir) if cfg.output.model_dir else Path(job.run_dir) / "final"
        if accelerator.is_main_process:
            accelerator.unwrap_model(trained).save_pretrained(
                final_dir, state_dict=state, safe_serialization=True
            )
        accelerator.wait_for_everyone()
    if trace_dir:
        local = accelerator.unwrap_model(trained).state_dict()
        trace = {
            "rank": accelerator.process_index,
            "world": world,
            "weights_sha256": weights_digest(local),
            "seen_labels": seen,
        }
        Path(trace_dir, f"trace-rank{accelerator.process_index}.json").write_text(json.dumps(trace))
    if job.evaluate_after and eval_sets and finished:
        evaluate("after", trained)
    peak = peak_memory_bytes(accelerator)
    if accelerator.is_local_main_process:
        result = {
            "predictions": predictions,
            "log_history": loop_result.log_history if loop_result else [],
            "steps": loop_result.steps if loop_result else 0,
            "train_samples": loop_result.samples if loop_result else 0,
            "train_seconds": round(loop_result.seconds, 3) if loop_result else 0.0,
            "eval_seconds": eval_seconds,
            "peak_memory_bytes": peak,
            "final_model_dir": str(final_dir) if final_dir and accelerator.is_main_process else None,
            "checkpoints": [str(p) for p in loop_result.checkpoints] if loop_result else [],
            "interrupted": bool(loop_result and loop_result.interrupted),
        }
        tmp = result_path.with_suffix(".partial")
        tmp.write_text(json.dumps(result), encoding="utf-8")
        tmp.rename(result_path)
    accelerator.wait_for_everyone()
    accelerator.end_training()


def write_failure(files: LaunchFiles, rank: int, exc: BaseException) -> None:
    if isinstance(exc, WhisperTuneError):
        failure = {"error": type(exc).__name__, "message": exc.message, "hint": exc.hint}
    else:
        files.traceback(rank).write_text(
            "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)), encoding="utf-8"
        )
        failure = {"error": type(exc).__name__, "message": f"{type(exc).__name__}: {exc}".splitlines()[0]}
    files.failure(rank).write_text(json.dumps(failure), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m whisper_tune_accelerate.worker WORKER_FILE (started by accelerate launch)")
        return 2
    os.dup2(1, 2)  # stdout is the parent's stderr: messages and progress bars go there, tracebacks not
    spec = json.loads(Path(args[0]).read_text(encoding="utf-8"))
    rank = int(os.environ.get("RANK", "0"))
    result_path = Path(spec["result"])
    files = LaunchFiles(result_path.parent, 0)
    try:
        job = load_job(spec)
        try:
            train(job, spec["console"], result_path)
        except Exception as exc:
            if type(exc).__name__ == "OutOfMemoryError":
                raise HardwareError(
                    f"out of memory on process {rank}: {str(exc).splitlines()[0]}",
                    hint="lower training.batch_size (raise gradient_accumulation_steps to keep the global "
                    "batch), set training.gradient_checkpointing=true, or shard with backend.strategy=fsdp",
                ) from exc
            raise
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        write_failure(files, rank, exc)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"error (training process {rank}): {first}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
