"""What the backends that train over several processes share: the ``--num-processes`` flag, the CUDA
capability probe, the hardware checks of a process count and precision, and the devices line of a plan.
Pure functions of options and ``Capabilities`` (the probe imports torch only when called)."""

from __future__ import annotations

import os

from whisper_tune.backend.protocol import Capabilities, Flag, Issue

NUM_PROCESSES = Flag(
    "--num-processes",
    "backend.num_processes",
    "Training processes on this machine, one per GPU (per machine with several machines).",
    min=1,
)


def cuda_capabilities() -> Capabilities:
    """What torch sees: CPU cores, CUDA device count, memory of each (GiB) and bf16 support. Never
    raises (a broken driver must not break ``whisper-tune backends``)."""
    cpus = os.cpu_count() or 1
    try:
        # lazy: keeps torch out of this module's import (probes run on every CLI command)
        import torch

        if not torch.cuda.is_available():
            return Capabilities(cpu_count=cpus)
        count = torch.cuda.device_count()
        memory = tuple(
            round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1) for i in range(count)
        )
        return Capabilities(
            cpu_count=cpus,
            cuda_devices=count,
            cuda_memory_gib=memory,
            cuda_bf16=bool(torch.cuda.is_bf16_supported()),
        )
    except Exception:
        return Capabilities(cpu_count=cpus)


def process_issues(
    caps: Capabilities,
    *,
    cpu: bool,
    num_processes: int,
    precision: str,
    no_gpu: Issue,
    bf16_message: str = "these GPUs have no bf16 support",
) -> list[Issue]:
    """Hardware problems of ``num_processes`` processes at ``precision`` on the CPU (``cpu``) or on one
    CUDA GPU each; ``no_gpu`` is the backend's own issue when no CUDA device is visible (it names the
    backend's CPU mode)."""
    issues = []
    if cpu:
        if precision == "fp16":
            issues.append(
                Issue("training.precision", "fp16 is not supported on the CPU", hint="use fp32 or bf16")
            )
        if num_processes > caps.cpu_count:
            issues.append(
                Issue(
                    "backend.num_processes",
                    f"{num_processes} CPU processes asked for; this machine has {caps.cpu_count} cores "
                    "(each process holds a copy of the model: more processes than cores only run out of "
                    "memory)",
                    hint=f"use at most --num-processes {caps.cpu_count}",
                    hardware=True,
                )
            )
        return issues
    if caps.cuda_devices == 0:
        return [no_gpu]
    if num_processes > caps.cuda_devices:
        issues.append(
            Issue(
                "backend.num_processes",
                f"{num_processes} processes asked for; {caps.cuda_devices} CUDA GPUs are visible",
                hint=f"use --num-processes {caps.cuda_devices} (one process per GPU) or check "
                "CUDA_VISIBLE_DEVICES",
                hardware=True,
            )
        )
    if precision == "bf16" and not caps.cuda_bf16:
        issues.append(
            Issue("training.precision", bf16_message, hint="use training.precision=fp16", hardware=True)
        )
    return issues


def devices_line(num_processes: int, *, cpu: bool, num_machines: int = 1) -> str:
    """The plan's devices for several processes: '2 CPU processes (gloo)' or '8 CUDA GPUs, one process
    each on each of 2 machines'."""
    where = "CPU processes (gloo)" if cpu else "CUDA GPUs, one process each"
    machines = f" on each of {num_machines} machines" if num_machines > 1 else ""
    return f"{num_processes} {where}{machines}"
