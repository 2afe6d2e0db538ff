"""Decode the same eval clips with the source model and an exported one, and compare their WERs.

Both sides decode the very same log-mel features (the run's prepared eval set, or ``--clips``) greedily
(or with the run's beam width) under the same decoder prompt (``<|startoftranscript|>[<|lang|><|task|>]
<|notimestamps|>``) and token budget; the Hugging Face side through ``generate`` (the core's
``generate_predictions``), the CTranslate2 side through the ``ctranslate2.models.Whisper`` that
faster-whisper loads. Transcripts are scored by the core's metrics (Whisper normaliser), so a broken
conversion (the classic "gibberish after conversion") shows up as a WER jump.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from whisper_tune.config.schema import EvalConfig, ModelConfig
from whisper_tune.console import Reporter
from whisper_tune.data.features import model_inputs
from whisper_tune.data.sources import SplitSpec, iter_split
from whisper_tune.errors import ConfigError, DataError
from whisper_tune.models.loading import is_multilingual

#: The metric the tolerance applies to (percentage points).
METRIC = "normalized_wer"


@dataclass
class Clips:
    """Prepared samples ({"audio", "labels"}) and their reference transcripts."""

    samples: list[dict[str, Any]]
    texts: list[str]
    origin: str


def load_clips(
    run_dir: Path | None,
    clips: Path | None,
    limit: int,
    processor: Any,
    work_dir: Path,
    reporter: Reporter,
) -> Clips:
    """The first ``limit`` clips of ``clips`` (a prepared directory or an audiofolder split directory
    with metadata.csv), or by default of the run's prepared eval set."""
    # lazy: keeps numpy out of this module's import
    from whisper_tune.data.store import MANIFEST, PreparedDataset

    if clips is None:
        if run_dir is None:
            raise ConfigError(
                "the parity check needs eval clips: give --clips (a prepared directory or an audio folder "
                "with metadata.csv), or export a run directory (its prepared eval set is used)"
            )
        path = run_dir / "prepared" / "eval"
        if not (path / MANIFEST).is_file():
            raise DataError(f"the run {run_dir} has no prepared eval set ({path})", hint="give --clips")
    elif (clips / MANIFEST).is_file():
        path = clips
    elif (clips / "metadata.csv").is_file():
        path = _prepare_audiofolder(clips, limit, processor, work_dir, reporter)
    else:
        raise DataError(
            f"--clips {clips} is neither a prepared directory (manifest.json) nor an audio folder "
            "(metadata.csv with file_name,text)"
        )
    dataset = PreparedDataset(path)
    expected = int(processor.feature_extractor.feature_size)
    if dataset.num_mel_bins != expected:
        raise DataError(
            f"the clips in {path} have {dataset.num_mel_bins} mel bins; the model needs {expected}"
        )
    n = min(limit, len(dataset))
    samples = [dataset[i] for i in range(n)]
    return Clips(samples, dataset.texts[:n], str(path))


def _prepare_audiofolder(
    folder: Path, limit: int, processor: Any, work_dir: Path, reporter: Reporter
) -> Path:
    # lazy: keeps numpy out of this module's import
    from whisper_tune.data.preparation import Filters, prepare_samples

    spec = SplitSpec(dataset=str(folder.parent), kind="audiofolder", split=folder.name)
    return prepare_samples(
        iter_split(spec),
        work_dir / "parity-clips",
        feature_extractor=processor.feature_extractor,
        tokenizer=processor.tokenizer,
        filters=Filters(max_duration_s=30.0, min_duration_s=0.0, max_label_tokens=448),
        limit=limit,
        reporter=reporter,
        name="parity clips",
    )


def parity_eval_config(eval_cfg: EvalConfig, processor: Any) -> EvalConfig:
    """The run's eval settings; "auto" normalisation picks the English normaliser for an English-only
    vocabulary whatever the model's path is called."""

    if eval_cfg.normalizer == "auto" and not is_multilingual(len(processor.tokenizer)):
        return eval_cfg.model_copy(update={"normalizer": "english"})
    return eval_cfg


