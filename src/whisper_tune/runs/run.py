"""The run: ``Run(config)()`` is what ``whisper-tune run`` does (``training=False``: ``whisper-tune eval``),
its phases methods in the order they run — open, prepare, train, evaluate, report, close. ``prepare`` is
``whisper-tune prepare`` and ``plan`` is ``whisper-tune plan``; both open the way a run does
(``runs/opening.py``); ``check`` is ``whisper-tune config validate``: a run's checks, without the model.
The backend only trains and generates; data preparation and scoring happen here, the same for every
backend.
"""

from __future__ import annotations

import functools
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from whisper_tune.backend.protocol import Capabilities, Issue, Plan, TrainJob, TrainResult
from whisper_tune.backend.registry import Registry
from whisper_tune.config.schema import RunConfig, UncheckedOptions
from whisper_tune.config_loading import dump_yaml
from whisper_tune.console import Reporter
from whisper_tune.data.auto_packing import PackingDecision, decide, resolve
from whisper_tune.data.preflight import require_usable_data
from whisper_tune.disk import RUN_DIR_HINT, write_json, write_text
from whisper_tune.errors import ConfigError, DataError, InterruptedRun, ModelError
from whisper_tune.evaluation.guards import language_share, normalizer_override, with_regression_set
from whisper_tune.execution import dispatch
from whisper_tune.execution.external import (
    check_outside,
    follow,
    join,
    outside_launch,
    outside_plan,
    publish_job,
    share_run_dir,
)
from whisper_tune.models.ct2_import import is_ct2_directory
from whisper_tune.models.loading import is_multilingual, require_reachable, require_whisper, save_processor
from whisper_tune.runs.card import write_run_card
from whisper_tune.runs.directory import (
    CONFIG_FILE,
    METRICS_FILE,
    make_run_dir,
    resolve_resume,
    resumed_step,
    run_dir_path,
)
from whisper_tune.runs.opening import (
    epoch_steps,
    learning_rate_issues,
    load_model_processor,
    prepare_sets,
    raise_issues,
    select_backend,
    train_stream_spec,
    warmup_issues,
)
from whisper_tune.runs.push import push
from whisper_tune.runs.report import (
    fail_on_guard_warnings,
    metrics_document,
    wer_lines,
    write_plot,
    write_predictions,
)
from whisper_tune.runs.trackers import evaluation_scalars, open_trackers
from whisper_tune.training.scale_back import keep_lines


@dataclass
class RunSummary:
    run_dir: Path
    metrics: dict[str, Any]
    lines: list[str] = field(default_factory=list)
    #: False on the ranks other than 0 of an outside launch (torchrun): rank 0 reports the run
    reports: bool = True


