"""LoRA adapters (peft) on a Whisper model: ``training.method: lora``, on every in-process backend.

``add_lora`` wraps a frozen base in ``get_peft_model`` with ``training.lora``; the reference and
accelerate backends call it on the fp32 base, cuda-lora on its (quantised) base. A peft model is saved
adapter-only (``training.weights.weights_format_of``): checkpoints and ``final/`` hold
``adapter_config.json`` naming the base and ``adapter_model.safetensors``, which ``whisper-tune merge``,
``export`` and ``transcribe`` fold back into a plain model.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

from whisper_tune.config.schema import TrainingConfig
from whisper_tune.errors import ConfigError


@contextlib.contextmanager
def peft_on_transformers_5() -> Iterator[None]:
    """peft still calls transformers' ``gradient_checkpointing_enable`` / ``is_gradient_checkpointing``,
    which transformers 5.24 deprecates (renamed ``activation_checkpointing``) with a FutureWarning a user
    can do nothing about: hide only those."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*", category=FutureWarning)
        yield


def add_lora(model: Any, training: TrainingConfig) -> Any:
    """``get_peft_model`` with ``training.lora`` (the base is frozen by peft); with ``freeze_encoder``
    only the decoder's adapters train."""
    from peft import LoraConfig, get_peft_model

    lora = training.lora
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,  # type: ignore[arg-type]  # peft annotates int; any positive number works
        target_modules=list(lora.target_modules),
        lora_dropout=lora.dropout,
        bias=lora.bias,
    )
    try:
        with peft_on_transformers_5():
            peft_model = get_peft_model(model, config)
    except ValueError as exc:
        raise ConfigError(
            f"training.lora.target_modules {list(lora.target_modules)}: {str(exc).splitlines()[0]}",
            hint="Whisper's Linear layers are q_proj, k_proj, v_proj, out_proj, fc1, fc2",
        ) from None
    if training.freeze_encoder:
        for name, param in peft_model.named_parameters():
            if ".encoder.layers." in name:
                param.requires_grad_(False)
    return peft_model


def trainable_parameters(model: Any) -> tuple[int, int]:
    """(trainable, all) parameter counts (bitsandbytes 4-bit weights count as stored, i.e. halved)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def describe_trainable(model: Any, base: str = "") -> str:
    """The log line naming how much of the model trains."""
    trainable, total = trainable_parameters(model)
    what = "LoRA" if hasattr(model, "peft_config") else "full fine-tuning"
    return f"{what}: {trainable:,} trainable parameters of {total:,} ({100 * trainable / total:.2f} %)" + (
        f", base {base}" if base else ""
    )


def method_note(training: TrainingConfig) -> str:
    """The plan's line saying what trains."""
    if training.method == "lora":
        lora = training.lora
        return (
            f"LoRA r={lora.r} alpha={lora.alpha:g} dropout={lora.dropout:g} on "
            f"{', '.join(lora.target_modules)}; the base is frozen"
            + ("; encoder adapters frozen" if training.freeze_encoder else "")
        )
    return "full fine-tuning" + (" of the decoder (encoder frozen)" if training.freeze_encoder else "")
