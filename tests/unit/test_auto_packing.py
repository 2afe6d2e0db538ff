"""data.packing.enabled unset: the decision from a prepared training set's mean clip length, and the
config it resolves to (data/auto_packing.py); the IPU backend's default."""

from __future__ import annotations

from pathlib import Path

import pytest

from whisper_tune import load_config
from whisper_tune.data.auto_packing import AUTO_TIMESTAMP_FRACTION, PackingDecision, decide, resolve


def test_a_set_value_is_not_second_guessed() -> None:
    for value in ("true", "false"):
        assert decide(load_config("quickstart", [f"data.packing.enabled={value}"]), None) is None


def test_short_clips_pack_long_ones_do_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The decision alone (a real prepared set's mean: test_packing_runs.py)."""
    from whisper_tune.data import auto_packing

    sizes = {"short": (240, 660.0), "long": (10, 200.0)}
    monkeypatch.setattr(auto_packing, "mean_clip_seconds", lambda d: sizes[d.name][1] / sizes[d.name][0])
    config = load_config("quickstart")
    short = decide(config, tmp_path / "short")
    assert short is not None and short.enabled and short.mean_clip_seconds == 2.75
    assert "2.8 s, under data.packing.auto_below_s = 15 s" in short.reason and "20%" in short.reason
    long = decide(config, tmp_path / "long")
    assert long is not None and not long.enabled and "20.0 s" in long.reason
    streamed = decide(config, None)
    assert streamed is not None and not streamed.enabled and "streams" in streamed.reason


def test_the_resolved_config_packs_with_a_fifth_timestamped_unless_set() -> None:
    on = PackingDecision(True, "on", 2.75)
    resolved = resolve(load_config("quickstart"), on)
    assert (
        resolved.data.packing.enabled is True and resolved.data.timestamp_fraction == AUTO_TIMESTAMP_FRACTION
    )
    assert resolved.data.windowed
    kept = resolve(load_config("quickstart", ["data.timestamp_fraction=0.5"]), on)
    assert kept.data.timestamp_fraction == 0.5
    off = resolve(load_config("quickstart"), PackingDecision(False, "off", 20.0))
    assert off.data.packing.enabled is False and off.data.timestamp_fraction is None
    assert not off.data.windowed and off.data.timestamp_share == 1.0
    # explicitly packed (no decision): every window timestamped, as before
    explicit = load_config("quickstart", ["data.packing=true"])
    assert resolve(explicit, None) is explicit and explicit.data.timestamp_share == 1.0


def test_the_ipu_backend_trains_clips_as_they_are() -> None:
    config = load_config("quickstart", ["backend.name=ipu", "model.name=openai/whisper-tiny"])
    assert config.data.packing.enabled is False
    # a short form that sets the section sets the key: the backend's default does not override it
    asked = load_config(
        "quickstart", ["backend.name=ipu", "model.name=openai/whisper-tiny", "data.packing=true"]
    )
    assert asked.data.packing.enabled is True
