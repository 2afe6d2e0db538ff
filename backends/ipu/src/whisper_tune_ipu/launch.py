"""The IPU worker's launch and job file. The core's ``run_launch`` (``whisper_tune.backend.launch``) runs it
like every planned command: writes the job file, starts it with the SDK's Python, streams its output,
maps its one-line errors, reads back its result.

The worker (``backends/ipu/worker``, package ``whisper_tune_ipu_worker``) runs in the Poplar SDK's Python
environment (Python 3.8, torch 2.0.1, transformers 4.29.2), so everything crosses as files: a JSON job
file (format ``whisper-tune-ipu-job`` v1, described in the worker's ``job.py``) that names the model
directory and the prepared data (the project-owned format the worker reads with numpy), and a JSON result
file whose ``train_result`` is a ``TrainResult``: token ids that the core decodes and scores like every
other backend's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from whisper_tune.backend.launch import RUN_DIR, Launch
from whisper_tune.backend.protocol import TrainJob
from whisper_tune.errors import DataError
from whisper_tune_ipu.options import IpuOptions
from whisper_tune_ipu.planner import IpuPlan

JOB_FORMAT = "whisper-tune-ipu-job"
RESULT_FORMAT = "whisper-tune-ipu-result"
FORMAT_VERSION = 1
WORKER_MODULE = "whisper_tune_ipu_worker"
#: The worker's source in a whisper-tune checkout (used when the SDK Python has not installed it).
CHECKOUT_WORKER = Path(__file__).resolve().parents[2] / "worker"


def ipu_config_dict(plan: IpuPlan, options: IpuOptions, job: TrainJob) -> dict[str, Any]:
    """The complete optimum-graphcore IPUConfig: the planner's layout plus the backend's options."""
    cfg = job.config
    config = plan.ipu_config()
    config.update(
        {
            "gradient_accumulation_steps": cfg.training.gradient_accumulation_steps,
            "recompute_checkpoint_every_layer": options.recompute_checkpoint_every_layer,
            "optimizer_state_offchip": options.optimizer_state_offchip,
            "enable_half_partials": options.enable_half_partials,
            "inference_parallelize_kwargs": options.inference_parallelize_kwargs.model_dump(),
            "seed": cfg.training.seed,
        }
    )
    if options.executable_cache_dir:
        config["executable_cache_dir"] = options.executable_cache_dir
    return config


def decoder_prompt(job: TrainJob) -> list[int]:
    """The decoder prefix the labels were prepared with (``decoder_prefix`` in the prepared manifest):
    the worker forces it at generation, so it needs no tokenizer (transformers 4.29.2's tokenizers
    cannot read every tokenizer.json that today's writes)."""
    sets = ([job.train_data] if job.train and job.train_data else []) + list(job.eval_data.values())
    for path in sets:
        try:
            manifest = json.loads((Path(path) / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read the prepared data {path}: {exc}") from None
        prefix = manifest.get("decoder_prefix")
        if prefix:
            return [int(t) for t in prefix]
    raise DataError(
        "the prepared data records no decoder_prefix (made by an older whisper-tune?)",
        hint="prepare it again (delete the run's prepared/ directory)",
    )


def worker_job(job: TrainJob, plan: IpuPlan, options: IpuOptions) -> dict[str, Any]:
    """The worker's job file for ``job``: plain values only (the worker imports nothing of ours)."""
    cfg = job.config
    t = cfg.training
    work = job.run_dir / "ipu-worker"
    final = None
    if job.train and cfg.output.save_final_model:
        final = str(Path(cfg.output.model_dir) if cfg.output.model_dir else job.run_dir / "final")
    return {
        "format": JOB_FORMAT,
        "version": FORMAT_VERSION,
        "model_dir": str(job.model_dir),
        "train_data": str(job.train_data) if job.train and job.train_data else None,
        "eval_data": {name: str(path) for name, path in job.eval_data.items()},
        "output_dir": str(job.run_dir / "checkpoints"),
        "result_file": str(work / "result.json"),
        "final_model_dir": final,
        "train": job.train,
        "evaluate_before": job.evaluate_before,
        "evaluate_after": job.evaluate_after,
        "language": cfg.model.language,
        "task": cfg.model.task,
        "decoder_prompt": decoder_prompt(job),
        "ipu_config": ipu_config_dict(plan, options, job),
        "training": {
            "learning_rate": t.learning_rate,
            "micro_batch_size": t.batch_size,
            "gradient_accumulation_steps": t.gradient_accumulation_steps,
            "max_steps": t.max_steps,
            "num_epochs": t.num_epochs,
            "warmup_steps": t.warmup_steps,
            "lr_scheduler": t.lr_scheduler,
            "weight_decay": t.weight_decay,
            "max_grad_norm": t.max_grad_norm,
            "seed": t.seed,
            "logging_steps": t.logging_steps,
            "save_steps": t.save_steps,
            "save_total_limit": t.save_total_limit,
            "freeze_encoder": t.freeze_encoder,
            "num_workers": options.num_workers,
        },
        "eval": {
            "batch_size": cfg.eval.batch_size,
            "max_new_tokens": cfg.eval.max_new_tokens,
            "num_beams": cfg.eval.num_beams,
        },
        "label_pad_length": options.max_label_length,
        "stand_in": options.stand_in,
    }


def ipu_launch(options: IpuOptions, failure_hint: str | None = None) -> Launch:
    """The worker's command under the SDK's Python (a pure function of the options; paths hold
    ``{run_dir}``). The checkout's worker source goes on PYTHONPATH when there is one (an installed worker
    in the SDK environment works without it), and nothing of whisper-tune's own path."""
    work = f"{RUN_DIR}/ipu-worker"
    python = str(Path(options.sdk_python).expanduser()) if options.sdk_python else "<sdk python>"
    paths = [str(CHECKOUT_WORKER)] if (CHECKOUT_WORKER / WORKER_MODULE).is_dir() else []
    return Launch(
        mode="command",
        argv=(python, "-m", WORKER_MODULE, f"{work}/job.json"),
        env=(("PYTHONPATH", os.pathsep.join(paths)), ("PYTHONUNBUFFERED", "1")),
        cwd=work,
        job_file=f"{work}/job.json",
        job_format="backend",
        result_file=f"{work}/result.json",
        result_key="train_result",
        result_format=f"{RESULT_FORMAT}/{FORMAT_VERSION}",
        error_prefix="whisper-tune-ipu-worker",
        error_kinds=(("sdk", "backend"), ("job", "backend"), ("model", "model"), ("data", "data")),
        failure_hint=failure_hint,
        output="reporter",
    )
