"""Generation-based evaluation: batched ``generate`` with language/task forced, then WER/CER.

Backends call ``generate_predictions`` on their own device (under their own autocast, which is how it
works under int8/4-bit where ``predict_with_generate`` does not); the core scores the token ids with
``score_predictions`` so every backend is measured by the same code.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from whisper_tune.config.schema import EvalConfig, ModelConfig
from whisper_tune.recipe.collator import SpeechSeq2SeqCollator
from whisper_tune.recipe.metrics import make_normalizer, pick_normalizer, score
from whisper_tune.recipe.model import generate_kwargs, is_multilingual
from whisper_tune.recipe.progress import Reporter


class SupportsSamples(Protocol):
    """A list of samples, or a PreparedDataset: ``len`` and ``[i]`` -> {"input_features", "labels"}."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...


def generate_predictions(
    model: Any,
    dataset: SupportsSamples,
    collator: SpeechSeq2SeqCollator,
    *,
    model_cfg: ModelConfig,
    eval_cfg: EvalConfig,
    device: Any = "cpu",
    autocast: Any = None,
    reporter: Reporter | None = None,
    name: str = "eval",
) -> list[list[int]]:
    """Generated token ids for every sample of ``dataset``, in order, starting with the decoder prompt
    (``<|startoftranscript|><|lang|><|task|><|notimestamps|>``) and ending at ``<|endoftext|>``."""
    import torch

    reporter = reporter or Reporter.silent()
    was_training = model.training
    model.eval()
    kwargs = {
        "max_new_tokens": eval_cfg.max_new_tokens,
        "num_beams": eval_cfg.num_beams,
        # The full sequences, prompt included: the language token the model decoded under is then visible.
        "return_dict_in_generate": True,
        **generate_kwargs(model, model_cfg),
    }
    dtype = next(model.parameters()).dtype
    out: list[list[int]] = []
    pad = model.generation_config.pad_token_id
    eos = model.generation_config.eos_token_id
    n = len(dataset)
    row_languages = row_languages_of(dataset, model_cfg.language)
    with reporter.progress(f"evaluate {name}", total=n, unit="utt") as bar, torch.inference_mode():
        for start in range(0, n, eval_cfg.batch_size):
            stop = min(n, start + eval_cfg.batch_size)
            items = [dataset[i] for i in range(start, stop)]
            features = collator(items)["input_features"].to(device=device, dtype=dtype)
            languages = row_languages[start:stop] if row_languages is not None else [None] * len(items)
            rows: list[list[int]] = [[] for _ in items]
            # Mixed-language data: one generate call per language of the batch. (transformers 5.23's
            # generate(language=[...]) with one language per row returns wrong rows; checked.)
            for language, index in group_by_language(languages, kwargs.get("language")):
                batch_kwargs = {**kwargs, "language": language} if language else kwargs
                with autocast if autocast is not None else contextlib.nullcontext():
                    sequences = model.generate(input_features=features[index], **batch_kwargs)
                sequences = sequences if isinstance(sequences, torch.Tensor) else sequences.sequences
                for i, row in zip(index, sequences.tolist(), strict=True):
                    rows[i] = strip_padding(row, pad, eos)
            out.extend(rows)
            bar.update(len(items))
    if was_training:
        model.train()
    return out


def row_languages_of(dataset: Any, default: str | None) -> list[str | None] | None:
    """Per-sample languages of a prepared set with a language column (None: no per-row languages)."""
    languages: list[str | None] | None = getattr(dataset, "languages", None)
    if not languages or not any(languages):
        return None
    return [lang or default for lang in languages]


def group_by_language(
    languages: Sequence[str | None], default: str | None
) -> list[tuple[str | None, list[int]]]:
    """Batch positions grouped by the language to force (``default`` where a row has none)."""
    groups: dict[str | None, list[int]] = {}
    for i, language in enumerate(languages):
        groups.setdefault(language or default, []).append(i)
    return list(groups.items())


