"""The core's one choice of where a job trains: the backend's own runtime, this process, the workers of
the backend's planned launch, or — when an outside launcher (torchrun, accelerate launch) started this
process as one rank of the job — this process as that rank (``execution/external.py``)."""

from __future__ import annotations

from typing import Any

from whisper_tune.backend.protocol import Backend, OwnRuntime, TrainJob, TrainResult
from whisper_tune.backend.setup import InProcessTrainer
from whisper_tune.console import Reporter
from whisper_tune.execution.external import train_as_rank
from whisper_tune.execution.launcher import run_launch
from whisper_tune.training.phases import train_in_process


def train(
    backend: Backend, job: TrainJob, reporter: Reporter, processor: Any = None, accelerator: Any = None
) -> TrainResult:
    """Train ``job``: an in-process backend here (``processor``: the run's, loaded once), as this rank of
    an outside launch (``accelerator``: the rank's, joined when the run opened) or in the workers its plan
    launches; any other backend through its own ``train``."""
    if isinstance(backend, InProcessTrainer):
        if accelerator is not None:
            return train_as_rank(backend, job, accelerator, reporter, processor)
        if job.launch is not None and job.launch.mode == "command":
            if job.launch.description:
                reporter.info(f"starting {job.launch.description}")
            return run_launch(job, reporter)
        return train_in_process(backend, job, reporter, processor)
    if isinstance(backend, OwnRuntime):
        return backend.train(job, reporter)
    raise TypeError(f"backend {backend.name} has neither training_setup nor train")
