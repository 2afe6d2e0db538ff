"""Helpers shared by tests (importable as `helpers`: pytest's pythonpath includes tests/)."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
QUICKSTART_DATA = REPO / "data" / "quickstart"


def tone(seconds: float, rate: int = 16_000, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


def write_audiofolder(
    root: Path, splits: dict[str, Iterable[tuple[str, np.ndarray | bytes | None, int, str]]]
) -> Path:
    """splits: name -> (file name, audio array / raw bytes / None for "missing", rate, text)."""
    import soundfile as sf

    for split, rows in splits.items():
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / "metadata.csv").open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["file_name", "text"])
            for name, audio, rate, text in rows:
                if isinstance(audio, bytes):
                    (folder / name).write_bytes(audio)
                elif audio is not None:
                    sf.write(folder / name, audio, rate)
                writer.writerow([name, text])
    return root


def write_parquet_dataset(
    root: Path, splits: dict[str, list[tuple[Path, str]]], text_column: str = "sentence"
) -> Path:
    """A local dataset in the layout of the hub's parquet exports: data/<split>-00000-of-00001.parquet,
    audio as {bytes, path} structs, and the `datasets` feature metadata (Audio, Value) in the schema."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "data").mkdir(parents=True, exist_ok=True)
    features = {"audio": {"_type": "Audio"}, text_column: {"dtype": "string", "_type": "Value"}}
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    for split, rows in splits.items():
        audio = pa.array([{"bytes": path.read_bytes(), "path": path.name} for path, _ in rows], type=struct)
        table = pa.table({"audio": audio, text_column: [text for _, text in rows]})
        table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
        pq.write_table(table, root / "data" / f"{split}-00000-of-00001.parquet")
    return root


def missing_known_backend() -> str | None:
    """A backend whisper-tune knows of that is not installed here (to test install hints), if any."""
    from whisper_tune.backend.registry import KNOWN_BACKENDS, Registry

    installed = Registry().names()
    return next((name for name in KNOWN_BACKENDS if name not in installed), None)


def cli_argv(*args: str) -> list[str]:
    """The whisper-tune command line, run as a module of this interpreter, quiet (no progress bars)."""
    return [sys.executable, "-m", "whisper_tune", "-q", *args]


@contextlib.contextmanager
def child_process(argv: Sequence[str | Path], **popen: Any) -> Iterator[subprocess.Popen[str]]:
    """A subprocess in its own process group that is killed, with everything it started (accelerate's
    workers, ...), when the block ends: on success, failure, timeout or Ctrl-C alike. A test that fails
    or times out never leaves a training run behind."""
    proc = subprocess.Popen([str(a) for a in argv], start_new_session=True, text=True, **popen)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # the group outlives its leader while members remain
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=30)


