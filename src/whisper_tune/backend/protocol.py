"""What a backend is, and the plain data that crosses the boundary to it.

A backend is any class with the members of ``Backend`` (a Protocol: nothing to inherit). It is found
through the entry-point group ``whisper_tune.backends`` (see ``registry``). The core prepares the data,
hands the backend a ``TrainJob`` (paths and validated config, JSON-serialisable so it can cross a process
or Python-environment boundary), and gets a ``TrainResult`` back, from which the core computes every
metric itself, so WER/CER come from the same code on every backend. A ``Plan`` carries the run's
``Launch`` (how training starts; planned and run by ``whisper_tune.backend.launch``, which re-exports it).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from whisper_tune.config.schema import RunConfig

if TYPE_CHECKING:
    from whisper_tune.recipe.progress import Reporter

BACKEND_API = 1
#: written in a planned launch's paths where the run directory goes; resolved when it exists
RUN_DIR = "{run_dir}"


class Capabilities(BaseModel):
    """Hardware facts, passed into validation as data so a cluster config validates on a laptop."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cpu_count: int = 1
    cuda_devices: int = 0
    cuda_memory_gib: tuple[float, ...] = ()
    cuda_bf16: bool = False
    ipus: int = 0


@dataclass(frozen=True)
class Probe:
    """Result of a cheap availability check: never raises, imports nothing heavy."""

    available: bool
    reason: str = ""
    install_hint: str = ""
    capabilities: Capabilities = field(default_factory=Capabilities)
    #: when available: how it can run on this machine, e.g. "1 CUDA GPU (80 GiB)" or
    #: "CPU dev mode only (no CUDA GPU here; set backend.device=cpu)" ('whisper-tune backends' shows it)
    mode: str = ""


@dataclass(frozen=True)
class Issue:
    """One problem found by a backend's ``check``; ``loc`` is a dotted config path."""

    loc: str
    message: str
    level: Literal["error", "warning"] = "error"
    hint: str = ""
    #: True when the problem is missing or too-small hardware (exit code of HardwareError).
    hardware: bool = False
    #: True when the problem stops a run but not planning: ``whisper-tune plan`` still shows the plan.
    run_only: bool = False


@dataclass(frozen=True)
class Flag:
    """A command-line flag a backend adds to ``run``, ``eval``, ``prepare``, ``plan`` and ``config``
    (``whisper-tune run --help`` lists those of every installed backend). Its value sets ``key``, a
    dotted config path, with the precedence of first-class flags (above ``key=value`` overrides)."""

    #: the flag as typed, e.g. "--num-processes"
    name: str
    #: the config key it sets, e.g. "backend.num_processes"
    key: str
    help: str
    type: Literal["int", "float", "str"] = "int"
    #: the smallest value accepted (numbers only)
    min: float | None = None
    metavar: str | None = None


@dataclass(frozen=True)
class RecipeNeeds:
    """What the shared recipe must do for this backend."""

    #: pad labels to a multiple of this length (static shapes, e.g. IPU); None = pad to the longest.
    label_pad_multiple: int | None = None
    #: store / feed log-mel features in this dtype.
    feature_dtype: Literal["float32", "float16"] = "float32"
    #: drop the last incomplete batch (static batch size).
    drop_last: bool = False


