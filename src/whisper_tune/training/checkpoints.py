"""The checkpoint folder format, ours on every backend: ``checkpoints/step-NNNNNN/``.

::

    step-000010/
      weights/                      the backend's weights format (full model, or the LoRA adapter only)
      optimizer.pt                  optimizer state (or optimizer-rankNNNNN.pt per process when sharded)
      scheduler.pt                  learning-rate schedule state
      rng-rankNNNNN.safetensors     Python, NumPy, torch (and CUDA) RNG states of each process
      trainer_state.json            step, loss history, process count

A checkpoint is written to ``.step-NNNNNN.partial`` and renamed into place when complete, so a crash
never leaves a half-written ``step-*`` folder; older ones beyond ``save_total_limit`` are pruned.

Nothing here is unpickled: the RNG states are tensors and strings in a safetensors file, the optimizer
and scheduler states load with ``torch.load(weights_only=True)`` (tensors, numbers, lists, dicts only),
the weights are safetensors. A file that is missing or damaged is a ``ConfigError`` naming that file,
with the previous checkpoint (when there is one) as the way out — unlike Accelerate's ``load_state``,
which logs and continues when RNG states fail to load.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from whisper_tune.errors import ConfigError

STATE_FILE = "trainer_state.json"
CHECKPOINT_RE = re.compile(r"^step-(\d+)$")
LEGACY_RNG_FILE = "rng.pt"


def list_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """Finished ``step-*`` checkpoints, oldest first."""
    found = [
        p for p in checkpoint_dir.glob("step-*") if CHECKPOINT_RE.match(p.name) and (p / STATE_FILE).is_file()
    ]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def rng_file(rank: int) -> str:
    return f"rng-rank{rank:05d}.safetensors"


def optimizer_file(rank: int | None) -> str:
    """``optimizer.pt`` (one state for all processes) or ``optimizer-rankNNNNN.pt`` (sharded)."""
    return "optimizer.pt" if rank is None else f"optimizer-rank{rank:05d}.pt"


def damaged(checkpoint: Path, name: str, reason: str) -> ConfigError:
    """The error for a missing or unreadable file of ``checkpoint``, pointing at the previous one."""
    earlier = [p for p in list_checkpoints(checkpoint.parent) if p.name < checkpoint.name]
    hint = (
        f"resume from the previous checkpoint: training.resume_from={earlier[-1]}"
        if earlier
        else "start the run again without training.resume_from"
    )
    return ConfigError(f"cannot resume from {checkpoint}: {name} is {reason}", hint=hint)


# --- RNG state, without pickle -------------------------------------------------------------------


def save_rng(path: Path) -> None:
    """This process's Python, NumPy, torch and CUDA RNG states as a safetensors file."""
    import torch
    from safetensors.torch import save_file

    version, py_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    tensors = {
        "python": torch.tensor(py_state, dtype=torch.int64),
        "numpy": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "torch": torch.random.get_rng_state(),
    }
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = state
    metadata = {
        "python_version": str(version),
        "python_gauss": repr(gauss),
        "numpy_kind": str(kind),
        "numpy_pos": str(pos),
        "numpy_has_gauss": str(has_gauss),
        "numpy_cached": repr(float(cached)),
    }
    save_file(tensors, str(path), metadata=metadata)


def restore_rng(checkpoint: Path, rank: int = 0) -> None:
    """Restore this process's RNG states from ``checkpoint`` (rank 0's when it has none of its own,
    i.e. resuming with more processes than wrote it). A damaged file is an error naming it."""
    import torch
    from safetensors import safe_open

    name = rng_file(rank) if (checkpoint / rng_file(rank)).is_file() else rng_file(0)
    path = checkpoint / name
    if not path.is_file():
        if (checkpoint / LEGACY_RNG_FILE).is_file():
            raise ConfigError(
                f"cannot resume from {checkpoint}: it was written by an older whisper-tune "
                f"({LEGACY_RNG_FILE}, a pickle, which is never loaded)",
                hint="start the run again without training.resume_from",
            )
        raise damaged(checkpoint, name, "missing")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            tensors = {key: f.get_tensor(key) for key in f.keys()}
        gauss = None if meta["python_gauss"] == "None" else float(meta["python_gauss"])
        py_state = tuple(int(x) for x in tensors["python"].tolist())
        np_state = (
            meta["numpy_kind"],
            tensors["numpy"].numpy().astype(np.uint32),
            int(meta["numpy_pos"]),
            int(meta["numpy_has_gauss"]),
            float(meta["numpy_cached"]),
        )
        random.setstate((int(meta["python_version"]), py_state, gauss))
        np.random.set_state(np_state)
        torch.random.set_rng_state(tensors["torch"])
        cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda")]
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    except Exception as exc:  # any way a file can be damaged: truncated, edited, wrong types
        raise damaged(checkpoint, name, f"damaged ({type(exc).__name__}: {exc})".splitlines()[0]) from None


# --- trainer state, optimizer and scheduler -----------------------------------------------------


def write_state(directory: Path, step: int, history: list[dict[str, float]], **extra: Any) -> None:
    (directory / STATE_FILE).write_text(
        json.dumps({"step": step, "log_history": history, **extra}, indent=1), encoding="utf-8"
    )


def read_state(checkpoint: Path) -> tuple[int, list[dict[str, float]]]:
    """(step, log history) of a checkpoint; a ConfigError naming the file if it cannot be read."""
    try:
        state = json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))
        step, history = int(state["step"]), list(state["log_history"])
        if step < 0 or not all(isinstance(r, dict) for r in history):
            raise ValueError("step or log_history has the wrong form")
    except FileNotFoundError:
        raise damaged(checkpoint, STATE_FILE, "missing") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise damaged(checkpoint, STATE_FILE, f"damaged ({exc})") from None
    return step, history


def load_tensors_file(checkpoint: Path, name: str) -> Any:
    """``torch.load`` of an optimizer / scheduler state, tensors and plain containers only (no pickle
    of arbitrary objects); a ConfigError naming the file when it is missing or damaged."""
    import torch

    path = checkpoint / name
    if not path.is_file():
        raise damaged(checkpoint, name, "missing")
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:
        raise damaged(checkpoint, name, f"damaged ({type(exc).__name__})") from None


@dataclass(frozen=True)
class Totals:
    """What every training session up to a checkpoint saw, all processes together."""

    #: rows of the batches: clips, or windows with data.packing
    samples: int = 0
    seconds: float = 0.0
    #: clips inside those rows (= samples without packing)
    clips: int = 0
    #: seconds of speech audio in them
    audio_seconds: float = 0.0


def read_totals(checkpoint: Path) -> Totals:
    """The ``Totals`` recorded in ``checkpoint`` (0 for checkpoints written before they were recorded;
    clips = samples for checkpoints written before clips were counted)."""
    try:
        state = json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))
        samples = int(state.get("samples", 0))
        return Totals(
            samples,
            float(state.get("seconds", 0.0)),
            int(state.get("clips", samples)),
            float(state.get("audio_seconds", 0.0)),
        )
    except (OSError, ValueError, TypeError):
        return Totals()


def publish_checkpoint(tmp: Path, target: Path, keep: int) -> list[Path]:
    """Move a finished ``.partial`` checkpoint into place and prune all but the newest ``keep``."""
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    for old in list_checkpoints(target.parent)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return list_checkpoints(target.parent)
