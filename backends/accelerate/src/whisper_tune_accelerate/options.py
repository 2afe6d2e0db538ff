"""The accelerate backend's options: the ``backend:`` section of a config for ``backend.name: accelerate``.

Names follow ``accelerate launch`` where they are its flags (``num_machines``, ``machine_rank``,
``main_process_ip``, ``main_process_port``). ``num_processes`` is per machine (one per GPU), so the world
size is ``num_processes x num_machines``. Single-field and within-section rules live here; rules that
involve the hardware or other sections are the backend's ``check``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator

from whisper_tune.backend.launch import ProcessOptions, Sharding

Strategy = Literal["ddp", "fsdp", "deepspeed-zero2", "deepspeed-zero3"]


class AccelerateOptions(ProcessOptions):
    """Options of the ``accelerate`` backend (full fine-tuning through Hugging Face Accelerate); the
    process and machine fields are the core's ``ProcessOptions``, shared with cuda-lora."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    strategy: Strategy = Field(
        "ddp",
        description="How the model is spread: 'ddp' (a full copy per process, gradients all-reduced), "
        "'fsdp' (parameters, gradients and optimizer state sharded; Accelerate's FSDP plugin), "
        "'deepspeed-zero2' / 'deepspeed-zero3' (DeepSpeed ZeRO stage 2 / 3; needs 'pip install deepspeed').",
    )
    fsdp_sharding_strategy: Literal["FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", "NO_SHARD"] = Field(
        "FULL_SHARD", description="FSDP only: what is sharded (Accelerate's fsdp_sharding_strategy)."
    )
    offload: bool = Field(
        False,
        description="FSDP: offload parameters to the CPU (fsdp_offload_params). DeepSpeed: offload the "
        "optimizer state (and with ZeRO-3 the parameters) to the CPU. Less GPU memory, slower.",
    )
    mixed_precision: Literal["no", "fp16", "bf16"] | None = Field(
        None,
        description="Accelerate's mixed_precision; it follows training.precision (fp32 = 'no') and may be "
        "written only to agree with it.",
    )
    quantization: Literal["none", "int8", "4bit"] = Field(
        "none",
        description="Only 'none': int8 / 4-bit bases are for LoRA (the cuda-lora backend, on one or several "
        "processes), not for full fine-tuning.",
    )
    device: Literal["cuda", "cpu"] = Field(
        "cuda",
        description="'cuda': one GPU per process. 'cpu': the processes on the CPU (gloo) instead of GPUs, "
        "for tests and CI, or to try a multi-process setup without GPUs; DDP only. The same switch as "
        "every backend's (backend.cpu=true, the old spelling, still works, with a note).",
    )
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes per training process.")

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, value: Any) -> Any:
        return "no" if value is False else value  # YAML 1.1 reads a bare `no` as false

    @property
    def sharding(self) -> Sharding:
        return Sharding(self.strategy, self.fsdp_sharding_strategy, self.offload)
