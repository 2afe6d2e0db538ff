"""The ``cuda-lora`` backend: LoRA (peft) over an int8 / 4-bit (bitsandbytes) or bf16 base, on one GPU or
on several processes.

The backend builds the LoRA model (``model.py``) on the Accelerator's device (GPU 0, or the CPU with
``device: cpu``, int8 and 4-bit included; with ``--num-processes N`` every process started by the
planned ``accelerate launch`` builds its own on its own device) with fp16/bf16 mixed precision; the
core's phases (``training/phases.py``) do the rest: evaluation before and after, the one training loop,
adapter-only weights in every checkpoint and in the final model directory (``adapter_config.json``
naming the base + ``adapter_model.safetensors`` + the generation config; the core adds the processor
files). Evaluation is the core's batched
``generate_predictions`` under the accelerator's autocast, which works under int8/4-bit where
``predict_with_generate`` does not. ``whisper-tune merge`` folds the adapter into a plain model.
"""

from __future__ import annotations

from importlib.util import find_spec
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel

from whisper_tune.backend.launch import Launch, accelerate_launch
from whisper_tune.backend.processes import NUM_PROCESSES, cuda_capabilities, devices_line
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
from whisper_tune_cuda_lora.checks import check_config, memory_estimate
from whisper_tune_cuda_lora.memory import lora_params, model_shape
from whisper_tune_cuda_lora.options import CudaLoraOptions

if TYPE_CHECKING:
    from whisper_tune.backend.setup import TrainingSetup
    from whisper_tune.console import Reporter


