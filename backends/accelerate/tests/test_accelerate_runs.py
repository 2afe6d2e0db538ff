"""Real multi-process runs: ``whisper-tune run --backend accelerate`` on the CPU (gloo), through the real
``accelerate launch``, with a random 1+1-layer Whisper and 16 training / 5 eval clips of the quickstart data.

The main run accumulates 2 micro-batches per step and runs 4 steps: 4 x 2 per device x 2 processes x 2 =
32 samples, two epochs of the 16 clips, with a checkpoint after every step.

The workers write a trace (``WHISPER_TUNE_TRACE``): the labels of every batch each rank trained
on and a hash of its weights after training. From that and the run directory the tests show that the
gradients are synchronised (both ranks end with identical weights, which differ from the start although
each rank saw other data), that the data is sharded (each rank's samples are disjoint and together make the
epoch), and that the evaluation gathered over both ranks is exactly a one-process evaluation of the same
weights (5 eval clips in batches of 2: three batches over two ranks, so the padding must be dropped).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from helpers import QUICKSTART_DATA, child_process, cli_argv, run_child
from whisper_tune_testing import needs_backend

pytestmark = needs_backend("accelerate")

TRACE_ENV = "WHISPER_TUNE_TRACE"
MAIN_RUN = {"training.gradient_accumulation_steps": 2, "training.save_steps": 1}


def overrides(model: Path, out: Path, run_name: str, **extra: object) -> list[str]:
    base: dict[str, object] = {
        "backend.device": "cpu",
        "model.name": str(model),
        "data.dataset": str(QUICKSTART_DATA),
        "data.max_train_samples": 16,
        "data.max_eval_samples": 5,
        "data.extra_eval": "[]",
        "data.packing.enabled": "false",  # batches of clips (packing by default: tests/integration)
        "training.max_steps": 4,
        "training.batch_size": 2,
        "training.warmup_steps": 0,
        "training.learning_rate": 1e-3,
        "training.method": "full",  # every weight of the random toy model (LoRA: its own test)
        "training.freeze_encoder": "false",
        "training.save_steps": 2,
        "training.gradient_accumulation_steps": 1,
        "eval.batch_size": 2,
        "eval.max_new_tokens": 6,
        "eval.regression_set": "null",  # the bundled guard sets have their own tests (test_guard_rails.py)
        "output.dir": str(out),
        "output.run_name": run_name,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def run_cli(
    args: list[str], trace: Path | None = None, timeout: int = 300
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if trace is not None:
        trace.mkdir(parents=True, exist_ok=True)
        env[TRACE_ENV] = str(trace)
    # in its own process group, killed with accelerate's workers if it fails or times out
    return run_child(
        cli_argv("run", "--config", "quickstart", "--backend", "accelerate", *args), env=env, timeout=timeout
    )


def traces(folder: Path) -> list[dict[str, Any]]:
    return [json.loads((folder / f"trace-rank{r}.json").read_text()) for r in range(2)]


def logged_steps(run_dir: Path) -> list[dict[str, float]]:
    lines = (run_dir / "run.log").read_text().splitlines()
    return [json.loads(line.split(" ", 3)[3]) for line in lines if '"loss"' in line]


def digest_of(model_dir: Path) -> str:
    from transformers import WhisperForConditionalGeneration

    from whisper_tune.execution.worker import weights_digest

    return weights_digest(WhisperForConditionalGeneration.from_pretrained(model_dir).state_dict())


@pytest.fixture(scope="module")
def two_process_run(toy_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``whisper-tune run --backend accelerate --num-processes 2 backend.device=cpu``: 4 steps, 2 epochs."""
    out = tmp_path_factory.mktemp("accelerate-runs")
    args = overrides(toy_model_dir, out, "two", **MAIN_RUN)
    done = run_cli(["--num-processes", "2", *args], trace=out / "trace-two")
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.slow
def test_two_processes_synchronise_gradients_and_shard_the_data(
    two_process_run: Path, toy_model_dir: Path
) -> None:
    from whisper_tune.data.store import PreparedDataset

    run_dir = two_process_run / "two"
    rank0, rank1 = traces(two_process_run / "trace-two")
    assert rank0["world"] == rank1["world"] == 2
    # Synchronised: identical weights on both ranks after 4 steps on different data, and they moved.
    assert rank0["weights_sha256"] == rank1["weights_sha256"]
    assert rank0["weights_sha256"] != digest_of(toy_model_dir)
    assert rank0["weights_sha256"] == digest_of(run_dir / "final")
    # Sharded: per epoch, 4 micro-batches x 2 per device on each rank = the 16 clips, each on one rank.
    train = PreparedDataset(run_dir / "prepared" / "train")
    start = 50257  # <|startoftranscript|> of the English-only vocabulary, stripped by the collator
    index_of = {tuple(t for t in s["labels"] if t != start): i for i, s in enumerate(train.samples)}
    assert len(index_of) == 16
    seen = [[index_of[tuple(labels)] for labels in trace["seen_labels"]] for trace in (rank0, rank1)]
    assert len(seen[0]) == len(seen[1]) == 16
    for epoch in (slice(0, 8), slice(8, 16)):
        first, second = set(seen[0][epoch]), set(seen[1][epoch])
        assert len(first) == len(second) == 8 and not first & second
        assert first | second == set(range(16))
    assert seen[0][:8] != seen[0][8:]  # each epoch has its own permutation
    # The run records the global batch and counts steps from it.
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 4 and metrics["train"]["samples"] == 32
    assert json.loads((run_dir / "plan.json").read_text())["global_batch"] == 8
    log = (run_dir / "run.log").read_text()
    assert "2 per device x 2 processes x 2 accumulation = 8" in log and "(not rescaled)" in log
    assert [(r["step"], r["epoch"]) for r in logged_steps(run_dir)] == [
        (1, 0.5),
        (2, 1.0),
        (3, 1.5),
        (4, 2.0),
    ]
    assert [p.name for p in sorted((run_dir / "checkpoints").iterdir())] == ["step-000003", "step-000004"]


