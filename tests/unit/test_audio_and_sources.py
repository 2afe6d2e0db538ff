"""Decoding, resampling and the dataset sources, on real files written to disk."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import tone, write_audiofolder

from whisper_tune.config.schema import DataConfig
from whisper_tune.data.audio import BadAudio, decode
from whisper_tune.data.sources import (
    SplitSpec,
    detect_kind,
    iter_split,
    seeded_split,
    train_and_eval_specs,
)
from whisper_tune.errors import DataError


def test_decode_downmixes_and_resamples(tmp_path: Path) -> None:
    path = tmp_path / "stereo.flac"
    sf.write(path, tone(2.0, rate=44_100, channels=2), 44_100)
    audio = decode(path)
    assert audio.source_rate == 44_100
    assert audio.samples.ndim == 1 and audio.samples.dtype == np.float32
    assert abs(len(audio.samples) - 32_000) <= 2
    # a real resampler keeps a 440 Hz tone at 440 Hz
    spectrum = np.abs(np.fft.rfft(audio.samples))
    assert abs(np.argmax(spectrum) * 16_000 / len(audio.samples) - 440) < 2


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"not audio at all", "unreadable_audio"),
        (b"", "unreadable_audio"),
    ],
)
def test_bad_bytes_are_bad_audio(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(BadAudio) as err:
        decode(path)
    assert err.value.reason == reason


def test_empty_and_missing_audio(tmp_path: Path) -> None:
    sf.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), 16_000)
    with pytest.raises(BadAudio) as err:
        decode(tmp_path / "empty.wav")
    assert err.value.reason == "empty_audio"
    with pytest.raises(BadAudio) as err:
        decode(tmp_path / "nope.wav")
    assert err.value.reason == "missing_file"


def test_audiofolder_splits_and_joined_splits(tmp_path: Path) -> None:
    root = write_audiofolder(
        tmp_path / "af",
        {
            "train": [("a.wav", tone(1), 16_000, "one"), ("b.wav", tone(1), 16_000, "two")],
            "validation": [("c.wav", tone(1), 16_000, "three")],
        },
    )
    assert detect_kind(str(root)) == "audiofolder"
    spec = SplitSpec(dataset=str(root), kind="audiofolder", split="train+validation")
    samples = list(iter_split(spec))
    assert [s.text for s in samples] == ["one", "two", "three"]
    assert samples[0].audio == root / "train" / "a.wav"
    with pytest.raises(DataError, match="no split 'test'") as err:
        list(iter_split(SplitSpec(dataset=str(root), kind="audiofolder", split="test")))
    assert "train" in (err.value.hint or "")


def test_missing_columns_are_named(tmp_path: Path) -> None:
    root = write_audiofolder(tmp_path / "af", {"train": [("a.wav", tone(1), 16_000, "one")]})
    with pytest.raises(DataError, match="no column 'sentence'; its columns are: file_name, text"):
        list(
            iter_split(
                SplitSpec(dataset=str(root), kind="audiofolder", split="train", text_column="sentence")
            )
        )


def test_csv_and_jsonl_manifests(tmp_path: Path) -> None:
    sf.write(tmp_path / "a.wav", tone(1), 16_000)
    (tmp_path / "m.csv").write_text("audio,text,split\na.wav,hello,train\na.wav,bye,test\n")
    (tmp_path / "m.jsonl").write_text(json.dumps({"audio": "a.wav", "text": "hi"}) + "\n")
    assert detect_kind(str(tmp_path / "m.csv")) == "csv"
    train, evaluation = train_and_eval_specs(DataConfig(dataset=str(tmp_path / "m.csv")))
    assert [s.text for s in iter_split(train)] == ["hello"]
    assert evaluation is not None and [s.text for s in iter_split(evaluation)] == ["bye"]
    assert next(iter_split(train)).audio == tmp_path / "a.wav"
    # a manifest without a split column cannot provide an eval split ...
    _, evaluation = train_and_eval_specs(DataConfig(dataset=str(tmp_path / "m.jsonl")))
    with pytest.raises(DataError, match="no 'split' column"):
        list(iter_split(evaluation))  # type: ignore[arg-type]
    # ... but can be split with test_size
    train, evaluation = train_and_eval_specs(
        DataConfig(dataset=str(tmp_path / "m.jsonl"), eval_split=None, test_size=0.5)
    )
    assert evaluation is None and [s.text for s in iter_split(train)] == ["hi"]


def test_bad_manifest_lines(tmp_path: Path) -> None:
    (tmp_path / "m.jsonl").write_text('{"audio": "a.wav", "text": "x"}\n{broken\n')
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        list(iter_split(SplitSpec(dataset=str(tmp_path / "m.jsonl"), kind="jsonl", split="all")))


def test_missing_dataset_path() -> None:
    with pytest.raises(DataError, match="does not exist"):
        detect_kind("./no/such/folder")
    assert detect_kind("mozilla-foundation/common_voice_11_0") == "hub"


def test_seeded_split_is_reproducible() -> None:
    from whisper_tune.data.sources import RawSample

    samples = [RawSample(str(i), None, str(i)) for i in range(50)]
    a_train, a_test = seeded_split(samples, 0.2, seed=0)
    _, b_test = seeded_split(samples, 0.2, seed=0)
    assert [s.key for s in a_test] == [s.key for s in b_test]
    assert len(a_test) == 10 and len(a_train) == 40
    assert not {s.key for s in a_test} & {s.key for s in a_train}
    assert [s.key for s in seeded_split(samples, 0.2, seed=1)[1]] != [s.key for s in a_test]
