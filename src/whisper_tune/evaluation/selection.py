"""Keeping only as much of a fine-tune's change as held-out sets allow: the pure part (no torch).

After training, candidates θ(α) = θ₀ + α(θ₁ − θ₀) — for LoRA the adapter scaled by α — are decoded on one
seeded half of every eval set (the *choose* half); the run reports on the other half (the *report* half),
so no reported number was used to choose. The rule (``eval.keep: auto``), documented in
docs/guard-rails.md:

1. A candidate **passes** when, on every guard set (every eval set but the run's own ``eval``), its word
   errors on the choose half exceed the pretrained model's on the same clips (paired) by no more than the
   set's margin (``regression_margin`` points, turned into words: margin × words / 100).
2. Among passing candidates, the lowest ``eval`` word errors wins; ties go to the smaller α.
3. If none passes, the best-guarded candidate (the smallest worst excess over a margin, in words) is
   kept, with a warning that says so.

``training/scale_back.py`` builds and decodes the candidates; this module splits the halves, counts
paired word errors and applies the rule.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: the run's own eval set: what selection minimises; every other set is a guard
PRIMARY = "eval"
#: an eval set smaller than this cannot be split into a half to choose on and a half to report on
MIN_CLIPS = 4


@dataclass(frozen=True)
class Candidate:
    """How much of the change a candidate keeps: α for the encoder's weights and for the rest (decoder).
    (1, 1) is the fine-tune as trained, (0, 0) the pretrained model."""

    encoder: float
    decoder: float

    @property
    def label(self) -> str:
        if self.encoder == self.decoder:
            return f"α={self.decoder:g}"
        return f"α_enc={self.encoder:g} α_dec={self.decoder:g}"

    @property
    def size(self) -> float:
        """How much it keeps overall: ties go to the smaller."""
        return self.encoder + self.decoder


def candidate_grid(grid: Sequence[float] | None, encoder_trained: bool) -> list[Candidate]:
    """The candidates of ``eval.keep: auto`` (at most 6 by default): whole-model α over a grid of 4 (each
    candidate is a decode of every choose half: 4 keep the quickstart's selection within half its
    time); where the encoder trained, also the encoder's α apart from the decoder's (encoder 0 and
    0.5, decoder 1)."""
    if grid:
        return [Candidate(a, a) for a in sorted(set(grid))]
    whole = [Candidate(a, a) for a in (0.25, 0.5, 0.75, 1.0)]
    return [*whole, Candidate(0.0, 1.0), Candidate(0.5, 1.0)] if encoder_trained else whole


def halves(size: int, name: str, seed: int) -> tuple[list[int], list[int]]:
    """(choose, report): a seeded split of a set's clip indices into two halves (the choose half gets the
    smaller one when ``size`` is odd). A set of one clip is used for both: it cannot be split."""
    if size < 2:
        return list(range(size)), list(range(size))
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    order = list(range(size))
    random.Random(int.from_bytes(digest[:8], "big")).shuffle(order)
    return sorted(order[: size // 2]), sorted(order[size // 2 :])


def clip_errors(hypotheses: Sequence[str], references: Sequence[str]) -> list[tuple[int, int]]:
    """(word errors, reference words) per clip, on texts already normalised; a clip whose reference is
    empty counts (0, 0), as the normalised WER skips it."""
    import jiwer

    counts: list[tuple[int, int]] = []
    for hyp, ref in zip(hypotheses, references, strict=True):
        if not ref.split():
            counts.append((0, 0))
            continue
        out = jiwer.process_words(ref, hyp)
        counts.append((out.substitutions + out.deletions + out.insertions, len(ref.split())))
    return counts


@dataclass(frozen=True)
class SetScore:
    """Word errors of one candidate on one set's choose half, and of the pretrained model on it."""

    errors: int
    words: int
    baseline_errors: int
    #: the margin in words (``regression_margin`` points of this half's words)
    allowed: float

    @property
    def wer(self) -> float:
        return round(100.0 * self.errors / self.words, 3) if self.words else 0.0

    @property
    def excess(self) -> float:
        """Paired word errors beyond the pretrained model's and the margin (≤ 0: within it)."""
        return self.errors - self.baseline_errors - self.allowed


def set_score(
    errors: Sequence[tuple[int, int]], baseline: Sequence[tuple[int, int]], margin_points: float
) -> SetScore:
    words = sum(w for _, w in errors)
    return SetScore(
        errors=sum(e for e, _ in errors),
        words=words,
        baseline_errors=sum(e for e, _ in baseline),
        allowed=margin_points * words / 100.0,
    )


@dataclass
class Decision:
    chosen: Candidate
    #: the chosen candidate passed every guard set
    passed: bool
    #: per candidate label: set name -> its score on the choose half
    scores: dict[str, dict[str, SetScore]] = field(default_factory=dict)
    warning: str | None = None


