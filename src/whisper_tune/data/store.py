"""The project-owned on-disk format for prepared data: decoded 16 kHz mono audio + label token ids.

Format ``whisper-tune-prepared`` version 2. It depends on nothing but NumPy and JSON, so any worker can
read it whatever its ``datasets`` or ``transformers`` version (the IPU worker runs a 2023 stack)::

    <dir>/manifest.json          format, version, counts, durations, sampling rate, shards, drop report,
                                 and what the labels were made with (model, language, task, decoder prefix)
    <dir>/audio-00000.npy        int16 PCM at 16 kHz: the shard's clips end to end (one 1-D array),
                                 memory-mapped on read
    <dir>/samples.jsonl          one line per sample: {"key", "text", "seconds", "labels": [ids],
                                 "shard", "offset", "length"} (where its audio is in which shard), plus
                                 "audio" (the source file's absolute path, when it came from a file),
                                 "language" (data.language_column) and "segments" (data.timestamps:
                                 [{"start", "end", "text"}], seconds from the clip's start) where they
                                 apply

Audio, not log-mel features: 32 kB per second of audio (115 MB per hour) whatever a clip's length, where
the 30 s log-mel window of version 1 took ~0.9 MB per clip even for a 2 s clip. Features are computed
per batch on the training device (``features.py``). Version 1 directories are refused with a message
saying to prepare again.

The manifest is written last and the directory is built under a temporary name then renamed, so a
directory with a manifest is always complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from whisper_tune.errors import DataError
from whisper_tune.reading import read_json_object

FORMAT = "whisper-tune-prepared"
VERSION = 2
SAMPLING_RATE = 16_000
PCM_SCALE = 32768.0
MANIFEST = "manifest.json"
SAMPLES = "samples.jsonl"


@dataclass
class DropReport:
    """Samples skipped while preparing, by reason, with a few example ids per reason."""

    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, key: str) -> None:
        self.counts[reason] += 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 3:
            self.examples[reason].append(key)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_json(self) -> dict[str, Any]:
        return {"total": self.total, "by_reason": dict(self.counts), "examples": self.examples}

    def summary(self) -> str:
        if not self.total:
            return "nothing dropped"
        parts = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in self.counts.most_common())
        return f"dropped {self.total}: {parts}"


def to_pcm(samples: npt.NDArray[Any]) -> npt.NDArray[np.int16]:
    """float audio in [-1, 1] -> int16 PCM (clipped; rounding to the nearest step)."""
    scaled = np.rint(np.asarray(samples, dtype=np.float32) * PCM_SCALE)
    pcm: npt.NDArray[np.int16] = np.clip(scaled, -32768, 32767).astype(np.int16)
    return pcm


class PreparedWriter:
    """Appends prepared samples in shards; ``close`` publishes the directory atomically."""

    def __init__(
        self,
        out_dir: Path,
        *,
        num_mel_bins: int,
        shard_size: int = 512,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.out_dir = out_dir
        self.tmp_dir = out_dir.with_name(f".{out_dir.name}.partial")
        if self.tmp_dir.exists():
            shutil.rmtree(self.tmp_dir)
        self.tmp_dir.mkdir(parents=True)
        self.num_mel_bins = num_mel_bins
        self.shard_size = shard_size
        self.meta = dict(meta or {})
        self.drops = DropReport()
        self._buffer: list[npt.NDArray[np.int16]] = []
        self._offset = 0
        self._shards: list[dict[str, Any]] = []
        self._samples = (self.tmp_dir / SAMPLES).open("w", encoding="utf-8")
        self.count = 0
        self.seconds = 0.0

    def add(
        self,
        pcm: npt.NDArray[np.int16],
        labels: list[int],
        text: str,
        key: str,
        *,
        language: str | None = None,
        audio: str | None = None,
        segments: list[dict[str, Any]] | None = None,
    ) -> None:
        """One sample: its 16 kHz int16 audio (``to_pcm``) and its labels (and its timestamped segments,
        with data.timestamps)."""
        if pcm.dtype != np.int16 or pcm.ndim != 1:
            raise ValueError(f"audio must be 1-D int16 PCM, got {pcm.dtype} {pcm.shape}")
        seconds = len(pcm) / SAMPLING_RATE
        record: dict[str, Any] = {
            "key": key,
            "text": text,
            "seconds": round(seconds, 3),
            "labels": labels,
            "shard": len(self._shards),
            "offset": self._offset,
            "length": len(pcm),
        }
        if language is not None:
            record["language"] = language
        if audio is not None:
            record["audio"] = audio
        if segments is not None:
            record["segments"] = segments
        self._buffer.append(pcm)
        self._offset += len(pcm)
        self._samples.write(json.dumps(record) + "\n")
        self.count += 1
        self.seconds += seconds
        if len(self._buffer) >= self.shard_size:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        name = f"audio-{len(self._shards):05d}.npy"
        np.save(self.tmp_dir / name, np.concatenate(self._buffer))
        self._shards.append({"file": name, "count": len(self._buffer), "samples": self._offset})
        self._buffer = []
        self._offset = 0

    def close(self) -> Path:
        self._flush()
        self._samples.close()
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "num_samples": self.count,
            "num_mel_bins": self.num_mel_bins,
            "sampling_rate": SAMPLING_RATE,
            "audio_dtype": "int16",
            "total_seconds": round(self.seconds, 2),
            "shards": self._shards,
            "dropped": self.drops.to_json(),
            **self.meta,
        }
        (self.tmp_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        if self.out_dir.exists():
            shutil.rmtree(self.out_dir)
        os.replace(self.tmp_dir, self.out_dir)
        return self.out_dir

    def size_estimate(self, clips: int | None = None) -> int | None:
        """About how many bytes the set takes on disk: what is written and buffered so far, scaled to
        ``clips`` when given (None before the first clip)."""
        if self.count == 0:
            return None
        files = sum(f.stat().st_size for f in self.tmp_dir.glob("*") if f.is_file())
        so_far = files + sum(b.nbytes for b in self._buffer)
        return so_far if not clips or clips <= self.count else so_far * clips // self.count

    def abort(self) -> None:
        """Remove the partial set (also when its last buffered lines cannot be flushed: a full disk)."""
        with contextlib.suppress(OSError):
            self._samples.close()
        shutil.rmtree(self.tmp_dir, ignore_errors=True)


class PreparedDataset:
    """Random access to a prepared directory: ``ds[i]`` -> {"input_features", "labels"}."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise DataError(
                f"{self.path} is not a prepared dataset (no {MANIFEST})",
                hint="create one with 'whisper-tune prepare'",
            )
        self.manifest: dict[str, Any] = read_json_object(manifest_path, DataError, "a prepared manifest")
        if self.manifest.get("format") == FORMAT and self.manifest.get("version") == 1:
            raise DataError(
                f"{self.path} was prepared by an older whisper-tune (format v1: log-mel features)",
                hint="prepare it again: delete the folder (a run's prepared/ is rebuilt) or run "
                "'whisper-tune prepare'",
            )
        if self.manifest.get("format") != FORMAT or self.manifest.get("version") != VERSION:
            raise DataError(
                f"{self.path} was written in an unknown format/version "
                f"({self.manifest.get('format')} v{self.manifest.get('version')})"
            )
        try:
            self._shards = [np.load(self.path / s["file"], mmap_mode="r") for s in self.manifest["shards"]]
            with (self.path / SAMPLES).open(encoding="utf-8") as fh:
                self.samples: list[dict[str, Any]] = [json.loads(line) for line in fh if line.strip()]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{self.path} is damaged: {exc}") from None
        try:
            counts = sum(int(s["count"]) for s in self.manifest["shards"])
            consistent = len(self.samples) == self.manifest["num_samples"] == counts
        except (KeyError, TypeError, ValueError):
            consistent = False
        if not consistent:
            raise DataError(f"{self.path} is inconsistent: manifest, shards and samples.jsonl disagree")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """{"audio": float32 16 kHz samples in [-1, 1), "labels": token ids}."""
        if not 0 <= index < len(self):
            raise IndexError(index)
        sample = self.samples[index]
        start = int(sample["offset"])
        pcm = self._shards[int(sample["shard"])][start : start + int(sample["length"])]
        return {"audio": pcm.astype(np.float32) / PCM_SCALE, "labels": sample["labels"]}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(len(self)):
            yield self[i]

    @property
    def texts(self) -> list[str]:
        return [s["text"] for s in self.samples]

    @property
    def languages(self) -> list[str | None]:
        """Each sample's own language (data.language_column), None where the run's language applies."""
        return [s.get("language") for s in self.samples]

    @property
    def num_mel_bins(self) -> int:
        return int(self.manifest["num_mel_bins"])

    @property
    def total_seconds(self) -> float:
        return float(self.manifest.get("total_seconds", 0.0))

    @property
    def dropped(self) -> dict[str, Any]:
        return dict(self.manifest.get("dropped", {}))
