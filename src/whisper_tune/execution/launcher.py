"""The one place that runs a planned command (``Launch``, ``backend/launch.py``) and maps its failures.

``run_launch`` writes the launch's files and the job, starts the command, streams its output, stops it on
Ctrl-C, reads back the result, and turns a failure into whisper-tune's errors — a worker's
``failure-rank<N>.json`` (``{"error": <error class name>, "message", "hint"}``), else a line
``<prefix>: error[<kind>]: <message>`` on its output, else the end of its output. ``launch.json`` in the
run directory records exactly what ran.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from whisper_tune.backend.launch import Launch
from whisper_tune.backend.protocol import TrainResult
from whisper_tune.disk import RUN_DIR_HINT, make_dir, write_text, writing
from whisper_tune.errors import (
    BackendUnavailableError,
    ConfigError,
    DataError,
    HardwareError,
    InterruptedRun,
    ModelError,
    OutputError,
    WhisperTuneError,
)

if TYPE_CHECKING:
    from whisper_tune.backend.protocol import TrainJob, TrainResult
    from whisper_tune.console import Reporter

#: WhisperTuneError classes a worker's failure is re-raised as, by class name or by ``kind``.
ERROR_CLASSES: dict[str, type[WhisperTuneError]] = {
    key: cls
    for cls in (ConfigError, DataError, ModelError, BackendUnavailableError, HardwareError, OutputError)
    for key in (cls.__name__, cls.kind)
}


class WorkerFailed(WhisperTuneError):
    """A training process stopped with an unexpected error (its traceback is in the run directory)."""

    exit_code = 1
    kind = "worker"


def job_document(job: TrainJob, reporter: Reporter, launch: Launch) -> dict[str, Any]:
    """The core's job file for ``whisper_tune.execution.worker``."""
    import logging

    verbose = any(
        h.level <= logging.DEBUG
        for h in reporter.logger.handlers
        if not isinstance(h, logging.FileHandler) and isinstance(h, logging.StreamHandler)
    )
    return {
        # the config in its YAML layout, validated again in the worker (backend options included)
        "config": job.config.to_yaml_dict(),
        "job": job.model_dump(mode="json", exclude={"config", "launch"}),
        "console": {"quiet": reporter.quiet, "progress": reporter.show_progress, "verbose": verbose},
        "result": launch.result_file,
        "failures": launch.failure_dir,
    }


@dataclass
class _Output:
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=40))


def run_launch(job: TrainJob, reporter: Reporter, backend_job: dict[str, Any] | None = None) -> TrainResult:
    """Run ``job.launch`` (a resolved command launch) to the end and return the worker's result, or
    raise one clear error. ``backend_job`` is the job file's content for ``job_format: backend``."""

    launch = job.launch
    assert launch is not None and launch.mode == "command" and launch.result_file is not None
    run_dir = Path(job.run_dir)
    for path, content in launch.files:
        make_dir(Path(path).parent)
        write_text(Path(path), content, f"the launch file {Path(path).name}", hint=RUN_DIR_HINT)
    if launch.failure_dir:
        make_dir(Path(launch.failure_dir))
        for stale in Path(launch.failure_dir).glob("failure-rank*.json"):
            stale.unlink()
    result_file = Path(launch.result_file)
    make_dir(result_file.parent)
    result_file.unlink(missing_ok=True)
    if launch.job_file:
        document = backend_job if launch.job_format == "backend" else job_document(job, reporter, launch)
        make_dir(Path(launch.job_file).parent)
        job_text = json.dumps(document, indent=1) + "\n"
        write_text(Path(launch.job_file), job_text, "the training job file", hint=RUN_DIR_HINT)
    record = json.dumps(_launch_record(launch), indent=1) + "\n"
    write_text(run_dir / "launch.json", record, hint=RUN_DIR_HINT)
    reporter.debug(f"launch: {launch.command_line()}")
    env = {**os.environ, **dict(launch.env)}
    output = _Output()
    code, interrupted = _run(launch, env, reporter, output)
    if code == 0 and result_file.is_file():
        raw = read_result(result_file, launch)
        try:
            return TrainResult.model_validate(raw)
        except ValueError as exc:
            raise WhisperTuneError(
                f"the training command's result {result_file} is malformed: {exc}"
            ) from None
    if interrupted:
        raise InterruptedRun(f"interrupted; the training processes were stopped (see {run_dir / 'run.log'})")
    raise launch_failure(launch, code, list(output.tail), run_dir / "run.log")


def _launch_record(launch: Launch) -> dict[str, Any]:
    return {
        "command": launch.command_line(),
        "argv": list(launch.argv),
        "env": dict(launch.env),
        "cwd": launch.cwd,
        "files": [path for path, _ in launch.files],
        "job_file": launch.job_file,
        "result_file": launch.result_file,
    }


