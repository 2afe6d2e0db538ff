"""Guard rails that catch a fine-tune quietly breaking Whisper.

* A regression set, evaluated before and after like every eval set, whose WER must not rise by more than
  ``eval.regression_margin``: by default a small slice shipped with whisper-tune (multilingual speech for
  multilingual models, other-domain English for English-only ones) plus 61 real English recordings
  (``real-speech``, 4.5 min), or any ``data.extra_eval`` set. Every set other than the run's own eval set is
  watched the same way: a fine-tune that gains in domain and loses another voice or real speech warns.
* Language retention: for multilingual models, the share of eval clips Whisper's own language detection
  still assigns to the configured language (or each row's language), before and after.
* Hallucination signals (insertion rate, repeated n-gram rate) are in every set's metrics
  (``evaluation.metrics``) and in the report lines here when they rise.

The run warns (log and ``metrics.json`` ``guard.warnings``; every watched set's before/after/margin is in
``guard.sets``); by default it does not fail, since a rise can be the price a user accepts for a domain
gain. ``eval.fail_on_regression`` makes any warning an error (exit code 9) once everything is written,
for pipelines. The thresholds are config fields: ``eval.regression_margin`` and each extra set's own
``regression_margin``.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from whisper_tune.config.schema import BUNDLED_REGRESSION, DataConfig, EvalSetConfig, RunConfig

REGRESSION_SET = "regression"
#: 61 real recordings bundled beside the regression slice (LibriVox, CMU pocketsphinx and ARCTIC, JFK,
#: praatio, Asterisk prompts; sources and licences in assets/regression/README.md)
REAL_SPEECH_SET = "real-speech"
#: a hallucination signal rising by more than this many points is reported next to the WER change
SIGNAL_MARGIN = 2.0


def bundled_regression_dir() -> Path:
    return Path(str(resources.files("whisper_tune.evaluation") / "assets" / "regression"))


def regression_set_name(config: RunConfig) -> str | None:
    """Name of the regression set in reports, or None when the run has none."""
    value = config.eval.regression_set
    return REGRESSION_SET if value == BUNDLED_REGRESSION else value


def with_regression_set(config: RunConfig, multilingual: bool) -> DataConfig:
    """The data section with the bundled regression slice added as an extra eval set (when configured)."""
    if config.eval.regression_set != BUNDLED_REGRESSION:
        return config.data
    root = bundled_regression_dir()
    bundled = EvalSetConfig(
        name=REGRESSION_SET,
        dataset=str(root / ("multilingual.csv" if multilingual else "english.csv")),
        split="all",
        audio_column="audio",
        text_column="text",
        language_column="language" if multilingual else None,
    )
    real = EvalSetConfig(
        name=REAL_SPEECH_SET,
        dataset=str(root / "real-speech.csv"),
        split="all",
        audio_column="audio",
        text_column="text",
        language_column="language" if multilingual else None,
    )
    taken = {s.name for s in config.data.extra_eval}
    added = [s for s in (bundled, real) if s.name not in taken]
    return config.data.model_copy(update={"extra_eval": (*config.data.extra_eval, *added)})


def normalizer_override(config: RunConfig, set_name: str, multilingual: bool) -> str | None:
    """The bundled multilingual slice is scored with the basic normaliser whatever the run's language."""
    bundled = config.eval.regression_set == BUNDLED_REGRESSION
    return "basic" if bundled and multilingual and set_name == REGRESSION_SET else None


def language_share(detected: Sequence[str], expected: Sequence[str | None]) -> float | None:
    """Percent of clips detected as their expected language (clips with no expected language skipped)."""
    pairs = [(d, e) for d, e in zip(detected, expected, strict=True) if e]
    if not pairs:
        return None
    return round(100.0 * sum(d == e for d, e in pairs) / len(pairs), 2)


def set_margin(config: RunConfig, set_name: str) -> float:
    """How many WER points ``set_name`` may rise: its own ``regression_margin``, else the run's."""
    for extra in config.data.extra_eval:
        if extra.name == set_name and extra.regression_margin is not None:
            return extra.regression_margin
    return config.eval.regression_margin


def guard_report(config: RunConfig, evaluation: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """The ``guard`` block of metrics.json: regression-set change, language retention, hallucination
    signals, and the warnings they raise."""
    before, after = evaluation.get("before", {}), evaluation.get("after", {})
    warnings: list[str] = []
    report: dict[str, Any] = {"regression": None, "language_share": {}, "warnings": warnings}
    name = regression_set_name(config)
    if name and name in before and name in after:
        b, a = before[name]["normalized_wer"], after[name]["normalized_wer"]
        change = round(a - b, 3)
        margin = set_margin(config, name)
        report["regression"] = {
            "set": name,
            "before": b,
            "after": a,
            "change": change,
            "margin": margin,
            "regressed": change > margin,
        }
        if change > margin:
            warnings.append(
                f"regression set '{name}': WER rose {b:.1f}% -> {a:.1f}% (+{change:.1f} points, margin "
                f"{margin:g}): the fine-tune may have cost general ability"
            )
    report["sets"] = {}
    for set_name in before:
        if set_name == "eval" or set_name not in after:
            continue
        b, a = before[set_name]["normalized_wer"], after[set_name]["normalized_wer"]
        change = round(a - b, 3)
        margin = set_margin(config, set_name)
        report["sets"][set_name] = {
            "before": b,
            "after": a,
            "change": change,
            "margin": margin,
            "regressed": change > margin,
        }
        if set_name != name and change > margin:  # the regression set's warning is above
            warnings.append(
                f"{set_name}: WER rose {b:.1f}% -> {a:.1f}% (+{change:.1f} points, margin "
                f"{margin:g}): the fine-tune made this set worse"
            )
    for set_name in dict.fromkeys([*before, *after]):
        shares = {
            phase: evaluation.get(phase, {}).get(set_name, {}).get("language_share")
            for phase in ("before", "after")
        }
        if all(v is None for v in shares.values()):
            continue
        report["language_share"][set_name] = shares
        b_share, a_share = shares["before"], shares["after"]
        if (
            b_share is not None
            and a_share is not None
            and b_share - a_share > config.eval.language_drop_margin
        ):
            warnings.append(
                f"{set_name}: clips detected as their language fell {b_share:.0f}% -> {a_share:.0f}%: "
                "the model is losing its language identification"
            )
    for set_name in dict.fromkeys([*before, *after]):
        if set_name not in before or set_name not in after:
            continue
        for signal in ("insertion_rate", "repeated_ngram_rate"):
            b_sig, a_sig = before[set_name].get(signal), after[set_name].get(signal)
            if b_sig is not None and a_sig is not None and a_sig - b_sig > SIGNAL_MARGIN:
                warnings.append(
                    f"{set_name}: {signal.replace('_', ' ')} rose {b_sig:.1f}% -> {a_sig:.1f}% "
                    "(a hallucination signal)"
                )
    return report
