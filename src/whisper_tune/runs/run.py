"""The shared run: check -> run directory -> model -> prepared data -> backend -> metrics and plot.

``run(config)`` is what ``whisper-tune run`` calls (``run(config, train=False)`` is ``whisper-tune eval``),
``prepare`` is ``whisper-tune prepare`` and ``plan`` is ``whisper-tune plan``. The backend only trains
and generates; data preparation and scoring happen here, the same for every backend.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from whisper_tune.backend.protocol import Backend, Capabilities, Issue, Plan, TrainJob, TrainResult
from whisper_tune.backend.registry import Registry
from whisper_tune.config.schema import DataConfig, RunConfig
from whisper_tune.config_loading import dump_yaml
from whisper_tune.console import LOGGER_NAME, Reporter
from whisper_tune.data.preflight import require_usable_data
from whisper_tune.data.sources import resolve_kind, train_and_eval_specs
from whisper_tune.errors import (
    BackendUnavailableError,
    ConfigError,
    DataError,
    GuardRailError,
    HardwareError,
    InterruptedRun,
    ModelError,
    OutputError,
)
from whisper_tune.evaluation.guards import (
    guard_report,
    language_share,
    normalizer_override,
    with_regression_set,
)
from whisper_tune.models.loading import (
    OFFLINE_HINT,
    check_mel_bins,
    is_multilingual,
    load_processor,
    require_reachable,
    require_whisper,
    resolve_source,
    save_processor,
)
from whisper_tune.runs.report import wer_lines, write_json_atomic, write_plot
from whisper_tune.runs.trackers import evaluation_scalars, open_trackers

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"


@dataclass
class RunSummary:
    run_dir: Path
    metrics: dict[str, Any]
    lines: list[str] = field(default_factory=list)


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
        logging.getLogger(LOGGER_NAME).warning(f"warning: {warning.loc}: {warning.message}")
    if not errors:
        return
    text = "\n  ".join(f"{i.loc}: {i.message}" + (f" ({i.hint})" if i.hint else "") for i in errors)
    hardware = all(i.hardware for i in errors)
    raise (HardwareError if hardware else ConfigError)(
        ("the hardware cannot run this configuration:\n  " if hardware else "invalid configuration:\n  ")
        + text
    )


def plan(config: RunConfig, registry: Registry | None = None, caps: Capabilities | None = None) -> Plan:
    backend = (registry or Registry()).get(config.backend.name)
    caps = caps or backend.probe().capabilities
    raise_issues([i for i in backend.check(config, caps) if not (i.hardware or i.run_only)])
    return backend.plan(config, caps)


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


def model_label(name: str) -> str:
    """The model's part of a run directory name: its last path part, or for a run's ``final/`` (or a
    checkpoint) the run's name."""
    path = Path(name.replace("pip:", "").rstrip("/"))
    parts = [p for p in path.parts if p not in ("final", "best", "checkpoints") and not p.startswith("step-")]
    return (parts[-1] if parts else path.name).replace("/", "-")


def run_dir_path(config: RunConfig, *, train: bool = True) -> Path:
    """Where a run of ``config`` started now writes: ``output.dir`` / ``output.run_name``, or
    ``<UTC time>-<backend>-<model>`` (with ``-eval`` for an evaluation-only run)."""
    name = config.output.run_name or "{}-{}-{}{}".format(
        datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S"),
        config.backend.name,
        model_label(config.model.name),
        "" if train else "-eval",
    )
    return Path(config.output.dir).expanduser() / name