class Run:
    """One fine-tuning run (``training=False``: one evaluation) of ``config``; calling it runs the phases."""

    def __init__(
        self,
        config: RunConfig,
        *,
        training: bool = True,
        registry: Registry | None = None,
        reporter: Reporter | None = None,
    ) -> None:
        self.config, self.training, self.registry = config, training, registry
        self.reporter = reporter or Reporter()
        self.started = time.perf_counter()
        self.run_dir: Path | None = None
        self.created = False  # this run made its directory (an unusable model or data set removes it)
        #: this process's rank when torchrun / accelerate launch started it (None: started on its own)
        self.outside = outside_launch()
        self.accelerator: Any = None  # that rank's, joined when the run opens
        self.launch_id = ""
        self.final: Path | None = None  # the trained model's folder, once written
        #: data.packing.enabled unset: what the run decided for its training set, and why
        self.packing: PackingDecision | None = None

    def __call__(self, *, echo_summary: bool = True) -> RunSummary:
        """Every phase; the WER lines go to run.log and, with ``echo_summary``, to the console."""
        discard = False
        if self.outside is not None and not self.outside.main:
            return RunSummary(follow(self.config, self.registry, self.outside), {}, reports=False)
        try:
            self.open()
            job = self.prepare()
            result = self.train(job)
            evaluation = self.evaluate(result)
            summary = self.report(result, evaluation, echo_summary)
            self.share(summary, result)
            return summary
        except KeyboardInterrupt:
            raise InterruptedRun(f"interrupted; what was written so far is in {self.run_dir}") from None
        except (ConfigError, DataError, ModelError):
            # nothing was trained, so a directory this run made holds nothing worth keeping
            discard = self.created and not self._holds_results()
            raise
        finally:
            self.close(discard)

    def open(self) -> None:
        """The backend after its checks; every data set and the model name checked before anything is
        loaded; then the run directory with its log, config.yaml, trackers and plan.json."""
        config = self.config
        self.backend, self.caps = select_backend(config, self.registry)
        if self.outside is not None:
            check_outside(self.backend, config, self.outside)
        require_usable_data(config.data, include_train=self.training)
        require_reachable(config.model.name)
        self.stream = train_stream_spec(config) if self.training else None
        self.created = (
            not run_dir_path(config, train=self.training).exists() if config.output.run_name else True
        )
        if self.outside is not None:
            self.accelerator = join(self.backend, config)
        self.run_dir = run_dir = make_run_dir(config, train=self.training)
        if self.accelerator is not None:
            _, self.launch_id = share_run_dir(self.accelerator, run_dir)
        self.reporter.log_to(run_dir / "run.log")
        if self.training:
            raise_issues(warmup_issues(config, config.training.max_steps) + learning_rate_issues(config))
        write_text(run_dir / CONFIG_FILE, dump_yaml(config), hint=RUN_DIR_HINT)
        self.reporter.attach_trackers(
            open_trackers(config.training.report_to, run_dir, config.to_yaml_dict())
        )
        self.plan = plan = self.backend.plan(config, self.caps)
        if self.outside is not None:
            self.plan = plan = outside_plan(plan, self.backend, config, self.outside)
        plan_document = {**asdict(plan), "global_batch": plan.global_batch}
        write_json(run_dir / "plan.json", plan_document, hint=RUN_DIR_HINT)
        self.reporter.info(f"run directory: {run_dir}")
        self.reporter.info(
            f"backend {self.backend.name}: {plan.devices}; batch {plan.batch_per_device} per device, "
            f"global {plan.global_batch}"
        )

    def prepare(self) -> TrainJob:
        """The checkpoint to resume from, the model's processor (loaded once, for the whole run), the
        prepared sets (with the guard-rail regression set), and the job file for the backend."""
        config, run_dir, training = self.config, self._dir(), self.training
        resume = resolve_resume(config, run_dir)
        self.resumed_at = resumed_step(resume)
        source, self.processor = load_model_processor(config, self.reporter)
        self.multilingual = is_multilingual(len(self.processor.tokenizer))
        data = with_regression_set(config, self.multilingual) if training else config.data
        include_train = training and self.stream is None
        self.sets = sets = prepare_sets(
            config, run_dir / "prepared", self.processor, self.backend, self.reporter, include_train, data
        )
        if training:
            self.packing = decide(config, sets.train)
            if self.packing is not None:
                self.config = config = resolve(config, self.packing)
                self.reporter.info(self.packing.reason)
        if training and sets.train is not None and config.training.max_steps is None:
            steps = epoch_steps(config, self.backend, self.plan, sets.train, self.processor.tokenizer)
            raise_issues(warmup_issues(config, steps))
        launch = self.plan.launch
        job = TrainJob(
            config=config,
            run_dir=run_dir,
            model_dir=source,
            train_data=sets.train,
            train_stream=self.stream,
            eval_data=sets.evals,
            train=training,
            evaluate_before=config.eval.before or not training,
            evaluate_after=config.eval.after and training,
            resume_from=resume,
            launch=launch.resolved(run_dir) if launch.mode == "command" else None,
        )
        write_text(run_dir / "job.json", job.model_dump_json(indent=2), kept=self._kept, hint=RUN_DIR_HINT)
        if self.accelerator is not None:
            publish_job(job, self.launch_id)  # the other ranks have waited for it
        return job

    def train(self, job: TrainJob) -> TrainResult:
        """The backend trains (here, in the workers of its planned launch, or in its own runtime) and
        evaluates before and after; the loss records it could not send live reach the trackers now."""
        result = dispatch.train(self.backend, job, self.reporter, self.processor, self.accelerator)
        for record in result.log_history:
            if record["step"] > self.resumed_at:  # earlier ones were sent by the run that checkpointed
                self.reporter.track(record)
        final = result.final_model_dir
        if final is not None and not (final / "tokenizer_config.json").exists():
            save_processor(self.processor, final)  # a backend that did not write them (the IPU worker)
        return result

    def evaluate(self, result: TrainResult) -> dict[str, dict[str, Any]]:
        """The backend's token ids decoded and scored per phase and set (WER/CER raw and normalised), with
        the share of the expected language where the backend detected it. After a selection
        (``eval.keep: auto``) the scores are on each set's report half, the clips selection never saw."""
        # lazy: keeps numpy out of this module's import
        from whisper_tune.data.store import PreparedDataset

        self.eval_sets = {name: PreparedDataset(path) for name, path in self.sets.evals.items()}
        report = {name: h["report"] for name, h in result.keep.get("halves", {}).items()}
        evaluation = {
            phase: {name: self._score(name, ids, report.get(name)) for name, ids in by_set.items()}
            for phase, by_set in result.predictions.items()
        }
        for phase, by_set in result.detected_languages.items():
            for name, detected in by_set.items():
                if name in evaluation.get(phase, {}):
                    share = self._language_share(name, detected, report.get(name))
                    evaluation[phase][name]["metrics"]["language_share"] = share
        return evaluation

    def _score(self, name: str, ids: list[list[int]], half: list[int] | None) -> dict[str, Any]:
        """Every clip's text; the metrics of ``half`` (indices) when given, else of the whole set."""
        # lazy: keeps numpy out of this module's import
        from whisper_tune.evaluation.evaluate import score_predictions

        config, references = self.config, self.eval_sets[name].texts
        normalizer = normalizer_override(config, name, self.multilingual)
        score = functools.partial(
            score_predictions, self.processor.tokenizer, model_cfg=config.model, eval_cfg=config.eval,
            normalizer=normalizer,
        )  # fmt: skip
        scored = score(ids, references)
        if half is not None:
            scored["metrics"] = score([ids[i] for i in half], [references[i] for i in half])["metrics"]
        scored["metrics"]["half"] = "report" if half is not None else "all"
        return scored

    def _language_share(self, name: str, detected: list[str], half: list[int] | None) -> float | None:
        # lazy: keeps numpy out of this module's import
        from whisper_tune.evaluation.evaluate import row_languages_of

        expected = row_languages_of(self.eval_sets[name], self.config.model.language)
        expected = expected or [self.config.model.language] * len(detected)
        if half is not None:
            detected, expected = [detected[i] for i in half], [expected[i] for i in half]
        return language_share(detected, expected)

    def report(self, result: TrainResult, evaluation: dict[str, Any], echo_summary: bool) -> RunSummary:
        """predictions/, metrics.json, plot.png, the trackers' scalars, the WER lines and the guard rails'
        warnings (an error with ``eval.fail_on_regression``, once everything is written)."""
        config, run_dir, reporter = self.config, self._dir(), self.reporter
        self.final = result.final_model_dir
        kept = self._kept
        halves = result.keep.get("halves", {})
        write_predictions(run_dir, evaluation, self.eval_sets, halves, kept, self._report_hint)
        data = {**({"train": result.stream} if result.stream else {}), **self.sets.report()}
        if self.packing is not None:
            data["packing"] = self.packing.report()
        metrics = metrics_document(config, result, evaluation, data, time.perf_counter() - self.started)
        write_json(run_dir / METRICS_FILE, metrics, kept=kept, hint=self._report_hint)
        if result.final_model_dir is not None and result.final_model_dir.is_dir():
            english_only = not self.multilingual
            write_run_card(
                result.final_model_dir, config, metrics, run_dir.name, english_only, kept, self._report_hint
            )
        if config.output.plot:
            title = f"{config.model.name} · {self.backend.name}" + (
                "" if self.training else " · evaluation only"
            )
            history, scores = result.log_history, metrics["evaluation"]
            write_plot(run_dir / "plot.png", history, scores, title, result.keep, kept, self._report_hint)
        for tracker in reporter.trackers:
            tracker.log(evaluation_scalars(metrics["evaluation"]), step=result.steps)
        lines = keep_lines(result.keep) + wer_lines(metrics["evaluation"], trained=self.training)
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

    def share(self, summary: RunSummary, result: TrainResult) -> None:
        """With ``output.push_to``: final/ and its card uploaded to that Hub repo (``whisper-tune push``)."""
        output = self.config.output
        if output.push_to is None or result.final_model_dir is None:
            return
        pushed = push(summary.run_dir, output.push_to, private=output.push_private, reporter=self.reporter)
        for line in pushed.lines:
            self.reporter.log_only(line)
        summary.lines.extend(pushed.lines)

    def close(self, discard: bool = False) -> None:
        """Trackers finished, the log closed; with ``discard``, the directory this run made removed."""
        for tracker in self.reporter.trackers:
            tracker.finish()
        self.reporter.attach_trackers([])
        self.reporter.close()
        if discard and self.run_dir is not None:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def _dir(self) -> Path:
        assert self.run_dir is not None, "open() first"
        return self.run_dir

    def _kept(self) -> str | None:
        """What a full disk left of the run: its trained model, newest checkpoint, prepared sets and
        metrics.json, those that exist."""
        # lazy: keeps numpy out of this module's import
        from whisper_tune.training.checkpoints import list_checkpoints

        run_dir = self._dir()
        found = []
        if self.final is not None and self.final.is_dir():
            found.append(f"the trained model {self.final}")
        checkpoints = list_checkpoints(run_dir / "checkpoints")
        if checkpoints:
            found.append(f"the checkpoint {checkpoints[-1].name}")
        for name in ("prepared", METRICS_FILE):
            if (run_dir / name).exists():
                found.append(f"{name}/" if (run_dir / name).is_dir() else name)
        return f"kept in {run_dir}: {', '.join(found)}" if found else None

    def _report_hint(self) -> str:
        if self.final is not None and self.final.is_dir():
            return (
                f"free space there; the trained model in {self.final} is complete (whisper-tune export and "
                "transcribe take it as it is)"
            )
        return RUN_DIR_HINT

    def _holds_results(self) -> bool:
        found = ("checkpoints", "final", METRICS_FILE)
        return self.run_dir is not None and any((self.run_dir / name).exists() for name in found)