@pytest.mark.slow
def test_gathered_evaluation_equals_one_process_evaluation(
    two_process_run: Path, toy_model_dir: Path
) -> None:
    import torch

    from whisper_tune.config_loading import load_config
    from whisper_tune.data.collator import SpeechSeq2SeqCollator
    from whisper_tune.data.store import PreparedDataset
    from whisper_tune.evaluation.evaluate import generate_predictions, score_predictions
    from whisper_tune.models.loading import load_model, load_processor

    run_dir = two_process_run / "two"
    config = load_config(run_dir / "config.yaml")
    result = json.loads((run_dir / "launch" / "result-machine0.json").read_text())
    eval_set = PreparedDataset(run_dir / "prepared" / "eval")
    assert len(eval_set) == 5
    processor = load_processor(str(run_dir / "final"), config.model)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for phase, weights in (("before", toy_model_dir), ("after", run_dir / "final")):
        model = load_model(str(weights), config.model, dtype=torch.float32)
        collator = SpeechSeq2SeqCollator(model.config.decoder_start_token_id)
        single = generate_predictions(model, eval_set, collator, model_cfg=config.model, eval_cfg=config.eval)
        gathered = result["predictions"][phase]["eval"]
        assert len(gathered) == 5
        assert gathered == single, phase
        scored = score_predictions(
            processor.tokenizer, single, eval_set.texts, model_cfg=config.model, eval_cfg=config.eval
        )
        assert metrics["evaluation"][phase]["eval"]["wer"] == pytest.approx(scored["metrics"]["wer"])
    lines = (run_dir / "predictions" / "eval-after.jsonl").read_text().splitlines()
    assert len(lines) == 5