def _run(launch: Launch, env: dict[str, str], reporter: Reporter, output: _Output) -> tuple[int, bool]:
    """Start the command and wait for it; (exit code, interrupted)."""
    log_file = Path(launch.launcher_log) if launch.launcher_log else None
    try:
        if launch.output == "console":
            assert log_file is not None
            with writing("the launcher log", log_file):
                log = log_file.open("w", encoding="utf-8")
            with log:
                log.write(launch.command_line() + "\n")
                log.flush()
                # workers' stdout is this process's stderr (progress bars, messages); the launcher's to a log
                console = subprocess.Popen(list(launch.argv), stdout=2, stderr=log, env=env, cwd=launch.cwd)
                return _wait(console)
        process = subprocess.Popen(
            list(launch.argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=launch.cwd,
        )
    except OSError as exc:
        raise BackendUnavailableError(
            f"cannot start {launch.argv[0]}: {exc.strerror or exc}", hint=launch.failure_hint
        ) from None
    try:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip("\n")
            output.tail.append(line)
            reporter.debug(line)
    except KeyboardInterrupt:
        process.terminate()
        process.wait()
        return process.returncode, True
    return _wait(process)


def _wait(process: subprocess.Popen[Any]) -> tuple[int, bool]:
    try:
        return process.wait(), False
    except KeyboardInterrupt:
        try:
            return process.wait(timeout=60), True  # the workers got the Ctrl-C too: let them checkpoint
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            process.kill()
            return process.wait(), True


def read_result(path: Path, launch: Launch) -> dict[str, Any]:
    try:
        raw: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WhisperTuneError(
            f"the training command finished without a readable result {path}: {exc}"
        ) from None
    if launch.result_format is not None:
        name, version = launch.result_format.rsplit("/", 1)
        if raw.get("format") != name or str(raw.get("version")) != version:
            raise WhisperTuneError(
                f"{path} is not a {name} v{version} file: the backend and its worker come from different "
                "whisper-tune versions"
            )
    if launch.result_key is None:
        return raw
    if launch.result_key not in raw:
        raise WhisperTuneError(f"the training command's result {path} has no '{launch.result_key}'")
    result: dict[str, Any] = raw[launch.result_key]
    return result


def launch_failure(launch: Launch, code: int, tail: list[str], run_log: Path) -> WhisperTuneError:
    """The error of a failed launch: a worker's own report if it made one, else the end of the output."""
    if launch.failure_dir:
        folder = Path(launch.failure_dir)
        failures = sorted(folder.glob("failure-rank*.json"), key=lambda p: int(p.stem.split("rank")[1]))
        if failures:
            failure = json.loads(failures[0].read_text(encoding="utf-8"))
            rank = failures[0].stem.split("rank")[1]
            cls = ERROR_CLASSES.get(failure["error"])
            message = f"training process {rank}: {failure['message']}"
            if cls is None:
                traceback = folder / f"traceback-rank{rank}.txt"
                hint = f"the traceback is in {traceback}; the run log is {run_log}"
                return WorkerFailed(message, hint=hint)
            return cls(message, hint=failure.get("hint") or launch.failure_hint)
    if len(launch.argv) > 2 and launch.argv[1] == "-m":
        module = launch.argv[2]
        if any(f"No module named {module}" in line or f"No module named '{module}'" in line for line in tail):
            return BackendUnavailableError(
                f"{launch.argv[0]} cannot import the worker ({module})", hint=launch.failure_hint
            )
    if launch.error_prefix:
        pattern = re.compile(rf"^{re.escape(launch.error_prefix)}: error\[(\w+)\]: (.*)$")
        kinds = dict(launch.error_kinds)
        for line in reversed(tail):
            found = pattern.match(line)
            if found:
                kind, message = found.group(1), found.group(2)
                cls = ERROR_CLASSES.get(kinds.get(kind, kind), DataError)
                return cls(message, hint=launch.failure_hint if cls is BackendUnavailableError else None)
    if launch.launcher_log:
        last = last_error_line(Path(launch.launcher_log))
        return WorkerFailed(
            f"the training command stopped with exit code {code}" + (f": {last}" if last else ""),
            hint=f"launcher output: {launch.launcher_log}; run log: {run_log}",
        )
    shown = "\n    ".join(tail[-12:])
    return WhisperTuneError(
        f"the training command failed (exit code {code}); the end of its output:\n    {shown}",
        hint=launch.failure_hint,
    )


def last_error_line(log: Path) -> str:
    """The last line of a launcher log that names an error (torchrun and accelerate end with them)."""
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        stripped = line.strip()
        if "Error" in stripped.split(":")[0] or stripped.startswith("error"):
            return stripped[:300]
    return ""
