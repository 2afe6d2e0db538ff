"""The CPU reference backend: plain PyTorch on the CPU, full fine-tuning in fp32 (or bf16 autocast).

It is the executable spec of the recipe, the quickstart's engine and CI's vehicle. Every other backend
must agree with it on data, labels and metrics.
"""

from __future__ import annotations

import contextlib
import os
import resource
from importlib.util import find_spec
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from whisper_tune.backend.protocol import Capabilities, Issue, Plan, Probe, RecipeNeeds, TrainJob, TrainResult
from whisper_tune.config.schema import RunConfig
from whisper_tune.recipe.progress import Reporter


class ReferenceOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    threads: int | None = Field(None, gt=0, description="torch CPU threads; default: all cores.")
    num_workers: int = Field(
        0, ge=0, description="DataLoader worker processes (0 = load in the main process)."
    )


class ReferenceBackend:
    name: ClassVar[str] = "reference"
    description: ClassVar[str] = "plain PyTorch on the CPU (full fine-tuning); the recipe's executable spec"
    Options: ClassVar[type[BaseModel]] = ReferenceOptions

    def probe(self) -> Probe:
        caps = Capabilities(cpu_count=os.cpu_count() or 1)
        if find_spec("torch") is None:
            return Probe(False, "torch is not installed", "pip install torch", caps)
        return Probe(True, "", "", caps, mode=f"CPU, {caps.cpu_count} cores")

    def check(self, config: RunConfig, caps: Capabilities) -> list[Issue]:
        issues = []
        if config.training.precision == "fp16":
            issues.append(
                Issue(
                    "training.precision",
                    "fp16 is not supported on the CPU",
                    hint="use fp32 (default) or bf16",
                )
            )
        threads = getattr(config.backend.options, "threads", None)
        if threads and threads > caps.cpu_count:
            issues.append(
                Issue(
                    "backend.threads",
                    f"{threads} threads asked for, but this machine has {caps.cpu_count} CPU cores",
                    hint=f"set backend.threads={caps.cpu_count} or leave it unset",
                    hardware=True,
                )
            )
        return issues

    def recipe_needs(self, config: RunConfig) -> RecipeNeeds:
        return RecipeNeeds()

    def plan(self, config: RunConfig, caps: Capabilities) -> Plan:
        opts = config.backend.options
        threads = getattr(opts, "threads", None) or caps.cpu_count
        return Plan(
            backend=self.name,
            devices=f"CPU ({threads} threads)",
            processes=1,
            batch_per_device=config.training.batch_size,
            gradient_accumulation_steps=config.training.gradient_accumulation_steps,
            placement=("whole model on the CPU",),
            notes=(f"precision {config.training.precision}",),
        )

    def train(self, job: TrainJob, reporter: Reporter) -> TrainResult:
        import torch

        from whisper_tune.recipe.collator import SpeechSeq2SeqCollator
        from whisper_tune.recipe.evaluation import PhaseOutput, evaluate_sets, result_fields
        from whisper_tune.recipe.loop import TrainLoop
        from whisper_tune.recipe.model import load_model
        from whisper_tune.recipe.prepared import PreparedDataset
        from whisper_tune.recipe.selection import best_checkpoint_for_job

        cfg = job.config
        opts = cfg.backend.options
        assert isinstance(opts, ReferenceOptions)
        if opts.threads:
            torch.set_num_threads(opts.threads)
        torch.manual_seed(cfg.training.seed)
        model = load_model(job.model_dir, cfg.model, dtype=torch.float32)
        if cfg.training.freeze_encoder:
            model.model.encoder.requires_grad_(False)
        if cfg.training.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.config.use_cache = False
        collator = SpeechSeq2SeqCollator(model.config.decoder_start_token_id)
        bf16 = cfg.training.precision == "bf16"

        def autocast() -> Any:
            return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

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
                autocast=autocast() if bf16 else None,
                reporter=reporter,
            )

        if job.evaluate_before and eval_sets:
            evaluate("before")
        loop_result = None
        if job.train and job.train_data is not None:
            train_set = PreparedDataset(job.train_data)
            loop = TrainLoop(
                model,
                train_set,
                collator,
                cfg.training,
                job.run_dir / "checkpoints",
                reporter,
                autocast=autocast,
                num_workers=opts.num_workers,
                best=best_checkpoint_for_job(
                    job, model, collator, reporter, autocast=autocast if bf16 else None
                ),
            )
            resume = Path(job.resume_from) if job.resume_from else None
            loop_result = loop.run(resume_from=resume)
        final_dir = None
        if loop_result is not None and cfg.output.save_final_model and not loop_result.interrupted:
            final_dir = Path(cfg.output.model_dir) if cfg.output.model_dir else job.run_dir / "final"
            model.save_pretrained(final_dir, safe_serialization=True)
        if job.evaluate_after and eval_sets and loop_result is not None and not loop_result.interrupted:
            evaluate("after")
        return TrainResult(
            **result_fields(phases),
            log_history=loop_result.log_history if loop_result else [],
            steps=loop_result.steps if loop_result else 0,
            train_samples=loop_result.samples if loop_result else 0,
            train_seconds=round(loop_result.seconds, 3) if loop_result else 0.0,
            peak_memory_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            final_model_dir=final_dir,
            checkpoints=loop_result.checkpoints if loop_result else [],
            interrupted=bool(loop_result and loop_result.interrupted),
            selection=loop.best.summary() if loop_result and loop.best else {},
        )
