"""Run the IPU worker: write its job file, start it with the SDK's Python, stream its output, read back
its result.

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
import re
import subprocess
from collections import deque
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from whisper_tune.backend.protocol import TrainJob, TrainResult
from whisper_tune.errors import (
    BackendUnavailableError,
    DataError,
    InterruptedRun,
    ModelError,
    WhisperTuneError,
)
from whisper_tune.recipe.progress import Reporter
from whisper_tune_ipu.options import IpuOptions
from whisper_tune_ipu.planner import IpuPlan

JOB_FORMAT = "whisper-tune-ipu-job"
RESULT_FORMAT = "whisper-tune-ipu-result"
FORMAT_VERSION = 1
WORKER_MODULE = "whisper_tune_ipu_worker"
#: The worker's source in a whisper-tune checkout (used when the SDK Python has not installed it).
CHECKOUT_WORKER = Path(__file__).resolve().parents[2] / "worker"
#: The worker's exit code for a problem it reports in one line.
WORKER_ERROR_EXIT = 2
WORKER_ERROR = re.compile(r"^whisper-tune-ipu-worker: error\[(\w+)\]: (.*)$")


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


def worker_env() -> dict[str, str]:
    """The environment for the worker: the checkout's worker source on PYTHONPATH when there is one (an
    installed worker in the SDK environment works without it), and nothing of whisper-tune's own path."""
    env = dict(os.environ)
    paths = [str(CHECKOUT_WORKER)] if (CHECKOUT_WORKER / WORKER_MODULE).is_dir() else []
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_worker(
    python: str, job: TrainJob, plan: IpuPlan, options: IpuOptions, reporter: Reporter, sdk_steps: str
) -> TrainResult:
    """Write the job file, run the worker to the end (its output goes to the log), parse its result."""
    spec = worker_job(job, plan, options)
    work = job.run_dir / "ipu-worker"
    work.mkdir(parents=True, exist_ok=True)
    job_file = work / "job.json"
    job_file.write_text(json.dumps(spec, indent=1) + "\n", encoding="utf-8")
    result_file = Path(spec["result_file"])
    result_file.unlink(missing_ok=True)
    command = [str(Path(python).expanduser()), "-m", WORKER_MODULE, str(job_file)]
    reporter.info(
        f"IPU worker ({'stand-in: Seq2SeqTrainer on the CPU' if options.stand_in else 'IPUSeq2SeqTrainer'})"
        f": {' '.join(command)}"
    )
    tail: deque[str] = deque(maxlen=40)
    try:
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=worker_env(),
            cwd=str(work),
        )
    except OSError as exc:
        raise BackendUnavailableError(
            f"cannot start the IPU worker with {python}: {exc.strerror or exc}", hint=sdk_steps
        ) from None
    try:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            (reporter.info if line.startswith("[ipu-worker]") else reporter.debug)(line)
        code = process.wait()
    except KeyboardInterrupt:
        process.terminate()
        process.wait()
        raise InterruptedRun(f"interrupted; the IPU worker was stopped; its files are in {work}") from None
    if code != 0:
        raise _failure(code, list(tail), python, sdk_steps)
    return read_result(result_file)


def _failure(code: int, tail: list[str], python: str, sdk_steps: str) -> WhisperTuneError:
    """One error for a failed worker: its own one-line report mapped onto whisper-tune's error classes, or
    (a crash) the end of its output."""
    for line in reversed(tail):
        found = WORKER_ERROR.match(line)
        if code == WORKER_ERROR_EXIT and found:
            kind, message = found.group(1), found.group(2)
            if kind in ("sdk", "job"):
                return BackendUnavailableError(f"the IPU worker cannot run: {message}", hint=sdk_steps)
            return (ModelError if kind == "model" else DataError)(f"the IPU worker stopped: {message}")
    if any(f"No module named {WORKER_MODULE}" in line for line in tail):
        return BackendUnavailableError(
            f"{python} cannot import the IPU worker ({WORKER_MODULE})",
            hint="install it into the SDK environment: pip install -c backends/ipu/worker/constraints.txt "
            f"backends/ipu/worker; {sdk_steps}",
        )
    last = "\n    ".join(tail[-12:])
    return WhisperTuneError(f"the IPU worker failed (exit code {code}); the end of its output:\n    {last}")


def read_result(path: Path) -> TrainResult:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WhisperTuneError(
            f"the IPU worker finished without a readable result file {path}: {exc}"
        ) from None
    if raw.get("format") != RESULT_FORMAT or raw.get("version") != FORMAT_VERSION:
        raise WhisperTuneError(
            f"{path} is not a {RESULT_FORMAT} v{FORMAT_VERSION} file: the plugin and the worker come from "
            "different whisper-tune versions"
        )
    try:
        return TrainResult.model_validate(raw["train_result"])
    except (KeyError, ValidationError) as exc:
        raise WhisperTuneError(f"the IPU worker's result {path} is malformed: {exc}") from None
