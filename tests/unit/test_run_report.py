"""What a run says and leaves: WER lines, the plot, run directory names, the warm-up warning, and telling
"not on this disk" from "the hub cannot be reached"."""

from __future__ import annotations

import pytest

from whisper_tune.config_loading import load_config
from whisper_tune.hub import hub_offline, is_network_error
from whisper_tune.runs.directory import model_label
from whisper_tune.runs.opening import warmup_issues
from whisper_tune.runs.report import plot_figure, wer_lines

BEFORE = {"eval": {"normalized_wer": 23.5, "wer": 30.0}, "other-voice": {"normalized_wer": 1.9, "wer": 5.0}}
AFTER = {"eval": {"normalized_wer": 5.6, "wer": 9.0}, "other-voice": {"normalized_wer": 2.1, "wer": 5.2}}


def test_wer_lines_of_an_evaluation_only_run_say_no_before_or_after() -> None:
    assert wer_lines({"before": BEFORE}, trained=False) == [
        "eval: WER 23.5% (normalised; raw 30.0%)",
        "other-voice: WER 1.9% (normalised; raw 5.0%)",
    ]
    assert wer_lines({"after": AFTER})[0] == "eval: WER 5.6% (after training, normalised; raw 9.0%)"
    assert wer_lines({"before": BEFORE, "after": AFTER})[0] == (
        "eval: WER 23.5% -> 5.6% (normalised; raw 30.0% -> 9.0%)"
    )


def test_evaluation_only_plot_has_one_panel_and_no_legend() -> None:
    import matplotlib.pyplot as plt

    fig = plot_figure([], {"before": BEFORE}, "tiny.en · reference · evaluation only")
    try:
        assert len(fig.axes) == 1  # no empty loss panel
        assert fig.axes[0].get_legend() is None  # one phase: nothing to tell apart
        assert fig.axes[0].get_title() == "normalised WER (%)"
    finally:
        plt.close(fig)


def test_before_after_legend_covers_no_bar() -> None:
    import matplotlib.pyplot as plt

    log = [{"step": 1.0, "loss": 2.0}, {"step": 2.0, "loss": 1.5}]
    for evaluation in ({"before": BEFORE, "after": AFTER}, {"before": {"eval": BEFORE["eval"]}, "after": {}}):
        fig = plot_figure(log, evaluation, "t")
        try:
            fig.canvas.draw()
            renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
            ax_wer = fig.axes[1]
            legend = ax_wer.get_legend()
            bars = [patch.get_window_extent(renderer) for patch in ax_wer.patches]
            assert bars
            if legend is not None:
                box = legend.get_window_extent(renderer)
                assert not any(box.overlaps(bar) for bar in bars)
            else:  # one phase in a training run: the title says which
                assert ax_wer.get_title() == "normalised WER (%), before training"
        finally:
            plt.close(fig)


def test_run_directory_names_the_evaluated_run_not_final() -> None:
    assert model_label("runs/20250101-120000-reference-tiny.en/final") == "20250101-120000-reference-tiny.en"
    assert model_label("runs/r/checkpoints/step-000010") == "r"
    assert model_label("pip:tiny.en") == "tiny.en" and model_label("openai/whisper-small") == "whisper-small"


def test_warmup_not_shorter_than_training_warns() -> None:
    cfg = load_config("quickstart", ["training.max_steps=2", "training.warmup_steps=2"])
    (issue,) = warmup_issues(cfg, 2)
    assert issue.level == "warning" and issue.loc == "training.warmup_steps"
    assert "2 warm-up steps for 2 training steps" in issue.message
    assert warmup_issues(cfg, 3) == [] and warmup_issues(cfg, None) == []
    assert warmup_issues(load_config("quickstart", ["training.warmup_steps=0"]), 1) == []


def test_network_errors_are_told_from_other_errors() -> None:
    from huggingface_hub.errors import OfflineModeIsEnabled

    assert is_network_error(OfflineModeIsEnabled("offline"))
    assert is_network_error(ConnectionError("refused"))
    try:
        try:
            raise TimeoutError("slow")
        except TimeoutError as inner:
            raise OSError("cannot load") from inner
    except OSError as outer:
        assert is_network_error(outer)  # through the cause
    assert not is_network_error(ValueError("config.json is not valid JSON"))
    assert hub_offline({"HF_HUB_OFFLINE": "1"}) and not hub_offline({"HF_HUB_OFFLINE": "0"})


@pytest.mark.parametrize("name", ["openai/whisper-tiny", "my-models/whisper"])
def test_a_model_name_not_on_disk_offline_is_no_such_local_directory(name: str) -> None:
    from whisper_tune.errors import ModelError
    from whisper_tune.models.loading import require_reachable

    with pytest.raises(ModelError, match=r"no such local directory \(as a hub id it needs network\)"):
        require_reachable(name)  # conftest sets HF_HUB_OFFLINE=1
    with pytest.raises(ModelError, match="does not exist"):
        require_reachable(f"./{name}")
    require_reachable("pip:tiny.en")  # packaged weights need no hub
