"""Evaluation during training (best checkpoint, early stopping) and experiment trackers, through the
CPU reference backend on real audio with a small random Whisper."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import QUIET, toy_overrides

from whisper_tune import load_config, run
from whisper_tune.errors import ConfigError
from whisper_tune.runs.trackers import TRACKER_NAMES


@pytest.mark.slow
def test_best_checkpoint_is_kept_and_evaluated(toy_model_dir: Path, tmp_path: Path) -> None:
    summary = run(
        load_config(
            "quickstart",
            toy_overrides(
                toy_model_dir,
                tmp_path,
                **{
                    "training.max_steps": 4,
                    "training.learning_rate": 3e-3,
                    "eval.steps": 1,
                    "eval.before": "false",
                    "training.report_to": "[tensorboard]",
                    "output.run_name": "best",
                },
            ),
        ),
        reporter=QUIET,
    )
    metrics, run_dir = summary.metrics, summary.run_dir
    evals = [r for r in metrics_log(run_dir) if "eval_wer" in r]
    assert [r["step"] for r in evals] == [1, 2, 3, 4]
    selection = metrics["selection"]
    best = min(evals, key=lambda r: (r["eval_wer"], r["step"]))
    assert selection["best_step"] == best["step"] and selection["best_eval_wer"] == best["eval_wer"]
    saved = json.loads((run_dir / "checkpoints" / "best" / "best.json").read_text())
    assert saved["step"] == best["step"]
    # The subset is the whole 4-sample eval set, so the evaluation after training (of the kept weights)
    # reproduces the best evaluation exactly.
    assert metrics["evaluation"]["after"]["eval"]["normalized_wer"] == pytest.approx(
        best["eval_wer"], abs=1e-3
    )
    assert metrics["train"]["steps"] == 4 and metrics["train"]["final_loss"] is not None


@pytest.mark.slow
def test_with_eval_metric_cer_the_best_checkpoint_follows_cer(toy_model_dir: Path, tmp_path: Path) -> None:
    """``eval.metric=cer`` (their metric_for_best_model): both are measured, CER picks the checkpoint."""
    summary = run(
        load_config(
            "quickstart",
            toy_overrides(
                toy_model_dir,
                tmp_path,
                **{
                    "training.max_steps": 4,
                    "training.learning_rate": 3e-3,
                    "eval.steps": 1,
                    "eval.metric": "cer",
                    "eval.before": "false",
                    "eval.keep": "off",
                    "training.report_to": "tensorboard",
                    "output.run_name": "best-cer",
                },
            ),
        ),
        reporter=QUIET,
    )
    metrics, run_dir = summary.metrics, summary.run_dir
    evals = [r for r in metrics_log(run_dir) if "eval_cer" in r]
    assert [r["step"] for r in evals] == [1, 2, 3, 4] and all("eval_wer" in r for r in evals)
    best = min(evals, key=lambda r: (r["eval_cer"], r["step"]))
    selection = metrics["selection"]
    assert selection["metric"] == "cer" and selection["best_step"] == best["step"]
    assert selection["best_eval_cer"] == pytest.approx(best["eval_cer"], abs=1e-3)
    saved = json.loads((run_dir / "checkpoints" / "best" / "best.json").read_text())
    assert saved["step"] == best["step"] and "eval_cer" in saved
    assert metrics["evaluation"]["after"]["eval"]["normalized_cer"] == pytest.approx(
        best["eval_cer"], abs=1e-3
    )


def metrics_log(run_dir: Path) -> list[dict[str, float]]:
    """Loss and eval records of the run as the trackers and plot got them (TensorBoard scalars)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard" / run_dir.name))  # accelerate: <dir>/<run name>
    acc.Reload()
    records: dict[int, dict[str, float]] = {}
    for tag in acc.Tags()["scalars"]:
        for event in acc.Scalars(tag):
            records.setdefault(event.step, {"step": event.step})[tag] = event.value
    return [records[s] for s in sorted(records)]


@pytest.mark.slow
def test_early_stopping_when_eval_wer_stalls(toy_model_dir: Path, tmp_path: Path) -> None:
    summary = run(
        load_config(
            "quickstart",
            toy_overrides(
                toy_model_dir,
                tmp_path,
                **{
                    "training.max_steps": 8,
                    "training.learning_rate": 1e-12,  # predictions cannot change: WER stalls
                    "eval.steps": 1,
                    "eval.early_stopping_patience": 2,
                    "eval.before": "false",
                    "training.report_to": "[none]",
                },
            ),
        ),
        reporter=QUIET,
    )
    selection = summary.metrics["selection"]
    assert selection["stopped_early"] is True
    assert summary.metrics["train"]["steps"] == 3  # best at step 1, no better at 2 and 3
    assert selection["best_step"] == 1 and selection["evaluations"] == 3
    assert not (summary.run_dir / "tensorboard").exists()


@pytest.mark.slow
def test_tensorboard_gets_loss_and_wer(toy_model_dir: Path, tmp_path: Path) -> None:
    summary = run(
        load_config(
            "quickstart",
            toy_overrides(
                toy_model_dir, tmp_path, **{"training.report_to": "[tensorboard]", "output.run_name": "tb"}
            ),
        ),
        reporter=QUIET,
    )
    records = metrics_log(summary.run_dir)
    losses = {int(r["step"]): r["loss"] for r in records if "loss" in r}
    assert sorted(losses) == [1, 2]
    final = records[-1]
    after = summary.metrics["evaluation"]["after"]["eval"]["normalized_wer"]
    assert final["normalized_wer_after/eval"] == pytest.approx(after, abs=1e-3)
    assert "normalized_wer_before/other-voice" in final


def test_tracker_names_match_accelerate_and_missing_trackers_are_config_errors(
    toy_model_dir: Path, tmp_path: Path
) -> None:
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

    assert set(TRACKER_NAMES) == set(LOGGER_TYPE_TO_CLASS)
    missing = next(n for n in TRACKER_NAMES if n not in {str(t) for t in get_available_trackers()})
    with pytest.raises(ConfigError, match=f"'{missing}' is not installed"):
        run(
            load_config(
                "quickstart", toy_overrides(toy_model_dir, tmp_path, **{"training.report_to": f"[{missing}]"})
            ),
            reporter=QUIET,
        )
    with pytest.raises(ConfigError, match="report_to"):
        load_config("quickstart", ["training.report_to=[tensorbored]"])
