"""Evaluation during training: keep the best weights by eval WER (or CER: ``eval.metric``), and stop
early when it stalls.

With ``eval.steps`` set, the training loop calls ``BestCheckpoint.after_step`` after each optimizer step.
Every ``eval.steps`` steps (and at the last step) it measures the normalised WER and CER on the first
``eval.subset_size`` eval samples; a new best by ``eval.metric`` is written to ``checkpoints/best/`` (the
backend's own weights format: full weights, or only the adapter for LoRA) with ``best.json``. At the end,
``restore_best`` loads those weights back when ``eval.keep_best`` is on, so the final model, the
evaluation after training and ``final/`` are the best checkpoint's, not the last step's.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from whisper_tune.config.schema import RunConfig
from whisper_tune.console import Reporter
from whisper_tune.data.collator import SpeechSeq2SeqCollator
from whisper_tune.data.sets import EVAL
from whisper_tune.data.store import PreparedDataset
from whisper_tune.disk import size_of, writing
from whisper_tune.errors import ConfigError
from whisper_tune.evaluation.evaluate import generate_predictions, score_predictions
from whisper_tune.training.checkpoints import list_checkpoints

BEST_DIR = "best"
BEST_FILE = "best.json"


@dataclass
class BestCheckpoint:
    r"""Tracks eval WER and CER during training; saves and restores the best weights by ``metric``.

    The training loop ``bind``\ s how weights are saved (a collective call in which the main process
    writes, in the backend's weights format) and loaded; ``evaluate`` is collective too (every process
    generates its share of the subset), so all processes take the same early-stopping decision."""

    #: normalised WER and CER of the subset, in percent: {"wer": ..., "cer": ...}
    evaluate: Callable[[], dict[str, float]]
    every: int
    directory: Path
    reporter: Reporter
    keep_best: bool = True
    patience: int | None = None
    #: "wer" or "cer" (eval.metric): what "best" and "did not improve" go by
    metric: str = "wer"
    #: whether this process writes files (False on non-main ranks of a data-parallel run)
    writes: bool = True
    history: list[dict[str, float]] = field(default_factory=list)
    best_score: float = math.inf
    best_step: int | None = None
    stale: int = 0
    stopped_early: bool = False
    save_weights: Callable[[Path], None] | None = None
    load_weights: Callable[[Path], None] | None = None
    #: about the bytes ``save_weights`` writes (for the message of a full disk)
    weights_size: Callable[[], int] | None = None

    def bind(
        self,
        save: Callable[[Path], None],
        load: Callable[[Path], None],
        size: Callable[[], int] | None = None,
    ) -> None:
        self.save_weights, self.load_weights, self.weights_size = save, load, size

    def after_step(self, step: int, total: int) -> bool:
        """Evaluate when due; returns True when training should stop early."""
        if step % self.every and step != total:
            return False
        scores = self.evaluate()
        self.history.append({"step": step, **{f"eval_{k}": round(v, 3) for k, v in scores.items()}})
        score, name = scores[self.metric], self.metric.upper()
        if score < self.best_score:
            self.best_score, self.best_step, self.stale = score, step, 0
            self._save(step, score)
            self.reporter.info(f"step {step}: eval {name} {score:.2f}% (best so far)")
        else:
            self.stale += 1
            self.reporter.info(
                f"step {step}: eval {name} {score:.2f}% "
                f"(best {self.best_score:.2f}% at step {self.best_step})"
            )
        if self.patience is not None and self.stale >= self.patience and step < total:
            self.stopped_early = True
            self.reporter.info(f"early stopping: {self.stale} evaluations without improvement")
            return True
        return False

    def _save(self, step: int, score: float) -> None:
        """Write the best weights aside and rename them into place; a full disk stops the run with one
        error (``disk.writing``) and the previous best, if any, stays."""
        assert self.save_weights is not None, "bind() the tracker to the training loop first"
        tmp = self.directory.with_name(f".{self.directory.name}.partial")
        previous = self.directory if (self.directory / BEST_FILE).is_file() else None
        with writing(
            f"the best checkpoint (step {step})",
            self.directory,
            needs=lambda: size_of(previous) or (self.weights_size() if self.weights_size else None),
            kept=lambda: self._kept(previous),
            hint=self._hint,
            partial=tmp if self.writes else None,
        ):
            if self.writes:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
            self.save_weights(tmp / "weights")  # collective; the main process writes
            if self.writes:
                best = {"step": step, f"eval_{self.metric}": score}
                (tmp / BEST_FILE).write_text(json.dumps(best) + "\n", encoding="utf-8")
                shutil.rmtree(self.directory, ignore_errors=True)
                tmp.rename(self.directory)

    def _hint(self) -> str:
        if not list_checkpoints(self.directory.parent):
            return "free space there (or set output.dir to a larger disk) and run again"
        return (
            "free space there (or set output.dir to a larger disk), then resume: the same command with "
            f"training.resume_from=latest output.run_name={self.directory.parent.parent.name}"
        )

    def _kept(self, previous: Path | None) -> str:
        found = list_checkpoints(self.directory.parent)
        parts = [f"{previous} (the best so far) is intact"] if previous is not None else []
        parts += [f"{found[-1]} is intact"] if found else ["no checkpoint to resume from was written yet"]
        return "; ".join(parts)

    def restore_best(self, last_step: int) -> None:
        """Load the best weights back (when keep_best and the best is not the current weights)."""
        if not self.keep_best or self.best_step is None or self.best_step == last_step:
            return
        assert self.load_weights is not None, "bind() the tracker to the training loop first"
        self.load_weights(self.directory / "weights")
        self.reporter.info(
            f"keeping the best checkpoint: step {self.best_step}, eval {self.metric.upper()} "
            f"{self.best_score:.2f}%"
        )

    def summary(self) -> dict[str, Any]:
        return {
            "best_step": self.best_step,
            "metric": self.metric,
            f"best_eval_{self.metric}": None if self.best_step is None else round(self.best_score, 3),
            "evaluations": len(self.history),
            "stopped_early": self.stopped_early,
            "kept": "best" if self.keep_best else "last",
        }


def subset_evaluator(
    model: Any,
    dataset: Any,
    collator: SpeechSeq2SeqCollator,
    config: RunConfig,
    tokenizer: Any,
    *,
    accelerator: Any = None,
    reporter: Reporter | None = None,
) -> Callable[[], dict[str, float]]:
    """A callable measuring normalised WER and CER on the first ``eval.subset_size`` samples of
    ``dataset`` (generated over every process of ``accelerator``, scored on each)."""

    size = min(len(dataset), config.eval.subset_size or len(dataset))
    subset = [dataset[i] for i in range(size)]
    references = list(getattr(dataset, "texts", []))[:size]

    def evaluate() -> dict[str, float]:
        ids = generate_predictions(
            model,
            subset,
            collator,
            model_cfg=config.model,
            eval_cfg=config.eval,
            accelerator=accelerator,
            reporter=reporter,
            name="eval (during training)",
        )
        scored = score_predictions(tokenizer, ids, references, model_cfg=config.model, eval_cfg=config.eval)
        return {key: float(scored["metrics"][f"normalized_{key}"]) for key in ("wer", "cer")}

    return evaluate


def best_checkpoint_tracker(
    config: RunConfig,
    *,
    tokenizer: Any,
    eval_data: dict[str, Path],
    checkpoint_dir: Path,
    resuming: bool,
    model: Any,
    collator: SpeechSeq2SeqCollator,
    reporter: Reporter,
    accelerator: Any = None,
) -> BestCheckpoint | None:
    """The tracker ``eval.steps`` asks for, evaluating on the run's eval set (None when it is off).
    A resumed run picks up the best so far from ``checkpoints/best/best.json``."""

    if config.eval.steps is None:
        return None
    if EVAL not in eval_data:
        raise ConfigError(
            "eval.steps needs an eval set to evaluate on during training",
            hint="set data.eval_split or data.test_size, or unset eval.steps",
        )
    evaluate = subset_evaluator(
        model,
        PreparedDataset(eval_data[EVAL]),
        collator,
        config,
        tokenizer,
        accelerator=accelerator,
        reporter=reporter,
    )
    tracker = BestCheckpoint(
        evaluate=evaluate,
        every=config.eval.steps,
        directory=checkpoint_dir / BEST_DIR,
        reporter=reporter,
        keep_best=config.eval.keep_best,
        patience=config.eval.early_stopping_patience,
        metric=config.eval.metric,
        writes=accelerator is None or bool(accelerator.is_main_process),
    )
    best_file = tracker.directory / BEST_FILE
    if resuming and best_file.is_file():
        saved = json.loads(best_file.read_text(encoding="utf-8"))
        if f"eval_{tracker.metric}" in saved:  # the best by another metric is no yardstick
            tracker.best_step, tracker.best_score = int(saved["step"]), float(saved[f"eval_{tracker.metric}"])
    return tracker
