"""What ``run``, ``prepare`` and ``plan`` open with: the configured backend after its probe and checks, the
model's processor, the prepared data sets and the number of steps an epoch-bounded run takes."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from whisper_tune.backend.protocol import Backend, Capabilities, Issue, Plan
from whisper_tune.backend.registry import Registry
from whisper_tune.config.schema import DEFAULT_LEARNING_RATE, LEARNING_RATE_FAR, DataConfig, RunConfig
from whisper_tune.console import LOGGER_NAME, Reporter
from whisper_tune.data.sources import resolve_kind, train_and_eval_specs
from whisper_tune.errors import BackendUnavailableError, ConfigError, HardwareError, ModelError
from whisper_tune.models.loading import (
    OFFLINE_HINT,
    check_mel_bins,
    load_processor,
    require_whisper,
    resolve_source,
)


def select_backend(
    config: RunConfig, registry: Registry | None = None, caps: Capabilities | None = None
) -> tuple[Backend, Capabilities]:
    """The configured backend, after its probe and its checks have passed."""
    backend = (registry or Registry()).get(config.backend.name)
    probe = backend.probe()
    if not probe.available:
        raise BackendUnavailableError(
            f"the backend '{backend.name}' cannot run here: {probe.reason}", hint=probe.install_hint or None
        )
    caps = caps or probe.capabilities
    raise_issues(backend.check(config, caps))
    return backend, caps


def raise_issues(issues: list[Any]) -> None:
    errors = [i for i in issues if i.level == "error"]
    for warning in (i for i in issues if i.level == "warning"):
        # the logger, not a new Reporter: building one would reset the console level that -q chose
        hint = f" ({warning.hint})" if warning.hint else ""
        logging.getLogger(LOGGER_NAME).warning(f"warning: {warning.loc}: {warning.message}{hint}")
    if not errors:
        return
    text = "\n  ".join(f"{i.loc}: {i.message}" + (f" ({i.hint})" if i.hint else "") for i in errors)
    hardware = all(i.hardware for i in errors)
    lead = "the hardware cannot run this configuration:" if hardware else "invalid configuration:"
    # one problem on one line; several one per line
    raise (HardwareError if hardware else ConfigError)(lead + ("\n  " if len(errors) > 1 else " ") + text)


def warmup_issues(config: RunConfig, steps: int | None) -> list[Issue]:
    """A warning when the warm-up is not shorter than the training (``steps``; None: not known yet)."""
    warmup = config.training.warmup_steps
    if steps is None or not warmup or warmup < steps:
        return []
    return [
        Issue(
            "training.warmup_steps",
            f"{warmup} warm-up steps for {steps} training step{'s' if steps != 1 else ''}: the learning "
            f"rate is still rising when training ends and never reaches training.learning_rate "
            f"({config.training.learning_rate:g})",
            level="warning",
            hint="use fewer warm-up steps than training steps",
        )
    ]


def learning_rate_issues(config: RunConfig) -> list[Issue]:
    """A warning when ``training.learning_rate`` is far (``LEARNING_RATE_FAR`` times) from what its method
    trains at by default: a config written for full fine-tuning (1e-5) run as LoRA, or the reverse."""
    training = config.training
    method, rate = training.method, training.learning_rate
    default = DEFAULT_LEARNING_RATE[method]
    if default / LEARNING_RATE_FAR <= rate <= default * LEARNING_RATE_FAR:
        return []
    name = {"lora": "LoRA", "full": "full fine-tuning"}.get(method, method)
    far = LEARNING_RATE_FAR
    usual = [m for m, r in DEFAULT_LEARNING_RATE.items() if r / far <= rate <= r * far]
    why = f" (a rate for training.method {usual[0]})" if usual else ""
    return [
        Issue(
            "training.learning_rate",
            f"{rate:g} is far {'below' if rate < default else 'above'} the usual range of training.method "
            f"{method}{why}: {name}'s default is {default:g}",
            level="warning",
            hint=f"leave training.learning_rate unset to train {name} at {default:g}, or set a rate near it",
        )
    ]


def load_model_processor(config: RunConfig, reporter: Reporter) -> tuple[str, Any]:
    from transformers import WhisperConfig

    source = resolve_source(config.model.name)
    reporter.info(
        f"model: {config.model.name}" + (f" (from {source})" if source != config.model.name else "")
    )
    require_whisper(source, config.model.name)
    processor = load_processor(source, config.model)
    try:
        model_config = WhisperConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"cannot read the configuration of '{config.model.name}': {str(exc).splitlines()[0]}",
            hint=OFFLINE_HINT,
        ) from None
    check_mel_bins(model_config.num_mel_bins, processor.feature_extractor.feature_size, config.model.name)
    return source, processor


def train_stream_spec(config: RunConfig) -> dict[str, Any] | None:
    """With ``data.streaming`` the training split read as training goes (no prepared directory);
    None otherwise. A stream has no length: it needs ``training.max_steps`` and no ``test_size``."""
    data = config.data
    if not data.streaming or resolve_kind(data.dataset or "", data.kind) == "prepared":
        return None
    problems = []
    if config.training.max_steps is None:
        problems.append("training.max_steps: a streamed training set has no length; set the number of steps")
    if data.test_size is not None:
        problems.append("data.test_size: holding out a fraction needs the whole split; set data.eval_split")
    if problems:
        raise ConfigError("data.streaming:\n  " + "\n  ".join(problems))
    train, _ = train_and_eval_specs(data)
    return dataclasses.asdict(train)  # JSON: it crosses to worker processes in the job


def prepare_sets(
    config: RunConfig,
    out_dir: Path,
    processor: Any,
    backend: Backend,
    reporter: Reporter,
    include_train: bool,
    data: DataConfig | None = None,
) -> Any:
    # lazy: keeps numpy out of this module's import
    from whisper_tune.data.sets import prepare_all

    meta = {
        "model": config.model.name,
        "language": config.model.language,
        "task": config.model.task,
        "decoder_prefix": list(processor.tokenizer.prefix_tokens),
    }
    return prepare_all(
        data or config.data,
        out_dir,
        feature_extractor=processor.feature_extractor,
        tokenizer=processor.tokenizer,
        reporter=reporter,
        include_train=include_train,
        meta=meta,
    )


def epoch_steps(config: RunConfig, backend: Backend, the_plan: Plan, train_dir: Path, tokenizer: Any) -> int:
    """Optimizer steps of an epoch-bounded run, counted as the training loop counts them (windows planned
    per epoch when the data section asks for them)."""
    # lazy: keeps numpy out of this module's import
    from whisper_tune.data.store import PreparedDataset
    from whisper_tune.data.windows import TrainWindows

    # lazy: keeps numpy out of this module's import
    from whisper_tune.training.loop import total_steps

    prepared = PreparedDataset(train_dir)
    drop_last = backend.recipe_needs(config).drop_last
    if not config.data.windowed:
        return total_steps(config.training, len(prepared), drop_last, the_plan.processes)
    windows = TrainWindows(prepared, tokenizer, config.data, config.training.seed)
    sizes = lambda epoch: len(windows.plan(epoch).windows)  # noqa: E731
    return total_steps(config.training, len(windows), drop_last, the_plan.processes, sizes)
