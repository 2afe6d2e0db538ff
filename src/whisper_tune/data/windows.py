"""The training set as windows, planned anew each epoch (``data.packing``, ``data.timestamps``,
``data.no_speech_fraction``).

``TrainWindows`` wraps a prepared training set (16 kHz audio + labels, ``prepared.py``); the training
loop asks it for each epoch's windows (``for_epoch``), a map-style dataset whose items are what the
collator takes (``{"audio", "labels"}``) plus how many clips and seconds of speech the window holds. A
window's audio is its clips' audio at their places (``packing.py``) with silence between them; its labels
are in Whisper's timestamp format (``timestamps.py``): each clip, or each of its segments with
``data.timestamps``, between its start and end timestamp tokens — or, for the windows the plan drew
without timestamps (``data.timestamp_fraction``), ``<|notimestamps|>`` and the segments' texts.
The segment text is tokenised with a leading space, as Whisper writes segments. Without packing and
timestamps (only no-speech windows), a clip keeps its prepared labels.

Everything is a function of the prepared data, the seed and the epoch, so a resumed run rebuilds the
very windows it was trained on, in the same order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from whisper_tune.config.schema import SAMPLING_RATE, DataConfig
from whisper_tune.data.packing import Clip, Plan, Rules, Window, plan_windows
from whisper_tune.data.store import PreparedDataset
from whisper_tune.data.timestamps import (
    SAMPLES_PER_STEP,
    Segment,
    SpecialTokens,
    label_length,
    no_speech_labels,
    plain_labels,
    timestamp_labels,
    to_steps,
)
from whisper_tune.errors import DataError


def clip_segments(sample: dict[str, Any], texts: dict[str, list[int]], use_segments: bool) -> list[Segment]:
    """A prepared clip's segments in steps from its start: its ``segments`` (``data.timestamps``), else
    the whole clip; ends are kept within the clip's audio."""
    length = round(int(sample["length"]) / SAMPLES_PER_STEP)
    if not use_segments:
        return [Segment(0, length, tuple(texts[sample["text"]]))]
    if not sample.get("segments"):
        raise DataError(
            "the prepared training set has no segments (data.timestamps needs them)",
            hint="prepare the training data with data.timestamps=true (a run prepares it again by itself)",
        )
    out = []
    for segment in sample["segments"]:
        start = min(to_steps(float(segment["start"])), length)
        end = min(max(to_steps(float(segment["end"])), start), length)
        out.append(Segment(start, end, tuple(texts[segment["text"]])))
    return out


def segment_texts(
    samples: Sequence[dict[str, Any]], tokenizer: Any, use_segments: bool
) -> dict[str, list[int]]:
    """Every distinct segment text -> its tokens, with a leading space (one batched tokenizer call)."""
    texts = sorted(
        {str(s["text"]) for s in samples}
        if not use_segments
        else {str(seg["text"]) for s in samples for seg in s.get("segments") or ()}
    )
    ids = tokenizer([" " + t.strip() for t in texts], add_special_tokens=False).input_ids if texts else []
    return {t: list(i) for t, i in zip(texts, ids, strict=True)}


