"""Does packing pay with the default recipe? Unpacked vs packed at equal wall time and at equal audio.

Every run fine-tunes real pretrained tiny.en (``pip:tiny.en``) with the product's default recipe (LoRA on
every Linear layer, 1e-3, the quickstart's 50 steps, warm-up 5, linear decay) through ``whisper_tune.run``
on the CPU, on one of the recipe benchmark's two training domains (``espeak-us``, ``voice-b``: 240 clips,
2.75 s on average), in three variants (``VARIANTS``):

* ``unpacked``: 50 steps of 4 clips (the default);
* ``packed-time``: ``data.packing`` with 4 windows of up to 30 s a step (~9 clips each), the same
  schedule, for the steps whose training time equals the unpacked run's (from this process's
  calibration, ``calibrate``): about nine times the audio in the same time;
* ``packed-audio``: 1 window of up to ``SMALL_WINDOW_S`` (~4 clips) a step, for the steps that give the
  unpacked run's audio: the same speech, the packed format, in a quarter of the encoder work.

Both packed variants label a fifth of their windows with timestamps (``data.timestamp_fraction=0.2``,
distil-whisper's setting): evaluation decodes without timestamps, and the earlier packing benchmark
(docs/benchmarks.md) found 0.2 as good at equal audio and better at equal time.

Each fine-tune (θ₁, the adapter merged; no selection: selection would apply alike to both) is decoded
greedily on every clip of three sets no run trains or selects on:

* ``in-domain``: 110 held-out sentences in the domain's voice (``data/benchmark/held-eval``),
* ``second-voice``: 110 held-out sentences read by hibari-tts (``data/benchmark/second-voice``),
* ``real-speech``: 60 clips drawn (seeded) from ``data/real-speech/all``.

``verdict`` applies ``RULE`` (fixed before the runs) to the word errors summed over seeds and domains,
paired clip by clip against the unpacked runs. Results are written after every run (``--resume``).
About 18 minutes per seed and domain on one thread of this CPU; docs/benchmarks.md ran one process per
domain and merged:

    OMP_NUM_THREADS=1 python benchmarks/packing_quality.py --domains espeak-us --out a.json &
    OMP_NUM_THREADS=1 python benchmarks/packing_quality.py --domains voice-b --out b.json
    python benchmarks/packing_quality.py --merge a.json b.json --out benchmarks/results/packing-quality.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipe_quality import (
    DOMAINS,
    REAL_SPEECH,
    REPO,
    SECOND_VOICE,
    Context,
    machine,
    read_set,
    trained_weights,
)

HELD_EVAL = REPO / "data" / "benchmark" / "held-eval"
GUARDS = ("second-voice", "real-speech")
SETS = ("in-domain", *GUARDS)
#: the packed-audio variant's window (seconds): ~4 of these clips (2.75 s + 0.3 s gaps), one per step
SMALL_WINDOW_S = 12.0
PACKED = ("data.packing.enabled=true", "data.timestamp_fraction=0.2")
VARIANTS: dict[str, tuple[str, ...]] = {
    "unpacked": ("data.packing.enabled=false",),
    "packed-time": PACKED,
    "packed-audio": (*PACKED, f"data.packing.max_window_s={SMALL_WINDOW_S}", "training.batch_size=1"),
}

#: the rule that decides packing's default (fixed before the runs; docs/benchmarks.md)
RULE = (
    "Word errors summed over 3 seeds and both domains, every clip paired with the unpacked runs'. "
    "1. equal time: packed-time's in-domain errors at most unpacked's + 1 %; 2. guard sets no worse: on "
    "second-voice and on real-speech, packed-time's errors at most unpacked's, or the 95 % paired "
    "bootstrap interval of the difference (clips resampled, 2000 draws) holds 0; 3. equal audio: "
    "packed-audio's in-domain WER at most unpacked's + 1 point. Packing becomes the default only if all "
    "three hold."
)


def overrides(variant: str, domain: str, seed: int, steps: int, out: Path, name: str) -> list[str]:
    shared = {
        "data.dataset": str(DOMAINS[domain]),
        "data.train_split": "train",
        "data.eval_split": None,
        "data.extra_eval": [],
        "training.max_steps": steps,
        "training.batch_size": 4,
        "training.warmup_steps": 5,
        "training.lr_scheduler": "linear",
        "training.seed": seed,
        "training.report_to": ["none"],
        "eval.before": False,
        "eval.after": False,
        "eval.keep": "off",
        "eval.regression_set": None,
        "output.dir": str(out),
        "output.run_name": name,
        "output.plot": False,
        "output.save_final_model": True,
    }
    return [*(f"{k}={json.dumps(v)}" for k, v in shared.items()), *VARIANTS[variant]]


def train(variant: str, domain: str, seed: int, steps: int, work: Path, name: str, save: bool = True) -> Any:
    from whisper_tune import load_config, run
    from whisper_tune.console import Reporter

    extra = () if save else ("output.save_final_model=false",)
    config = load_config("quickstart", [*overrides(variant, domain, seed, steps, work, name), *extra])
    return run(config, reporter=Reporter.silent(), echo_summary=False)


def calibrate(domain: str, work: Path, steps: int = 6) -> dict[str, Any]:
    """Seconds and audio per step of each variant (``steps`` steps, no evaluation), then the steps that
    give packed-time the unpacked run's training time and packed-audio its audio."""
    per: dict[str, Any] = {}
    train("unpacked", domain, 0, 1, work, "calibrate-warm-up", save=False)  # one-time costs, not timed
    for variant in VARIANTS:
        t = train(variant, domain, 0, steps, work, f"calibrate-{variant}", save=False).metrics["train"]
        per[variant] = {
            "seconds_per_step": t["seconds"] / t["steps"],
            "audio_per_step": t["audio_seconds"] / t["steps"],
        }
    return per


