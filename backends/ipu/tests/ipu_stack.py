"""Where the tests find the IPU worker's pinned stack without the SDK (``.venvs/ipu-stack``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SETUP = "backends/ipu/scripts/setup-stack-venv.sh"
STACK_PYTHON = Path(os.environ.get("WHISPER_TUNE_IPU_STACK_PYTHON", ROOT / ".venvs/ipu-stack/bin/python"))

needs_stack = pytest.mark.skipif(
    not STACK_PYTHON.is_file(),
    reason=f"the IPU worker's pinned stack (optimum-graphcore 0.7.1, transformers 4.29.2) is not installed "
    f"at {STACK_PYTHON}: run {SETUP}",
)
