"""After training, keep only as much of the change as the held-out sets allow (``eval.keep``).

Full fine-tuning: candidates θ(α) = θ₀ + α(θ₁ − θ₀) on the weights that trained (WiSE-FT), from a copy of
them taken before training (on the CPU); the encoder's α apart from the decoder's where the encoder
trained. LoRA: the adapter's scaling times α (what peft's ``rescale_adapter_scale`` does), per part, no
weight copies. Each candidate is decoded on the choose half of every eval set and the rule of
``evaluation/selection.py`` picks one; the chosen one is *baked in*: the model keeps those weights (LoRA:
``lora_B`` times α, so plain peft, ``merge``, ``export`` and ``push`` load exactly the chosen model), and
``final/`` and the evaluation after training use it. Every process computes the same candidates on the
same gathered predictions, so every rank makes the same choice.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from whisper_tune.backend.protocol import TrainJob
from whisper_tune.backend.setup import TrainingSetup
from whisper_tune.console import Reporter
from whisper_tune.evaluation.guards import normalizer_override, set_margin
from whisper_tune.evaluation.metrics import make_normalizer, pick_normalizer
from whisper_tune.evaluation.selection import (
    MIN_CLIPS,
    PRIMARY,
    Candidate,
    Half,
    SetScore,
    candidate_grid,
    decide,
    halves,
    paired_counts,
    set_score,
)
from whisper_tune.models.loading import is_multilingual

if TYPE_CHECKING:
    from whisper_tune.evaluation.evaluate import PhaseOutput

RULE = (
    "among candidates whose word errors on every guard set's choose half exceed the pretrained model's "
    "(paired, same clips) by no more than the set's margin, the lowest eval word errors; ties to the "
    "smaller α; if none passes, the best-guarded, with a warning"
)


def is_encoder(name: str) -> bool:
    return ".encoder." in f".{name}"


class Blend(Protocol):
    encoder_trained: bool

    def apply(self, candidate: Candidate) -> None: ...

    def bake(self, candidate: Candidate) -> None: ...


def trained_weights(model: Any) -> dict[str, Any]:
    """A CPU copy of the weights that will train (θ₀ for full fine-tuning; taken before training)."""
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


class WeightBlend:
    """Full fine-tuning: θ₀ + α(θ₁ − θ₀) per weight; α = 0 and 1 copy θ₀ and θ₁ exactly."""

    def __init__(self, model: Any, base: Mapping[str, Any]) -> None:
        self.params = {n: p for n, p in model.named_parameters() if n in base}
        self.base = base
        self.trained = {n: p.detach().to("cpu", copy=True) for n, p in self.params.items()}
        self.encoder_trained = any(is_encoder(n) for n in self.params)

    def apply(self, candidate: Candidate) -> None:
        import torch

        with torch.no_grad():
            for name, param in self.params.items():
                alpha = candidate.encoder if is_encoder(name) else candidate.decoder
                base, trained = self.base[name], self.trained[name]
                value = base if alpha == 0 else trained if alpha == 1 else base + alpha * (trained - base)
                param.copy_(value.to(device=param.device, dtype=param.dtype))

    bake = apply


class AdapterBlend:
    """LoRA: every adapter layer's scaling times α (the encoder's and the decoder's apart); baked by
    scaling ``lora_B``'s weights instead, with the scaling restored."""

    def __init__(self, model: Any) -> None:
        from peft.tuners.lora import LoraLayer

        self.layers = [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]
        self.original = {n: dict(m.scaling) for n, m in self.layers}
        self.encoder_trained = any(
            is_encoder(n) and p.requires_grad for n, p in model.named_parameters() if "lora_" in n
        )

    def apply(self, candidate: Candidate) -> None:
        for name, layer in self.layers:
            alpha = candidate.encoder if is_encoder(name) else candidate.decoder
            for adapter, scaling in self.original[name].items():
                layer.scaling[adapter] = scaling * alpha

    def bake(self, candidate: Candidate) -> None:
        import torch

        self.apply(Candidate(1.0, 1.0))
        with torch.no_grad():
            for name, layer in self.layers:
                alpha = candidate.encoder if is_encoder(name) else candidate.decoder
                for lora_b in layer.lora_B.values():
                    lora_b.weight.mul_(alpha)  # type: ignore[operator]


