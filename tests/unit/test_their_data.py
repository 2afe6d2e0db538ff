"""Data in the forms other tools write, read as it is (issue 29): a Common Voice release folder (and one
of its .tsv files alone), Whisper-Finetune's JSONL, a datasets save_to_disk folder, and m4a / webm / mp4
audio decoded through PyAV. Every fixture is built here from the quickstart's real speech clips."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import soundfile as sf
from helpers import (
    encode_with_pyav,
    quickstart_clips,
    write_audiofolder,
    write_commonvoice,
    write_saved_dataset,
    write_whisper_finetune,
)

from whisper_tune.config.schema import DataConfig
from whisper_tune.config_loading import load_config
from whisper_tune.data.audio import decode
from whisper_tune.data.preflight import check_data
from whisper_tune.data.preparation import Filters, Workers, prepare_samples
from whisper_tune.data.sets import _own_language
from whisper_tune.data.sources import (
    SplitSpec,
    available_splits,
    data_shortcut,
    detect_kind,
    iter_split,
    own_language_column,
    train_and_eval_specs,
)
from whisper_tune.data.store import PreparedDataset
from whisper_tune.errors import DataError
from whisper_tune.languages import language_code

QUOTED = 'He said "no" twice.'  # Common Voice's .tsv files are unquoted: quotes are part of the text


def prepared(samples: Any, out: Path, tokenizer: Any, extractor: Any) -> PreparedDataset:
    filters = Filters(30.0, 0.0, 448)
    with Workers(1, tokenizer, filters) as workers:
        path = prepare_samples(
            samples, out, feature_extractor=extractor, tokenizer=tokenizer, filters=filters, workers=workers
        )
    return PreparedDataset(path)


@pytest.fixture
def commonvoice(tmp_path: Path) -> Path:
    clips = quickstart_clips(6)
    return write_commonvoice(
        tmp_path / "cv-corpus-en",
        {
            "train": [(audio, text, "en") for audio, text in clips[:3]] + [(None, "a lost clip", "en")],
            "dev": [(clips[3][0], QUOTED, "en")],
            "test": [(audio, text, "sv-SE") for audio, text in clips[4:]],
            "validated": [(audio, text, "en") for audio, text in clips],
        },
    )


def test_a_common_voice_folder_is_read_as_it_is(
    commonvoice: Path, english_tokenizer: Any, feature_extractor: Any, tmp_path: Path
) -> None:
    assert detect_kind(str(commonvoice)) == "commonvoice"
    assert available_splits(str(commonvoice), "commonvoice") == ["dev", "test", "train", "validated"]
    updates, note = data_shortcut(str(commonvoice), {})
    assert (updates["train_split"], updates["eval_split"]) == ("train", "test")
    assert "commonvoice" in note
    # the quickstart preset's columns (audio, text) find Common Voice's own (path, sentence)
    config = load_config("quickstart", [], data=str(commonvoice))
    assert check_data(config.data) == []
    train, _ = train_and_eval_specs(config.data)
    samples = list(iter_split(train))
    assert len(samples) == 4 and samples[0].audio == commonvoice / "clips" / "common_voice_en_1000.mp3"
    assert samples[0].key == "train/common_voice_en_1000.mp3"
    assert [s.text for s in iter_split(SplitSpec(str(commonvoice), "commonvoice", "dev"))] == [QUOTED]
    # the missing clip is skipped and counted, the mp3s are decoded
    train_set = prepared(samples, tmp_path / "train", english_tokenizer, feature_extractor)
    assert len(train_set) == 3 and train_set.dropped["by_reason"] == {"missing_file": 1}
    assert (
        english_tokenizer.decode(train_set.samples[0]["labels"], skip_special_tokens=True) == samples[0].text
    )
    # locale is the row language (Whisper's code for a region's locale)
    assert own_language_column(str(commonvoice), "commonvoice") == "locale"
    spec = SplitSpec(str(commonvoice), "commonvoice", "test", language_column="locale")
    assert [language_code(s.language) for s in iter_split(spec)] == ["sv", "sv"]
    with pytest.raises(DataError, match="has no split 'other'"):
        list(iter_split(SplitSpec(str(commonvoice), "commonvoice", "other")))


def test_locale_is_the_row_language_only_for_a_multilingual_model(commonvoice: Path) -> None:
    spec = SplitSpec(str(commonvoice), "commonvoice", "train")
    english_only, multilingual = {"tokenizer": [0] * 51864}, {"tokenizer": [0] * 51865}
    assert _own_language(spec, english_only).language_column is None
    assert _own_language(spec, multilingual).language_column == "locale"
    chosen = SplitSpec(str(commonvoice), "commonvoice", "train", language_column="variant")
    assert _own_language(chosen, multilingual).language_column == "variant"  # the config's choice wins


def test_a_common_voice_tsv_alone_is_a_manifest(commonvoice: Path) -> None:
    tsv = commonvoice / "train.tsv"
    assert detect_kind(str(tsv)) == "csv"
    train, _ = train_and_eval_specs(DataConfig(dataset=str(tsv), eval_split=None, test_size=0.5))
    samples = list(iter_split(train))
    assert len(samples) == 4 and samples[1].audio == commonvoice / "clips" / "common_voice_en_1001.mp3"
    assert check_data(DataConfig(dataset=str(tsv), eval_split=None, test_size=0.5)) == []
    assert own_language_column(str(tsv), "csv") == "locale"
    (commonvoice / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"not a \.csv, \.tsv or \.jsonl manifest"):
        detect_kind(str(commonvoice / "notes.txt"))


@pytest.mark.parametrize(
    ("suffix", "container", "codec", "rate"),
    [(".m4a", "ipod", "aac", 44_100), (".webm", "webm", "libopus", 48_000), (".mp4", "mp4", "aac", 22_050)],
)
def test_m4a_webm_and_mp4_are_decoded_through_pyav(
    suffix: str, container: str, codec: str, rate: int, tmp_path: Path
) -> None:
    [(source, _)] = quickstart_clips(1)
    clip = encode_with_pyav(source, tmp_path / f"clip{suffix}", container, codec, rate)
    with pytest.raises(sf.LibsndfileError):
        sf.read(clip)  # libsndfile cannot
    audio = decode(clip)
    assert audio.source_rate == rate
    assert abs(audio.seconds - sf.info(source).duration) < 0.1  # resampled to 16 kHz like the rest
    assert abs(decode(clip.read_bytes()).seconds - audio.seconds) < 1e-6


def test_an_m4a_audiofolder_is_prepared(
    english_tokenizer: Any, feature_extractor: Any, tmp_path: Path
) -> None:
    clips = quickstart_clips(3)
    root = tmp_path / "phone"
    for n, (source, _) in enumerate(clips):
        (root / "train").mkdir(parents=True, exist_ok=True)
        encode_with_pyav(source, root / "train" / f"{n}.m4a", "ipod", "aac", 44_100)
    write_audiofolder(root, {"train": [(f"{n}.m4a", None, 0, text) for n, (_, text) in enumerate(clips)]})
    (root / "train" / "3.m4a").write_bytes(b"not audio")  # a broken recording: skipped and counted
    with (root / "train" / "metadata.csv").open("a") as fh:
        fh.write("3.m4a,broken\n")
    samples = list(iter_split(SplitSpec(str(root), "audiofolder", "train")))
    made = prepared(samples, tmp_path / "out", english_tokenizer, feature_extractor)
    assert len(made) == 3 and made.dropped["by_reason"] == {"unreadable_audio": 1}
    assert english_tokenizer.decode(made.samples[2]["labels"], skip_special_tokens=True) == clips[2][1]


def test_whisper_finetune_jsonl_is_read_with_its_sentences_and_language(tmp_path: Path) -> None:
    clips = quickstart_clips(4)
    rows = [(audio, text, "English") for audio, text in clips[:3]]
    rows.append((tmp_path / "lost.wav", clips[3][1], None))  # a missing file: dropped later, counted
    manifest = write_whisper_finetune(tmp_path / "train.jsonl", rows)
    assert detect_kind(str(manifest)) == "jsonl"
    updates, note = data_shortcut(str(manifest), {})
    assert updates["timestamps"] is True and "timestamps from its 'sentences' column" in note
    assert own_language_column(str(manifest), "jsonl") == "language"
    config = load_config("quickstart", [], data=str(manifest))
    assert config.data.timestamps and check_data(config.data) == []
    train, _ = train_and_eval_specs(config.data)
    samples = list(iter_split(train))
    assert len(samples) == 4 and samples[0].audio == clips[0][0]  # {"audio": {"path": ...}}
    assert samples[0].text == clips[0][1] and samples[3].audio == tmp_path / "lost.wav"
    words = clips[0][1].split()
    assert [s["text"] for s in samples[0].segments] == [
        " ".join(words[: len(words) // 2]),
        " ".join(words[len(words) // 2 :]),
    ]
    with_language = SplitSpec(str(manifest), "jsonl", "all", language_column="language")
    assert [s.language for s in iter_split(with_language)] == ["English"] * 3 + [None]


def test_a_save_to_disk_folder_is_read_as_it_is(
    english_tokenizer: Any, feature_extractor: Any, tmp_path: Path
) -> None:
    clips = quickstart_clips(5)
    root = write_saved_dataset(tmp_path / "saved", {"train": clips[:3], "validation": clips[3:]})
    assert detect_kind(str(root)) == "saved"
    assert available_splits(str(root), "saved") == ["train", "validation"]
    config = load_config("quickstart", [], data=str(root))
    assert (config.data.train_split, config.data.eval_split) == ("train", "validation")
    assert check_data(config.data) == []
    train, evaluation = train_and_eval_specs(config.data)
    samples = list(iter_split(train))
    assert len(samples) == 3 and samples[0].text == clips[0][1]
    made = prepared(samples, tmp_path / "out", english_tokenizer, feature_extractor)
    assert len(made) == 3
    assert english_tokenizer.decode(made.samples[1]["labels"], skip_special_tokens=True) == clips[1][1]
    assert evaluation is not None and len(list(iter_split(evaluation))) == 2
    [problem] = check_data(load_config("quickstart", ["data.eval_split=dev"], data=str(root)).data)
    assert problem.startswith(
        f"data.eval_split: save_to_disk folder {root} has no split 'dev' (its splits: train, validation); "
        "set data.eval_split=validation"
    )


def test_locales_with_a_region_name_their_language() -> None:
    assert [language_code(x) for x in ("sv-SE", "zh-CN", "en", "pt_BR")] == ["sv", "zh", "en", "pt"]
    with pytest.raises(ValueError):
        language_code("xx-YY")
