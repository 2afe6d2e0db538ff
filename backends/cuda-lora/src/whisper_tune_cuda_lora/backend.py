"""The ``cuda-lora`` backend: LoRA (peft) on one GPU over an int8 / 4-bit (bitsandbytes) or bf16 base.

Training is the core's ``TrainLoop`` (AdamW, schedule, accumulation, clipping, resumable checkpoints) on
GPU 0 under fp16/bf16 autocast, with adapter-only weights in every checkpoint and in the final model
directory (``adapter_config.json`` naming the base + ``adapter_model.safetensors``; the core adds the
processor files, this backend the generation config). Evaluation is the core's batched
``generate_predictions`` under the same autocast, which works under int8/4-bit where
``predict_with_generate`` does not. ``whisper-tune merge`` folds the adapter into a plain model.
"""

from __future__ import annotations

import os
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel

from whisper_tune.backend.protocol import Capabilities, Issue, Plan, Probe, RecipeNeeds, TrainJob, TrainResult
from whisper_tune.config.schema import RunConfig
from whisper_tune_cuda_lora.checks import check_config, memory_estimate
from whisper_tune_cuda_lora.memory import lora_params, model_shape
from whisper_tune_cuda_lora.options import CudaLoraOptions

if TYPE_CHECKING:
    from whisper_tune.recipe.progress import Reporter


def cuda_capabilities() -> Capabilities:
    """What torch sees: CUDA device count, memory of each (GiB) and bf16 support. Never raises."""
    cpus = os.cpu_count() or 1
    try:
        import torch

        if not torch.cuda.is_available():
            return Capabilities(cpu_count=cpus)
        count = torch.cuda.device_count()
        memory = tuple(
            round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1) for i in range(count)
        )
        return Capabilities(
            cpu_count=cpus,
            cuda_devices=count,
            cuda_memory_gib=memory,
            cuda_bf16=torch.cuda.is_bf16_supported(),
        )
    except Exception:  # a broken driver must not break 'whisper-tune backends'
        return Capabilities(cpu_count=cpus)


