"""LoRA over several processes: the cuda-lora backend's plans for 1 / 2 / 8 GPUs and 2 machines (no GPU
needed), and real 2-process CPU runs (gloo, through the planned ``accelerate launch``) against a
1-process run at the same global batch and data order.

The 1-process run trains batches of 4; the 2-process run trains 2 per process, and Accelerate gives rank
``r`` batches ``r, r+2, ...`` of the same seeded permutation, so each global step sees the same 4 clips.
With the token-weighted loss the step's gradient is the same, so the adapters must agree to float
tolerance — not merely agree between the two ranks. LoRA dropout is 0 (each process would draw its own).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from helpers import QUICKSTART_DATA, cli_argv
from safetensors.torch import load_file
from whisper_tune_cuda_lora.backend import CudaLoraBackend

from whisper_tune.backend.protocol import Capabilities
from whisper_tune.backend.registry import Registry
from whisper_tune.config_loading import load_config

BACKEND = CudaLoraBackend()
REGISTRY = Registry(eps=[], instances={"cuda-lora": BACKEND})
TRACE_ENV = "WHISPER_TUNE_TRACE"


def gpus(n: int) -> Capabilities:
    return Capabilities(cpu_count=32, cuda_devices=n, cuda_memory_gib=(80.0,) * n, cuda_bf16=True)


def plan_for(caps: Capabilities, *overrides: str) -> Any:
    config = load_config(
        "quickstart", ["backend.name=cuda-lora", "training.precision=bf16", *overrides], registry=REGISTRY
    )
    return BACKEND.plan(config, caps)


def launched_config(plan: Any) -> dict[str, Any]:
    ((path, text),) = plan.launch.files
    assert path.endswith(".yaml")
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


def test_plans_for_one_two_and_eight_gpus_and_two_machines() -> None:
    one = plan_for(gpus(1))
    assert one.launch.mode == "in-process" and one.processes == 1 and one.global_batch == 4
    for n in (2, 8):
        plan = plan_for(gpus(n), f"backend.num_processes={n}")
        assert plan.launch.mode == "command" and plan.processes == n and plan.global_batch == 4 * n
        argv = plan.launch.argv
        assert argv[1:4] == ("-m", "accelerate.commands.launch", "--config_file")
        assert argv[-2:] == ("whisper_tune.execution.worker", "{run_dir}/launch/job-machine0.json")
        config = launched_config(plan)
        assert config["num_processes"] == n and config["distributed_type"] == "MULTI_GPU"
        assert config["mixed_precision"] == "bf16" and config["num_machines"] == 1
    two_machines = plan_for(
        gpus(4),
        "backend.num_processes=4",
        "backend.num_machines=2",
        "backend.machine_rank=1",
        "backend.main_process_ip=10.1.2.3",
        "backend.main_process_port=29555",
    )
    config = launched_config(two_machines)
    assert two_machines.processes == 8 and config["num_processes"] == 8 and config["machine_rank"] == 1
    assert (config["main_process_ip"], config["main_process_port"]) == ("10.1.2.3", 29555)
    assert two_machines.launch.result_file == "{run_dir}/launch/result-machine1.json"
    # more processes than GPUs is refused as a hardware problem
    config_8 = load_config(
        "quickstart", ["backend.name=cuda-lora", "backend.num_processes=8"], registry=REGISTRY
    )
    found = [i for i in BACKEND.check(config_8, gpus(2)) if i.loc == "backend.num_processes"]
    assert found and found[0].hardware and "2 CUDA GPUs" in found[0].message


def overrides(model: Path, out: Path, name: str, **extra: object) -> list[str]:
    base: dict[str, object] = {
        "backend.name": "cuda-lora",
        "backend.device": "cpu",
        "backend.quantization": "none",
        "training.lora.dropout": 0.0,
        "model.name": str(model),
        "data.dataset": str(QUICKSTART_DATA),
        "data.extra_eval": "[]",
        "data.max_train_samples": 16,
        "data.max_eval_samples": 5,
        "data.packing.enabled": "false",  # batches of clips (packing by default: tests/integration)
        "training.max_steps": 4,
        "training.batch_size": 4,
        "training.warmup_steps": 0,
        "training.learning_rate": 1e-2,
        "training.save_steps": 1,
        "training.save_total_limit": 4,
        "eval.batch_size": 2,
        "eval.max_new_tokens": 6,
        "eval.regression_set": "null",
        "output.dir": str(out),
        "output.plot": "false",
        "output.run_name": name,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def run_cli(
    args: list[str], trace: Path | None = None, command: str = "run"
) -> subprocess.CompletedProcess[str]:
    import os

    env = dict(os.environ)
    if trace is not None:
        trace.mkdir(parents=True, exist_ok=True)
        env[TRACE_ENV] = str(trace)
    argv = cli_argv(command, "--config", "quickstart", *args)
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)


def adapter(run_dir: Path, checkpoint: str | None = None) -> dict[str, torch.Tensor]:
    folder = run_dir / "final" if checkpoint is None else run_dir / "checkpoints" / checkpoint / "weights"
    return load_file(folder / "adapter_model.safetensors")


def logged(run_dir: Path) -> list[dict[str, float]]:
    lines = (run_dir / "run.log").read_text().splitlines()
    return [json.loads(line.split(" ", 3)[3]) for line in lines if '"loss"' in line]


@pytest.fixture(scope="module")
def runs(toy_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 1-process run (batch 4) and one 2-process run (2 per process) of 4 steps each."""
    out = tmp_path_factory.mktemp("lora-processes")
    done = run_cli(overrides(toy_model_dir, out, "one"))
    assert done.returncode == 0, done.stderr[-3000:]
    two = ["--num-processes", "2", *overrides(toy_model_dir, out, "two", **{"training.batch_size": 2})]
    done = run_cli(two, trace=out / "trace-two")
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.slow
def test_lora_over_two_processes_matches_one_process(runs: Path) -> None:
    one, two = runs / "one", runs / "two"
    a, b = adapter(one), adapter(two)
    assert a.keys() == b.keys() and all("lora_" in k for k in a)
    start = load_file(one / "checkpoints" / "step-000001" / "weights" / "adapter_model.safetensors")
    moved = max(float((a[k] - start[k]).abs().max()) for k in a)
    assert moved > 5e-3  # the adapters trained (about 1e-2 per element)
    # Float tolerance: the gradients agree to ~1e-6 relative (the all-reduce sums in another order);
    # Adam's update divides by sqrt(v), which magnifies that for elements whose gradient is near zero,
    # so after 4 steps elements differ by up to ~2e-5: a hundred times below how far they moved.
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-4, msg=key)
    # the same token-weighted loss at every step, and the same samples counted
    assert [r["loss"] for r in logged(one)] == pytest.approx([r["loss"] for r in logged(two)], rel=1e-5)
    m1, m2 = (json.loads((r / "metrics.json").read_text()) for r in (one, two))
    assert m1["train"]["samples"] == m2["train"]["samples"] == 16
    assert json.loads((two / "plan.json").read_text())["processes"] == 2
    # both ranks ended with the same adapter, and each saw its own half of every step
    traces = [json.loads((runs / "trace-two" / f"trace-rank{r}.json").read_text()) for r in (0, 1)]
    assert traces[0]["trainable_sha256"] == traces[1]["trainable_sha256"]
    assert not {tuple(x) for x in traces[0]["seen_labels"]} & {tuple(x) for x in traces[1]["seen_labels"]}
    # only the adapter is written, by the main process only
    written = {p.name for p in (two / "final").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= written
    assert not list((two / "final").glob("model*.safetensors"))


@pytest.mark.slow
def test_sharded_evaluation_equals_one_process_evaluation(runs: Path) -> None:
    one, two = runs / "one", runs / "two"
    r1 = json.loads((one / "metrics.json").read_text())["evaluation"]
    r2 = json.loads((two / "metrics.json").read_text())["evaluation"]
    result = json.loads((two / "launch" / "result-machine0.json").read_text())
    assert len(result["predictions"]["before"]["eval"]) == 5  # 3 batches of 2 over 2 ranks, padding dropped
    assert r1["before"]["eval"] == r2["before"]["eval"]  # the same base: every number equal
    assert r1["after"]["eval"]["wer"] == pytest.approx(r2["after"]["eval"]["wer"])
    p1 = (one / "predictions" / "eval-before.jsonl").read_text()
    p2 = (two / "predictions" / "eval-before.jsonl").read_text()
    assert p1 == p2


@pytest.mark.slow
def test_plan_prints_the_command_that_run_executed(runs: Path, toy_model_dir: Path) -> None:
    args = ["--num-processes", "2", *overrides(toy_model_dir, runs, "two", **{"training.batch_size": 2})]
    done = run_cli(args, command="plan")
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    planned = [line.split(":", 1)[1].strip() for line in lines if line.startswith("launch:")]
    executed = json.loads((runs / "two" / "launch.json").read_text())
    # the first line says run writes the files below, then executes the command on the next
    assert planned[0].startswith("whisper-tune run writes the files below")
    assert planned[0].endswith("executes:")
    assert planned[1] == executed["command"]
    assert f"{runs / 'two'}/launch/accelerate-machine0.yaml" in executed["argv"]
    assert any(line == f"writes {runs / 'two'}/launch/accelerate-machine0.yaml" for line in planned)


@pytest.mark.slow
def test_two_process_lora_resumes_mid_epoch_exactly(runs: Path, toy_model_dir: Path) -> None:
    two = runs / "two"
    checkpoint = two / "checkpoints" / "step-000002"  # mid-epoch: 4 steps of 4 clips are one epoch of 16
    args = overrides(
        toy_model_dir,
        runs,
        "resumed",
        **{"training.batch_size": 2, "training.resume_from": str(checkpoint), "eval.before": "false"},
    )
    done = run_cli(["--num-processes", "2", *args], trace=runs / "trace-resumed")
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = logged(runs / "resumed")
    assert [r["step"] for r in resumed] == [3, 4]
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in logged(two)[2:]], rel=1e-5)
    full, again = adapter(two), adapter(runs / "resumed")
    for key in full:
        torch.testing.assert_close(again[key], full[key], rtol=1e-5, atol=1e-7, msg=key)
    traces = [json.loads((runs / "trace-resumed" / f"trace-rank{r}.json").read_text()) for r in (0, 1)]
    before = [json.loads((runs / "trace-two" / f"trace-rank{r}.json").read_text()) for r in (0, 1)]
    for t_before, t_after in zip(before, traces, strict=True):
        assert t_after["seen_labels"] == t_before["seen_labels"][4:]  # the rest of the same epoch
