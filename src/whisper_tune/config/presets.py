"""Shipped presets: ``configs/<name>.yaml`` in the repository, ``whisper_tune/configs`` in a wheel.

A preset is addressed by its path relative to that folder without ``.yaml`` (``quickstart``,
``cuda-lora/seed000-marathi-large-v2``); anything that is an existing file is read as a user YAML.
"""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path

from whisper_tune.errors import ConfigError


def preset_dirs() -> list[Path]:
    """Where presets live: the installed package data, then the source checkout's configs/."""
    dirs = []
    packaged = Path(str(resources.files("whisper_tune"))) / "configs"
    if packaged.is_dir():
        dirs.append(packaged)
    checkout = Path(__file__).resolve().parents[3] / "configs"
    if checkout.is_dir() and checkout not in dirs:
        dirs.append(checkout)
    return dirs


def list_presets() -> dict[str, Path]:
    """Preset name -> file, first folder wins."""
    found: dict[str, Path] = {}
    for folder in preset_dirs():
        for path in sorted(folder.rglob("*.yaml")):
            found.setdefault(path.relative_to(folder).with_suffix("").as_posix(), path)
    return found


def find_preset(config: str | Path) -> Path:
    path = Path(config)
    if path.is_file():
        return path
    presets = list_presets()
    key = str(config).removesuffix(".yaml")
    if key in presets:
        return presets[key]
    close = difflib.get_close_matches(key, list(presets), n=1, cutoff=0.5)
    raise ConfigError(
        f"no config file or preset called '{config}'",
        hint=(f"did you mean '{close[0]}'? " if close else "")
        + "'whisper-tune config list' shows the presets",
    )
