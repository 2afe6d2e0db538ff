"""Starting the training processes with ``accelerate launch``, and reading back what they wrote.

The parent (``whisper-tune run``) writes, under ``<run dir>/accelerate/``:

* ``config-machine<R>.yaml``: an Accelerate config file (Accelerate's own format, reusable with
  ``accelerate launch --config_file``) holding every launch setting, so a user's default Accelerate config
  never changes a run behind its back;
* ``worker-machine<R>.json``: the ``TrainJob`` plus console settings for the workers;

then runs ``python -m accelerate.commands.launch --config_file ... -m whisper_tune_accelerate.worker
worker-machine<R>.json``. Accelerate starts ``num_processes`` workers on this machine (through torchrun
when there is more than one process in all). The workers print to this process's stderr (main rank only
shows progress bars) and append to ``run.log``; the launcher's own output goes to
``launcher-machine<R>.log``. The local main worker writes ``result-machine<R>.json``; a worker that fails
writes ``failure-rank<N>.json``, which becomes one error here.

CPU runs: ``accelerate launch --cpu`` starts a single process (more need mpirun), so CPU runs are launched
like GPU ones (torchrun) and the workers build ``Accelerator(cpu=True)``, which gives a gloo process group.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from whisper_tune.backend.protocol import TrainJob
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
from whisper_tune_accelerate.options import AccelerateOptions, precision_to_mixed

WORKER_MODULE = "whisper_tune_accelerate.worker"
#: WhisperTuneError classes a worker's failure is re-raised as, by name.
ERROR_CLASSES: dict[str, type[WhisperTuneError]] = {
    cls.__name__: cls
    for cls in (ConfigError, DataError, ModelError, BackendUnavailableError, HardwareError, OutputError)
}
FSDP_LAYERS = "WhisperEncoderLayer,WhisperDecoderLayer"


class WorkerFailed(WhisperTuneError):
    """A training process stopped with an unexpected error (its traceback is in the run directory)."""

    exit_code = 1
    kind = "worker"


@dataclass(frozen=True)
class LaunchFiles:
    """The files one machine's launch reads and writes, under ``<run dir>/accelerate/``."""

    root: Path
    machine_rank: int

    @classmethod
    def for_job(cls, job: TrainJob, machine_rank: int) -> LaunchFiles:
        return cls(Path(job.run_dir) / "accelerate", machine_rank)

    @property
    def config(self) -> Path:
        return self.root / f"config-machine{self.machine_rank}.yaml"

    @property
    def worker_job(self) -> Path:
        return self.root / f"worker-machine{self.machine_rank}.json"

    @property
    def result(self) -> Path:
        return self.root / f"result-machine{self.machine_rank}.json"

    @property
    def launcher_log(self) -> Path:
        return self.root / f"launcher-machine{self.machine_rank}.log"

    def failure(self, rank: int) -> Path:
        return self.root / f"failure-rank{rank}.json"

    def traceback(self, rank: int) -> Path:
        return self.root / f"traceback-rank{rank}.txt"


def accelerate_config(
    options: AccelerateOptions, precision: str, max_grad_norm: float | None, gradient_accumulation_steps: int
) -> dict[str, Any]:
    """The Accelerate config file (``accelerate config``'s YAML layout) for these options."""
    world = options.world_size
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "mixed_precision": precision_to_mixed(precision),
        # Never True: `accelerate launch --cpu` starts one process; the workers' Accelerator(cpu=True) is.
        "use_cpu": False,
        "debug": False,
        "num_processes": world,
        "num_machines": options.num_machines,
        "machine_rank": options.machine_rank,
        "main_process_ip": options.main_process_ip,
        # 0: Accelerate picks a free port (one machine only; several need an agreed port).
        "main_process_port": options.main_process_port if options.main_process_port is not None else 0,
        "rdzv_backend": "static",
        "same_network": True,
        "gpu_ids": "all",
        "downcast_bf16": "no",
        "enable_cpu_affinity": False,
    }
    if options.strategy == "ddp":
        config["distributed_type"] = "MULTI_GPU" if world > 1 else "NO"
    elif options.strategy == "fsdp":
        config["distributed_type"] = "FSDP"
        config["fsdp_config"] = {
            "fsdp_version": 1,
            "fsdp_sharding_strategy": options.fsdp_sharding_strategy,
            "fsdp_offload_params": options.offload,
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_transformer_layer_cls_to_wrap": FSDP_LAYERS,
            "fsdp_state_dict_type": "FULL_STATE_DICT",
            "fsdp_use_orig_params": True,
            "fsdp_sync_module_states": True,
            "fsdp_cpu_ram_efficient_loading": False,
            "fsdp_backward_prefetch": "BACKWARD_PRE",
        }
    else:
        stage = 2 if options.strategy == "deepspeed-zero2" else 3
        offload = "cpu" if options.offload else "none"
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


