"""The worker's run: load the model, evaluate before, train, evaluate after, save, write the result file.

The same code drives optimum-graphcore's ``IPUSeq2SeqTrainer`` (the IPU path, under the Poplar SDK) and,
with ``stand_in``, transformers' ``Seq2SeqTrainer`` on the CPU. The differences are confined to
``make_trainer``: on the IPU the model runs in fp16 (``IPUTrainer`` halves it), the features are fed as
fp16, the IPUConfig comes from the job's ``ipu_config`` and a replica's micro-batch is the per-device batch;
in the stand-in the model and features stay fp32 (CPUs have no fast fp16) and one CPU process takes the
whole global batch (micro-batch x replication factor per step, times gradient accumulation), so the
number of samples per optimizer step is the same.

Language and task go on both ``config`` and ``generation_config`` as ``forced_decoder_ids``, as seed 004
(optimum-graphcore's fine-tuning notebook) does; transformers 4.29.2 forces them during generation.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

from whisper_tune_ipu_worker import FORMAT_VERSION, RESULT_FORMAT, __version__
from whisper_tune_ipu_worker.data import (
    PaddedToBatches,
    PreparedData,
    StaticCollator,
    WorkerError,
    strip_generated,
)
from whisper_tune_ipu_worker.job import WorkerJob

SDK_MISSING = (
    "optimum-graphcore cannot be imported here ({error}): the IPU worker must run under the Poplar SDK's "
    "Python (3.3 or 3.4, Ubuntu 20.04, Python 3.8) with poptorch from the SDK and "
    "backends/ipu/worker/constraints.txt installed; see backends/ipu/README.md"
)
#: transformers' name for each whisper-tune schedule (whisper-tune's "constant" keeps its warm-up).
SCHEDULERS = {"linear": "linear", "constant": "constant_with_warmup", "cosine": "cosine"}


def log(message: str) -> None:
    print("[ipu-worker] " + message, flush=True)


def generation_max_length(job: WorkerJob, prompt_length: int) -> int:
    """The KV-cache / ``max_length`` for generation: the prompt plus ``max_new_tokens``, at most 448
    (Whisper's decoder positions). transformers 4.29.2 counts the forced prompt tokens as generated."""
    return min(448, prompt_length + job.eval.max_new_tokens)


def configure_language(model: Any, job: WorkerJob) -> list[int]:
    """Force the job's decoder prompt (``<|startoftranscript|>`` [``<|lang|>`` ``<|task|>``]
    ``<|notimestamps|>``, the prefix the labels were prepared with) on both config and generation_config,
    as seed 004 does with ``get_decoder_prompt_ids``; returns the prompt."""
    prompt = [int(t) for t in job.decoder_prompt]
    if not prompt or prompt[0] != int(model.config.decoder_start_token_id):
        raise WorkerError(
            f"the job's decoder prompt {prompt} does not start with the model's decoder start token "
            f"{model.config.decoder_start_token_id}",
            "model",
        )
    forced = [(i, t) for i, t in enumerate(prompt[1:], start=1)]
    model.config.forced_decoder_ids = forced
    model.generation_config.forced_decoder_ids = forced
    return prompt


def training_arguments(cls: Any, job: WorkerJob, global_micro_batch: int, eval_batch: int) -> Any:
    """``cls`` (Seq2SeqTrainingArguments or IPUSeq2SeqTrainingArguments) from the job, keeping only the
    fields ``cls`` has (the two dataclasses differ slightly)."""
    t = job.training
    values = {
        "output_dir": job.output_dir,
        "do_train": job.train,
        "predict_with_generate": True,
        "learning_rate": t.learning_rate,
        "per_device_train_batch_size": global_micro_batch,
        "per_device_eval_batch_size": eval_batch,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "max_steps": t.max_steps if t.max_steps is not None else -1,
        "num_train_epochs": t.num_epochs,
        "warmup_steps": t.warmup_steps,
        "lr_scheduler_type": SCHEDULERS[t.lr_scheduler],
        "weight_decay": t.weight_decay,
        "max_grad_norm": t.max_grad_norm if t.max_grad_norm is not None else 0.0,
        "seed": t.seed,
        "logging_steps": t.logging_steps,
        "save_strategy": "steps" if t.save_steps else "no",
        "save_steps": t.save_steps or 500,
        "save_total_limit": t.save_total_limit,
        "save_safetensors": True,
        "dataloader_drop_last": True,
        "dataloader_num_workers": t.num_workers,
        "remove_unused_columns": False,
        "report_to": [],
        "disable_tqdm": True,
        "no_cuda": True,
    }
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


def make_trainer(job: WorkerJob, model: Any, collator: StaticCollator, train_set: Any) -> Any:
    config = job.ipu_config
    if job.stand_in:
        from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments

        replicas = int(config.get("replication_factor", 1))
        args = training_arguments(
            Seq2SeqTrainingArguments,
            job,
            global_micro_batch=job.training.micro_batch_size * replicas,
            eval_batch=job.eval.batch_size * int(config.get("inference_replication_factor", 1)),
        )
        return Seq2SeqTrainer(model=model, args=args, data_collator=collator, train_dataset=train_set)
    try:
        from optimum.graphcore import IPUConfig, IPUSeq2SeqTrainer, IPUSeq2SeqTrainingArguments
    except ImportError as exc:
        raise WorkerError(SDK_MISSING.format(error=exc), "sdk") from None
    ipu_config = IPUConfig.from_dict(config)
    # Replication is set in the IPUConfig, not with n_ipu: n_ipu would also raise the inference
    # replication factor, which use_encoder_output_buffer forbids (optimum-graphcore's notebook does this).
    args = training_arguments(
        IPUSeq2SeqTrainingArguments,
        job,
        global_micro_batch=job.training.micro_batch_size,
        eval_batch=job.eval.batch_size,
    )
    return IPUSeq2SeqTrainer(
        model=model, ipu_config=ipu_config, args=args, data_collator=collator, train_dataset=train_set
    )


def eval_batch_multiple(job: WorkerJob) -> int:
    """Samples per generation step: eval batch x generation replicas (x device iterations, 1)."""
    return job.eval.batch_size * int(job.ipu_config.get("inference_replication_factor", 1))


def run(job: WorkerJob) -> dict[str, Any]:
    import torch
    import transformers
    from transformers import WhisperForConditionalGeneration

    torch.manual_seed(job.training.seed)
    try:
        model = WhisperForConditionalGeneration.from_pretrained(job.model_dir)
    except (OSError, ValueError) as exc:
        raise WorkerError(
            f"transformers {transformers.__version__} cannot load the model in {job.model_dir}: "
            f"{str(exc).splitlines()[0]}",
            "model",
        ) from None
    if model.config.num_mel_bins != 80:
        raise WorkerError(
            "the model has %d mel bins; transformers 4.29.2 (pinned by optimum-graphcore 0.7.1) handles "
            "Whisper up to large-v2 (80 mel bins) only" % model.config.num_mel_bins,
            "model",
        )
    prompt = configure_language(model, job)
    max_length = generation_max_length(job, len(prompt))
    model.generation_config.max_length = max_length
    model.config.max_length = max_length
    if job.training.freeze_encoder:
        model.freeze_encoder()
    collator = StaticCollator(
        job.label_pad_length,
        int(model.config.decoder_start_token_id),
        "float32" if job.stand_in else "float16",
    )
    train_set = PreparedData(job.train_data) if job.train and job.train_data else None
    eval_sets = {name: PreparedData(path) for name, path in job.eval_data.items()}
    for name, data in list(eval_sets.items()) + ([("train", train_set)] if train_set else []):
        if data is not None and data.num_mel_bins != model.config.num_mel_bins:
            raise WorkerError(
                "prepared set '%s' has %d mel bins, the model %d"
                % (name, data.num_mel_bins, model.config.num_mel_bins),
                "data",
            )
    trainer = make_trainer(job, model, collator, train_set)
    pad = model.generation_config.pad_token_id
    eos = model.generation_config.eos_token_id
    predictions: dict[str, dict[str, list[list[int]]]] = {}
    eval_seconds: dict[str, float] = {}

    def evaluate(phase: str) -> None:
        start = time.perf_counter()
        by_set = {}
        collator.phase = "eval"
        for name, data in eval_sets.items():
            padded = PaddedToBatches(data, eval_batch_multiple(job))
            log(
                "generate %s (%s): %d samples in batches of %d"
                % (name, phase, padded.real, eval_batch_multiple(job))
            )
            output = trainer.predict(padded, max_length=max_length, num_beams=job.eval.num_beams)
            rows = output.predictions.tolist()[: padded.real]
            by_set[name] = [strip_generated(row, pad, eos) for row in rows]
        predictions[phase] = by_set
        eval_seconds[phase] = round(time.perf_counter() - start, 2)

    if job.evaluate_before and eval_sets:
        evaluate("before")
    steps = samples = 0
    train_seconds = 0.0
    log_history: list[dict[str, float]] = []
    checkpoints: list[str] = []
    final_dir: str | None = None
    if train_set is not None:
        log(
            "train on %d samples: micro-batch %d, %d replica(s), gradient accumulation %d, labels padded to "
            "a multiple of %d"
            % (
                len(train_set),
                job.training.micro_batch_size,
                int(job.ipu_config.get("replication_factor", 1)),
                job.training.gradient_accumulation_steps,
                job.label_pad_length,
            )
        )
        start = time.perf_counter()
        collator.phase = "train"
        trainer.train()
        train_seconds = time.perf_counter() - start
        steps = int(trainer.state.global_step)
        samples = steps * global_batch(job)
        log_history = [
            {
                "step": float(r["step"]),
                "epoch": float(r.get("epoch", 0.0)),
                "loss": float(r["loss"]),
                "learning_rate": float(r.get("learning_rate", 0.0)),
            }
            for r in trainer.state.log_history
            if "loss" in r
        ]
        checkpoints = sorted(str(p) for p in Path(job.output_dir).glob("checkpoint-*") if p.is_dir())
        if job.final_model_dir:
            trainer.save_model(job.final_model_dir)
            final_dir = job.final_model_dir
        if job.evaluate_after and eval_sets:
            evaluate("after")
    return {
        "format": RESULT_FORMAT,
        "version": FORMAT_VERSION,
        "train_result": {
            "predictions": predictions,
            "log_history": log_history,
            "steps": steps,
            "train_samples": samples,
            "train_seconds": round(train_seconds, 3),
            "eval_seconds": eval_seconds,
            "peak_memory_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "final_model_dir": final_dir,
            "checkpoints": checkpoints,
            "interrupted": False,
        },
        "worker": {
            "version": __version__,
            "mode": "stand-in (transformers Seq2SeqTrainer, CPU, fp32)" if job.stand_in else "ipu",
            "python": sys.version.split()[0],
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "global_batch": global_batch(job),
            "label_pad_length": job.label_pad_length,
            "decoder_prompt": prompt,
            "generation_max_length": max_length,
            "batch_shapes": collator.shapes,
            "pid": os.getpid(),
        },
    }


def global_batch(job: WorkerJob) -> int:
    """Samples per optimizer step: micro-batch x replicas x gradient accumulation."""
    return (
        job.training.micro_batch_size
        * int(job.ipu_config.get("replication_factor", 1))
        * job.training.gradient_accumulation_steps
    )


def write_result(result: dict[str, Any], path: str) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".partial")
    tmp.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    os.replace(str(tmp), str(target))