def run(
    config: RunConfig,
    *,
    registry: Registry | None = None,
    reporter: Reporter | None = None,
    train: bool = True,
    echo_summary: bool = True,
) -> RunSummary:
    """Fine-tune (or with ``train=False`` only evaluate) as configured; returns the summary. The CLI
    prints the WER lines itself (to stdout), so it passes ``echo_summary=False``."""
    return Run(config, training=train, registry=registry, reporter=reporter)(echo_summary=echo_summary)


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
    _, processor = load_model_processor(config, reporter)
    return prepare_sets(config, out_dir, processor, backend, reporter, include_train)


def check(config: RunConfig, registry: Registry | None = None, *, train: bool = True) -> list[Issue]:
    """``whisper-tune config validate``: what ``run`` checks before it loads the model, so that a config
    that passes starts. The backend's checks as ``plan`` makes them (a config for other hardware validates
    here: what only this machine's hardware or software refuses is returned, not raised), every data set
    (its splits and columns), the model (its name; a local directory's files, not loaded) and the
    streaming settings. Raises the error ``run`` would; returns the warnings and this machine's issues."""
    notes: list[Issue] = []
    if not isinstance(config.backend.options, UncheckedOptions):  # else its backend is not installed here
        backend = (registry or Registry()).get(config.backend.name)
        probe = backend.probe()
        if not probe.available:
            notes.append(Issue("backend.name", f"the backend cannot run here: {probe.reason}", run_only=True))
        issues = backend.check(config, probe.capabilities)
        here = [i for i in issues if i.hardware or i.run_only or i.level == "warning"]
        raise_issues([i for i in issues if i not in here])
        notes += here
    require_usable_data(config.data, include_train=train)
    require_reachable(config.model.name)
    model = Path(config.model.name).expanduser()
    if model.is_dir() and not is_ct2_directory(model):
        require_whisper(str(model), config.model.name)  # reads its JSON files and weights headers only
    if train:
        train_stream_spec(config)
        notes += warmup_issues(config, config.training.max_steps)
    return notes


def plan(config: RunConfig, registry: Registry | None = None, caps: Capabilities | None = None) -> Plan:
    """``whisper-tune plan``: the backend's plan after the checks that need no hardware (so a cluster's
    plan shows on a laptop)."""
    backend = (registry or Registry()).get(config.backend.name)
    caps = caps or backend.probe().capabilities
    issues = [i for i in backend.check(config, caps) if not (i.hardware or i.run_only)]
    raise_issues(issues + learning_rate_issues(config))
    return backend.plan(config, caps)
