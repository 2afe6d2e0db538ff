"""Training on packed windows through the core loop (training/loop.py), which the reference, cuda-lora and
accelerate backends share: a real run on the toy Whisper with the quickstart clips, exact resume in the
middle of an epoch of windows (each epoch planned anew), windows and clips counted in the log, the
checkpoint state and metrics.json; LoRA on the CPU; timestamp training from a segments column."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest
import soundfile as sf
from helpers import QUICKSTART_DATA, QUIET, cli_argv, logged_steps, toy_overrides
from whisper_tune_testing import needs_backend

from whisper_tune import load_config, run
from whisper_tune.data.preflight import check_data

PACKED = {
    "data.packing.enabled": "true",
    "data.no_speech_fraction": 0.2,
    "data.max_train_samples": 40,
    "training.batch_size": 2,
    "training.max_steps": 5,
    "training.save_steps": 2,
    "training.save_total_limit": 5,
    "eval.before": "false",
    "eval.after": "false",
    "output.plot": "false",
}


@pytest.mark.slow
def test_a_packed_run_resumes_mid_epoch_exactly_and_counts_windows_and_clips(
    toy_model_dir: Path, tmp_path: Path
) -> None:
    full = run(
        load_config(
            "quickstart", toy_overrides(toy_model_dir, tmp_path, **PACKED, **{"output.run_name": "full"})
        ),
        reporter=QUIET,
    )
    train = full.metrics["train"]
    packing = train["packing"]
    # 40 clips of ~2.75 s: a handful of windows an epoch, so 5 steps of 2 cross an epoch boundary
    assert packing["packing"] and packing["timestamps"] and packing["clips_per_window"] > 5
    assert 0 < packing["no_speech_windows_first_epoch"] < packing["windows_first_epoch"] <= 6
    assert train["windows"] == train["samples"] == 10 and train["clips"] > 3 * train["windows"]
    assert train["audio_seconds"] > 2 * train["clips"] and train["audio_seconds_per_second"] > 0
    records = logged_steps(tmp_path / "full")
    assert [r["windows"] for r in records] == [2, 4, 6, 8, 10] and records[-1]["clips"] == train["clips"]
    assert records[-1]["epoch"] > 1  # the run went into a second epoch, with its own plan
    checkpoint = tmp_path / "full" / "checkpoints" / "step-000002"
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["samples"] == 4 and state["clips"] == records[1]["clips"]

    resumed = run(
        load_config(
            "quickstart",
            toy_overrides(
                toy_model_dir,
                tmp_path,
                **PACKED,
                **{"output.run_name": "resumed", "training.resume_from": str(checkpoint)},
            ),
        ),
        reporter=QUIET,
    )
    resumed_log = logged_steps(tmp_path / "resumed")
    assert [r["step"] for r in resumed_log] == [3, 4, 5]
    assert [r["loss"] for r in resumed_log] == pytest.approx([r["loss"] for r in records[2:]], rel=1e-4)
    assert [(r["windows"], r["clips"]) for r in resumed_log] == [
        (r["windows"], r["clips"]) for r in records[2:]
    ]
    assert resumed.metrics["train"]["clips"] == train["clips"]
    assert resumed.metrics["train"]["windows"] == train["windows"]


@pytest.mark.slow
@needs_backend("cuda-lora")
def test_lora_on_the_cpu_trains_on_packed_windows(toy_model_dir: Path, tmp_path: Path) -> None:
    extra = {
        **PACKED,
        "backend.name": "cuda-lora",
        "training.method": "lora",
        "backend.device": "cpu",
        "backend.quantization": "none",
        "training.max_steps": 2,
        "training.save_steps": "null",
        "training.learning_rate": 1e-2,
        "output.run_name": "lora",
    }
    summary = run(load_config("quickstart", toy_overrides(toy_model_dir, tmp_path, **extra)), reporter=QUIET)
    train = summary.metrics["train"]
    assert train["steps"] == 2 and train["windows"] == 4 and train["clips"] > train["windows"]
    assert (tmp_path / "lora" / "final" / "adapter_config.json").is_file()


def segments_manifest(folder: Path, count: int) -> Path:
    """A JSONL manifest of quickstart clips with Whisper-Finetune's "sentences" column: each transcript
    cut in two segments at a word boundary, times in proportion to the characters."""
    rows = list(csv.DictReader((QUICKSTART_DATA / "train" / "metadata.csv").open()))[:count]
    path = folder / "train.jsonl"
    with path.open("w") as fh:
        for row in rows:
            audio = QUICKSTART_DATA / "train" / row["file_name"]
            seconds = sf.info(audio).duration
            words = row["text"].split()
            first, second = " ".join(words[: len(words) // 2]), " ".join(words[len(words) // 2 :])
            cut = round(seconds * len(first) / len(row["text"]), 2)
            sentences = [
                {"start": 0.0, "end": cut, "text": first},
                {"start": cut, "end": seconds, "text": second},
            ]
            fh.write(json.dumps({"audio": str(audio), "text": row["text"], "sentences": sentences}) + "\n")
    return path


@pytest.mark.slow
def test_timestamp_training_from_a_segments_column(toy_model_dir: Path, tmp_path: Path) -> None:
    from whisper_tune.data.store import PreparedDataset

    manifest = segments_manifest(tmp_path, 12)
    extra = {
        "data.dataset": str(manifest),
        "data.eval_split": "null",
        "data.test_size": 0.25,
        "data.extra_eval": "[]",
        "data.timestamps": "true",
        "training.max_steps": 2,
        "eval.before": "false",
        "output.plot": "false",
        "output.run_name": "ts",
    }
    summary = run(load_config("quickstart", toy_overrides(toy_model_dir, tmp_path, **extra)), reporter=QUIET)
    train = summary.metrics["train"]
    assert train["steps"] == 2 and train["windows"] == train["clips"] == 8  # not packed: a clip a window
    assert summary.metrics["train"]["packing"] == {
        **summary.metrics["train"]["packing"],
        "packing": False,
        "timestamps": True,
        "clips_per_window": 1.0,
    }
    prepared = PreparedDataset(tmp_path / "ts" / "prepared" / "train")
    assert all(len(s["segments"]) == 2 for s in prepared.samples)
    assert "after" in summary.metrics["evaluation"]  # evaluation per clip, without timestamps


def test_a_missing_segments_column_is_named_before_anything_loads(tmp_path: Path) -> None:
    manifest = segments_manifest(tmp_path, 2)
    config = load_config(
        "quickstart",
        [
            f"data.dataset={manifest}",
            "data.eval_split=null",
            "data.test_size=0.5",
            "data.extra_eval=[]",
            "data.timestamps=true",
            "data.segments_column=segments",
        ],
    )
    [problem] = check_data(config.data)
    assert problem.startswith("data.segments_column") and "'segments'" in problem


def test_packing_is_planned_for_accelerate_and_refused_for_an_ipu_run(tmp_path: Path) -> None:
    done = subprocess.run(
        cli_argv("plan", "--config", "quickstart", "--backend", "accelerate", "data.packing.enabled=true"),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    from whisper_tune.backend.registry import Registry

    if "ipu" in Registry().names():
        from whisper_tune.backend.protocol import Capabilities

        config = load_config(
            "quickstart", ["backend.name=ipu", "data.packing.enabled=true", "model.name=openai/whisper-tiny"]
        )
        issues = Registry().get("ipu").check(config, Capabilities())
        assert any(i.loc == "data.packing" and i.run_only for i in issues)


@pytest.mark.slow
def test_short_clips_are_packed_by_default_and_the_run_says_why(toy_model_dir: Path, tmp_path: Path) -> None:
    """data.packing.enabled unset: the quickstart clips (~2.75 s) are packed, with a fifth of the windows
    timestamped; over data.packing.auto_below_s, or with enabled=false, they train as they are."""
    cheap = {"eval.before": "false", "eval.after": "false", "output.plot": "false"}

    def trained(name: str, **extra: object) -> dict:
        config = load_config(
            "quickstart",
            toy_overrides(toy_model_dir, tmp_path, **cheap, **extra, **{"output.run_name": name}),
        )
        return run(config, reporter=QUIET).metrics

    auto = trained("auto", **{"data.packing.enabled": "null"})  # unset (toy_overrides sets false)
    decision = auto["data"]["packing"]
    assert decision["auto"] and decision["enabled"] and 2 < decision["mean_clip_seconds"] < 4
    assert decision["reason"].startswith("packing: on (training clips average")
    assert "data.packing.enabled=false" in decision["reason"]
    assert decision["reason"] in (tmp_path / "auto" / "run.log").read_text()
    train = auto["train"]
    assert train["windows"] == train["samples"] and train["clips"] > 2 * train["samples"]
    job = json.loads((tmp_path / "auto" / "job.json").read_text())["config"]["data"]
    assert job["packing"]["enabled"] is True and job["timestamp_fraction"] == 0.2

    long = trained("long", **{"data.packing.enabled": "null", "data.packing.auto_below_s": 2.0})
    assert (
        not long["data"]["packing"]["enabled"]
        and "data.packing.enabled=true" in long["data"]["packing"]["reason"]
    )
    assert "windows" not in long["train"] and long["train"]["clips"] == long["train"]["samples"] == 8

    off = trained("unpacked", **{"data.packing.enabled": "false"})
    assert "packing" not in off["data"] and "windows" not in off["train"]
