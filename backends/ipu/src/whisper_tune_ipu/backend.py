"""The ``ipu`` backend: Graphcore IPUs through optimum-graphcore 0.7.1's IPUSeq2SeqTrainer.

The plugin validates the options, plans the pipeline for any Whisper size and IPU count
(``whisper_tune_ipu.planner``) and reports what a run needs. Training happens in the IPU worker
(``backends/ipu/worker``), which runs under the Poplar SDK's own Python (poptorch is on no package registry;
it pins torch 2.0.1 and Python 3.8): ``train`` writes the worker's job file, runs it with that Python
(``backend.sdk_python`` / ``$WHISPER_TUNE_IPU_PYTHON``) and reads its token ids back (``launch``), so WER
comes from the core's metrics as for every backend. Without a configured SDK Python ``run`` stops at once
with the set-up steps. ``backend.stand_in`` runs the same worker with transformers' Seq2SeqTrainer on the
CPU (a test mode). Nothing here has been run on IPU hardware.

Issue levels. ``check`` reports two kinds of errors: those that make the request itself impossible (a
layout that does not sum, too few IPUs for the pipeline, an unknown model) block ``plan`` and ``run``;
those that only stop a *run* on the IPU stack (training.precision other than fp16, gradient accumulation
below the pipeline's stage count, a model the pinned transformers 4.29.2 cannot load) are marked
``run_only=True`` and those of the machine (an SDK Python that does not exist, fewer IPUs than planned)
``hardware=True``, so ``whisper-tune plan`` still shows the plan (with those reasons as notes) and
``whisper-tune run`` refuses with them. The probe does
not count IPUs (``Capabilities.ipus`` stays 0, "not detected"), so the IPU-count issue is reported only
when capabilities say how many IPUs there are.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel

from whisper_tune.backend.protocol import (
    BackendDefault,
    Capabilities,
    Flag,
    Issue,
    Plan,
    Probe,
    RecipeNeeds,
    TrainJob,
    TrainResult,
)
from whisper_tune.config.schema import RunConfig
from whisper_tune.errors import BackendUnavailableError, ConfigError, ModelError
from whisper_tune_ipu.launch import ipu_launch
from whisper_tune_ipu.models import WhisperArch, resolve_model
from whisper_tune_ipu.options import SDK_PYTHON_ENV, IpuOptions
from whisper_tune_ipu.planner import IpuPlan, PlanError, PlanRequest, plan_ipu

if TYPE_CHECKING:
    from whisper_tune.console import Reporter

SDK_STEPS = (
    "set up the Poplar SDK (3.3 or 3.4, Ubuntu 20.04, Python 3.8; it is not on any package registry): "
    "source $SDK/poplar-ubuntu_20_04-*/enable.sh; source $SDK/popart-ubuntu_20_04-*/enable.sh; "
    "python3.8 -m venv ~/ipu-venv; ~/ipu-venv/bin/pip install $SDK/poptorch-*.whl; "
    "~/ipu-venv/bin/pip install -c backends/ipu/worker/constraints.txt 'backends/ipu/worker[ipu]'; "
    f"export {SDK_PYTHON_ENV}=~/ipu-venv/bin/python (see backends/ipu/README.md)"
)

#: The largest vocabulary and mel-bin count transformers 4.29.2 handles (whisper <= large-v2).
PINNED_MEL_BINS = 80
PINNED_MAX_VOCAB = 51865


def plan_request(config: RunConfig, options: IpuOptions) -> PlanRequest:
    generation = options.inference_parallelize_kwargs
    return PlanRequest(
        ipus=options.ipus,
        ipus_per_replica=options.ipus_per_replica,
        layers_per_ipu=options.layers_per_ipu,
        matmul_proportion=options.matmul_proportion,
        projection_serialization_factor=options.projection_serialization_factor,
        serialized_projection_splits_per_ipu=options.serialized_projection_splits_per_ipu,
        inference_layers_per_ipu=options.inference_layers_per_ipu,
        inference_ipus_per_replica=options.inference_ipus_per_replica,
        inference_replication_factor=options.inference_replication_factor,
        inference_matmul_proportion=options.inference_matmul_proportion,
        use_cache=generation.use_cache,
        use_cross_cache=generation.use_cross_cache,
        use_encoder_output_buffer=generation.use_encoder_output_buffer,
        optimizer_state_offchip=options.optimizer_state_offchip,
        micro_batch_size=config.training.batch_size,
        max_label_length=options.max_label_length,
        eval_batch_size=config.eval.batch_size,
        num_beams=config.eval.num_beams,
        # the KV cache holds the prompt (<= 4 prefix tokens) and the generated tokens
        generation_max_length=min(448, config.eval.max_new_tokens + 4),
    )


def make_plan(config: RunConfig) -> tuple[WhisperArch, IpuPlan]:
    """Resolve the model (offline) and plan it; ConfigError / ModelError / PlanError if impossible."""
    options = config.backend.options_as(IpuOptions)
    arch = resolve_model(config.model.name)
    return arch, plan_ipu(arch, plan_request(config, options))


def run_blockers(config: RunConfig, arch: WhisperArch, plan: IpuPlan, caps: Capabilities) -> list[Issue]:
    """What stops a *run* of this plan on the IPU stack (``run_only`` or ``hardware``; ``plan`` works)."""
    issues = []
    precision = config.training.precision
    if precision != "fp16":
        why = (
            "Mk2 IPUs have no bf16 arithmetic"
            if precision == "bf16"
            else "optimum-graphcore runs the model in half precision and the backend feeds fp16 features"
        )
        issues.append(
            Issue(
                "training.precision",
                f"the IPU backend trains in fp16 only, not {precision} ({why})",
                hint="set training.precision=fp16",
                run_only=True,
            )
        )
    if config.data.windowed:
        issues.append(
            Issue(
                "data.packing",
                "the IPU worker trains on the prepared clips as they are: packed windows, timestamp labels "
                "and no-speech windows (data.packing, data.timestamps, data.no_speech_fraction) run on the "
                "in-process backends only (reference, cuda-lora, accelerate)",
                hint="set data.packing.enabled=false data.timestamps=false data.no_speech_fraction=0",
                run_only=True,
            )
        )
    ga = config.training.gradient_accumulation_steps
    needed = plan.min_gradient_accumulation_steps
    if ga < needed:
        issues.append(
            Issue(
                "training.gradient_accumulation_steps",
                f"{ga} is below {plan.min_gradient_accumulation_steps}: the {plan.pipeline_stages}-stage "
                f"pipeline trains as {plan.min_gradient_accumulation_steps} stages and poptorch refuses "
                "fewer gradient-accumulation steps than stages",
                hint=f"set training.gradient_accumulation_steps={max(16, needed)} (seed 004: 16) and "
                "training.batch_size=1",
                run_only=True,
            )
        )
    if arch.num_mel_bins != PINNED_MEL_BINS or arch.vocab_size > PINNED_MAX_VOCAB:
        issues.append(
            Issue(
                "model.name",
                f"the IPU stack cannot load {arch.name}: it has {arch.num_mel_bins} mel bins and "
                f"{arch.vocab_size} tokens, and transformers 4.29.2, which optimum-graphcore 0.7.1 pins, "
                "predates large-v3's 128-mel features and vocabulary (and turbo)",
                hint="plan it, but train large-v2 or smaller on IPUs",
                run_only=True,
            )
        )
    if 0 < caps.ipus < plan.ipus:
        issues.append(
            Issue(
                "backend.ipus",
                f"the plan needs {plan.ipus} IPUs but {caps.ipus} are available",
                hint=f"use --ipus {caps.ipus} if the pipeline fits, or a larger IPU partition",
                hardware=True,
            )
        )
    if config.training.resume_from is not None:
        issues.append(
            Issue(
                "training.resume_from",
                "the IPU worker cannot resume: its trainer writes Hugging Face checkpoints, not "
                "whisper-tune's resumable ones",
                hint="unset training.resume_from",
                run_only=True,
            )
        )
    if config.eval.steps is not None:
        issues.append(
            Issue(
                "eval.steps",
                "the IPU worker does not evaluate during training (no best-checkpoint keeping or early "
                "stopping): it evaluates before and after only",
                hint="unset eval.steps",
                run_only=True,
            )
        )
    python = config.backend.options_as(IpuOptions).sdk_python
    if python and not Path(python).expanduser().is_file():
        issues.append(
            Issue(
                "backend.sdk_python",
                f"the Poplar SDK Python {python} does not exist",
                hint=SDK_STEPS,
                hardware=True,
            )
        )
    return issues


class IpuBackend:
    name: ClassVar[str] = "ipu"
    description: ClassVar[str] = (
        "Graphcore IPUs through optimum-graphcore 0.7.1's IPUSeq2SeqTrainer in a Poplar SDK worker; planned "
        "and validated against upstream code, never run on IPU hardware"
    )
    Options: ClassVar[type[BaseModel]] = IpuOptions
    flags: ClassVar[tuple[Flag, ...]] = (
        Flag("--ipus", "backend.ipus", "IPUs to use in all, a power of two.", min=1),
    )

    def probe(self) -> Probe:
        """Available when ``$WHISPER_TUNE_IPU_PYTHON`` names an existing Python (the SDK environment's, with
        the worker installed); otherwise the reason and the set-up steps. It does not start that Python:
        a missing poptorch or worker is reported by ``train``, before any step. Cheap; never raises.
        ``plan`` works without it. The probe does not count IPUs."""
        caps = Capabilities(cpu_count=os.cpu_count() or 1)
        try:
            python = os.environ.get(SDK_PYTHON_ENV, "").strip()
            if not python:
                return Probe(
                    False,
                    f"the Poplar SDK's Python is not configured ({SDK_PYTHON_ENV} is unset)",
                    SDK_STEPS,
                    caps,
                )
            if not Path(python).expanduser().is_file():
                return Probe(False, f"{SDK_PYTHON_ENV}={python} does not exist", SDK_STEPS, caps)
            mode = f"through the Poplar SDK Python {python} (IPUs are counted when a run starts)"
            return Probe(True, "", "", caps, mode=mode)
        except Exception as exc:  # a probe never raises
            return Probe(False, f"cannot check the Poplar SDK: {exc}", SDK_STEPS, caps)

    def defaults(self, options: BaseModel) -> dict[str, BackendDefault]:
        """Full fine-tuning, whatever the core's default method; the whole change kept; clips unpacked."""
        return {
            "training.method": BackendDefault(
                "full", "optimum-graphcore's IPUSeq2SeqTrainer trains every weight (no LoRA on the IPU)"
            ),
            "eval.keep": BackendDefault(
                "off", "the IPU worker keeps the whole change: choosing how much to keep is not built for it"
            ),
            "data.packing.enabled": BackendDefault(
                False, "the IPU worker trains on the prepared clips as they are (no packed windows)"
            ),
        }

    def check(self, config: RunConfig, caps: Capabilities) -> list[Issue]:
        options = config.backend.options_as(IpuOptions)
        issues = []
        if config.training.method != "full":
            issues.append(
                Issue(
                    "training.method",
                    f"the IPU backend trains every weight (optimum-graphcore's IPUSeq2SeqTrainer), not "
                    f"training.method={config.training.method}",
                    hint="set training.method=full, or train LoRA with --backend reference / accelerate / "
                    "cuda-lora",
                )
            )
        if config.eval.keep != "off":
            issues.append(
                Issue(
                    "eval.keep",
                    f"the IPU worker cannot scale the change back after training (eval.keep="
                    f"{config.eval.keep})",
                    hint="leave eval.keep unset (off on this backend), or train with --backend reference / "
                    "accelerate / cuda-lora",
                )
            )
        if not options.drop_last:
            issues.append(
                Issue(
                    "backend.drop_last",
                    "the IPU runs a fixed global batch (micro-batch x replicas x gradient accumulation), so "
                    "the last incomplete batch must be dropped",
                    hint="remove backend.drop_last or set it to true",
                )
            )
        try:
            arch = resolve_model(config.model.name)
        except (ConfigError, ModelError) as exc:
            return [*issues, Issue("model.name", exc.message, hint=exc.hint or "")]
        try:
            plan = plan_ipu(arch, plan_request(config, options))
        except PlanError as exc:
            return [*issues, Issue(exc.loc, exc.message, hint=exc.hint or "")]
        return issues + run_blockers(config, arch, plan, caps)

    def recipe_needs(self, config: RunConfig) -> RecipeNeeds:
        options = config.backend.options_as(IpuOptions)
        return RecipeNeeds(
            label_pad_multiple=options.max_label_length, feature_dtype="float16", drop_last=True
        )

    def plan(self, config: RunConfig, caps: Capabilities) -> Plan:
        arch, plan = make_plan(config)
        replicas = plan.replication_factor
        devices = (
            f"{plan.ipus} IPUs: {replicas} replica{'s' if replicas > 1 else ''} x "
            f"{plan.ipus_per_replica}-IPU pipeline"
        )
        projection = (
            f"LM head split x{plan.projection_serialization_factor}"
            if plan.serialized_projection_splits_per_ipu is None
            else f"serialized_projection_splits_per_ipu {list(plan.serialized_projection_splits_per_ipu)}"
        )
        notes = [
            f"{plan.source} plan for {arch.describe()}",
            *plan.notes,
            f"matmul_proportion {list(plan.matmul_proportion)}; {projection}; generation matmul_proportion "
            f"{list(plan.inference_matmul_proportion)}, {plan.inference_replication_factor} replica"
            f"{'s' if plan.inference_replication_factor > 1 else ''}",
            f"{plan.pipeline_stages} forward pipeline stages ({plan.min_gradient_accumulation_steps} in "
            f"training): gradient accumulation must be at least {plan.min_gradient_accumulation_steps}",
            f"memory estimate: budget {plan.budget_mb:.0f} MB per IPU (900 MB x 0.7), micro-batch "
            f"{config.training.batch_size}; a heuristic, see the planner's docstring",
        ]
        if replicas > 1:
            notes.append(
                f"{replicas} replicas multiply the global batch; seed 004 scaled learning_rate by them "
                "and divided max_steps, whisper-tune does not: set them yourself"
            )
        for issue in run_blockers(config, arch, plan, caps):
            notes.append(f"run will refuse: {issue.loc}: {issue.message}")
        notes.append(
            "not run on IPU hardware: the plan is checked against optimum-graphcore 0.7.1's rules and the "
            "published layouts only; the IPU worker has run only in its CPU stand-in mode"
        )
        return Plan(
            backend=self.name,
            devices=devices,
            processes=replicas,
            batch_per_device=config.training.batch_size,
            gradient_accumulation_steps=config.training.gradient_accumulation_steps,
            placement=plan.placement(),
            launch=ipu_launch(config.backend.options_as(IpuOptions), failure_hint=SDK_STEPS),
            notes=tuple(notes),
        )

    def train(self, job: TrainJob, reporter: Reporter) -> TrainResult:
        """Run the planned IPU worker under the SDK's Python on ``job`` and return its result."""
        from whisper_tune.execution.launcher import run_launch
        from whisper_tune_ipu.launch import worker_job

        options = job.config.backend.options_as(IpuOptions)
        python = options.sdk_python
        if not python:
            raise BackendUnavailableError(
                f"the Poplar SDK's Python is not configured (backend.sdk_python / {SDK_PYTHON_ENV})",
                hint=SDK_STEPS,
            )
        if not Path(python).expanduser().is_file():
            raise BackendUnavailableError(f"the Poplar SDK Python {python} does not exist", hint=SDK_STEPS)
        assert job.launch is not None, "the IPU worker runs as a planned command"
        _, plan = make_plan(job.config)
        trainer = "stand-in: Seq2SeqTrainer on the CPU" if options.stand_in else "IPUSeq2SeqTrainer"
        reporter.info(f"IPU worker ({trainer}): {job.launch.command_line()}")
        return run_launch(job, reporter, backend_job=worker_job(job, plan, options))
