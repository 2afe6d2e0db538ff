"""Launches are planned as data (``backend/launch.py``): resolution, the printed command line, and the one
place that maps a failed command onto whisper-tune's errors — checked on a real subprocess."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from whisper_tune.backend.launch import Launch, ProcessOptions, accelerate_launch
from whisper_tune.backend.protocol import TrainJob
from whisper_tune.config_loading import load_config
from whisper_tune.errors import BackendUnavailableError, ConfigError, DataError, ModelError, WhisperTuneError
from whisper_tune.execution.launcher import WorkerFailed, launch_failure, run_launch


def test_accelerate_launch_is_pure_and_resolves_to_the_run_directory(tmp_path: Path) -> None:
    opts = ProcessOptions(num_processes=2)
    a, b = accelerate_launch(opts, "bf16", 1.0, 2), accelerate_launch(opts, "bf16", 1.0, 2)
    assert a == b and a.mode == "command"
    assert all("{run_dir}" not in arg for arg in a.resolved(tmp_path).argv)
    resolved = a.resolved(tmp_path)
    assert resolved.job_file == f"{tmp_path}/launch/job-machine0.json"
    assert resolved.command_line().startswith("PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false ")
    assert resolved.describe()[1] == f"writes {tmp_path}/launch/accelerate-machine0.yaml"
    assert Launch().describe() == ["in this process (no command is started)"]
    with pytest.raises(ValueError, match="main_process_ip and main_process_port"):
        ProcessOptions(num_machines=2)


def test_failures_map_onto_the_error_classes(tmp_path: Path) -> None:
    line = Launch(
        mode="command",
        argv=("python", "-m", "some_worker", "job.json"),
        error_prefix="my-worker",
        error_kinds=(("sdk", "backend"),),
        failure_hint="install the stack",
    )
    sdk = launch_failure(line, 2, ["noise", "my-worker: error[sdk]: poptorch missing"], tmp_path)
    assert isinstance(sdk, BackendUnavailableError) and sdk.hint == "install the stack"
    assert isinstance(launch_failure(line, 2, ["my-worker: error[model]: bad"], tmp_path), ModelError)
    assert isinstance(launch_failure(line, 2, ["my-worker: error[data]: bad"], tmp_path), DataError)
    missing = launch_failure(line, 1, ["ModuleNotFoundError: No module named some_worker"], tmp_path)
    assert isinstance(missing, BackendUnavailableError) and "cannot import the worker" in missing.message
    crash = launch_failure(line, 3, [f"line {i}" for i in range(30)], tmp_path)
    assert type(crash) is WhisperTuneError and "line 29" in crash.message and "line 17" not in crash.message
    files = Launch(mode="command", argv=("x",), failure_dir=str(tmp_path))
    (tmp_path / "failure-rank0.json").write_text(json.dumps({"error": "ConfigError", "message": "m"}))
    assert isinstance(launch_failure(files, 1, [], tmp_path), ConfigError)
    (tmp_path / "failure-rank0.json").write_text(json.dumps({"error": "KeyError", "message": "m"}))
    assert isinstance(launch_failure(files, 1, [], tmp_path), WorkerFailed)


def job_for(tmp_path: Path, launch: Launch) -> TrainJob:
    config = load_config("quickstart", [f"output.dir={tmp_path}"], require_backend=False)
    return TrainJob(
        config=config,
        run_dir=tmp_path,
        model_dir="m",
        train_data=None,
        launch=launch.resolved(tmp_path),
    )


def test_run_launch_runs_the_command_verbatim_and_reads_its_result(tmp_path: Path) -> None:
    """A real subprocess: it sees the planned environment, the written files and the job file, and its
    result comes back; launch.json records exactly what ran."""
    script = (
        "import json, os, sys; job = json.load(open(sys.argv[1])); "
        "assert open(os.environ['RUN'] + '/extra.txt').read() == 'hello'; "
        "json.dump({'format': 'demo', 'version': 1, 'train_result': {'steps': job['steps']}}, "
        "open(os.environ['RUN'] + '/result.json', 'w'))"
    )
    launch = Launch(
        mode="command",
        argv=(sys.executable, "-c", script, "{run_dir}/job.json"),
        env=(("RUN", "{run_dir}"),),
        files=(("{run_dir}/extra.txt", "hello"),),
        job_file="{run_dir}/job.json",
        job_format="backend",
        result_file="{run_dir}/result.json",
        result_key="train_result",
        result_format="demo/1",
        output="reporter",
    )
    from helpers import QUIET

    result = run_launch(job_for(tmp_path, launch), QUIET, backend_job={"steps": 7})
    assert result.steps == 7
    record = json.loads((tmp_path / "launch.json").read_text())
    assert record["argv"][-1] == f"{tmp_path}/job.json" and record["env"] == {"RUN": str(tmp_path)}
    wrong = Launch(**{**launch.__dict__, "result_format": "demo/2"})
    with pytest.raises(WhisperTuneError, match="not a demo v2 file"):
        run_launch(job_for(tmp_path, wrong), QUIET, backend_job={"steps": 7})
    failing = Launch(
        mode="command",
        argv=(sys.executable, "-c", "print('w: error[data]: no audio'); raise SystemExit(2)"),
        result_file="{run_dir}/none.json",
        error_prefix="w",
        output="reporter",
    )
    with pytest.raises(DataError, match="no audio"):
        run_launch(job_for(tmp_path, failing), QUIET)


def test_a_process_started_by_torchrun_or_accelerate_launch_is_one_rank_of_one_run() -> None:
    from whisper_tune.execution.external import OutsideLaunch, check_outside, outside_launch

    torchrun = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    found = outside_launch({**torchrun, "TORCHELASTIC_RUN_ID": "x"})
    assert found == OutsideLaunch(rank=3, world_size=4, local_world_size=2, launcher="torchrun")
    assert not found.main and found.machines == 2
    accelerate = outside_launch({**torchrun, "RANK": "0", "ACCELERATE_MIXED_PRECISION": "no"})
    assert accelerate is not None and accelerate.main and accelerate.launcher == "accelerate launch"
    # started on its own, or by a launcher of one process: a run of its own
    assert outside_launch({}) is None
    assert outside_launch({"WORLD_SIZE": "1", "RANK": "0"}) is None
    assert outside_launch({"WORLD_SIZE": "2"}) is None

    class OwnRuntimeBackend:
        name = "ipu-like"

        def train(self) -> None: ...

    with pytest.raises(ConfigError, match="runtime of its own") as found_error:
        check_outside(OwnRuntimeBackend(), load_config("quickstart"), found)  # type: ignore[arg-type]
    assert found_error.value.hint and "without torchrun" in found_error.value.hint
