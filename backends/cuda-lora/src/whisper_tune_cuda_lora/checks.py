"""The ``cuda-lora`` backend's pre-flight checks: pure functions of the config, the hardware facts
(``Capabilities``) and whether bitsandbytes is installed, so every message is testable without a GPU."""

from __future__ import annotations

import math
from pathlib import Path

from whisper_tune.backend.processes import process_issues
from whisper_tune.backend.protocol import Capabilities, Issue
from whisper_tune.config.schema import RunConfig
from whisper_tune_cuda_lora.memory import (
    USABLE_FRACTION,
    MemoryEstimate,
    estimate,
    model_shape,
    read_json,
)
from whisper_tune_cuda_lora.options import BNB_INSTALL, CudaLoraOptions

CPU_MODE_HINT = "or backend.device=cpu (the CPU mode: slow, for tests and trying the recipe)"

#: The oldest bitsandbytes whose CPU backend trains int8 correctly: 0.46.1's CPU int8 matmul gives
#: garbage on tiny.en (loss 11.5 where 0.47.0-0.50.2 give 1.47; greedy decoding repeats one token).
BNB_CPU_MIN = (0, 47)


def check_config(config: RunConfig, caps: Capabilities, *, bnb_version: str | None) -> list[Issue]:
    """``bnb_version``: the installed bitsandbytes version, None when it is not installed."""
    opts = config.backend.options_as(CudaLoraOptions)
    issues = _device_issues(config, opts, caps)
    if config.training.method != "lora":
        issues.append(
            Issue(
                "training.method",
                f"the cuda-lora backend trains LoRA adapters, not training.method={config.training.method}",
                hint="leave training.method unset (lora), or use --backend reference / accelerate for full "
                "fine-tuning",
            )
        )
    if opts.quantization != "none":
        issues += _bnb_issues(opts, bnb_version)
    issues += _mel_issues(config.model.name)
    if opts.device == "cuda" and caps.cuda_memory_gib:
        issues += _memory_issues(config, opts, caps.cuda_memory_gib[0])
    return issues


def _bnb_issues(opts: CudaLoraOptions, version: str | None) -> list[Issue]:
    if version is None:
        return [
            Issue(
                "backend.quantization",
                f"quantization '{opts.quantization}' needs bitsandbytes, which is not installed",
                hint=f"{BNB_INSTALL}, or backend.quantization=none",
                run_only=True,
            )
        ]
    if opts.device == "cpu" and _release(version) < BNB_CPU_MIN:
        wanted = ".".join(map(str, BNB_CPU_MIN))
        return [
            Issue(
                "backend.quantization",
                f"bitsandbytes {version} cannot train quantization '{opts.quantization}' on the CPU "
                f"(its CPU backend needs {wanted} or newer; 0.46 computes wrong int8 results)",
                hint=f"{BNB_INSTALL}, or backend.quantization=none",
                run_only=True,
            )
        ]
    return []


def _release(version: str) -> tuple[int, ...]:
    """(major, minor) of a version string such as '0.50.2' or '0.47.0.dev0' (unparsable: (0, 0))."""
    parts = []
    for piece in version.split(".")[:2]:
        digits = "".join(c for c in piece if c.isdigit()) if piece[:1].isdigit() else ""
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts) if len(parts) == 2 else (0, 0)


def _device_issues(config: RunConfig, opts: CudaLoraOptions, caps: Capabilities) -> list[Issue]:
    no_gpu = Issue(
        "backend.device",
        "no CUDA device found (torch.cuda.is_available() is False)",
        hint="run on a machine with an NVIDIA GPU and a CUDA build of torch, " + CPU_MODE_HINT,
        hardware=True,
    )
    issues = process_issues(
        caps,
        cpu=opts.device == "cpu",
        num_processes=opts.num_processes,
        precision=config.training.precision,
        no_gpu=no_gpu,
        bf16_message="this GPU does not support bf16 (it needs compute capability 8.0 or newer)",
    )
    if opts.device == "cuda" and config.training.precision == "fp32":
        what = (
            "keeps the base in fp32 (twice the memory of bf16)"
            if opts.quantization == "none"
            else ("computes without autocast (bitsandbytes casts every input to fp16)")
        )
        issues.append(
            Issue(
                "training.precision",
                f"fp32 with quantization '{opts.quantization}' {what}, and is slower",
                level="warning",
                hint="set training.precision=bf16"
                + (" or fp16 (the seeds)" if opts.quantization == "int8" else ""),
            )
        )
    return issues