@pytest.mark.slow
def test_resume_continues_the_two_process_run(two_process_run: Path, toy_model_dir: Path) -> None:
    full = two_process_run / "two"
    checkpoint = full / "checkpoints" / "step-000003"  # mid-epoch: 2 of the epoch's 4 micro-batches done
    assert json.loads((checkpoint / "trainer_state.json").read_text())["processes"] == 2
    done = run_cli(
        [
            "--num-processes",
            "2",
            *overrides(
                toy_model_dir,
                two_process_run,
                "resumed",
                **MAIN_RUN,
                **{"training.resume_from": str(checkpoint), "eval.before": "false"},
            ),
        ],
        trace=two_process_run / "trace-resumed",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = logged_steps(two_process_run / "resumed")
    assert [r["step"] for r in resumed] == [4]  # only the step after the checkpoint ran
    full_log = logged_steps(full)
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in full_log[3:]], rel=1e-4)
    # the resumed ranks trained on the rest of the same epoch and ended with the same weights
    resumed_traces = traces(two_process_run / "trace-resumed")
    full_traces = traces(two_process_run / "trace-two")
    for before, after in zip(full_traces, resumed_traces, strict=True):
        assert after["seen_labels"] == before["seen_labels"][12:]
    a, b = (t["weights_sha256"] for t in resumed_traces)
    assert a == b
    assert digest_of(two_process_run / "resumed" / "final") == digest_of(full / "final")


