"""LoRA adapter directories (peft's layout) and folding them into a plain Hugging Face Whisper model.

An adapter directory holds ``adapter_config.json`` (with ``base_model_name_or_path``) and
``adapter_model.safetensors``; whisper-tune's LoRA backend also writes the processor files and the
``generation_config.json`` (language/task) beside them. ``merge_adapter`` loads the base unquantised on
the CPU, applies the adapter with ``PeftModel.from_pretrained``, folds it in (``merge_and_unload``) and
saves a model that ``transformers.pipeline("automatic-speech-recognition", model=DIR)`` loads: weights as
safetensors, the processor files and the generation config. peft is imported only when merging.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from whisper_tune.errors import BackendUnavailableError, ModelError, OutputError

ADAPTER_CONFIG = "adapter_config.json"
PEFT_HINT = "pip install peft (or install the cuda-lora backend: pip install whisper-tune-cuda-lora)"
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_base(adapter_dir: str | Path) -> str:
    """The base model an adapter was trained on (``base_model_name_or_path`` of its config)."""
    from whisper_tune.models.ct2_import import read_json_object

    path = Path(adapter_dir) / ADAPTER_CONFIG
    base = read_json_object(path).get("base_model_name_or_path")
    if not base:
        raise ModelError(f"{path} does not name its base model", hint="pass the base model with --base")
    return str(base)


def merge_adapter(
    adapter_dir: str | Path,
    out_dir: str | Path,
    *,
    base: str | None = None,
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32",
) -> Path:
    """Fold the LoRA adapter in ``adapter_dir`` into its base and save a plain model to ``out_dir``.

    ``base`` overrides the adapter's ``base_model_name_or_path`` (any ``model.name`` form: a local
    directory, a hub id, ``pip:base``). The base is loaded unquantised on the CPU in ``dtype``, whatever
    quantisation it was trained under. Processor files come from the adapter directory when it has them
    (whisper-tune runs write them there), else from the base; likewise ``generation_config.json``.
    """
    import torch
    from transformers import GenerationConfig, WhisperForConditionalGeneration, WhisperProcessor

    try:
        from peft import PeftModel
    except ImportError:
        raise BackendUnavailableError("merging a LoRA adapter needs peft", hint=PEFT_HINT) from None
    from whisper_tune.recipe.model import OFFLINE_HINT, resolve_source, save_processor

    adapter = Path(adapter_dir)
    if not is_adapter_dir(adapter):
        raise ModelError(
            f"{adapter} is not a LoRA adapter directory (no {ADAPTER_CONFIG})",
            hint="pass the final/ directory of a cuda-lora run, or a checkpoint's weights/ directory",
        )
    base_name = base or adapter_base(adapter)
    source = resolve_source(base_name)
    try:
        model = WhisperForConditionalGeneration.from_pretrained(source, dtype=getattr(torch, DTYPES[dtype]))
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"cannot load the base model '{base_name}': {str(exc).splitlines()[0]}",
            hint=f"pass the base with --base; {OFFLINE_HINT}",
        ) from None
    try:
        merged: Any = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(
            f"the adapter {adapter} does not fit the base '{base_name}': {str(exc).splitlines()[0]}"
        ) from None
    if (adapter / "generation_config.json").is_file():
        merged.generation_config = GenerationConfig.from_pretrained(adapter)
    processor_source = adapter if (adapter / "preprocessor_config.json").is_file() else Path(source)
    try:
        processor = WhisperProcessor.from_pretrained(processor_source)
    except (OSError, ValueError):
        raise ModelError(
            f"neither {adapter} nor the base '{base_name}' has the processor files "
            "(preprocessor_config.json, tokenizer)",
            hint="copy them into the adapter directory (whisper-tune runs write them there)",
        ) from None
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        merged.save_pretrained(out, safe_serialization=True)
        save_processor(processor, out)
    except OSError as exc:
        raise OutputError(f"cannot write the merged model to {out}: {exc.strerror or exc}") from None
    return out
