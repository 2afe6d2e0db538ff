"""One training process: ``python -m whisper_tune_accelerate.worker worker-machine<R>.json``.

Started by ``accelerate launch`` (see ``launch``), never by hand. Every rank builds the Accelerator and the
model and runs the core's phases (``recipe/phases.py``: evaluate before, the one training loop, save,
evaluate after); the main process writes checkpoints and the final model; the local main process of each
machine writes the result file its parent reads. A failure is written to ``failure-rank<N>.json`` (and
an unexpected one's traceback next to it), so the parent reports one error instead of every rank's
traceback.

Diagnostics: with ``WHISPER_TUNE_ACCELERATE_TRACE=<dir>`` every rank writes ``<dir>/trace-rank<N>.json``
with the labels of every batch it trained on and a SHA-256 of its weights after training (the tests use
it to show the data is sharded and the ranks end with identical weights).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from whisper_tune.backend.protocol import TrainJob
from whisper_tune.errors import HardwareError, WhisperTuneError
from whisper_tune.recipe.collator import LABEL_PAD
from whisper_tune.recipe.progress import Reporter
from whisper_tune_accelerate.launch import LaunchFiles
from whisper_tune_accelerate.options import AccelerateOptions

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


def train(job: TrainJob, console: dict[str, bool], result_path: Path) -> None:
    from accelerate.utils import set_seed

    from whisper_tune.recipe.loop import build_accelerator
    from whisper_tune.recipe.model import build_full_model
    from whisper_tune.recipe.phases import TrainingSetup, run_phases

    cfg = job.config
    opts = cfg.backend.options
    assert isinstance(opts, AccelerateOptions)
    accelerator = build_accelerator(cfg.training, cpu=opts.cpu)
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
    # whole on every process for the evaluation before training (FSDP / DeepSpeed shard it in prepare)
    model = build_full_model(job.model_dir, cfg.model, cfg.training).to(accelerator.device)
    trace_dir = os.environ.get(TRACE_ENV)
    seen: list[list[int]] = []

    def record(batch: dict[str, Any]) -> None:
        seen.extend([t for t in row if t != LABEL_PAD] for row in batch["labels"].tolist())

    setup = TrainingSetup(
        accelerator, model, num_workers=opts.num_workers, on_batch=record if trace_dir else None
    )
    outcome = run_phases(job, setup, reporter)
    if trace_dir:
        trace = {
            "rank": accelerator.process_index,
            "world": world,
            "weights_sha256": weights_digest(accelerator.unwrap_model(outcome.model).state_dict()),
            "seen_labels": seen,
        }
        Path(trace_dir, f"trace-rank{accelerator.process_index}.json").write_text(json.dumps(trace))
    if accelerator.is_local_main_process:
        tmp = result_path.with_suffix(".partial")
        tmp.write_text(outcome.result.model_dump_json(), encoding="utf-8")
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
