"""How a run's training starts — planned as data, executed in one place.

A backend's ``plan()`` returns a ``Launch`` with its ``Plan``: ``in-process`` (the backend's ``train`` runs in
this process), or a ``command``: the exact argv, the environment variables it sets, the files written
before it starts (an Accelerate config, say), where the job file goes and where the result comes back.
Paths in a launch are written with ``{run_dir}`` and resolved when the run directory exists, so
``whisper-tune plan`` prints the same command that ``whisper-tune run`` executes (``launch.json`` in the
run directory records it).

``run_launch`` is the one place that runs a planned command: it writes the files and the job, starts the
command, streams its output, stops it on Ctrl-C, and maps its failures onto whisper-tune's errors — a
worker's ``failure-rank<N>.json`` (``{"error": <error class name>, "message", "hint"}``), else a line
``<prefix>: error[<kind>]: <message>`` on its output, else the end of its output. Planning is pure
(``accelerate_launch`` is a function from options to a ``Launch``, in the spirit of Accelerate's own
``prepare_*_env(args) -> env``) and is tested without GPUs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from whisper_tune.backend.protocol import RUN_DIR as RUN_DIR
from whisper_tune.backend.protocol import Launch as Launch
from whisper_tune.backend.protocol import TrainJob, TrainResult
from whisper_tune.errors import (
    BackendUnavailableError,
    ConfigError,
    DataError,
    HardwareError,
    InterruptedRun,
    ModelError,
    OutputError,
    WhisperTuneError,
)

if TYPE_CHECKING:
    from whisper_tune.recipe.progress import Reporter

#: The core's worker for backends launched through ``accelerate launch``.
WORKER_MODULE = "whisper_tune.backend.worker"
#: WhisperTuneError classes a worker's failure is re-raised as, by class name or by ``kind``.
ERROR_CLASSES: dict[str, type[WhisperTuneError]] = {
    key: cls
    for cls in (ConfigError, DataError, ModelError, BackendUnavailableError, HardwareError, OutputError)
    for key in (cls.__name__, cls.kind)
}
FSDP_LAYERS = "WhisperEncoderLayer,WhisperDecoderLayer"


class WorkerFailed(WhisperTuneError):
    """A training process stopped with an unexpected error (its traceback is in the run directory)."""

    exit_code = 1
    kind = "worker"


# --- planning: accelerate launch ------------------------------------------------------------------


class ProcessOptions(BaseModel):
    """Options of a backend that can train over several processes and machines through ``accelerate
    launch``. Names follow its flags; ``num_processes`` is per machine (one per GPU)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    num_processes: int = Field(
        1,
        ge=1,
        description="Training processes on this machine, one per GPU ('--num-processes'). The global "
        "batch is training.batch_size x num_processes x num_machines x gradient_accumulation_steps.",
    )
    num_machines: int = Field(
        1, ge=1, description="Machines (nodes) taking part; each runs the same command."
    )
    machine_rank: int = Field(
        0, ge=0, description="This machine's rank, 0 .. num_machines-1; machine 0 hosts the rendezvous."
    )
    main_process_ip: str | None = Field(
        None,
        description="Address of machine 0, reachable from every machine; required with num_machines > 1.",
    )
    main_process_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Rendezvous port on machine 0; required with num_machines > 1. Unset on one machine: a "
        "free port is picked.",
    )

    @model_validator(mode="after")
    def _machines(self) -> ProcessOptions:
        if self.machine_rank >= self.num_machines:
            raise ValueError(
                f"machine_rank {self.machine_rank} must be below num_machines {self.num_machines}"
            )
        if self.num_machines > 1 and (self.main_process_ip is None or self.main_process_port is None):
            raise ValueError("num_machines > 1 needs main_process_ip and main_process_port (of machine 0)")
        return self

    @property
    def world_size(self) -> int:
        return self.num_processes * self.num_machines


