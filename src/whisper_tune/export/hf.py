"""The merged Hugging Face export: every file a loader (transformers, the CT2 converter) needs."""

from __future__ import annotations

from pathlib import Path

from whisper_tune.disk import OUT_HINT, writing
from whisper_tune.errors import ExportError
from whisper_tune.models.loading import processor_bytes, save_processor
from whisper_tune.runs.model_ref import ModelRef, load_hf
from whisper_tune.training.weights import FULL_WEIGHTS, weights_bytes

#: Files every Hugging Face Whisper loader and converter reads (weights are checked separately).
REQUIRED_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "preprocessor_config.json",
)


def missing_files(model_dir: Path) -> list[str]:
    """Names of the required files ``model_dir`` lacks (``model.safetensors`` or a sharded index)."""
    missing = [name for name in REQUIRED_FILES if not (model_dir / name).is_file()]
    if not (
        (model_dir / "model.safetensors").is_file() or (model_dir / "model.safetensors.index.json").is_file()
    ):
        missing.append("model.safetensors")
    return missing


def export_hf(ref: ModelRef, out_dir: Path) -> Path:
    """Write ``ref`` (merged if it is an adapter) to ``out_dir`` as safetensors + tokenizer.json +
    preprocessor_config.json + generation_config.json with the language/task set; a full disk removes the
    partial folder (``disk.writing``)."""

    model, processor = load_hf(ref, merge=True)
    with writing(
        f"the Hugging Face export ({out_dir.name}/)",
        out_dir,
        needs=lambda: weights_bytes(model, FULL_WEIGHTS) + processor_bytes(ref.path),
        kept="nothing was exported yet (the source is untouched)",
        hint=OUT_HINT,
        partial=out_dir,
    ):
        model.save_pretrained(out_dir, safe_serialization=True)
        save_processor(processor, out_dir)
    missing = missing_files(out_dir)
    if missing:
        raise ExportError(f"the Hugging Face export in {out_dir} lacks {', '.join(missing)}")
    return out_dir
