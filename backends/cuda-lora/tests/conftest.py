"""Make ``whisper_tune_cuda_lora`` importable from this checkout even where the plugin is not pip-installed
(tests that go through the registry need it installed: ``pip install --no-deps -e backends/cuda-lora``),
and share the core's fixtures (``toy_model_dir``, ``tiny_en_dir``) and offline settings with these tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
if importlib.util.find_spec("whisper_tune_cuda_lora") is None:
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
