"""Issue 29: each form other tools write data in trains a short run through the CLI (``--data`` with the
quickstart preset), read as it is: a Common Voice release folder (mp3 clips, locale as the row language),
Whisper-Finetune's JSONL (its sentences as timestamps, its language per row), a datasets save_to_disk
folder, and an audiofolder of m4a / webm / mp4 recordings. Fixtures are built here from the quickstart's
real speech clips; the models are the toy ones (1+1 layers, real tokenizers)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    encode_with_pyav,
    quickstart_clips,
    write_audiofolder,
    write_commonvoice,
    write_saved_dataset,
    write_whisper_finetune,
)

from whisper_tune.cli import main
from whisper_tune.config_loading import load_config
from whisper_tune.data.store import PreparedDataset

SHORT = (
    "training.max_steps=1",
    "training.batch_size=4",
    "training.method=full",
    "eval.max_new_tokens=4",
    "eval.before=false",
    "eval.regression_set=null",
    "output.plot=false",
)


def train_with_data(
    capsys: pytest.CaptureFixture[str], model: Path, data: Path, out: Path, *extra: str
) -> dict[str, Any]:
    argv = ["-q", "run", "--config", "quickstart", "--model", str(model), "--data", str(data), *SHORT]
    code = main([*argv, *extra, f"output.dir={out}", "output.run_name=r"])
    _, err = capsys.readouterr()
    assert code == 0, err
    return dict(json.loads((out / "r" / "metrics.json").read_text()))


def token_ids(model: Path) -> dict[str, int]:
    added = json.loads((model / "tokenizer.json").read_text())["added_tokens"]
    return {t["content"]: t["id"] for t in added}


@pytest.mark.slow
def test_a_common_voice_folder_trains_with_each_rows_locale(
    capsys: pytest.CaptureFixture[str], toy_multilingual_dir: Path, tmp_path: Path
) -> None:
    clips = quickstart_clips(7)
    root = write_commonvoice(
        tmp_path / "cv-corpus-en",
        {
            "train": [(audio, text, "en") for audio, text in clips[:4]]
            + [(clips[4][0], clips[4][1], "sv-SE"), (None, "a lost clip", "en")],
            "dev": [(clips[5][0], clips[5][1], "en")],
            "test": [(clips[6][0], clips[6][1], "en")],
        },
    )
    metrics = train_with_data(capsys, toy_multilingual_dir, root, tmp_path, "model.language=null")
    assert metrics["data"]["train"]["samples"] == 5 and metrics["data"]["eval"]["samples"] == 1
    assert metrics["data"]["train"]["dropped"]["by_reason"] == {"missing_file": 1}
    train = PreparedDataset(tmp_path / "r" / "prepared" / "train")
    ids = token_ids(toy_multilingual_dir)
    assert train.languages == ["en"] * 4 + ["sv"]
    # <|startoftranscript|> <|row's locale|> <|transcribe|> <|notimestamps|> sentence
    assert [s["labels"][1] for s in train.samples] == [ids["<|en|>"]] * 4 + [ids["<|sv|>"]]
    assert train.samples[0]["text"] == clips[0][1]


@pytest.mark.slow
def test_whisper_finetune_jsonl_trains_with_its_timestamps_and_languages(
    capsys: pytest.CaptureFixture[str], toy_multilingual_dir: Path, tmp_path: Path
) -> None:
    from whisper_tune.data.timestamps import SpecialTokens
    from whisper_tune.data.windows import TrainWindows
    from whisper_tune.models.loading import load_processor

    clips = quickstart_clips(8)
    languages = ["English", "German"] * 4
    manifest = write_whisper_finetune(
        tmp_path / "train.jsonl", [(a, t, lang) for (a, t), lang in zip(clips, languages, strict=True)]
    )
    metrics = train_with_data(capsys, toy_multilingual_dir, manifest, tmp_path, "model.language=null")
    assert metrics["data"]["train"]["samples"] == 7 and metrics["data"]["eval"]["samples"] == 1
    assert metrics["train"]["packing"]["timestamps"] is True
    config = load_config(tmp_path / "r" / "config.yaml")
    assert config.data.timestamps and config.data.text_column == "text"  # sentence found as it is
    train = PreparedDataset(tmp_path / "r" / "prepared" / "train")
    assert all(len(s["segments"]) == 2 for s in train.samples)
    assert set(train.languages) == {"en", "de"}
    # what the training loop reads: the row's language token, then its sentences between timestamps
    tokenizer = load_processor(str(toy_multilingual_dir), config.model).tokenizer
    windows = TrainWindows(train, tokenizer, config.data, config.training.seed).for_epoch(0)
    ids, special = token_ids(toy_multilingual_dir), SpecialTokens.from_tokenizer(tokenizer)
    for n, sample in enumerate(train.samples):
        [window] = [w for w in windows.windows if w.placements[0].clip == n]
        labels = windows[windows.windows.index(window)]["labels"]
        assert labels[1] == ids[f"<|{sample['language']}|>"] and labels[3] == special.timestamp_begin
        stamps = [t for t in labels if t >= special.timestamp_begin]
        assert len(stamps) == 4  # two sentences, each with its start and end
        text = tokenizer.decode([t for t in labels if t < special.timestamp_begin], skip_special_tokens=True)
        assert text.split() == sample["text"].split()


@pytest.mark.slow
def test_a_save_to_disk_folder_trains(
    capsys: pytest.CaptureFixture[str], toy_model_dir: Path, tmp_path: Path
) -> None:
    clips = quickstart_clips(6)
    root = write_saved_dataset(tmp_path / "saved", {"train": clips[:4], "test": clips[4:]})
    metrics = train_with_data(capsys, toy_model_dir, root, tmp_path)
    assert metrics["data"]["train"]["samples"] == 4 and metrics["data"]["eval"]["samples"] == 2
    train = PreparedDataset(tmp_path / "r" / "prepared" / "train")
    assert train.samples[0]["text"] == clips[0][1]


@pytest.mark.slow
def test_m4a_webm_and_mp4_recordings_train(
    capsys: pytest.CaptureFixture[str], toy_model_dir: Path, tmp_path: Path
) -> None:
    clips = quickstart_clips(6)
    forms = [
        (".m4a", "ipod", "aac", 44_100),
        (".webm", "webm", "libopus", 48_000),
        (".mp4", "mp4", "aac", 22_050),
    ]
    root = tmp_path / "recordings"
    (root / "train").mkdir(parents=True)
    rows = []
    for n, (source, text) in enumerate(clips):
        suffix, container, codec, rate = forms[n % 3]
        encode_with_pyav(source, root / "train" / f"{n}{suffix}", container, codec, rate)
        rows.append((f"{n}{suffix}", None, 0, text))
    write_audiofolder(root, {"train": rows})
    metrics = train_with_data(capsys, toy_model_dir, root, tmp_path)
    assert metrics["data"]["train"]["samples"] + metrics["data"]["eval"]["samples"] == 6
    assert metrics["data"]["train"]["dropped"]["total"] == 0
    train = PreparedDataset(tmp_path / "r" / "prepared" / "train")
    by_text = {text: n for n, (_, text) in enumerate(clips)}
    assert {Path(s["audio"]).suffix for s in train.samples} == {".m4a", ".webm", ".mp4"}
    assert all(Path(s["audio"]).name.startswith(str(by_text[s["text"]])) for s in train.samples)
