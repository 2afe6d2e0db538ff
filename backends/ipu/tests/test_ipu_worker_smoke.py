"""CPU smoke run of the IPU worker under its pinned stack (transformers 4.29.2), end to end.

``whisper-tune run --backend ipu`` with ``backend.stand_in: true`` and the SDK Python pointed at
``.venvs/ipu-stack/bin/python`` (``backends/ipu/scripts/setup-stack-venv.sh``): the core prepares
data/quickstart (fp16 features, as for the IPU), the plugin writes the worker's job file and runs
``python -m whisper_tune_ipu_worker`` there, the worker reads the prepared data with numpy, pads labels to
the fixed length, trains with transformers 4.29.2's ``Seq2SeqTrainer`` standing in for
``IPUSeq2SeqTrainer`` (CPU, fp32), generates, and the core scores its token ids. Not a mock anywhere; what it
cannot show is anything about IPUs (poptorch, compilation, fp16 on the device).

The venv is Python 3.11, not the SDK's 3.8: the only CPU torch pip can install here is for 3.11 (see the
setup script). The worker's Python 3.8 syntax is checked separately (test_ipu_worker.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from ipu_stack import ROOT, STACK_PYTHON, needs_stack

from whisper_tune.backend.registry import Registry
from whisper_tune.config_loading import load_config
from whisper_tune.console import Reporter
from whisper_tune.data.store import PreparedDataset
from whisper_tune.runs.run import run

pytestmark = [needs_stack, pytest.mark.slow]


@pytest.fixture(scope="module")
def smoke_run(toy_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    from whisper_tune_ipu.backend import IpuBackend

    # offline, with the suite's private model cache: set by the shared plugin (whisper_tune_testing.py)
    out = tmp_path_factory.mktemp("ipu-smoke")
    overrides = [
        f"model.name={toy_model_dir}",
        f"data.dataset={ROOT / 'data/quickstart'}",
        "data.train_split=train",
        "data.eval_split=eval",
        "data.text_column=text",
        "data.max_train_samples=9",  # 9 samples, global batch 4: 2 full steps, the 9th is dropped
        "data.max_eval_samples=5",  # 5 samples in batches of 2: padded to 6, cut back to 5
        "training.precision=fp16",
        "training.batch_size=1",
        "training.gradient_accumulation_steps=4",
        "training.num_epochs=1",
        "training.logging_steps=1",
        "eval.batch_size=2",
        "eval.max_new_tokens=6",
        "backend.stand_in=true",
        f"backend.sdk_python={STACK_PYTHON}",
        "backend.max_label_length=32",
        f"output.dir={out}",
        "output.run_name=smoke",
        "output.plot=false",
    ]
    registry = Registry(instances={"ipu": IpuBackend()})
    config = load_config(None, ["backend.name=ipu", *overrides], registry=registry, require_backend=True)
    os.environ["WHISPER_TUNE_IPU_PYTHON"] = str(STACK_PYTHON)  # the probe reads the environment
    try:
        summary = run(config, registry=registry, reporter=Reporter(quiet=True))
    finally:
        del os.environ["WHISPER_TUNE_IPU_PYTHON"]
    return summary.run_dir, summary.metrics


def test_the_worker_ran_under_the_pinned_stack(smoke_run: tuple[Path, dict[str, Any]]) -> None:
    run_dir, _ = smoke_run
    result = json.loads((run_dir / "ipu-worker/result.json").read_text())
    worker = result["worker"]
    assert worker["transformers"] == "4.29.2"
    assert worker["mode"].startswith("stand-in")
    job = json.loads((run_dir / "ipu-worker/job.json").read_text())
    assert job["format"] == "whisper-tune-ipu-job" and job["ipu_config"]["layers_per_ipu"] == [1, 1]
    assert job["decoder_prompt"] == worker["decoder_prompt"] == [50257, 50362]  # tiny.en: sot, notimestamps


def test_labels_are_padded_to_the_fixed_length_and_batches_are_fixed(
    smoke_run: tuple[Path, dict[str, Any]],
) -> None:
    run_dir, metrics = smoke_run
    worker = json.loads((run_dir / "ipu-worker/result.json").read_text())["worker"]
    assert worker["label_pad_length"] == 32
    # every training batch: micro-batch 1 (x 1 replica), 80 x 3000 features, labels padded to exactly 32
    assert worker["batch_shapes"]["train"] == [[[1, 80, 3000], [1, 32]]]
    # every eval batch: 2 clips, labels padded to a multiple of 32 (the bundled real-speech set has
    # transcripts longer than 32 tokens)
    eval_shapes = worker["batch_shapes"]["eval"]
    assert [[2, 80, 3000], [2, 32]] in eval_shapes
    assert all(f == [2, 80, 3000] and labels[0] == 2 and labels[1] % 32 == 0 for f, labels in eval_shapes)
    assert worker["global_batch"] == 4
    assert metrics["train"]["steps"] == 2  # 9 samples // global batch 4, the incomplete rest dropped
    assert metrics["train"]["samples"] == 8


def test_predictions_for_every_eval_sample_scored_by_the_core(smoke_run: tuple[Path, dict[str, Any]]) -> None:
    run_dir, metrics = smoke_run
    references = PreparedDataset(run_dir / "prepared/eval").texts
    assert len(references) == 5
    result = json.loads((run_dir / "ipu-worker/result.json").read_text())["train_result"]
    for phase in ("before", "after"):
        ids = result["predictions"][phase]["eval"]
        assert len(ids) == 5
        assert all(row[:2] == [50257, 50362] for row in ids)  # the forced prompt leads every row
        lines = (run_dir / f"predictions/eval-{phase}.jsonl").read_text().splitlines()
        assert [json.loads(line)["reference"] for line in lines] == references
        wer = metrics["evaluation"][phase]["eval"]["wer"]
        assert 0.0 <= wer  # computed by the core's metrics from the worker's token ids
    assert len(metrics["train"]) and metrics["train"]["final_loss"] is not None
    assert (run_dir / "final/model.safetensors").is_file()  # saved by 4.29.2, processor by the core
    assert (run_dir / "final/tokenizer.json").is_file()