def installed_version(distribution: str) -> str | None:
    """The installed version of a distribution, without importing it (None: not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


class CudaLoraBackend:
    name: ClassVar[str] = "cuda-lora"
    description: ClassVar[str] = "one GPU, LoRA (peft) on an int8 / 4-bit (bitsandbytes) or bf16 base"
    Options: ClassVar[type[BaseModel]] = CudaLoraOptions
    flags: ClassVar[tuple[Flag, ...]] = (NUM_PROCESSES,)
    #: the overrides of its CPU development mode (the contract test runs it with them)
    cpu_overrides: ClassVar[tuple[str, ...]] = ("backend.device=cpu",)

    def probe(self) -> Probe:
        for module, hint in (("torch", "pip install torch"), ("peft", "pip install peft")):
            if find_spec(module) is None:
                return Probe(False, f"{module} is not installed", hint)
        caps = cuda_capabilities()
        if caps.cuda_devices:
            memory = f" ({caps.cuda_memory_gib[0]:.0f} GiB)" if caps.cuda_memory_gib else ""
            mode = f"GPU: cuda:0 of {caps.cuda_devices} CUDA device(s){memory}"
        else:
            mode = "CPU dev mode only (no CUDA GPU here; runs need backend.device=cpu)"
        return Probe(True, "", "", caps, mode=mode)

    def defaults(self, options: BaseModel) -> dict[str, BackendDefault]:
        """LoRA (with its learning rate), and bf16 on a GPU, for configs that do not set them."""
        opts = options if isinstance(options, CudaLoraOptions) else CudaLoraOptions()
        supplied = {
            "training.method": BackendDefault(
                "lora", "this backend trains LoRA adapters (with LoRA's learning rate unless set)"
            )
        }
        if opts.device == "cuda":
            supplied["training.precision"] = BackendDefault(
                "bf16",
                "bf16 autocast on a GPU; fp32 would keep an unquantised base in fp32, twice the memory",
            )
        return supplied

    def check(self, config: RunConfig, caps: Capabilities) -> list[Issue]:
        return check_config(config, caps, bnb_version=installed_version("bitsandbytes"))

    def recipe_needs(self, config: RunConfig) -> RecipeNeeds:
        return RecipeNeeds()

    def plan(self, config: RunConfig, caps: Capabilities) -> Plan:
        opts = config.backend.options_as(CudaLoraOptions)
        training = config.training
        if opts.device == "cpu":
            devices = f"CPU ({caps.cpu_count} cores)"
        elif caps.cuda_devices:
            devices = f"cuda:0 ({caps.cuda_memory_gib[0]:.0f} GiB)" if caps.cuda_memory_gib else "cuda:0"
        else:
            devices = "cuda:0 (no CUDA device detected here)"
        base = {"none": f"{training.precision} (unquantised)", "int8": "int8 (bitsandbytes LLM.int8)"}.get(
            opts.quantization, f"4-bit {opts.bnb_4bit_quant_type} (bitsandbytes)"
        )
        lora = training.lora
        notes = [
            f"base weights: {base}; autocast: "
            + ("none (fp32)" if training.precision == "fp32" else training.precision),
            f"LoRA r={lora.r} alpha={lora.alpha:g} dropout={lora.dropout:g} "
            f"on {', '.join(lora.target_modules)}",
            f"gradient checkpointing: {'on' if training.gradient_checkpointing else 'off'}",
        ]
        shape = model_shape(config.model.name)
        if shape is not None:
            trainable = lora_params(shape, lora.r, lora.target_modules)
            notes.append(
                f"trainable parameters: about {trainable / 1e6:.2f} M of {shape.params / 1e6:.0f} M "
                f"({100 * trainable / shape.params:.2f} %); "
                f"adapter on disk about {4 * trainable / 1e6:.0f} MB"
            )
            est = memory_estimate(config, opts)
            if est is not None and opts.device == "cuda":
                line = f"GPU memory estimate at batch {training.batch_size}: {est.peak_gib:.1f} GiB (+-15%)"
                if caps.cuda_memory_gib:
                    line += (
                        f"; the largest batch that fits is about {est.largest_batch(caps.cuda_memory_gib[0])}"
                    )
                notes.append(line)
        several = opts.world_size > 1
        if several:
            devices = devices_line(
                opts.num_processes, cpu=opts.device == "cpu", num_machines=opts.num_machines
            )
            placement: tuple[str, ...] = (
                "DDP: each process holds its own copy of the base on its own device; only the adapters' "
                "gradients are all-reduced",
            )
            notes.append(
                f"learning rate {training.learning_rate} as configured (not rescaled by the process count)"
            )
        else:
            placement = (
                f"whole model on {opts.device if opts.device == 'cpu' else 'cuda:0'}; adapters only train",
            )
        launch = (
            accelerate_launch(
                opts, training.precision, training.max_grad_norm, training.gradient_accumulation_steps
            )
            if several
            else Launch()
        )
        return Plan(
            backend=self.name,
            devices=devices,
            processes=opts.world_size,
            batch_per_device=training.batch_size,
            gradient_accumulation_steps=training.gradient_accumulation_steps,
            placement=placement,
            notes=tuple(notes),
            launch=launch,
        )

    def uses_cpu(self, config: RunConfig) -> bool:
        return config.backend.options_as(CudaLoraOptions).device == "cpu"

    def training_setup(self, job: TrainJob, accelerator: Any, reporter: Reporter) -> TrainingSetup:
        """The LoRA model on this process's device: each process loads its own copy of the (quantised)
        base there (one process never spans several devices: the peft#414 trap)."""
        import torch

        from whisper_tune.backend.setup import TrainingSetup
        from whisper_tune.models.lora import describe_trainable
        from whisper_tune_cuda_lora.model import build_lora_model, load_base

        cfg = job.config
        opts = cfg.backend.options_as(CudaLoraOptions)
        if accelerator.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(accelerator.device)
        if job.train:
            model = build_lora_model(job.model_dir, cfg.model, cfg.training, opts, accelerator.device)
            reporter.info(describe_trainable(model, base=opts.quantization))
        else:  # evaluation only: the base itself (a fresh adapter would change nothing)
            model = load_base(job.model_dir, cfg.model, cfg.training, opts, accelerator.device)
        return TrainingSetup(accelerator, model, num_workers=opts.num_workers)
