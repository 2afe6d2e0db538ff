"""Plan an epoch's training windows: short clips joined into windows of at most 30 s (``data.packing``).

A pure function of the clips' lengths (audio samples and label tokens), the rules, the seed and the epoch:
the same inputs give the same windows, every process and every resumed run alike. The clips are taken
in a seeded order; each goes into the window being filled when it fits there — its audio after a gap of
``gap_s``, the window's audio within ``max_window_s`` and its labels within ``max_label_tokens`` — else
that window is closed and a new one started. Clips of different decoder prefixes (per-row languages)
never share a window. With ``random_offset`` a window's clips are shifted together by a seeded amount
of its free time. No-speech windows (``no_speech_fraction``) are added and the windows put in a seeded
order. With ``timestamp_fraction`` < 1 a seeded draw per window (its own generator: the placements do
not depend on it) says which windows are labelled with timestamps. Times are in timestamp steps (0.02 s, 320
samples): every clip starts on a step.

``data/windows.py`` turns a plan into audio and labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from whisper_tune.config.schema import DataConfig
from whisper_tune.data.timestamps import MAX_STEPS, SAMPLES_PER_STEP, to_steps

#: no-speech windows last at least this many steps (1 s)
MIN_NO_SPEECH_STEPS = 50
#: mixed into the seed, so packing draws differ from other seeded draws of the run
PLAN_SALT = 0x5041434B
#: the draw of which windows carry timestamps has its own generator: the placements do not depend on it
TIMESTAMP_DRAW = 1


@dataclass(frozen=True)
class Clip:
    """What planning needs of one training clip."""

    samples: int
    #: label tokens the clip adds to a window: its text and two timestamps per segment
    tokens: int
    #: tokens of its decoder prefix (<|startoftranscript|> [+ language + task])
    prefix: int
    #: clips of different groups (decoder prefixes) never share a window
    group: int = 0

    @property
    def steps(self) -> int:
        """Timestamp steps its audio covers (rounded up)."""
        return -(-self.samples // SAMPLES_PER_STEP)


@dataclass(frozen=True)
class Placement:
    clip: int
    #: where the clip's audio starts, in steps from the window's start
    start: int


@dataclass(frozen=True)
class Window:
    """A training window: clips at their places, or no speech (silence or noise)."""

    placements: tuple[Placement, ...] = ()
    #: a no-speech window: its length in steps, its noise level (0: silence) and the noise's seed
    no_speech_steps: int = 0
    noise_level: float = 0.0
    noise_seed: int = 0
    #: labelled in Whisper's timestamp format; else <|notimestamps|> and the texts (data.timestamp_fraction)
    timestamps: bool = True

    @property
    def no_speech(self) -> bool:
        return not self.placements


@dataclass(frozen=True)
class Rules:
    """How windows are filled (from ``data``)."""

    pack: bool = True
    gap_steps: int = 15
    window_steps: int = MAX_STEPS
    max_tokens: int = 448
    random_offset: bool = False
    no_speech_fraction: float = 0.0
    timestamp_fraction: float = 1.0

    @classmethod
    def from_config(cls, data: DataConfig) -> Rules:
        packing = data.packing
        return cls(
            pack=bool(packing.enabled),
            gap_steps=to_steps(packing.gap_s),
            window_steps=min(MAX_STEPS, int(packing.max_window_s / 0.02 + 1e-6)),
            max_tokens=data.max_label_tokens,
            random_offset=packing.random_offset,
            no_speech_fraction=data.no_speech_fraction,
            timestamp_fraction=data.timestamp_share,
        )


@dataclass
class Plan:
    windows: list[Window] = field(default_factory=list)
    #: clips that fit no window on their own (audio or labels too long with timestamps)
    unfit: list[int] = field(default_factory=list)


def rng_for(seed: int, epoch: int, *more: int) -> np.random.Generator:
    """The seeded generator of an epoch's plan (NumPy, never the global RNG)."""
    return np.random.default_rng([seed % 2**32, epoch, PLAN_SALT, *more])


def fits_alone(clip: Clip, rules: Rules) -> bool:
    return clip.steps <= rules.window_steps and clip.prefix + clip.tokens + 1 <= rules.max_tokens


def plan_windows(clips: Sequence[Clip], rules: Rules, seed: int, epoch: int) -> Plan:
    """The windows of epoch ``epoch``: every clip that fits a window on its own in exactly one."""
    rng = rng_for(seed, epoch)
    plan = Plan()
    # group -> (placements, end step of the last clip, label tokens so far)
    open_windows: dict[int, tuple[list[Placement], int, int]] = {}
    closed: list[list[Placement]] = []
    for index in rng.permutation(len(clips)).tolist():
        clip = clips[index]
        if not fits_alone(clip, rules):
            plan.unfit.append(index)
            continue
        current = open_windows.get(clip.group)
        if current is not None:
            placements, end, tokens = current
            start = end + rules.gap_steps
            if (
                rules.pack
                and start + clip.steps <= rules.window_steps
                and tokens + clip.tokens <= rules.max_tokens
            ):
                placements.append(Placement(index, start))
                open_windows[clip.group] = (placements, start + clip.steps, tokens + clip.tokens)
                continue
            closed.append(placements)
        open_windows[clip.group] = ([Placement(index, 0)], clip.steps, clip.prefix + 1 + clip.tokens)
    closed.extend(placements for placements, _, _ in open_windows.values())
    plan.unfit.sort()
    windows = []
    for placements in closed:
        if rules.random_offset:
            end = max(p.start + clips[p.clip].steps for p in placements)
            shift = int(rng.integers(0, rules.window_steps - end + 1))
            placements = [Placement(p.clip, p.start + shift) for p in placements]
        windows.append(Window(tuple(placements)))
    fraction = rules.no_speech_fraction
    for _ in range(round(fraction * len(windows) / (1 - fraction)) if windows else 0):
        steps = int(rng.integers(MIN_NO_SPEECH_STEPS, rules.window_steps + 1))
        level = 0.0 if rng.random() < 0.5 else float(10 ** rng.uniform(-3.5, -1.5))
        windows.append(Window(no_speech_steps=steps, noise_level=level, noise_seed=int(rng.integers(2**31))))
    plan.windows = [windows[i] for i in rng.permutation(len(windows)).tolist()]
    if rules.timestamp_fraction < 1:
        draws = rng_for(seed, epoch, TIMESTAMP_DRAW).random(len(plan.windows)).tolist()
        plan.windows = [
            w if w.no_speech else replace(w, timestamps=draw < rules.timestamp_fraction)
            for w, draw in zip(plan.windows, draws, strict=True)
        ]
    return plan