def launch_command(files: LaunchFiles) -> list[str]:
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(files.config),
        "--module",
        WORKER_MODULE,
        str(files.worker_job),
    ]


def write_launch_files(job: TrainJob, options: AccelerateOptions, console: dict[str, bool]) -> LaunchFiles:
    import yaml

    files = LaunchFiles.for_job(job, options.machine_rank)
    files.root.mkdir(parents=True, exist_ok=True)
    for stale in (files.result, *files.root.glob("failure-rank*.json")):
        stale.unlink(missing_ok=True)
    training = job.config.training
    config = accelerate_config(
        options, training.precision, training.max_grad_norm, training.gradient_accumulation_steps
    )
    files.config.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    worker = {
        # The config in its YAML layout, validated again in the worker (backend options included).
        "config": job.config.to_yaml_dict(),
        "job": job.model_dump(mode="json", exclude={"config"}),
        "console": console,
        "result": str(files.result),
    }
    files.worker_job.write_text(json.dumps(worker, indent=1), encoding="utf-8")
    return files


def run_launcher(files: LaunchFiles, run_log: Path) -> dict[str, Any]:
    """Run the launch command; the local main worker's result, or one clear error."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    command = launch_command(files)
    with files.launcher_log.open("w", encoding="utf-8") as log:
        log.write(" ".join(command) + "\n")
        log.flush()
        # Workers' stdout is this process's stderr (the worker sends its stderr there too).
        process = subprocess.Popen(command, stdout=2, stderr=log, env=env)
        interrupted = False
        try:
            code = process.wait()
        except KeyboardInterrupt:
            interrupted = True
            try:
                code = process.wait(timeout=60)  # the workers got the Ctrl-C too: let them checkpoint
            except (subprocess.TimeoutExpired, KeyboardInterrupt):
                process.kill()
                code = process.wait()
    if code == 0 and files.result.is_file():
        result: dict[str, Any] = json.loads(files.result.read_text(encoding="utf-8"))
        return result
    if interrupted:
        raise InterruptedRun(f"interrupted; the training processes were stopped (see {run_log})")
    raise launch_failure(files, code, run_log)


def launch_failure(files: LaunchFiles, code: int, run_log: Path) -> WhisperTuneError:
    """The error of a failed launch: a worker's own error if one wrote it, else the launcher's last line."""
    failures = sorted(files.root.glob("failure-rank*.json"), key=lambda p: int(p.stem.split("rank")[1]))
    if failures:
        failure = json.loads(failures[0].read_text(encoding="utf-8"))
        cls = ERROR_CLASSES.get(failure["error"], WorkerFailed)
        rank = failures[0].stem.split("rank")[1]
        message = f"training process {rank}: {failure['message']}"
        if cls is WorkerFailed:
            return WorkerFailed(
                message, hint=f"the traceback is in {files.traceback(int(rank))}; the run log is {run_log}"
            )
        return cls(message, hint=failure.get("hint"))
    last = last_error_line(files.launcher_log)
    return WorkerFailed(
        f"the accelerate launcher stopped with exit code {code}" + (f": {last}" if last else ""),
        hint=f"launcher output: {files.launcher_log}; run log: {run_log}",
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
