"""Make ``whisper_tune_ipu`` importable from this checkout even where the plugin is not pip-installed.

Tests that need its entry point (the CLI, the installed registry) skip with the install command when it
is missing.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
if importlib.util.find_spec("whisper_tune_ipu") is None:
    sys.path.insert(0, str(SRC))
# helpers shared by this directory's tests (ipu_stack.py)
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture()
def no_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WHISPER_TUNE_IPU_PYTHON", raising=False)
