"""Make ``whisper_tune_accelerate`` importable from this checkout even where the plugin is not pip-installed,
and share the core's fixtures (``toy_model_dir``, ``tiny_en_dir``) and offline settings with these tests.

Tests that start real runs need its entry point (the CLI finds backends through it) and skip with the
install command when it is missing.
"""

from __future__ import annotations

import importlib.util
import socket
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
if importlib.util.find_spec("whisper_tune_accelerate") is None:
    sys.path.insert(0, str(SRC))

_spec = importlib.util.spec_from_file_location(
    "whisper_tune_core_conftest", Path(__file__).resolve().parents[3] / "tests" / "conftest.py"
)
assert _spec is not None and _spec.loader is not None
_core = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_core)

tiny_en_dir = _core.tiny_en_dir
toy_model_dir = _core.toy_model_dir


def pytest_configure(config: pytest.Config) -> None:
    _core.pytest_configure(config)


@pytest.fixture()
def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture()
def installed() -> None:
    from whisper_tune.backend.registry import Registry

    if "accelerate" not in Registry().names():
        pytest.skip("the accelerate backend is not installed: pip install --no-deps -e backends/accelerate")
