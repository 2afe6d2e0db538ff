"""The run report: ``metrics.json``, ``predictions/*.jsonl`` and ``plot.png`` in the run directory."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def fmt_pct(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f}%"


def wer_lines(evaluation: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """ "eval: WER 30.8% -> 11.3% (normalised)" for every set evaluated."""
    before = evaluation.get("before", {})
    after = evaluation.get("after", {})
    lines = []
    for name in dict.fromkeys([*before, *after]):
        b = before.get(name, {}).get("normalized_wer")
        a = after.get(name, {}).get("normalized_wer")
        if b is not None and a is not None:
            lines.append(
                f"{name}: WER {fmt_pct(b)} -> {fmt_pct(a)} (normalised; raw "
                f"{fmt_pct(before[name]['wer'])} -> {fmt_pct(after[name]['wer'])})"
            )
        else:
            value = a if a is not None else b
            phase = "after" if a is not None else "before"
            lines.append(f"{name}: WER {fmt_pct(value)} ({phase} training, normalised)")
    return lines


def write_plot(
    path: Path,
    log_history: list[dict[str, float]],
    evaluation: dict[str, dict[str, dict[str, Any]]],
    title: str,
) -> Path | None:
    """Loss per step and WER before/after per eval set, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_wer) = plt.subplots(1, 2, figsize=(10, 4))
    losses = [r for r in log_history if "loss" in r]
    if losses:
        ax_loss.plot([r["step"] for r in losses], [r["loss"] for r in losses], marker=".")
    evals = [r for r in log_history if "eval_wer" in r]
    if evals:  # evaluation during training: WER on a second y axis over the same steps
        ax_eval = ax_loss.twinx()
        ax_eval.plot([r["step"] for r in evals], [r["eval_wer"] for r in evals], color="gray", marker="o")
        ax_eval.set_ylabel("eval WER % during training (gray)")
    ax_loss.set(title="training loss", xlabel="optimizer step", ylabel="loss")
    ax_loss.grid(alpha=0.3)
    names = list(dict.fromkeys([*evaluation.get("before", {}), *evaluation.get("after", {})]))
    width = 0.38
    for offset, phase in ((-width / 2, "before"), (width / 2, "after")):
        values = [evaluation.get(phase, {}).get(n, {}).get("normalized_wer", float("nan")) for n in names]
        bars = ax_wer.bar([i + offset for i in range(len(names))], values, width, label=phase)
        ax_wer.bar_label(bars, fmt="%.1f", fontsize=8)
    ax_wer.set_xticks(range(len(names)), names)
    ax_wer.set(title="normalised WER (%)", ylabel="WER %")
    ax_wer.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
