"""Options, checks, plan and the generated Accelerate launch config (no processes started)."""

from __future__ import annotations

import importlib.util
import json
import socket
from pathlib import Path

import pytest
from pydantic import ValidationError
from whisper_tune_accelerate.backend import AccelerateBackend
from whisper_tune_accelerate.options import AccelerateOptions

from whisper_tune.backend.launch import Launch, accelerate_config
from whisper_tune.backend.protocol import Capabilities, Issue
from whisper_tune.backend.registry import Registry
from whisper_tune.config.schema import RunConfig, TrainingConfig
from whisper_tune.config_loading import load_config
from whisper_tune.errors import ConfigError, HardwareError
from whisper_tune.execution.launcher import WorkerFailed, last_error_line, launch_failure
from whisper_tune.runs.opening import raise_issues
from whisper_tune.runs.run import plan as pipeline_plan
from whisper_tune.training.loop import total_steps

BACKEND = AccelerateBackend()
REGISTRY = Registry(eps=[], instances={"accelerate": BACKEND})
CPU = Capabilities(cpu_count=2)
TWO_GPUS = Capabilities(cpu_count=16, cuda_devices=2, cuda_memory_gib=(80.0, 80.0), cuda_bf16=True)


def config(*overrides: str) -> RunConfig:
    return load_config("quickstart", ["backend.name=accelerate", *overrides], registry=REGISTRY)


def issues_at(issues: list[Issue], loc: str) -> list[Issue]:
    return [i for i in issues if i.loc == loc]


def test_options_validate_machines() -> None:
    with pytest.raises(ValidationError, match="machine_rank 2 must be below num_machines 2"):
        AccelerateOptions(num_machines=2, machine_rank=2, main_process_ip="10.0.0.1", main_process_port=29500)
    with pytest.raises(ValidationError, match="needs main_process_ip and main_process_port"):
        AccelerateOptions(num_machines=2, main_process_ip="10.0.0.1")
    with pytest.raises(ValidationError, match="extra"):
        AccelerateOptions.model_validate({"num_gpus": 2})
    opts = AccelerateOptions(
        num_processes=4, num_machines=2, main_process_ip="10.0.0.1", main_process_port=1234
    )
    assert opts.world_size == 8


def test_num_processes_flag_and_unknown_option() -> None:
    cfg = load_config(
        "quickstart",
        ["backend.device=cpu", "backend.num_processes=3"],
        backend="accelerate",
        backend_flags={"--num-processes": 2},  # a flag wins over key=value
        registry=REGISTRY,
    )
    opts = cfg.backend.options
    assert isinstance(opts, AccelerateOptions) and opts.num_processes == 2 and opts.cpu
    with pytest.raises(ConfigError, match="backend.gpus"):
        config("backend.gpus=2")


def test_int8_and_4bit_are_refused_with_a_pointer_to_cuda_lora() -> None:
    for quantization in ("int8", "4bit"):
        found = issues_at(
            BACKEND.check(config(f"backend.quantization={quantization}"), TWO_GPUS), "backend.quantization"
        )
        assert len(found) == 1 and found[0].level == "error" and "cuda-lora" in found[0].hint
    with pytest.raises(ConfigError, match="cuda-lora"):
        raise_issues(BACKEND.check(config("backend.quantization=int8"), TWO_GPUS))


def test_evaluation_during_training_runs_with_ddp_and_keep_best_is_refused_when_sharded() -> None:
    ddp = BACKEND.check(config("eval.steps=10"), TWO_GPUS)
    assert not issues_at(ddp, "eval.steps") and not issues_at(ddp, "eval.keep_best")
    sharded = config("eval.steps=10", "backend.strategy=fsdp")
    found = issues_at(BACKEND.check(sharded, TWO_GPUS), "eval.keep_best")
    assert len(found) == 1 and found[0].level == "error" and "fsdp" in found[0].message
    last = config("eval.steps=10", "backend.strategy=fsdp", "eval.keep_best=false")
    assert not issues_at(BACKEND.check(last, TWO_GPUS), "eval.keep_best")


