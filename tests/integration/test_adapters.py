"""Merging a real peft LoRA adapter (made on the toy Whisper) into its base model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from whisper_tune.models.adapters import adapter_base_name, is_adapter_dir, load_adapter_model, merge_adapter
from whisper_tune.runs.model_ref import resolve_model

pytest.importorskip("peft")


def make_adapter(base_dir: Path, out: Path) -> Path:
    """A LoRA adapter on q/v projections whose lora_B is random (a fresh one is zero: merge = no-op)."""
    from peft import LoraConfig, get_peft_model
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    model = WhisperForConditionalGeneration.from_pretrained(base_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    peft_model.save_pretrained(out)
    WhisperProcessor.from_pretrained(base_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapter_dir(toy_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_adapter(toy_model_dir, tmp_path_factory.mktemp("adapter"))


def logits(model: object, features: torch.Tensor, decoder_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_features=features, decoder_input_ids=decoder_ids).logits  # type: ignore[operator, no-any-return]


def test_merged_model_computes_what_the_adapter_computes(
    adapter_dir: Path, toy_model_dir: Path, tmp_path: Path
) -> None:
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    assert is_adapter_dir(adapter_dir) and not is_adapter_dir(toy_model_dir)
    assert adapter_base_name(adapter_dir) == str(toy_model_dir)
    out = merge_adapter(adapter_dir, tmp_path / "merged")
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert (out / "preprocessor_config.json").is_file() and (out / "generation_config.json").is_file()
    assert not (out / "adapter_config.json").exists()
    merged = WhisperForConditionalGeneration.from_pretrained(out).eval()
    WhisperProcessor.from_pretrained(out)
    adapted = load_adapter_model(adapter_dir)
    base = WhisperForConditionalGeneration.from_pretrained(toy_model_dir).eval()
    torch.manual_seed(0)
    features = torch.randn(2, 80, 3000)
    decoder_ids = torch.tensor([[50257, 50362, 440, 3797], [50257, 50362, 1002, 13]])
    expected = logits(adapted, features, decoder_ids)
    torch.testing.assert_close(logits(merged, features, decoder_ids), expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(logits(base, features, decoder_ids), expected, atol=1e-2)  # non-trivial merge


def test_an_adapter_directory_resolves_as_an_adapter(adapter_dir: Path) -> None:
    ref = resolve_model(str(adapter_dir))
    assert ref.kind == "adapter" and ref.path == str(adapter_dir)


@pytest.mark.slow
def test_export_of_a_lora_adapter_on_real_weights(tiny_en_dir: Path, tmp_path: Path) -> None:
    """A LoRA adapter on real tiny.en: the source side decodes the unmerged PeftModel, the export is the
    merged model (HF and CTranslate2), and both transcribe like the adapter does."""
    import json

    from helpers import QUICKSTART_DATA

    from whisper_tune.console import Reporter
    from whisper_tune.export.exporter import export

    pytest.importorskip("faster_whisper")
    from peft import LoraConfig, get_peft_model
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    model = WhisperForConditionalGeneration.from_pretrained(tiny_en_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(2)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.01)
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    WhisperProcessor.from_pretrained(tiny_en_dir).save_pretrained(adapter)
    result = export(
        str(adapter),
        tmp_path / "out",
        formats=("ct2-float16",),
        clips=QUICKSTART_DATA / "eval",
        max_clips=4,
        reporter=Reporter(quiet=True, progress=False),
    )
    report = json.loads((tmp_path / "out" / "export.json").read_text())
    assert report["source"]["kind"] == "adapter" and report["passed"], result.lines
    assert report["source_metrics"]["normalized_wer"] < 25
    assert not (tmp_path / "out" / "hf" / "adapter_config.json").exists()
    merged = WhisperForConditionalGeneration.from_pretrained(tmp_path / "out" / "hf")
    base = WhisperForConditionalGeneration.from_pretrained(tiny_en_dir)
    q = "model.decoder.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged.state_dict()[q], base.state_dict()[q])  # the adapter was merged in
