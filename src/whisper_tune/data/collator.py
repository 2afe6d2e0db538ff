"""Batches for Whisper: audio padded to the 30 s window (or stacked log-mel features) and labels padded
with -100.

Prepared samples carry 16 kHz audio: the collator zero-pads each clip to 480000 samples (what Whisper's
feature extractor does) and the log-mel features are computed on the training device from the batch
(``features.model_inputs``). Samples that carry precomputed ``input_features`` are stacked as they are.

The leading decoder-start token is stripped from the labels when every row has it (the model prepends it
again when it shifts labels right), as in the seeds. Labels are padded to the longest row (dynamic, the
default) or to a multiple of a fixed length when a backend needs static shapes (IPU).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from whisper_tune.data.features import SAMPLING_RATE, WINDOW_SAMPLES

LABEL_PAD = -100


@dataclass(frozen=True)
class SpeechSeq2SeqCollator:
    decoder_start_token_id: int
    label_pad_multiple: int | None = None
    feature_dtype: str = "float32"

    def pad_labels(self, rows: Sequence[Sequence[int]]) -> np.ndarray:
        if rows and all(len(r) > 0 and r[0] == self.decoder_start_token_id for r in rows):
            rows = [r[1:] for r in rows]
        longest = max((len(r) for r in rows), default=0)
        if self.label_pad_multiple:
            m = self.label_pad_multiple
            longest = max(m, -(-longest // m) * m)
        out = np.full((len(rows), longest), LABEL_PAD, dtype=np.int64)
        for i, row in enumerate(rows):
            out[i, : len(row)] = row
        return out

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        labels = torch.from_numpy(self.pad_labels([list(item["labels"]) for item in items]))
        if items and "audio" in items[0]:
            audio = np.zeros((len(items), WINDOW_SAMPLES), dtype=np.float32)
            clips = np.ones(len(items), dtype=np.int64)
            seconds = np.zeros(len(items), dtype=np.float64)
            for i, item in enumerate(items):
                clip = np.asarray(item["audio"])[:WINDOW_SAMPLES]
                audio[i, : len(clip)] = clip
                clips[i] = item.get("clips", 1)
                seconds[i] = item.get("seconds", len(clip) / SAMPLING_RATE)
            return {
                "audio": torch.from_numpy(audio),
                "labels": labels,
                "clips": torch.from_numpy(clips),
                "seconds": torch.from_numpy(seconds),
            }
        features = np.stack([np.asarray(item["input_features"]) for item in items]).astype(self.feature_dtype)
        return {"input_features": torch.from_numpy(features), "labels": labels}
