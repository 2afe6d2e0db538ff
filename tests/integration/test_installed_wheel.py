"""The quickstart from a non-editable wheel in a fresh venv, run from a temporary working directory.

This is how a user who did ``pip install whisper-tune`` meets it: no checkout to fall back on (an editable
install finds the checkout's configs/ and data/ and would pass without packaging anything). To keep the
test short the venv gets the wheel without its dependencies, and a .pth file that appends this venv's
site-packages (torch, transformers, ...) to its path. A plain path line in a .pth is not itself scanned
for .pth files, so this venv's editable whisper_tune is not importable there: whisper_tune can only come
from the wheel, which the test asserts.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from helpers import REPO

TIMEOUT = 1200  # generous: bounded by steps and samples, not by how loaded the machine is


def run(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(  # run() kills the child when the timeout passes
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def build_wheel(out: Path) -> Path:
    """A wheel of this checkout; offline when hatchling is installed here (the test extra has it)."""
    isolation = [] if importlib.util.find_spec("hatchling") is None else ["--no-build-isolation"]
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", *isolation, "-w", out, REPO)
    (wheel,) = out.glob("whisper_tune-*.whl")
    return wheel


@pytest.mark.slow
def test_quickstart_runs_from_an_installed_wheel(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path / "dist")
    names = set(zipfile.ZipFile(wheel).namelist())
    for packaged in (
        "whisper_tune/configs/quickstart.yaml",
        "whisper_tune/data/quickstart/train/metadata.csv",
        "whisper_tune/data/quickstart/other-voice/metadata.csv",
        "whisper_tune/data/quickstart/LICENSE",
        "whisper_tune/evaluation/assets/regression/english.csv",
    ):
        assert packaged in names, packaged

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)  # no system site-packages (the default)
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", "--no-index"]
    run(*pip, wheel)
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    (site / "dependencies-from-the-test-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1")
    work = tmp_path / "somewhere-else"
    work.mkdir()
    found = run(
        python,
        "-c",
        "import whisper_tune; from whisper_tune.config.presets import preset_dirs; "
        "print(whisper_tune.__file__); print(*preset_dirs(), sep='\\n')",
        cwd=work,
        env=env,
    ).split()
    package = site / "whisper_tune"
    assert Path(found[0]) == package / "__init__.py"  # the wheel's, not the checkout's
    assert [Path(p) for p in found[1:]] == [package / "configs"]
    before = sorted(p for p in package.rglob("*") if "__pycache__" not in p.parts)

    out = run(
        venv / "bin" / "whisper-tune",
        "-q",
        "run",
        "--config",
        "quickstart",
        "training.max_steps=1",
        "training.batch_size=2",
        "data.max_train_samples=2",
        "data.max_eval_samples=2",
        "data.extra_eval.0.max_samples=2",
        "eval.regression_set=null",  # the bundled set is checked in the wheel above; 12 clips x 2 evals
        "eval.max_new_tokens=12",
        "output.run_name=qs",
        cwd=work,
        env=env,
    )
    assert "eval: WER" in out and "other-voice: WER" in out
    run_dir = work / "runs" / "qs"  # outputs relative to the working directory
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 1 and set(metrics["evaluation"]["after"]) == {"eval", "other-voice"}
    config = (run_dir / "config.yaml").read_text()
    assert f"dataset: {package / 'data' / 'quickstart'}" in config  # inputs relative to the preset
    after = sorted(p for p in package.rglob("*") if "__pycache__" not in p.parts)
    assert after == before  # nothing written into site-packages