def blend_for(model: Any, base: Mapping[str, Any] | None) -> Blend:
    """The blend of a trained model: its adapter for a peft model, else its weights against ``base``."""
    if hasattr(model, "peft_config"):
        return AdapterBlend(model)
    assert base is not None, "full fine-tuning needs the weights from before training"
    return WeightBlend(model, base)


@dataclass
class Kept:
    """What ``scale_back`` did: the ``keep`` block of metrics.json, and the chosen candidate's token ids
    on every choose half (decoded while choosing: the evaluation after training decodes only the report
    halves and takes these for the rest)."""

    report: dict[str, Any]
    choose_ids: dict[str, list[list[int]]] = field(default_factory=dict)

    def after(self, reported: PhaseOutput, sizes: Mapping[str, int]) -> PhaseOutput:
        """The evaluation after training over whole sets, from the report halves' (``reported``) and
        the choose halves' token ids; languages are detected on the report halves only ("" elsewhere)."""
        # lazy: keeps numpy out of this module's import
        from whisper_tune.evaluation.evaluate import PhaseOutput

        merged = PhaseOutput(seconds=reported.seconds)
        for name, size in sizes.items():
            halves = self.report["halves"][name]
            ids: list[list[int]] = [[] for _ in range(size)]
            for i, row in zip(halves["report"], reported.predictions[name], strict=True):
                ids[i] = row
            for i, row in zip(halves["choose"], self.choose_ids[name], strict=True):
                ids[i] = row
            merged.predictions[name] = ids
            if name in reported.languages:
                languages = [""] * size
                for i, code in zip(halves["report"], reported.languages[name], strict=True):
                    languages[i] = code
                merged.languages[name] = languages
        return merged


def scale_back(
    job: TrainJob,
    setup: TrainingSetup,
    model: Any,
    collator: Any,
    eval_sets: Mapping[str, Any],
    before: Mapping[str, list[list[int]]],
    base: Mapping[str, Any] | None,
    reporter: Reporter,
) -> Kept:
    """Choose (``eval.keep: auto``) or apply (a fixed α) how much of the change to keep and bake it into
    ``model``. ``before``: the pretrained model's token ids per set (from the evaluation before
    training; decoded here at α = 0 where missing)."""
    cfg, started = job.config, time.perf_counter()
    blend = blend_for(setup.accelerator.unwrap_model(model), base)
    keep = cfg.eval.keep
    if not isinstance(keep, str):
        chosen = Candidate(float(keep), float(keep))
        blend.bake(chosen)
        reporter.info(f"keep: {chosen.label} of the change (eval.keep={keep:g}), no selection")
        return Kept({"mode": "fixed", "chosen": {**vars(chosen), "label": chosen.label}})
    if len(eval_sets[PRIMARY]) < MIN_CLIPS:
        clips = len(eval_sets[PRIMARY])
        reason = f"the eval set has {clips} clips: too few to choose on one half and report on the other"
        reporter.info(f"keep: the whole change ({reason})")
        return Kept({"mode": "skipped", "reason": reason})
    seed = cfg.training.seed
    split = {name: halves(len(ds), name, seed) for name, ds in eval_sets.items()}
    choose = {name: Half(ds, split[name][0]) for name, ds in eval_sets.items()}
    candidates = candidate_grid(cfg.eval.keep_grid, blend.encoder_trained)
    reporter.info(
        f"keep: choosing among {len(candidates)} candidates ({', '.join(c.label for c in candidates)}) on "
        "one half of every eval set"
    )
    decode = _decoder(job, setup, model, collator, choose, reporter)
    baseline = {name: decode.counts(name, [before[name][i] for i in split[name][0]]) for name in before}
    if set(baseline) != set(choose):
        blend.apply(Candidate(0.0, 0.0))
        baseline = decode.all("pretrained")
    scores: dict[Candidate, dict[str, SetScore]] = {}
    ids: dict[Candidate, dict[str, list[list[int]]]] = {}
    for candidate in candidates:
        blend.apply(candidate)
        counts = decode.all(candidate.label)
        ids[candidate] = decode.ids
        scores[candidate] = {
            name: set_score(counts[name], baseline[name], set_margin(cfg, name)) for name in choose
        }
    decision = decide(candidates, scores)
    blend.bake(decision.chosen)
    report = _report(decision, candidates, scores, split, seed, time.perf_counter() - started)
    return Kept(report, ids[decision.chosen])