def decide(candidates: Sequence[Candidate], scores: Mapping[Candidate, Mapping[str, SetScore]]) -> Decision:
    """The rule of this module's docstring over ``scores`` (candidate -> set -> SetScore)."""

    def guards(c: Candidate) -> list[SetScore]:
        return [s for name, s in scores[c].items() if name != PRIMARY]

    def primary(c: Candidate) -> float:
        s = scores[c].get(PRIMARY)
        return s.errors / s.words if s is not None and s.words else 0.0

    passing = [c for c in candidates if all(s.excess <= 0 for s in guards(c))]
    labelled = {c.label: dict(scores[c]) for c in candidates}
    if passing:
        best = min(passing, key=lambda c: (primary(c), c.size))
        return Decision(best, True, labelled)
    best = min(candidates, key=lambda c: (max((s.excess for s in guards(c)), default=0.0), c.size))
    worst = max(guards(best), key=lambda s: s.excess)
    name = next(n for n, s in scores[best].items() if s is worst)
    warning = (
        f"no candidate kept every guard set within its margin; kept the best-guarded, {best.label} "
        f"({name}: {worst.errors} word errors against the pretrained model's {worst.baseline_errors}, "
        f"margin {worst.allowed:.1f} words)"
    )
    return Decision(best, False, labelled, warning)


class Half:
    """The clips ``indices`` of a prepared set, seen as a set of their own (``len``, ``[i]``, ``texts``,
    ``languages``), for decoding one half."""

    def __init__(self, dataset: Any, indices: Sequence[int]) -> None:
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[self.indices[index]]

    @property
    def texts(self) -> list[str]:
        texts = self.dataset.texts
        return [texts[i] for i in self.indices]

    @property
    def languages(self) -> list[str | None]:
        languages = getattr(self.dataset, "languages", None) or [None] * len(self.dataset)
        return [languages[i] for i in self.indices]


def paired_counts(
    hypotheses: Sequence[str], references: Sequence[str], normalizer: Callable[[str], str]
) -> list[tuple[int, int]]:
    """``clip_errors`` after Whisper's normaliser on both sides (as the normalised WER scores)."""
    return clip_errors([normalizer(h) for h in hypotheses], [normalizer(r) for r in references])


@dataclass(frozen=True)
class CrossFit:
    """Selection cross-fitted: chosen on half A and scored on half B, then chosen on B and scored on A, so
    every clip is scored once by a choice made without it. Per set: the chosen candidates' word errors
    over both report halves, the pretrained model's on the same clips, and their words; ``clip_errors``
    holds each clip's word errors under the choice that scored it (for paired per-clip statistics)."""

    chosen: tuple[Candidate, Candidate]
    errors: dict[str, int]
    baseline: dict[str, int]
    words: dict[str, int]
    clip_errors: dict[str, list[int]] = field(default_factory=dict)

    def change(self, name: str) -> int:
        """Paired word errors against the pretrained model on ``name`` (negative: fewer errors)."""
        return self.errors[name] - self.baseline[name]


def cross_fit(
    candidates: Sequence[Candidate],
    clips: Mapping[Candidate, Mapping[str, Sequence[tuple[int, int]]]],
    baseline: Mapping[str, Sequence[tuple[int, int]]],
    split: Mapping[str, tuple[Sequence[int], Sequence[int]]],
    margins: Mapping[str, float],
) -> CrossFit:
    """The rule of this module's docstring, cross-fitted (for sets too small to give up half to
    choosing): ``clips`` holds every candidate's (word errors, words) on every clip of every set (the
    run's own set named ``PRIMARY``), ``baseline`` the pretrained model's, ``split`` each set's two
    halves and ``margins`` each guard set's margin in points."""
    names = list(baseline)
    errors, base, words = dict.fromkeys(names, 0), dict.fromkeys(names, 0), dict.fromkeys(names, 0)
    per_clip = {name: [0] * len(baseline[name]) for name in names}
    chosen: list[Candidate] = []
    for side in (0, 1):

        def pick(rows: Sequence[tuple[int, int]], name: str, s: int) -> list[tuple[int, int]]:
            return [rows[i] for i in split[name][s]]

        scores = {
            c: {
                name: set_score(
                    pick(clips[c][name], name, side), pick(baseline[name], name, side),
                    0.0 if name == PRIMARY else margins[name],
                )
                for name in names
            }
            for c in candidates
        }  # fmt: skip
        choice = decide(candidates, scores).chosen
        chosen.append(choice)
        for name in names:
            errors[name] += sum(e for e, _ in pick(clips[choice][name], name, 1 - side))
            base[name] += sum(e for e, _ in pick(baseline[name], name, 1 - side))
            words[name] += sum(w for _, w in pick(baseline[name], name, 1 - side))
            for i in split[name][1 - side]:
                per_clip[name][i] = clips[choice][name][i][0]
    return CrossFit((chosen[0], chosen[1]), errors, base, words, per_clip)
