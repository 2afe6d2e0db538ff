"""Telling "not on this disk" from "the hub cannot be reached" (imports nothing heavy).

A model or dataset name that is not an existing path is a Hugging Face hub id, which needs network. When
the hub is unreachable or offline mode is on, the useful message is that no such local directory exists
(a typo in a path, or a path relative to another folder), not that the hub failed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

NO_LOCAL_DIRECTORY = "no such local directory (as a hub id it needs network)"
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
_TRUE = {"1", "ON", "YES", "TRUE"}
_NETWORK_ERRORS = {
    "OfflineModeIsEnabled",
    "LocalEntryNotFoundError",
    "ConnectError",
    "ConnectTimeout",
    "ReadTimeout",
    "Timeout",
    "ProxyError",
}
_NETWORK_TEXT = ("couldn't reach", "couldn't connect", "offline mode", "offlinemodeisenabled")


def hub_offline(env: Mapping[str, str] | None = None) -> bool:
    """True when an offline switch of huggingface_hub / datasets / transformers is on."""
    env = os.environ if env is None else env
    return any(env.get(name, "").strip().upper() in _TRUE for name in OFFLINE_VARIABLES)


def is_network_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) says the hub could not be reached."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (ConnectionError, TimeoutError)):
            return True
        if {cls.__name__ for cls in type(current).__mro__} & _NETWORK_ERRORS:
            return True
        if any(text in str(current).lower() for text in _NETWORK_TEXT):
            return True
        current = current.__cause__ or current.__context__
    return False


def missing_locally(name: str) -> bool:
    """A name that is neither an existing path nor a ``pip:`` model, i.e. one only the hub can serve."""
    return not name.startswith("pip:") and not Path(name).expanduser().exists()
