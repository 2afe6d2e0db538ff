"""What Hugging Face's fine-tuning names are called here: the one table.

A user coming from ``run_speech_recognition_seq2seq.py`` or the Fine-Tune Whisper blog writes
``Seq2SeqTrainingArguments`` names (``per_device_train_batch_size``, ``fp16``, ``warmup_ratio``, …) and the
example script's argument names (``model_name_or_path``, ``dataset_name``, …). Such a key is unknown
here; the config loader (``config_loading.format_validation_error``) answers with this table's entry
instead of a list of valid keys, and docs/config.md renders the same table (``config/docs.py``).
"""

from __future__ import annotations

from typing import Any, NamedTuple


class TheirName(NamedTuple):
    """One Hugging Face name: what it is here (a dotted key, or ``key=value`` when the value is fixed;
    "" when nothing needs setting) and how its value carries over."""

    ours: str
    note: str = ""
    #: where the name comes from: Seq2SeqTrainingArguments, or the example script's arguments
    source: str = "Seq2SeqTrainingArguments"
    #: its value means the same here (the error then shows ``key=value``)
    same_value: bool = True


SCRIPT = "run_speech_recognition_seq2seq.py"

#: Hugging Face name -> what it is called here (docs/config.md renders this table)
THEIR_NAMES: dict[str, TheirName] = {
    "per_device_train_batch_size": TheirName("training.batch_size", "per device, as there"),
    "per_device_eval_batch_size": TheirName("eval.batch_size"),
    "learning_rate": TheirName("training.learning_rate"),
    "num_train_epochs": TheirName("training.num_epochs"),
    "max_steps": TheirName("training.max_steps"),
    "gradient_accumulation_steps": TheirName("training.gradient_accumulation_steps"),
    "warmup_steps": TheirName("training.warmup_steps"),
    "warmup_ratio": TheirName(
        "training.warmup_steps",
        "a number of steps, not a share: warmup_ratio x the run's training steps",
        same_value=False,
    ),
    "lr_scheduler_type": TheirName("training.lr_scheduler", "linear, constant or cosine"),
    "weight_decay": TheirName("training.weight_decay"),
    "max_grad_norm": TheirName("training.max_grad_norm"),
    "seed": TheirName("training.seed"),
    "fp16": TheirName("training.precision=fp16", "one key for the precision: fp32, bf16 or fp16"),
    "bf16": TheirName("training.precision=bf16", "one key for the precision: fp32, bf16 or fp16"),
    "gradient_checkpointing": TheirName("training.gradient_checkpointing"),
    "output_dir": TheirName("output.dir", "each run gets its own directory under it (output.run_name)"),
    "overwrite_output_dir": TheirName("", "not needed: every run writes a new directory under output.dir"),
    "save_steps": TheirName("training.save_steps"),
    "save_total_limit": TheirName("training.save_total_limit"),
    "save_strategy": TheirName(
        "training.save_steps", "a number of steps; unset saves no checkpoint", same_value=False
    ),
    "logging_steps": TheirName("training.logging_steps"),
    "resume_from_checkpoint": TheirName("training.resume_from", "a checkpoint directory, or 'latest'"),
    "report_to": TheirName("training.report_to", "one tracker name or a list"),
    "eval_steps": TheirName("eval.steps", "evaluation during training, every this many steps"),
    "eval_strategy": TheirName(
        "eval.steps", "a number of steps; unset evaluates before and after only", same_value=False
    ),
    "evaluation_strategy": TheirName(
        "eval.steps", "a number of steps; unset evaluates before and after only", same_value=False
    ),
    "metric_for_best_model": TheirName("eval.metric", "wer or cer"),
    "greater_is_better": TheirName("", "not needed: lower WER / CER is better, always"),
    "load_best_model_at_end": TheirName("eval.keep_best", "with eval.steps; on by default"),
    "early_stopping_patience": TheirName(
        "eval.early_stopping_patience", "EarlyStoppingCallback's argument, with eval.steps"
    ),
    "predict_with_generate": TheirName("", "not needed: evaluation always generates"),
    "generation_max_length": TheirName("eval.max_new_tokens", "new tokens, after the prompt"),
    "generation_num_beams": TheirName("eval.num_beams"),
    "push_to_hub": TheirName(
        "output.push_to", "a Hub repo id ORG/NAME (their hub_model_id), not true / false", same_value=False
    ),
    "hub_model_id": TheirName("output.push_to"),
    "hub_private_repo": TheirName("output.push_private"),
    "do_train": TheirName("", "not needed: 'whisper-tune run' trains, 'whisper-tune eval' only evaluates"),
    "do_eval": TheirName(
        "", "not needed: 'whisper-tune run' evaluates before and after (eval.before, eval.after)"
    ),
    "model_name_or_path": TheirName("model.name", source=SCRIPT),
    "language": TheirName("model.language", source=SCRIPT),
    "task": TheirName("model.task", source=SCRIPT),
    "freeze_encoder": TheirName("training.freeze_encoder", source=SCRIPT),
    "apply_spec_augment": TheirName("model.spec_augment.enabled", source=SCRIPT),
    "mask_time_prob": TheirName("model.spec_augment.mask_time_prob", source=SCRIPT),
    "dataset_name": TheirName("data.dataset", "or 'whisper-tune run --data PATH'", source=SCRIPT),
    "dataset_config_name": TheirName("data.subset", source=SCRIPT),
    "train_split_name": TheirName("data.train_split", source=SCRIPT),
    "eval_split_name": TheirName("data.eval_split", source=SCRIPT),
    "audio_column_name": TheirName("data.audio_column", source=SCRIPT),
    "text_column_name": TheirName("data.text_column", source=SCRIPT),
    "max_train_samples": TheirName("data.max_train_samples", source=SCRIPT),
    "max_eval_samples": TheirName("data.max_eval_samples", source=SCRIPT),
    "max_duration_in_seconds": TheirName("data.max_duration_s", source=SCRIPT),
    "min_duration_in_seconds": TheirName("data.min_duration_s", source=SCRIPT),
    "preprocessing_num_workers": TheirName("data.num_workers", source=SCRIPT),
    "streaming": TheirName("data.streaming", source=SCRIPT),
}


def their_name_hint(name: str, value: Any = None) -> str | None:
    """What to write instead of the Hugging Face name ``name`` (with its ``value``, when given), to follow
    "unknown key"; None when ``name`` is none of theirs."""
    entry = THEIR_NAMES.get(name)
    if entry is None:
        return None
    note = f" ({entry.note})" if entry.note else ""
    if not entry.ours:
        return f"{_whose(entry)} name; {entry.note}"
    key = entry.ours.split("=")[0]
    example = entry.ours if "=" in entry.ours else _example(key, name, value) if entry.same_value else ""
    if name in ("fp16", "bf16") and value is False:
        example, note = "", " (leave it out: fp32 unless training.precision is set)"
    section, own = key.rsplit(".", 1)
    said = f"it belongs in {section}" if own == name else f"{_whose(entry)} name"
    return f"{said}; here: {example or key}{note}"


def _whose(entry: TheirName) -> str:
    return "the example script's" if entry.source == SCRIPT else f"{entry.source}'"


def _example(key: str, name: str, value: Any) -> str:
    """``key=value`` for a value that carries over as it is."""
    if value is None or isinstance(value, (dict, list)):
        return ""
    if name == "metric_for_best_model" and isinstance(value, str):
        value = value.lower().removeprefix("eval_")
    if isinstance(value, bool):
        value = "true" if value else "false"
    return f"{key}={value}"