class TrainWindows:
    """A prepared training set served as windows, one plan per epoch."""

    def __init__(self, prepared: PreparedDataset, tokenizer: Any, data: DataConfig, seed: int) -> None:
        self.prepared, self.seed = prepared, seed
        self.rules = Rules.from_config(data)
        self.special = SpecialTokens.from_tokenizer(tokenizer)
        self.timestamps = bool(data.packing.enabled) or data.timestamps
        samples = prepared.samples
        self.prefixes: list[tuple[int, ...]] = [self.special.prefix_of(s["labels"]) for s in samples]
        groups: dict[tuple[int, ...], int] = {}
        self.segments: list[list[Segment]] = []
        if self.timestamps:
            texts = segment_texts(samples, tokenizer, data.timestamps)
            self.segments = [clip_segments(s, texts, data.timestamps) for s in samples]
            lengths = [label_length(0, segs) - 1 for segs in self.segments]
        else:
            lengths = [len(s["labels"]) - len(p) - 1 for s, p in zip(samples, self.prefixes, strict=True)]
        self.clips = [
            Clip(int(s["length"]), tokens, len(prefix), groups.setdefault(prefix, len(groups)))
            for s, prefix, tokens in zip(samples, self.prefixes, lengths, strict=True)
        ]
        self._plans: dict[int, Plan] = {}

    def plan(self, epoch: int) -> Plan:
        if epoch not in self._plans:
            self._plans = {epoch: plan_windows(self.clips, self.rules, self.seed, epoch)}
        return self._plans[epoch]

    def for_epoch(self, epoch: int) -> EpochWindows:
        plan = self.plan(epoch)
        if not plan.windows:
            raise DataError(
                "no training clip fits a window: every clip is longer than data.packing.max_window_s or "
                "its labels with timestamps are longer than data.max_label_tokens"
            )
        return EpochWindows(self, plan.windows)

    def __len__(self) -> int:
        """Windows in the first epoch (later epochs may hold one or two more or fewer)."""
        return len(self.plan(0).windows)

    def report(self) -> dict[str, Any]:
        """What the first epoch's plan looks like (goes into metrics.json ``data.train.windows``)."""
        plan = self.plan(0)
        speech = [w for w in plan.windows if not w.no_speech]
        clip_seconds = sum(self.clips[p.clip].samples for w in speech for p in w.placements) / SAMPLING_RATE
        window_seconds = self.rules.window_steps * SAMPLES_PER_STEP / SAMPLING_RATE
        return {
            "packing": self.rules.pack,
            "timestamps": self.timestamps,
            "windows_first_epoch": len(plan.windows),
            "no_speech_windows_first_epoch": len(plan.windows) - len(speech),
            "timestamp_windows_first_epoch": sum(w.timestamps for w in speech) if self.timestamps else 0,
            "clips_per_window": round(sum(len(w.placements) for w in speech) / max(len(speech), 1), 2),
            "speech_share_of_window": round(clip_seconds / max(len(speech) * window_seconds, 1e-9), 3),
            "clips_in_no_window": len(plan.unfit),
        }


@dataclass(frozen=True)
class EpochWindows:
    """One epoch's windows as a map-style dataset (``DataLoader`` takes it as it is)."""

    source: TrainWindows
    windows: list[Window]

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        window = self.windows[index]
        special = self.source.special
        if window.no_speech:
            return {
                "audio": no_speech_audio(window),
                "labels": no_speech_labels(special),
                "clips": 0,
                "seconds": 0.0,
            }
        prepared, placements = self.source.prepared, window.placements
        clips = [prepared[p.clip] for p in placements]
        end = max(
            p.start * SAMPLES_PER_STEP + len(c["audio"]) for p, c in zip(placements, clips, strict=True)
        )
        audio = np.zeros(end, dtype=np.float32)
        segments: list[Segment] = []
        for placement, clip in zip(placements, clips, strict=True):
            at = placement.start * SAMPLES_PER_STEP
            audio[at : at + len(clip["audio"])] = clip["audio"]
            if self.source.timestamps:
                segments += [s.shifted(placement.start) for s in self.source.segments[placement.clip]]
        first = placements[0].clip
        if not self.source.timestamps:
            labels = list(clips[0]["labels"])
        elif window.timestamps:
            labels = timestamp_labels(self.source.prefixes[first], segments, special)
        else:  # data.timestamp_fraction: this window is labelled without timestamps
            labels = plain_labels(self.source.prefixes[first], segments, special)
        seconds = sum(len(c["audio"]) for c in clips) / SAMPLING_RATE
        return {"audio": audio, "labels": labels, "clips": len(clips), "seconds": seconds}


def no_speech_audio(window: Window) -> np.ndarray:
    """Silence, or Gaussian noise at the window's level, for its length (seeded by the plan)."""
    samples = window.no_speech_steps * SAMPLES_PER_STEP
    if window.noise_level == 0:
        return np.zeros(samples, dtype=np.float32)
    noise = np.random.default_rng(window.noise_seed).normal(0.0, window.noise_level, samples)
    return np.clip(noise, -1.0, 1.0).astype(np.float32)


def train_windows(prepared: PreparedDataset, tokenizer: Any, data: DataConfig, seed: int) -> Any:
    """The training set the loop reads: ``prepared`` as it is, or as windows when the data section asks
    for them."""
    return TrainWindows(prepared, tokenizer, data, seed) if data.windowed else prepared
