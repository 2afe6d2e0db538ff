"""CPU benchmark of the cuda-lora backend's three base modes: unquantised, int8 and 4-bit (bitsandbytes).

One command runs every mode, each in its own process (peak resident memory is a per-process maximum, so
modes measured in one process would hide each other's peaks). Each process is a whole
``whisper-tune run``: real pretrained tiny.en (``pip:tiny.en``), the quickstart data, LoRA r=32 on
q_proj/v_proj, the seeds' learning rate 1e-3; WER (normalised and raw) on the quickstart ``eval`` set
before and after a handful of steps, training samples/s, the adapter's size on disk and the process's
peak RSS. The "before" WER compares the quantised bases with the unquantised one: a decoder broken by
quantisation shows there first.

    python benchmarks/cuda_lora_cpu.py --out benchmarks/results/cuda-lora-cpu.json

Needs the cuda-lora backend and bitsandbytes (pip install -e backends/cuda-lora[bnb]) and the
quickstart weights (pip install -e .[quickstart]). CPU speed says nothing about GPU speed: on the CPU
the quantised modes dequantise in software.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MODES = ("none", "int8", "4bit")


def overrides(mode: str, args: argparse.Namespace, out: Path) -> list[str]:
    return [
        "backend.name=cuda-lora",
        "backend.device=cpu",
        f"backend.quantization={mode}",
        f"data.dataset={REPO / 'data' / 'quickstart'}",
        "data.extra_eval=[]",
        f"data.max_eval_samples={args.eval_clips}",
        "eval.regression_set=null",
        f"eval.max_new_tokens={args.max_new_tokens}",
        f"training.max_steps={args.steps}",
        f"training.batch_size={args.batch}",
        f"training.learning_rate={args.learning_rate}",
        "training.lora.target_modules=[q_proj, v_proj]",  # the seeds' adapter, as its results were measured
        "data.packing.enabled=false",  # clips as they are, as its results were measured
        "training.warmup_steps=0",
        f"training.precision={args.precision}",
        f"training.gradient_checkpointing={str(args.gradient_checkpointing).lower()}",
        "training.report_to=[none]",
        f"output.dir={out}",
        f"output.run_name={mode}",
        "output.plot=false",
    ]


def worker(mode: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """One mode, in this process: a whole run, then what the table needs from its metrics.json."""
    from whisper_tune import load_config, run
    from whisper_tune.console import Reporter

    started, load_before = time.perf_counter(), os.getloadavg()[0]
    summary = run(load_config("quickstart", overrides(mode, args, out)), reporter=Reporter.silent())
    metrics = summary.metrics
    before, after = metrics["evaluation"]["before"]["eval"], metrics["evaluation"]["after"]["eval"]
    adapter = Path(metrics["final_model_dir"]) / "adapter_model.safetensors"
    return {
        "mode": mode,
        "wer_before": before["normalized_wer"],
        "wer_after": after["normalized_wer"],
        "raw_wer_before": before["wer"],
        "raw_wer_after": after["wer"],
        "eval_clips": before["samples"],
        "steps": metrics["train"]["steps"],
        "train_samples": metrics["train"]["samples"],
        "train_seconds": metrics["train"]["seconds"],
        "samples_per_second": metrics["train"]["samples_per_second"],
        "first_loss": summary_loss(summary.run_dir, first=True),
        "final_loss": metrics["train"]["final_loss"],
        "eval_seconds": metrics["eval_seconds"],
        "adapter_bytes": adapter.stat().st_size,
        "peak_rss_bytes": metrics["peak_memory_bytes"],
        "wall_seconds": round(time.perf_counter() - started, 1),
        # 1-minute load average at the start and the end: other work on the machine slows samples/s
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def summary_loss(run_dir: Path, first: bool) -> float | None:
    records = [
        json.loads(line.split(" ", 3)[3])
        for line in (run_dir / "run.log").read_text().splitlines()
        if '"loss"' in line
    ]
    return records[0 if first else -1]["loss"] if records else None


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("torch", "transformers", "peft", "accelerate", "bitsandbytes")}


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| base | WER before → after (normalised) | raw WER before → after | loss first → last "
        "| samples/s | adapter | peak RSS | load |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['wer_before']:.1f} % → {r['wer_after']:.1f} % "
            f"| {r['raw_wer_before']:.1f} % → {r['raw_wer_after']:.1f} % "
            f"| {r['first_loss']:.3f} → {r['final_loss']:.3f} | {r['samples_per_second']:.2f} "
            f"| {r['adapter_bytes'] / 1e6:.2f} MB | {r['peak_rss_bytes'] / 2**30:.2f} GiB "
            f"| {r['load_average'][0]:.1f} / {r['load_average'][1]:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per mode")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--eval-clips", type=int, default=40, help="quickstart eval clips (it has 40)")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:  # one mode in this process: print its row as the last line
        print(json.dumps(worker(args.worker, args, args.workdir)))
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="cuda-lora-cpu-bench-") as tmp:
        for mode in args.modes:
            argv = [sys.executable, __file__, "--worker", mode, "--workdir", tmp]
            for flag in ("steps", "batch", "learning_rate", "precision", "eval_clips", "max_new_tokens"):
                argv += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
            argv.append(
                "--gradient-checkpointing" if args.gradient_checkpointing else "--no-gradient-checkpointing"
            )
            done = subprocess.run(argv, capture_output=True, text=True, env=os.environ.copy())
            if done.returncode != 0:
                sys.exit(f"mode {mode} failed:\n{done.stderr[-4000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"{mode}: {rows[-1]}", file=sys.stderr)
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "versions": versions(),
        "settings": {
            "model": "pip:tiny.en",
            "lora": "r=32 alpha=64 dropout=0.05 on q_proj, v_proj",
            "steps": args.steps,
            "batch": args.batch,
            "learning_rate": args.learning_rate,
            "precision": args.precision,
            "gradient_checkpointing": args.gradient_checkpointing,
            "eval_clips": args.eval_clips,
            "max_new_tokens": args.max_new_tokens,
        },
        "modes": rows,
    }
    print(table(rows))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
