"""Raw samples -> 16 kHz audio -> filters -> log-mel features + prefixed labels -> prepared directory.

Bad samples (unreadable or empty audio, empty transcripts, clips over ``max_duration_s``, labels over
``max_label_tokens``) are skipped and counted by reason; the counts land in the prepared manifest and in
the run report. Only an empty result is an error.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from whisper_tune.config.schema import SAMPLING_RATE, DataConfig
from whisper_tune.errors import ConfigError, DataError
from whisper_tune.languages import language_code
from whisper_tune.recipe.audio import BadAudio, decode, from_array
from whisper_tune.recipe.prepared import PreparedWriter
from whisper_tune.recipe.progress import Reporter
from whisper_tune.recipe.sources import RawSample


@dataclass(frozen=True)
class Filters:
    max_duration_s: float
    min_duration_s: float
    max_label_tokens: int

    @classmethod
    def from_config(cls, data: DataConfig) -> Filters:
        return cls(data.max_duration_s, data.min_duration_s, data.max_label_tokens)


def decode_raw(audio: Any) -> Any:
    """Decode any audio form a source yields (path, bytes, datasets dict, array dict)."""
    if audio is None or audio == "":
        raise BadAudio("missing_audio")
    if isinstance(audio, dict):
        if audio.get("array") is not None:
            return from_array(audio["array"], int(audio.get("sampling_rate") or SAMPLING_RATE))
        if audio.get("bytes"):
            return decode(bytes(audio["bytes"]))
        if audio.get("path"):
            return decode(str(audio["path"]))
        raise BadAudio("missing_audio")
    if isinstance(audio, (bytes, bytearray)):
        return decode(bytes(audio))
    return decode(audio)


def prepare_samples(
    samples: Iterable[RawSample],
    out_dir: Path,
    *,
    feature_extractor: Any,
    tokenizer: Any,
    filters: Filters,
    feature_dtype: str = "float16",
    limit: int | None = None,
    total: int | None = None,
    reporter: Reporter | None = None,
    name: str = "data",
    meta: dict[str, Any] | None = None,
) -> Path:
    """Prepare samples into ``out_dir`` (see ``prepared``); returns the directory.

    ``tokenizer`` must already carry the language/task prefix (``set_prefix_tokens``).
    """
    writer = PreparedWriter(
        out_dir,
        num_mel_bins=int(feature_extractor.feature_size),
        dtype=feature_dtype,
        meta={"name": name, **(meta or {})},
    )
    progress = (reporter or Reporter.silent()).progress(f"prepare {name}", total=limit or total, unit="clip")
    try:
        with progress:
            for sample in samples:
                if limit is not None and writer.count >= limit:
                    break
                _prepare_one(sample, writer, feature_extractor, tokenizer, filters)
                progress.update(1, kept=writer.count, dropped=writer.drops.total)
    except BaseException:
        writer.abort()
        raise
    if writer.count == 0:
        writer.abort()
        if writer.drops.total == 0:
            raise DataError(
                f"{name} is empty: its split has no samples",
                hint="check the split names (data.train_split / data.eval_split / data.extra_eval.N.split)",
            )
        raise DataError(
            f"no usable samples in {name}: {writer.drops.summary()}",
            hint="check the audio/text columns and the duration and label-length filters",
        )
    if reporter is not None:
        reporter.info(
            f"{name}: {writer.count} samples ({writer.seconds / 60:.1f} min); {writer.drops.summary()}"
        )
        for reason, keys in writer.drops.examples.items():
            reporter.debug(f"{name}: {reason} e.g. {', '.join(keys)}")
    return writer.close()


def _prepare_one(
    sample: RawSample, writer: PreparedWriter, feature_extractor: Any, tokenizer: Any, filters: Filters
) -> None:
    text = sample.text.strip() if isinstance(sample.text, str) else ""
    if not text:
        writer.drops.add("empty_transcript", sample.key)
        return
    try:
        audio = decode_raw(sample.audio)
    except BadAudio as bad:
        writer.drops.add(bad.reason, sample.key)
        return
    if audio.seconds > filters.max_duration_s:
        writer.drops.add("audio_too_long", sample.key)
        return
    if audio.seconds < filters.min_duration_s:
        writer.drops.add("audio_too_short", sample.key)
        return
    language = None
    if sample.language is not None and str(sample.language).strip():
        try:
            language = language_code(str(sample.language))
        except ValueError:
            writer.drops.add("unknown_language", sample.key)
            return
    labels = list(tokenizer(text).input_ids)
    if language is not None:
        labels = with_language(labels, tokenizer, language)
    if len(labels) > filters.max_label_tokens:
        writer.drops.add("label_too_long", sample.key)
        return
    features = feature_extractor(
        audio.samples, sampling_rate=SAMPLING_RATE, return_tensors="np"
    ).input_features[0]
    writer.add(
        features, labels, text, sample.key, audio.seconds, language=language, audio=audio_file(sample.audio)
    )


def audio_file(audio: Any) -> str | None:
    """The absolute path of the file a sample's audio came from, when it came from a local file."""
    if isinstance(audio, dict):
        audio = audio.get("path")
    if isinstance(audio, (str, os.PathLike)) and str(audio):
        path = Path(audio).expanduser()
        if path.is_file():
            return os.path.abspath(path)
    return None


def with_language(labels: list[int], tokenizer: Any, language: str) -> list[int]:
    """``labels`` (which start with the tokenizer's prefix) with the row's language token in the prefix:
    replaced where the prefix has one (model.language set), inserted after <|startoftranscript|> else."""
    from whisper_tune.recipe.model import is_multilingual

    if not is_multilingual(len(tokenizer)):
        raise ConfigError(
            "data.language_column needs a multilingual model: English-only models have no language tokens"
        )
    token = tokenizer.convert_tokens_to_ids(f"<|{language}|>")
    has_language = getattr(tokenizer, "language", None) is not None
    return [labels[0], token, *labels[2 if has_language else 1 :]]
