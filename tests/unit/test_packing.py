"""Packed training windows (data/packing.py, data/windows.py, data/timestamps.py) on real quickstart
clips with tiny.en's real tokenizer: every clip in exactly one window, its text in its window's labels in
order between the timestamps of its placement, windows within 30 s and 448 label tokens, plans
deterministic per seed and epoch, no-speech windows with Whisper's no-speech target, and timestamped
segments from a data column."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import real_samples
from transformers.models.whisper.tokenization_whisper import _decode_asr
from whisper_tune_testing import write_prepared

from whisper_tune.config.schema import DataConfig, PackingConfig
from whisper_tune.data.packing import Clip, Rules, plan_windows
from whisper_tune.data.preparation import Dropped, Filters, prepare_one
from whisper_tune.data.sources import RawSample
from whisper_tune.data.store import PreparedDataset
from whisper_tune.data.timestamps import SpecialTokens, decoded_segments
from whisper_tune.data.windows import TrainWindows
from whisper_tune.errors import ConfigError

CLIPS = 30


@pytest.fixture(scope="module")
def clips(toy_model_dir: Path) -> list[dict[str, Any]]:
    return real_samples(toy_model_dir, CLIPS, longest_last=False, audio=True, text=True)


@pytest.fixture(scope="module")
def prepared(clips: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> PreparedDataset:
    return PreparedDataset(write_prepared(clips, tmp_path_factory.mktemp("packing") / "train"))


def packed(**packing: Any) -> DataConfig:
    return DataConfig(packing=PackingConfig(enabled=True, **packing))


def read_window(
    labels: list[int], special: SpecialTokens
) -> tuple[list[int], list[tuple[int, list[int], int]]]:
    """(prefix, [(start step, text tokens, end step)]) of a window's labels, checking the format."""
    assert labels[-1] == special.end and special.no_timestamps not in labels
    first = next(i for i, t in enumerate(labels) if special.is_timestamp(t))
    body, segments = labels[first:-1], []
    while body:
        start, rest = body[0], body[1:]
        close = next(i for i, t in enumerate(rest) if special.is_timestamp(t))
        segments.append(
            (start - special.timestamp_begin, rest[:close], rest[close] - special.timestamp_begin)
        )
        body = rest[close + 1 :]
    return labels[:first], segments


def test_every_clip_is_in_one_window_in_order_between_the_timestamps_of_its_place(
    prepared: PreparedDataset, english_tokenizer: Any
) -> None:
    windows = TrainWindows(prepared, english_tokenizer, packed(), seed=3)
    special = windows.special
    assert special.timestamp_begin == english_tokenizer.convert_tokens_to_ids("<|notimestamps|>") + 1
    epoch = windows.for_epoch(0)
    seen: list[int] = []
    for index, window in enumerate(epoch.windows):
        item = epoch[index]
        prefix, segments = read_window(item["labels"], special)
        assert prefix == [english_tokenizer.convert_tokens_to_ids("<|startoftranscript|>")]  # English-only
        assert len(item["labels"]) <= 448 and len(item["audio"]) <= 480_000
        assert item["clips"] == len(window.placements) == len(segments)
        for placement, (start, text, end) in zip(window.placements, segments, strict=True):
            sample = prepared.samples[placement.clip]
            assert start == placement.start and end == start + round(sample["length"] / 320)
            assert text == english_tokenizer(" " + sample["text"], add_special_tokens=False).input_ids
            audio = prepared[placement.clip]["audio"]
            at = start * 320
            np.testing.assert_array_equal(item["audio"][at : at + len(audio)], audio)
            seen.append(placement.clip)
        starts = [p.start for p in window.placements]
        assert starts == sorted(starts) and starts[0] == 0
        # the decoder of transformers' ASR pipeline (what `whisper-tune transcribe` uses) reads the same
        # segments from the labels
        _, chunks = _decode_asr(
            english_tokenizer,
            [{"tokens": np.array([item["labels"]])}],
            return_timestamps=True,
            return_language=False,
            time_precision=0.02,
        )
        times = [t for chunk in chunks["chunks"] for t in chunk["timestamp"]]
        assert times == pytest.approx([t * 0.02 for s, _, e in segments for t in (s, e)])
        assert [t for span in decoded_segments(item["labels"], special) for t in span] == pytest.approx(times)
    assert sorted(seen) == list(range(CLIPS))
    assert len(epoch) < CLIPS / 5  # 2.75 s clips: many to a window
    report = windows.report()
    assert report["windows_first_epoch"] == len(epoch) and report["clips_per_window"] > 5


