"""The seeds' recipe for real, on the CPU: LoRA on real pretrained tiny.en with the frozen
base held in int8 (bitsandbytes ``Linear8bitLt``) or 4-bit nf4 (``Linear4bit``) through bitsandbytes' CPU
backend, with gradient checkpointing and the conv1 hook as in the seeds, end to end through the same
code as on a GPU: the core pipeline evaluates, trains a few steps on repeated quickstart clips (the loss
falls), writes adapter-only checkpoints, resumes exactly with the base's bytes untouched, and the adapter
merges and exports (``PeftModel``, ``pipeline()``, faster-whisper). The unquantised mode has the same
tests on the toy model (test_cuda_lora_cpu_run.py). Three steps of two clips: these run in every CI."""

from __future__ import annotations

import itertools
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import QUICKSTART_DATA, cli_argv, logged_steps
from safetensors.torch import load_file
from whisper_tune_cuda_lora.model import build_lora_model
from whisper_tune_cuda_lora.options import CudaLoraOptions

from whisper_tune import load_config, run
from whisper_tune.backend.protocol import RecipeNeeds, TrainJob
from whisper_tune.console import Reporter

pytest.importorskip("bitsandbytes")
pytestmark = pytest.mark.slow

QUIET = Reporter(quiet=True, progress=False)
MODES = ("int8", "4bit")
#: the layer class the base's q_proj is replaced with in each mode
LAYER = {"int8": "Linear8bitLt", "4bit": "Linear4bit"}
STEPS = 3
#: r=32 on q/v of tiny.en (4+4 layers, d_model 384): 589,824 fp32 parameters
TRAINABLE = 589_824