def decode_hf(
    model: Any,
    clips: Clips,
    model_cfg: ModelConfig,
    eval_cfg: EvalConfig,
    reporter: Reporter,
    name: str,
) -> list[list[int]]:
    """Token ids from ``generate`` (works for a PeftModel too)."""
    # lazy: keeps numpy out of this module's import
    from whisper_tune.data.collator import SpeechSeq2SeqCollator
    from whisper_tune.evaluation.evaluate import generate_predictions

    collator = SpeechSeq2SeqCollator(decoder_start_token_id=int(model.config.decoder_start_token_id))
    return generate_predictions(
        model, clips.samples, collator, model_cfg=model_cfg, eval_cfg=eval_cfg, reporter=reporter, name=name
    )


def decode_ct2(
    whisper: Any,
    clips: Clips,
    prompt: list[int],
    eval_cfg: EvalConfig,
    reporter: Reporter,
    name: str,
) -> list[list[int]]:
    """Token ids from ``ctranslate2.models.Whisper.generate`` (``whisper`` is faster-whisper's
    ``WhisperModel.model``), same prompt, beam width and token budget as the Hugging Face side."""
    import ctranslate2
    import numpy as np

    # lazy: keeps numpy out of this module's import
    from whisper_tune.data.collator import SpeechSeq2SeqCollator

    collator = SpeechSeq2SeqCollator(decoder_start_token_id=prompt[0])
    num_mel_bins = int(whisper.n_mels)
    out: list[list[int]] = []
    n = len(clips.samples)
    with reporter.progress(f"decode {name}", total=n, unit="utt") as bar:
        for start in range(0, n, eval_cfg.batch_size):
            batch = clips.samples[start : start + eval_cfg.batch_size]
            inputs = collator(batch)
            features = np.ascontiguousarray(model_inputs(inputs, num_mel_bins).numpy(), np.float32)
            results = whisper.generate(
                ctranslate2.StorageView.from_array(features),
                [prompt] * len(batch),
                beam_size=eval_cfg.num_beams,
                max_length=ct2_max_length(len(prompt), eval_cfg.max_new_tokens),
                suppress_blank=True,
                suppress_tokens=[-1],
            )
            out.extend([list(r.sequences_ids[0]) for r in results])
            bar.update(len(batch))
    return out


def ct2_max_length(prompt_tokens: int, max_new_tokens: int) -> int:
    """CTranslate2's ``max_length`` that lets Whisper generate ``max_new_tokens`` after the prompt, as
    ``generate(max_new_tokens=...)`` does on the Hugging Face side. CTranslate2 (4.x, whisper.cc) decodes
    at most ``min(max_length / 2, max_length - prompt)`` tokens (OpenNMT/CTranslate2#1856): passing
    ``prompt + max_new_tokens`` gave it half the budget and cut transcripts the source decoded whole."""
    return min(448, max(2 * max_new_tokens, prompt_tokens + max_new_tokens))


def score(
    tokenizer: Any, ids: list[list[int]], clips: Clips, model_cfg: ModelConfig, eval_cfg: EvalConfig
) -> dict[str, Any]:
    """{"metrics": WER/CER raw and normalised, "texts": transcripts}."""
    # lazy: keeps numpy out of this module's import
    from whisper_tune.evaluation.evaluate import score_predictions

    return score_predictions(tokenizer, ids, clips.texts, model_cfg=model_cfg, eval_cfg=eval_cfg)


def compare(source: dict[str, Any], exported: dict[str, Any], tolerance: float) -> dict[str, Any]:
    """The parity verdict for one format: both WERs, the difference, the tolerance, pass/fail (fails
    when the export's WER is worse than the source's by more than the tolerance)."""
    src = float(source["metrics"][METRIC])
    exp = float(exported["metrics"][METRIC])
    delta = exp - src
    # one-sided: an export that transcribes better than its source is not a failed export (int8
    # noise on a small model moves WER both ways by ~2 points on 40 clips)
    passed = not math.isnan(delta) and delta <= tolerance
    same = sum(a == b for a, b in zip(source["texts"], exported["texts"], strict=True))
    return {
        "source_wer": src,
        "export_wer": exp,
        "delta": round(delta, 3),
        "tolerance": tolerance,
        "passed": passed,
        "identical_transcripts": same,
        "clips": len(source["texts"]),
        "metrics": exported["metrics"],
    }