def test_windows_keep_within_the_label_limit_and_the_window_length(
    prepared: PreparedDataset, english_tokenizer: Any
) -> None:
    data = DataConfig(max_label_tokens=40, packing=PackingConfig(enabled=True, max_window_s=12, gap_s=1))
    windows = TrainWindows(prepared, english_tokenizer, data, seed=0)
    epoch = windows.for_epoch(0)
    placed = sorted(p.clip for w in epoch.windows for p in w.placements)
    assert sorted([*placed, *windows.plan(0).unfit]) == list(range(CLIPS))
    for index, window in enumerate(epoch.windows):
        item = epoch[index]
        assert len(item["labels"]) <= 40 and len(item["audio"]) <= 12 * 16_000
        for before, after in zip(window.placements, window.placements[1:], strict=False):
            assert after.start - (before.start + windows.clips[before.clip].steps) == 50  # the 1 s gap


def test_a_timestamp_fraction_labels_the_other_windows_without_timestamps(
    prepared: PreparedDataset, english_tokenizer: Any
) -> None:
    """data.timestamp_fraction: a seeded share of windows keeps timestamps; the rest are labelled
    <|notimestamps|> and the same texts in the same order; the placements do not change."""
    everywhere = TrainWindows(prepared, english_tokenizer, packed(), seed=5)
    data = DataConfig(packing=PackingConfig(enabled=True), timestamp_fraction=0.5)
    some = TrainWindows(prepared, english_tokenizer, data, seed=5)
    special = some.special
    kinds = []
    for epoch in range(4):
        with_all, with_some = everywhere.for_epoch(epoch), some.for_epoch(epoch)
        assert [w.placements for w in with_all.windows] == [w.placements for w in with_some.windows]
        for index, window in enumerate(with_some.windows):
            labels, timestamped = with_some[index]["labels"], with_all[index]["labels"]
            kinds.append(window.timestamps)
            if window.timestamps:
                assert labels == timestamped
                continue
            prefix, segments = read_window(timestamped, special)
            assert labels == [*prefix, special.no_timestamps, *(t for _, text, _ in segments for t in text),
                              special.end]  # fmt: skip
            assert not any(special.is_timestamp(t) for t in labels)
        assert with_some.windows == some.for_epoch(epoch).windows  # seeded: the same draw again
    assert 0 < sum(kinds) < len(kinds)  # ~ half of ~24 windows
    report = some.report()
    assert report["timestamp_windows_first_epoch"] == sum(w.timestamps for w in some.plan(0).windows)
    none = DataConfig(packing=PackingConfig(enabled=True), timestamp_fraction=0.0)
    assert not any(w.timestamps for w in TrainWindows(prepared, english_tokenizer, none, 5).plan(0).windows)


def test_plans_are_deterministic_per_seed_and_epoch() -> None:
    rng = np.random.default_rng(0)
    clips = [Clip(int(rng.integers(16_000, 160_000)), int(rng.integers(5, 40)), 1) for _ in range(200)]
    rules = Rules(random_offset=True)
    assert plan_windows(clips, rules, 7, 0) == plan_windows(clips, rules, 7, 0)
    assert plan_windows(clips, rules, 7, 0) != plan_windows(clips, rules, 7, 1)
    assert plan_windows(clips, rules, 7, 0) != plan_windows(clips, rules, 8, 0)
    windows = plan_windows(clips, rules, 7, 0).windows
    assert any(w.placements[0].start > 0 for w in windows)  # random offsets
    for window in windows:
        assert window.placements[-1].start + clips[window.placements[-1].clip].steps <= 1500