def detect_languages(
    model: Any,
    dataset: SupportsSamples,
    collator: SpeechSeq2SeqCollator,
    *,
    batch_size: int,
    device: Any = "cpu",
    autocast: Any = None,
) -> list[str]:
    """The language each clip sounds like to the model (Whisper's own language detection: one decoder
    step over the language tokens), as codes. Only for multilingual models."""
    import torch

    id_to_code = {i: tok.strip("<|>") for tok, i in model.generation_config.lang_to_id.items()}
    dtype = next(model.parameters()).dtype
    out: list[str] = []
    with torch.inference_mode():
        for start in range(0, len(dataset), batch_size):
            items = [dataset[i] for i in range(start, min(len(dataset), start + batch_size))]
            features = collator(items)["input_features"].to(device=device, dtype=dtype)
            with autocast if autocast is not None else contextlib.nullcontext():
                ids = model.detect_language(input_features=features)
            out.extend(id_to_code.get(int(i), "?") for i in ids.tolist())
    return out


@dataclass
class PhaseOutput:
    """What one evaluation phase produced for every set: token ids, detected languages, time."""

    predictions: dict[str, list[list[int]]] = field(default_factory=dict)
    languages: dict[str, list[str]] = field(default_factory=dict)
    seconds: float = 0.0


def evaluate_sets(
    model: Any,
    sets: Mapping[str, SupportsSamples],
    collator: SpeechSeq2SeqCollator,
    *,
    model_cfg: ModelConfig,
    eval_cfg: EvalConfig,
    phase: str,
    device: Any = "cpu",
    autocast: Any = None,
    reporter: Reporter | None = None,
) -> PhaseOutput:
    """Generate on every eval set and, for multilingual models with ``eval.detect_language``, detect
    each clip's language too (the core reports how often it is still the configured one)."""
    started = time.perf_counter()
    result = PhaseOutput()
    detect = eval_cfg.detect_language and is_multilingual(model.config.vocab_size)
    for name, dataset in sets.items():
        result.predictions[name] = generate_predictions(
            model,
            dataset,
            collator,
            model_cfg=model_cfg,
            eval_cfg=eval_cfg,
            device=device,
            autocast=autocast,
            reporter=reporter,
            name=f"{name} ({phase})",
        )
        if detect:
            result.languages[name] = detect_languages(
                model, dataset, collator, batch_size=eval_cfg.batch_size, device=device, autocast=autocast
            )
    result.seconds = round(time.perf_counter() - started, 2)
    return result


def result_fields(phases: Mapping[str, PhaseOutput]) -> dict[str, Any]:
    """The ``TrainResult`` fields (predictions, detected_languages, eval_seconds) of the phases run."""
    return {
        "predictions": {phase: out.predictions for phase, out in phases.items()},
        "detected_languages": {phase: out.languages for phase, out in phases.items() if out.languages},
        "eval_seconds": {phase: out.seconds for phase, out in phases.items()},
    }


def strip_padding(row: list[int], pad: int | None, eos: int | list[int] | None) -> list[int]:
    """Drop everything after the first end-of-text token (padding of finished rows)."""
    stops = set(eos if isinstance(eos, list) else [eos]) - {None}
    for i, tok in enumerate(row):
        if tok in stops:
            return row[: i + 1]
    return [t for t in row if t != pad] if pad is not None and pad not in stops else row


def score_predictions(
    tokenizer: Any,
    predictions: Sequence[Sequence[int]],
    references: Sequence[str],
    *,
    model_cfg: ModelConfig,
    eval_cfg: EvalConfig,
    normalizer: str | None = None,
) -> dict[str, Any]:
    """Decode token ids and score them against the reference transcripts (``normalizer`` overrides
    the configured choice for this set)."""
    texts = tokenizer.batch_decode([list(p) for p in predictions], skip_special_tokens=True)
    texts = [t.strip() for t in texts]
    kind = normalizer or pick_normalizer(eval_cfg.normalizer, model_cfg.language, model_cfg.english_only)
    metrics = score(texts, list(references), make_normalizer(kind))
    metrics["normalizer"] = kind  # type: ignore[assignment]
    return {"metrics": metrics, "texts": texts}