def named_sets(domains: list[str], real: int) -> dict[str, list[tuple[Path, str]]]:
    """Each domain's 110 held-out clips and the two guard sets."""
    return {
        **{f"in-domain:{d}": read_set(HELD_EVAL / d) for d in domains},
        "second-voice": read_set(SECOND_VOICE),
        "real-speech": read_set(REAL_SPEECH, real, seed=1),
    }


def fine_tune(variant: str, domain: str, seed: int, steps: int, work: Path, ctx: Any) -> dict[str, Any]:
    import shutil

    import torch

    started = time.perf_counter()
    summary = train(variant, domain, seed, steps, work, f"{domain}-{variant}-seed{seed}")
    bench_seconds = time.perf_counter() - started
    theta1 = trained_weights(summary.run_dir, ctx.source)
    shutil.rmtree(summary.run_dir, ignore_errors=True)
    t = summary.metrics["train"]
    with torch.no_grad():
        ctx.model.load_state_dict(theta1)
    errors = {
        name: ctx.decoder.errors(ctx.model, f"in-domain:{domain}" if name == "in-domain" else name)
        for name in SETS
    }
    ctx.model.load_state_dict(ctx.theta0)
    return {
        "variant": variant, "domain": domain, "seed": seed, "errors": errors,
        "train": {k: t[k] for k in ("steps", "samples", "clips", "audio_seconds", "seconds") if k in t},
        "bench_seconds": round(bench_seconds, 1), "load_1min": os.getloadavg()[0],
    }  # fmt: skip


# ------------------------------------------------------------------------------------- analysis


def per_clip(results: dict[str, Any], variant: str) -> dict[str, list[int]]:
    """Per set, the variant's word errors on every (domain, seed, clip), in a fixed order."""
    runs = sorted(
        (r for r in results["runs"] if r["variant"] == variant), key=lambda r: (r["domain"], r["seed"])
    )
    return {name: [e for r in runs for e, _ in r["errors"][name]] for name in SETS}


def words(results: dict[str, Any], variant: str) -> dict[str, int]:
    runs = [r for r in results["runs"] if r["variant"] == variant]
    return {name: sum(w for r in runs for _, w in r["errors"][name]) for name in SETS}


def bootstrap(diff: list[int], draws: int = 2000) -> list[int]:
    """95 % interval of the summed paired difference, clips resampled with replacement."""
    rng = random.Random(0)
    n = len(diff)
    sums = sorted(sum(diff[rng.randrange(n)] for _ in range(n)) for _ in range(draws))
    return [sums[int(0.025 * draws)], sums[int(0.975 * draws) - 1]]


def verdict(results: dict[str, Any]) -> dict[str, Any]:
    keys = {v: {(r["domain"], r["seed"]) for r in results["runs"] if r["variant"] == v} for v in VARIANTS}
    if not keys["unpacked"] or any(keys[v] != keys["unpacked"] for v in VARIANTS):
        return {"rule": RULE, "complete": False}
    base, n = per_clip(results, "unpacked"), words(results, "unpacked")
    table: dict[str, Any] = {}
    for variant in VARIANTS:
        clips = per_clip(results, variant)
        row = {}
        for name in SETS:
            diff = [a - b for a, b in zip(clips[name], base[name], strict=True)]
            row[name] = {
                "errors": sum(clips[name]), "unpacked_errors": sum(base[name]), "words": n[name],
                "wer": round(100 * sum(clips[name]) / n[name], 2),
                "change_words": sum(diff), "interval": bootstrap(diff) if variant != "unpacked" else [0, 0],
            }  # fmt: skip
        runs = [r for r in results["runs"] if r["variant"] == variant]
        row["train"] = {
            k: round(sum(r["train"][k] for r in runs), 1) for k in ("seconds", "audio_seconds", "steps")
        }
        table[variant] = row
    t, a, u = table["packed-time"], table["packed-audio"], table["unpacked"]
    checks = {
        "equal_time_in_domain": t["in-domain"]["errors"] <= 1.01 * u["in-domain"]["errors"],
        **{f"equal_time_{g}_no_worse": t[g]["change_words"] <= 0 or t[g]["interval"][0] <= 0 for g in GUARDS},
        "equal_audio_in_domain": a["in-domain"]["wer"] <= u["in-domain"]["wer"] + 1.0,
    }
    return {
        "rule": RULE,
        "complete": True,
        "table": table,
        "checks": checks,
        "packing_default": all(checks.values()),
    }


