"""PEFT adapters (LoRA and friends): recognise an adapter directory, load it on its base, merge it.

A LoRA run's ``final/`` holds ``adapter_config.json`` (whose ``base_model_name_or_path`` names the base
model) + ``adapter_model.safetensors`` + the processor files. ``merge_adapter`` loads the base model
unquantised in float32 on the CPU, applies the adapter with ``peft.PeftModel.from_pretrained``, folds it
into the weights with ``merge_and_unload`` and writes a plain Hugging Face Whisper directory. peft is
imported only here, lazily, with an install hint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from whisper_tune.config.schema import ModelConfig
from whisper_tune.errors import ModelError

ADAPTER_CONFIG = "adapter_config.json"
PEFT_HINT = "install peft: pip install peft"


def is_adapter_dir(path: str | Path) -> bool:
    """True for a directory written by ``PeftModel.save_pretrained`` (it has adapter_config.json)."""
    return (Path(path).expanduser() / ADAPTER_CONFIG).is_file()


def adapter_base_name(adapter_dir: str | Path) -> str:
    """The base model the adapter was trained on, as its adapter_config.json names it."""
    path = Path(adapter_dir) / ADAPTER_CONFIG
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from None
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
        raise ModelError("loading a LoRA/PEFT adapter needs the peft package", hint=PEFT_HINT) from None
    return peft


def load_adapter_model(adapter_dir: str | Path, base: str | None = None) -> Any:
    """The base model (float32, CPU, eval mode) with the adapter applied but not merged (a PeftModel)."""
    import torch
    from transformers import WhisperForConditionalGeneration

    from whisper_tune.models.packaged import resolve_model_source

    peft = _peft()
    base_name = base or adapter_base_name(adapter_dir)
    source = resolve_model_source(base_name)
    try:
        model = WhisperForConditionalGeneration.from_pretrained(source, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"cannot load the adapter's base model '{base_name}': {str(exc).splitlines()[0]}",
            hint="pass the base model explicitly if it has moved",
        ) from None
    try:
        adapted = peft.PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(f"cannot apply the adapter in {adapter_dir}: {str(exc).splitlines()[0]}") from None
    adapted.eval()
    return adapted


def merged_model(adapter_dir: str | Path, base: str | None = None) -> Any:
    """The adapter folded into its base: a plain WhisperForConditionalGeneration (float32, CPU)."""
    return load_adapter_model(adapter_dir, base).merge_and_unload()


def load_processor_files(adapter_dir: str | Path, base: str | None = None) -> Any:
    """The processor saved with the adapter, else the base model's."""
    from transformers import WhisperProcessor

    from whisper_tune.models.packaged import resolve_model_source

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
) -> Path:
    """Write ``out_dir``: the merged model as safetensors, its generation config (language/task from
    ``model_cfg`` when given) and the processor files. Returns ``out_dir``."""
    from whisper_tune.recipe.model import configure_generation, save_processor

    out = Path(out_dir)
    model = merged_model(adapter_dir, base)
    if model_cfg is not None:
        configure_generation(model, model_cfg)
    processor = load_processor_files(adapter_dir, base)
    model.save_pretrained(out, safe_serialization=True)
    save_processor(processor, out)
    return out