def test_more_processes_than_gpus_is_a_hardware_error() -> None:
    found = issues_at(BACKEND.check(config("backend.num_processes=4"), TWO_GPUS), "backend.num_processes")
    assert found and found[0].hardware and "2 CUDA GPUs" in found[0].message
    no_gpu = issues_at(BACKEND.check(config(), CPU), "backend.num_processes")
    assert no_gpu and no_gpu[0].hardware and "backend.device=cpu" in no_gpu[0].hint
    with pytest.raises(HardwareError):
        raise_issues(BACKEND.check(config("backend.num_processes=4"), TWO_GPUS))
    assert BACKEND.check(config("backend.num_processes=2"), TWO_GPUS) == []
    assert BACKEND.check(config("backend.num_processes=2", "backend.device=cpu"), CPU) == []


def test_port_in_use_is_refused_on_machine_zero_only() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("", 0))
        busy.listen()
        port = busy.getsockname()[1]
        found = issues_at(
            BACKEND.check(config("backend.device=cpu", f"backend.main_process_port={port}"), CPU),
            "backend.main_process_port",
        )
        assert found and f"port {port} is already in use" in found[0].message and found[0].run_only
        other_machine = config(
            "backend.device=cpu",
            "backend.num_machines=2",
            "backend.machine_rank=1",
            "backend.main_process_ip=127.0.0.1",
            f"backend.main_process_port={port}",
        )
        assert issues_at(BACKEND.check(other_machine, CPU), "backend.main_process_port") == []
    assert (
        issues_at(
            BACKEND.check(config("backend.device=cpu", f"backend.main_process_port={port}"), CPU),
            "backend.main_process_port",
        )
        == []
    )


def test_cpu_rules() -> None:
    fp16 = issues_at(
        BACKEND.check(config("backend.device=cpu", "training.precision=fp16"), CPU), "training.precision"
    )
    assert fp16 and "fp16" in fp16[0].message
    fsdp = issues_at(
        BACKEND.check(config("backend.device=cpu", "backend.strategy=fsdp"), CPU), "backend.strategy"
    )
    assert fsdp and fsdp[0].level == "error" and "GPUs only" in fsdp[0].message
    many = issues_at(
        BACKEND.check(config("backend.device=cpu", "backend.num_processes=8"), CPU), "backend.num_processes"
    )
    assert many and many[0].level == "error" and many[0].hardware and "--num-processes 2" in many[0].hint
    with pytest.raises(HardwareError, match="99 CPU processes asked for; this machine has 2 cores"):
        raise_issues(BACKEND.check(config("backend.device=cpu", "backend.num_processes=99"), CPU))


def test_mixed_precision_must_agree_with_training_precision() -> None:
    found = issues_at(
        BACKEND.check(config("backend.mixed_precision=fp16", "training.precision=bf16"), TWO_GPUS),
        "backend.mixed_precision",
    )
    assert found and "disagrees" in found[0].message
    assert BACKEND.check(config("backend.mixed_precision=bf16", "training.precision=bf16"), TWO_GPUS) == []
    assert BACKEND.check(config("backend.mixed_precision=no"), TWO_GPUS) == []  # fp32 = "no"


def test_bf16_needs_gpus_that_have_it() -> None:
    old = Capabilities(cpu_count=8, cuda_devices=2, cuda_bf16=False)
    found = issues_at(BACKEND.check(config("training.precision=bf16"), old), "training.precision")
    assert found and found[0].hardware


def test_deepspeed_missing_is_reported_with_an_install_hint() -> None:
    if importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("deepspeed is installed here")
    found = issues_at(BACKEND.check(config("backend.strategy=deepspeed-zero3"), TWO_GPUS), "backend.strategy")
    assert found and "pip install deepspeed" in found[0].hint and found[0].run_only


def test_plan_counts_the_global_batch_and_keeps_the_learning_rate() -> None:
    cfg = config(
        "backend.num_processes=4",
        "backend.num_machines=2",
        "backend.main_process_ip=10.0.0.1",
        "backend.main_process_port=29500",
        "training.batch_size=16",
        "training.gradient_accumulation_steps=2",
        "training.learning_rate=1e-5",
    )
    plan = pipeline_plan(cfg, REGISTRY, TWO_GPUS)  # hardware issues do not stop a plan
    assert plan.processes == 8 and plan.batch_per_device == 16 and plan.global_batch == 256
    assert "on each of 2 machines" in plan.devices
    assert any("not rescaled" in n and "1e-05" in n for n in plan.notes)
    assert any("DDP" in p for p in plan.placement)
    fsdp = BACKEND.plan(config("backend.strategy=fsdp", "backend.num_processes=2"), TWO_GPUS)
    assert "FSDP (FULL_SHARD)" in fsdp.placement[0]


