"""`import whisper_tune` and `whisper-tune --help` must not import torch, transformers or datasets."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "datasets", "numpy", "soundfile", "jiwer", "matplotlib")

CHECK = "import sys; {code}; print('HEAVY=' + ','.join(m for m in {heavy!r} if m in sys.modules))"


def imported_after(code: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", CHECK.format(code=code, heavy=HEAVY)],
        capture_output=True,
        text=True,
        check=True,
    )
    marker = [line for line in out.stdout.splitlines() if line.startswith("HEAVY=")][-1]
    return [m for m in marker.removeprefix("HEAVY=").split(",") if m]


@pytest.mark.parametrize(
    "code",
    [
        "import whisper_tune",
        "from whisper_tune import RunConfig, load_config",
        "from whisper_tune.cli import main; main(['--help'])",
        "from whisper_tune.cli import main; main(['run', '--help'])",
        "from whisper_tune.cli import main; main(['export', '--help'])",
        "from whisper_tune.cli import main; main(['transcribe', '--help'])",
        "from whisper_tune.cli import main; main(['push', '--help'])",
        "from whisper_tune.cli import main; main(['config', 'validate', '--config', 'quickstart'])",
        "from whisper_tune.backend.registry import Registry; Registry().get('reference').probe()",
    ],
)
def test_no_heavy_imports(code: str) -> None:
    assert imported_after(code) == []
