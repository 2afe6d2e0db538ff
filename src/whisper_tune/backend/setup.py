"""The in-process part of the backend contract: what a backend that trains in this Python environment
hands the core's phases (``TrainingSetup``), and the optional members it implements for that
(``InProcessTrainer``). Imports only the config schema and the console's type.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from whisper_tune.backend.protocol import RecipeNeeds, TrainJob
from whisper_tune.config.schema import RunConfig

if TYPE_CHECKING:
    from whisper_tune.console import Reporter


class WeightsFormat(Protocol):
    """How a model's trainable weights are written and read (``whisper_tune.training.weights`` has the
    two formats: the full model, or the LoRA adapter only)."""

    name: str

    def save(self, model: Any, directory: Path, state_dict: dict[str, Any] | None = None) -> None: ...

    def load(self, model: Any, directory: Path) -> None: ...


@dataclass(frozen=True)
class TrainingSetup:
    """What a backend hands the shared lifecycle."""

    #: built by ``whisper_tune.training.loop.build_accelerator`` (inside ``accelerate launch`` for several
    #: processes)
    accelerator: Any
    #: the model to evaluate and train, already on the accelerator's device (or placed by its
    #: quantisation device map); with ``job.train`` its trainable parameters are what trains
    model: Any
    #: how weights are written and read; default: adapter-only for a peft model, else the full model
    weights: WeightsFormat | None = None
    #: DataLoader worker processes
    num_workers: int = 0
    #: a diagnostics hook called with every training micro-batch
    on_batch: Callable[[dict[str, Any]], None] | None = None
    #: the model's processor (feature extractor + tokenizer), loaded once per job: the core fills it in
    processor: Any = None


@runtime_checkable
class InProcessTrainer(Protocol):
    """What a backend that trains through the core's phases provides (reference, cuda-lora, accelerate):
    the rest — accelerator, seeding, the loop, evaluation — is the core's, in one process or in each
    worker that ``accelerate launch`` starts (``whisper_tune.execution.worker``)."""

    #: the ``key=value`` overrides that make it train on this machine's CPU (its development mode;
    #: empty when it trains on the CPU as it is). The contract test runs every backend with them.
    cpu_overrides: ClassVar[tuple[str, ...]]

    def uses_cpu(self, config: RunConfig) -> bool:
        """Train on the CPU (gloo between processes) rather than CUDA devices."""
        ...

    def training_setup(self, job: TrainJob, accelerator: Any, reporter: Reporter) -> TrainingSetup:
        """Build the model on ``accelerator.device`` (full, LoRA, quantised) and say how it is saved."""
        ...

    def recipe_needs(self, config: RunConfig) -> RecipeNeeds:
        """Static padding, feature dtype and drop_last for the collator and the loop."""
        ...