def model_mel_bins(name: str) -> int | None:
    shape = model_shape(name)
    return shape.num_mel_bins if shape else None


def extractor_mel_bins(name: str) -> int | None:
    """feature_size of a local model directory's preprocessor_config.json (None: not a local directory)."""
    config = read_json(Path(name).expanduser() / "preprocessor_config.json")
    size = config.get("feature_size") if config else None
    return size if isinstance(size, int) else None


def _mel_issues(name: str) -> list[Issue]:
    model_mels, extractor_mels = model_mel_bins(name), extractor_mel_bins(name)
    if model_mels is None or extractor_mels is None or model_mels == extractor_mels:
        return []
    return [
        Issue(
            "model.name",
            f"'{name}' expects {model_mels} mel bins but its feature extractor makes {extractor_mels}",
            hint=f"use a preprocessor_config.json with feature_size={model_mels} "
            "(large-v3 and turbo use 128 mel bins, earlier models 80)",
        )
    ]


def memory_estimate(
    config: RunConfig, opts: CudaLoraOptions, batch: int | None = None
) -> MemoryEstimate | None:
    shape = model_shape(config.model.name)
    if shape is None:
        return None
    return estimate(
        shape,
        quantization=opts.quantization,
        checkpointing=config.training.gradient_checkpointing,
        batch=batch or config.training.batch_size,
        precision=config.training.precision,
        lora_r=config.training.lora.r,
        target_modules=config.training.lora.target_modules,
        double_quant=opts.bnb_4bit_double_quant,
    )


def _memory_issues(config: RunConfig, opts: CudaLoraOptions, memory_gib: float) -> list[Issue]:
    est = memory_estimate(config, opts)
    if est is None or est.peak_gib <= memory_gib * USABLE_FRACTION:
        return []
    training = config.training
    batch = training.batch_size
    fits = est.largest_batch(memory_gib)
    suggestions = []
    if fits > 0:
        accumulation = math.ceil(batch * training.gradient_accumulation_steps / fits)
        suggestions.append(
            f"training.batch_size={fits} training.gradient_accumulation_steps={accumulation} "
            "keeps about the same global batch"
        )
    if not training.gradient_checkpointing:
        with_ckpt = estimate_with(config, opts, checkpointing=True)
        if with_ckpt is not None:
            room = with_ckpt.largest_batch(memory_gib)
            if room >= batch:
                suggestions.append(
                    f"training.gradient_checkpointing=true makes batch {batch} fit "
                    f"(about {with_ckpt.peak_gib:.1f} GiB)"
                )
            elif room > 0:
                suggestions.append(f"training.gradient_checkpointing=true with training.batch_size={room}")
    if opts.quantization != "4bit" and fits == 0:
        suggestions.append("backend.quantization=4bit holds the base in a quarter of bf16's memory")
    return [
        Issue(
            "training.batch_size",
            f"batch {batch} needs about {est.peak_gib:.1f} GiB of GPU memory (estimate, +-15%) but the GPU "
            f"has {memory_gib:.1f} GiB; "
            + (f"the largest batch that fits is about {fits}" if fits else "not even batch 1 fits"),
            hint="; or ".join(suggestions) or "use a GPU with more memory or a smaller model",
            hardware=True,
        )
    ]


def estimate_with(config: RunConfig, opts: CudaLoraOptions, *, checkpointing: bool) -> MemoryEstimate | None:
    training = config.training.model_copy(update={"gradient_checkpointing": checkpointing})
    return memory_estimate(config.model_copy(update={"training": training}), opts)
