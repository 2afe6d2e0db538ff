"""The cuda-lora recipe end to end on the CPU (device=cpu, quantization none, fp32), through the core
pipeline, on the random 1+1-layer toy Whisper and the bundled quickstart audio: adapter-only checkpoints,
pruning, resume, the final adapter loading with PeftModel.from_pretrained, and merge -> pipeline()."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import QUICKSTART_DATA, cli_argv
from safetensors.torch import load_file
from whisper_tune_cuda_lora.model import build_lora_model
from whisper_tune_cuda_lora.options import CudaLoraOptions

from whisper_tune import load_config, run
from whisper_tune.config.schema import WHISPER_LINEAR, ModelConfig, TrainingConfig
from whisper_tune.console import Reporter
from whisper_tune.training.weights import ADAPTER_ONLY

QUIET = Reporter(quiet=True, progress=False)
CPU = CudaLoraOptions(device="cpu", quantization="none")


def overrides(model: Path, out: Path, **extra: object) -> list[str]:
    base: dict[str, object] = {
        "backend.name": "cuda-lora",
        "backend.device": "cpu",
        "backend.quantization": "none",
        "model.name": str(model),
        "data.dataset": str(QUICKSTART_DATA),
        "data.extra_eval": "[]",
        "data.max_train_samples": 16,
        "data.max_eval_samples": 4,
        "data.packing.enabled": "false",  # batches of clips (packing by default: tests/integration)
        "training.max_steps": 5,
        "training.batch_size": 4,
        "training.warmup_steps": 0,
        "training.learning_rate": 1e-2,
        "training.save_steps": 1,
        "training.save_total_limit": 3,
        "eval.max_new_tokens": 6,
        "output.dir": str(out),
        "output.plot": "false",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def logged_losses(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "run.log").read_text().splitlines()
    records = [json.loads(line.split(" ", 3)[3]) for line in lines if '"loss"' in line]
    return {int(r["step"]): r["loss"] for r in records}


@pytest.fixture(scope="module")
def full_run(toy_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cuda-lora-runs")
    run(
        load_config("quickstart", overrides(toy_model_dir, out, **{"output.run_name": "full"})),
        reporter=QUIET,
    )
    return out / "full"


@pytest.mark.slow
def test_run_saves_adapter_only_checkpoints_and_prunes_them(full_run: Path, toy_model_dir: Path) -> None:
    metrics = json.loads((full_run / "metrics.json").read_text())
    assert metrics["backend"] == "cuda-lora" and metrics["train"]["steps"] == 5
    assert set(metrics["evaluation"]) == {"before", "after"}
    checkpoints = sorted(p.name for p in (full_run / "checkpoints").iterdir())
    assert checkpoints == ["step-000003", "step-000004", "step-000005"]  # save_total_limit=3
    weights = full_run / "checkpoints" / "step-000005" / "weights"
    assert sorted(p.name for p in weights.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "generation_config.json",  # language/task: the folder works for merge and inference alone
    ]
    for name in ("optimizer.pt", "scheduler.pt", "rng-rank00000.safetensors", "trainer_state.json"):
        assert (weights.parent / name).is_file()
    state = load_file(weights / "adapter_model.safetensors")
    assert state and all("lora_A" in k or "lora_B" in k for k in state)
    # the adapter is a small fraction of the base (2 % here; 63 MB of 3 GB for large-v2 r32)
    base_bytes = (toy_model_dir / "model.safetensors").stat().st_size
    assert (weights / "adapter_model.safetensors").stat().st_size < base_bytes / 20
    # training moved the adapters away from their zero init
    assert any(float(v.abs().sum()) > 0 for k, v in state.items() if "lora_B" in k)
    final = Path(metrics["final_model_dir"])
    config = json.loads((final / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(toy_model_dir)
    assert (
        config["r"] == 32
        and config["lora_alpha"] == 64
        and set(config["target_modules"]) == set(WHISPER_LINEAR)
    )
    for name in ("generation_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        assert (final / name).is_file(), name
    assert not (final / "model.safetensors").exists()


@pytest.mark.slow
def test_resume_continues_the_same_loss_curve(full_run: Path, toy_model_dir: Path) -> None:
    checkpoint = full_run / "checkpoints" / "step-000003"
    out = full_run.parent
    run(
        load_config(
            "quickstart",
            overrides(
                toy_model_dir,
                out,
                **{
                    "output.run_name": "resumed",
                    "training.resume_from": str(checkpoint),
                    "eval.before": "false",
                    "eval.after": "false",
                },
            ),
        ),
        reporter=QUIET,
    )
    full, resumed = logged_losses(full_run), logged_losses(out / "resumed")
    assert sorted(resumed) == [4, 5]
    assert [resumed[s] for s in (4, 5)] == pytest.approx([full[s] for s in (4, 5)], rel=1e-6)
    a = load_file(out / "resumed" / "final" / "adapter_model.safetensors")
    b = load_file(full_run / "final" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def _base(model_dir: Path) -> object:
    from transformers import WhisperForConditionalGeneration

    return WhisperForConditionalGeneration.from_pretrained(model_dir).eval()


def _clip_features(model_dir: Path) -> tuple[Any, torch.Tensor]:
    """A quickstart eval clip at 16 kHz and its log-mel features."""
    import soundfile as sf
    import soxr
    from transformers import WhisperProcessor

    audio, rate = sf.read(sorted((QUICKSTART_DATA / "eval").glob("*.ogg"))[0], dtype="float32")
    audio = soxr.resample(audio, rate, 16_000).astype("float32")
    processor = WhisperProcessor.from_pretrained(model_dir)
    return audio, processor.feature_extractor(audio, sampling_rate=16_000, return_tensors="pt").input_features


@pytest.mark.slow
def test_final_adapter_loads_and_merges_into_a_pipeline_model(
    full_run: Path, toy_model_dir: Path, tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import WhisperForConditionalGeneration

    final = full_run / "final"
    adapter = PeftModel.from_pretrained(_base(toy_model_dir), str(final)).eval()
    _, feats = _clip_features(final)
    decoder_ids = torch.tensor([[adapter.config.decoder_start_token_id] * 3])
    with torch.no_grad():
        logits = adapter(input_features=feats, decoder_input_ids=decoder_ids).logits
        base_logits = _base(toy_model_dir)(input_features=feats, decoder_input_ids=decoder_ids).logits
    assert not torch.allclose(logits, base_logits, atol=1e-4)  # the adapter changes the model

    # the same weights through the checkpoint path (the adapter format loaded into a fresh LoRA model),
    # with the share of the change eval.keep kept baked in as the run baked it
    from whisper_tune.evaluation.selection import Candidate
    from whisper_tune.training.scale_back import AdapterBlend

    fresh = build_lora_model(
        str(toy_model_dir), ModelConfig(name=str(toy_model_dir)), TrainingConfig(method="lora"), CPU
    ).eval()
    ADAPTER_ONLY.load(fresh, full_run / "checkpoints" / "step-000005" / "weights")
    kept = json.loads((full_run / "metrics.json").read_text())["keep"]["chosen"]
    AdapterBlend(fresh).bake(Candidate(kept["encoder"], kept["decoder"]))
    with torch.no_grad():
        assert torch.equal(fresh(input_features=feats, decoder_input_ids=decoder_ids).logits, logits)

    merged_dir = tmp_path / "merged"
    done = subprocess.run(
        [*cli_argv("merge", str(final), "--out", str(merged_dir))], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert (merged_dir / "model.safetensors").is_file() and not (merged_dir / "adapter_config.json").exists()
    merged = WhisperForConditionalGeneration.from_pretrained(merged_dir).eval()
    with torch.no_grad():
        merged_logits = merged(input_features=feats, decoder_input_ids=decoder_ids).logits
    assert torch.allclose(merged_logits, logits, atol=1e-4)


@pytest.mark.slow
def test_merged_tiny_en_transcribes_like_its_adapter(tiny_en_dir: Path, tmp_path: Path) -> None:
    """Real pretrained tiny.en with a (perturbed) adapter: merge -> pipeline() gives the adapter's text."""
    from transformers import GenerationConfig, WhisperProcessor, pipeline

    from whisper_tune.models.adapters import merge_adapter
    from whisper_tune.models.loading import save_processor

    model = build_lora_model(
        str(tiny_en_dir), ModelConfig(name="pip:tiny.en"), TrainingConfig(method="lora"), CPU
    ).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=2e-3)
    adapter_dir = tmp_path / "final"
    ADAPTER_ONLY.save(model, adapter_dir)
    save_processor(WhisperProcessor.from_pretrained(tiny_en_dir), adapter_dir)
    model.generation_config.save_pretrained(adapter_dir)
    merged_dir = merge_adapter(adapter_dir, tmp_path / "merged")
    assert GenerationConfig.from_pretrained(merged_dir).to_dict() == model.generation_config.to_dict()

    audio, feats = _clip_features(adapter_dir)
    with torch.no_grad():
        ids = model.generate(input_features=feats, max_new_tokens=40)
    expected = WhisperProcessor.from_pretrained(adapter_dir).batch_decode(ids, skip_special_tokens=True)[0]
    assert len(expected.split()) >= 3  # a real transcript, not an empty or degenerate one
    asr = pipeline("automatic-speech-recognition", model=str(merged_dir), device="cpu")
    got = asr({"raw": audio, "sampling_rate": 16_000}, generate_kwargs={"max_new_tokens": 40})
    assert got["text"].strip() == expected.strip()