@dataclass(frozen=True)
class Launch:
    """How training starts. Pure data (JSON-serialisable); paths may hold ``{run_dir}``."""

    mode: Literal["in-process", "command"] = "in-process"
    argv: tuple[str, ...] = ()
    #: variables set for the command on top of the inherited environment
    env: tuple[tuple[str, str], ...] = ()
    cwd: str | None = None
    #: files written before the command starts: (path, content)
    files: tuple[tuple[str, str], ...] = ()
    #: where the job file is written ("whisper-tune": the core's job document; "backend": the backend's)
    job_file: str | None = None
    job_format: Literal["whisper-tune", "backend"] = "whisper-tune"
    result_file: str | None = None
    #: the key holding the TrainResult in the result file (None: the file is the TrainResult)
    result_key: str | None = None
    #: "<format>/<version>" the result file must declare in its "format" and "version" keys
    result_format: str | None = None
    #: folder where workers write failure-rank<N>.json (and traceback-rank<N>.txt)
    failure_dir: str | None = None
    #: how the worker reports a known problem on its output: "<prefix>: error[<kind>]: <message>"
    error_prefix: str | None = None
    #: worker error kinds -> whisper-tune error class names (beyond the classes' own kinds)
    error_kinds: tuple[tuple[str, str], ...] = ()
    #: a hint added to every failure (how to set the stack up, say)
    failure_hint: str | None = None
    #: "console": the command's output goes to this process's stderr; "reporter": line by line to the log
    output: Literal["console", "reporter"] = "console"
    #: the launcher's own output, when the command's stdout goes to the console (relative to the run dir)
    launcher_log: str | None = None

    def resolved(self, run_dir: Path | str) -> Launch:
        """This launch with ``{run_dir}`` replaced by ``run_dir``."""

        def sub(value: str | None) -> Any:
            return None if value is None else value.replace(RUN_DIR, str(run_dir))

        return replace(
            self,
            argv=tuple(sub(a) for a in self.argv),
            env=tuple((k, sub(v)) for k, v in self.env),
            cwd=sub(self.cwd),
            files=tuple((sub(p), c) for p, c in self.files),
            job_file=sub(self.job_file),
            result_file=sub(self.result_file),
            failure_dir=sub(self.failure_dir),
            launcher_log=sub(self.launcher_log),
        )

    def command_line(self) -> str:
        """The command as one shell line, environment first (what ``whisper-tune plan`` prints)."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env)
        cd = f"cd {shlex.quote(self.cwd)} && " if self.cwd else ""
        return cd + (env + " " if env else "") + shlex.join(self.argv)

    def describe(self) -> list[str]:
        if self.mode == "in-process":
            return ["in this process (no command is started)"]
        lines = [self.command_line()]
        lines += [f"writes {path}" for path, _ in self.files]
        if self.job_file:
            lines.append(f"job file {self.job_file}")
        if self.result_file:
            lines.append(f"result file {self.result_file}")
        return lines


@dataclass(frozen=True)
class Plan:
    """What the backend will do: shown by ``whisper-tune plan`` and recorded in the run directory."""

    backend: str
    devices: str
    processes: int
    batch_per_device: int
    gradient_accumulation_steps: int
    placement: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    #: how training starts: in this process, or the exact command ``whisper-tune run`` executes
    launch: Launch = field(default_factory=Launch)

    @property
    def global_batch(self) -> int:
        return self.batch_per_device * self.processes * self.gradient_accumulation_steps


class TrainJob(BaseModel):
    """Everything a backend needs, as paths and validated config. Round-trips through JSON."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    config: RunConfig
    run_dir: Path
    model_dir: str = Field(description="Local Hugging Face model directory (or hub id) to start from.")
    train_data: Path | None = Field(
        description="Prepared training data (whisper_tune.recipe.prepared format); None when only evaluating."
    )
    eval_data: dict[str, Path] = Field(default_factory=dict, description="Prepared eval sets by name.")
    train: bool = Field(True, description="False for evaluation only ('whisper-tune eval').")
    evaluate_before: bool = True
    evaluate_after: bool = True
    resume_from: Path | None = Field(None, description="Checkpoint directory to resume from.")
    launch: Launch | None = Field(
        None, description="The plan's launch, resolved to this run directory (None: in this process)."
    )


class TrainResult(BaseModel):
    """What a backend hands back. Predictions are token ids; the core decodes and scores them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: phase ("before"/"after") -> eval set name -> generated token ids per sample, in dataset order.
    predictions: dict[str, dict[str, list[list[int]]]] = Field(default_factory=dict)
    #: phase -> eval set name -> language code Whisper detects per sample (multilingual models; optional).
    detected_languages: dict[str, dict[str, list[str]]] = Field(default_factory=dict)
    #: one record per logged step: {"step", "epoch", "loss", "learning_rate"}.
    log_history: list[dict[str, float]] = Field(default_factory=list)
    steps: int = 0
    train_samples: int = 0
    train_seconds: float = 0.0
    eval_seconds: dict[str, float] = Field(default_factory=dict)
    peak_memory_bytes: int | None = None
    final_model_dir: Path | None = None
    checkpoints: list[Path] = Field(default_factory=list)
    interrupted: bool = False
    #: evaluation during training (eval.steps): recipe.selection.BestCheckpoint.summary(); empty if off
    selection: dict[str, Any] = Field(default_factory=dict)

    @property
    def samples_per_second(self) -> float:
        return self.train_samples / self.train_seconds if self.train_seconds > 0 else 0.0


@runtime_checkable
class Backend(Protocol):
    """The members every backend has. Instances are cheap to build; heavy imports happen in ``train``."""

    name: ClassVar[str]
    description: ClassVar[str]
    Options: ClassVar[type[BaseModel]]
    #: the backend's own command-line flags (may be empty)
    flags: ClassVar[tuple[Flag, ...]]

    def probe(self) -> Probe:
        """Is this backend usable here, and what hardware does it see? Cheap; never raises."""
        ...

    def check(self, config: RunConfig, caps: Capabilities) -> list[Issue]:
        """Cross-field rules for this backend against a core-validated config and given hardware."""
        ...

    def recipe_needs(self, config: RunConfig) -> RecipeNeeds:
        """What the shared recipe must do for this backend (static padding, feature dtype, ...)."""
        ...

    def plan(self, config: RunConfig, caps: Capabilities) -> Plan:
        """Devices, batch per device and global, placement. Pure: no hardware is touched."""
        ...

    def train(self, job: TrainJob, reporter: Reporter) -> TrainResult:
        """Evaluate before (if asked), train, evaluate after, save; return predictions and logs."""
        ...
