"""Generation-based evaluation: batched ``generate`` with language/task forced, then WER/CER.

Backends call ``generate_predictions`` on their own device (under their own autocast, which is how it
works under int8/4-bit where ``predict_with_generate`` does not); the core scores the token ids with
``score_predictions`` so every backend is measured by the same code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, Protocol

from whisper_tune.config.schema import EvalConfig, ModelConfig
from whisper_tune.recipe.collator import SpeechSeq2SeqCollator
from whisper_tune.recipe.metrics import make_normalizer, pick_normalizer, score
from whisper_tune.recipe.model import generate_kwargs
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
    with reporter.progress(f"evaluate {name}", total=n, unit="utt") as bar, torch.inference_mode():
        for start in range(0, n, eval_cfg.batch_size):
            items = [dataset[i] for i in range(start, min(n, start + eval_cfg.batch_size))]
            features = collator(items)["input_features"].to(device=device, dtype=dtype)
            with autocast if autocast is not None else contextlib.nullcontext():
                sequences = model.generate(input_features=features, **kwargs)
            sequences = sequences if isinstance(sequences, torch.Tensor) else sequences.sequences
            for row in sequences.tolist():
                out.append(strip_padding(row, pad, eos))
            bar.update(len(items))
    if was_training:
        model.train()
    return out


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
) -> dict[str, Any]:
    """Decode token ids and score them against the reference transcripts."""
    texts = tokenizer.batch_decode([list(p) for p in predictions], skip_special_tokens=True)
    texts = [t.strip() for t in texts]
    kind = pick_normalizer(eval_cfg.normalizer, model_cfg.language, model_cfg.english_only)
    metrics = score(texts, list(references), make_normalizer(kind))
    metrics["normalizer"] = kind  # type: ignore[assignment]
    return {"metrics": metrics, "texts": texts}
