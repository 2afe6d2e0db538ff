"""CPU benchmark: whisper-tune's reference backend against the seed recipe, same model, same batches.

The seed here is seed 003's recipe (Hugging Face ``Seq2SeqTrainer`` with its collator and processor
feature extraction, full fine-tuning), run on the same prepared clips in the same process, so the
ratio compares the training loops and not the machines: the seed computes its log-mel features once
beforehand (its dataset.map), whisper-tune computes them per batch from the prepared audio (format v2),
inside its timed steps. Also measured: data preparation (decode, resample, labels) in clips per
second. Results are printed as a Markdown table and written as JSON.

    python benchmarks/cpu_reference.py --steps 6 --out benchmarks/results/cpu-reference.json

Runs offline on the quickstart data and pip:tiny.en (pip install -e .[quickstart]).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def prepare(model_dir: str, out: Path) -> tuple[Path, float]:
    from whisper_tune import load_config
    from whisper_tune.console import Reporter
    from whisper_tune.runs.run import prepare as prepare_data

    data = REPO / "data" / "quickstart"
    overrides = [f"model.name={model_dir}", f"data.dataset={data}", "data.extra_eval=[]"]
    overrides.append("data.eval_split=null")
    cfg = load_config("quickstart", overrides)
    start = time.perf_counter()
    sets = prepare_data(cfg, out, reporter=Reporter.silent())
    seconds = time.perf_counter() - start
    assert sets.train is not None
    return sets.train, seconds


def time_reference(model_dir: str, train_dir: Path, steps: int, batch: int, workdir: Path) -> float:
    """Seconds per optimizer step of whisper-tune's loop (after one warm-up step)."""
    import torch

    from whisper_tune.config.schema import ModelConfig, TrainingConfig
    from whisper_tune.console import Reporter
    from whisper_tune.data.collator import SpeechSeq2SeqCollator
    from whisper_tune.data.store import PreparedDataset
    from whisper_tune.models.loading import load_model
    from whisper_tune.training.loop import TrainLoop, build_accelerator

    torch.manual_seed(0)
    model = load_model(model_dir, ModelConfig(name=model_dir))
    data = PreparedDataset(train_dir)
    collator = SpeechSeq2SeqCollator(model.config.decoder_start_token_id)
    warm = TrainingConfig(max_steps=1, batch_size=batch, learning_rate=1e-5)
    accelerator = build_accelerator(warm, cpu=True)
    TrainLoop(model, data, collator, warm, workdir / "warm", Reporter.silent(), accelerator).run()
    cfg = TrainingConfig(max_steps=steps, batch_size=batch, learning_rate=1e-5)
    result = TrainLoop(model, data, collator, cfg, workdir / "ref", Reporter.silent(), accelerator).run()
    return result.seconds / steps


def time_seed_trainer(model_dir: str, train_dir: Path, steps: int, batch: int, workdir: Path) -> float:
    """Seconds per optimizer step of seed 003's recipe: Seq2SeqTrainer + the seed's collator."""
    import torch
    from transformers import (
        Seq2SeqTrainer,
        Seq2SeqTrainingArguments,
        TrainerCallback,
        WhisperForConditionalGeneration,
        WhisperProcessor,
    )

    from whisper_tune.data.store import PreparedDataset

    processor = WhisperProcessor.from_pretrained(model_dir)
    data = PreparedDataset(train_dir)

    class SeedCollator:  # DataCollatorSpeechSeq2SeqWithPadding from seed 003
        def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
            inputs = [{"input_features": f["input_features"]} for f in features]
            batch_out = processor.feature_extractor.pad(inputs, return_tensors="pt")
            labels_batch = processor.tokenizer.pad(
                [{"input_ids": f["labels"]} for f in features], return_tensors="pt"
            )
            labels = labels_batch["input_ids"].masked_fill(labels_batch.attention_mask.ne(1), -100)
            if (labels[:, 0] == model.config.decoder_start_token_id).all().cpu().item():
                labels = labels[:, 1:]
            batch_out["labels"] = labels
            return dict(batch_out)

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.marks: list[float] = []

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.marks.append(time.perf_counter())

    torch.manual_seed(0)
    model = WhisperForConditionalGeneration.from_pretrained(model_dir)
    timer = Timer()
    args = Seq2SeqTrainingArguments(
        output_dir=str(workdir / "seed"),
        per_device_train_batch_size=batch,
        max_steps=steps + 1,
        learning_rate=1e-5,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
    )
    trainer = Seq2SeqTrainer(
        model=model,
        args=args,
        # seed 003 computes the log-mel features once, in its dataset.map, from the 16 kHz audio
        train_dataset=[
            {
                "input_features": processor.feature_extractor(
                    data[i]["audio"], sampling_rate=16_000
                ).input_features[0],
                "labels": data[i]["labels"],
            }
            for i in range(len(data))
        ],
        data_collator=SeedCollator(),
        callbacks=[timer],
    )
    trainer.train()
    return (timer.marks[-1] - timer.marks[0]) / steps  # the first step is warm-up


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "cpu-reference.json")
    args = parser.parse_args()

    from whisper_tune.console import quiet_libraries
    from whisper_tune.models.loading import resolve_source

    quiet_libraries()
    model_dir = resolve_source("pip:tiny.en")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        train_dir, prep_seconds = prepare(model_dir, work / "prepared")
        from whisper_tune.data.store import PreparedDataset

        clips = len(PreparedDataset(train_dir))
        ours = time_reference(model_dir, train_dir, args.steps, args.batch, work)
        seed = time_seed_trainer(model_dir, train_dir, args.steps, args.batch, work)
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores",
        "model": f"tiny.en (pip:tiny.en), full fine-tuning, fp32, batch {args.batch}",
        "prepare_clips_per_second": round(clips / prep_seconds, 1),
        "reference_samples_per_second": round(args.batch / ours, 3),
        "seed003_trainer_samples_per_second": round(args.batch / seed, 3),
        "ratio_reference_to_seed": round(seed / ours, 3),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "steps_timed": args.steps,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("| measure | value |\n|---|---|")
    for key, value in result.items():
        print(f"| {key} | {value} |")


if __name__ == "__main__":
    main()
