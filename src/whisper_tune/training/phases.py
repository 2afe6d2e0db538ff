"""A run's phases, named once for every backend that trains in this Python environment:

1. **evaluate before** — generation-based predictions on every eval set (sharded over the processes);
2. **fit** — the training loop (``training/loop.py``), with evaluation during training when asked;
3. **save** — the final weights in the backend's format (full model, or the adapter only);
4. **evaluate after** — the same sets with the trained (or best) weights;
5. **result** — a ``TrainResult`` (predictions as token ids; the core scores them).

A backend supplies only what differs, as a ``TrainingSetup``: the accelerator (device, processes, mixed
precision), the model it built (full, LoRA, quantised) and how its weights are saved and loaded; its
``recipe_needs`` (``RecipeNeeds``: labels padded to a multiple of a fixed length, the feature dtype fed to
the model, dropping the last incomplete batch) shape the collator and the training loop here. The IPU
worker runs under its own pinned stack and stays apart (it applies the same needs itself).
"""

from __future__ import annotations

import dataclasses
import resource
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from whisper_tune.backend.protocol import RecipeNeeds, TrainJob, TrainResult
from whisper_tune.backend.setup import InProcessTrainer, TrainingSetup
from whisper_tune.config.schema import RunConfig
from whisper_tune.console import Reporter
from whisper_tune.disk import writing
from whisper_tune.evaluation.selection import PRIMARY, Half
from whisper_tune.models.loading import load_processor, processor_bytes, save_processor
from whisper_tune.training.scale_back import scale_back, trained_weights
from whisper_tune.training.weights import weights_bytes, weights_format_of


@dataclass(frozen=True)
class Outcome:
    result: TrainResult
    #: the model after the run (as the accelerator wrapped it when it trained)
    model: Any


def run_phases(job: TrainJob, setup: TrainingSetup, reporter: Reporter, needs: RecipeNeeds) -> Outcome:
    """Evaluate before -> fit -> save -> evaluate after -> result. On several processes every one of
    them calls this; the main process writes files, and every process returns the same result.
    ``needs`` is the backend's ``recipe_needs(job.config)``: the collator pads labels to a multiple of
    ``label_pad_multiple`` and feeds features as ``feature_dtype`` (training and evaluation); the
    training loop drops the last incomplete batch with ``drop_last``."""
    # lazy: keeps numpy out of this module's import
    from whisper_tune.data.collator import SpeechSeq2SeqCollator
    from whisper_tune.data.store import PreparedDataset
    from whisper_tune.evaluation.evaluate import PhaseOutput, evaluate_sets, result_fields

    acc, cfg = setup.accelerator, job.config
    setup = with_processor(setup, job)
    model = setup.model
    collator = SpeechSeq2SeqCollator(
        acc.unwrap_model(model).config.decoder_start_token_id,
        label_pad_multiple=needs.label_pad_multiple,
        feature_dtype=needs.feature_dtype,
    )
    eval_sets = {name: PreparedDataset(path) for name, path in job.eval_data.items()}
    phases: dict[str, PhaseOutput] = {}

    def evaluate(phase: str, sets: Mapping[str, Any] = eval_sets) -> None:
        phases[phase] = evaluate_sets(
            model,
            sets,
            collator,
            model_cfg=cfg.model,
            eval_cfg=cfg.eval,
            phase=phase,
            accelerator=acc,
            reporter=reporter,
        )

    if job.evaluate_before and eval_sets:
        evaluate("before")
    result, fitted = TrainResult(), job.train and (job.train_data is not None or job.train_stream is not None)
    keeps = fitted and cfg.eval.keep != "off" and PRIMARY in eval_sets
    base = trained_weights(acc.unwrap_model(model)) if keeps and not hasattr(model, "peft_config") else None
    if fitted:
        model, result = fit(job, setup, collator, reporter, drop_last=needs.drop_last)
    finished = fitted and not result.interrupted
    kept = None
    if keeps and finished:
        before = phases["before"].predictions if "before" in phases else {}
        kept = scale_back(job, setup, model, collator, eval_sets, before, base, reporter)
        result = result.model_copy(update={"keep": kept.report})
    final_dir = (
        save_final(job, setup, model, result.steps) if finished and cfg.output.save_final_model else None
    )
    if job.evaluate_after and eval_sets and finished and kept is not None and kept.choose_ids:
        # the choose halves were decoded with the chosen model while choosing: only the rest now
        halves = {name: Half(ds, kept.report["halves"][name]["report"]) for name, ds in eval_sets.items()}
        evaluate("after", halves)
        phases["after"] = kept.after(phases["after"], {name: len(ds) for name, ds in eval_sets.items()})
    elif job.evaluate_after and eval_sets and finished:
        evaluate("after")
    update = {
        **result_fields(phases),
        "peak_memory_bytes": peak_memory_bytes(acc),
        "final_model_dir": final_dir if acc.is_main_process else None,
    }
    return Outcome(result.model_copy(update=update), model)


