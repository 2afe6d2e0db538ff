"""The seeds' LoRA recipe, with the quantisation configurable.

int8 / 4bit: the base is loaded through bitsandbytes (``BitsAndBytesConfig``) onto the accelerator's
device (GPU 0, or the CPU through bitsandbytes' CPU backend: the same code path) and prepared with
peft's ``prepare_model_for_kbit_training`` (freezes the base, casts the non-quantised parameters to fp32,
turns on gradient checkpointing when asked). none: the base is loaded in the training dtype (bf16
with training.precision=bf16) onto the device. Then, with gradient checkpointing, the seeds' forward hook
on the encoder's conv1 makes its output require grad (the encoder's input is audio features, not
embeddings, so otherwise no gradient reaches the checkpointed layers), and the core's ``add_lora``
(``training.lora``) adds the adapters. Checkpoints and the final model hold the adapter only (the core's
``training.weights.ADAPTER_ONLY``).
"""

from __future__ import annotations

from typing import Any

from whisper_tune.config.schema import ModelConfig, TrainingConfig
from whisper_tune.errors import BackendUnavailableError
from whisper_tune.models.loading import freeze_for_adapters, route_gradients_into_frozen_encoder
from whisper_tune.models.lora import add_lora, peft_on_transformers_5
from whisper_tune_cuda_lora.options import BNB_INSTALL, CudaLoraOptions


def torch_dtype(precision: str) -> Any:
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def quantization_config(opts: CudaLoraOptions, precision: str) -> Any:
    from transformers import BitsAndBytesConfig

    if opts.quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)  # type: ignore[no-untyped-call]
    return BitsAndBytesConfig(  # type: ignore[no-untyped-call]
        load_in_4bit=True,
        bnb_4bit_quant_type=opts.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=opts.bnb_4bit_double_quant,
        bnb_4bit_compute_dtype=torch_dtype("bf16" if precision == "fp32" else precision),
    )


def load_base(
    model_dir: str,
    model_cfg: ModelConfig,
    training: TrainingConfig,
    opts: CudaLoraOptions,
    device: Any = None,
) -> Any:
    """The frozen base on ``device`` (the accelerator's; default: the CPU with ``device: cpu``, else
    GPU 0), quantised as configured, ready for adapters."""
    from whisper_tune.models.loading import load_model

    device = device if device is not None else ("cpu" if opts.device == "cpu" else "cuda:0")
    if opts.quantization == "none":
        model = load_model(model_dir, model_cfg, dtype=torch_dtype(training.precision))
        model.to(device)
        freeze_for_adapters(model, training.gradient_checkpointing)
    else:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise BackendUnavailableError(
                f"quantization '{opts.quantization}' needs bitsandbytes", hint=BNB_INSTALL
            ) from None
        from peft import prepare_model_for_kbit_training

        model = load_model(
            model_dir,
            model_cfg,
            # the non-quantised parameters: fp16 as in the seeds (prepare_model_for_kbit_training then
            # casts them to fp32)
            dtype=torch_dtype("fp16" if training.precision == "fp16" else "bf16"),
            quantization_config=quantization_config(opts, training.precision),
            device_map={"": device},
        )
        with peft_on_transformers_5():
            model = prepare_model_for_kbit_training(  # type: ignore[no-untyped-call]
                model,
                use_gradient_checkpointing=training.gradient_checkpointing,
                # non-reentrant, as in the unquantised mode (the seeds got the then-default reentrant
                # variant, which torch now warns about on every step)
                gradient_checkpointing_kwargs={"use_reentrant": False},
            )
        keep_training_layout(model)
        if training.gradient_checkpointing:
            route_gradients_into_frozen_encoder(model)
    return model


def keep_training_layout(model: Any) -> None:
    """Keep 4-bit weights in the layout they train in, also while evaluating on the CPU.

    bitsandbytes 0.50 repacks a ``Linear4bit``'s weight in place into a CPU inference layout on its first
    forward in eval mode without gradients (on CPUs with AVX512-BF16), and never back: training after an
    evaluation then fails in the checkpointed backward ("a view of a leaf Variable that requires grad is
    being used in an in-place operation"), the double-quantised constants are unpacked to bf16, and the
    base no longer holds the bytes it was loaded with. With this flag off every forward uses the
    dequantise-and-matmul path, the same layout as on a GPU."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def build_lora_model(
    model_dir: str,
    model_cfg: ModelConfig,
    training: TrainingConfig,
    opts: CudaLoraOptions,
    device: Any = None,
) -> Any:
    return add_lora(load_base(model_dir, model_cfg, training, opts, device), training)