def test_total_steps_count_global_batches() -> None:
    cfg = TrainingConfig(batch_size=4, num_epochs=2)
    assert total_steps(cfg, 100) == 50
    assert total_steps(cfg, 100, world_size=2) == 26  # ceil(100 / 8) = 13 batches per epoch
    assert total_steps(TrainingConfig(batch_size=4, max_steps=7), 100, world_size=4) == 7


@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "deepspeed-zero2", "deepspeed-zero3"])
def test_launch_config_is_read_by_accelerate(strategy: str, tmp_path: Path) -> None:
    import yaml
    from accelerate.commands.config.config_args import ClusterConfig

    opts = AccelerateOptions(
        strategy=strategy,  # type: ignore[arg-type]
        num_processes=2,
        num_machines=2,
        machine_rank=1,
        main_process_ip="10.0.0.1",
        main_process_port=29500,
        offload=True,
    )
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(accelerate_config(opts, "bf16", 1.0, 4, opts.sharding)))
    loaded = ClusterConfig.from_yaml_file(str(path))  # Accelerate's own parser: no unknown keys
    assert loaded.num_processes == 4 and loaded.num_machines == 2 and loaded.machine_rank == 1
    assert loaded.main_process_ip == "10.0.0.1" and loaded.main_process_port == 29500
    assert loaded.mixed_precision == "bf16" and loaded.use_cpu is False
    expected = {"ddp": "MULTI_GPU", "fsdp": "FSDP"}.get(strategy, "DEEPSPEED")
    assert loaded.distributed_type.value == expected
    if strategy == "fsdp":
        assert loaded.fsdp_config["fsdp_offload_params"] is True
    if strategy.startswith("deepspeed"):
        assert loaded.deepspeed_config["zero_stage"] == int(strategy[-1])
        assert loaded.deepspeed_config["gradient_accumulation_steps"] == 4
        assert loaded.deepspeed_config["offload_optimizer_device"] == "cpu"
    single = accelerate_config(AccelerateOptions(), "fp32", None, 1)
    assert single["distributed_type"] == "NO" and single["mixed_precision"] == "no"
    assert single["main_process_port"] == 0  # Accelerate picks a free port


def test_failures_become_one_error(tmp_path: Path) -> None:
    log = tmp_path / "launcher-machine0.log"
    launch = Launch(mode="command", argv=("x",), failure_dir=str(tmp_path), launcher_log=str(log))
    log.write_text(
        "Traceback (most recent call last):\n  File x\nConnectionError: Tried to launch on port 29500\n"
    )
    error = launch_failure(launch, 1, [], tmp_path / "run.log")
    assert isinstance(error, WorkerFailed) and "ConnectionError: Tried to launch" in error.message
    assert str(log) in (error.hint or "")
    assert last_error_line(tmp_path / "missing.log") == ""
    (tmp_path / "failure-rank1.json").write_text(
        json.dumps({"error": "ConfigError", "message": "bad checkpoint", "hint": "h"})
    )
    error = launch_failure(launch, 1, [], tmp_path / "run.log")
    assert isinstance(error, ConfigError) and error.message == "training process 1: bad checkpoint"
    (tmp_path / "failure-rank0.json").write_text(
        json.dumps({"error": "RuntimeError", "message": "RuntimeError: boom"})
    )
    error = launch_failure(launch, 1, [], tmp_path / "run.log")
    assert isinstance(error, WorkerFailed) and "process 0" in error.message
    assert "traceback-rank0.txt" in (error.hint or "")


def test_probe_never_raises_and_the_preset_validates() -> None:
    probe = BACKEND.probe()
    assert probe.available and probe.capabilities.cpu_count >= 1
    preset = load_config("accelerate/seed003-swedish-tiny", registry=REGISTRY)
    opts = preset.backend.options
    assert isinstance(opts, AccelerateOptions) and opts.mixed_precision == "fp16"
    assert issues_at(BACKEND.check(preset, TWO_GPUS), "backend.mixed_precision") == []


