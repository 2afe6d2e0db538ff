"""Raw samples -> 16 kHz audio -> filters -> int16 audio + prefixed labels -> prepared directory.

Decoding, resampling and tokenising run in worker processes (``data.num_workers``, default one per core),
a window of samples at a time, results in input order, so the output does not depend on the number of
workers.

Bad samples (unreadable or empty audio, empty transcripts, clips over ``max_duration_s``, labels over
``max_label_tokens``) are skipped and counted by reason; the counts land in the prepared manifest and in
the run report. Only an empty result is an error.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from whisper_tune.config.schema import SAMPLING_RATE, DataConfig
from whisper_tune.console import Reporter
from whisper_tune.data.audio import BadAudio, decode, from_array
from whisper_tune.data.sources import RawSample
from whisper_tune.data.store import MANIFEST, VERSION, PreparedWriter, to_pcm
from whisper_tune.disk import writing
from whisper_tune.errors import ConfigError, DataError
from whisper_tune.languages import language_code
from whisper_tune.models.loading import is_multilingual


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


@dataclass(frozen=True)
class Prepared:
    """One sample ready to write: int16 audio and labels."""

    key: str
    pcm: Any
    labels: list[int]
    text: str
    language: str | None
    audio: str | None
    #: data.timestamps: the clip's segments [{"start", "end", "text"}], seconds from its start
    segments: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class Dropped:
    key: str
    reason: str


@dataclass(frozen=True)
class LabelTokenizer:
    """What preparing a sample needs of the run's tokenizer: its ``tokenizers.Tokenizer`` (the Rust
    tokenizer under transformers' fast one, whose post-processor already adds the decoder prefix and
    ``<|endoftext|>``), its vocabulary size and whether its prefix names a language.

    Sent to the worker processes instead of the transformers tokenizer: unpickling that imports
    transformers, which made each worker start ~1.2 s slower (measured on the 2-core machine, 1.85 s ->
    0.66 s a worker). The labels are the same ids (tests/unit/test_preparation_tokenizer.py)."""

    backend: Any
    vocab_size: int
    has_language: bool

    @classmethod
    def of(cls, tokenizer: Any) -> LabelTokenizer:
        """``tokenizer`` (a transformers fast tokenizer with ``set_prefix_tokens`` applied) as a
        LabelTokenizer; one already is, as it is."""
        if isinstance(tokenizer, LabelTokenizer):
            return tokenizer
        return cls(
            backend=tokenizer.backend_tokenizer,
            vocab_size=len(tokenizer),
            has_language=getattr(tokenizer, "language", None) is not None,
        )

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str) -> list[int]:
        """``tokenizer(text).input_ids``: the decoder prefix, the text's tokens, ``<|endoftext|>``."""
        return list(self.backend.encode(text).ids)

    def token_id(self, token: str) -> int | None:
        """The id of ``token``, None where the vocabulary has no such token."""
        found = self.backend.token_to_id(token)
        return None if found is None else int(found)


#: what a worker process holds: the tokenizer (sent once) and the filters
_WORKER: dict[str, Any] = {}


def _init_worker(tokenizer: LabelTokenizer, filters: Filters) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _WORKER["tokenizer"], _WORKER["filters"] = tokenizer, filters


def _in_worker(sample: RawSample) -> Prepared | Dropped:
    return prepare_one(sample, _WORKER["tokenizer"], _WORKER["filters"])


