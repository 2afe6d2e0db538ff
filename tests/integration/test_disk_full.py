"""A full disk at every place whisper-tune writes, on a real filesystem: a tmpfs each test mounts (root;
``small_disk`` in tests/whisper_tune_testing.py), too small for the write or filled up just before it.
Each failure is one line on stderr (``error: no space left on the device to write ...``: what, about how
much it needs, what survived), exit code 7, no traceback, and what was complete before is still there.
Where the write happens inside a run, a real run reaches it (the toy model, a few clips); a wrapper
around the function just before the write fills the disk when the test needs it full at that moment.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import QUICKSTART_DATA, cli_argv, run_child, toy_overrides
from whisper_tune_testing import SmallDisk, needs_backend

from whisper_tune.cli import main

pytestmark = [pytest.mark.real_disk, pytest.mark.slow]

MountDisk = Callable[..., SmallDisk]


def cheap(model: Path, out: Path, **extra: object) -> list[str]:
    """A toy run of 2 steps with as little around it as the test allows (one small eval set, no
    selection, no trackers)."""
    base: dict[str, object] = {
        "data.max_eval_samples": 2,
        "data.extra_eval": "[]",
        "eval.before": "false",
        "eval.keep": "off",
        "training.report_to": "[none]",
        "output.run_name": "r",
    }
    return toy_overrides(model, out, **{**base, **extra})


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """``whisper-tune -q ARGS`` in this process: (exit code, stderr)."""
    code = main(["-q", *args])
    return code, capsys.readouterr().err


def assert_disk_full(code: int, err: str, *fragments: str) -> str:
    """Exit code 7, stderr one error line (and its hint), no traceback; returns the error line."""
    assert code == 7, err
    assert "Traceback" not in err and "Logging error" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert errors[0].startswith("error: no space left on the device to write "), err
    for fragment in fragments:
        assert fragment in err, err
    return errors[0]


def fill_before(
    monkeypatch: pytest.MonkeyPatch,
    module: Any,
    name: str,
    disk: SmallDisk,
    when: Callable[..., bool] = lambda *args: True,
) -> None:
    """Fill ``disk`` just before ``module.name`` runs (the first call for which ``when(*args)`` is true)."""
    real = getattr(module, name)

    def filled_first(*args: Any, **kwargs: Any) -> Any:
        if when(*args):
            disk.fill()
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, filled_first)


def no_partial(root: Path) -> None:
    left = [str(p) for p in root.rglob("*") if ".partial" in p.name or p.name.endswith(".tmp")]
    assert left == []


# --- the run: prepared data, run files, checkpoints, final/, report --------------------------------


def test_prepared_set_on_a_full_disk_as_a_user_runs_it(small_disk: MountDisk, tiny_en_dir: Path) -> None:
    """The quickstart preset (pip:tiny.en, TensorBoard on) with output.dir on a 1 MB disk: the prepared
    train set does not fit (numpy's OSError has no errno; the free space tells)."""
    disk = small_disk("1m")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    argv = cli_argv("run", "--config", "quickstart", f"output.dir={disk.path}", "data.max_train_samples=32")
    done = run_child(argv, timeout=300, env=env)
    line = assert_disk_full(done.returncode, done.stderr, "prepared audio takes about 115 MB per hour")
    assert done.stderr.startswith("error: ")
    assert "the prepared train set to " in line and "it needs about" in line and "MB free on" in line
    assert "the partial set was removed" in line
    (run_dir,) = disk.path.iterdir()
    assert (run_dir / "config.yaml").is_file() and (run_dir / "run.log").is_file()
    no_partial(run_dir)


def test_run_directory_on_a_full_disk(
    small_disk: MountDisk, toy_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """output.dir on a disk already full: the run directory's write test fails, before any model loads."""
    disk = small_disk("1m")
    disk.fill()
    code, err = cli(capsys, "run", "--config", "quickstart", *cheap(toy_model_dir, disk.path))
    assert_disk_full(
        code, err, f"to write the run directory to {disk.path / 'r'}: ", "set output.dir to a larger"
    )
    no_partial(disk.path)


@pytest.mark.parametrize(
    ("name", "module", "before", "survivors"),
    [
        ("config.yaml", "whisper_tune.runs.run", "make_run_dir", ["run.log"]),
        ("plan.json", "whisper_tune.runs.run", "open_trackers", ["config.yaml"]),
        ("job.json", "whisper_tune.runs.run", "prepare_sets", ["config.yaml", "plan.json", "prepared"]),
    ],
)
def test_run_files_on_a_full_disk(
    name: str,
    module: str,
    before: str,
    survivors: list[str],
    small_disk: MountDisk,
    toy_model_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib

    disk = small_disk("4m")
    target = importlib.import_module(module)
    real = getattr(target, before)

    def then_fill(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        disk.fill()
        return result

    monkeypatch.setattr(target, before, then_fill)
    code, err = cli(capsys, "run", "--config", "quickstart", *cheap(toy_model_dir, disk.path))
    assert_disk_full(
        code, err, f"to write {disk.path / 'r' / name}: it needs about ", "set output.dir to a larger"
    )
    for survivor in survivors:
        assert (disk.path / "r" / survivor).exists()
    no_partial(disk.path / "r")


def test_checkpoint_on_a_full_disk_keeps_the_previous_one(
    small_disk: MountDisk, toy_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """checkpoints/ on a disk that holds one checkpoint of the toy model: the one after it fails mid-run."""
    from whisper_tune.training.checkpoints import read_state, restore_rng

    checkpoints = tmp_path / "r" / "checkpoints"
    small_disk("60m", checkpoints)
    code, err = cli(
        capsys,
        "run",
        "--config",
        "quickstart",
        *cheap(toy_model_dir, tmp_path, **{"training.save_steps": 1, "training.max_steps": 3}),
    )
    first = checkpoints / "step-000001"
    assert_disk_full(
        code,
        err,
        "to write checkpoint step-000002 to",
        "it needs about 4",  # the size of step-000001: the toy model's weights and AdamW's two moments
        f"{first} is intact",
        "training.resume_from=latest output.run_name=r",
    )
    assert read_state(first)[0] == 1
    restore_rng(first)
    no_partial(checkpoints)


def test_last_checkpoint_that_does_not_fit_still_leaves_final(
    small_disk: MountDisk, toy_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """training.save_last (the default) on a disk too small for it: a warning, and final/ (no optimizer
    state, on the larger disk) still holds the trained model."""
    checkpoints = tmp_path / "r" / "checkpoints"
    small_disk("8m", checkpoints)
    code, err = cli(capsys, "run", "--config", "quickstart", *cheap(toy_model_dir, tmp_path))
    assert code == 0, err
    assert "Traceback" not in err
    log = (tmp_path / "r" / "run.log").read_text()
    assert "WARNING warning: no space left on the device to write checkpoint step-000002 to " in log
    assert "writing final/ without it (the run cannot be resumed from step 2)" in log
    assert (tmp_path / "r" / "final" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["train"]["steps"] == 2
    assert list(checkpoints.iterdir()) == []


def test_final_on_a_full_disk_names_the_checkpoint_and_its_resume_finishes_the_run(
    small_disk: MountDisk, toy_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """output.model_dir on a disk too small for the model: the error names the last step's checkpoint
    (training.save_last) and the command that finishes the run from it, which then works."""
    disk = small_disk("4m")
    args = cheap(toy_model_dir, tmp_path, **{"output.model_dir": str(disk.path / "final")})
    code, err = cli(capsys, "run", "--config", "quickstart", *args)
    checkpoint = tmp_path / "r" / "checkpoints" / "step-000002"
    assert_disk_full(
        code,
        err,
        "to write the trained model (final/) to",
        f"the newest checkpoint, {checkpoint} (step 2 of 2), is intact",
        "training.resume_from=latest output.run_name=r: it loads step-000002 and writes final/ without "
        "training again",
    )
    no_partial(disk.path)
    disk.resize("64m")
    code, err = cli(capsys, "run", "--config", "quickstart", *args, "training.resume_from=latest")
    assert code == 0, err
    assert (disk.path / "final" / "model.safetensors").is_file()
    log = (tmp_path / "r" / "run.log").read_text()
    assert f"resumed from {checkpoint} at step 2" in log
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["train"]["steps"] == 2


def test_a_run_whose_model_fits_nowhere_says_its_training_is_lost(
    small_disk: MountDisk, toy_model_dir: Path
) -> None:
    """The whole run on a disk that holds its prepared clips but neither the last checkpoint nor final/
    (as a user's 5 MB output.dir did): a warning for the checkpoint, then one error that says so."""
    disk = small_disk("6m")
    args = cheap(toy_model_dir, disk.path, **{"training.report_to": "[auto]"})
    done = run_child(cli_argv("run", "--config", "quickstart", *args), timeout=300)
    line = assert_disk_full(done.returncode, done.stderr, "to write the trained model (final/) to")
    assert (
        "no checkpoint holds the 2 steps trained (the last step's did not fit either): they are lost" in line
    )
    warning = "warning: no space left on the device to write checkpoint step-000002 to "
    assert warning in done.stderr and "writing final/ without it" in done.stderr
    assert (disk.path / "r" / "prepared" / "train" / "manifest.json").is_file()
    no_partial(disk.path)


def test_best_checkpoint_on_a_full_disk(
    small_disk: MountDisk, toy_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """eval.steps keeps the best weights in checkpoints/best: a disk too small for them."""
    checkpoints = tmp_path / "r" / "checkpoints"
    small_disk("4m", checkpoints)
    code, err = cli(
        capsys, "run", "--config", "quickstart", *cheap(toy_model_dir, tmp_path, **{"eval.steps": 1})
    )
    assert_disk_full(
        code, err, "to write the best checkpoint (step 1) to", "no checkpoint to resume from was written yet"
    )
    no_partial(checkpoints)


@pytest.mark.parametrize(
    ("site", "name", "survivor"),
    [
        ("write_predictions", "predictions/eval-before.jsonl", "prepared"),
        ("write_json", "metrics.json", "predictions"),
        ("write_plot", "plot.png", "metrics.json"),
    ],
)
def test_report_files_on_a_full_disk(
    site: str,
    name: str,
    survivor: str,
    small_disk: MountDisk,
    toy_model_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An evaluation-only run (whisper-tune eval) whose disk fills as it writes its report."""
    import whisper_tune.runs.run as run_module

    disk = small_disk("8m")
    fill_before(monkeypatch, run_module, site, disk, lambda *a: site != "write_json" or a[0].name == name)
    code, err = cli(capsys, "eval", "--config", "quickstart", *cheap(toy_model_dir, disk.path))
    assert_disk_full(
        code, err, f"to write {disk.path / 'r' / name}: it needs about ", "set output.dir to a larger"
    )
    assert (disk.path / "r" / survivor).exists()
    no_partial(disk.path / "r")


def test_model_card_on_a_full_disk(
    small_disk: MountDisk,
    toy_model_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """final/README.md, written once metrics.json is: the model and the metrics are complete."""
    import whisper_tune.runs.run as run_module

    disk = small_disk("128m")
    fill_before(monkeypatch, run_module, "write_run_card", disk)
    code, err = cli(capsys, "run", "--config", "quickstart", *cheap(toy_model_dir, disk.path))
    run_dir = disk.path / "r"
    assert_disk_full(
        code,
        err,
        "to write the model card final/README.md to",
        f"kept in {run_dir}: the trained model {run_dir / 'final'}, the checkpoint step-000002, prepared/, "
        "metrics.json",
        "is complete (whisper-tune export and transcribe take it as it is)",
    )
    assert (run_dir / "final" / "model.safetensors").is_file() and (run_dir / "metrics.json").is_file()
    no_partial(run_dir)


def test_run_log_on_a_full_disk_stops_quietly(
    small_disk: MountDisk, capsys: pytest.CaptureFixture[str]
) -> None:
    """run.log when the disk fills: no logging traceback per line, nothing raised on close."""
    from whisper_tune.console import Reporter

    disk = small_disk("1m")
    reporter = Reporter(quiet=True, progress=False)
    reporter.log_to(disk.path / "run.log")
    reporter.info("before")
    disk.fill()
    for n in range(2000):
        reporter.info(f"line {n} " + "x" * 100)
    reporter.close()
    assert "Logging error" not in capsys.readouterr().err
    assert (disk.path / "run.log").read_text().count("before") == 1


@needs_backend("accelerate")
def test_launch_files_on_a_full_disk(
    small_disk: MountDisk,
    toy_model_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A planned launch (accelerate, 2 CPU processes) writes its files before starting anything."""
    from whisper_tune.runs.run import Run

    disk = small_disk("8m")
    real = Run.prepare

    def then_fill(self: Run) -> Any:
        job = real(self)
        disk.fill()
        return job

    monkeypatch.setattr(Run, "prepare", then_fill)
    args = cheap(toy_model_dir, disk.path)
    code, err = cli(
        capsys,
        "run",
        "--config",
        "quickstart",
        "--backend",
        "accelerate",
        "--num-processes",
        "2",
        "backend.cpu=true",
        *args,
    )
    assert_disk_full(code, err)
    assert (disk.path / "r" / "job.json").is_file()


# --- outside a run: export, merge, transcribe, the model caches, docs ----------------------------


@pytest.fixture(scope="module")
def trained_run(toy_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished toy run on an ordinary disk (exported and transcribed from below)."""
    from helpers import QUIET

    from whisper_tune import load_config, run

    out = tmp_path_factory.mktemp("trained")
    run(
        load_config("quickstart", cheap(toy_model_dir, out, **{"training.save_last": "false"})),
        reporter=QUIET,
    )
    return out / "r"


@pytest.mark.parametrize(
    ("before", "what", "survivor"),
    [
        (None, "to write the Hugging Face export (hf/) to", None),
        ("export_ct2", "to write the CTranslate2 export (ct2-int8/) to", "hf/model.safetensors"),
        ("write_card", "to write the model card hf/README.md to", "hf/model.safetensors"),
        ("write_json", "/x/export.json: it needs about", "hf/model.safetensors"),
        ("write_lines", "/x/parity-predictions.jsonl: it needs about", "export.json"),
    ],
)
def test_export_on_a_full_disk(
    before: str | None,
    what: str,
    survivor: str | None,
    trained_run: Path,
    small_disk: MountDisk,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import whisper_tune.export.exporter as exporter

    disk = small_disk("4m" if before is None else "64m")
    if before is not None:
        fill_before(monkeypatch, exporter, before, disk)
    formats = ["--format", "ct2-int8" if before == "export_ct2" else "hf"]  # the least that reaches the site
    check = ["--max-clips", "2"] if before == "write_lines" else ["--no-check"]
    code, err = cli(capsys, "export", str(trained_run), "--out", str(disk.path / "x"), *formats, *check)
    line = assert_disk_full(code, err, what, "give --out a larger disk")
    if survivor is None:
        assert "it needs about 1" in line and not (disk.path / "x" / "hf").exists()
    else:
        assert (disk.path / "x" / survivor).is_file() and "complete: hf/" in line
    no_partial(disk.path)


@pytest.fixture()
def adapter(toy_model_dir: Path, tmp_path: Path) -> Path:
    """A LoRA adapter of the toy model (untrained: merging it is what is tested)."""
    from peft import LoraConfig, get_peft_model
    from transformers import WhisperForConditionalGeneration

    folder = tmp_path / "adapter"
    model = WhisperForConditionalGeneration.from_pretrained(toy_model_dir)
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"])).save_pretrained(folder)
    return folder


def test_merge_on_a_full_disk(
    adapter: Path, small_disk: MountDisk, capsys: pytest.CaptureFixture[str]
) -> None:
    disk = small_disk("4m")
    code, err = cli(capsys, "merge", str(adapter), "--out", str(disk.path / "merged"))
    assert_disk_full(code, err, "to write the merged model to", f"the adapter {adapter} is untouched")
    assert not (disk.path / "merged").exists()


def test_transcripts_on_a_full_disk(
    small_disk: MountDisk, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real tiny.en (its CTranslate2 files, through faster-whisper: short clips end quickly)."""
    import whisper_tune.transcribe as transcribe
    from whisper_tune.models.packaged import resolve_packaged

    clips = sorted((QUICKSTART_DATA / "eval").glob("*.*"))
    audio = [c for c in clips if c.suffix != ".csv"][:2]
    disk = small_disk("1m")
    fill_before(monkeypatch, transcribe, "write_text", disk, lambda path, *_: path.stem == audio[1].stem)
    out = disk.path / "out"
    code, err = cli(
        capsys,
        "transcribe",
        "--model",
        str(resolve_packaged("tiny.en")),
        *map(str, audio),
        "--output",
        str(out),
    )
    assert_disk_full(code, err, f"the transcript of {audio[1]}", "1 earlier transcript(s) are complete")
    assert (out / f"{audio[0].stem}.txt").is_file()
    no_partial(disk.path)


@pytest.mark.parametrize(
    ("model", "what"),
    [("pip:tiny.en", "the Hugging Face copy of"), ("pip:base", "'pip:base' (its parts joined)")],
)
def test_model_cache_on_a_full_disk(
    model: str,
    what: str,
    tmp_path: Path,
    small_disk: MountDisk,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """$WHISPER_TUNE_CACHE on a 4 MB disk: tiny.en imported to Hugging Face weights, base's parts joined."""
    disk = small_disk("4m")
    monkeypatch.setenv("WHISPER_TUNE_CACHE", str(disk.path))
    code, err = cli(capsys, "export", model, "--out", str(tmp_path / "x"), "--no-check")
    assert_disk_full(code, err, what, "set WHISPER_TUNE_CACHE to a larger disk")
    no_partial(disk.path)


def test_config_docs_into_a_file_on_a_full_disk(
    small_disk: MountDisk, capsys: pytest.CaptureFixture[str]
) -> None:
    from whisper_tune_testing import REPO

    disk = small_disk("1m")
    readme = disk.path / "README.md"
    original = (REPO / "backends" / "accelerate" / "README.md").read_text()
    readme.write_text(original)
    disk.fill()
    code, err = cli(capsys, "config", "docs", "--backend", "accelerate", "--into", str(readme))
    assert_disk_full(code, err, "the accelerate options")
    assert readme.read_text() == original  # written aside and renamed: the old file is whole
    no_partial(disk.path)


# --- what is not a full disk keeps its own message -------------------------------------------------


def test_a_read_only_directory_is_not_a_full_disk(
    adapter: Path, small_disk: MountDisk, capsys: pytest.CaptureFixture[str]
) -> None:
    """A read-only filesystem that is also full: it is reported as read-only."""
    disk = small_disk("1m")
    disk.fill()
    subprocess.run(["mount", "-o", "remount,ro", str(disk.path)], check=True)
    code, err = cli(capsys, "merge", str(adapter), "--out", str(disk.path / "merged"))
    assert code == 7, err
    assert (
        f"error: cannot write the merged model to {disk.path / 'merged'}: {disk.path} is on a read-only"
        in err
    )
    assert "no space" not in err and "Traceback" not in err
