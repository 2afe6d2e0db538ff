"""The run report: ``metrics.json``, ``predictions/*.jsonl`` and ``plot.png`` in the run directory, the WER
lines, and the guard rails' verdict."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any

from whisper_tune.backend.protocol import TrainResult
from whisper_tune.config.schema import RunConfig
from whisper_tune.disk import Text, make_dir, write_bytes, write_lines
from whisper_tune.errors import GuardRailError
from whisper_tune.evaluation.guards import guard_report


def fmt_pct(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f}%"


def wer_lines(evaluation: dict[str, dict[str, dict[str, Any]]], *, trained: bool = True) -> list[str]:
    """ "eval: WER 30.8% -> 11.3% (normalised; raw ...)" for every set evaluated. ``trained=False`` (an
    evaluation-only run, whose one evaluation is stored as "before") says no "before"/"after"."""
    before = evaluation.get("before", {})
    after = evaluation.get("after", {})
    lines = []
    for name in dict.fromkeys([*before, *after]):
        b = before.get(name, {}).get("normalized_wer")
        a = after.get(name, {}).get("normalized_wer")
        if b is not None and a is not None:
            half = after[name].get("half") == "report"
            where = f"; report half, {after[name].get('samples')} clips" if half else ""
            lines.append(
                f"{name}: WER {fmt_pct(b)} -> {fmt_pct(a)} (normalised; raw "
                f"{fmt_pct(before[name]['wer'])} -> {fmt_pct(after[name]['wer'])}{where})"
            )
        else:
            phase = "after" if a is not None else "before"
            scores = (after if a is not None else before)[name]
            when = f"{phase} training, " if trained else ""
            lines.append(
                f"{name}: WER {fmt_pct(scores.get('normalized_wer'))} ({when}normalised; raw "
                f"{fmt_pct(scores.get('wer'))})"
            )
    return lines


def write_plot(
    path: Path,
    log_history: list[dict[str, float]],
    evaluation: dict[str, dict[str, dict[str, Any]]],
    title: str,
    keep: dict[str, Any] | None = None,
    kept: Text = None,
    hint: Text = None,
) -> Path | None:
    """Loss per step and WER before/after per eval set, side by side; for a run that did not train
    (no loss logged) only the WER panel; after a selection (``eval.keep: auto``) a third panel with the
    frontier of its candidates. Written beside ``path`` and renamed (``kept``, ``hint``: what survives a
    full disk, and what to do)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plot_figure(log_history, evaluation, title, keep)
    image = io.BytesIO()  # rendered first: its size is known when the disk has less
    try:
        fig.savefig(image, dpi=100, format=path.suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
    return write_bytes(path, image.getvalue(), kept=kept, hint=hint)


def plot_figure(
    log_history: list[dict[str, float]],
    evaluation: dict[str, dict[str, dict[str, Any]]],
    title: str,
    keep: dict[str, Any] | None = None,
) -> Any:
    """The matplotlib figure of ``write_plot``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = [r for r in log_history if "loss" in r]
    evals = [r for r in log_history if "eval_wer" in r]
    frontier = keep is not None and keep.get("mode") == "auto"
    if losses or evals:
        panels = 3 if frontier else 2
        fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4))
        ax_loss, ax_wer = axes[0], axes[1]
        if frontier:
            plot_frontier(axes[2], keep or {})
        if losses:
            ax_loss.plot([r["step"] for r in losses], [r["loss"] for r in losses], marker=".")
        if evals:  # evaluation during training: WER on a second y axis over the same steps
            ax_eval = ax_loss.twinx()
            ax_eval.plot([r["step"] for r in evals], [r["eval_wer"] for r in evals], color="gray", marker="o")
            ax_eval.set_ylabel("eval WER % during training (gray)")
        ax_loss.set(title="training loss", xlabel="optimizer step", ylabel="loss")
        ax_loss.grid(alpha=0.3)
    else:
        fig, ax_wer = plt.subplots(1, 1, figsize=(6, 4))
    phases = [p for p in ("before", "after") if evaluation.get(p)]
    names = list(dict.fromkeys(n for p in phases for n in evaluation[p]))
    width = 0.38 if len(phases) > 1 else 0.6
    peak = 0.0
    for k, phase in enumerate(phases):
        offset = (k - (len(phases) - 1) / 2) * width
        values = [evaluation[phase].get(n, {}).get("normalized_wer", float("nan")) for n in names]
        peak = max([peak, *(v for v in values if v == v)])
        bars = ax_wer.bar([i + offset for i in range(len(names))], values, width, label=phase)
        ax_wer.bar_label(bars, fmt="%.1f", fontsize=8)
    ax_wer.set_xticks(range(len(names)), names)
    ax_wer.set_ylim(0, max(peak * 1.15, 1.0))  # room for the bar labels
    # one phase: an evaluation-only run says nothing more, a training run says which side of training
    when = f", {phases[0]} training" if len(phases) == 1 and (losses or evals) else ""
    halves = {s.get("half") for p in phases for s in evaluation[p].values()}
    when += ", report half" if halves == {"report"} else ""
    ax_wer.set(title=f"normalised WER (%){when}", ylabel="WER %")
    if len(phases) > 1:  # before/after: the legend goes beside the panel, never over a bar
        ax_wer.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_frontier(ax: Any, keep: dict[str, Any]) -> None:
    """Each candidate of a selection: its eval WER on the choose half against its worst guard set's word
    errors beyond the pretrained model's (paired, same clips); the chosen one ringed, the margin drawn
    where the guards allow it (a candidate right of 0 is over a margin)."""
    points = []
    for candidate in keep["candidates"]:
        sets = candidate["sets"]
        guards = [
            s["errors"] - s["pretrained_errors"] - s["margin_words"] for n, s in sets.items() if n != "eval"
        ]
        points.append((max(guards, default=0.0), sets.get("eval", {}).get("wer", float("nan")), candidate))
    for excess, wer, candidate in points:
        chosen = candidate["label"] == keep["chosen"]["label"]
        ax.scatter([excess], [wer], s=80 if chosen else 30, facecolors="none" if chosen else None,
                   edgecolors="black" if chosen else None)  # fmt: skip
        ax.annotate(candidate["label"], (excess, wer), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.axvline(0.0, color="gray", linestyle="--", linewidth=1)
    ax.set(
        title="keep: candidates (choose half)",
        xlabel="worst guard: word errors beyond pretrained + margin",
        ylabel="eval WER %",
    )
    ax.grid(alpha=0.3)


def write_predictions(
    run_dir: Path,
    evaluation: dict[str, Any],
    eval_sets: dict[str, Any],
    halves: dict[str, Any] | None = None,
    kept: Text = None,
    hint: Text = None,
) -> None:
    """One JSON line per clip: its id (as the source names it: ``eval/0001.ogg``, ``x.csv:12``), the
    audio file when it came from one, the reference and the prediction; after a selection
    (``eval.keep: auto``) also the half it is in: "choose" (used to choose) or "report". ``kept``, ``hint``:
    what survives a full disk, and what to do."""
    halves = halves or {}
    out = make_dir(run_dir / "predictions", "predictions/")
    for phase, by_set in evaluation.items():
        for name, scored in by_set.items():
            samples = eval_sets[name].samples
            chosen_on = set(halves.get(name, {}).get("choose", ()))
            rows = []
            for i, (sample, hyp) in enumerate(zip(samples, scored["texts"], strict=True)):
                row = {
                    "id": sample.get("key"),
                    "audio": sample.get("audio"),
                    "reference": sample["text"],
                    "prediction": hyp,
                }
                if name in halves:
                    row["half"] = "choose" if i in chosen_on else "report"
                rows.append(row)
            path = out / f"{name}-{phase}.jsonl"
            write_lines(path, rows, f"{out.name}/{path.name}", kept=kept, hint=hint)


def metrics_document(
    config: RunConfig, result: TrainResult, evaluation: dict[str, Any], data: dict[str, Any], wall: float
) -> dict[str, Any]:

    scores = {phase: {n: s["metrics"] for n, s in by_set.items()} for phase, by_set in evaluation.items()}
    return {
        "model": config.model.name,
        "backend": config.backend.name,
        "evaluation": scores,
        "guard": guard_report(config, scores),
        "train": {
            "steps": result.steps,
            "samples": result.train_samples,
            "clips": result.train_clips or result.train_samples,
            "audio_seconds": result.train_audio_seconds,
            "seconds": result.train_seconds,
            "samples_per_second": round(result.samples_per_second, 3),
            "audio_seconds_per_second": (
                round(result.train_audio_seconds / result.train_seconds, 3) if result.train_seconds else 0.0
            ),
            **({"windows": result.train_samples, "packing": result.windows} if result.windows else {}),
            "final_loss": next((r["loss"] for r in reversed(result.log_history) if "loss" in r), None),
            "interrupted": result.interrupted,
        },
        "selection": result.selection or None,
        # eval.keep: every candidate's WER on the choose half, the choice, the halves (None: off)
        "keep": result.keep or None,
        "eval_seconds": result.eval_seconds,
        "peak_memory_bytes": result.peak_memory_bytes,
        "data": data,
        "final_model_dir": str(result.final_model_dir) if result.final_model_dir else None,
        "wall_seconds": round(wall, 2),
        "pid": os.getpid(),
    }


def fail_on_guard_warnings(config: RunConfig, warnings: list[str], run_dir: Path) -> None:
    """With ``eval.fail_on_regression``, a guard-rail warning is an error (exit code 9), raised once
    everything is written."""
    if config.eval.fail_on_regression and warnings:
        more = f" (and {len(warnings) - 1} more)" if len(warnings) > 1 else ""
        raise GuardRailError(
            f"guard rail: {warnings[0]}{more}; eval.fail_on_regression is set",
            hint=f"the run is complete in {run_dir} (final/, metrics.json 'guard'); lower the learning "
            "rate, train fewer steps or use training.method=lora, or raise eval.regression_margin",
        )
