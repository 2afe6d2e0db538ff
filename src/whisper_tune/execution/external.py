"""A process an outside launcher started runs as its rank of ONE run, not as a run of its own.

``torchrun --nproc_per_node 2 -m whisper_tune run …`` and ``accelerate launch --num_processes 2 -m
whisper_tune run …`` start the same command several times, with ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK`` set. Each of those processes joins the launcher's process group (its Accelerator); rank 0
opens the run as ``whisper-tune run`` does (checks, one run directory, the data prepared once), tells the
other ranks where the run directory is, and writes the job there (``launch/job-ranks.json``); the other
ranks wait for it. Then every rank runs the phases a worker of our own launch runs (``worker.train_rank``:
the same loop, its shard of the data, checkpoints and ``final/`` written by rank 0), so a job started by
torchrun ends with the weights ``--num-processes N`` gives. Rank 0 scores and reports; the others end
quietly.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from whisper_tune.backend.launch import Launch
from whisper_tune.backend.processes import devices_line
from whisper_tune.backend.protocol import Backend, Plan, TrainJob, TrainResult
from whisper_tune.backend.registry import Registry
from whisper_tune.backend.setup import InProcessTrainer
from whisper_tune.config.schema import RunConfig
from whisper_tune.console import Reporter
from whisper_tune.errors import ConfigError
from whisper_tune.execution.worker import load_job, train_rank
from whisper_tune.training.phases import accelerator_for, seed

#: where rank 0 writes the job the other ranks train (relative to the run directory)
RANKS_JOB = "launch/job-ranks.json"
POLL_SECONDS = 0.2


@dataclass(frozen=True)
class OutsideLaunch:
    """This process's place in a job an outside launcher started (from its environment variables)."""

    rank: int
    world_size: int
    local_world_size: int
    #: "torchrun", "accelerate launch", or what else set WORLD_SIZE
    launcher: str

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def machines(self) -> int:
        return max(1, self.world_size // self.local_world_size)


def outside_launch(env: Mapping[str, str] | None = None) -> OutsideLaunch | None:
    """The launch this process is one rank of (``WORLD_SIZE`` > 1 and ``RANK`` set), else None."""
    env = os.environ if env is None else env
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "-1"))
        local_world = int(env.get("LOCAL_WORLD_SIZE", str(world)))
    except ValueError:
        return None
    if world <= 1 or rank < 0:
        return None
    if any(key.startswith("ACCELERATE_") for key in env):
        launcher = "accelerate launch"
    elif "TORCHELASTIC_RUN_ID" in env:
        launcher = "torchrun"
    else:
        launcher = f"an outside launcher (WORLD_SIZE={world})"
    return OutsideLaunch(rank, world, max(1, min(local_world, world)), launcher)


def check_outside(backend: Backend, config: RunConfig, outside: OutsideLaunch) -> None:
    """What cannot run as a rank of an outside launch: a backend with a runtime of its own, and process
    counts in the config that disagree with the launcher's."""
    if not isinstance(backend, InProcessTrainer):
        raise ConfigError(
            f"the {backend.name} backend trains in a runtime of its own: it cannot run as one of "
            f"{outside.world_size} processes started by {outside.launcher}",
            hint=f"run 'whisper-tune run --backend {backend.name} …' without {outside.launcher}",
        )
    options = config.backend.options
    for key, launched, word in (
        ("num_processes", outside.local_world_size, "processes on this machine"),
        ("num_machines", outside.machines, "machines"),
    ):
        configured = getattr(options, key, None)
        if configured not in (None, 1, launched):
            raise ConfigError(
                f"backend.{key} is {configured}, but {outside.launcher} started {launched} {word}",
                hint=f"leave backend.{key} (--num-processes) out: under {outside.launcher} the launcher "
                "decides how many processes train",
            )


def outside_plan(plan: Plan, backend: Backend, config: RunConfig, outside: OutsideLaunch) -> Plan:
    """The backend's plan as the outside launcher runs it: its processes, trained in place."""
    assert isinstance(backend, InProcessTrainer), "check_outside first"
    devices = devices_line(
        outside.local_world_size, cpu=backend.uses_cpu(config), num_machines=outside.machines
    )
    return dataclasses.replace(
        plan,
        devices=f"{devices}, started by {outside.launcher}",
        processes=outside.world_size,
        launch=Launch(),
        notes=(
            *plan.notes,
            f"started by {outside.launcher}: {outside.world_size} processes train this one run; rank 0 "
            "prepares the data and writes the run directory",
        ),
    )


def join(backend: Backend, config: RunConfig) -> Any:
    """This rank's Accelerator: joining the launcher's process group (every rank calls it)."""
    assert isinstance(backend, InProcessTrainer), "check_outside first"
    return accelerator_for(backend, config)


def share_run_dir(accelerator: Any, run_dir: Path | None) -> tuple[Path, str]:
    """Rank 0's run directory and an id of this launch, on every rank (a collective call)."""
    from accelerate.utils import broadcast_object_list

    holder: list[Any] = [None if run_dir is None else str(run_dir), uuid.uuid4().hex]
    broadcast_object_list(holder, from_process=0)
    return Path(holder[0]), str(holder[1])


def publish_job(job: TrainJob, launch_id: str) -> Path:
    """Rank 0: the job the other ranks train, in the worker's job layout (written whole, then renamed)."""
    path = Path(job.run_dir) / RANKS_JOB
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "launch_id": launch_id,
        "config": job.config.to_yaml_dict(),
        "job": job.model_dump(mode="json", exclude={"config", "launch"}),
    }
    tmp = path.with_suffix(".partial")
    tmp.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    tmp.rename(path)
    return path


def wait_for_job(run_dir: Path, launch_id: str) -> dict[str, Any]:
    """The job rank 0 writes for this launch, once it is there (rank 0 prepares the data first, which
    may take long; if rank 0 fails, the launcher stops this process)."""
    path = run_dir / RANKS_JOB
    while True:
        if path.is_file():
            document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
            if document.get("launch_id") == launch_id:  # not one left by an earlier launch of this run
                return document
        time.sleep(POLL_SECONDS)


def train_as_rank(
    backend: InProcessTrainer, job: TrainJob, accelerator: Any, reporter: Reporter, processor: Any = None
) -> TrainResult:
    """This rank's phases of ``job``, as a worker of our own launch runs them."""
    seed(job.config)
    outcome = train_rank(backend, job, accelerator, reporter, processor)
    accelerator.wait_for_everyone()
    return outcome.result


def follow(config: RunConfig, registry: Registry | None, outside: OutsideLaunch) -> Path:
    """A rank other than 0: join, learn the run directory, wait for the job, train its share; returns
    the run directory rank 0 writes."""
    backend = (registry or Registry()).get(config.backend.name)
    check_outside(backend, config, outside)
    accelerator = join(backend, config)
    run_dir, launch_id = share_run_dir(accelerator, None)
    backend, job = load_job(wait_for_job(run_dir, launch_id))
    train_as_rank(backend, job, accelerator, Reporter.silent())
    return run_dir
