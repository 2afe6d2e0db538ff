"""Keeping only as much of a fine-tune as the held-out sets allow (``eval.keep``; training/scale_back.py):
α = 0 is the pretrained model and α = 1 the fine-tune, exactly (full weights and LoRA); the chosen LoRA scale
is baked into the saved adapter, which plain peft and ``merge`` load as chosen; a wrecking fine-tune is
scaled back to a small α with a warning; the choice survives resume; reported numbers come from the half
selection never saw."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers import QUIET, REPO, real_samples, toy_overrides

from whisper_tune.config.schema import EvalConfig, ModelConfig


def predictions(model: Any, samples: list[dict[str, Any]]) -> list[list[int]]:
    from whisper_tune.data.collator import SpeechSeq2SeqCollator
    from whisper_tune.evaluation.evaluate import generate_predictions

    collator = SpeechSeq2SeqCollator(model.config.decoder_start_token_id)
    return generate_predictions(
        model, samples, collator, model_cfg=ModelConfig(name="x"), eval_cfg=EvalConfig(max_new_tokens=24)
    )


def perturb(model: Any, scale: float, only: str = "") -> None:
    """Move every trainable weight (whose name contains ``only``) by seeded noise: a stand-in fine-tune
    that changes what the model transcribes."""
    import torch

    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad and only in name:
                param.add_(torch.randn(param.shape, generator=generator) * scale)


def test_alpha_zero_is_the_pretrained_model_and_one_the_fine_tune_full_weights(tiny_en_dir: Path) -> None:
    from transformers import WhisperForConditionalGeneration

    from whisper_tune.evaluation.selection import Candidate
    from whisper_tune.training.scale_back import WeightBlend, trained_weights

    samples = real_samples(tiny_en_dir, 4, audio=True)
    model = WhisperForConditionalGeneration.from_pretrained(tiny_en_dir)
    model.model.encoder.requires_grad_(False)  # the default recipe: the decoder trains
    pretrained = predictions(model, samples)
    base = trained_weights(model)
    assert base and not any(".encoder." in name for name in base)
    perturb(model, 0.02)
    fine_tuned = predictions(model, samples)
    assert fine_tuned != pretrained  # the stand-in fine-tune changed the transcripts
    blend = WeightBlend(model, base)
    assert not blend.encoder_trained
    blend.apply(Candidate(0.0, 0.0))
    assert predictions(model, samples) == pretrained
    blend.apply(Candidate(1.0, 1.0))
    assert predictions(model, samples) == fine_tuned
    blend.apply(Candidate(0.5, 0.5))
    state = dict(model.named_parameters())
    name = next(iter(base))
    expected = base[name] + 0.5 * (blend.trained[name] - base[name])
    assert state[name].detach().equal(expected)


def test_alpha_zero_and_one_with_lora_and_the_baked_scale_is_what_plain_peft_loads(
    tiny_en_dir: Path, tmp_path: Path
) -> None:
    import torch
    from peft import PeftModel
    from transformers import WhisperForConditionalGeneration

    from whisper_tune.config.schema import LoraConfig, TrainingConfig
    from whisper_tune.evaluation.selection import Candidate
    from whisper_tune.models.lora import add_lora
    from whisper_tune.training.scale_back import AdapterBlend
    from whisper_tune.training.weights import ADAPTER_ONLY

    samples = real_samples(tiny_en_dir, 4, audio=True)
    pretrained = predictions(WhisperForConditionalGeneration.from_pretrained(tiny_en_dir), samples)
    training = TrainingConfig(method="lora", lora=LoraConfig(r=8, target_modules=("q_proj", "v_proj")))
    model = add_lora(WhisperForConditionalGeneration.from_pretrained(tiny_en_dir), training)
    perturb(model, 0.05, only="lora_B")  # lora_B starts at zero: this is the adapter's whole change
    fine_tuned = predictions(model, samples)
    assert fine_tuned != pretrained
    blend = AdapterBlend(model)
    assert blend.encoder_trained
    blend.apply(Candidate(0.0, 0.0))
    assert predictions(model, samples) == pretrained
    blend.apply(Candidate(1.0, 1.0))
    assert predictions(model, samples) == fine_tuned
    # the chosen scale, baked into lora_B, is what the saved adapter holds
    features = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(1))
    decoder_input_ids = torch.tensor([[50257, 50362, 464, 3797]])
    blend.apply(Candidate(0.5, 1.0))
    model.eval()  # no LoRA dropout
    with torch.no_grad():
        scaled = model(input_features=features, decoder_input_ids=decoder_input_ids).logits
    blend.bake(Candidate(0.5, 1.0))
    ADAPTER_ONLY.save(model, tmp_path / "adapter")
    plain = PeftModel.from_pretrained(
        WhisperForConditionalGeneration.from_pretrained(tiny_en_dir), tmp_path / "adapter"
    )
    with torch.no_grad():
        loaded = plain(input_features=features, decoder_input_ids=decoder_input_ids).logits
        merged = plain.merge_and_unload()(input_features=features, decoder_input_ids=decoder_input_ids).logits
    torch.testing.assert_close(loaded, scaled, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(merged, scaled, rtol=1e-4, atol=1e-4)


def metrics_of(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.mark.slow
def test_a_wrecking_fine_tune_is_scaled_back_to_a_small_alpha_with_a_warning(
    tiny_en_dir: Path, tmp_path: Path
) -> None:
    """Real tiny.en, every decoder weight at a learning rate 30 000 times the default: every candidate
    breaks the guard set, so the rule keeps the best-guarded (the smallest change) and says so."""
    from whisper_tune import load_config, run

    overrides = toy_overrides(
        tiny_en_dir,
        tmp_path,
        **{
            "training.learning_rate": 1.0,
            "training.method": "full",
            "training.freeze_encoder": "true",
            "data.max_eval_samples": 8,
            "eval.max_new_tokens": 24,
            "output.run_name": "wreck",
        },
    )
    summary = run(load_config("quickstart", overrides), reporter=QUIET)
    keep = summary.metrics["keep"]
    assert keep["mode"] == "auto" and keep["candidates"][0]["label"] == "α=0.25"
    assert keep["chosen"]["decoder"] <= 0.5
    assert not keep["chosen"]["passed"] and "no candidate kept every guard set" in keep["warning"]
    assert any(line.startswith("warning: keep: no candidate") for line in summary.lines)
    # every number reported comes from the half selection did not see
    halves = keep["halves"]
    for phase in ("before", "after"):
        for name, scores in summary.metrics["evaluation"][phase].items():
            assert scores["half"] == "report" and scores["samples"] == len(halves[name]["report"])
            assert not set(halves[name]["report"]) & set(halves[name]["choose"])
    rows = [json.loads(line) for line in (summary.run_dir / "predictions" / "eval-after.jsonl").open()]
    assert [r["half"] for r in rows].count("choose") == len(halves["eval"]["choose"])


@pytest.mark.slow
def test_the_choice_survives_resume(toy_model_dir: Path, tmp_path: Path) -> None:
    """A run resumed from its step-2 checkpoint chooses what the run without a break chose, and saves the
    same weights."""
    from safetensors.torch import load_file

    from whisper_tune import load_config, run

    def train(name: str, *extra: str) -> Any:
        overrides = toy_overrides(
            toy_model_dir,
            tmp_path,
            **{"training.max_steps": 4, "training.save_steps": 2, "output.run_name": name},
        )
        return run(load_config("quickstart", [*overrides, *extra]), reporter=QUIET)

    whole = train("whole")
    resumed = train("resumed", f"training.resume_from={tmp_path / 'whole' / 'checkpoints' / 'step-000002'}")
    assert resumed.metrics["keep"]["chosen"] == whole.metrics["keep"]["chosen"]
    a = load_file(whole.run_dir / "final" / "model.safetensors")
    b = load_file(resumed.run_dir / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


@pytest.mark.slow
def test_a_fixed_keep_is_baked_into_a_lora_run_that_merge_loads(toy_model_dir: Path, tmp_path: Path) -> None:
    """``eval.keep=0.5`` on a LoRA run: the adapter in final/ holds half the change, and
    ``whisper-tune merge`` folds exactly that into a plain model."""
    import subprocess
    import sys

    import torch
    from peft import PeftModel
    from transformers import WhisperForConditionalGeneration

    from whisper_tune import load_config, run

    overrides = toy_overrides(
        toy_model_dir,
        tmp_path,
        **{"training.method": "lora", "eval.keep": 0.5, "training.save_steps": 2, "output.run_name": "lora"},
    )
    summary = run(load_config("quickstart", overrides), reporter=QUIET)
    assert summary.metrics["keep"] == {
        "mode": "fixed",
        "chosen": {"encoder": 0.5, "decoder": 0.5, "label": "α=0.5"},
    }
    assert summary.metrics["evaluation"]["after"]["eval"]["half"] == "all"
    final = summary.run_dir / "final"
    from safetensors.torch import load_file

    trained = load_file(
        summary.run_dir / "checkpoints" / "step-000002" / "weights" / "adapter_model.safetensors"
    )
    kept = load_file(final / "adapter_model.safetensors")
    assert kept.keys() == trained.keys() and any("lora_B" in k for k in kept)
    for key, value in kept.items():  # half of every adapter's change: lora_B halved, lora_A as trained
        torch.testing.assert_close(value, trained[key] * (0.5 if "lora_B" in key else 1.0))
    done = subprocess.run(
        [sys.executable, "-m", "whisper_tune", "merge", str(final), "--out", str(tmp_path / "merged")],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    features = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(2))
    ids = torch.tensor([[50257, 50362, 464]])
    plain = PeftModel.from_pretrained(WhisperForConditionalGeneration.from_pretrained(toy_model_dir), final)
    merged = WhisperForConditionalGeneration.from_pretrained(tmp_path / "merged")
    with torch.no_grad():
        torch.testing.assert_close(
            merged(input_features=features, decoder_input_ids=ids).logits,
            plain(input_features=features, decoder_input_ids=ids).logits,
            rtol=1e-4,
            atol=1e-4,
        )