def run_child(
    argv: Sequence[str | Path], *, timeout: float, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``subprocess.run(..., capture_output=True, text=True, timeout=...)`` through ``child_process``."""
    with child_process(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def quiet_reporter() -> Any:
    from whisper_tune.console import Reporter

    return Reporter(quiet=True, progress=False)


QUIET = quiet_reporter()


def logged_steps(run_dir: Path) -> list[dict[str, float]]:
    """The per-step loss records of run.log ("<date> <time> DEBUG {json}")."""
    lines = (run_dir / "run.log").read_text().splitlines()
    return [json.loads(line.split(" ", 3)[3]) for line in lines if '"loss"' in line]


def toy_overrides(model: Path, out: Path, **extra: object) -> list[str]:
    base = {
        "model.name": str(model),
        "data.dataset": str(QUICKSTART_DATA),
        "data.max_train_samples": 16,
        "data.max_eval_samples": 4,
        "data.extra_eval": json.dumps(
            [
                {
                    "name": "other-voice",
                    "dataset": str(QUICKSTART_DATA),
                    "split": "other-voice",
                    "max_samples": 3,
                }
            ]
        ),
        "training.max_steps": 2,
        "training.batch_size": 4,
        "training.warmup_steps": 0,
        "training.learning_rate": 1e-3,
        # clips as they are, whatever their length (packing, and packing by default, have their own tests)
        "data.packing.enabled": "false",
        "training.method": "full",  # the toy model is random: train all of it (LoRA has its own tests)
        "training.freeze_encoder": False,
        "eval.max_new_tokens": 6,
        "eval.regression_set": "null",  # the bundled slice has its own tests (test_guard_rails.py)
        "output.dir": str(out),
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def real_samples(
    model_dir: Path, count: int, longest_last: bool = True, audio: bool = False, text: bool = False
) -> list[dict[str, Any]]:
    """``count`` quickstart training clips as model inputs (log-mel features of the real audio, labels
    from the model's real tokenizer), the shortest transcripts first and the longest last (so batches
    cut from the front and the back differ a lot in label tokens); with ``text`` each also has its
    transcript ("text")."""
    import soundfile as sf
    import soxr
    from transformers import WhisperFeatureExtractor, WhisperTokenizerFast

    rows = list(csv.DictReader((QUICKSTART_DATA / "train" / "metadata.csv").open()))
    rows.sort(key=lambda r: len(r["text"]))
    chosen = rows[: count // 2] + rows[-(count - count // 2) :] if longest_last else rows[:count]
    extractor = WhisperFeatureExtractor.from_pretrained(model_dir)
    tokenizer = WhisperTokenizerFast.from_pretrained(model_dir)
    tokenizer.set_prefix_tokens(predict_timestamps=False)
    out = []
    for row in chosen:
        clip, rate = sf.read(QUICKSTART_DATA / "train" / row["file_name"], dtype="float32")
        clip = soxr.resample(clip, rate, 16_000)
        labels = tokenizer(row["text"]).input_ids
        if audio:  # what prepared data holds (features are made at batch time)
            out.append({"audio": clip, "labels": labels, **({"text": row["text"]} if text else {})})
            continue
        features = extractor(clip, sampling_rate=16_000, return_tensors="np")["input_features"][0]
        out.append({"input_features": features, "labels": labels})
    return out


# --- data in the forms other tools write (issue 29); every fixture is built inside its test ---------

#: a Common Voice release's .tsv columns (v17), in its order
COMMONVOICE_COLUMNS = (
    "client_id path sentence_id sentence sentence_domain up_votes down_votes age gender accents variant "
    "locale segment"
).split()


def quickstart_clips(count: int, split: str = "train") -> list[tuple[Path, str]]:
    """The first ``count`` real speech clips of a quickstart split: (ogg file, transcript)."""
    with (QUICKSTART_DATA / split / "metadata.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))[:count]
    return [(QUICKSTART_DATA / split / row["file_name"], row["text"]) for row in rows]


def encode_with_pyav(source: Path, out: Path, container: str, codec: str, rate: int) -> Path:
    """``source`` re-encoded by PyAV (FFmpeg) as ``codec`` in ``container`` at ``rate`` Hz, mono:
    m4a ("ipod", "aac"), webm ("webm", "libopus"), mp4 ("mp4", "aac"), mp3 ("mp3", "libmp3lame")."""
    import av
    import soundfile as sf

    samples, source_rate = sf.read(source, dtype="float32", always_2d=True)
    frame = av.AudioFrame.from_ndarray(samples.mean(axis=1)[None, :], format="flt", layout="mono")
    frame.sample_rate = source_rate
    with av.open(str(out), "w", format=container) as output:
        stream = output.add_stream(codec, rate=rate)
        stream.layout = "mono"
        resampler = av.AudioResampler(format=stream.format.name, layout="mono", rate=rate)
        for converted in [*resampler.resample(frame), *resampler.resample(None)]:
            for packet in stream.encode(converted):
                output.mux(packet)
        for packet in stream.encode(None):
            output.mux(packet)
    return out


def write_mp3(source: Path, out: Path) -> Path:
    """``source`` as MP3: libsndfile writes it (1.1+), else PyAV."""
    import soundfile as sf

    samples, rate = sf.read(source, dtype="float32")
    try:
        sf.write(out, samples, rate, format="MP3")
    except (sf.LibsndfileError, ValueError, TypeError):
        encode_with_pyav(source, out, "mp3", "libmp3lame", 44_100)
    return out


def write_commonvoice(root: Path, splits: dict[str, list[tuple[Path | None, str, str]]]) -> Path:
    """A Common Voice release folder: ``<split>.tsv`` (tab-separated, unquoted) and ``clips/*.mp3``, with
    the other files a release has (clip_durations.tsv, reported.tsv) beside them. splits: name ->
    (source clip or None for a clip missing from clips/, sentence, locale)."""
    (root / "clips").mkdir(parents=True, exist_ok=True)
    n = 0
    for split, rows in splits.items():
        lines = ["\t".join(COMMONVOICE_COLUMNS)]
        for source, sentence, locale in rows:
            name = f"common_voice_{locale}_{1000 + n}.mp3"
            n += 1
            if source is not None:
                write_mp3(source, root / "clips" / name)
            values = {"client_id": f"c{n}", "path": name, "sentence_id": f"s{n}", "sentence": sentence}
            values.update(up_votes="2", down_votes="0", locale=locale)
            lines.append("\t".join(values.get(c, "") for c in COMMONVOICE_COLUMNS))
        (root / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "clip_durations.tsv").write_text("clip\tduration[ms]\n", encoding="utf-8")
    (root / "reported.tsv").write_text("sentence_id\tsentence\tlocale\treason\n", encoding="utf-8")
    return root


def write_whisper_finetune(path: Path, rows: list[tuple[Path, str, str | None]]) -> Path:
    """A JSONL manifest in yeyupiaoling/Whisper-Finetune's layout: {"audio": {"path"}, "sentence",
    "language", "sentences": [{"start", "end", "text"}], "duration"}; each transcript split in two
    timestamped sentences. rows: (audio file, transcript, language or None)."""
    import soundfile as sf

    with path.open("w", encoding="utf-8") as fh:
        for audio, text, language in rows:
            seconds = round(sf.info(audio).duration, 2) if audio.is_file() else 1.0
            words = text.split()
            first, second = " ".join(words[: len(words) // 2]), " ".join(words[len(words) // 2 :])
            cut = round(seconds * len(first) / len(text), 2)
            row: dict[str, Any] = {"audio": {"path": str(audio)}, "sentence": text}
            if language is not None:
                row["language"] = language
            row["sentences"] = [
                {"start": 0.0, "end": cut, "text": first},
                {"start": cut, "end": seconds, "text": second},
            ]
            row["duration"] = seconds
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def write_saved_dataset(root: Path, splits: dict[str, list[tuple[Path, str]]]) -> Path:
    """A folder written by ``datasets``' save_to_disk: a DatasetDict whose ``audio`` column is an Audio
    feature (the encoded files' bytes) and ``sentence`` the transcript."""
    import datasets

    # the Audio feature is cast onto {bytes, path} structs: encoding through it would need torchcodec
    built = {
        split: datasets.Dataset.from_dict(
            {
                "audio": [{"bytes": audio.read_bytes(), "path": audio.name} for audio, _ in rows],
                "sentence": [text for _, text in rows],
            }
        ).cast_column("audio", datasets.Audio())
        for split, rows in splits.items()
    }
    datasets.DatasetDict(built).save_to_disk(str(root))
    return root