def test_under_torchrun_the_launcher_decides_the_process_count() -> None:
    """A rank of ``torchrun --nproc_per_node 2``: --num-processes may be left out or agree; another count
    is a config error, and the plan records the launcher's processes, trained in place."""
    from whisper_tune.execution.external import OutsideLaunch, check_outside, outside_plan

    outside = OutsideLaunch(rank=0, world_size=2, local_world_size=2, launcher="torchrun")
    for agreeing in (config("backend.device=cpu"), config("backend.device=cpu", "backend.num_processes=2")):
        check_outside(BACKEND, agreeing, outside)
    with pytest.raises(ConfigError, match="backend.num_processes is 4, but torchrun started 2 processes"):
        check_outside(BACKEND, config("backend.device=cpu", "backend.num_processes=4"), outside)
    cpu = config("backend.device=cpu")
    planned = outside_plan(BACKEND.plan(cpu, CPU), BACKEND, cpu, outside)
    assert planned.processes == 2 and planned.global_batch == 2 * cpu.training.batch_size
    assert planned.devices == "2 CPU processes (gloo), started by torchrun"
    assert planned.launch == Launch()


def test_one_cpu_switch_and_the_old_spelling_with_a_note_once() -> None:
    """backend.device=cpu, as on every backend; backend.cpu=true (this backend's old spelling) still works,
    with a deprecation note printed once per process."""
    import logging

    import whisper_tune.backend.launch as launch
    from whisper_tune.console import LOGGER_NAME

    new = config("backend.device=cpu").backend.options
    assert isinstance(new, AccelerateOptions) and new.device == "cpu" and new.cpu
    notes: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: notes.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger(LOGGER_NAME).addHandler(handler)
    launch._NOTED.discard("cpu")
    try:
        old = config("backend.cpu=true").backend.options
        again = config("backend.cpu=true").backend.options
    finally:
        logging.getLogger(LOGGER_NAME).removeHandler(handler)
    assert old == again == new and "cpu" not in old.model_dump()  # written back as backend.device
    assert notes == [
        "note: backend.cpu=true is the old spelling of backend.device=cpu (one CPU switch for every "
        "backend); it still works, but write backend.device=cpu"
    ]
    assert config("backend.cpu=false").backend.options.device == "cuda"  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="backend.cpu=true and backend.device=cuda disagree"):
        config("backend.cpu=true", "backend.device=cuda")
    assert BACKEND.uses_cpu(config("backend.device=cpu")) and not BACKEND.uses_cpu(config())


def test_plan_prints_commands_that_run_as_printed(capsys: pytest.CaptureFixture[str]) -> None:
    """``plan --num-processes 4``: the accelerate launch line is labelled as what ``run`` executes (its job
    file is written by ``run``), followed by ``whisper-tune run`` and torchrun lines that run as printed."""
    from whisper_tune.cli import main

    args = ["--config", "quickstart", "--backend", "accelerate", "training.max_steps=5"]
    assert main(["plan", *args[:4], "--num-processes", "4", *args[4:]]) == 0
    lines = capsys.readouterr().out.splitlines()
    launch = [line.removeprefix("launch:").strip() for line in lines if line.startswith("launch:")]
    assert launch[0].startswith("whisper-tune run writes the files below into its run directory")
    assert any(line.startswith("job file ") and "written by whisper-tune run" in line for line in launch)
    assert (
        "run it:             whisper-tune run " + " ".join([*args[:4], "--num-processes", "4", *args[4:]])
        in lines
    )
    torchrun = "torchrun --standalone --nproc_per_node 4 -m whisper_tune run " + " ".join(args)
    assert f"or with torchrun:   {torchrun}" in lines


def test_every_strategy_defaults_to_full_fine_tuning_and_ddp_trains_lora_when_asked() -> None:
    """The core's default is LoRA; this backend's purpose is full fine-tuning, so it supplies that method
    (at full fine-tuning's default rate) unless the config names one."""
    from whisper_tune.config.schema import DEFAULT_LEARNING_RATE

    assert load_config(None).training.method == "lora"
    for strategy in ("ddp", "fsdp"):
        training = config(f"backend.strategy={strategy}").training
        assert (training.method, training.learning_rate) == ("full", DEFAULT_LEARNING_RATE["full"])
    assert config("training.method=lora").training.method == "lora"
