"""``data.packing.enabled`` left unset: pack the training set when its clips are short.

Once the training set is prepared its manifest says how long its clips are on average. Under
``data.packing.auto_below_s`` (15 s) the run packs them into 30 s windows (``data/packing.py``), a fifth
of the windows labelled with timestamps unless ``data.timestamp_fraction`` says otherwise: the setting
docs/benchmarks.md measured against unpacked training with the default recipe (packing's table: at equal
training time fewer word errors in domain and on both guard sets, at equal audio within a point). Long
clips gain little from packing (a 25 s clip fills its window anyway) and stay as they are; so does a
streamed training set, which has no prepared set to pack. ``data.packing.enabled`` true or false decides
instead, and the run says which way it went and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from whisper_tune.config.schema import RunConfig

#: the share of automatically packed windows labelled with timestamps (distil-whisper's 0.2; the
#: setting packing's benchmark measured)
AUTO_TIMESTAMP_FRACTION = 0.2


@dataclass(frozen=True)
class PackingDecision:
    enabled: bool
    #: one line for the console and metrics.json: what was decided and why
    reason: str
    mean_clip_seconds: float | None = None

    def report(self) -> dict[str, object]:
        return {"auto": True, "enabled": self.enabled, "reason": self.reason,
                "mean_clip_seconds": self.mean_clip_seconds}  # fmt: skip


def mean_clip_seconds(train_dir: Path) -> float:
    """Seconds of audio per clip of a prepared training set (from its manifest)."""
    # lazy: keeps numpy out of this module's import
    from whisper_tune.data.store import PreparedDataset

    manifest = PreparedDataset(train_dir).manifest
    return float(manifest["total_seconds"]) / max(int(manifest["num_samples"]), 1)


def decide(config: RunConfig, train_dir: Path | None) -> PackingDecision | None:
    """What ``data.packing.enabled`` unset means for this run's training set (None: it was set)."""
    packing = config.data.packing
    if packing.enabled is not None:
        return None
    if train_dir is None:
        return PackingDecision(False, "packing: off (the training set streams: no prepared set to pack)")
    mean = mean_clip_seconds(train_dir)
    if mean < packing.auto_below_s:
        share = config.data.timestamp_fraction
        share = AUTO_TIMESTAMP_FRACTION if share is None else share
        return PackingDecision(
            True,
            f"packing: on (training clips average {mean:.1f} s, under data.packing.auto_below_s = "
            f"{packing.auto_below_s:g} s): clips joined into 30 s windows, {share:.0%} of them with "
            "timestamps, training.batch_size counts windows; data.packing.enabled=false trains on the clips "
            "as they are",
            round(mean, 2),
        )
    return PackingDecision(
        False,
        f"packing: off (training clips average {mean:.1f} s, not under data.packing.auto_below_s = "
        f"{packing.auto_below_s:g} s); data.packing.enabled=true packs them",
        round(mean, 2),
    )


def resolve(config: RunConfig, decision: PackingDecision | None) -> RunConfig:
    """``config`` with the decision written in: ``data.packing.enabled`` true or false, and when packed
    automatically, ``data.timestamp_fraction`` (if unset) the measured 0.2."""
    if decision is None:
        return config
    data = config.data
    update: dict[str, object] = {"packing": data.packing.model_copy(update={"enabled": decision.enabled})}
    if decision.enabled and data.timestamp_fraction is None:
        update["timestamp_fraction"] = AUTO_TIMESTAMP_FRACTION
    return config.model_copy(update={"data": data.model_copy(update=update)})
