"""CTranslate2 export through ctranslate2's own converter, loadable by faster-whisper."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from whisper_tune.disk import OUT_HINT, Text, writing
from whisper_tune.errors import ExportError, ModelError

Quantization = Literal["float16", "int8"]
#: Copied next to model.bin: faster-whisper reads the tokenizer and the feature extractor's settings
#: (mel bins) from them; their absence is the classic "converted fine-tune does not load" failure.
COPY_FILES = ("tokenizer.json", "preprocessor_config.json")
INSTALL_HINT = "pip install 'whisper-tune[export]' (ctranslate2 and faster-whisper)"


def _converter() -> Any:
    try:
        from ctranslate2.converters import TransformersConverter
    except ImportError:
        raise ExportError("the CTranslate2 export needs the ctranslate2 package", hint=INSTALL_HINT) from None
    return TransformersConverter


#: bytes of CTranslate2 weights per byte of the float32 safetensors they are converted from
CT2_SHARE = {"float16": 0.5, "int8": 0.25}


def export_ct2(hf_dir: Path, out_dir: Path, quantization: Quantization, kept: Text = None) -> Path:
    """Convert the Hugging Face directory ``hf_dir`` (a merged export) to ``out_dir``; a full disk removes
    the partial folder (``disk.writing``; ``kept``: what survives it)."""
    converter = _converter()(str(hf_dir), copy_files=list(COPY_FILES))
    weights = sum(f.stat().st_size for f in hf_dir.glob("*.safetensors"))
    copied = sum((hf_dir / n).stat().st_size for n in COPY_FILES if (hf_dir / n).is_file())
    try:
        with writing(
            f"the CTranslate2 export ({out_dir.name}/)",
            out_dir,
            needs=int(weights * CT2_SHARE[quantization]) + copied,
            kept=kept,
            hint=OUT_HINT,
            partial=out_dir,
        ):
            converter.convert(str(out_dir), quantization=quantization, force=True)
    except (ValueError, RuntimeError, OSError) as exc:
        raise ExportError(
            f"ctranslate2 could not convert {hf_dir} ({quantization}): {str(exc).splitlines()[0]}"
        ) from None
    missing = [n for n in ("model.bin", "config.json", *COPY_FILES) if not (out_dir / n).is_file()]
    if missing:
        raise ExportError(f"the CTranslate2 export in {out_dir} lacks {', '.join(missing)}")
    return out_dir


def cpu_compute_type(quantization: Quantization) -> str:
    """What the CTranslate2 model computes in on the CPU: ctranslate2 has no float16 CPU kernels, so
    float16 weights are computed in float32 (int8 stays int8, with float32 activations)."""
    return "int8" if quantization == "int8" else "float32"


def load_faster_whisper(ct2_dir: Path | str, compute_type: str = "default", device: str = "cpu") -> Any:
    """faster_whisper.WhisperModel for a CTranslate2 directory."""
    try:
        import ctranslate2
        from faster_whisper import WhisperModel
    except ImportError:
        raise ModelError("running a CTranslate2 model needs faster-whisper", hint=INSTALL_HINT) from None
    import logging

    # ctranslate2 warns on stderr that float16 weights are computed in float32 on a CPU (expected here)
    ctranslate2.set_log_level(logging.ERROR)
    try:
        return WhisperModel(str(ct2_dir), device=device, compute_type=compute_type, local_files_only=True)
    except (ValueError, RuntimeError, OSError) as exc:
        raise ModelError(f"faster-whisper cannot load {ct2_dir}: {str(exc).splitlines()[0]}") from None