@dataclass(frozen=True)
class Sharding:
    """How the model is spread over the processes (the accelerate backend's strategy options)."""

    strategy: Literal["ddp", "fsdp", "deepspeed-zero2", "deepspeed-zero3"] = "ddp"
    fsdp_sharding_strategy: str = "FULL_SHARD"
    offload: bool = False


def accelerate_config(
    processes: ProcessOptions,
    precision: str,
    max_grad_norm: float | None,
    gradient_accumulation_steps: int,
    sharding: Sharding = Sharding(),
) -> dict[str, Any]:
    """The Accelerate config file (``accelerate config``'s YAML layout) for these options."""
    from whisper_tune.recipe.loop import MIXED_PRECISION

    world = processes.world_size
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "mixed_precision": MIXED_PRECISION[precision],
        # Never True: `accelerate launch --cpu` starts one process; the workers' Accelerator(cpu=True) is.
        "use_cpu": False,
        "debug": False,
        "num_processes": world,
        "num_machines": processes.num_machines,
        "machine_rank": processes.machine_rank,
        "main_process_ip": processes.main_process_ip,
        # 0: Accelerate picks a free port (one machine only; several need an agreed port).
        "main_process_port": processes.main_process_port if processes.main_process_port is not None else 0,
        "rdzv_backend": "static",
        "same_network": True,
        "gpu_ids": "all",
        "downcast_bf16": "no",
        "enable_cpu_affinity": False,
    }
    if sharding.strategy == "ddp":
        config["distributed_type"] = "MULTI_GPU" if world > 1 else "NO"
    elif sharding.strategy == "fsdp":
        config["distributed_type"] = "FSDP"
        config["fsdp_config"] = {
            "fsdp_version": 1,
            "fsdp_sharding_strategy": sharding.fsdp_sharding_strategy,
            "fsdp_offload_params": sharding.offload,
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_transformer_layer_cls_to_wrap": FSDP_LAYERS,
            "fsdp_state_dict_type": "FULL_STATE_DICT",
            "fsdp_use_orig_params": True,
            "fsdp_sync_module_states": True,
            "fsdp_cpu_ram_efficient_loading": False,
            "fsdp_backward_prefetch": "BACKWARD_PRE",
        }
    else:
        stage = 2 if sharding.strategy == "deepspeed-zero2" else 3
        offload = "cpu" if sharding.offload else "none"
        config["distributed_type"] = "DEEPSPEED"
        config["deepspeed_config"] = {
            "zero_stage": stage,
            "gradient_accumulation_steps": gradient_accumulation_steps,
            "gradient_clipping": max_grad_norm if max_grad_norm is not None else 0.0,
            "offload_optimizer_device": offload,
            "offload_param_device": offload if stage == 3 else "none",
            "zero3_init_flag": False,
            "zero3_save_16bit_model": stage == 3,
        }
    return config


def accelerate_launch(
    processes: ProcessOptions,
    precision: str,
    max_grad_norm: float | None,
    gradient_accumulation_steps: int,
    sharding: Sharding = Sharding(),
) -> Launch:
    """``accelerate launch`` of the core's worker with a generated config file: a pure function.

    Accelerate starts ``num_processes`` workers on this machine (through torchrun when there are more
    than one in all). CPU runs are launched like GPU ones and their workers build
    ``Accelerator(cpu=True)``, which gives a gloo process group."""
    import yaml

    rank = processes.machine_rank
    folder = f"{RUN_DIR}/launch"
    config = accelerate_config(processes, precision, max_grad_norm, gradient_accumulation_steps, sharding)
    config_file = f"{folder}/accelerate-machine{rank}.yaml"
    job_file = f"{folder}/job-machine{rank}.json"
    return Launch(
        mode="command",
        argv=(
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            config_file,
            "--module",
            WORKER_MODULE,
            job_file,
        ),
        env=(("PYTHONUNBUFFERED", "1"), ("TOKENIZERS_PARALLELISM", "false")),
        files=((config_file, yaml.safe_dump(config, sort_keys=False)),),
        job_file=job_file,
        result_file=f"{folder}/result-machine{rank}.json",
        failure_dir=folder,
        output="console",
        launcher_log=f"{folder}/launcher-machine{rank}.log",
    )


