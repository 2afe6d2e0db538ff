"""The whole recipe through the CPU reference backend, on real audio files and a real tokenizer.

Most tests use a randomly initialised 1+1-layer Whisper with tiny.en's real processor (seconds per run);
test_quickstart_improves_wer runs the real pretrained tiny.en exactly as the README's quickstart does.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import (
    QUIET,
    REPO,
    cli_argv,
    logged_steps,
    run_child,
    tone,
    toy_overrides,
    write_audiofolder,
)

from whisper_tune import load_config, run
from whisper_tune.data.store import PreparedDataset
from whisper_tune.runs.run import prepare


def test_run_writes_the_whole_run_directory(toy_model_dir: Path, tmp_path: Path) -> None:
    summary = run(
        load_config("quickstart", toy_overrides(toy_model_dir, tmp_path, **{"output.run_name": "r"})),
        reporter=QUIET,
    )
    run_dir = tmp_path / "r"
    assert summary.run_dir == run_dir
    for name in ("config.yaml", "plan.json", "job.json", "run.log", "metrics.json", "plot.png"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for phase in ("before", "after"):
        assert set(metrics["evaluation"][phase]) == {"eval", "other-voice"}
        for values in metrics["evaluation"][phase].values():
            assert {"wer", "cer", "normalized_wer", "normalized_cer"} <= set(values)
    assert metrics["train"]["steps"] == 2 and metrics["train"]["samples"] == 8
    assert metrics["train"]["samples_per_second"] > 0
    assert metrics["data"]["train"]["samples"] == 16
    assert metrics["data"]["eval"]["samples"] == 4 and metrics["data"]["other-voice"]["samples"] == 3
    lines = (run_dir / "predictions" / "eval-after.jsonl").read_text().splitlines()
    assert len(lines) == 4 and {"reference", "prediction"} <= set(json.loads(lines[0]))
    # the resolved config reloads to the same config
    assert load_config(run_dir / "config.yaml") == load_config(
        "quickstart", toy_overrides(toy_model_dir, tmp_path, **{"output.run_name": "r"})
    )
    # final weights and processor load with plain transformers
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    model = WhisperForConditionalGeneration.from_pretrained(run_dir / "final")
    WhisperProcessor.from_pretrained(run_dir / "final")
    trained = model.model.decoder.layers[0].fc1.weight
    start = WhisperForConditionalGeneration.from_pretrained(toy_model_dir).model.decoder.layers[0].fc1.weight
    assert not torch.equal(trained, start)  # training changed the weights
    records = logged_steps(run_dir)
    assert [r["step"] for r in records] == [1, 2]
    assert records[-1]["loss"] == metrics["train"]["final_loss"]


@pytest.mark.slow
def test_bad_samples_are_skipped_counted_and_reported(toy_model_dir: Path, tmp_path: Path) -> None:
    good = [(f"g{i}.wav", tone(1.0 + i / 10, rate=8_000), 8_000, f"clip number {i}") for i in range(4)]
    root = write_audiofolder(
        tmp_path / "data",
        {
            "train": [
                *good,
                ("corrupt.wav", b"RIFF....not really audio", 0, "broken file"),
                ("silent.wav", tone(0.0), 16_000, "empty audio"),
                ("long.flac", tone(31.0, rate=8_000), 8_000, "thirty one seconds"),
                ("missing.wav", None, 0, "no such file"),
                ("notext.wav", tone(1.0), 16_000, ""),
            ],
            "test": good[:2],
        },
    )
    cfg = load_config(
        "quickstart",
        toy_overrides(
            toy_model_dir,
            tmp_path / "runs",
            **{
                "data.dataset": str(root),
                "data.eval_split": "test",
                "data.extra_eval": "[]",
                "data.max_train_samples": "null",
                "training.max_steps": 1,
                "output.run_name": "bad",
            },
        ),
    )
    summary = run(cfg, reporter=QUIET)
    dropped = summary.metrics["data"]["train"]["dropped"]
    assert summary.metrics["data"]["train"]["samples"] == 4
    assert dropped["by_reason"] == {
        "unreadable_audio": 1,
        "empty_audio": 1,
        "audio_too_long": 1,
        "missing_file": 1,
        "empty_transcript": 1,
    }
    assert dropped["total"] == 5
    log = (tmp_path / "runs" / "bad" / "run.log").read_text()
    assert "dropped 5" in log


@pytest.mark.slow
def test_resume_continues_the_same_loss_curve(toy_model_dir: Path, tmp_path: Path) -> None:
    common = {
        "training.max_steps": 4,
        "training.save_steps": 2,
        "training.save_total_limit": 5,
        "eval.before": "false",
        "eval.after": "false",
        "training.learning_rate": 1e-3,
    }
    full = run(
        load_config(
            "quickstart", toy_overrides(toy_model_dir, tmp_path, **common, **{"output.run_name": "full"})
        ),
        reporter=QUIET,
    )
    checkpoint = tmp_path / "full" / "checkpoints" / "step-000002"
    assert checkpoint.is_dir() and (tmp_path / "full" / "checkpoints" / "step-000004").is_dir()
    resumed = run(
        load_config(
            "quickstart",
            toy_overrides(
                toy_model_dir,
                tmp_path,
                **common,
                **{"output.run_name": "resumed", "training.resume_from": str(checkpoint)},
            ),
        ),
        reporter=QUIET,
    )
    assert resumed.metrics["train"]["steps"] == 4
    full_log = logged_steps(tmp_path / "full")
    resumed_log = logged_steps(tmp_path / "resumed")
    assert [r["step"] for r in resumed_log] == [3, 4]  # only the steps after the checkpoint ran
    assert [r["loss"] for r in resumed_log] == pytest.approx([r["loss"] for r in full_log[2:]], rel=1e-4)
    assert full.metrics["train"]["final_loss"] == pytest.approx(
        resumed.metrics["train"]["final_loss"], rel=1e-4
    )


@pytest.mark.slow
def test_checkpoints_are_pruned(toy_model_dir: Path, tmp_path: Path) -> None:
    run(
        load_config(
            "quickstart",
            toy_overrides(
                toy_model_dir,
                tmp_path,
                **{
                    "training.max_steps": 3,
                    "training.save_steps": 1,
                    "training.save_total_limit": 1,
                    "eval.before": "false",
                    "eval.after": "false",
                    "output.run_name": "p",
                },
            ),
        ),
        reporter=QUIET,
    )
    assert [p.name for p in (tmp_path / "p" / "checkpoints").iterdir()] == ["step-000003"]


@pytest.mark.slow
def test_prepare_once_then_train_from_prepared(toy_model_dir: Path, tmp_path: Path) -> None:
    overrides = toy_overrides(toy_model_dir, tmp_path / "runs", **{"data.extra_eval": "[]"})
    sets = prepare(load_config("quickstart", overrides), tmp_path / "prepared", reporter=QUIET)
    assert sets.train is not None and (sets.train / "manifest.json").is_file()
    train = PreparedDataset(sets.train)
    assert len(train) == 16 and train.num_mel_bins == 80 and train.manifest["version"] == 2
    clip = train[0]["audio"]  # 16 kHz audio, features are made at batch time
    assert clip.dtype.name == "float32" and len(clip) == train.samples[0]["length"]
    assert abs(len(clip) / 16_000 - train.samples[0]["seconds"]) < 1e-3
    summary = run(
        load_config(
            "quickstart",
            [*overrides, f"data.dataset={tmp_path / 'prepared'}", "output.run_name=from-prepared"],
        ),
        reporter=QUIET,
    )
    assert summary.metrics["data"]["train"]["path"] == str(tmp_path / "prepared" / "train")
    assert summary.metrics["train"]["steps"] == 2


@pytest.mark.slow
def test_evaluate_only(toy_model_dir: Path, tmp_path: Path) -> None:
    summary = run(
        load_config("quickstart", toy_overrides(toy_model_dir, tmp_path)), reporter=QUIET, train=False
    )
    assert set(summary.metrics["evaluation"]) == {"before"}
    assert summary.metrics["train"]["steps"] == 0
    assert not (summary.run_dir / "final").exists()


@pytest.mark.slow
def test_quickstart_improves_wer(tmp_path: Path) -> None:
    """The README's quickstart as shipped (real pretrained tiny.en, the bundled data, every eval and guard
    set, selection among the preset's candidates) but for its length: 20 of its 50 steps (packed windows:
    about 3 epochs), which keeps CI short; the whole 50-step run is the README's command, run before
    every release of its numbers.

    The work is bounded by the steps and the fixed sets, not by time: the timeout is only there to end
    (and kill) a run that hangs, with room for a loaded 2-core machine (~4 min unloaded).
    """
    steps = 20
    result = run_child(
        cli_argv(
            "run",
            "--config",
            "quickstart",
            f"training.max_steps={steps}",
            f"output.dir={tmp_path}",
            "output.run_name=qs",
        ),
        cwd=REPO,
        timeout=3600,
    )
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "qs" / "metrics.json").read_text())
    assert metrics["train"]["steps"] == steps
    before = metrics["evaluation"]["before"]["eval"]["normalized_wer"]
    after = metrics["evaluation"]["after"]["eval"]["normalized_wer"]
    assert after < before, (before, after)
    # the default recipe: LoRA on every Linear layer, its chosen α baked into the adapter in final/
    adapter = json.loads((tmp_path / "qs" / "final" / "adapter_config.json").read_text())
    assert set(adapter["target_modules"]) == {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"}
    assert metrics["keep"]["mode"] == "auto" and len(metrics["keep"]["candidates"]) == 4
    assert metrics["data"]["eval"]["samples"] >= 30
    assert "eval: WER" in result.stdout and "other-voice: WER" in result.stdout
