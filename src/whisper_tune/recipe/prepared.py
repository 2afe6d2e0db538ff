"""The project-owned on-disk format for prepared data (log-mel features + label token ids).

It depends on nothing but NumPy and JSON, so any worker can read it whatever its ``datasets`` or
``transformers`` version (the IPU worker runs a 2023 stack)::

    <dir>/manifest.json          format, version, counts, mel bins, dtype, shards, drop report
    <dir>/features-00000.npy     float16/float32 array (n, num_mel_bins, 3000), memory-mapped on read
    <dir>/samples.jsonl          one line per sample: {"key", "text", "seconds", "labels": [ids]}, plus
                             "audio" (the source file's absolute path, when the sample came from a file)
                             and "language" (data.language_column) where they apply

The manifest is written last and the directory is built under a temporary name then renamed, so a
directory with a manifest is always complete.
"""

from __future__ import annotations

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

FORMAT = "whisper-tune-prepared"
VERSION = 1
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


class PreparedWriter:
    """Appends prepared samples in shards; ``close`` publishes the directory atomically."""

    def __init__(
        self,
        out_dir: Path,
        *,
        num_mel_bins: int,
        dtype: str,
        shard_size: int = 512,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.out_dir = out_dir
        self.tmp_dir = out_dir.with_name(f".{out_dir.name}.partial")
        if self.tmp_dir.exists():
            shutil.rmtree(self.tmp_dir)
        self.tmp_dir.mkdir(parents=True)
        self.num_mel_bins = num_mel_bins
        self.dtype = np.dtype(dtype)
        self.shard_size = shard_size
        self.meta = dict(meta or {})
        self.drops = DropReport()
        self._buffer: list[npt.NDArray[Any]] = []
        self._shards: list[dict[str, Any]] = []
        self._samples = (self.tmp_dir / SAMPLES).open("w", encoding="utf-8")
        self.count = 0
        self.seconds = 0.0

    def add(
        self,
        features: npt.NDArray[Any],
        labels: list[int],
        text: str,
        key: str,
        seconds: float,
        *,
        language: str | None = None,
        audio: str | None = None,
    ) -> None:
        if features.shape[0] != self.num_mel_bins:
            raise ValueError(f"features have {features.shape[0]} mel bins, expected {self.num_mel_bins}")
        self._buffer.append(features.astype(self.dtype, copy=False))
        record: dict[str, Any] = {"key": key, "text": text, "seconds": round(seconds, 3), "labels": labels}
        if language is not None:
            record["language"] = language
        if audio is not None:
            record["audio"] = audio
        self._samples.write(json.dumps(record) + "\n")
        self.count += 1
        self.seconds += seconds
        if len(self._buffer) >= self.shard_size:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        name = f"features-{len(self._shards):05d}.npy"
        np.save(self.tmp_dir / name, np.stack(self._buffer))
        self._shards.append({"file": name, "count": len(self._buffer)})
        self._buffer = []

    def close(self) -> Path:
        self._flush()
        self._samples.close()
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "num_samples": self.count,
            "num_mel_bins": self.num_mel_bins,
            "feature_dtype": self.dtype.name,
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

    def abort(self) -> None:
        self._samples.close()
        shutil.rmtree(self.tmp_dir, ignore_errors=True)


class PreparedDataset:
    """Random access to a prepared directory: ``ds[i]`` -> {"input_features", "labels"}."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        try:
            self.manifest: dict[str, Any] = json.loads(manifest_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(
                f"{self.path} is not a prepared dataset (no {MANIFEST})",
                hint="create one with 'whisper-tune prepare'",
            ) from None
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"cannot read {manifest_path}: {exc}") from None
        if self.manifest.get("format") != FORMAT or self.manifest.get("version") != VERSION:
            raise DataError(
                f"{self.path} was written in an unknown format/version "
                f"({self.manifest.get('format')} v{self.manifest.get('version')})"
            )
        self._shards = [np.load(self.path / s["file"], mmap_mode="r") for s in self.manifest["shards"]]
        self._offsets = np.cumsum([0] + [s["count"] for s in self.manifest["shards"]])
        with (self.path / SAMPLES).open(encoding="utf-8") as fh:
            self.samples: list[dict[str, Any]] = [json.loads(line) for line in fh if line.strip()]
        if len(self.samples) != self.manifest["num_samples"] or self._offsets[-1] != len(self.samples):
            raise DataError(f"{self.path} is inconsistent: manifest, shards and samples.jsonl disagree")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        shard = int(np.searchsorted(self._offsets, index, side="right") - 1)
        features = self._shards[shard][index - self._offsets[shard]]
        return {"input_features": features, "labels": self.samples[index]["labels"]}

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
