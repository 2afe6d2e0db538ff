"""Language and task tokens with the real multilingual Whisper base (imported from its pip packages)."""

from __future__ import annotations

from pathlib import Path

import pytest
import soundfile as sf
from helpers import QUICKSTART_DATA

from whisper_tune.config.schema import EvalConfig, ModelConfig
from whisper_tune.data.collator import SpeechSeq2SeqCollator
from whisper_tune.data.preparation import decode_raw
from whisper_tune.errors import ModelError
from whisper_tune.evaluation.evaluate import generate_predictions
from whisper_tune.models.loading import load_model, load_processor, resolve_source


@pytest.fixture(scope="module")
def base_dir() -> str:
    return resolve_source("pip:base")


def test_labels_carry_language_and_task(base_dir: str) -> None:
    processor = load_processor(base_dir, ModelConfig(name="pip:base", language="Spanish", task="transcribe"))
    tok = processor.tokenizer
    ids = tok("hola").input_ids
    expected = tok.convert_tokens_to_ids(
        ["<|startoftranscript|>", "<|es|>", "<|transcribe|>", "<|notimestamps|>"]
    )
    assert ids[:4] == expected
    assert ids[-1] == tok.convert_tokens_to_ids("<|endoftext|>")
    # Marathi prefix as published (offline-assets.md: [50258, 50320, 50359, 50363])
    mr = load_processor(base_dir, ModelConfig(name="pip:base", language="mr")).tokenizer
    assert mr("x").input_ids[:4] == [50258, 50320, 50359, 50363]


def test_generation_forces_the_configured_language(base_dir: str) -> None:
    cfg = ModelConfig(name="pip:base", language="es", task="transcribe")
    model = load_model(base_dir, cfg)
    processor = load_processor(base_dir, cfg)
    assert model.generation_config.language == "es" and model.generation_config.task == "transcribe"
    assert model.config.forced_decoder_ids is None and model.generation_config.forced_decoder_ids is None
    audio = decode_raw(next((QUICKSTART_DATA / "eval").glob("*.ogg")))  # English speech, Spanish forced
    features = processor.feature_extractor(
        audio.samples, sampling_rate=16_000, return_tensors="np"
    ).input_features[0]
    collator = SpeechSeq2SeqCollator(model.config.decoder_start_token_id)
    (ids,) = generate_predictions(
        model,
        [{"input_features": features, "labels": [1]}],
        collator,
        model_cfg=cfg,
        eval_cfg=EvalConfig(max_new_tokens=8),
    )
    tok = processor.tokenizer
    es, transcribe = tok.convert_tokens_to_ids(["<|es|>", "<|transcribe|>"])
    assert es in ids[:3] and transcribe in ids[:4]


def test_english_only_model_refuses_a_language_at_load(tiny_en_dir: Path) -> None:
    # A local directory name does not end in ".en", so the config cannot tell; loading does.
    with pytest.raises(ModelError, match="English-only"):
        load_processor(str(tiny_en_dir), ModelConfig(name=str(tiny_en_dir), language="de"))


def test_quickstart_clips_are_real_audio() -> None:
    info = sf.info(next((QUICKSTART_DATA / "train").glob("*.ogg")))
    assert info.samplerate == 22_050 and info.channels == 1


def test_english_only_labels_have_no_language_or_task_token(tiny_en_dir: Path) -> None:
    # English-only vocabularies still contain <|transcribe|>; putting it in the labels would teach a prefix
    # the model never saw (its own prompt is <|startoftranscript|><|notimestamps|>).
    tok = load_processor(str(tiny_en_dir), ModelConfig(name="pip:tiny.en")).tokenizer
    ids = tok("hello world").input_ids
    assert ids[:2] == tok.convert_tokens_to_ids(["<|startoftranscript|>", "<|notimestamps|>"])
    assert tok.convert_tokens_to_ids("<|transcribe|>") not in ids