def test_only_lora_parameters_train_and_save_load_round_trips(toy_model_dir: Path, tmp_path: Path) -> None:
    cfg = ModelConfig(name=str(toy_model_dir))
    model = build_lora_model(
        str(toy_model_dir), cfg, TrainingConfig(method="lora", gradient_checkpointing=True), CPU
    )
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert {n.split(".lora_")[0].rsplit(".", 1)[1] for n in trainable} == set(WHISPER_LINEAR)
    frozen_encoder = build_lora_model(
        str(toy_model_dir), cfg, TrainingConfig(method="lora", freeze_encoder=True), CPU
    )
    assert not any(".encoder.layers." in n for n, p in frozen_encoder.named_parameters() if p.requires_grad)
    # gradient checkpointing + the conv1 hook: gradients reach the encoder's adapters
    model.train()
    feats = torch.randn(1, 80, 3000)
    labels = torch.tensor([[50257, 50362, 400, 50256]])
    model(input_features=feats, labels=labels).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values())
    assert any(
        ".encoder.layers." in n and float(g.abs().sum()) > 0 for n, g in grads.items() if "lora_B" in n
    )
    ADAPTER_ONLY.save(model, tmp_path / "a")
    other = build_lora_model(str(toy_model_dir), cfg, TrainingConfig(method="lora"), CPU)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01)
    ADAPTER_ONLY.save(model, tmp_path / "b")
    ADAPTER_ONLY.load(other, tmp_path / "b")
    for (n, p), (_, q) in zip(model.named_parameters(), other.named_parameters(), strict=True):
        assert torch.equal(p, q), n
