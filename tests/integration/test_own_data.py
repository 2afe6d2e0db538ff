"""Bringing your own data, as a new user does (issue 17): a 12-clip audiofolder with a top-level
metadata.csv, and a CSV manifest with a train/test split column, starting from the quickstart preset.

Each of the three ways this used to fail after loading the model is checked before anything is loaded,
all problems at once, each naming the field to change; ``--data`` is the one obvious way in.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from helpers import QUICKSTART_DATA

from whisper_tune.cli import main
from whisper_tune.config_loading import load_config
from whisper_tune.data.preflight import check_data
from whisper_tune.errors import DataError

CLIPS = 12


def _clips() -> list[dict[str, str]]:
    with (QUICKSTART_DATA / "train" / "metadata.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))[:CLIPS]


@pytest.fixture
def audiofolder(tmp_path: Path) -> Path:
    """12 real clips, metadata.csv at the top (split 'train' only), transcripts in a 'sentence' column."""
    root = tmp_path / "my-audio"
    root.mkdir()
    with (root / "metadata.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file_name", "sentence"])
        for row in _clips():
            shutil.copy(QUICKSTART_DATA / "train" / row["file_name"], root)
            writer.writerow([row["file_name"], row["text"]])
    return root


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    """A CSV manifest whose split column says train or test (3 test rows)."""
    root = tmp_path / "my-manifest"
    root.mkdir()
    with (root / "clips.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["audio", "text", "split"])
        for n, row in enumerate(_clips()):
            shutil.copy(QUICKSTART_DATA / "train" / row["file_name"], root)
            writer.writerow([row["file_name"], row["text"], "test" if n < 3 else "train"])
    return root / "clips.csv"


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["-q", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_three_failures_are_reported_at_once_before_the_model_loads(
    capsys: pytest.CaptureFixture[str], audiofolder: Path, manifest: Path, tmp_path: Path
) -> None:
    # 1 + 2: a top-level metadata.csv has only 'train'; the preset's other-voice set inherits 'sentence'
    code, _, err = run_cli(
        capsys,
        "run",
        "--config",
        "quickstart",
        "--model",
        "./no/such/model",  # never reached: the data is checked first
        f"data.dataset={audiofolder}",
        "data.text_column=sentence",
        f"output.dir={tmp_path / 'runs'}",
    )
    assert code == 3, err
    assert err.startswith("error: the data cannot be used as configured:") and "Traceback" not in err
    problems = [line.strip() for line in err.splitlines()[1:] if not line.startswith("  hint:")]
    assert problems[0].startswith(
        f"data.eval_split: audiofolder {audiofolder} has no split 'eval' (its splits: train); "
        "data.eval_split=null data.test_size=0.1"
    )
    assert (
        problems[1].startswith("data.extra_eval.0.text_column (extra eval set 'other-voice'): ")
        and "has no column 'sentence' (inherited from data.text_column)" in problems[1]
    )
    assert "data.extra_eval=[]" in problems[1] and "--data" in err
    assert not (tmp_path / "runs").exists()  # nothing written
    # 3: the manifest's splits are train/test, the preset's eval split is 'eval'
    cfg = load_config("quickstart", [f"data.dataset={manifest}"])
    assert check_data(cfg.data) == [
        f"data.eval_split: {manifest} has no rows with split 'eval' (its splits: test, train); set "
        "data.eval_split=test, or data.eval_split=null data.test_size=0.1 to hold out part of the "
        "training data"
    ]
    # every set is checked: a missing extra set, a split the manifest lacks, a missing column
    cfg = load_config(
        "quickstart",
        [
            f"data.dataset={manifest}",
            "data.eval_split=dev",
            "data.audio_column=path",
            "data.extra_eval.0.dataset=./no/such/dir",
        ],
    )
    problems = check_data(cfg.data)
    assert [p.split(":")[0] for p in problems] == [
        "data.audio_column",  # once, though the train and the eval split both lack it
        "data.eval_split",
        "data.extra_eval.0.dataset (extra eval set 'other-voice')",
    ]
    assert len(check_data(cfg.data, include_train=False)) == 3  # evaluation only: the same three


def test_a_missing_name_offline_is_no_such_local_directory() -> None:
    cfg = load_config("quickstart", ["data.dataset=my-data/speech"])  # conftest: HF_HUB_OFFLINE=1
    assert check_data(cfg.data) == [
        "data.dataset: 'my-data/speech': no such local directory (as a hub id it needs network), and "
        "offline mode is on"
    ]


def test_data_option_detects_splits_and_drops_the_presets_extra_sets(
    audiofolder: Path, manifest: Path, tmp_path: Path
) -> None:
    cfg = load_config("quickstart", ["data.text_column=sentence"], data=str(audiofolder))
    assert cfg.data.dataset == str(audiofolder) and cfg.data.extra_eval == ()
    assert (cfg.data.train_split, cfg.data.eval_split, cfg.data.test_size) == ("train", None, 0.1)
    assert check_data(cfg.data) == []
    cfg = load_config("quickstart", [], data=str(manifest))
    assert (cfg.data.train_split, cfg.data.eval_split, cfg.data.test_size) == ("train", "test", None)
    # key=value overrides win over what --data detected
    cfg = load_config("quickstart", ["data.test_size=0.25"], data=str(manifest))
    assert (cfg.data.eval_split, cfg.data.test_size) == (None, 0.25)
    cfg = load_config("quickstart", [], data=str(QUICKSTART_DATA))  # train / eval / other-voice
    assert (cfg.data.train_split, cfg.data.eval_split) == ("train", "eval")
    with pytest.raises(DataError, match="does not exist"):
        load_config("quickstart", [], data=str(tmp_path / "nothing-here"))


def test_run_with_data_trains_on_your_audiofolder(
    capsys: pytest.CaptureFixture[str], audiofolder: Path, toy_model_dir: Path, tmp_path: Path
) -> None:
    code, out, err = run_cli(
        capsys,
        "run",
        "--config",
        "quickstart",
        "--model",
        str(toy_model_dir),
        "--data",
        str(audiofolder),
        "data.text_column=sentence",
        "training.max_steps=1",
        "training.batch_size=4",
        "eval.max_new_tokens=4",
        "eval.regression_set=null",
        f"output.dir={tmp_path}",
        "output.run_name=mine",
    )
    assert code == 0, err
    metrics = json.loads((tmp_path / "mine" / "metrics.json").read_text())
    assert set(metrics["evaluation"]["after"]) == {"eval"}  # the preset's other-voice set is gone
    assert metrics["data"]["train"]["samples"] + metrics["data"]["eval"]["samples"] == CLIPS
    assert metrics["data"]["eval"]["samples"] == 1  # a seeded 10 % hold-out
    assert out.count("eval: WER") == 1  # the summary once
    rows = [json.loads(line) for line in (tmp_path / "mine" / "predictions" / "eval-after.jsonl").open()]
    assert rows[0]["id"] == f"{audiofolder.name}/{Path(rows[0]['audio']).name}"
    assert Path(rows[0]["audio"]).parent == audiofolder and Path(rows[0]["audio"]).is_file()
    assert set(rows[0]) == {"id", "audio", "reference", "prediction"}
    assert metrics["keep"]["mode"] == "skipped"  # one eval clip cannot be split to choose and report
