"""Files a user names that are binary, in another encoding or cut short: through the real command line
(``python -m whisper_tune``), each is one line naming the file and the problem, the documented exit code
and no traceback. Audio is different: a broken or truncated clip is a counted and skipped sample."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import QUICKSTART_DATA, REPO, cli_argv, run_child, tone

RANDOM = os.urandom(3000)  # what `head -c 3000 /dev/urandom > bin.yaml` writes
LATIN1 = "café, naïve, señor".encode("latin-1")  # valid Latin-1, not UTF-8


def cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return run_child(cli_argv(*args), cwd=cwd, timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def assert_one_line(result: subprocess.CompletedProcess[str], code: int, *fragments: str) -> None:
    """Exit ``code``, no traceback, stderr one ``error:`` line (and at most its hint) with ``fragments``."""
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert lines and lines[0].startswith("error: "), result.stderr
    assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("  hint: ")), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], result.stderr


# --- the YAML config ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (RANDOM, "is binary data, not a YAML config"),
        (b"model:\n  name: " + LATIN1 + b"\n", "is not UTF-8 text: byte 0xe9 on line 2, column 12"),
        ("training:\n  max_steps: 3\n".encode("utf-16"), "is UTF-16 text, not UTF-8"),
        (b"training:\n  max_steps: 3\nmodel: {name: 'pip:tiny", "is not valid YAML"),  # cut off
    ],
    ids=["binary", "latin-1", "utf-16", "truncated"],
)
def test_a_config_file_that_is_not_utf8_yaml(tmp_path: Path, content: bytes, problem: str) -> None:
    config = tmp_path / "bin.yaml"
    config.write_bytes(content)
    assert_one_line(cli("run", str(config)), 2, str(config), problem)


# --- manifests and metadata.csv ------------------------------------------------------------------------


def manifest_cases(root: Path) -> dict[str, tuple[Path, str]]:
    """Each broken data file: (what data.dataset names, the problem the error states)."""
    clip = next((QUICKSTART_DATA / "train").glob("*.ogg"))
    (root / "clips").mkdir(parents=True)
    shutil.copy(clip, root / "clips" / "a.ogg")
    cases: dict[str, tuple[Path, str]] = {}

    def write(name: str, content: bytes) -> Path:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        return path

    cases["csv-binary"] = (write("bin.csv", RANDOM), "is binary data, not a CSV manifest")
    cases["csv-latin-1"] = (
        write("latin.csv", b"audio,text\nclips/a.ogg," + LATIN1 + b"\n"),
        "is not UTF-8 text: byte 0xe9 on line 2, column 16 (is it Latin-1 or Windows-1252?); save it as "
        "UTF-8",
    )
    cases["csv-truncated"] = (
        write("cut.csv", b"audio,text\nclips/a.ogg,hello there\nclips/a.ogg"),
        "line 3 has 1 of the header's 2 fields and no line end: the file looks truncated",
    )
    cases["jsonl-binary"] = (write("bin.jsonl", RANDOM), "is binary data, not a JSONL manifest")
    cases["jsonl-latin-1"] = (
        write("latin.jsonl", b'{"audio": "clips/a.ogg", "text": "' + LATIN1 + b'"}\n'),
        "is not UTF-8 text: byte 0xe9 on line 1",
    )
    cases["jsonl-truncated"] = (
        write("cut.jsonl", b'{"audio": "clips/a.ogg", "text": "hi"}\n{"audio": "clips/a.ogg", "te'),
        "line 2 is not valid JSON (column 26: Unterminated string starting at): the file looks truncated",
    )
    for kind, content, problem in (
        ("binary", RANDOM, "is binary data, not a CSV manifest"),
        ("latin-1", b"file_name,text\na.ogg," + LATIN1 + b"\n", "is not UTF-8 text: byte 0xe9 on line 2"),
        ("truncated", b"file_name,text\na.ogg,hello\nb.og", "line 3 has 1 of the header's 2 fields"),
    ):
        folder = root / f"audiofolder-{kind}"
        write(f"audiofolder-{kind}/train/metadata.csv", content)
        shutil.copy(clip, folder / "train" / "a.ogg")
        cases[f"metadata.csv-{kind}"] = (folder, f"{folder / 'train' / 'metadata.csv'} {problem}")
    release = root / "cv"  # a Common Voice release folder whose train.tsv is not UTF-8
    write("cv/train.tsv", b"client_id\tpath\tsentence\nx\ta.mp3\t" + LATIN1 + b"\n")
    (release / "clips").mkdir()
    cases["commonvoice-latin-1"] = (
        release,
        f"{release / 'train.tsv'} is not UTF-8 text: byte 0xe9 on line 2",
    )
    return cases


def test_a_manifest_or_metadata_csv_that_is_binary_latin1_or_truncated(tmp_path: Path) -> None:
    """Each data file through `whisper-tune run`: checked before anything is loaded or written."""
    out = tmp_path / "runs"
    for name, (dataset, problem) in manifest_cases(tmp_path / "data").items():
        result = cli(
            "run",
            "quickstart",
            f"data.dataset={dataset}",
            "data.eval_split=null",
            "data.test_size=0.5",
            "data.extra_eval=[]",
            f"output.dir={out}",
        )
        try:
            assert_one_line(result, 3, problem)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from None
        assert not out.exists(), name  # nothing written


def test_a_short_row_inside_a_csv_is_a_sample_not_an_error(tmp_path: Path) -> None:
    """Only a last row cut off without a line end is a truncated file; a short row inside the file is a
    sample without its text, dropped and counted when it is prepared (as before)."""
    from whisper_tune.data.sources import _read_table

    manifest = tmp_path / "clips.csv"
    manifest.write_text("audio,text\na.wav\nb.wav,hello\n")
    columns, rows = _read_table(manifest)
    assert columns == ["audio", "text"] and [r["text"] for r in rows] == [None, "hello"]


# --- a model's files -----------------------------------------------------------------------------------


def model_cases() -> list[tuple[str, str, object, str]]:
    """(id, file, how it is broken, the problem the error states)."""
    return [
        (
            "config.json-binary",
            "config.json",
            RANDOM,
            "config.json is binary data, not a model's config.json",
        ),
        (
            "config.json-latin-1",
            "config.json",
            lambda b: b.replace(b'"whisper"', b'"whisper", "note": "' + LATIN1 + b'"', 1),
            "config.json is not UTF-8 text: byte 0xe9",
        ),
        (
            "config.json-truncated",
            "config.json",
            lambda b: b[: len(b) // 2],
            "config.json is not valid JSON (line",
        ),
        (
            "tokenizer.json-truncated",
            "tokenizer.json",
            lambda b: b[: len(b) // 2],
            "tokenizer.json is not valid JSON (line",
        ),
        (
            "generation_config.json-truncated",  # transformers would fall back to defaults without a word
            "generation_config.json",
            lambda b: b[: len(b) // 2],
            "generation_config.json is not valid JSON",
        ),
        (
            "model.safetensors-truncated",
            "model.safetensors",
            lambda b: b[: len(b) // 2],
            "model.safetensors is truncated: ",
        ),
        (
            "model.safetensors-binary",
            "model.safetensors",
            RANDOM,
            "model.safetensors is not a safetensors file, or is truncated",
        ),
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("file", "damage", "problem"), [c[1:] for c in model_cases()], ids=[c[0] for c in model_cases()]
)
def test_a_model_file_that_is_binary_latin1_or_truncated(
    tmp_path: Path, toy_model_dir: Path, file: str, damage: object, problem: str
) -> None:
    model = tmp_path / "model"
    shutil.copytree(toy_model_dir, model)
    target = model / file
    target.write_bytes(damage(target.read_bytes()) if callable(damage) else damage)  # type: ignore[arg-type]
    result = cli(
        "eval", "quickstart", "--model", str(model), "data.extra_eval=[]", f"output.dir={tmp_path / 'runs'}"
    )
    assert_one_line(result, 4, f"{target.parent}/", problem)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # nothing left behind


# --- audio: skipped and counted, never fatal -----------------------------------------------------------


def test_truncated_audio_is_detected() -> None:
    """libsndfile decodes a WAV or Ogg file that was cut short as far as it goes, silently: the clip would
    train on part of its audio with all of its transcript. ``truncation`` says so; whole files pass."""
    import io

    import soundfile as sf

    from whisper_tune.data.audio import truncation

    buffer = io.BytesIO()
    sf.write(buffer, tone(1.0), 16_000, format="WAV")
    wav = buffer.getvalue()
    ogg = next((QUICKSTART_DATA / "train").glob("*.ogg")).read_bytes()
    assert truncation(wav) is None and truncation(ogg) is None
    assert truncation(wav[:1000]) == f"1000 of the {len(wav)} bytes its WAV header declares"
    assert truncation(ogg[: len(ogg) // 2]) == "its last Ogg page is cut off"
    assert truncation(b"not audio") is None  # another format: decoding decides


@pytest.mark.slow
def test_truncated_and_binary_audio_are_skipped_and_reported(tmp_path: Path, toy_model_dir: Path) -> None:
    """`whisper-tune prepare` of an audiofolder with a WAV, an Ogg and a FLAC clip cut in half and random
    bytes named .wav among good clips: all four dropped and counted by reason, the good ones prepared,
    exit 0."""
    import soundfile as sf

    folder = tmp_path / "data" / "train"
    folder.mkdir(parents=True)
    good = sorted((QUICKSTART_DATA / "train").glob("*.ogg"))[:4]
    with (QUICKSTART_DATA / "train" / "metadata.csv").open(newline="") as fh:
        texts = {row["file_name"]: row["text"] for row in csv.DictReader(fh)}
    rows = []
    for clip in good:
        shutil.copy(clip, folder / clip.name)
        rows.append((clip.name, texts[clip.name]))
    sf.write(folder / "whole.wav", tone(2.0), 16_000)
    wav = (folder / "whole.wav").read_bytes()
    (folder / "whole.wav").unlink()
    (folder / "cut.wav").write_bytes(wav[: len(wav) // 2])
    ogg = good[0].read_bytes()
    (folder / "cut.ogg").write_bytes(ogg[: len(ogg) // 2])
    sf.write(folder / "whole.flac", tone(2.0), 16_000)
    flac = (folder / "whole.flac").read_bytes()
    (folder / "whole.flac").unlink()
    (folder / "cut.flac").write_bytes(flac[: len(flac) // 2])
    (folder / "noise.wav").write_bytes(RANDOM)
    rows += [(name, "a transcript") for name in ("cut.wav", "cut.ogg", "cut.flac", "noise.wav")]
    with (folder / "metadata.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([("file_name", "text"), *rows])

    out = tmp_path / "prepared"
    result = cli(
        "prepare",
        "quickstart",
        "--model",
        str(toy_model_dir),
        f"data.dataset={tmp_path / 'data'}",
        "data.eval_split=null",
        "data.test_size=0.25",
        "data.extra_eval=[]",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    dropped: dict[str, int] = {}
    for manifest in out.glob("*/manifest.json"):
        for reason, n in json.loads(manifest.read_text())["dropped"]["by_reason"].items():
            dropped[reason] = dropped.get(reason, 0) + n
    assert dropped == {"truncated_audio": 2, "unreadable_audio": 2}, dropped
    assert sum(json.loads(m.read_text())["num_samples"] for m in out.glob("*/manifest.json")) == 4