def make_run_dir(config: RunConfig, *, train: bool = True) -> Path:
    """Create the run directory; a clear OutputError if it cannot be created or written."""
    run_dir = run_dir_path(config, train=train)
    resuming = config.training.resume_from is not None
    if (run_dir / METRICS_FILE).exists() and not resuming:
        raise OutputError(
            f"run directory {run_dir} already holds a finished run",
            hint="choose another output.run_name (nothing was overwritten)",
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise OutputError(
            f"cannot write to the output directory {run_dir}: {exc.strerror or exc}",
            hint="set output.dir to a writable directory",
        ) from None
    return run_dir


def read_state(checkpoint: Path) -> tuple[int, list[dict[str, float]]]:
    # lazy: keeps numpy out of this module's import
    from whisper_tune.training.checkpoints import read_state as read

    return read(checkpoint)


def resolve_resume(config: RunConfig, run_dir: Path) -> Path | None:
    # lazy: keeps numpy out of this module's import
    from whisper_tune.training.checkpoints import list_checkpoints

    value = config.training.resume_from
    if value is None:
        return None
    if value == "latest":
        found = list_checkpoints(run_dir / "checkpoints")
        if not found:
            raise ConfigError(
                f"training.resume_from=latest but {run_dir / 'checkpoints'} has no checkpoint",
                hint="set output.run_name to the run to resume",
            )
        return found[-1]
    path = Path(value).expanduser()
    if not (path / "trainer_state.json").is_file():
        raise ConfigError(f"training.resume_from: {path} is not a whisper-tune checkpoint")
    return path


def _load_processor_for(config: RunConfig, reporter: Reporter) -> tuple[str, Any]:
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


def prepare(
    config: RunConfig,
    out_dir: Path,
    *,
    reporter: Reporter | None = None,
    registry: Registry | None = None,
    include_train: bool = True,
) -> Any:
    """Prepare the configured data for the configured model into ``out_dir`` (``whisper-tune prepare``)."""

    reporter = reporter or Reporter()
    backend = (registry or Registry()).get(config.backend.name)
    require_usable_data(config.data, include_train=include_train)
    require_reachable(config.model.name)
    _, processor = _load_processor_for(config, reporter)
    return _prepare_sets(config, out_dir, processor, backend, reporter, include_train)


def run(
    config: RunConfig,
    *,
    registry: Registry | None = None,
    reporter: Reporter | None = None,
    train: bool = True,
    echo_summary: bool = True,
) -> RunSummary:
    """Fine-tune (or with ``train=False`` only evaluate) as configured; returns the summary.

    The WER lines (``RunSummary.lines``) go to run.log and, with ``echo_summary``, to the console; the
    CLI prints them itself (to stdout), so it passes False.
    """
    # lazy: keeps numpy out of this module's import
    from whisper_tune.data.store import PreparedDataset
    from whisper_tune.evaluation.evaluate import row_languages_of, score_predictions

    reporter = reporter or Reporter()
    started = time.perf_counter()
    backend, caps = select_backend(config, registry)
    # every data set and the model name are checked before anything is loaded or written
    require_usable_data(config.data, include_train=train)
    require_reachable(config.model.name)
    stream = train_stream_spec(config) if train else None
    created = not run_dir_path(config, train=train).exists() if config.output.run_name else True
    run_dir = make_run_dir(config, train=train)
    discard = False
    reporter.log_to(run_dir / "run.log")
    if train:
        raise_issues(warmup_issues(config, config.training.max_steps))
    try:
        (run_dir / CONFIG_FILE).write_text(dump_yaml(config), encoding="utf-8")
        reporter.attach_trackers(open_trackers(config.training.report_to, run_dir, config.to_yaml_dict()))
        the_plan = backend.plan(config, caps)
        write_json_atomic(run_dir / "plan.json", {**asdict(the_plan), "global_batch": the_plan.global_batch})
        reporter.info(f"run directory: {run_dir}")
        reporter.info(
            f"backend {backend.name}: {the_plan.devices}; batch {the_plan.batch_per_device} per device, "
            f"global {the_plan.global_batch}"
        )
        resume = resolve_resume(config, run_dir)
        resumed_at = read_state(resume)[0] if resume is not None else 0  # before training prunes it
        source, processor = _load_processor_for(config, reporter)
        multilingual = is_multilingual(len(processor.tokenizer))
        data = with_regression_set(config, multilingual) if train else config.data
        sets = _prepare_sets(
            config, run_dir / "prepared", processor, backend, reporter, train and stream is None, data
        )
        if train and sets.train is not None and config.training.max_steps is None:
            steps = _epoch_steps(config, backend, the_plan, sets.train, processor.tokenizer)
            raise_issues(warmup_issues(config, steps))
        job = TrainJob(
            config=config,
            run_dir=run_dir,
            model_dir=source,
            train_data=sets.train,
            train_stream=stream,
            eval_data=sets.evals,
            train=train,
            evaluate_before=config.eval.before or not train,
            evaluate_after=config.eval.after and train,
            resume_from=resume,
            launch=the_plan.launch.resolved(run_dir) if the_plan.launch.mode == "command" else None,
        )
        (run_dir / "job.json").write_text(job.model_dump_json(indent=2), encoding="utf-8")
        result = backend.train(job, reporter)
        # what a backend in another process could not send live; a resumed run's earlier records were
        # sent by the run that wrote the checkpoint
        for record in result.log_history:
            if record["step"] > resumed_at:
                reporter.track(record)
        final = result.final_model_dir
        if final is not None and not (final / "tokenizer_config.json").exists():
            save_processor(processor, final)  # a backend that did not write them (the IPU worker)
        eval_sets = {name: PreparedDataset(path) for name, path in sets.evals.items()}
        references = {name: ds.texts for name, ds in eval_sets.items()}
        evaluation = {
            phase: {
                name: score_predictions(
                    processor.tokenizer,
                    ids,
                    references[name],
                    model_cfg=config.model,
                    eval_cfg=config.eval,
                    normalizer=normalizer_override(config, name, multilingual),
                )
                for name, ids in by_set.items()
            }
            for phase, by_set in result.predictions.items()
        }
        for phase, by_set in result.detected_languages.items():
            for name, detected in by_set.items():
                expected = row_languages_of(eval_sets[name], config.model.language) or [
                    config.model.language
                ] * len(detected)
                if phase in evaluation and name in evaluation[phase]:
                    evaluation[phase][name]["metrics"]["language_share"] = language_share(detected, expected)
        _write_predictions(run_dir, evaluation, eval_sets)
        report = {**({"train": result.stream} if result.stream else {}), **sets.report()}
        metrics = _metrics(config, result, evaluation, report, time.perf_counter() - started)
        write_json_atomic(run_dir / METRICS_FILE, metrics)
        if config.output.plot:
            write_plot(
                run_dir / "plot.png",
                result.log_history,
                metrics["evaluation"],
                f"{config.model.name} · {backend.name}" + ("" if train else " · evaluation only"),
            )
        for tracker in reporter.trackers:
            tracker.log(evaluation_scalars(metrics["evaluation"]), step=result.steps)
        lines = wer_lines(metrics["evaluation"], trained=train)
        for line in lines:
            (reporter.info if echo_summary else reporter.log_only)(line)
        for warning in metrics["guard"]["warnings"]:
            (reporter.warning if echo_summary else reporter.log_only)(f"guard rail: {warning}")
            lines.append(f"warning: guard rail: {warning}")
        if result.interrupted:
            raise InterruptedRun(
                f"interrupted after {result.steps} steps; checkpoint and metrics are in {run_dir}",
                hint=f"resume with training.resume_from=latest output.run_name={run_dir.name}",
            )
        fail_on_guard_warnings(config, metrics["guard"]["warnings"], run_dir)
        return RunSummary(run_dir, metrics, lines)
    except KeyboardInterrupt:
        raise InterruptedRun(f"interrupted; what was written so far is in {run_dir}") from None
    except (ConfigError, DataError, ModelError):
        # a model or data set that cannot be used: nothing was trained, so the new run directory holds
        # nothing worth keeping (the message is on the console)
        discard = created and not any((run_dir / n).exists() for n in ("checkpoints", "final", METRICS_FILE))
        raise
    finally:
        for tracker in reporter.trackers:
            tracker.finish()
        reporter.attach_trackers([])
        reporter.close()
        if discard:
            shutil.rmtree(run_dir, ignore_errors=True)


def fail_on_guard_warnings(config: RunConfig, warnings: list[str], run_dir: Path) -> None:
    """With ``eval.fail_on_regression``, a guard-rail warning is an error (exit code 9), raised once
    everything is written."""
    if config.eval.fail_on_regression and warnings:
        more = f" (and {len(warnings) - 1} more)" if len(warnings) > 1 else ""
        raise GuardRailError(
            f"guard rail: {warnings[0]}{more}; eval.fail_on_regression is set",
            hint=f"the run is complete in {run_dir} (final/, metrics.json 'guard'); lower the learning "
            "rate, train fewer steps or use training.method=lora, or raise eval.regression_margin",
        )


def train_stream_spec(config: RunConfig) -> dict[str, Any] | None:
    """With ``data.streaming`` the training split read as training goes (no prepared directory);
    None otherwise. A stream has no length: it needs ``training.max_steps`` and no ``test_size``."""
    # lazy: keeps torch, numpy out of this module's import
    from whisper_tune.data.streaming import stream_spec

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
    return stream_spec(train)


def _prepare_sets(
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


def _epoch_steps(config: RunConfig, backend: Backend, the_plan: Plan, train_dir: Path, tokenizer: Any) -> int:
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


def _write_predictions(run_dir: Path, evaluation: dict[str, Any], eval_sets: dict[str, Any]) -> None:
    """One JSON line per clip: its id (as the source names it: ``eval/0001.ogg``, ``x.csv:12``), the
    audio file when it came from one, the reference and the prediction."""
    out = run_dir / "predictions"
    out.mkdir(exist_ok=True)
    for phase, by_set in evaluation.items():
        for name, scored in by_set.items():
            samples = eval_sets[name].samples
            with (out / f"{name}-{phase}.jsonl").open("w", encoding="utf-8") as fh:
                for sample, hyp in zip(samples, scored["texts"], strict=True):
                    row = {
                        "id": sample.get("key"),
                        "audio": sample.get("audio"),
                        "reference": sample["text"],
                        "prediction": hyp,
                    }
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def _metrics(
    config: RunConfig, result: TrainResult, evaluation: dict[str, Any], data: dict[str, Any], wall: float
) -> dict[str, Any]:

    scores = {phase: {n: s["metrics"] for n, s in by_set.items()} for phase, by_set in evaluation.items()}
    return {
        "model": config.model.name,
        "backend": config.backend.name,
        "evaluation": scores,
        "guard": guard_report(config, scores),
        "train": {
            "steps": result.steps,
            "samples": result.train_samples,
            "clips": result.train_clips or result.train_samples,
            "audio_seconds": result.train_audio_seconds,
            "seconds": result.train_seconds,
            "samples_per_second": round(result.samples_per_second, 3),
            "audio_seconds_per_second": (
                round(result.train_audio_seconds / result.train_seconds, 3) if result.train_seconds else 0.0
            ),
            **({"windows": result.train_samples, "packing": result.windows} if result.windows else {}),
            "final_loss": next((r["loss"] for r in reversed(result.log_history) if "loss" in r), None),
            "interrupted": result.interrupted,
        },
        "selection": result.selection or None,
        "eval_seconds": result.eval_seconds,
        "peak_memory_bytes": result.peak_memory_bytes,
        "data": data,
        "final_model_dir": str(result.final_model_dir) if result.final_model_dir else None,
        "wall_seconds": round(wall, 2),
        "pid": os.getpid(),
    }