# --- execution ------------------------------------------------------------------------------------


def job_document(job: TrainJob, reporter: Reporter, launch: Launch) -> dict[str, Any]:
    """The core's job file for ``whisper_tune.backend.worker``."""
    import logging

    verbose = any(
        h.level <= logging.DEBUG
        for h in reporter.logger.handlers
        if type(h) is not logging.FileHandler and isinstance(h, logging.StreamHandler)
    )
    return {
        # the config in its YAML layout, validated again in the worker (backend options included)
        "config": job.config.to_yaml_dict(),
        "job": job.model_dump(mode="json", exclude={"config", "launch"}),
        "console": {"quiet": reporter.quiet, "progress": reporter.show_progress, "verbose": verbose},
        "result": launch.result_file,
        "failures": launch.failure_dir,
    }


@dataclass
class _Output:
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=40))


def run_launch(job: TrainJob, reporter: Reporter, backend_job: dict[str, Any] | None = None) -> TrainResult:
    """Run ``job.launch`` (a resolved command launch) to the end and return the worker's result, or
    raise one clear error. ``backend_job`` is the job file's content for ``job_format: backend``."""
    launch = job.launch
    assert launch is not None and launch.mode == "command" and launch.result_file is not None
    run_dir = Path(job.run_dir)
    for path, content in launch.files:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(content, encoding="utf-8")
    if launch.failure_dir:
        Path(launch.failure_dir).mkdir(parents=True, exist_ok=True)
        for stale in Path(launch.failure_dir).glob("failure-rank*.json"):
            stale.unlink()
    result_file = Path(launch.result_file)
    result_file.parent.mkdir(parents=True, exist_ok=True)
    result_file.unlink(missing_ok=True)
    if launch.job_file:
        document = backend_job if launch.job_format == "backend" else job_document(job, reporter, launch)
        Path(launch.job_file).parent.mkdir(parents=True, exist_ok=True)
        Path(launch.job_file).write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    record = json.dumps(_launch_record(launch), indent=1) + "\n"
    (run_dir / "launch.json").write_text(record, encoding="utf-8")
    reporter.debug(f"launch: {launch.command_line()}")
    env = {**os.environ, **dict(launch.env)}
    output = _Output()
    code, interrupted = _run(launch, env, reporter, output)
    if code == 0 and result_file.is_file():
        raw = read_result(result_file, launch)
        try:
            return TrainResult.model_validate(raw)
        except ValueError as exc:
            raise WhisperTuneError(
                f"the training command's result {result_file} is malformed: {exc}"
            ) from None
    if interrupted:
        raise InterruptedRun(f"interrupted; the training processes were stopped (see {run_dir / 'run.log'})")
    raise launch_failure(launch, code, list(output.tail), run_dir / "run.log")


def _launch_record(launch: Launch) -> dict[str, Any]:
    return {
        "command": launch.command_line(),
        "argv": list(launch.argv),
        "env": dict(launch.env),
        "cwd": launch.cwd,
        "files": [path for path, _ in launch.files],
        "job_file": launch.job_file,
        "result_file": launch.result_file,
    }


