"""Hugging Face `datasets` sources, read by the real library from a local parquet export (the hub's
layout), streamed and not; and a hub name with no network gives a clear DataError."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import pytest
from helpers import QUICKSTART_DATA, write_parquet_dataset

from whisper_tune import load_config
from whisper_tune.data.preparation import decode_raw
from whisper_tune.data.sources import SplitSpec, detect_kind, iter_split
from whisper_tune.errors import DataError


def quickstart_rows(split: str, n: int) -> list[tuple[Path, str]]:
    with (QUICKSTART_DATA / split / "metadata.csv").open() as fh:
        rows = list(csv.DictReader(fh))[:n]
    return [(QUICKSTART_DATA / split / r["file_name"], r["text"]) for r in rows]


@pytest.fixture(scope="module")
def parquet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("parquet")
    return write_parquet_dataset(
        root,
        {
            "train": quickstart_rows("train", 4),
            "validation": quickstart_rows("train", 6)[4:],
            "test": quickstart_rows("eval", 2),
        },
    )


@pytest.mark.parametrize("streaming", [False, True])
def test_joined_splits_decode(parquet_dir: Path, streaming: bool) -> None:
    assert detect_kind(str(parquet_dir)) == "hub"
    spec = SplitSpec(
        dataset=str(parquet_dir),
        kind="hub",
        split="train+validation",
        text_column="sentence",
        streaming=streaming,
    )
    samples = list(iter_split(spec))
    assert len(samples) == 6
    assert [s.text for s in samples] == [text for _, text in quickstart_rows("train", 6)]
    audio = decode_raw(samples[0].audio)  # undecoded by `datasets`, decoded by soundfile + soxr
    assert 1.0 < audio.seconds < 8.0


def test_missing_column_lists_columns(parquet_dir: Path) -> None:
    with pytest.raises(DataError, match="no column 'text'; its columns are: audio, sentence"):
        list(iter_split(SplitSpec(dataset=str(parquet_dir), kind="hub", split="train")))


def test_unknown_split_is_a_data_error(parquet_dir: Path) -> None:
    with pytest.raises(DataError, match="split 'dev'"):
        list(iter_split(SplitSpec(dataset=str(parquet_dir), kind="hub", split="dev", text_column="sentence")))


def test_hub_dataset_without_network_is_a_data_error() -> None:
    start = time.perf_counter()
    with pytest.raises(DataError) as err:
        list(
            iter_split(
                SplitSpec(
                    dataset="mozilla-foundation/common_voice_11_0",
                    kind="hub",
                    split="test",
                    subset="mr",
                    text_column="sentence",
                )
            )
        )
    assert "local copy" in (err.value.hint or "")
    assert time.perf_counter() - start < 60


def test_a_preset_runs_on_a_local_parquet_copy(parquet_dir: Path) -> None:
    # docs/presets.md: point a seed preset whose hub dataset no longer loads at a local copy
    cfg = load_config(
        "cuda-lora/seed002-hindi-large-v2",
        [f"data.dataset={parquet_dir}", "data.subset=null"],
        require_backend=False,
    )
    from whisper_tune.data.sources import train_and_eval_specs

    train, evaluation = train_and_eval_specs(cfg.data)
    assert (
        len(list(iter_split(train))) == 6
        and evaluation is not None
        and len(list(iter_split(evaluation))) == 2
    )
