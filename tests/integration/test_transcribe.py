"""`whisper-tune transcribe` on a > 30 s recording with real tiny.en: transformers' chunked pipeline for a
Hugging Face model, faster-whisper for a CTranslate2 directory; outputs as text, JSON and SRT."""

from __future__ import annotations

import csv
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import QUICKSTART_DATA, REPO, cli_argv

from whisper_tune.console import Reporter
from whisper_tune.evaluation.metrics import make_normalizer, score
from whisper_tune.runs.model_ref import resolve_model
from whisper_tune.transcribe import transcribe_files

pytest.importorskip("faster_whisper")
QUIET = Reporter(quiet=True, progress=False)
CLIPS = 12


@pytest.fixture(scope="module")
def long_recording(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, float]:
    """CLIPS quickstart eval clips joined with 0.6 s of silence: (wav file, joined references, seconds)."""
    from whisper_tune.data.audio import decode

    folder = QUICKSTART_DATA / "eval"
    with (folder / "metadata.csv").open() as fh:
        rows = list(csv.DictReader(fh))[:CLIPS]
    silence = np.zeros(int(0.6 * 16_000), dtype=np.float32)
    audio = np.concatenate(
        [part for r in rows for part in (decode(folder / r["file_name"]).samples, silence)]
    )
    path = tmp_path_factory.mktemp("audio") / "long.wav"
    sf.write(path, audio, 16_000)
    return path, " ".join(r["text"] for r in rows), len(audio) / 16_000


def normalised_wer(hypothesis: str, reference: str) -> float:
    return score([hypothesis], [reference], make_normalizer("english"))["normalized_wer"]


def srt_blocks(text: str) -> list[tuple[float, float, str]]:
    def seconds(stamp: str) -> float:
        h, m, rest = stamp.split(":")
        s, ms = rest.split(",")
        return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000

    blocks = []
    for block in text.strip().split("\n\n"):
        lines = block.splitlines()
        start, end = re.fullmatch(r"(\S+) --> (\S+)", lines[1]).groups()  # type: ignore[union-attr]
        blocks.append((seconds(start), seconds(end), " ".join(lines[2:])))
    return blocks


@pytest.mark.slow
def test_hf_model_transcribes_a_long_recording_in_chunks(
    tiny_en_dir: Path, long_recording: tuple[Path, str, float], tmp_path: Path
) -> None:
    path, reference, seconds = long_recording
    assert seconds > 35  # longer than one 30-s window
    out = tmp_path / "long.json"
    [transcript] = transcribe_files(
        [path], resolve_model(str(tiny_en_dir)), fmt="json", output=out, reporter=QUIET
    )
    assert out.is_file() and '"segments"' in out.read_text()
    assert transcript.seconds == pytest.approx(seconds, abs=0.01)
    assert normalised_wer(transcript.text, reference) < 15  # every chunk's sentences are there
    starts = [s.start for s in transcript.segments]
    assert starts == sorted(starts) and transcript.segments[-1].start > 30 - 5
    assert all(s.end >= s.start for s in transcript.segments)
    assert transcript.segments[-1].end <= seconds + 1


@pytest.mark.slow
def test_ct2_directory_transcribes_a_long_recording_to_srt(
    long_recording: tuple[Path, str, float], tmp_path: Path
) -> None:
    from whisper_tune.models.packaged import resolve_packaged

    path, reference, seconds = long_recording
    out = tmp_path / "long.srt"
    result = subprocess.run(
        cli_argv(
            "transcribe",
            str(path),
            "--model",
            str(resolve_packaged("tiny.en")),
            "--format",
            "srt",
            "-o",
            str(out),
        ),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    blocks = srt_blocks(out.read_text())
    starts = [b[0] for b in blocks]
    assert starts == sorted(starts) and all(end >= start for start, end, _ in blocks)
    assert blocks[-1][0] > 30 - 5 and blocks[-1][1] <= seconds + 1
    assert normalised_wer(" ".join(b[2] for b in blocks), reference) < 15


@pytest.mark.slow
def test_srt_from_a_run_fine_tuned_on_packed_windows_with_timestamps(
    long_recording: tuple[Path, str, float], tmp_path: Path
) -> None:
    """Real tiny.en, a few steps on packed windows (timestamp labels), then SRT from the run: the
    fine-tune still predicts timestamps, and the pipeline reads them."""
    from whisper_tune import load_config, run
    from whisper_tune.runs.model_ref import resolve_run

    overrides = [
        "data.packing.enabled=true",
        "data.max_train_samples=24",
        "data.max_eval_samples=4",
        "data.extra_eval=[]",
        "eval.regression_set=null",
        "eval.before=false",
        "eval.after=false",
        "training.batch_size=1",
        "training.max_steps=2",
        "training.warmup_steps=0",
        "output.plot=false",
        f"output.dir={tmp_path}",
        "output.run_name=packed",
    ]
    summary = run(load_config("quickstart", overrides), reporter=QUIET)
    assert summary.metrics["train"]["clips"] > summary.metrics["train"]["windows"] == 2
    path, reference, seconds = long_recording
    out = tmp_path / "long.srt"
    transcribe_files([path], resolve_run(tmp_path / "packed"), fmt="srt", output=out, reporter=QUIET)
    blocks = srt_blocks(out.read_text())
    starts = [b[0] for b in blocks]
    assert len(blocks) >= CLIPS // 2 and starts == sorted(starts)
    assert all(end >= start for start, end, _ in blocks) and blocks[-1][1] <= seconds + 1
    assert normalised_wer(" ".join(b[2] for b in blocks), reference) < 15


def test_a_bad_file_stops_with_one_line_and_keeps_earlier_outputs(tmp_path: Path) -> None:
    from whisper_tune.models.packaged import resolve_packaged

    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF....not audio at all")
    good = QUICKSTART_DATA / "eval" / "eval-0000.ogg"
    out = tmp_path / "out"
    model = str(resolve_packaged("tiny.en"))
    result = subprocess.run(
        cli_argv("transcribe", str(good), str(bad), "--model", model, "-o", str(out)),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 3, result.stderr
    assert result.stderr.startswith(f"error: cannot transcribe {bad}") and "Traceback" not in result.stderr
    assert "wrong, but you can be straightened out" in (out / "eval-0000.txt").read_text()
    missing = subprocess.run(
        cli_argv("transcribe", str(tmp_path / "nope.wav"), "--model", model),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 3 and missing.stderr.startswith("error: no such audio file")


def test_model_and_run_are_exclusive() -> None:
    result = subprocess.run(
        cli_argv("transcribe", "x.wav"), cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "exactly one of --model and --run" in result.stderr
