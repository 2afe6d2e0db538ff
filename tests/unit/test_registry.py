"""Backend registry: entry points, lazy loading, duplicates, install hints."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import EntryPoint

import pytest

from whisper_tune.backend.protocol import Backend, Flag
from whisper_tune.backend.registry import GROUP, Registry
from whisper_tune.errors import BackendUnavailableError, ConfigError
from whisper_tune.execution.reference_backend import ReferenceBackend


def ep(name: str, value: str) -> EntryPoint:
    return EntryPoint(name=name, value=value, group=GROUP)


def test_installed_entry_points_include_reference() -> None:
    registry = Registry()
    assert "reference" in registry.names()
    backend = registry.get("reference")
    assert isinstance(backend, ReferenceBackend)
    assert isinstance(backend, Backend)  # satisfies the Protocol structurally
    assert registry.get("reference") is backend  # loaded once


def test_listing_does_not_import_backend_modules() -> None:
    registry = Registry([ep("lazy", "whisper_tune_no_such_module:Backend")])
    assert registry.names() == ["lazy"]  # nothing imported yet
    with pytest.raises(ModuleNotFoundError):
        registry.get("lazy")  # a broken plugin is not swallowed


def test_duplicate_names_are_refused() -> None:
    with pytest.raises(BackendUnavailableError, match="two installed packages register the backend 'x'"):
        Registry([ep("x", "a:A"), ep("x", "b:B")])


def test_name_must_match_entry_point() -> None:
    registry = Registry([ep("other", "whisper_tune.execution.reference_backend:ReferenceBackend")])
    with pytest.raises(BackendUnavailableError, match="whose name is 'reference'"):
        registry.get("other")


def test_missing_known_backend_and_unknown_backend() -> None:
    registry = Registry([])
    with pytest.raises(BackendUnavailableError) as err:
        registry.get("cuda-lora")
    assert err.value.hint and "pip install" in err.value.hint
    with pytest.raises(ConfigError, match="unknown backend"):
        registry.get("tpu")


def test_instances_can_be_registered_directly() -> None:
    backend = ReferenceBackend()
    assert Registry([], instances={"reference": backend}).get("reference") is backend


def test_flags_are_listed_per_backend_and_a_broken_backend_is_left_out() -> None:
    class Two(ReferenceBackend):
        name = "two"
        flags = (Flag("--num-processes", "backend.num_processes", "processes", min=1),)

    class Three(ReferenceBackend):
        name = "three"
        flags = (
            Flag("--num-processes", "backend.world", "processes"),
            Flag("--ipus", "backend.ipus", "IPUs"),
        )

    registry = Registry(
        [ep("broken", "whisper_tune_no_such_module:Backend")],
        instances={"reference": ReferenceBackend(), "two": Two(), "three": Three()},
    )
    flags = registry.flags()
    assert sorted(flags) == ["--ipus", "--num-processes"]
    assert {name: f.key for name, f in flags["--num-processes"].items()} == {
        "three": "backend.world",
        "two": "backend.num_processes",
    }
    assert list(flags["--ipus"]) == ["three"]


def test_listing_the_installed_flags_imports_nothing_heavy() -> None:
    """Registry().flags() imports every installed backend's module: they import only light things."""
    code = (
        "import sys; from whisper_tune.backend.registry import Registry; flags = Registry().flags(); "
        "heavy = [m for m in ('torch', 'transformers', 'numpy', 'accelerate', 'peft', 'datasets') "
        "if m in sys.modules]; print(sorted(flags), heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    names, heavy = out.strip().split("] ")
    assert heavy == "[]", out
    for name in Registry().names():
        for flag in getattr(Registry().get(name), "flags", ()):
            assert flag.name in names


def test_install_hints_name_the_checkout_folders_not_pypi() -> None:
    """The backends are folders of the checkout, not PyPI distributions: the hint says so."""
    from whisper_tune.backend.registry import KNOWN_BACKENDS

    for name, known in KNOWN_BACKENDS.items():
        assert known.install.startswith(f"pip install ./backends/{name} (in the whisper-tune checkout")
        assert "not on PyPI" in known.install
