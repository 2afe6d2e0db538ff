"""Read whisper-tune's prepared data and batch it with static shapes (numpy + json; torch only to batch).

The prepared format (whisper-tune ``data/store.py``) is project-owned so that this worker can read it
whatever its transformers version::

    <dir>/manifest.json          {"format": "whisper-tune-prepared", "version": 2, "shards", ...}
    <dir>/audio-00000.npy        int16 16 kHz PCM, the shard's clips end to end
    <dir>/samples.jsonl          one line per sample: {"key", "text", "seconds", "labels": [token ids],
                                 "shard", "offset", "length"}

Log-mel features are computed per item with the pinned stack's own ``WhisperFeatureExtractor`` (NumPy;
the IPU host feeds them, fp16, to the device).

Static shapes, as the IPU needs them: labels are padded with -100 to a multiple of the job's label length
(seed 004: ``pad_to_multiple_of=224``), features are cast to one dtype (fp16 on the IPU), and every batch
has the same size (the trainer drops the last incomplete training batch; eval sets are padded up to a
whole number of batches by repeating their last sample, and the extra predictions are cut off again).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

PREPARED_FORMAT = "whisper-tune-prepared"
PREPARED_VERSION = 2
PCM_SCALE = 32768.0
LABEL_PAD = -100


class WorkerError(Exception):
    """A problem the worker reports as one line, with its kind: "job" (a job file this worker does not
    understand), "data" (unreadable prepared data), "model" (a model the pinned stack cannot load) or
    "sdk" (optimum-graphcore / poptorch missing)."""

    def __init__(self, message: str, kind: str = "data") -> None:
        super().__init__(message)
        self.kind = kind


def whisper_features(num_mel_bins: int) -> Any:
    """audio (float32, 16 kHz) -> (num_mel_bins, 3000) log-mel, by the pinned transformers' extractor."""
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(feature_size=num_mel_bins)

    def features(audio: np.ndarray) -> np.ndarray:
        return extractor(audio, sampling_rate=16000, return_tensors="np").input_features[0]

    return features


class PreparedData:
    """``data[i]`` -> {"input_features": (mels, 3000) array, "labels": [ids]}; audio memory-mapped, the
    features computed from it by ``features`` (default: ``whisper_features``)."""

    def __init__(self, path: str, features: Any = None) -> None:
        self.path = Path(path)
        manifest_path = self.path / "manifest.json"
        try:
            self.manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise WorkerError(f"cannot read prepared data {manifest_path}: {exc}") from None
        if self.manifest.get("format") == PREPARED_FORMAT and self.manifest.get("version") == 1:
            raise WorkerError(
                "%s was prepared by an older whisper-tune (format v1); prepare it again" % self.path
            )
        if self.manifest.get("format") != PREPARED_FORMAT or self.manifest.get("version") != PREPARED_VERSION:
            raise WorkerError(
                "%s is not whisper-tune prepared data version %d (found %s v%s)"
                % (self.path, PREPARED_VERSION, self.manifest.get("format"), self.manifest.get("version"))
            )
        self._shards = [np.load(str(self.path / s["file"]), mmap_mode="r") for s in self.manifest["shards"]]
        with (self.path / "samples.jsonl").open(encoding="utf-8") as fh:
            self.samples = [json.loads(line) for line in fh if line.strip()]
        counts = sum(int(s["count"]) for s in self.manifest["shards"])
        if len(self.samples) != self.manifest["num_samples"] or counts != len(self.samples):
            raise WorkerError(f"{self.path} is inconsistent: manifest, shards and samples.jsonl disagree")
        self._features = features or whisper_features(self.num_mel_bins)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        sample = self.samples[index]
        start = int(sample["offset"])
        pcm = self._shards[int(sample["shard"])][start : start + int(sample["length"])]
        audio = pcm.astype(np.float32) / PCM_SCALE
        return {"input_features": self._features(audio), "labels": sample["labels"]}

    @property
    def num_mel_bins(self) -> int:
        return int(self.manifest["num_mel_bins"])


class PaddedToBatches:
    """A dataset padded to a multiple of ``batch`` samples by repeating its last sample (fixed eval
    batches); ``real`` is how many leading items are real."""

    def __init__(self, data: Any, batch: int) -> None:
        self.data = data
        self.real = len(data)
        self.length = -(-self.real // batch) * batch if self.real else 0

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        return self.data[min(index, self.real - 1)]


def pad_labels(rows: Sequence[Sequence[int]], multiple: int, decoder_start_token_id: int) -> np.ndarray:
    """Labels padded with -100 to a multiple of ``multiple`` (never shorter than it). The leading
    decoder-start token is dropped when every row has it: the model prepends it again when it shifts the
    labels right (as whisper-tune's collator does)."""
    if rows and all(len(r) > 0 and r[0] == decoder_start_token_id for r in rows):
        rows = [r[1:] for r in rows]
    longest = max([len(r) for r in rows] or [0])
    length = max(multiple, -(-longest // multiple) * multiple)
    out = np.full((len(rows), length), LABEL_PAD, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


class StaticCollator:
    """Batches with static shapes: features in one dtype, labels padded to a multiple of a fixed length.

    ``shapes[phase]`` records every distinct (features shape, labels shape) it produced while ``phase``
    was set ("train" or "eval"), so the result file can show that the shapes were static.
    """

    def __init__(self, label_pad_length: int, decoder_start_token_id: int, feature_dtype: str) -> None:
        self.label_pad_length = label_pad_length
        self.decoder_start_token_id = decoder_start_token_id
        self.feature_dtype = np.dtype(feature_dtype)
        self.phase = "train"
        self.shapes: dict[str, list[list[list[int]]]] = {}

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        features = np.stack([np.asarray(item["input_features"]) for item in items]).astype(self.feature_dtype)
        labels = pad_labels(
            [list(item["labels"]) for item in items], self.label_pad_length, self.decoder_start_token_id
        )
        shape = [list(features.shape), list(labels.shape)]
        seen = self.shapes.setdefault(self.phase, [])
        if shape not in seen:
            seen.append(shape)
        return {"input_features": torch.from_numpy(features), "labels": torch.from_numpy(labels)}


def strip_generated(row: Sequence[int], pad: Any, eos: Any) -> list[int]:
    """A generated row up to and including its first end-of-text token; trainer padding (-100) and
    pad tokens after it dropped (the core scores what is left)."""
    stops = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
    out = []
    for token in row:
        token = int(token)
        if token == LABEL_PAD:
            continue
        out.append(token)
        if token in stops:
            return out
    return [t for t in out if t != pad] if pad is not None and pad not in stops else out