class Workers:
    """The processes that prepare samples, started on first use and shared by every set of a run.

    ``count`` 1 prepares in this process. Windows smaller than ``min_parallel`` samples run in this
    process too (starting processes costs seconds: not worth it for a handful of clips)."""

    def __init__(self, count: int | None, tokenizer: Any, filters: Filters, min_parallel: int = 32) -> None:
        self.count = max(1, count or os.cpu_count() or 1)
        self.tokenizer, self.filters, self.min_parallel = LabelTokenizer.of(tokenizer), filters, min_parallel
        self._pool: Any = None

    @property
    def started(self) -> bool:
        return self._pool is not None

    def map(self, batch: list[RawSample]) -> list[Prepared | Dropped]:
        return list(self.submit(batch)())

    def submit(self, batch: list[RawSample]) -> Callable[[], Iterable[Prepared | Dropped]]:
        """Start preparing ``batch``; returns a function that gives its results in order, each as soon
        as it is ready (in the worker processes the work goes on while this process writes)."""
        if self.count <= 1 or len(batch) < self.min_parallel:
            results = [prepare_one(sample, self.tokenizer, self.filters) for sample in batch]
            return lambda: results
        if self._pool is None:
            import multiprocessing

            # spawn, not fork: this process holds torch's and the tokenizer's threads
            context = multiprocessing.get_context("spawn")
            self._pool = context.Pool(
                self.count, initializer=_init_worker, initargs=(self.tokenizer, self.filters)
            )
        chunk = max(1, len(batch) // (4 * self.count))
        # imap, not map_async: the writer starts on a window's first chunks instead of waiting for its last
        results = self._pool.imap(_in_worker, batch, chunksize=chunk)
        return lambda: results

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def prepared_stream(
    samples: Iterable[RawSample], workers: Workers, window: int = 256, ahead: int = 2
) -> Iterator[Prepared | Dropped]:
    """``prepare_one`` over ``samples``, in input order, a window of samples at a time (bounded memory:
    the window being written and up to ``ahead`` more being prepared by the workers meanwhile)."""
    queue: deque[Callable[[], Iterable[Prepared | Dropped]]] = deque()
    batch: list[RawSample] = []
    for sample in samples:
        batch.append(sample)
        if len(batch) >= window:
            queue.append(workers.submit(batch))
            batch = []
            if len(queue) > ahead:
                yield from queue.popleft()()
    if batch:
        queue.append(workers.submit(batch))
    while queue:
        yield from queue.popleft()()


def prepare_samples(
    samples: Iterable[RawSample],
    out_dir: Path,
    *,
    feature_extractor: Any,
    tokenizer: Any,
    filters: Filters,
    limit: int | None = None,
    total: int | None = None,
    reporter: Reporter | None = None,
    name: str = "data",
    meta: dict[str, Any] | None = None,
    workers: Workers | None = None,
    fingerprint: str | None = None,
) -> Path:
    """Prepare samples into ``out_dir`` (see ``prepared``); returns the directory.

    Decoding, resampling and tokenising run in ``workers`` (default: one process per core); the output is
    the same, in the same order, whatever their number. ``tokenizer`` must already carry the
    language/task prefix (``set_prefix_tokens``); ``feature_extractor`` gives the model's mel bins,
    recorded in the manifest (features are computed at batch time). With a ``fingerprint``
    (``data/fingerprint.py``) an existing ``out_dir`` prepared with the same one is reused as it is.
    """
    if fingerprint is not None and reusable(out_dir, fingerprint, int(feature_extractor.feature_size)):
        if reporter is not None:
            reporter.info(f"{name}: reusing {out_dir} (prepared earlier from the same data and settings)")
        return out_dir
    extra = {"fingerprint": fingerprint} if fingerprint else {}
    expected = limit or total
    with writing(f"the prepared {name} set", out_dir, partial=out_dir.with_name(f".{out_dir.name}.partial")):
        writer = PreparedWriter(
            out_dir,
            num_mel_bins=int(feature_extractor.feature_size),
            meta={"name": name, **(meta or {}), **extra},
        )

    def saving() -> AbstractContextManager[None]:
        """A write of the prepared set: a full disk removes the partial set and says what it needs."""
        return writing(
            f"the prepared {name} set",
            out_dir,
            needs=lambda: writer.size_estimate(expected),
            kept=lambda: _prepared_kept(out_dir),
            hint="free space there, or set output.dir to a larger disk (prepared audio takes about 115 MB "
            "per hour)",
            partial=writer.tmp_dir,
        )

    progress = (reporter or Reporter.silent()).progress(f"prepare {name}", total=expected, unit="clip")
    pool = workers if workers is not None else Workers(None, tokenizer, filters)
    # with a limit, windows no larger than it and one ahead: a 16-clip subset of a big set decodes about
    # 16 clips (32 at most)
    window, ahead = (256, 2) if limit is None else (max(8, min(256, limit)), 1)
    try:
        with progress:
            for item in prepared_stream(samples, pool, window, ahead):
                if limit is not None and writer.count >= limit:
                    break
                if isinstance(item, Dropped):
                    writer.drops.add(item.reason, item.key)
                else:
                    with saving():
                        writer.add(
                            item.pcm,
                            item.labels,
                            item.text,
                            item.key,
                            language=item.language,
                            audio=item.audio,
                            segments=item.segments,
                        )
                progress.update(1, kept=writer.count, dropped=writer.drops.total)
    except BaseException:
        writer.abort()
        raise
    finally:
        if workers is None:
            pool.close()
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
        parallel = f" ({pool.count} worker processes)" if pool.started else ""
        minutes = f"{writer.seconds / 60:.1f} min"
        reporter.info(f"{name}: {writer.count} samples ({minutes}); {writer.drops.summary()}{parallel}")
        for reason, keys in writer.drops.examples.items():
            reporter.debug(f"{name}: {reason} e.g. {', '.join(keys)}")
    try:
        with saving():
            return writer.close()
    except BaseException:
        writer.abort()
        raise


def _prepared_kept(out_dir: Path) -> str:
    """What a full disk left of the prepared sets: the partial one removed, the complete ones kept."""
    done = sorted(p.name for p in out_dir.parent.glob("*") if (p / MANIFEST).is_file() and p != out_dir)
    complete = f"; complete prepared sets kept: {', '.join(done)}" if done else ""
    return f"the partial set was removed{complete}"


def reusable(out_dir: Path, fingerprint: str, num_mel_bins: int) -> bool:
    """A complete prepared set in ``out_dir`` made from the same data and settings."""
    import json

    try:
        manifest = json.loads((out_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(
        manifest.get("fingerprint") == fingerprint
        and manifest.get("version") == VERSION
        and manifest.get("num_mel_bins") == num_mel_bins
    )


def prepare_one(sample: RawSample, tokenizer: Any, filters: Filters) -> Prepared | Dropped:
    """Decode, filter and tokenise one sample (runs in a worker process). ``tokenizer``: a
    ``LabelTokenizer``, or the transformers tokenizer it is made from."""
    tokenizer = LabelTokenizer.of(tokenizer)
    text = sample.text.strip() if isinstance(sample.text, str) else ""
    if not text:
        return Dropped(sample.key, "empty_transcript")
    try:
        audio = decode_raw(sample.audio)
    except BadAudio as bad:
        return Dropped(sample.key, bad.reason)
    if audio.seconds > filters.max_duration_s:
        return Dropped(sample.key, "audio_too_long")
    if audio.seconds < filters.min_duration_s:
        return Dropped(sample.key, "audio_too_short")
    language = None
    if sample.language is not None and str(sample.language).strip():
        try:
            language = language_code(str(sample.language))
        except ValueError:
            return Dropped(sample.key, "unknown_language")
    labels = tokenizer.encode(text)
    if language is not None:
        try:
            labels = with_language(labels, tokenizer, language)
        except KeyError:  # a language this model's vocabulary has no token for (e.g. yue before v3)
            return Dropped(sample.key, "unknown_language")
    if len(labels) > filters.max_label_tokens:
        return Dropped(sample.key, "label_too_long")
    segments = None
    if sample.segments is not None:
        found = read_segments(sample.segments, audio.seconds)
        if isinstance(found, str):
            return Dropped(sample.key, found)
        segments = found
    pcm = to_pcm(audio.samples)
    return Prepared(sample.key, pcm, labels, text, language, audio_file(sample.audio), segments)


#: a segment may end this far past its clip's audio (rounding in the source's times); its end is clipped
SEGMENT_END_TOLERANCE_S = 0.5


def read_segments(value: Any, seconds: float) -> list[dict[str, Any]] | str:
    """A row's segments (data.segments_column: a list of {start, end, text}, or that list as a JSON
    string) as a list sorted by start, or the reason to drop the clip: ``missing_segments`` (empty cell
    or list), ``bad_segments`` (not that form, times not 0 <= start <= end <= the clip's length, or no
    text)."""
    import json
    import math

    if isinstance(value, str):
        if not value.strip():
            return "missing_segments"
        try:
            value = json.loads(value)
        except ValueError:
            return "bad_segments"
    if not isinstance(value, (list, tuple)):
        return "bad_segments"
    if not value:
        return "missing_segments"
    segments = []
    for item in value:
        if not isinstance(item, dict):
            return "bad_segments"
        try:
            start, end = float(item["start"]), float(item["end"])
        except (KeyError, TypeError, ValueError):
            return "bad_segments"
        text = item.get("text")
        if not (math.isfinite(start) and math.isfinite(end)) or not 0 <= start <= end:
            return "bad_segments"
        if end > seconds + SEGMENT_END_TOLERANCE_S or not isinstance(text, str) or not text.strip():
            return "bad_segments"
        segments.append({"start": round(start, 3), "end": round(min(end, seconds), 3), "text": text.strip()})
    return sorted(segments, key=lambda s: s["start"])


def audio_file(audio: Any) -> str | None:
    """The absolute path of the file a sample's audio came from, when it came from a local file."""
    if isinstance(audio, dict):
        audio = audio.get("path")
    if isinstance(audio, (str, os.PathLike)) and str(audio):
        path = Path(audio).expanduser()
        if path.is_file():
            return os.path.abspath(path)
    return None


def with_language(labels: list[int], tokenizer: LabelTokenizer, language: str) -> list[int]:
    """``labels`` (which start with the tokenizer's prefix) with the row's language token in the prefix:
    replaced where the prefix has one (model.language set), inserted after <|startoftranscript|> else."""

    if not is_multilingual(len(tokenizer)):
        raise ConfigError(
            "data.language_column needs a multilingual model: English-only models have no language tokens"
        )
    token = tokenizer.token_id(f"<|{language}|>")
    if token is None:
        raise KeyError(language)
    return [labels[0], token, *labels[2 if tokenizer.has_language else 1 :]]
