"""WER and CER, raw and after Whisper's text normaliser, computed with jiwer.

Whisper's normalisers come from transformers (``EnglishTextNormalizer`` with OpenAI's spelling map, or
``BasicTextNormalizer``), the same ones OpenAI used to report Whisper's WER. Every backend's predictions
are scored here, so numbers are comparable across backends.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from functools import cache
from importlib import resources
from typing import Literal

Normalizer = Callable[[str], str]


@cache
def english_spelling_map() -> dict[str, str]:
    text = (resources.files("whisper_tune.recipe") / "assets" / "english.json").read_text(encoding="utf-8")
    mapping: dict[str, str] = json.loads(text)
    return mapping


def pick_normalizer(
    kind: Literal["auto", "english", "basic"], language: str | None, english_only: bool
) -> str:
    if kind != "auto":
        return kind
    return "english" if english_only or language == "en" else "basic"


def make_normalizer(kind: Literal["english", "basic"] | str) -> Normalizer:
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer, EnglishTextNormalizer

    if kind == "english":
        normalizer: Normalizer = EnglishTextNormalizer(english_spelling_map())  # type: ignore[no-untyped-call]
    elif kind == "basic":
        normalizer = BasicTextNormalizer()
    else:
        raise ValueError(f"unknown normaliser {kind!r}")
    return normalizer


def _rates(predictions: Sequence[str], references: Sequence[str]) -> tuple[float, float]:
    import jiwer

    pairs = [(p, r) for p, r in zip(predictions, references, strict=True) if r.strip()]
    if not pairs:
        return float("nan"), float("nan")
    preds = [p for p, _ in pairs]
    refs = [r for _, r in pairs]
    return 100.0 * jiwer.wer(refs, preds), 100.0 * jiwer.cer(refs, preds)


def score(predictions: Sequence[str], references: Sequence[str], normalizer: Normalizer) -> dict[str, float]:
    """WER/CER in percent, raw and normalised. References that are empty after normalising are skipped
    for the normalised rates (WER is undefined for them) and counted in ``skipped_empty_references``."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    wer, cer = _rates(predictions, references)
    norm_preds = [normalizer(p) for p in predictions]
    norm_refs = [normalizer(r) for r in references]
    norm_wer, norm_cer = _rates(norm_preds, norm_refs)
    return {
        "wer": round(wer, 3),
        "cer": round(cer, 3),
        "normalized_wer": round(norm_wer, 3),
        "normalized_cer": round(norm_cer, 3),
        "samples": len(references),
        "skipped_empty_references": sum(1 for r in norm_refs if not r.strip()),
    }
