"""PEFT adapters (LoRA and friends): recognise an adapter directory, load it on its base, merge it.

A LoRA run's ``final/`` holds ``adapter_config.json`` (whose ``base_model_name_or_path`` names the base
model) + ``adapter_model.safetensors`` + the processor files and ``generation_config.json``.
``merge_adapter`` loads the base model unquantised on the CPU (whatever quantisation it trained under),
applies the adapter with ``peft.PeftModel.from_pretrained``, folds it into the weights with
``merge_and_unload`` and writes a plain Hugging Face Whisper directory that
``transformers.pipeline("automatic-speech-recognition", model=DIR)`` loads. peft is imported only here,
lazily, with an install hint. ``whisper-tune merge`` and ``whisper-tune export`` use it.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal

from whisper_tune.config.schema import ModelConfig
from whisper_tune.disk import OUT_HINT, tensor_bytes, writing
from whisper_tune.errors import BackendUnavailableError, ModelError
from whisper_tune.models.loading import (
    check_local_files,
    configure_generation,
    processor_bytes,
    save_processor,
)
from whisper_tune.models.packaged import resolve_model_source
from whisper_tune.reading import read_json_object

ADAPTER_CONFIG = "adapter_config.json"
PEFT_HINT = "pip install peft (or the cuda-lora backend: pip install ./backends/cuda-lora in the checkout)"
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def is_adapter_dir(path: str | Path) -> bool:
    """True for a directory written by ``PeftModel.save_pretrained`` (it has adapter_config.json)."""
    return (Path(path).expanduser() / ADAPTER_CONFIG).is_file()


def adapter_base_name(adapter_dir: str | Path) -> str:
    """The base model the adapter was trained on, as its adapter_config.json names it."""
    path = Path(adapter_dir) / ADAPTER_CONFIG
    value = read_json_object(path, ModelError, "a PEFT adapter_config.json").get("base_model_name_or_path")
    if not value:
        raise ModelError(
            f"{path} does not name its base model (base_model_name_or_path)",
            hint="pass the base model explicitly",
        )
    return str(value)


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise BackendUnavailableError("loading a LoRA/PEFT adapter needs peft", hint=PEFT_HINT) from None
    return peft


def load_adapter_model(
    adapter_dir: str | Path, base: str | None = None, dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
) -> Any:
    """The base model (unquantised, CPU, eval mode) with the adapter applied but not merged (a PeftModel)."""
    import torch
    from transformers import WhisperForConditionalGeneration

    peft = _peft()
    if not is_adapter_dir(adapter_dir):
        raise ModelError(
            f"{adapter_dir} is not a LoRA adapter directory (no {ADAPTER_CONFIG})",
            hint="pass the final/ directory of a cuda-lora run, or a checkpoint's weights/ directory",
        )
    base_name = base or adapter_base_name(adapter_dir)
    check_local_files(adapter_dir, (), weights=True)  # a truncated adapter_model.safetensors
    source = resolve_model_source(base_name)
    try:
        model = WhisperForConditionalGeneration.from_pretrained(source, dtype=getattr(torch, DTYPES[dtype]))
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"cannot load the adapter's base model '{base_name}': {str(exc).splitlines()[0]}",
            hint="pass the base model explicitly (--base) if it has moved",
        ) from None
    try:
        with warnings.catch_warnings():  # peft reads transformers 5.24's deprecated is_gradient_checkpointing
            warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*", category=FutureWarning)
            adapted = peft.PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(
            f"the adapter {adapter_dir} does not fit the base '{base_name}': {str(exc).splitlines()[0]}"
        ) from None
    adapted.eval()
    return adapted


def load_processor_files(adapter_dir: str | Path, base: str | None = None) -> Any:
    """The processor saved with the adapter, else the base model's."""
    from transformers import WhisperProcessor

    for candidate in (str(adapter_dir), resolve_model_source(base or adapter_base_name(adapter_dir))):
        try:
            return WhisperProcessor.from_pretrained(candidate)
        except (OSError, ValueError, TypeError):
            continue
    raise ModelError(
        f"no Whisper processor (tokenizer + feature extractor) next to the adapter {adapter_dir}"
    )


def merge_adapter(
    adapter_dir: str | Path,
    out_dir: str | Path,
    base: str | None = None,
    *,
    model_cfg: ModelConfig | None = None,
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32",
) -> Path:
    """Write ``out_dir``: the merged model as safetensors in ``dtype``, its generation config (the
    adapter directory's when it has one; language/task from ``model_cfg`` when given) and the processor
    files. ``base`` overrides the adapter's ``base_model_name_or_path`` (any ``model.name`` form)."""
    from transformers import GenerationConfig

    out = Path(out_dir)
    model = load_adapter_model(adapter_dir, base, dtype).merge_and_unload()
    if (Path(adapter_dir) / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(adapter_dir)
    if model_cfg is not None:
        configure_generation(model, model_cfg)
    processor = load_processor_files(adapter_dir, base)
    fresh = not out.exists()
    with writing(
        "the merged model",
        out,
        needs=lambda: tensor_bytes(model.state_dict()) + processor_bytes(adapter_dir),
        kept=f"the adapter {adapter_dir} is untouched",
        hint=OUT_HINT,
        fix="give --out a writable directory",
        partial=out if fresh else None,
    ):
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out, safe_serialization=True)
        save_processor(processor, out)
    return out
