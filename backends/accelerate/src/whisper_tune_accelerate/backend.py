"""The ``accelerate`` backend: full fine-tuning (or LoRA, ``training.method``) over many GPUs / nodes
through HF Accelerate.

``whisper-tune run --backend accelerate --num-processes N`` prepares the data once in this process, then
runs the ``accelerate launch`` its plan returned (the core's ``backend/launch.py``): N training processes
per machine, each running the core's phases and its one training loop (``whisper_tune.execution.worker``).
Semantics:

* ``training.batch_size`` is per device; the global batch is batch x processes x machines x accumulation,
  and ``max_steps`` / epochs count steps of that global batch. The learning rate is never rescaled.
* every process trains on its own shard of each epoch; evaluation gathers all ranks' predictions in dataset
  order (each sample exactly once) before the core scores them.
* only the main process writes checkpoints and the final model; every machine's parent gets the results.
"""

from __future__ import annotations

import os
import socket
from importlib.util import find_spec
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel

from whisper_tune.backend.launch import MIXED_PRECISION, accelerate_launch
from whisper_tune.backend.processes import NUM_PROCESSES, cuda_capabilities, devices_line, process_issues
from whisper_tune.backend.protocol import (
    BackendDefault,
    Capabilities,
    Flag,
    Issue,
    Plan,
    Probe,
    RecipeNeeds,
    TrainJob,
)
from whisper_tune.config.schema import RunConfig
from whisper_tune.models.lora import method_note
from whisper_tune_accelerate.options import AccelerateOptions

if TYPE_CHECKING:
    from whisper_tune.backend.setup import TrainingSetup
    from whisper_tune.console import Reporter

CUDA_LORA_HINT = (
    "LoRA on an int8 / 4-bit base is the cuda-lora backend (--backend cuda-lora, one or several "
    "processes); this backend trains every weight in bf16 / fp16 / fp32"
)


