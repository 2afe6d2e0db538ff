"""How a run's training starts — planned as data, executed in one place.

A backend's ``plan()`` returns a ``Launch`` with its ``Plan``: ``in-process`` (the backend's ``train`` runs in
this process), or a ``command``: the exact argv, the environment variables it sets, the files written
before it starts (an Accelerate config, say), where the job file goes and where the result comes back.
Paths in a launch are written with ``{run_dir}`` and resolved when the run directory exists, so
``whisper-tune plan`` prints the same command that ``whisper-tune run`` executes (``launch.json`` in the
run directory records it).

``run_launch`` (``execution/launcher.py``) is the one place that runs a planned command. Planning is pure
(``accelerate_launch`` is a function from options to a ``Launch``, in the spirit of Accelerate's own
``prepare_*_env(args) -> env``) and is tested without GPUs.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: training.precision -> Accelerate's mixed_precision (the loop's Accelerator and a launch's config file)
MIXED_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}

RUN_DIR = "{run_dir}"
#: The core's worker for backends launched through ``accelerate launch``.
WORKER_MODULE = "whisper_tune.execution.worker"
FSDP_LAYERS = "WhisperEncoderLayer,WhisperDecoderLayer"


@dataclass(frozen=True)
class Launch:
    """How training starts. Pure data (JSON-serialisable); paths may hold ``{run_dir}``."""

    mode: Literal["in-process", "command"] = "in-process"
    argv: tuple[str, ...] = ()
    #: what starting it means, in words ("2 training processes on this machine (2 in all) with ...")
    description: str = ""
    #: variables set for the command on top of the inherited environment
    env: tuple[tuple[str, str], ...] = ()
    cwd: str | None = None
    #: files written before the command starts: (path, content)
    files: tuple[tuple[str, str], ...] = ()
    #: where the job file is written ("whisper-tune": the core's job document; "backend": the backend's)
    job_file: str | None = None
    job_format: Literal["whisper-tune", "backend"] = "whisper-tune"
    result_file: str | None = None
    #: the key holding the TrainResult in the result file (None: the file is the TrainResult)
    result_key: str | None = None
    #: "<format>/<version>" the result file must declare in its "format" and "version" keys
    result_format: str | None = None
    #: folder where workers write failure-rank<N>.json (and traceback-rank<N>.txt)
    failure_dir: str | None = None
    #: how the worker reports a known problem on its output: "<prefix>: error[<kind>]: <message>"
    error_prefix: str | None = None
    #: worker error kinds -> whisper-tune error class names (beyond the classes' own kinds)
    error_kinds: tuple[tuple[str, str], ...] = ()
    #: a hint added to every failure (how to set the stack up, say)
    failure_hint: str | None = None
    #: "console": the command's output goes to this process's stderr; "reporter": line by line to the log
    output: Literal["console", "reporter"] = "console"
    #: the launcher's own output, when the command's stdout goes to the console (relative to the run dir)
    launcher_log: str | None = None

    def resolved(self, run_dir: Path | str) -> Launch:
        """This launch with ``{run_dir}`` replaced by ``run_dir``."""

        def sub(value: str | None) -> Any:
            return None if value is None else value.replace(RUN_DIR, str(run_dir))

        return replace(
            self,
            argv=tuple(sub(a) for a in self.argv),
            env=tuple((k, sub(v)) for k, v in self.env),
            cwd=sub(self.cwd),
            files=tuple((sub(p), c) for p, c in self.files),
            job_file=sub(self.job_file),
            result_file=sub(self.result_file),
            failure_dir=sub(self.failure_dir),
            launcher_log=sub(self.launcher_log),
        )

    def command_line(self) -> str:
        """The command as one shell line, environment first (what ``whisper-tune plan`` prints)."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env)
        cd = f"cd {shlex.quote(self.cwd)} && " if self.cwd else ""
        return cd + (env + " " if env else "") + shlex.join(self.argv)

    def describe(self) -> list[str]:
        if self.mode == "in-process":
            return ["in this process (no command is started)"]
        lines = [self.command_line()]
        lines += [f"writes {path}" for path, _ in self.files]
        if self.job_file:
            lines.append(f"job file {self.job_file} (written by whisper-tune run once the data is prepared)")
        if self.result_file:
            lines.append(f"result file {self.result_file}")
        return lines


# --- planning: accelerate launch ------------------------------------------------------------------


#: the one CPU switch, spelled the same on every backend
CPU_SWITCH = "backend.device=cpu"
_NOTED: set[str] = set()


def read_old_cpu_switch(data: Any) -> Any:
    """``backend.cpu: true / false`` (the accelerate backend's old spelling) as ``backend.device: cpu /
    cuda``, with a deprecation note printed once per process."""
    if not isinstance(data, dict) or "cpu" not in data:
        return data
    data = dict(data)
    old = data.pop("cpu")
    if not isinstance(old, bool):
        raise ValueError(f"backend.cpu is the old spelling of {CPU_SWITCH}: write backend.device=cpu or cuda")
    device = "cpu" if old else "cuda"
    if data.setdefault("device", device) != device:
        raise ValueError(
            f"backend.cpu={str(old).lower()} and backend.device={data['device']} disagree: write "
            "backend.device only"
        )
    if "cpu" not in _NOTED:
        _NOTED.add("cpu")
        import logging

        logging.getLogger("whisper_tune").warning(
            f"note: backend.cpu={str(old).lower()} is the old spelling of backend.device={device} (one CPU "
            f"switch for every backend); it still works, but write backend.device={device}"
        )
    return data


class ProcessOptions(BaseModel):
    """Options of a backend that can train over several processes and machines through ``accelerate
    launch``. Names follow its flags; ``num_processes`` is per machine (one per GPU). ``device`` is the
    CPU switch every backend spells the same (``backend.device=cpu``; ``backend.cpu=true`` is still read)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    device: Literal["cuda", "cpu"] = Field(
        "cuda",
        description="'cuda' (one GPU per process) or 'cpu' (the processes on the CPU, gloo): "
        "backend.device=cpu on every backend.",
    )

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

    @model_validator(mode="before")
    @classmethod
    def _old_cpu_switch(cls, data: Any) -> Any:
        return read_old_cpu_switch(data)

    @property
    def cpu(self) -> bool:
        """The processes run on the CPU (``backend.device=cpu``)."""
        return self.device == "cpu"

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
        description=f"{processes.num_processes} training processes on this machine "
        f"({processes.world_size} in all) with accelerate launch",
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
