"""Generation-based evaluation: batched ``generate`` with language/task forced, then WER/CER.

The training lifecycle (``training/phases.py``) calls ``evaluate_sets`` with the run's accelerator: every
process generates for its share of the batches on its device under the accelerator's autocast (which is
how it works under int8/4-bit where ``predict_with_generate`` does not), and the rows are gathered back
in dataset order. The core scores the token ids with ``score_predictions``, so every backend is measured
by the same code. Without an accelerator (export parity checks, tools) the same functions run on one
device.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from whisper_tune.config.schema import EvalConfig, ModelConfig
from whisper_tune.console import Reporter
from whisper_tune.data.collator import SpeechSeq2SeqCollator
from whisper_tune.data.features import model_inputs
from whisper_tune.evaluation.metrics import make_normalizer, pick_normalizer, score
from whisper_tune.models.loading import generate_kwargs, is_multilingual

T = TypeVar("T")


class SupportsSamples(Protocol):
    """A list of samples, or a PreparedDataset: ``len`` and ``[i]`` -> {"audio" (16 kHz) or
    "input_features", "labels"}."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...


def generate_predictions(
    model: Any,
    dataset: SupportsSamples,
    collator: SpeechSeq2SeqCollator,
    *,
    model_cfg: ModelConfig,
    eval_cfg: EvalConfig,
    accelerator: Any = None,
    device: Any = "cpu",
    autocast: Any = None,
    reporter: Reporter | None = None,
    name: str = "eval",
) -> list[list[int]]:
    """Generated token ids for every sample of ``dataset``, in order, starting with the decoder prompt
    (``<|startoftranscript|><|lang|><|task|><|notimestamps|>``) and ending at ``<|endoftext|>``.

    With an ``accelerator`` of several processes, each generates for its share of the batches and the
    rows are gathered back into dataset order, every sample exactly once (a collective call); device and
    autocast are then the accelerator's."""

    kwargs = {
        "max_new_tokens": eval_cfg.max_new_tokens,
        "num_beams": eval_cfg.num_beams,
        # The full sequences, prompt included: the language token the model decoded under is then visible.
        "return_dict_in_generate": True,
        **generate_kwargs(_unwrapped(model, accelerator), model_cfg),
    }
    if _zero3(accelerator):
        kwargs["synced_gpus"] = True  # ZeRO-3 gathers weights per forward: ranks step generation together
    row_languages = row_languages_of(dataset, model_cfg.language)
    generation = _unwrapped(model, accelerator).generation_config
    pad, eos = generation.pad_token_id, generation.eos_token_id

    def batch_rows(generate: Any, features: Any, start: int) -> list[list[int]]:
        n = features.shape[0]
        languages = row_languages[start : start + n] if row_languages is not None else [None] * n
        rows: list[list[int]] = [[] for _ in range(n)]
        # Mixed-language data: one generate call per language of the batch. (transformers 5.23's
        # generate(language=[...]) with one language per row returns wrong rows; checked.)
        for language, index in group_by_language(languages, kwargs.get("language")):
            batch_kwargs = {**kwargs, "language": language} if language else kwargs
            sequences = sequences_of(generate(input_features=features[index], **batch_kwargs))
            if len(sequences) != len(index):
                # transformers 5.24 (generation_whisper's _stack_split_outputs) returns fewer rows than
                # inputs when some rows loop to max_new_tokens (seen with a wrecked fine-tune): one clip
                # at a time gives each its row
                sequences = [
                    sequences_of(generate(input_features=features[[i]], **batch_kwargs))[0] for i in index
                ]
            for i, row in zip(index, sequences, strict=True):
                rows[i] = strip_padding(row, pad, eos)
        return rows

    return _over_batches(
        model,
        dataset,
        collator,
        batch_rows,
        lambda m: m.generate,
        batch_size=eval_cfg.batch_size,
        accelerator=accelerator,
        device=device,
        autocast=autocast,
        bar=(reporter or Reporter.silent(), f"evaluate {name}"),
    )


def sequences_of(output: Any) -> list[list[int]]:
    """The token ids of a ``generate`` call's output (a tensor, or a ModelOutput with ``sequences``)."""
    sequences = output if hasattr(output, "tolist") else output.sequences
    rows: list[list[int]] = sequences.tolist()
    return rows


def _unwrapped(model: Any, accelerator: Any) -> Any:
    return accelerator.unwrap_model(model) if accelerator is not None else model


def _zero3(accelerator: Any) -> bool:
    if accelerator is None:
        return False
    from accelerate.utils import DistributedType

    return bool(
        accelerator.distributed_type == DistributedType.DEEPSPEED
        and accelerator.state.deepspeed_plugin.zero_stage == 3
    )