class _decoder:
    """Decodes the choose halves with the model as it is now and counts paired word errors per clip."""

    def __init__(
        self, job: TrainJob, setup: TrainingSetup, model: Any, collator: Any, sets: Mapping[str, Half],
        reporter: Reporter,
    ) -> None:  # fmt: skip
        cfg = job.config
        self.job, self.setup, self.model, self.collator, self.sets = job, setup, model, collator, sets
        self.reporter = reporter
        self.ids: dict[str, list[list[int]]] = {}
        self.tokenizer = setup.processor.tokenizer
        multilingual = is_multilingual(len(self.tokenizer))
        default = pick_normalizer(cfg.eval.normalizer, cfg.model.language, cfg.model.english_only)
        self.normalizers = {
            name: make_normalizer(normalizer_override(cfg, name, multilingual) or default) for name in sets
        }

    def counts(self, name: str, ids: list[list[int]]) -> list[tuple[int, int]]:
        texts = self.tokenizer.batch_decode([list(i) for i in ids], skip_special_tokens=True)
        return paired_counts([t.strip() for t in texts], self.sets[name].texts, self.normalizers[name])

    def all(self, label: str) -> dict[str, list[tuple[int, int]]]:
        """Every choose half decoded with the model as it is now: paired counts per set (the token ids
        stay in ``self.ids``)."""
        # lazy: keeps numpy out of this module's import
        from whisper_tune.evaluation.evaluate import evaluate_sets

        cfg = self.job.config
        out = evaluate_sets(
            self.model, self.sets, self.collator, model_cfg=cfg.model,
            eval_cfg=cfg.eval.model_copy(update={"detect_language": False}), phase=f"keep {label}",
            accelerator=self.setup.accelerator, reporter=self.reporter,
        )  # fmt: skip
        self.ids = out.predictions
        return {name: self.counts(name, ids) for name, ids in out.predictions.items()}


def _report(
    decision: Any,
    candidates: list[Candidate],
    scores: Mapping[Candidate, Mapping[str, SetScore]],
    split: Mapping[str, tuple[list[int], list[int]]],
    seed: int,
    seconds: float,
) -> dict[str, Any]:
    def sets(c: Candidate) -> dict[str, Any]:
        return {
            name: {
                "half": "choose",
                "wer": s.wer,
                "errors": s.errors,
                "words": s.words,
                "pretrained_errors": s.baseline_errors,
                "margin_words": round(s.allowed, 2),
                "within_margin": name == PRIMARY or s.excess <= 0,
            }
            for name, s in scores[c].items()
        }

    def described(c: Candidate) -> dict[str, Any]:
        passed = all(s.excess <= 0 for n, s in scores[c].items() if n != PRIMARY)
        return {"label": c.label, "encoder": c.encoder, "decoder": c.decoder, "passed": passed}

    return {
        "mode": "auto",
        "rule": RULE,
        "seed": seed,
        "candidates": [{**described(c), "sets": sets(c)} for c in candidates],
        "chosen": described(decision.chosen),
        "warning": decision.warning,
        "halves": {name: {"choose": ch, "report": rep} for name, (ch, rep) in split.items()},
        "seconds": round(seconds, 2),
    }


def keep_lines(report: Mapping[str, Any]) -> list[str]:
    """The console lines of a selection: every candidate on the choose half, then the choice."""
    if report.get("mode") == "skipped":
        return [f"keep: the whole change ({report['reason']})"]
    if report.get("mode") != "auto":
        chosen = report.get("chosen", {})
        return [f"keep: {chosen.get('label', '')} (fixed)"] if chosen else []
    lines = ["keep: candidates on the choose half (eval WER; each guard set's word errors vs pretrained):"]
    for c in report["candidates"]:
        sets = c["sets"]
        guards = ", ".join(
            f"{n} {s['errors']}/{s['pretrained_errors']}{'' if s['within_margin'] else ' (over margin)'}"
            for n, s in sets.items()
            if n != PRIMARY
        )
        primary = f"eval {sets[PRIMARY]['wer']:.1f}%" if PRIMARY in sets else "no eval set"
        lines.append(f"  {c['label']:<22} {primary}; {guards}{'' if c['passed'] else '  - fails a guard'}")
    chosen = report["chosen"]
    verdict = "every guard within its margin" if chosen["passed"] else "best-guarded"
    lines.append(
        f"keep: chose {chosen['label']} ({verdict}; {report['seconds']:.0f} s); the WER below is on the "
        "report half"
    )
    if report.get("warning"):
        lines.append(f"warning: keep: {report['warning']}")
    return lines
