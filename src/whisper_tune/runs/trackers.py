"""Experiment trackers (TensorBoard by default, or any tracker Accelerate supports by name).

Trackers are Accelerate's (``accelerate.tracking``): TensorBoard writes to ``<run dir>/tensorboard``. The
loss is logged live as training goes (in-process backends) and whatever a backend logged in another
process is written when it returns; WER/CER before and after, and the guard-rail numbers, at the end.
``training.report_to: [auto]`` means TensorBoard when the ``tensorboard`` package is installed.
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path
from typing import Any, get_args

from whisper_tune.config.schema import TrackerName
from whisper_tune.errors import ConfigError

#: accelerate.tracking.LOGGER_TYPE_TO_CLASS's names (a test keeps them in sync)
TRACKER_NAMES = tuple(name for name in get_args(TrackerName) if name not in ("auto", "none"))
TENSORBOARD_DIR = "tensorboard"


def resolve_names(report_to: tuple[str, ...]) -> list[str]:
    """``auto`` -> tensorboard if installed; ``none`` -> nothing; explicit names must be installed."""
    names: list[str] = []
    for name in report_to:
        if name == "none":
            continue
        if name == "auto":
            if find_spec("tensorboard") is not None and find_spec("accelerate") is not None:
                names.append("tensorboard")
            continue
        names.append(name)
    return list(dict.fromkeys(names))


def open_trackers(report_to: tuple[str, ...], run_dir: Path, config: dict[str, Any]) -> list[Any]:
    names = resolve_names(report_to)
    if not names:
        return []
    try:
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers
    except ImportError:
        raise ConfigError(
            "training.report_to needs Hugging Face Accelerate's trackers", hint="pip install accelerate"
        ) from None
    available = {str(t) for t in get_available_trackers()}
    trackers = []
    for name in names:
        if name not in available:
            raise ConfigError(
                f"training.report_to: the tracker '{name}' is not installed",
                hint=f"pip install {'tensorboard' if name == 'tensorboard' else name}, or remove it",
            )
        cls = LOGGER_TYPE_TO_CLASS[name]
        if cls.requires_logging_directory:
            tracker = cls(run_dir.name, str(run_dir / TENSORBOARD_DIR if name == "tensorboard" else run_dir))
        else:
            tracker = cls(run_dir.name)
        tracker.start()
        tracker.store_init_configuration(flatten(config))
        trackers.append(tracker)
    return trackers


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> {"training.learning_rate": ...} with scalar values (what trackers accept)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            out[name] = "null" if value is None else value
        else:
            out[name] = str(value)
    return out


def evaluation_scalars(evaluation: dict[str, dict[str, dict[str, Any]]]) -> dict[str, float]:
    """{"wer_before/eval": 23.5, "wer_after/eval": 5.6, ...} from metrics.json's evaluation block."""
    out: dict[str, float] = {}
    for phase, by_set in evaluation.items():
        for name, scores in by_set.items():
            for key in (
                "normalized_wer",
                "normalized_cer",
                "insertion_rate",
                "repeated_ngram_rate",
                "language_share",
            ):
                value = scores.get(key)
                if isinstance(value, (int, float)):
                    out[f"{key}_{phase}/{name}"] = float(value)
    return out