def port_in_use(port: int, host: str = "") -> bool:
    """True when nothing can bind ``port`` here (another run or program listens on it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


class AccelerateBackend:
    name: ClassVar[str] = "accelerate"
    description: ClassVar[str] = (
        "full fine-tuning (or LoRA) on many GPUs / nodes through Hugging Face Accelerate (DDP, FSDP, "
        "DeepSpeed)"
    )
    Options: ClassVar[type[BaseModel]] = AccelerateOptions
    flags: ClassVar[tuple[Flag, ...]] = (NUM_PROCESSES,)
    #: the overrides of its CPU development mode (the contract test runs it with them)
    cpu_overrides: ClassVar[tuple[str, ...]] = ("backend.device=cpu",)

    def probe(self) -> Probe:
        cpu = os.cpu_count() or 1
        for module, hint in (("torch", "pip install torch"), ("accelerate", "pip install accelerate")):
            if find_spec(module) is None:
                return Probe(False, f"{module} is not installed", hint, Capabilities(cpu_count=cpu))
        caps = cuda_capabilities()
        count = caps.cuda_devices
        if count:
            mode = f"GPU: {count} CUDA device(s), up to {count} processes here (more over several machines)"
        else:
            mode = f"CPU dev mode only (no CUDA GPU here; runs need backend.device=cpu, {cpu} cores)"
        return Probe(True, "", "", caps, mode=mode)

    def defaults(self, options: BaseModel) -> dict[str, BackendDefault]:
        """Full fine-tuning (this backend's purpose; LoRA under DDP with training.method=lora; LoRA under
        FSDP / DeepSpeed is unverified)."""
        opts = options if isinstance(options, AccelerateOptions) else AccelerateOptions()
        if opts.strategy == "ddp":
            return {
                "training.method": BackendDefault(
                    "full",
                    "this backend is for full fine-tuning over many devices (training.method=lora "
                    "trains LoRA under DDP)",
                )
            }
        return {
            "training.method": BackendDefault(
                "full", f"{opts.strategy} shards the weights of full fine-tuning; LoRA under it is unverified"
            ),
            "eval.keep": BackendDefault(
                "off", f"scaling the change back is not built for weights {opts.strategy} shards"
            ),
        }

    def check(self, config: RunConfig, caps: Capabilities) -> list[Issue]:
        opts = config.backend.options_as(AccelerateOptions)
        precision = config.training.precision
        issues: list[Issue] = []
        if config.eval.steps is not None and config.eval.keep_best and opts.strategy != "ddp":
            issues.append(
                Issue(
                    "eval.keep_best",
                    f"restoring the best checkpoint into a model sharded by {opts.strategy} is not supported",
                    hint="set eval.keep_best=false (the best weights stay in checkpoints/best/), or use "
                    "backend.strategy=ddp",
                )
            )
        if config.eval.keep != "off" and opts.strategy != "ddp":
            issues.append(
                Issue(
                    "eval.keep",
                    f"scaling the change back (eval.keep={config.eval.keep}) is not built for weights "
                    f"{opts.strategy} shards",
                    hint="leave eval.keep unset (off under FSDP / DeepSpeed), or use backend.strategy=ddp",
                )
            )
        if config.training.method == "lora" and opts.strategy != "ddp":
            issues.append(
                Issue(
                    "training.method",
                    f"LoRA with backend.strategy={opts.strategy} has not been verified (peft under FSDP / "
                    "ZeRO-3 needs its own wrapping rules)",
                    hint="use backend.strategy=ddp: the adapters are small, so each process holds the "
                    "whole model and only the adapters' gradients are all-reduced",
                )
            )
        if opts.quantization != "none":
            issues.append(
                Issue(
                    "backend.quantization",
                    f"{opts.quantization} weights cannot be fully fine-tuned over several processes",
                    hint=CUDA_LORA_HINT,
                )
            )
        if opts.mixed_precision is not None and opts.mixed_precision != MIXED_PRECISION[precision]:
            issues.append(
                Issue(
                    "backend.mixed_precision",
                    f"mixed_precision {opts.mixed_precision} disagrees with training.precision {precision}",
                    hint=f"set backend.mixed_precision={MIXED_PRECISION[precision]} or leave it unset "
                    "(it follows training.precision)",
                )
            )
        issues += process_issues(
            caps,
            cpu=opts.cpu,
            num_processes=opts.num_processes,
            precision=precision,
            no_gpu=Issue(
                "backend.num_processes",
                "no CUDA GPU is visible on this machine",
                hint="run on a machine with GPUs, or set backend.device=cpu to train in CPU processes",
                hardware=True,
            ),
        )
        if opts.cpu and opts.strategy != "ddp":
            issues.append(
                Issue(
                    "backend.strategy",
                    f"{opts.strategy} runs on GPUs only (Accelerate enables FSDP and DeepSpeed for GPU "
                    "process groups, not for CPU ones)",
                    hint="use backend.strategy=ddp with backend.device=cpu",
                )
            )
        if opts.strategy.startswith("deepspeed") and find_spec("deepspeed") is None:
            issues.append(
                Issue(
                    "backend.strategy",
                    f"{opts.strategy} needs DeepSpeed, which is not installed",
                    hint="pip install deepspeed (on the GPU machines), or use backend.strategy=fsdp",
                    run_only=True,
                )
            )
        if (
            opts.machine_rank == 0
            and opts.main_process_port is not None
            and port_in_use(opts.main_process_port)
        ):
            issues.append(
                Issue(
                    "backend.main_process_port",
                    f"port {opts.main_process_port} is already in use on this machine",
                    hint="choose another backend.main_process_port (on every machine), or leave it unset on "
                    "one machine to get a free one",
                    run_only=True,
                )
            )
        return issues

    def recipe_needs(self, config: RunConfig) -> RecipeNeeds:
        return RecipeNeeds()

    def plan(self, config: RunConfig, caps: Capabilities) -> Plan:
        opts = config.backend.options_as(AccelerateOptions)
        training = config.training
        placement = {
            "ddp": "DDP: a full copy of the model per process; gradients all-reduced every step",
            "fsdp": f"FSDP ({opts.fsdp_sharding_strategy}): weights, gradients and optimizer state sharded "
            "over the processes, Whisper encoder/decoder layers as units"
            + (", parameters offloaded to the CPU" if opts.offload else ""),
            "deepspeed-zero2": "DeepSpeed ZeRO-2: optimizer state and gradients sharded"
            + (", optimizer state offloaded to the CPU" if opts.offload else ""),
            "deepspeed-zero3": "DeepSpeed ZeRO-3: weights, gradients and optimizer state sharded"
            + (", offloaded to the CPU" if opts.offload else ""),
        }[opts.strategy]
        notes = [
            method_note(training),
            f"precision {training.precision} (mixed_precision {MIXED_PRECISION[training.precision]})",
            f"learning rate {training.learning_rate} as configured (not rescaled by the process count)",
            "steps count global batches: an epoch is training samples / "
            f"({training.batch_size} x {opts.world_size} processes) micro-batches per process",
        ]
        if opts.num_machines > 1:
            notes.append(
                f"machine {opts.machine_rank} of {opts.num_machines}; rendezvous at "
                f"{opts.main_process_ip}:{opts.main_process_port}; output.dir must be on a filesystem "
                "every machine sees for checkpoints and resume"
            )
        return Plan(
            backend=self.name,
            devices=devices_line(opts.num_processes, cpu=opts.cpu, num_machines=opts.num_machines),
            processes=opts.world_size,
            batch_per_device=training.batch_size,
            gradient_accumulation_steps=training.gradient_accumulation_steps,
            placement=(placement,),
            notes=tuple(notes),
            launch=accelerate_launch(
                opts,
                training.precision,
                training.max_grad_norm,
                training.gradient_accumulation_steps,
                opts.sharding,
            ),
        )

    def uses_cpu(self, config: RunConfig) -> bool:
        return config.backend.options_as(AccelerateOptions).cpu

    def training_setup(self, job: TrainJob, accelerator: Any, reporter: Reporter) -> TrainingSetup:
        from whisper_tune.backend.setup import TrainingSetup
        from whisper_tune.models.loading import build_training_model
        from whisper_tune.models.lora import describe_trainable

        opts = job.config.backend.options_as(AccelerateOptions)
        # whole on every process for the evaluation before training (FSDP / DeepSpeed shard it in prepare)
        model = build_training_model(job.model_dir, job.config.model, job.config.training)
        model = model.to(accelerator.device)
        if job.train and accelerator.is_main_process:
            reporter.info(describe_trainable(model))
        return TrainingSetup(accelerator, model, num_workers=opts.num_workers)
