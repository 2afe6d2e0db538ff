"""Their names and their shapes: a config written for Hugging Face's run_speech_recognition_seq2seq.py /
Seq2SeqTrainingArguments is answered with what each key is called here (one table,
``config/their_names.py``, rendered in docs/config.md); short forms read as what they stand for; pydantic's
own wording never reaches the user; ``eval.metric`` picks the best checkpoint."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO

from whisper_tune.config.their_names import THEIR_NAMES, their_name_hint
from whisper_tune.config_loading import load_config
from whisper_tune.errors import ConfigError

#: a value of each of their names, as their configs hold it
THEIR_VALUES: dict[str, object] = {
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 4,
    "learning_rate": 1e-4,
    "num_train_epochs": 3,
    "max_steps": 100,
    "gradient_accumulation_steps": 2,
    "warmup_steps": 10,
    "warmup_ratio": 0.1,
    "lr_scheduler_type": "cosine",
    "weight_decay": 0.01,
    "max_grad_norm": 0.5,
    "seed": 7,
    "fp16": True,
    "bf16": True,
    "gradient_checkpointing": True,
    "output_dir": "./whisper-small-hi",
    "overwrite_output_dir": True,
    "save_steps": 1000,
    "save_total_limit": 3,
    "save_strategy": "steps",
    "logging_steps": 25,
    "resume_from_checkpoint": "runs/x/checkpoints/step-000010",
    "report_to": "wandb",
    "eval_steps": 1000,
    "eval_strategy": "steps",
    "evaluation_strategy": "steps",
    "metric_for_best_model": "eval_cer",
    "greater_is_better": False,
    "load_best_model_at_end": True,
    "early_stopping_patience": 3,
    "predict_with_generate": True,
    "generation_max_length": 225,
    "generation_num_beams": 2,
    "push_to_hub": True,
    "hub_model_id": "me/whisper-small-hi",
    "hub_private_repo": True,
    "do_train": True,
    "do_eval": True,
    "model_name_or_path": "openai/whisper-small",
    "language": "hindi",
    "task": "transcribe",
    "freeze_encoder": True,
    "apply_spec_augment": True,
    "mask_time_prob": 0.05,
    "dataset_name": "mozilla-foundation/common_voice_11_0",
    "dataset_config_name": "hi",
    "train_split_name": "train+validation",
    "eval_split_name": "test",
    "audio_column_name": "audio",
    "text_column_name": "sentence",
    "max_train_samples": 64,
    "max_eval_samples": 16,
    "max_duration_in_seconds": 20.0,
    "min_duration_in_seconds": 0.5,
    "preprocessing_num_workers": 2,
    "streaming": False,
}
#: what makes a suggestion valid in the quickstart preset (a multilingual model for model.language)
MULTILINGUAL = "model.name=openai/whisper-small"


def yaml_value(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def unknown_key_line(override: str) -> str:
    with pytest.raises(ConfigError) as err:
        load_config("quickstart", [override])
    name = override.split("=")[0]
    (line,) = [line.strip() for line in err.value.message.splitlines() if line.strip().startswith(f"{name}:")]
    return line


def test_every_name_in_the_table_has_a_value_in_this_test() -> None:
    assert set(THEIR_VALUES) == set(THEIR_NAMES)


@pytest.mark.parametrize("name", sorted(THEIR_NAMES))
def test_each_of_their_names_says_what_it_is_called_here(name: str) -> None:
    """``per_device_train_batch_size=8`` -> ``unknown key: Seq2SeqTrainingArguments' name; here:
    training.batch_size=8``; the key it names exists, and the ``key=value`` it shows validates."""
    entry, value = THEIR_NAMES[name], THEIR_VALUES[name]
    line = unknown_key_line(f"{name}={yaml_value(value)}")
    assert line.startswith(f"{name}: unknown key: ") and "valid keys here" not in line
    if not entry.ours:
        assert entry.note in line
        return
    suggestion = line.split("here: ", 1)[1].split(" (", 1)[0]
    key = entry.ours.split("=")[0]
    assert suggestion.split("=")[0] == key
    if "=" in suggestion:
        load_config("quickstart", [MULTILINGUAL, suggestion])
    else:  # the value does not carry over as it is: the key alone, which exists, and how to set it
        assert not entry.same_value and entry.note in line
    assert schema_has(key)


def schema_has(key: str) -> bool:
    from pydantic import BaseModel

    from whisper_tune.config.schema import RunConfig

    model: object = RunConfig
    for part in key.split("."):
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return False
        model = model.model_fields[part].annotation
    return True


def test_their_names_inside_a_section_and_in_a_yaml_file(tmp_path: Path) -> None:
    assert "here: training.precision=fp16" in unknown_key_line("training.fp16=true")
    assert "here: training.batch_size=16" in unknown_key_line("training.per_device_train_batch_size=16")
    assert unknown_key_line("learning_rate=1e-5") == (
        "learning_rate: unknown key: it belongs in training; here: training.learning_rate=1e-5"
    )
    theirs = tmp_path / "theirs.yaml"
    theirs.write_text("per_device_train_batch_size: 16\nfp16: true\nwarmup_ratio: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(theirs)
    message = err.value.message
    assert "per_device_train_batch_size: unknown key: Seq2SeqTrainingArguments' name; here: " in message
    assert "here: training.precision=fp16" in message and "warmup_ratio x the run's training steps" in message
    assert their_name_hint("bf16", False) == (
        "Seq2SeqTrainingArguments' name; here: training.precision (leave it out: fp32 unless "
        "training.precision is set)"
    )
    assert their_name_hint("no_such_name") is None


def test_docs_config_md_holds_the_whole_table() -> None:
    text = (REPO / "docs" / "config.md").read_text(encoding="utf-8")
    table = text.split("## Coming from Hugging Face's names", 1)[1]
    rows = dict(re.findall(r"^\| `([a-z_0-9]+)` \| [^|]+ \| ([^|]+) \|", table, re.M))
    assert set(rows) == set(THEIR_NAMES)
    for name, entry in THEIR_NAMES.items():
        assert rows[name].strip() == (f"`{entry.ours}`" if entry.ours else "—")


def test_one_tracker_name_is_a_list_of_one_and_a_list_field_takes_one_value() -> None:
    config = load_config("quickstart", ["training.report_to=wandb", "eval.keep_grid=0.5"])
    assert config.training.report_to == ("wandb",) and config.eval.keep_grid == (0.5,)
    lora = load_config("quickstart", ["training.lora.target_modules=fc1"]).training.lora
    assert lora.target_modules == ("fc1",)


def test_a_section_with_enabled_takes_true_or_false() -> None:
    config = load_config("quickstart", ["data.packing=true", "model.spec_augment=true"])
    assert config.data.packing.enabled and config.model.spec_augment.enabled
    assert not load_config("quickstart", ["data.packing=false"]).data.packing.enabled


def test_an_empty_section_is_its_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty-sections.yaml"
    path.write_text("model:\n  name: pip:tiny.en\neval:\ntraining:\n  max_steps: 3\ndata:\n  packing:\n")
    config = load_config(path)
    assert config.eval == type(config.eval)() and config.training.max_steps == 3
    assert not config.data.packing.enabled
    assert load_config("quickstart", ["eval="]).eval == config.eval


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("data.packing=maybe", "data.packing: must be a mapping of its keys (enabled, auto_below_s, gap_s, "
         "random_offset, max_window_s) (or true / false: its 'enabled') (got 'maybe')"),
        ("eval=true", "eval: must be a mapping of its keys (before, after"),
        ("training.report_to={a: 1}", "training.report_to: must be a list, e.g. [a, b]"),
        ("training.batch_size=", "training.batch_size: must be a whole number, not empty (null)"),
        ("training.batch_size=1.5", "training.batch_size: must be a whole number (got 1.5)"),
        ("training.learning_rate=-1", "training.learning_rate: must be greater than 0 (got -1)"),
        ("eval.keep=banana", "eval.keep: must be 'auto' or 'off', or a number (got 'banana')"),
        ("eval.metric=bleu", "eval.metric: must be 'wer' or 'cer' (got 'bleu')"),
        ("training.freeze_encoder=maybe", "training.freeze_encoder: must be true or false (got 'maybe')"),
        ("training.lora.target_modules=[]", "must be a list of at least 1 item (got [])"),
        ("data.extra_eval=[{}]", "data.extra_eval.0.name: required, and not set"),
    ],
)  # fmt: skip
def test_pydantic_wording_never_reaches_the_user(override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config("quickstart", [override])
    message = err.value.message
    assert expected in message
    for words in ("Input should", "valid dictionary", "instance of", "valid tuple", "None", "Field "):
        assert words not in message


@pytest.mark.parametrize("metric", ["wer", "cer"])
def test_eval_metric_picks_the_best_checkpoint_and_stops_early(metric: str, tmp_path: Path) -> None:
    """WER is best at step 1, CER at step 2: eval.metric decides which checkpoint is kept, and what
    counts as no improvement for early stopping."""
    from helpers import QUIET

    from whisper_tune.training.best_checkpoint import BestCheckpoint

    scores = iter([{"wer": 10.0, "cer": 5.0}, {"wer": 12.0, "cer": 3.0}, {"wer": 11.0, "cer": 4.0}])
    saved: list[Path] = []
    best = BestCheckpoint(
        evaluate=lambda: next(scores),
        every=1,
        directory=tmp_path / "best",
        reporter=QUIET,
        patience=1,
        metric=metric,
    )
    best.bind(save=saved.append, load=lambda d: None)
    stops = [best.after_step(step, 5) for step in (1, 2, 3)]
    assert best.best_step == (1 if metric == "wer" else 2)
    assert len(saved) == (1 if metric == "wer" else 2)
    assert stops == ([False, True, True] if metric == "wer" else [False, False, True])
    assert best.history[0] == {"step": 1, "eval_wer": 10.0, "eval_cer": 5.0}
    summary = best.summary()
    assert summary["metric"] == metric
    assert summary[f"best_eval_{metric}"] == (10.0 if metric == "wer" else 3.0)
    kept = (tmp_path / "best" / "best.json").read_text()
    assert f'"eval_{metric}"' in kept


def test_a_learning_rate_far_from_the_methods_range_warns_naming_its_default() -> None:
    from whisper_tune.config.schema import DEFAULT_LEARNING_RATE
    from whisper_tune.runs.opening import learning_rate_issues

    (lora,) = learning_rate_issues(
        load_config("quickstart", ["training.method=lora", "training.learning_rate=1e-5"])
    )
    assert lora.level == "warning" and lora.loc == "training.learning_rate"
    assert "1e-05 is far below the usual range of training.method lora" in lora.message
    assert f"LoRA's default is {DEFAULT_LEARNING_RATE['lora']:g}" in lora.message
    (full,) = learning_rate_issues(
        load_config("quickstart", ["training.method=full", "training.learning_rate=1e-3"])
    )
    assert "0.001 is far above the usual range of training.method full" in full.message
    assert f"full fine-tuning's default is {DEFAULT_LEARNING_RATE['full']:g}" in full.message
    for usual in (["training.method=lora"], ["training.method=full", "training.learning_rate=1e-5"]):
        assert learning_rate_issues(load_config("quickstart", usual)) == []


def logged_lines(action: Any) -> list[str]:
    """What ``action()`` logged through whisper-tune's logger (console notes and warnings)."""
    import logging

    from whisper_tune.console import LOGGER_NAME

    lines: list[str] = []
    handler = logging.Handler(level=logging.DEBUG)
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger(LOGGER_NAME)
    logger.addHandler(handler)
    try:
        action()
    finally:
        logger.removeHandler(handler)
    return lines


