"""The job file the ``ipu`` plugin writes and this worker reads (JSON, format ``whisper-tune-ipu-job`` v1).

Everything the worker needs is in it, as plain values, so the worker never imports whisper-tune::

    format, version        "whisper-tune-ipu-job", 1
    model_dir              local Hugging Face model directory to start from
    train_data             prepared training data directory, or null (evaluation only)
    eval_data              {set name: prepared data directory}
    output_dir             where the trainer writes checkpoints
    result_file            where the worker writes its result (format "whisper-tune-ipu-result")
    final_model_dir        where the trained weights go, or null (not saved)
    train, evaluate_before, evaluate_after
    language, task         for the record (the prompt below is what counts)
    decoder_prompt         token ids <|startoftranscript|> [<|lang|> <|task|>] <|notimestamps|>: the prefix
                           the labels were prepared with, forced at generation
    ipu_config             optimum-graphcore IPUConfig dict (the planner's layout + the backend options)
    training               learning_rate, micro_batch_size, gradient_accumulation_steps, max_steps (null:
                           num_epochs), num_epochs, warmup_steps, lr_scheduler (linear|constant|cosine),
                           weight_decay, max_grad_norm (null: no clipping), seed, logging_steps, save_steps
                           (null: no intermediate checkpoints), save_total_limit, freeze_encoder, num_workers
    eval                   batch_size, max_new_tokens, num_beams
    label_pad_length       labels are padded with -100 to a multiple of this (static shapes)
    stand_in               true: transformers' Seq2SeqTrainer on the CPU instead of IPUSeq2SeqTrainer
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from whisper_tune_ipu_worker import FORMAT_VERSION, JOB_FORMAT
from whisper_tune_ipu_worker.data import WorkerError


@dataclass(frozen=True)
class Training:
    learning_rate: float
    micro_batch_size: int
    gradient_accumulation_steps: int
    max_steps: int | None
    num_epochs: float
    warmup_steps: int
    lr_scheduler: str
    weight_decay: float
    max_grad_norm: float | None
    seed: int
    logging_steps: int
    save_steps: int | None
    save_total_limit: int
    freeze_encoder: bool
    num_workers: int


@dataclass(frozen=True)
class Eval:
    batch_size: int
    max_new_tokens: int
    num_beams: int


@dataclass(frozen=True)
class WorkerJob:
    model_dir: str
    train_data: str | None
    eval_data: dict[str, str]
    output_dir: str
    result_file: str
    final_model_dir: str | None
    train: bool
    evaluate_before: bool
    evaluate_after: bool
    language: str | None
    task: str
    decoder_prompt: list[int]
    ipu_config: dict[str, Any]
    training: Training
    eval: Eval
    label_pad_length: int
    stand_in: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _section(raw: dict[str, Any], cls: Any, name: str) -> Any:
    try:
        return cls(**raw[name])
    except (KeyError, TypeError) as exc:
        raise WorkerError(f"job file: section '{name}' is missing or malformed ({exc})", "job") from None


def load_job(path: str) -> WorkerJob:
    """Read and check a job file; WorkerError with the reason if it is not one this worker understands."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WorkerError(f"cannot read the job file {path}: {exc}", "job") from None
    if raw.get("format") != JOB_FORMAT or raw.get("version") != FORMAT_VERSION:
        raise WorkerError(
            "%s is not a %s v%d file (found %s v%s): the plugin and the worker are from different "
            "whisper-tune versions"
            % (path, JOB_FORMAT, FORMAT_VERSION, raw.get("format"), raw.get("version")),
            "job",
        )
    known = {f for f in WorkerJob.__dataclass_fields__ if f not in ("training", "eval", "extra")}
    try:
        values = {k: raw[k] for k in known if k in raw}
        job = WorkerJob(
            training=_section(raw, Training, "training"),
            eval=_section(raw, Eval, "eval"),
            extra={
                k: v for k, v in raw.items() if k not in known | {"training", "eval", "format", "version"}
            },
            **values,
        )
    except TypeError as exc:
        raise WorkerError(f"job file {path}: {exc}", "job") from None
    if job.label_pad_length < 1:
        raise WorkerError("job file: label_pad_length must be at least 1", "job")
    return job