def test_clips_of_different_prefixes_never_share_a_window() -> None:
    clips = [Clip(32_000, 10, 3, group=n % 2) for n in range(40)]
    for window in plan_windows(clips, Rules(), 0, 0).windows:
        assert len({clips[p.clip].group for p in window.placements}) == 1


def test_no_speech_windows_have_whispers_no_speech_target(
    prepared: PreparedDataset, english_tokenizer: Any
) -> None:
    windows = TrainWindows(
        prepared, english_tokenizer, packed().model_copy(update={"no_speech_fraction": 0.25}), 1
    )
    epoch = windows.for_epoch(0)
    quiet = [i for i, w in enumerate(epoch.windows) if w.no_speech]
    assert len(quiet) == round(0.25 * (len(epoch) - len(quiet)) / 0.75) > 0
    nocaptions = english_tokenizer.convert_tokens_to_ids("<|nocaptions|>")
    sot, eot = (
        english_tokenizer.convert_tokens_to_ids(t) for t in ("<|startoftranscript|>", "<|endoftext|>")
    )
    for i in quiet:
        item = epoch[i]
        assert item["labels"] == [sot, nocaptions, eot] and item["clips"] == 0
        assert 16_000 <= len(item["audio"]) <= 480_000 and np.abs(item["audio"]).max() < 0.5
    # unpacked: clips keep their prepared labels, no-speech clips are added
    plain = TrainWindows(prepared, english_tokenizer, DataConfig(no_speech_fraction=0.1), 1).for_epoch(0)
    speech = [plain[i] for i, w in enumerate(plain.windows) if not w.no_speech]
    assert len(speech) == CLIPS and all(
        s["labels"] in [list(x) for x in (c["labels"] for c in prepared)] for s in speech
    )


def test_timestamped_segments_from_a_column_become_the_labels(
    clips: list[dict[str, Any]], english_tokenizer: Any, tmp_path: Path
) -> None:
    from helpers import QUICKSTART_DATA

    filters = Filters(30.0, 0.0, 448)
    audio = QUICKSTART_DATA / "train" / "train-0001.ogg"
    segments = [
        {"start": 0.0, "end": 1.0, "text": "first half"},
        {"start": 1.2, "end": 1.5, "text": "second"},
    ]
    made = prepare_one(
        RawSample("k", audio, "first half second", segments=json.dumps(segments)), english_tokenizer, filters
    )
    assert not isinstance(made, Dropped) and made.segments == segments
    for bad, reason in (
        ("", "missing_segments"),
        ('[{"start": 2, "end": 1, "text": "x"}]', "bad_segments"),
        ('[{"start": 0, "end": 99, "text": "x"}]', "bad_segments"),
        ("not json", "bad_segments"),
    ):
        dropped = prepare_one(RawSample("k", audio, "text", segments=bad), english_tokenizer, filters)
        assert dropped == Dropped("k", reason)
    sample = {
        "audio": made.pcm.astype(np.float32) / 32768,
        "labels": made.labels,
        "text": made.text,
        "segments": segments,
    }
    data = DataConfig(timestamps=True)
    windows = TrainWindows(
        PreparedDataset(write_prepared([sample], tmp_path / "ts")), english_tokenizer, data, 0
    )
    item = windows.for_epoch(0)[0]
    _, found = read_window(item["labels"], windows.special)
    assert [(s, e) for s, _, e in found] == [(0, 50), (60, 75)]
    assert [english_tokenizer.decode(t) for _, t, _ in found] == [" first half", " second"]
    # a prepared set without segments is refused with what to do
    with pytest.raises(Exception, match="prepare the training data with data.timestamps=true"):
        TrainWindows(
            PreparedDataset(write_prepared(clips[:1], tmp_path / "plain")), english_tokenizer, data, 0
        )


def test_windowed_training_needs_a_prepared_set() -> None:
    with pytest.raises(ValueError, match="data.streaming=false"):
        DataConfig(streaming=True, packing=PackingConfig(enabled=True))
    with pytest.raises(ValueError):
        PackingConfig(max_window_s=31)
    assert not DataConfig().windowed and DataConfig(timestamps=True).windowed
    assert ConfigError  # the loader turns the ValueError into a ConfigError naming the field
