"""WER and CER, raw and after Whisper's text normaliser, computed with jiwer.

Next to WER, two hallucination signals: the insertion rate and the repeated n-gram rate.

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
    path = resources.files("whisper_tune.evaluation") / "assets" / "english.json"
    text = path.read_text(encoding="utf-8")
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


REPEAT_NGRAM = 3


def repeated_ngram_rate(texts: Sequence[str], n: int = REPEAT_NGRAM) -> float:
    """Percent of word n-grams that repeat an earlier n-gram of the same text: Whisper's hallucination
    loops ("thank you thank you thank you") push it up; ordinary speech rarely repeats a 3-gram."""
    total = repeated = 0
    for text in texts:
        words = text.split()
        seen: set[tuple[str, ...]] = set()
        for i in range(len(words) - n + 1):
            gram = tuple(words[i : i + n])
            total += 1
            repeated += gram in seen
            seen.add(gram)
    return round(100.0 * repeated / total, 3) if total else 0.0


def error_breakdown(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Insertions, deletions and substitutions as percent of reference words (they sum to the WER).
    A high insertion rate is the other hallucination signal: words where no speech was."""
    import jiwer

    pairs = [(p, r) for p, r in zip(predictions, references, strict=True) if r.strip()]
    if not pairs:
        return dict.fromkeys(("insertion_rate", "deletion_rate", "substitution_rate"), float("nan"))
    out = jiwer.process_words([r for _, r in pairs], [p for p, _ in pairs])
    words = out.hits + out.substitutions + out.deletions
    return {
        "insertion_rate": round(100.0 * out.insertions / words, 3),
        "deletion_rate": round(100.0 * out.deletions / words, 3),
        "substitution_rate": round(100.0 * out.substitutions / words, 3),
    }


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
        # Hallucination signals, on normalised text; the references' own repeat rate is the baseline.
        **error_breakdown(norm_preds, norm_refs),
        "repeated_ngram_rate": repeated_ngram_rate(norm_preds),
        "repeated_ngram_rate_reference": repeated_ngram_rate(norm_refs),
        "samples": len(references),
        # the normalised WER's denominator: one word is 100 / reference_words points
        "reference_words": sum(len(r.split()) for r in norm_refs),
        "skipped_empty_references": sum(1 for r in norm_refs if not r.strip()),
    }
