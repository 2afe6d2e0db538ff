"""One training process: ``python -m whisper_tune.execution.worker JOB``, started by ``accelerate launch``.

Never run by hand: ``whisper-tune run`` starts it through the launch its backend planned
(``backend/launch.py``). Every rank validates the config again, builds the Accelerator and the backend's
model (``training_setup``) and runs the core's phases (``training/phases.py``); the main process writes
checkpoints and the final model; the local main process of each machine writes the result file its parent
reads. A failure is written to ``failure-rank<N>.json`` (an unexpected one's traceback next to it), so the
parent reports one error instead of every rank's traceback.

Diagnostics: with ``WHISPER_TUNE_TRACE=<dir>`` every rank writes ``<dir>/trace-rank<N>.json`` with the
labels of every batch it trained on and a SHA-256 of its trainable weights after training (the tests use it
to show the data is sharded and the ranks end with identical weights).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from whisper_tune.backend.protocol import TrainJob
from whisper_tune.backend.registry import Registry
from whisper_tune.config_loading import validate
from whisper_tune.console import Reporter, route_library_output
from whisper_tune.disk import write_text
from whisper_tune.errors import HardwareError, WhisperTuneError
from whisper_tune.training.phases import Outcome, run_phases, start

TRACE_ENV = "WHISPER_TUNE_TRACE"


def load_job(spec: dict[str, Any]) -> tuple[Any, TrainJob]:
    """(backend, job) of a job file, the config validated again (backend options included)."""

    registry = Registry()
    config = validate(spec["config"], registry=registry)
    return registry.get(config.backend.name), TrainJob(config=config, **spec["job"])


def weights_digest(state: dict[str, Any]) -> str:
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def train(backend: Any, job: TrainJob, console: dict[str, bool], result_path: Path) -> None:
    """This worker's rank of the job: the Accelerator, the phases, the result file for the parent."""
    accelerator = start(backend, job)
    if accelerator.is_main_process:
        reporter = Reporter(quiet=console["quiet"], progress=console["progress"], verbose=console["verbose"])
        reporter.log_to(Path(job.run_dir) / "run.log")  # appends to the parent's log
    else:
        reporter = Reporter.silent()
    outcome = train_rank(backend, job, accelerator, reporter)
    if accelerator.is_local_main_process:
        write_text(result_path, outcome.result.model_dump_json(), "the training result")
    accelerator.wait_for_everyone()
    accelerator.end_training()


def train_rank(
    backend: Any, job: TrainJob, accelerator: Any, reporter: Reporter, processor: Any = None
) -> Outcome:
    """One rank's phases of ``job`` on ``accelerator`` (seeded already): what every process runs, whether
    our own launch started it (``train``) or an outside launcher did (``execution/external.py``).
    ``processor``: the run's, when this process has loaded it (else each rank loads it once)."""
    # lazy: keeps numpy out of this module's import
    from whisper_tune.data.collator import LABEL_PAD

    cfg = job.config
    if accelerator.state.deepspeed_plugin is not None:
        # DeepSpeed reads the micro-batch from the data loaders given to prepare(); ours come later.
        ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
        ds_config["train_micro_batch_size_per_gpu"] = cfg.training.batch_size
    world = accelerator.num_processes
    training = cfg.training
    reporter.info(
        f"{world} processes ({accelerator.distributed_type.value}, {accelerator.device.type}, "
        f"mixed precision {accelerator.mixed_precision}); global batch {training.batch_size} per device "
        f"x {world} processes x {training.gradient_accumulation_steps} accumulation = "
        f"{training.batch_size * world * training.gradient_accumulation_steps}; "
        f"learning rate {training.learning_rate} (not rescaled)"
    )
    setup = backend.training_setup(job, accelerator, reporter)
    if processor is not None:
        setup = dataclasses.replace(setup, processor=processor)
    trace_dir = os.environ.get(TRACE_ENV)
    seen: list[list[int]] = []
    if trace_dir:

        def record(batch: dict[str, Any]) -> None:
            seen.extend([t for t in row if t != LABEL_PAD] for row in batch["labels"].tolist())

        setup = dataclasses.replace(setup, on_batch=record)
    outcome = run_phases(job, setup, reporter, backend.recipe_needs(cfg))
    if trace_dir:
        model = accelerator.unwrap_model(outcome.model)
        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        trace = {
            "rank": accelerator.process_index,
            "world": world,
            "weights_sha256": weights_digest(model.state_dict()),
            "trainable_sha256": weights_digest(trainable),
            "seen_labels": seen,
        }
        Path(trace_dir, f"trace-rank{accelerator.process_index}.json").write_text(json.dumps(trace))
    return outcome


def write_failure(folder: Path, rank: int, exc: BaseException) -> None:
    """The failure file the launcher reads; on a full disk none (the printed error line remains)."""
    with contextlib.suppress(OSError):
        _write_failure(folder, rank, exc)


def _write_failure(folder: Path, rank: int, exc: BaseException) -> None:
    if isinstance(exc, WhisperTuneError):
        failure = {"error": type(exc).__name__, "message": exc.message, "hint": exc.hint}
    else:
        (folder / f"traceback-rank{rank}.txt").write_text(
            "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)), encoding="utf-8"
        )
        failure = {"error": type(exc).__name__, "message": f"{type(exc).__name__}: {exc}".splitlines()[0]}
    (folder / f"failure-rank{rank}.json").write_text(json.dumps(failure), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m whisper_tune.execution.worker JOB_FILE (started by accelerate launch)")
        return 2
    os.dup2(1, 2)  # stdout is the parent's stderr: messages and progress bars go there, tracebacks not
    spec = json.loads(Path(args[0]).read_text(encoding="utf-8"))
    # other libraries' records and warnings: to run.log (the main process's), the console only verbose
    with route_library_output(debug=bool(spec["console"]["verbose"])):
        return _main(spec)


def _main(spec: dict[str, Any]) -> int:
    rank = int(os.environ.get("RANK", "0"))
    failures = Path(spec["failures"])
    try:
        backend, job = load_job(spec)
        try:
            train(backend, job, spec["console"], Path(spec["result"]))
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
        write_failure(failures, rank, exc)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"error (training process {rank}): {first}", flush=True)
        return 1
    return 0


def exit_now(code: int) -> None:
    """Leave without tearing the interpreter down: everything is written and flushed by then, and a DDP
    model garbage-collected at shutdown can deadlock (its gloo process group joins a thread that waits for
    the GIL the dying main thread holds; seen with torch 2.13)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