def test_data_in_another_language_with_an_english_only_model_gets_a_hint(tmp_path: Path) -> None:
    """``--data`` keeps the preset's English-only tiny.en: Common Voice's locale column saying Marathi
    is a warning naming a multilingual model; data whose language is not known gets a note."""
    from helpers import QUICKSTART_DATA, write_commonvoice

    marathi = write_commonvoice(
        tmp_path / "cv-corpus-mr", {"train": [(None, "नमस्कार", "mr")] * 3, "test": [(None, "धन्यवाद", "mr")]}
    )
    lines = logged_lines(lambda: load_config("quickstart", [], data=str(marathi)))
    assert (
        f"warning: {marathi} holds speech in mr (its 'locale' column), but pip:tiny.en is English-only: use "
        "a multilingual model, e.g. --model pip:base model.language=mr"
    ) in lines
    multilingual = logged_lines(lambda: load_config("quickstart", [], data=str(marathi), model="pip:base"))
    assert not [line for line in multilingual if "English-only" in line]
    english = logged_lines(lambda: load_config("quickstart", [], data=str(QUICKSTART_DATA)))
    assert (
        "model: pip:tiny.en is English-only; for speech in another language use a multilingual model, "
        "e.g. --model pip:base model.language=<code>"
    ) in english
    with pytest.raises(ConfigError, match="Pick a multilingual model \\(e.g. --model pip:base"):
        load_config("quickstart", ["model.language=mr"])