def _run(launch: Launch, env: dict[str, str], reporter: Reporter, output: _Output) -> tuple[int, bool]:
    """Start the command and wait for it; (exit code, interrupted)."""
    log_file = Path(launch.launcher_log) if launch.launcher_log else None
    try:
        if launch.output == "console":
            assert log_file is not None
            with log_file.open("w", encoding="utf-8") as log:
                log.write(launch.command_line() + "\n")
                log.flush()
                # workers' stdout is this process's stderr (progress bars, messages); the launcher's to a log
                console = subprocess.Popen(list(launch.argv), stdout=2, stderr=log, env=env, cwd=launch.cwd)
                return _wait(console)
        process = subprocess.Popen(
            list(launch.argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=launch.cwd,
        )
    except OSError as exc:
        raise BackendUnavailableError(
            f"cannot start {launch.argv[0]}: {exc.strerror or exc}", hint=launch.failure_hint
        ) from None
    try:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip("\n")
            output.tail.append(line)
            reporter.debug(line)
    except KeyboardInterrupt:
        process.terminate()
        process.wait()
        return process.returncode, True
    return _wait(process)


def _wait(process: subprocess.Popen[Any]) -> tuple[int, bool]:
    try:
        return process.wait(), False
    except KeyboardInterrupt:
        try:
            return process.wait(timeout=60), True  # the workers got the Ctrl-C too: let them checkpoint
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            process.kill()
            return process.wait(), True


def read_result(path: Path, launch: Launch) -> dict[str, Any]:
    try:
        raw: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WhisperTuneError(
            f"the training command finished without a readable result {path}: {exc}"
        ) from None
    if launch.result_format is not None:
        name, version = launch.result_format.rsplit("/", 1)
        if raw.get("format") != name or str(raw.get("version")) != version:
            raise WhisperTuneError(
                f"{path} is not a {name} v{version} file: the backend and its worker come from different "
                "whisper-tune versions"
            )
    if launch.result_key is None:
        return raw
    if launch.result_key not in raw:
        raise WhisperTuneError(f"the training command's result {path} has no '{launch.result_key}'")
    result: dict[str, Any] = raw[launch.result_key]
    return result


def launch_failure(launch: Launch, code: int, tail: list[str], run_log: Path) -> WhisperTuneError:
    """The error of a failed launch: a worker's own report if it made one, else the end of the output."""
    if launch.failure_dir:
        folder = Path(launch.failure_dir)
        failures = sorted(folder.glob("failure-rank*.json"), key=lambda p: int(p.stem.split("rank")[1]))
        if failures:
            failure = json.loads(failures[0].read_text(encoding="utf-8"))
            rank = failures[0].stem.split("rank")[1]
            cls = ERROR_CLASSES.get(failure["error"])
            message = f"training process {rank}: {failure['message']}"
            if cls is None:
                traceback = folder / f"traceback-rank{rank}.txt"
                hint = f"the traceback is in {traceback}; the run log is {run_log}"
                return WorkerFailed(message, hint=hint)
            return cls(message, hint=failure.get("hint") or launch.failure_hint)
    if len(launch.argv) > 2 and launch.argv[1] == "-m":
        module = launch.argv[2]
        if any(f"No module named {module}" in line or f"No module named '{module}'" in line for line in tail):
            return BackendUnavailableError(
                f"{launch.argv[0]} cannot import the worker ({module})", hint=launch.failure_hint
            )
    if launch.error_prefix:
        pattern = re.compile(rf"^{re.escape(launch.error_prefix)}: error\[(\w+)\]: (.*)$")
        kinds = dict(launch.error_kinds)
        for line in reversed(tail):
            found = pattern.match(line)
            if found:
                kind, message = found.group(1), found.group(2)
                cls = ERROR_CLASSES.get(kinds.get(kind, kind), DataError)
                return cls(message, hint=launch.failure_hint if cls is BackendUnavailableError else None)
    if launch.launcher_log:
        last = last_error_line(Path(launch.launcher_log))
        return WorkerFailed(
            f"the training command stopped with exit code {code}" + (f": {last}" if last else ""),
            hint=f"launcher output: {launch.launcher_log}; run log: {run_log}",
        )
    shown = "\n    ".join(tail[-12:])
    return WhisperTuneError(
        f"the training command failed (exit code {code}); the end of its output:\n    {shown}",
        hint=launch.failure_hint,
    )


def last_error_line(log: Path) -> str:
    """The last line of a launcher log that names an error (torchrun and accelerate end with them)."""
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        stripped = line.strip()
        if "Error" in stripped.split(":")[0] or stripped.startswith("error"):
            return stripped[:300]
    return ""
