"""The ``cuda-lora`` backend's options (``backend: {name: cuda-lora, quantization: ..., device: ...}``).

The adapter itself is the core's ``training.lora`` (shared with every backend that trains LoRA)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from whisper_tune.backend.launch import ProcessOptions

Quantization = Literal["int8", "4bit", "none"]

#: What the ``[bnb]`` extra (and the core's ``test`` extra, for CI) installs. 0.47 is the oldest release
#: whose CPU backend trains int8 correctly (checks.BNB_CPU_MIN); 0.50.2 is what the tests run; the upper
#: bound keeps out releases nobody has tested (bitsandbytes changes its API between minor releases).
BNB_REQUIREMENT = "bitsandbytes>=0.47,<0.51"
BNB_INSTALL = (
    f"pip install './backends/cuda-lora[bnb]' in the whisper-tune checkout, or pip install "
    f"'{BNB_REQUIREMENT}' ({BNB_REQUIREMENT}: CUDA and CPU kernels)"
)


class CudaLoraOptions(ProcessOptions):
    """Options of the ``cuda-lora`` backend. With ``num_processes`` > 1 (or several machines) it trains
    data-parallel through ``accelerate launch`` like the accelerate backend (the core's ``ProcessOptions``);
    each process holds its own copy of the (quantised) base on its own device."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    quantization: Quantization = Field(
        "none",
        description="How the frozen base is held: 'none' (no quantisation: the base in the training "
        "precision's dtype, bf16 with training.precision=bf16 — the fastest per second on a modern GPU), "
        "'int8' (bitsandbytes LLM.int8, the seeds' recipe) or '4bit' (bitsandbytes QLoRA). int8 and 4bit "
        "need bitsandbytes (the [bnb] extra); they run on a CUDA GPU and, through bitsandbytes' CPU "
        "backend, on the CPU.",
    )
    device: Literal["cuda", "cpu"] = Field(
        "cuda",
        description="'cuda' (GPU 0; with several processes, each process's own GPU). 'cpu' runs the same "
        "LoRA recipe on the CPU in every quantization mode (int8 and 4bit through bitsandbytes' CPU "
        "backend; fp32 or bf16, not fp16): slow, for tests, trying the seeds' recipe and comparing modes "
        "without a GPU. The same switch as every backend's (backend.cpu=true is read as device=cpu).",
    )
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = Field(
        "nf4", description="4-bit data type for quantization '4bit' (QLoRA uses nf4)."
    )
    bnb_4bit_double_quant: bool = Field(
        True, description="Quantise the 4-bit quantisation constants too (QLoRA's double quantisation)."
    )
    num_workers: int = Field(
        0, ge=0, description="DataLoader worker processes (0 = load in the main process)."
    )

    @model_validator(mode="before")
    @classmethod
    def _lora_moved(cls, data: Any) -> Any:
        if isinstance(data, dict) and "lora" in data:
            raise ValueError(
                "backend.lora moved to training.lora (LoRA now trains on every backend): write the same "
                "keys under training.lora"
            )
        return data
