"""``data.streaming: true``: training reads its split as it goes — streamed by the real `datasets` library
from a local parquet export in the hub's layout — writes no prepared training directory, and decodes only
about steps x batch samples."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from helpers import QUICKSTART_DATA, QUIET, toy_overrides, write_parquet_dataset

from whisper_tune import load_config, run
from whisper_tune.errors import ConfigError


def rows(split: str, n: int) -> list[tuple[Path, str]]:
    with (QUICKSTART_DATA / split / "metadata.csv").open() as fh:
        found = list(csv.DictReader(fh))[:n]
    return [(QUICKSTART_DATA / split / r["file_name"], r["text"]) for r in found]


@pytest.fixture(scope="module")
def hub_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("parquet")
    return write_parquet_dataset(root, {"train": rows("train", 60), "test": rows("eval", 3)}, "text")


def stream_overrides(model: Path, hub: Path, out: Path, **extra: object) -> list[str]:
    return toy_overrides(
        model,
        out,
        **{
            "data.dataset": str(hub),
            "data.eval_split": "test",
            "data.streaming": "true",
            "data.max_train_samples": "null",
            "data.extra_eval": "[]",
            "training.max_steps": 3,
            "training.batch_size": 4,
            **extra,
        },
    )


def test_a_streamed_run_decodes_about_steps_times_batch_and_writes_no_training_set(
    toy_model_dir: Path, hub_copy: Path, tmp_path: Path
) -> None:
    overrides = stream_overrides(toy_model_dir, hub_copy, tmp_path, **{"output.run_name": "s"})
    summary = run(load_config("quickstart", overrides), reporter=QUIET)
    run_dir = tmp_path / "s"
    assert not (run_dir / "prepared" / "train").exists()
    assert (run_dir / "prepared" / "eval" / "manifest.json").is_file()  # eval sets are still prepared
    stream = summary.metrics["data"]["train"]
    assert stream["streamed"] is True and stream["passes"] == 1
    # 3 steps x 4 clips, plus at most the batch the data loader reads ahead; the set has 60
    assert 12 <= stream["read"] <= 12 + 2 * 4 and stream["kept"] == stream["read"]
    assert summary.metrics["train"]["steps"] == 3 and summary.metrics["train"]["samples"] == 12
    assert set(summary.metrics["evaluation"]["after"]) == {"eval"}


def test_a_short_stream_starts_again(toy_model_dir: Path, hub_copy: Path, tmp_path: Path) -> None:
    extra = {"data.max_train_samples": 6, "output.run_name": "short", "eval.after": "false"}
    overrides = stream_overrides(toy_model_dir, hub_copy, tmp_path, **extra)
    summary = run(load_config("quickstart", overrides), reporter=QUIET)
    stream = summary.metrics["data"]["train"]
    # 6 clips a pass in batches of 4: 4, 2, then the second pass's first 4
    assert summary.metrics["train"]["samples"] == 10 and stream["passes"] == 2


def test_a_stream_needs_max_steps_and_no_test_size(
    toy_model_dir: Path, hub_copy: Path, tmp_path: Path
) -> None:
    extra = {"training.max_steps": "null", "data.eval_split": "null", "data.test_size": 0.2}
    bad = stream_overrides(toy_model_dir, hub_copy, tmp_path, **extra, **{"output.run_name": "x"})
    with pytest.raises(ConfigError) as caught:
        run(load_config("quickstart", bad), reporter=QUIET)
    assert "training.max_steps" in caught.value.message and "data.test_size" in caught.value.message
    assert not (tmp_path / "x").exists()  # refused before anything was written