def markdown(results: dict[str, Any]) -> str:
    v = results["verdict"]
    lines = ["| variant | steps | train s | audio s | in-domain | second-voice | real-speech |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    if "pretrained" in results:
        p = results["pretrained"]
        sets = {"in-domain": [r for n, rows in p.items() if n.startswith("in-domain") for r in rows]}
        sets.update({g: p[g] for g in GUARDS})
        cells = [f"{100 * sum(e for e, _ in rows) / sum(w for _, w in rows):.2f} %" for rows in sets.values()]
        lines.append("| pretrained | – | – | – | " + " | ".join(cells) + " |")
    for variant, row in v["table"].items():
        cells = [
            f"{row[s]['wer']:.2f} % ({row[s]['change_words']:+d} words, {row[s]['interval']})" for s in SETS
        ]
        tr = row["train"]
        lines.append(
            f"| {variant} | {tr['steps']:g} | {tr['seconds']:g} | {tr['audio_seconds']:g} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines) + "\n\n" + json.dumps(v["checks"], indent=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domains", nargs="+", choices=list(DOMAINS), default=list(DOMAINS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=50, help="the unpacked runs' optimizer steps")
    parser.add_argument("--real", type=int, default=60, help="real-speech clips drawn from the 227")
    parser.add_argument("--eval-batch", type=int, default=32)
    parser.add_argument("--smoke", action="store_true", help="2 steps, one seed: checks the script runs")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--resume", action="store_true", help="keep the runs already in --out")
    parser.add_argument("--merge", nargs="+", type=Path, default=[], help="results made in parallel: merged")
    parser.add_argument("--pretrained", action="store_true",
                        help="decode pretrained tiny.en on every set into --out (context)")  # fmt: skip
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    results: dict[str, Any] = {"runs": [], "calibration": {}}
    if (args.resume or args.merge or args.pretrained) and args.out and args.out.is_file():
        results = json.loads(args.out.read_text())
    for part in args.merge:
        other = json.loads(part.read_text())
        results = {**other, "runs": results["runs"] + other["runs"],
                   "calibration": {**results.get("calibration", {}), **other["calibration"]}}  # fmt: skip

    def save() -> None:
        results["verdict"] = verdict(results)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1) + "\n")

    if args.pretrained:
        ctx = Context(args, named_sets(args.domains, args.real))
        results["pretrained"] = {name: ctx.decoder.errors(ctx.model, name) for name in ctx.sets.texts}
    elif not args.merge:
        steps, seeds = (2, args.seeds[:1]) if args.smoke else (args.steps, args.seeds)
        results.update({
            "benchmark": "packing-quality", "model": "pip:tiny.en", "steps": steps, "variants": VARIANTS,
            "real_speech_clips": args.real, "machine": machine(), "rule": RULE,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        })  # fmt: skip
        ctx = Context(args, named_sets(args.domains, args.real))
        done = {(r["variant"], r["domain"], r["seed"]) for r in results["runs"]}
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            for domain in args.domains:
                if domain not in results["calibration"]:
                    cal = calibrate(domain, work, 2 if args.smoke else 6)
                    u = cal["unpacked"]
                    time_ratio = u["seconds_per_step"] / cal["packed-time"]["seconds_per_step"]
                    audio_ratio = u["audio_per_step"] / cal["packed-audio"]["audio_per_step"]
                    cal["steps"] = {
                        "unpacked": steps,
                        "packed-time": max(1, round(steps * time_ratio)),
                        "packed-audio": max(1, round(steps * audio_ratio)),
                    }
                    results["calibration"][domain] = cal
                    print(f"{domain} calibration: {json.dumps(cal)}", flush=True)
                    save()
            for seed in seeds:
                for domain in args.domains:
                    for variant in VARIANTS:
                        if (variant, domain, seed) in done:
                            continue
                        n = results["calibration"][domain]["steps"][variant]
                        row = fine_tune(variant, domain, seed, n, work, ctx)
                        results["runs"].append(row)
                        errors = {k: sum(e for e, _ in v) for k, v in row["errors"].items()}
                        print(
                            f"{variant} {domain} seed {seed}: {json.dumps(row['train'])}, {errors}",
                            flush=True,
                        )
                        save()
    save()
    if results["verdict"].get("complete"):
        print(markdown(results))


if __name__ == "__main__":
    main()