def full_parameters(accelerator: Any, model: Any) -> Any:
    """A context in which the unwrapped model holds all its weights (FSDP gathers its shards)."""
    if accelerator is None:
        return contextlib.nullcontext()
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        from torch.distributed.fsdp import FullyShardedDataParallel

        if any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
            return FullyShardedDataParallel.summon_full_params(model, writeback=False)
    return contextlib.nullcontext()


def _over_batches(
    model: Any,
    dataset: SupportsSamples,
    collator: SpeechSeq2SeqCollator,
    batch_rows: Callable[[Any, Any, int], list[T]],
    method: Callable[[Any], Any],
    *,
    batch_size: int,
    accelerator: Any,
    device: Any,
    autocast: Any,
    bar: tuple[Reporter, str] | None = None,
) -> list[T]:
    """``batch_rows(method(model), features, start)`` over ``dataset`` in batches of ``batch_size``, in
    eval mode without gradients; with several processes, batch ``b`` runs on process ``b % N`` and the
    rows are gathered in dataset order (under ZeRO-3 every process runs the same number of batches)."""
    import torch

    n = len(dataset)
    starts = list(range(0, n, batch_size))
    rank, world = 0, 1

    def mixed_precision() -> Any:
        return autocast if autocast is not None else contextlib.nullcontext()

    if accelerator is not None:
        rank, world = accelerator.process_index, accelerator.num_processes
        device = accelerator.device
        mixed_precision = accelerator.autocast  # a fresh context per batch
    mine: list[int | None] = list(starts[rank::world])
    if _zero3(accelerator) and len(mine) < -(-len(starts) // world):
        mine.append(None)  # a repeated batch whose rows are dropped, to keep the ranks in step
    unwrapped = _unwrapped(model, accelerator)
    was_training = unwrapped.training
    unwrapped.eval()
    dtype = next(unwrapped.parameters()).dtype
    num_mel_bins = int(unwrapped.config.num_mel_bins)
    reporter, title = bar if bar is not None else (Reporter.silent(), "")
    local: list[tuple[int, list[T]]] = []
    with (
        reporter.progress(
            title, total=sum(min(batch_size, n - s) for s in mine if s is not None), unit="utt"
        ) as progress,
        torch.inference_mode(),
        full_parameters(accelerator, model),
    ):
        for start in mine:
            first = start if start is not None else starts[-1]
            items = [dataset[i] for i in range(first, min(n, first + batch_size))]
            features = model_inputs(collator(items), num_mel_bins, device=device, dtype=dtype)
            with mixed_precision():
                rows = batch_rows(method(unwrapped), features, first)
            if start is not None:
                local.append((start, rows))
                progress.update(len(items))
    if was_training:
        unwrapped.train()
    if world == 1:
        return [row for _, rows in local for row in rows]
    from accelerate.utils import gather_object

    gathered = sorted(gather_object(local), key=lambda pair: pair[0])
    out = [row for _, rows in gathered for row in rows]
    if len(out) != n:  # never score a set with missing or repeated samples
        raise RuntimeError(f"gathered {len(out)} results for the {n} samples of {title}")
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
    accelerator: Any = None,
    device: Any = "cpu",
    autocast: Any = None,
) -> list[str]:
    """The language each clip sounds like to the model (Whisper's own language detection: one decoder
    step over the language tokens), as codes. Only for multilingual models. Collective like
    ``generate_predictions`` with an accelerator."""
    generation = _unwrapped(model, accelerator).generation_config
    id_to_code = {i: tok.strip("<|>") for tok, i in generation.lang_to_id.items()}

    def batch_rows(detect: Any, features: Any, start: int) -> list[str]:
        return [id_to_code.get(int(i), "?") for i in detect(input_features=features).tolist()]

    return _over_batches(
        model,
        dataset,
        collator,
        batch_rows,
        lambda m: m.detect_language,
        batch_size=batch_size,
        accelerator=accelerator,
        device=device,
        autocast=autocast,
    )


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
    accelerator: Any = None,
    device: Any = "cpu",
    autocast: Any = None,
    reporter: Reporter | None = None,
) -> PhaseOutput:
    """Generate on every eval set and, for multilingual models with ``eval.detect_language``, detect
    each clip's language too (the core reports how often it is still the configured one)."""
    started = time.perf_counter()
    result = PhaseOutput()
    detect = eval_cfg.detect_language and is_multilingual(_unwrapped(model, accelerator).config.vocab_size)
    for name, dataset in sets.items():
        result.predictions[name] = generate_predictions(
            model,
            dataset,
            collator,
            model_cfg=model_cfg,
            eval_cfg=eval_cfg,
            accelerator=accelerator,
            device=device,
            autocast=autocast,
            reporter=reporter,
            name=f"{name} ({phase})",
        )
        if detect:
            result.languages[name] = detect_languages(
                model,
                dataset,
                collator,
                batch_size=eval_cfg.batch_size,
                accelerator=accelerator,
                device=device,
                autocast=autocast,
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
