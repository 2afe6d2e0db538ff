"""What a backend is, and the plain data that crosses the boundary to it.

A backend is any class with the members of ``Backend`` (a Protocol: nothing to inherit). It is found
through the entry-point group ``whisper_tune.backends`` (see ``registry``). The core prepares the data,
hands the backend a ``TrainJob`` (paths and validated config, JSON-serialisable so it can cross a process
or Python-environment boundary), and gets a ``TrainResult`` back, from which the core computes every
metric itself, so WER/CER come from the same code on every backend. A ``Plan`` carries the run's
``Launch`` (how training starts; ``whisper_tune.backend.launch`` plans it, ``execution.launcher`` runs it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from whisper_tune.backend.launch import RUN_DIR as RUN_DIR
from whisper_tune.backend.launch import Launch as Launch
from whisper_tune.config.schema import RunConfig

if TYPE_CHECKING:
    from whisper_tune.console import Reporter

#: written in a planned launch's paths where the run directory goes; resolved when it exists


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
class BackendDefault:
    """A value a backend supplies for a core field that no layer of the config set (see ``Backend``)."""

    value: Any
    #: why this backend wants it, shown by ``config show`` and ``plan``
    reason: str


@dataclass(frozen=True)
class RecipeNeeds:
    """What the shared recipe must do for this backend."""

    #: pad labels to a multiple of this length (static shapes, e.g. IPU); None = pad to the longest.
    label_pad_multiple: int | None = None
    #: feed the log-mel features (computed per batch) in this dtype.
    feature_dtype: Literal["float32", "float16"] = "float32"
    #: drop the last incomplete batch (static batch size).
    drop_last: bool = False


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
        description="Prepared training data (whisper_tune.data.store format); None when only evaluating."
    )
    train_stream: dict[str, Any] | None = Field(
        None,
        description="data.streaming: the training split to read as training goes (data.sources.SplitSpec "
        "fields); train_data is then None.",
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
    #: rows trained on: clips, or windows with data.packing
    train_samples: int = 0
    #: clips inside those rows (= train_samples without packing) and their seconds of speech
    train_clips: int = 0
    train_audio_seconds: float = 0.0
    train_seconds: float = 0.0
    eval_seconds: dict[str, float] = Field(default_factory=dict)
    peak_memory_bytes: int | None = None
    final_model_dir: Path | None = None
    checkpoints: list[Path] = Field(default_factory=list)
    interrupted: bool = False
    #: evaluation during training (eval.steps): training.best_checkpoint.BestCheckpoint.summary();
    #: empty if off
    selection: dict[str, Any] = Field(default_factory=dict)
    #: data.streaming: what the training stream read, kept and dropped (data.streaming); empty if off
    stream: dict[str, Any] = Field(default_factory=dict)
    #: data.packing / timestamps / no-speech windows: data.windows.TrainWindows.report(); empty if off
    windows: dict[str, Any] = Field(default_factory=dict)
    #: eval.keep: the candidates, the choice and the halves (training.scale_back); empty if off
    keep: dict[str, Any] = Field(default_factory=dict)

    @property
    def samples_per_second(self) -> float:
        return self.train_samples / self.train_seconds if self.train_seconds > 0 else 0.0


@runtime_checkable
class Backend(Protocol):
    """The members every backend has. Instances are cheap to build; heavy imports happen in training.

    A backend trains in one of two ways, and the core dispatches (``whisper_tune.execution.dispatch``):

    * **in this Python environment** — it also has the members of ``backend.setup.InProcessTrainer``
      (``uses_cpu``, ``training_setup``, ``cpu_overrides``): the core builds the accelerator, runs the
      phases in this process, or runs the plan's ``accelerate launch`` whose workers do the same;
    * **in a runtime of its own** (the IPU worker under the Poplar SDK) — it has ``OwnRuntime.train``.

    Optional: ``defaults(options) -> dict[str, BackendDefault]``, values for core fields (dotted keys such
    as ``training.learning_rate``) that suit the backend's method, given its validated options. The
    config loader applies them only to fields that no layer set (preset, YAML, ``key=value``, flags), and
    ``config show`` / ``plan`` say where they came from (``whisper_tune.config_loading.backend_defaults``)."""

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


@runtime_checkable
class OwnRuntime(Protocol):
    """A backend that trains outside this Python environment (the IPU worker): it runs its planned
    launch itself and hands back the result."""

    def train(self, job: TrainJob, reporter: Reporter) -> TrainResult:
        """Evaluate before (if asked), train, evaluate after, save; return predictions and logs."""
        ...