def overrides(model: Path, mode: str, out: Path, **extra: object) -> list[str]:
    base: dict[str, object] = {
        "backend.name": "cuda-lora",
        "backend.device": "cpu",
        "backend.quantization": mode,
        "model.name": str(model),
        "data.dataset": str(QUICKSTART_DATA),
        "data.extra_eval": "[]",
        "data.max_train_samples": 2,  # one batch, repeated every step
        "data.max_eval_samples": 2,
        "data.packing.enabled": "false",  # batches of clips (packing by default: tests/integration)
        "training.max_steps": STEPS,
        "training.batch_size": 2,
        "training.warmup_steps": 0,
        "training.learning_rate": 1e-3,
        "training.lora.target_modules": "[q_proj, v_proj]",  # the seeds' adapter (the default: all-linear)
        "training.gradient_checkpointing": "true",  # as in the seeds (prepare_model_for_kbit_training)
        "training.save_steps": 1,
        "training.save_total_limit": STEPS,
        "training.report_to": "[none]",
        "eval.batch_size": 2,
        "eval.max_new_tokens": 24,
        "eval.regression_set": "null",
        "output.dir": str(out),
        "output.run_name": mode,
        "output.plot": "false",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture(scope="module", params=MODES)
def trained(
    request: pytest.FixtureRequest, tiny_en_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Any:
    """(mode, run directory) of a whole pipeline run: evaluate, 3 steps, evaluate."""
    mode = request.param
    out = tmp_path_factory.mktemp(f"cuda-lora-{mode}")
    run(load_config("quickstart", overrides(tiny_en_dir, mode, out)), reporter=QUIET)
    return mode, out / mode


def test_the_loss_falls_and_only_the_adapter_is_saved(trained: Any, tiny_en_dir: Path) -> None:
    _, run_dir = trained
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train"]["steps"] == STEPS
    losses = [r["loss"] for r in logged_steps(run_dir)]
    assert len(losses) == STEPS and all(b < a for a, b in itertools.pairwise(losses)), losses
    assert losses[-1] < 0.8 * losses[0], losses
    # generation under the quantised base is not garbage: tiny.en gets these clips nearly right
    before, after = metrics["evaluation"]["before"]["eval"], metrics["evaluation"]["after"]["eval"]
    assert before["normalized_wer"] < 20 and after["normalized_wer"] < 20, (before, after)
    final = Path(metrics["final_model_dir"])
    for weights in (final, run_dir / "checkpoints" / f"step-{STEPS:06d}" / "weights"):
        assert not list(weights.glob("model*.safetensors")) and not (weights / "pytorch_model.bin").exists()
        state = load_file(weights / "adapter_model.safetensors")
        assert state and all(".lora_A." in k or ".lora_B." in k for k in state)
        assert sum(v.numel() for v in state.values()) == TRAINABLE
        assert all(v.dtype == torch.float32 for v in state.values())
        size = (weights / "adapter_model.safetensors").stat().st_size
        # 4 bytes a parameter plus the safetensors header: 2.37 MB, of a 151 MB fp32 base
        assert 4 * TRAINABLE < size < 4 * TRAINABLE + 64_000, size
    config = json.loads((final / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_en_dir)


def _job(run_dir: Path, tiny_en_dir: Path, mode: str, **extra: object) -> TrainJob:
    """A job over the run's own prepared data, for the backend's model built here."""
    cfg = load_config("quickstart", overrides(tiny_en_dir, mode, run_dir.parent, **extra))
    return TrainJob(
        config=cfg,
        run_dir=run_dir.parent / str(extra.get("output.run_name", mode)),
        model_dir=str(tiny_en_dir),
        train_data=run_dir / "prepared" / "train",
        eval_data={"eval": run_dir / "prepared" / "eval"},
        evaluate_after=False,
        resume_from=extra.get("training.resume_from"),  # type: ignore[arg-type]
    )


def test_resume_continues_the_loss_curve_and_the_base_keeps_its_bytes(
    trained: Any, tiny_en_dir: Path
) -> None:
    """Resume from step 1 with an evaluation first (an evaluation once repacked 4-bit weights in place):
    steps 2-3 repeat the uninterrupted run's losses exactly, and every byte of the quantised base is what
    it was after loading; only the adapters changed."""
    from whisper_tune.backend.setup import TrainingSetup
    from whisper_tune.training.loop import build_accelerator
    from whisper_tune.training.phases import run_phases

    mode, run_dir = trained
    job = _job(
        run_dir,
        tiny_en_dir,
        mode,
        **{
            "output.run_name": f"{mode}-resumed",
            "training.resume_from": str(run_dir / "checkpoints" / "step-000001"),
            "eval.max_new_tokens": 8,
        },
    )
    cfg = job.config
    torch.manual_seed(cfg.training.seed)
    accelerator = build_accelerator(cfg.training, cpu=True)
    opts = cfg.backend.options_as(CudaLoraOptions)
    model = build_lora_model(str(tiny_en_dir), cfg.model, cfg.training, opts, accelerator.device)
    q_proj = model.base_model.model.model.decoder.layers[0].self_attn.q_proj.base_layer
    assert type(q_proj).__name__ == LAYER[mode]

    def base_bytes() -> dict[str, torch.Tensor]:
        # the quantised weights with their quantisation state (int8 SCB, 4-bit absmax / quant map)
        return {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" not in k}

    def adapters() -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k}

    base_before = base_bytes()
    outcome = run_phases(job, TrainingSetup(accelerator, model), QUIET, RecipeNeeds())
    assert outcome.result.steps == STEPS and outcome.result.predictions["before"]["eval"]
    base_after, trained_adapters = base_bytes(), adapters()
    assert base_after.keys() == base_before.keys()
    changed = [k for k in base_before if not torch.equal(base_before[k], base_after[k])]
    assert not changed, changed[:5]
    full = {int(r["step"]): r["loss"] for r in logged_steps(run_dir)}
    # the history holds the checkpoint's record (step 1) and this run's (2-3)
    resumed = {int(r["step"]): r["loss"] for r in outcome.result.log_history if "loss" in r}
    assert sorted(resumed) == [1, 2, 3]
    assert [resumed[s] for s in (2, 3)] == pytest.approx([full[s] for s in (2, 3)], rel=1e-6)
    final = load_file(run_dir / "final" / "adapter_model.safetensors")
    again = load_file(job.run_dir / "final" / "adapter_model.safetensors")
    assert final.keys() == again.keys() and all(torch.allclose(final[k], again[k], atol=1e-6) for k in final)
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in trained_adapters.items() if "lora_B" in k)


def test_merge_and_export_give_full_precision_models_that_transcribe_like_the_adapter(
    trained: Any, tiny_en_dir: Path, tmp_path: Path
) -> None:
    """The adapter trained on the quantised base, on the full-precision base: ``PeftModel.from_pretrained``;
    merge (``whisper-tune merge``'s function) -> ``pipeline()``; ``whisper-tune export`` -> faster-whisper,
    the parity check passing."""
    import soundfile as sf
    import soxr
    from peft import PeftModel
    from transformers import WhisperForConditionalGeneration, WhisperProcessor, pipeline

    from whisper_tune.models.adapters import merge_adapter

    _, run_dir = trained
    final = run_dir / "final"
    base = WhisperForConditionalGeneration.from_pretrained(tiny_en_dir).eval()
    adapted = PeftModel.from_pretrained(base, str(final)).eval()
    processor = WhisperProcessor.from_pretrained(final)
    audio, rate = sf.read(sorted((QUICKSTART_DATA / "eval").glob("*.ogg"))[1], dtype="float32")
    audio = soxr.resample(audio, rate, 16_000).astype("float32")
    features = processor.feature_extractor(audio, sampling_rate=16_000, return_tensors="pt").input_features
    with torch.no_grad():
        ids = adapted.generate(input_features=features, max_new_tokens=30)
    expected = processor.batch_decode(ids, skip_special_tokens=True)[0].strip()
    assert len(expected.split()) >= 3, expected

    merged = merge_adapter(final, tmp_path / "merged")  # what 'whisper-tune merge' runs
    assert not (merged / "adapter_config.json").exists()
    weights = load_file(merged / "model.safetensors")
    assert all(v.dtype == torch.float32 for v in weights.values())  # a full-precision copy of the base
    asr = pipeline("automatic-speech-recognition", model=str(merged), device="cpu")
    got = asr({"raw": audio, "sampling_rate": 16_000}, generate_kwargs={"max_new_tokens": 30})
    assert got["text"].strip() == expected

    exported = tmp_path / "export"
    done = subprocess.run(
        cli_argv(
            "export", str(run_dir), "--out", str(exported), "--format", "ct2-float16", "--max-clips", "2"
        ),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads((exported / "export.json").read_text())
    assert report["source"]["kind"] == "adapter" and report["passed"], report["formats"]
    from faster_whisper import WhisperModel

    whisper = WhisperModel(str(exported / "ct2-float16"), device="cpu", compute_type="float32")
    segments, _ = whisper.transcribe(audio, beam_size=1, language="en", without_timestamps=True)
    text = " ".join(s.text.strip() for s in segments)
    assert set(text.lower().split()) & set(expected.lower().split()), (text, expected)
