"""Finds backends through the entry-point group ``whisper_tune.backends`` and loads them lazily.

Listing reads only distribution metadata; a backend's module is imported when it is asked for by name.
Two distributions registering the same name is an error naming both. ``flags()`` imports every installed
backend's module to read its ``flags`` (a backend module imports only light things at its top level: a
test holds that ``whisper-tune run --help`` imports no torch). A backend that whisper-tune knows
of but that is not installed is reported with the command that installs it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

from whisper_tune.backend.protocol import Backend, Flag
from whisper_tune.errors import BackendUnavailableError, ConfigError

GROUP = "whisper_tune.backends"


@dataclass(frozen=True)
class KnownBackend:
    description: str
    install: str


#: where the backends' distributions come from: folders of the whisper-tune checkout (not on PyPI)
FROM_CHECKOUT = "in the whisper-tune checkout, next to an installed whisper-tune; not on PyPI"

#: Backends developed in this repository (backends/<name>/), for install hints when one is missing.
KNOWN_BACKENDS: dict[str, KnownBackend] = {
    "cuda-lora": KnownBackend(
        "one GPU, LoRA on an int8 / 4-bit / bf16 base",
        f"pip install ./backends/cuda-lora ({FROM_CHECKOUT}; './backends/cuda-lora[bnb]' for int8 / 4-bit)",
    ),
    "accelerate": KnownBackend(
        "full fine-tuning on many GPUs / nodes with Hugging Face Accelerate",
        f"pip install ./backends/accelerate ({FROM_CHECKOUT})",
    ),
    "ipu": KnownBackend(
        "Graphcore IPUs through optimum-graphcore",
        f"pip install ./backends/ipu ({FROM_CHECKOUT}; its worker needs the Poplar SDK, see "
        "backends/ipu/README.md)",
    ),
}


@dataclass(frozen=True)
class Registered:
    name: str
    distribution: str
    version: str
    entry_point: EntryPoint


class Registry:
    """Backends by name. Build one per use (tests pass their own entry points or instances)."""

    def __init__(
        self,
        eps: list[EntryPoint] | None = None,
        instances: dict[str, Backend] | None = None,
    ) -> None:
        self._entries: dict[str, Registered] = {}
        self._instances: dict[str, Backend] = dict(instances or {})
        for ep in eps if eps is not None else list(entry_points(group=GROUP)):
            dist = ep.dist.name if ep.dist is not None else "?"
            version = ep.dist.version if ep.dist is not None else "?"
            if ep.name in self._entries and self._entries[ep.name].entry_point.value != ep.value:
                other = self._entries[ep.name]
                raise BackendUnavailableError(
                    f"two installed packages register the backend '{ep.name}': "
                    f"{other.distribution} ({other.entry_point.value}) and {dist} ({ep.value})",
                    hint="uninstall one of them",
                )
            self._entries[ep.name] = Registered(ep.name, dist, version, ep)

    def names(self) -> list[str]:
        return sorted({*self._entries, *self._instances})

    def info(self, name: str) -> Registered | None:
        return self._entries.get(name)

    def get(self, name: str) -> Backend:
        """The backend called ``name``; a clear error if it is unknown, missing or broken."""
        if name in self._instances:
            return self._instances[name]
        entry = self._entries.get(name)
        if entry is None:
            if name in KNOWN_BACKENDS:
                known = KNOWN_BACKENDS[name]
                raise BackendUnavailableError(
                    f"the backend '{name}' ({known.description}) is not installed", hint=known.install
                )
            close = difflib.get_close_matches(name, [*self.names(), *KNOWN_BACKENDS], n=1)
            suggestion = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(
                f"unknown backend '{name}'",
                hint=f"{suggestion}installed: {', '.join(self.names()) or 'none'}; "
                "'whisper-tune backends' lists them",
            )
        cls = entry.entry_point.load()
        backend: Backend = cls()
        if getattr(backend, "name", None) != name:
            raise BackendUnavailableError(
                f"backend entry point '{name}' loads {cls.__qualname__}, whose name is "
                f"'{getattr(backend, 'name', None)}'",
                hint=f"fix the entry point in {entry.distribution}",
            )
        self._instances[name] = backend
        return backend

    def flags(self) -> dict[str, dict[str, Flag]]:
        """The installed backends' own command-line flags: flag name -> {backend name: its Flag}, in
        backend-name order. A backend that cannot be loaded is left out (``whisper-tune backends`` says
        why)."""
        found: dict[str, dict[str, Flag]] = {}
        for name in self.names():
            try:
                backend = self.get(name)
            except Exception:  # broken or mismatched: listing flags must never fail
                continue
            for flag in getattr(backend, "flags", ()):
                found.setdefault(flag.name, {})[name] = flag
        return found
