"""The CPU reference backend: full fine-tuning or LoRA (``training.method``) on the CPU in fp32 (or bf16
autocast), one process.

It is the executable spec of the recipe, the quickstart's engine and CI's vehicle. Every other backend
must agree with it on data, labels and metrics.
"""

from __future__ import annotations

import os
from importlib.util import find_spec
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from whisper_tune.backend.launch import read_old_cpu_switch
from whisper_tune.backend.protocol import (
    Capabilities,
    Flag,
    Issue,
    Plan,
    Probe,
    RecipeNeeds,
    TrainJob,
)
from whisper_tune.backend.setup import TrainingSetup
from whisper_tune.config.schema import RunConfig
from whisper_tune.console import Reporter
from whisper_tune.models.loading import build_training_model
from whisper_tune.models.lora import describe_trainable, method_note

if TYPE_CHECKING:
    from whisper_tune.backend.setup import TrainingSetup


class ReferenceOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    device: Literal["cpu"] = Field(
        "cpu",
        description="Always 'cpu' (this backend runs on the CPU); backend.device=cpu is the CPU switch of "
        "every backend, so a command line written for another backend's CPU mode runs here too.",
    )
    threads: int | None = Field(None, gt=0, description="torch CPU threads; default: all cores.")
    num_workers: int = Field(
        0, ge=0, description="DataLoader worker processes (0 = load in the main process)."
    )

    @model_validator(mode="before")
    @classmethod
    def _old_cpu_switch(cls, data: Any) -> Any:
        return read_old_cpu_switch(data)


class ReferenceBackend:
    name: ClassVar[str] = "reference"
    description: ClassVar[str] = (
        "plain PyTorch on the CPU (full fine-tuning or LoRA); the recipe's executable spec"
    )
    Options: ClassVar[type[BaseModel]] = ReferenceOptions
    flags: ClassVar[tuple[Flag, ...]] = ()
    #: the overrides of its CPU development mode (the contract test runs it with them)
    cpu_overrides: ClassVar[tuple[str, ...]] = ()

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
        threads = config.backend.options_as(ReferenceOptions).threads
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
        threads = config.backend.options_as(ReferenceOptions).threads or caps.cpu_count
        return Plan(
            backend=self.name,
            devices=f"CPU ({threads} threads)",
            processes=1,
            batch_per_device=config.training.batch_size,
            gradient_accumulation_steps=config.training.gradient_accumulation_steps,
            placement=("whole model on the CPU",),
            notes=(f"precision {config.training.precision}", method_note(config.training)),
        )

    def uses_cpu(self, config: RunConfig) -> bool:
        return True

    def training_setup(self, job: TrainJob, accelerator: Any, reporter: Reporter) -> TrainingSetup:
        import torch

        opts = job.config.backend.options_as(ReferenceOptions)
        if opts.threads:
            torch.set_num_threads(opts.threads)
        model = build_training_model(job.model_dir, job.config.model, job.config.training)
        if job.train:
            reporter.info(describe_trainable(model))
        return TrainingSetup(accelerator, model, num_workers=opts.num_workers)
