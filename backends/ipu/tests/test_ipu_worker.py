"""The IPU worker's own pieces, in this environment (numpy only) and its Python 3.8 syntax.

The worker runs under the Poplar SDK's Python 3.8 and imports nothing from whisper-tune; its data reading
and static batching are plain numpy, so they are checked here directly against the core's prepared format
and collator. The end-to-end run under transformers 4.29.2 is test_ipu_worker_smoke.py.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

WORKER = Path(__file__).resolve().parents[1] / "worker"
sys.path.insert(0, str(WORKER))

from whisper_tune_ipu_worker.data import (  # noqa: E402
    PaddedToBatches,
    PreparedData,
    WorkerError,
    pad_labels,
    strip_generated,
)
from whisper_tune_ipu_worker.job import load_job  # noqa: E402

from whisper_tune.data.collator import SpeechSeq2SeqCollator  # noqa: E402
from whisper_tune.data.store import PreparedWriter  # noqa: E402

PY38 = Path.home() / ".pyenv/versions/3.8.18/bin/python"


def test_worker_is_python_3_8_syntax() -> None:
    files = sorted((WORKER / "whisper_tune_ipu_worker").glob("*.py"))
    assert len(files) >= 5
    for path in files:
        ast.parse(path.read_text(), filename=str(path), feature_version=(3, 8))
    if PY38.is_file():  # the real interpreter, where pyenv has it
        subprocess.run([str(PY38), "-m", "py_compile", *map(str, files)], check=True)


def test_worker_imports_nothing_from_whisper_tune() -> None:
    for path in (WORKER / "whisper_tune_ipu_worker").glob("*.py"):
        tree = ast.parse(path.read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not [n for n in names if n == "whisper_tune" or n.startswith("whisper_tune.")], path


def test_reads_the_core_prepared_format(tmp_path: Path) -> None:
    """The worker reads the core's v2 audio shards and makes the same log-mel features the core computes
    at batch time (here with this environment's transformers; the worker's pinned 4.29.2 extractor has
    the same NumPy path)."""
    from whisper_tune.data.features import log_mel
    from whisper_tune.data.store import PreparedDataset, to_pcm

    writer = PreparedWriter(tmp_path / "set", num_mel_bins=80, shard_size=2)
    for i in range(5):
        t = np.arange(int(16000 * (0.5 + i))) / 16000
        clip = (0.2 * np.sin(2 * np.pi * (300 + 100 * i) * t)).astype(np.float32)
        writer.add(to_pcm(clip), [50257, 10 + i, 50256], f"t{i}", f"k{i}")
    writer.close()
    data = PreparedData(str(tmp_path / "set"))
    assert len(data) == 5 and data.num_mel_bins == 80
    assert data[3]["labels"] == [50257, 13, 50256]
    core = PreparedDataset(tmp_path / "set")
    batch = SpeechSeq2SeqCollator(50257)([core[4]])
    expected = log_mel(batch["audio"], 80)[0].numpy()
    assert data[4]["input_features"].shape == (80, 3000)
    assert np.abs(data[4]["input_features"] - expected).max() < 1e-3
    padded = PaddedToBatches(data, 4)
    assert (len(padded), padded.real) == (8, 5) and padded[7]["labels"] == data[4]["labels"]
    (tmp_path / "set/manifest.json").write_text(json.dumps({"format": "other", "version": 1}))
    with pytest.raises(WorkerError, match="not whisper-tune prepared data"):
        PreparedData(str(tmp_path / "set"))


def test_label_padding_matches_the_core_collator() -> None:
    rows = [[50257, 1, 2, 3, 50256], [50257, 4, 50256], [50257, *range(40), 50256]]
    core = SpeechSeq2SeqCollator(50257, label_pad_multiple=32).pad_labels(rows)
    ours = pad_labels(rows, 32, 50257)
    assert ours.shape == (3, 64) and (ours == core).all()
    assert pad_labels(rows[:2], 32, 50257).shape == (2, 32)


def test_generated_rows_are_cut_at_end_of_text() -> None:
    assert strip_generated([50257, 50362, 7, 50256, 50256, -100], 50256, 50256) == [50257, 50362, 7, 50256]
    assert strip_generated([50257, 50362, 7, -100, -100], 50256, 50256) == [50257, 50362, 7]


def test_a_job_from_another_version_is_refused(tmp_path: Path) -> None:
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"format": "whisper-tune-ipu-job", "version": 99}))
    with pytest.raises(WorkerError, match="different whisper-tune versions") as info:
        load_job(str(job))
    assert info.value.kind == "job"


def test_worker_reports_problems_in_one_line(tmp_path: Path) -> None:
    """Exit code 2 and one ``error[kind]`` line, which the plugin maps onto whisper-tune's errors."""
    out = subprocess.run(
        [sys.executable, "-m", "whisper_tune_ipu_worker", str(tmp_path / "missing.json")],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(WORKER), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 2
    assert out.stderr.startswith("whisper-tune-ipu-worker: error[job]: cannot read the job file")