def with_processor(setup: TrainingSetup, job: TrainJob) -> TrainingSetup:
    """``setup`` holding the job's processor: the one the run loaded, else loaded here (once per job)."""
    if setup.processor is not None:
        return setup
    return dataclasses.replace(setup, processor=load_processor(job.model_dir, job.config.model))


def fit(
    job: TrainJob, setup: TrainingSetup, collator: Any, reporter: Reporter, *, drop_last: bool = False
) -> tuple[Any, TrainResult]:
    """The training loop over the job's prepared training set (as windows with data.packing,
    data.timestamps or data.no_speech_fraction), from its checkpoint when resuming: the trained model
    and the result so far."""
    # lazy: keeps numpy out of this module's import
    from whisper_tune.data.store import PreparedDataset
    from whisper_tune.data.windows import train_windows
    from whisper_tune.training.best_checkpoint import best_checkpoint_tracker
    from whisper_tune.training.loop import TrainLoop

    acc, cfg, tokenizer = setup.accelerator, job.config, setup.processor.tokenizer
    if job.train_data is not None:
        dataset: Any = train_windows(PreparedDataset(job.train_data), tokenizer, cfg.data, cfg.training.seed)
    else:
        # lazy: keeps torch, numpy out of this module's import
        from whisper_tune.data.streaming import open_stream

        assert job.train_stream is not None
        dataset = open_stream(job.train_stream, cfg.data, tokenizer)
    checkpoint_dir = machine_zero_path(acc, Path(job.run_dir) / "checkpoints")
    best = best_checkpoint_tracker(
        cfg,
        tokenizer=tokenizer,
        eval_data=job.eval_data,
        checkpoint_dir=checkpoint_dir,
        resuming=job.resume_from is not None,
        model=setup.model,
        collator=collator,
        reporter=reporter,
        accelerator=acc,
    )
    loop = TrainLoop(
        setup.model,
        dataset,
        collator,
        cfg.training,
        checkpoint_dir,
        reporter,
        accelerator=acc,
        weights=setup.weights or weights_format_of(setup.model),
        drop_last=drop_last,
        num_workers=setup.num_workers,
        best=best,
        on_batch=setup.on_batch,
    )
    result = loop.run(resume_from=Path(job.resume_from) if job.resume_from else None)
    report = dataset.report() if job.train_stream is not None or loop.windowed else {}
    key = "stream" if job.train_stream is not None else "windows"
    return loop.trained, result.model_copy(update={key: report}) if report else result


def machine_zero_path(accelerator: Any, path: Path) -> Path:
    """Machine 0's ``path`` on every process: with several machines each has its own run directory, and
    every process writes its share of a checkpoint into the main process's (a collective call)."""
    if accelerator.num_processes == 1:
        return path
    from accelerate.utils import broadcast_object_list

    holder = [str(path)]
    broadcast_object_list(holder, from_process=0)
    return Path(holder[0])


