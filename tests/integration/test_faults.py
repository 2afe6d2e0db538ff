"""Faults that used to end in a traceback: each is one clear error with its exit code, and nothing already
written is lost (foreign model directories, a run that fails on its model or data leaves no empty run
directory, resuming in place). A full disk, at every place whisper-tune writes, is tested on a real
filesystem in test_disk_full.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers import QUIET, toy_overrides

from whisper_tune import load_config, run
from whisper_tune.errors import ModelError


def foreign_dir(root: Path, config: dict[str, Any]) -> Path:
    root.mkdir()
    (root / "config.json").write_text(json.dumps(config))
    return root


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"model_type": "wav2vec2", "vocab_size": 32}, "is not a Whisper model (model_type 'wav2vec2'"),
        ({"architectures": ["BertModel"]}, "is not a Whisper model (model_type None"),
        (
            {"model_type": "whisper", "vocab_size": 100, "pad_token_id": 50257},
            "pad_token_id 50257 is outside",
        ),
    ],
)
def test_a_foreign_model_directory_is_refused_before_loading(
    tmp_path: Path, toy_model_dir: Path, config: dict[str, Any], message: str
) -> None:
    model = foreign_dir(tmp_path / "model", config)
    overrides = toy_overrides(model, tmp_path / "runs", **{"output.run_name": "f"})
    with pytest.raises(ModelError, match=message.replace("(", r"\(")) as caught:
        run(load_config("quickstart", overrides), reporter=QUIET)
    assert caught.value.exit_code == 4
    assert not (tmp_path / "runs" / "f").exists()  # no empty run directory left behind


def test_resuming_in_place_reuses_prepared_data_counts_every_session_and_logs_each_step_once(
    toy_model_dir: Path, tmp_path: Path
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    common = {
        "training.save_steps": 1,
        "training.report_to": "[tensorboard]",
        "eval.before": "false",
        "output.run_name": "r",
    }
    first = run(load_config("quickstart", toy_overrides(toy_model_dir, tmp_path, **common)), reporter=QUIET)
    run_dir = first.run_dir
    manifest = (run_dir / "prepared" / "train" / "manifest.json").stat().st_mtime_ns
    again = {**common, "training.max_steps": 4, "training.resume_from": "latest"}
    second = run(load_config("quickstart", toy_overrides(toy_model_dir, tmp_path, **again)), reporter=QUIET)
    assert (run_dir / "prepared" / "train" / "manifest.json").stat().st_mtime_ns == manifest  # reused
    assert "train: reusing" in (run_dir / "run.log").read_text()
    # every session counted: 4 steps x 4 clips, and at least the first session's seconds
    assert second.metrics["train"]["samples"] == 16 and first.metrics["train"]["samples"] == 8
    assert second.metrics["train"]["seconds"] >= first.metrics["train"]["seconds"]
    events = EventAccumulator(str(run_dir / "tensorboard" / "r"))
    events.Reload()
    steps = [e.step for e in events.Scalars("loss")]
    assert sorted(steps) == [1, 2, 3, 4]  # the resumed run did not log steps 1-2 again
    # a changed setting that decides the samples prepares again
    changed = {**again, "training.max_steps": 5, "data.max_train_samples": 12}
    run(load_config("quickstart", toy_overrides(toy_model_dir, tmp_path, **changed)), reporter=QUIET)
    assert (run_dir / "prepared" / "train" / "manifest.json").stat().st_mtime_ns != manifest