class CudaLoraBackend:
    name: ClassVar[str] = "cuda-lora"
    description: ClassVar[str] = "one GPU, LoRA (peft) on an int8 / 4-bit (bitsandbytes) or bf16 base"
    Options: ClassVar[type[BaseModel]] = CudaLoraOptions

    def probe(self) -> Probe:
        for module, hint in (("torch", "pip install torch"), ("peft", "pip install peft")):
            if find_spec(module) is None:
                return Probe(False, f"{module} is not installed", hint)
        caps = cuda_capabilities()
        if caps.cuda_devices:
            memory = f" ({caps.cuda_memory_gib[0]:.0f} GiB)" if caps.cuda_memory_gib else ""
            mode = f"GPU: cuda:0 of {caps.cuda_devices} CUDA device(s){memory}"
        else:
            mode = "CPU dev mode only (no CUDA GPU here; runs need backend.device=cpu)"
        return Probe(True, "", "", caps, mode=mode)

    def check(self, config: RunConfig, caps: Capabilities) -> list[Issue]:
        return check_config(config, caps, bnb_installed=find_spec("bitsandbytes") is not None)

    def recipe_needs(self, config: RunConfig) -> RecipeNeeds:
        return RecipeNeeds()

    def plan(self, config: RunConfig, caps: Capabilities) -> Plan:
        opts = _options(config)
        training = config.training
        if opts.device == "cpu":
            devices = f"CPU ({caps.cpu_count} cores; dev mode)"
        elif caps.cuda_devices:
            devices = f"cuda:0 ({caps.cuda_memory_gib[0]:.0f} GiB)" if caps.cuda_memory_gib else "cuda:0"
        else:
            devices = "cuda:0 (no CUDA device detected here)"
        base = {"none": f"{training.precision} (unquantised)", "int8": "int8 (bitsandbytes LLM.int8)"}.get(
            opts.quantization, f"4-bit {opts.bnb_4bit_quant_type} (bitsandbytes)"
        )
        lora = opts.lora
        notes = [
            f"base weights: {base}; autocast: "
            + ("none (fp32)" if training.precision == "fp32" else training.precision),
            f"LoRA r={lora.r} alpha={lora.alpha:g} dropout={lora.dropout:g} "
            f"on {', '.join(lora.target_modules)}",
            f"gradient checkpointing: {'on' if training.gradient_checkpointing else 'off'}",
        ]
        shape = model_shape(config.model.name)
        if shape is not None:
            trainable = lora_params(shape, lora.r, lora.target_modules)
            notes.append(
                f"trainable parameters: about {trainable / 1e6:.2f} M of {shape.params / 1e6:.0f} M "
                f"({100 * trainable / shape.params:.2f} %); "
                f"adapter on disk about {4 * trainable / 1e6:.0f} MB"
            )
            est = memory_estimate(config, opts)
            if est is not None and opts.device == "cuda":
                line = f"GPU memory estimate at batch {training.batch_size}: {est.peak_gib:.1f} GiB (+-15%)"
                if caps.cuda_memory_gib:
                    line += (
                        f"; the largest batch that fits is about {est.largest_batch(caps.cuda_memory_gib[0])}"
                    )
                notes.append(line)
        return Plan(
            backend=self.name,
            devices=devices,
            processes=1,
            batch_per_device=training.batch_size,
            gradient_accumulation_steps=training.gradient_accumulation_steps,
            placement=(
                f"whole model on {opts.device if opts.device == 'cpu' else 'cuda:0'}; adapters only train",
            ),
            notes=tuple(notes),
        )

    def train(self, job: TrainJob, reporter: Reporter) -> TrainResult:
        import torch

        from whisper_tune.recipe.collator import SpeechSeq2SeqCollator
        from whisper_tune.recipe.evaluation import PhaseOutput, evaluate_sets, result_fields
        from whisper_tune.recipe.loop import TrainLoop
        from whisper_tune.recipe.model import load_model
        from whisper_tune.recipe.prepared import PreparedDataset
        from whisper_tune.recipe.selection import best_checkpoint_for_job
        from whisper_tune_cuda_lora.model import (
            autocast_factory,
            build_lora_model,
            load_adapter,
            save_adapter,
            torch_dtype,
            trainable_parameters,
        )

        cfg = job.config
        opts = _options(cfg)
        device = "cpu" if opts.device == "cpu" else "cuda:0"
        cuda = device != "cpu"
        torch.manual_seed(cfg.training.seed)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        if job.train:
            model = build_lora_model(job.model_dir, cfg.model, cfg.training, opts)
            trainable, total = trainable_parameters(model)
            reporter.info(
                f"LoRA: {trainable:,} trainable parameters of {total:,} ({100 * trainable / total:.2f} %), "
                f"base {opts.quantization}"
            )
        else:  # evaluation only: the base itself (a fresh adapter would change nothing)
            if opts.quantization == "none":
                model = load_model(job.model_dir, cfg.model, dtype=torch_dtype(cfg.training.precision)).to(
                    device
                )
            else:
                from whisper_tune_cuda_lora.model import load_base

                model = load_base(job.model_dir, cfg.model, cfg.training, opts)
        autocast = autocast_factory("cuda" if cuda else "cpu", cfg.training.precision)
        collator = SpeechSeq2SeqCollator(model.config.decoder_start_token_id)
        eval_sets = {name: PreparedDataset(path) for name, path in job.eval_data.items()}
        phases: dict[str, PhaseOutput] = {}

        def evaluate(phase: str) -> None:
            phases[phase] = evaluate_sets(
                model,
                eval_sets,
                collator,
                model_cfg=cfg.model,
                eval_cfg=cfg.eval,
                phase=phase,
                device=device,
                autocast=autocast(),
                reporter=reporter,
            )

        if job.evaluate_before and eval_sets:
            evaluate("before")
        loop_result = None
        if job.train and job.train_data is not None:
            loop = TrainLoop(
                model,
                PreparedDataset(job.train_data),
                collator,
                cfg.training,
                job.run_dir / "checkpoints",
                reporter,
                device=device,
                autocast=autocast,
                save_weights=save_adapter,
                load_weights=load_adapter,
                num_workers=opts.num_workers,
                best=best_checkpoint_for_job(
                    job,
                    model,
                    collator,
                    reporter,
                    device=device,
                    autocast=autocast,
                    save_weights=save_adapter,
                    load_weights=load_adapter,
                ),
            )
            loop_result = loop.run(resume_from=Path(job.resume_from) if job.resume_from else None)
        final_dir = None
        if loop_result is not None and cfg.output.save_final_model and not loop_result.interrupted:
            final_dir = Path(cfg.output.model_dir) if cfg.output.model_dir else job.run_dir / "final"
            save_adapter(model, final_dir)
            model.generation_config.save_pretrained(final_dir)  # language/task, for merge and inference
        if job.evaluate_after and eval_sets and loop_result is not None and not loop_result.interrupted:
            evaluate("after")
        return TrainResult(
            **result_fields(phases),
            log_history=loop_result.log_history if loop_result else [],
            steps=loop_result.steps if loop_result else 0,
            train_samples=loop_result.samples if loop_result else 0,
            train_seconds=round(loop_result.seconds, 3) if loop_result else 0.0,
            peak_memory_bytes=_peak_memory_bytes(cuda),
            final_model_dir=final_dir,
            checkpoints=loop_result.checkpoints if loop_result else [],
            interrupted=bool(loop_result and loop_result.interrupted),
            selection=loop.best.summary() if loop_result and loop.best else {},
        )


def _peak_memory_bytes(cuda: bool) -> int:
    """Peak GPU memory allocated by torch (cuda), else the process's peak resident memory."""
    if cuda:
        import torch

        return int(torch.cuda.max_memory_allocated())
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _options(config: RunConfig) -> CudaLoraOptions:
    options = config.backend.options
    if isinstance(options, CudaLoraOptions):
        return options
    return CudaLoraOptions.model_validate(options.model_dump())