@pytest.mark.slow
def test_torchrun_starts_one_run_with_the_weights_of_num_processes_2(
    two_process_run: Path, toy_model_dir: Path, tmp_path: Path
) -> None:
    """``torchrun --nproc_per_node 2 -m whisper_tune run …`` (the launcher of HF's examples), as ``plan
    --num-processes 2`` prints it: its two processes are the two ranks of ONE run — one run directory (its
    name not given, so each rank would have made its own), the data prepared once by rank 0, each rank on
    its own shard — ending with the weights of the ``--num-processes 2`` run of the same config."""
    import shlex
    import sys

    out = tmp_path / "runs"
    args = [
        a for a in overrides(toy_model_dir, out, "unused", **MAIN_RUN) if not a.startswith("output.run_name")
    ]
    planned = subprocess.run(
        cli_argv("plan", "--config", "quickstart", "--backend", "accelerate", "--num-processes", "2", *args),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert planned.returncode == 0, planned.stderr
    (line,) = [line for line in planned.stdout.splitlines() if line.startswith("or with torchrun:")]
    printed = shlex.split(line.removeprefix("or with torchrun:"))
    assert printed[:6] == ["torchrun", "--standalone", "--nproc_per_node", "2", "-m", "whisper_tune"]
    assert "--num-processes" not in printed
    assert printed[6:] == ["run", "--config", "quickstart", "--backend", "accelerate", *args]
    # as printed, with this interpreter's torchrun
    command = [sys.executable, "-m", "torch.distributed.run", *printed[1:]]
    trace = tmp_path / "trace"
    trace.mkdir()
    done = run_child(command, env={**os.environ, TRACE_ENV: str(trace)}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = out.iterdir()  # exactly one run directory
    assert done.stdout.count("run directory:") == 1 and str(run_dir) in done.stdout  # rank 0 reports
    assert (run_dir / "launch" / "job-ranks.json").is_file() and not (
        run_dir / "launch" / "result-machine0.json"
    ).exists()
    plan = json.loads((run_dir / "plan.json").read_text())
    assert plan["processes"] == 2 and plan["global_batch"] == 8 and "torchrun" in plan["devices"]
    rank0, rank1 = traces(trace)
    assert rank0["world"] == rank1["world"] == 2
    first_epoch = [{tuple(x) for x in trace["seen_labels"][:8]} for trace in (rank0, rank1)]
    assert len(first_epoch[0]) == 8 and not first_epoch[0] & first_epoch[1]  # sharded
    # the same loop, shards and steps as --num-processes 2: the same weights, and the same final/
    launched = traces(two_process_run / "trace-two")
    assert (
        rank0["seen_labels"] == launched[0]["seen_labels"]
        and rank1["seen_labels"] == launched[1]["seen_labels"]
    )
    assert rank0["weights_sha256"] == rank1["weights_sha256"] == launched[0]["weights_sha256"]
    assert digest_of(run_dir / "final") == digest_of(two_process_run / "two" / "final")
    assert json.loads((run_dir / "metrics.json").read_text())["train"]["steps"] == 4


@pytest.mark.slow
def test_two_machines_over_loopback(toy_model_dir: Path, tmp_path: Path, free_port: int) -> None:
    """Two launcher invocations (machine ranks 0 and 1, one process each) meeting at 127.0.0.1, with
    evaluation during training (sharded over the machines) keeping the best checkpoint."""
    trace = tmp_path / "trace"
    trace.mkdir()
    env = {**os.environ, TRACE_ENV: str(trace)}
    with contextlib.ExitStack() as stack:
        processes = []
        for rank in (0, 1):
            args = [
                "--num-processes",
                "1",
                *overrides(
                    toy_model_dir,
                    tmp_path,
                    f"machine{rank}",
                    **{
                        "backend.num_machines": 2,
                        "backend.machine_rank": rank,
                        "backend.main_process_ip": "127.0.0.1",
                        "backend.main_process_port": free_port,
                        "training.max_steps": 2,
                        "training.save_steps": "null",
                        "eval.before": "false",
                        "eval.steps": 1,
                        "eval.subset_size": 3,
                    },
                ),
            ]
            command = cli_argv("run", "--config", "quickstart", "--backend", "accelerate", *args)
            processes.append(stack.enter_context(child_process(command, stderr=subprocess.PIPE, env=env)))
        for process in processes:  # both "machines" are killed when the block ends, also on a failure
            _, err = process.communicate(timeout=300)
            assert process.returncode == 0, err[-3000:]
    rank0, rank1 = traces(trace)
    assert rank0["world"] == rank1["world"] == 2
    assert rank0["weights_sha256"] == rank1["weights_sha256"]
    assert len(rank0["seen_labels"]) == len(rank1["seen_labels"]) == 4
    assert not {tuple(x) for x in rank0["seen_labels"]} & {tuple(x) for x in rank1["seen_labels"]}
    # machine 0 (the main process) writes the model; both machines report the same gathered evaluation
    assert (tmp_path / "machine0" / "final" / "model.safetensors").is_file()
    assert not (tmp_path / "machine1" / "final").exists()
    plan = json.loads((tmp_path / "machine1" / "plan.json").read_text())
    assert plan["processes"] == 2 and plan["global_batch"] == 4
    m0, m1 = (json.loads((tmp_path / f"machine{r}" / "metrics.json").read_text()) for r in (0, 1))
    assert m0["evaluation"] == m1["evaluation"] and m0["train"]["steps"] == m1["train"]["steps"] == 2
    # evaluation during training: the same decisions on both machines, the best weights on machine 0
    assert m0["selection"] == m1["selection"] and m0["selection"]["evaluations"] == 2
    assert m0["selection"]["best_step"] in (1, 2) and m0["selection"]["kept"] == "best"
    assert (tmp_path / "machine0" / "checkpoints" / "best" / "best.json").is_file()
    assert not (tmp_path / "machine1" / "checkpoints" / "best").exists()


@pytest.mark.slow
def test_a_worker_error_is_one_clear_message(toy_model_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "not-a-checkpoint"
    broken.mkdir()
    (broken / "trainer_state.json").write_text(json.dumps({"step": 1, "log_history": []}))
    done = run_cli(
        [
            "--num-processes",
            "1",
            *overrides(toy_model_dir, tmp_path, "broken", **{"training.resume_from": str(broken)}),
        ]
    )
    assert done.returncode == 2, done.stderr[-3000:]  # the worker's ConfigError, re-raised by the parent
    assert "training process 0: checkpoint" in done.stderr and "has no weights" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_lora_trains_over_two_processes(toy_model_dir: Path, tmp_path: Path) -> None:
    """training.method=lora on the accelerate backend: DDP over the adapters only, adapter-only weights."""
    done = run_cli(
        [
            "--num-processes",
            "2",
            *overrides(
                toy_model_dir,
                tmp_path,
                "lora",
                **{"training.method": "lora", "training.max_steps": 2, "training.save_steps": "null"},
            ),
        ]
    )
    assert done.returncode == 0, done.stderr[-3000:]
    final = tmp_path / "lora" / "final"
    assert (final / "adapter_model.safetensors").is_file() and not (final / "model.safetensors").exists()
    metrics = json.loads((tmp_path / "lora" / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 2 and metrics["train"]["samples"] == 8  # 2 x 2 processes x 2


@pytest.mark.slow
def test_packed_timestamp_windows_shard_over_two_processes(toy_model_dir: Path, tmp_path: Path) -> None:
    """data.packing on the accelerate backend: each rank trains on its own packed windows, whose labels
    are Whisper's multi-segment timestamp format; the run counts windows and clips over both ranks."""
    from transformers import WhisperTokenizer

    from whisper_tune.data.timestamps import SpecialTokens

    packed = {
        "data.packing.enabled": "true",
        "data.max_train_samples": 60,  # ~165 s of clips: 6 windows an epoch, 4 are trained on
        "training.batch_size": 1,
        "training.max_steps": 2,
        "training.save_steps": "null",
    }
    done = run_cli(
        ["--num-processes", "2", *overrides(toy_model_dir, tmp_path, "packed", **packed)],
        trace=tmp_path / "trace",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    train = json.loads((tmp_path / "packed" / "metrics.json").read_text())["train"]
    assert train["windows"] == train["samples"] == 4  # 2 steps x 1 window x 2 processes
    assert train["clips"] > 3 * train["windows"] and train["audio_seconds"] > 2 * train["clips"]
    special = SpecialTokens.from_tokenizer(WhisperTokenizer.from_pretrained(toy_model_dir))
    rank0, rank1 = traces(tmp_path / "trace")
    windows = [tuple(labels) for trace in (rank0, rank1) for labels in trace["seen_labels"]]
    assert len(windows) == 4 and len(set(windows)) == 4  # sharded: no window trained twice
    assert set(map(tuple, rank0["seen_labels"])).isdisjoint(map(tuple, rank1["seen_labels"]))
    for labels in windows:
        stamps = [t for t in labels if special.is_timestamp(t)]
        assert labels[-1] == special.end
        assert special.no_timestamps not in labels and len(stamps) >= 6  # >= 3 segments, 2 stamps each
        assert stamps == sorted(stamps)


@pytest.mark.gpu
def test_fsdp_two_gpus_two_steps(toy_model_dir: Path, tmp_path: Path) -> None:
    """FSDP needs GPUs (Accelerate turns it on for GPU process groups only): run on a 2-GPU machine."""
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA GPUs")
    gpus = {"backend.device": "cuda", "backend.strategy": "fsdp"}
    args = overrides(toy_model_dir, tmp_path, "fsdp", **gpus)
    done = run_cli(["--num-processes", "2", *args, "training.max_steps=2"], trace=tmp_path / "trace")
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "fsdp" / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 2 and len(metrics["evaluation"]["after"]) == 1


@pytest.mark.slow
def test_eval_only_over_two_processes(two_process_run: Path, toy_model_dir: Path, tmp_path: Path) -> None:
    """``whisper-tune eval --backend accelerate``: no training, the gathered WER of the starting weights."""
    command = cli_argv(
        "eval",
        "--backend",
        "accelerate",
        "--num-processes",
        "2",
        "--model",
        str(toy_model_dir),
        "--data",
        str(QUICKSTART_DATA),
        "--split",
        "eval",
        "backend.device=cpu",
        "data.max_eval_samples=5",
        "data.extra_eval=[]",
        "eval.batch_size=2",
        "eval.max_new_tokens=6",
        f"output.dir={tmp_path}",
        "output.run_name=eval",
    )
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    trained = json.loads((two_process_run / "two" / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 0 and not (tmp_path / "eval" / "checkpoints").exists()

    # the same transcripts of the starting weights as the training run's evaluation before training
    # (whose metrics are on the report half its selection left: compare clip by clip)
    def before(run: Path) -> list[str]:
        return [json.loads(line)["prediction"] for line in (run / "predictions/eval-before.jsonl").open()]

    assert before(tmp_path / "eval") == before(two_process_run / "two")
    assert metrics["evaluation"]["before"]["eval"]["half"] == "all"
    assert trained["evaluation"]["before"]["eval"]["half"] == "report"


@pytest.mark.slow
def test_gpu_throughput_script_runs_on_the_cpu(tmp_path: Path) -> None:
    """The README's GPU command, with a tiny shape on CPU processes (the large-v3 run needs a GPU)."""
    import sys

    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu_full_ft.py"
    command = [sys.executable, str(script), "--out", str(tmp_path), "--shape", "tiny", "--cpu"]
    command += ["--precision", "fp32", "--steps", "2", "--batch-size", "2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    assert "2 steps, 4 samples" in last and "samples/s" in last and "peak CPU RSS" in last
