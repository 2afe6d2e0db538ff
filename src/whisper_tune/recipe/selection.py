"""Evaluation during training: keep the best weights by eval WER, and stop early when WER stalls.

With ``eval.steps`` set, the training loop calls ``BestCheckpoint.after_step`` after each optimizer step.
Every ``eval.steps`` steps (and at the last step) it measures the normalised WER on the first
``eval.subset_size`` eval samples; a new best is written to ``checkpoints/best/`` (the backend's own
weights format: full weights, or only the adapter for LoRA) with ``best.json``. At the end,
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

from whisper_tune.backend.protocol import TrainJob
from whisper_tune.config.schema import RunConfig
from whisper_tune.errors import ConfigError
from whisper_tune.recipe.collator import SpeechSeq2SeqCollator
from whisper_tune.recipe.progress import Reporter

BEST_DIR = "best"
BEST_FILE = "best.json"


@dataclass
class BestCheckpoint:
    """Tracks eval WER during training; saves and restores the best weights."""

    evaluate: Callable[[], float]
    every: int
    directory: Path
    save_weights: Callable[[Any, Path], None]
    load_weights: Callable[[Any, Path], None]
    reporter: Reporter
    keep_best: bool = True
    patience: int | None = None
    #: whether this process writes files (False on non-main ranks of a data-parallel run)
    writes: bool = True
    history: list[dict[str, float]] = field(default_factory=list)
    best_wer: float = math.inf
    best_step: int | None = None
    stale: int = 0
    stopped_early: bool = False

    def after_step(self, model: Any, step: int, total: int) -> bool:
        """Evaluate when due; returns True when training should stop early."""
        if step % self.every and step != total:
            return False
        wer = self.evaluate()
        self.history.append({"step": step, "eval_wer": round(wer, 3)})
        if wer < self.best_wer:
            self.best_wer, self.best_step, self.stale = wer, step, 0
            if self.writes:
                self._save(model, step, wer)
            self.reporter.info(f"step {step}: eval WER {wer:.2f}% (best so far)")
        else:
            self.stale += 1
            self.reporter.info(
                f"step {step}: eval WER {wer:.2f}% (best {self.best_wer:.2f}% at step {self.best_step})"
            )
        if self.patience is not None and self.stale >= self.patience and step < total:
            self.stopped_early = True
            self.reporter.info(f"early stopping: {self.stale} evaluations without improvement")
            return True
        return False

    def _save(self, model: Any, step: int, wer: float) -> None:
        tmp = self.directory.with_name(f".{self.directory.name}.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        self.save_weights(model, tmp / "weights")
        (tmp / BEST_FILE).write_text(json.dumps({"step": step, "eval_wer": wer}) + "\n", encoding="utf-8")
        shutil.rmtree(self.directory, ignore_errors=True)
        tmp.rename(self.directory)

    def restore_best(self, model: Any, last_step: int) -> None:
        """Load the best weights back (when keep_best and the best is not the current weights)."""
        if not self.keep_best or self.best_step is None or self.best_step == last_step:
            return
        self.load_weights(model, self.directory / "weights")
        self.reporter.info(
            f"keeping the best checkpoint: step {self.best_step}, eval WER {self.best_wer:.2f}%"
        )

    def summary(self) -> dict[str, Any]:
        return {
            "best_step": self.best_step,
            "best_eval_wer": None if self.best_step is None else round(self.best_wer, 3),
            "evaluations": len(self.history),
            "stopped_early": self.stopped_early,
            "kept": "best" if self.keep_best else "last",
        }


def subset_wer_evaluator(
    model: Any,
    dataset: Any,
    collator: SpeechSeq2SeqCollator,
    config: RunConfig,
    tokenizer: Any,
    *,
    device: Any = "cpu",
    autocast: Callable[[], Any] | None = None,
    reporter: Reporter | None = None,
) -> Callable[[], float]:
    """A callable measuring normalised WER on the first ``eval.subset_size`` samples of ``dataset``."""
    from whisper_tune.recipe.evaluation import generate_predictions, score_predictions

    size = min(len(dataset), config.eval.subset_size or len(dataset))
    subset = [dataset[i] for i in range(size)]
    references = list(getattr(dataset, "texts", []))[:size]

    def evaluate() -> float:
        ids = generate_predictions(
            model,
            subset,
            collator,
            model_cfg=config.model,
            eval_cfg=config.eval,
            device=device,
            autocast=autocast() if autocast is not None else None,
            reporter=reporter,
            name="eval (during training)",
        )
        scored = score_predictions(tokenizer, ids, references, model_cfg=config.model, eval_cfg=config.eval)
        return float(scored["metrics"]["normalized_wer"])

    return evaluate


def best_checkpoint_for_job(
    job: TrainJob,
    model: Any,
    collator: SpeechSeq2SeqCollator,
    reporter: Reporter,
    *,
    device: Any = "cpu",
    autocast: Callable[[], Any] | None = None,
    save_weights: Callable[[Any, Path], None] | None = None,
    load_weights: Callable[[Any, Path], None] | None = None,
    writes: bool = True,
) -> BestCheckpoint | None:
    """The tracker ``eval.steps`` asks for, evaluating on the job's eval set (None when it is off).
    A resumed run picks up the best so far from ``checkpoints/best/best.json``."""
    from whisper_tune.recipe.loop import default_load_weights, default_save_weights
    from whisper_tune.recipe.model import load_processor
    from whisper_tune.recipe.prepared import PreparedDataset
    from whisper_tune.recipe.sets import EVAL

    config = job.config
    if config.eval.steps is None or not job.train:
        return None
    if EVAL not in job.eval_data:
        raise ConfigError(
            "eval.steps needs an eval set to evaluate on during training",
            hint="set data.eval_split or data.test_size, or unset eval.steps",
        )
    tokenizer = load_processor(job.model_dir, config.model).tokenizer
    evaluate = subset_wer_evaluator(
        model,
        PreparedDataset(job.eval_data[EVAL]),
        collator,
        config,
        tokenizer,
        device=device,
        autocast=autocast,
        reporter=reporter,
    )
    tracker = BestCheckpoint(
        evaluate=evaluate,
        every=config.eval.steps,
        directory=job.run_dir / "checkpoints" / BEST_DIR,
        save_weights=save_weights or default_save_weights,
        load_weights=load_weights or default_load_weights,
        reporter=reporter,
        keep_best=config.eval.keep_best,
        patience=config.eval.early_stopping_patience,
        writes=writes,
    )
    best_file = tracker.directory / BEST_FILE
    if job.resume_from is not None and best_file.is_file():
        saved = json.loads(best_file.read_text(encoding="utf-8"))
        tracker.best_step, tracker.best_wer = int(saved["step"]), float(saved["eval_wer"])
    return tracker