def save_final(job: TrainJob, setup: TrainingSetup, model: Any, steps: int | None = None) -> Path:
    """``final/`` (or ``output.model_dir``): the weights in the backend's format and the processor files,
    written by the main process under a temporary name and renamed when complete (a collective call:
    FSDP / ZeRO-3 gather the shards on every process). A full disk is one error naming the newest
    checkpoint (``training.save_last`` writes one at the last step) and how to finish the run from it;
    ``steps``: the steps trained, for that message."""
    import shutil

    # lazy: keeps numpy out of this module's import
    from whisper_tune.training.loop import shards_state

    cfg, accelerator = job.config, setup.accelerator
    weights = setup.weights or weights_format_of(setup.model)
    final_dir = Path(cfg.output.model_dir) if cfg.output.model_dir else Path(job.run_dir) / "final"
    state = accelerator.get_state_dict(model) if shards_state(accelerator) else None
    if accelerator.is_main_process:
        tmp = final_dir.with_name(f".{final_dir.name}.partial")
        unwrapped = accelerator.unwrap_model(model)
        saves_last = cfg.training.save_last or cfg.training.save_steps is not None
        newest = FinalFallback(Path(job.run_dir), steps, saves_last)
        shutil.rmtree(tmp, ignore_errors=True)
        with writing(
            f"the trained model ({final_dir.name}/)",
            final_dir,
            needs=lambda: weights_bytes(unwrapped, weights) + processor_bytes(job.model_dir),
            kept=newest.kept,
            hint=newest.hint,
            partial=tmp,
        ):
            weights.save(unwrapped, tmp, state)
            save_processor(setup.processor, tmp)
            shutil.rmtree(final_dir, ignore_errors=True)
            tmp.rename(final_dir)
    accelerator.wait_for_everyone()
    return final_dir


@dataclass(frozen=True)
class FinalFallback:
    """What a failed write of final/ leaves: the newest checkpoint of the run, and how to finish from it."""

    run_dir: Path
    steps: int | None
    #: the loop writes a checkpoint at the last step (training.save_last or training.save_steps)
    saves_last: bool = True

    def newest(self) -> tuple[Path, int] | None:
        # lazy: keeps numpy out of this module's import
        from whisper_tune.training.checkpoints import list_checkpoints, read_state

        found = list_checkpoints(self.run_dir / "checkpoints")
        return (found[-1], read_state(found[-1])[0]) if found else None

    def kept(self) -> str:
        newest = self.newest()
        trained = f"the {self.steps} steps trained" if self.steps is not None else "the steps trained"
        if newest is None:
            why = "the last step's did not fit either" if self.saves_last else "training.save_last=false"
            return f"no checkpoint holds {trained} ({why}): they are lost"
        checkpoint, step = newest
        of = f" of {self.steps}" if self.steps is not None else ""
        return f"the newest checkpoint, {checkpoint} (step {step}{of}), is intact"

    def hint(self) -> str:
        newest = self.newest()
        if newest is None:
            return "free space there (or set output.dir / output.model_dir to a larger disk) and run again"
        checkpoint, step = newest
        again = (
            f"it loads {checkpoint.name} and writes final/ without training again"
            if self.steps is None or step >= self.steps
            else f"it trains on from step {step} and writes final/"
        )
        return (
            "free space there (or set output.model_dir to a larger disk), then run the same command again "
            f"with training.resume_from=latest output.run_name={self.run_dir.name}: {again}"
        )


def peak_memory_bytes(accelerator: Any) -> int:
    """Peak GPU memory torch allocated (CUDA), else peak resident memory; the maximum over processes."""
    import torch

    if accelerator.device.type == "cuda":
        local = torch.cuda.max_memory_allocated(accelerator.device)
    else:
        local = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return int(accelerator.reduce(torch.tensor(local, device=accelerator.device), reduction="max"))


def start(backend: InProcessTrainer, job: TrainJob) -> Any:
    """The run's accelerator, with every RNG seeded from ``training.seed`` (each process the same)."""
    accelerator = accelerator_for(backend, job.config)
    seed(job.config)
    return accelerator


def accelerator_for(backend: InProcessTrainer, config: RunConfig) -> Any:
    """The Accelerator ``backend`` trains ``config`` on (its process group, when a launcher started
    several processes); ``seed`` before training."""
    # lazy: keeps numpy out of this module's import
    from whisper_tune.training.loop import build_accelerator

    return build_accelerator(config.training, cpu=backend.uses_cpu(config))


def seed(config: RunConfig) -> None:
    """Every RNG (Python, numpy, torch) seeded from ``training.seed``, the same in each process."""
    from accelerate.utils import set_seed

    set_seed(config.training.seed)


def train_in_process(
    backend: InProcessTrainer, job: TrainJob, reporter: Reporter, processor: Any = None
) -> TrainResult:
    """Train ``job`` in this process (``processor``: the run's, when it has loaded it already)."""
    accelerator = start(backend, job)
    setup = dataclasses.replace(backend.training_setup(job, accelerator, reporter), processor=processor)
    return run_phases(job, setup, reporter, backend.recipe_needs(job.config)).result
