"""Whisper architectures the IPU planner needs: layer counts, widths, mel bins, vocabulary, parameters.

Planning must work offline and without transformers, so the OpenAI checkpoints are a built-in table
(values from OpenAI's model card and the checkpoints' Hugging Face ``config.json`` files), and any other
model is read from a local directory: a Hugging Face model directory (its ``config.json``) or a
CTranslate2 / faster-whisper directory (tensor names and shapes in ``model.bin``, read by the core's own
CT2 reader). ``pip:tiny.en`` and ``pip:base`` are the packaged OpenAI weights, so they map to the table.

Parameter counts are computed from the dimensions (``WhisperArch.parameters``): exact for the Hugging
Face model with the output projection tied to the token embedding (whisper-small: 241,734,912).
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from whisper_tune.errors import ConfigError, ModelError

#: Frames after Whisper's two convolutions (30 s of audio at 100 frames/s, stride 2).
ENCODER_FRAMES = 1500
#: Log-mel frames fed to the encoder (30 s at 100 frames/s).
MEL_FRAMES = 3000
#: Decoder positions (Whisper's maximum label length).
DECODER_POSITIONS = 448


@dataclass(frozen=True)
class WhisperArch:
    """The dimensions of one Whisper model, enough to plan a pipeline and estimate its memory."""

    #: Table name ("small", "large-v3-turbo") or, for a local model, its directory name.
    name: str
    #: Where the numbers came from (built-in table, a config.json, a CT2 model.bin).
    source: str
    encoder_layers: int
    decoder_layers: int
    d_model: int
    encoder_attention_heads: int
    decoder_attention_heads: int
    encoder_ffn_dim: int
    decoder_ffn_dim: int
    num_mel_bins: int
    vocab_size: int
    max_source_positions: int = ENCODER_FRAMES
    max_target_positions: int = DECODER_POSITIONS
    #: The OpenAI family this architecture is identical to ("small" for small and small.en and a
    #: fine-tuned whisper-small); None when it matches none. Published IPU layouts are looked up by it.
    family: str | None = None
    #: OpenAI's rounded parameter count from the model card ("244 M"), for the table entries.
    nominal_parameters: str | None = None

    @property
    def total_layers(self) -> int:
        return self.encoder_layers + self.decoder_layers

    @property
    def english_only(self) -> bool:
        return self.vocab_size == 51864

    # -- parameters (exact for Hugging Face's WhisperForConditionalGeneration, proj_out tied) -----------

    def encoder_layer_parameters(self) -> int:
        """Self-attention (q, v, out with bias; k without), two layer norms, the feed-forward block."""
        d, f = self.d_model, self.encoder_ffn_dim
        return 4 * d * d + 3 * d + 2 * d + (d * f + f) + (f * d + d) + 2 * d

    def decoder_layer_parameters(self) -> int:
        """As the encoder layer plus cross-attention and its layer norm."""
        d, f = self.d_model, self.decoder_ffn_dim
        return 2 * (4 * d * d + 3 * d + 2 * d) + (d * f + f) + (f * d + d) + 2 * d

    def front_end_parameters(self) -> int:
        """conv1 (mel bins -> d, kernel 3), conv2 (d -> d, kernel 3) and the encoder positions: IPU 0."""
        d = self.d_model
        return (self.num_mel_bins * d * 3 + d) + (d * d * 3 + d) + self.max_source_positions * d

    def embedding_parameters(self) -> int:
        """Token embedding (tied to the LM head) and decoder positions: the first decoder IPU."""
        return self.vocab_size * self.d_model + self.max_target_positions * self.d_model

    @property
    def parameters(self) -> int:
        d = self.d_model
        return (
            self.front_end_parameters()
            + self.encoder_layers * self.encoder_layer_parameters()
            + 2 * d  # encoder layer norm
            + self.embedding_parameters()
            + self.decoder_layers * self.decoder_layer_parameters()
            + 2 * d  # decoder layer norm
        )

    def describe(self) -> str:
        params = self.parameters / 1e6
        return (
            f"{self.name}: {self.encoder_layers} encoder + {self.decoder_layers} decoder layers, "
            f"d_model {self.d_model}, {self.num_mel_bins} mel bins, vocabulary {self.vocab_size}, "
            f"{params:,.1f} M parameters"
        )


def _arch(
    name: str,
    enc: int,
    dec: int,
    d: int,
    heads: int,
    *,
    mels: int = 80,
    vocab: int = 51865,
    nominal: str,
    family: str | None = None,
) -> WhisperArch:
    return WhisperArch(
        name=name,
        source=f"built-in table (openai/whisper-{name})",
        encoder_layers=enc,
        decoder_layers=dec,
        d_model=d,
        encoder_attention_heads=heads,
        decoder_attention_heads=heads,
        encoder_ffn_dim=4 * d,
        decoder_ffn_dim=4 * d,
        num_mel_bins=mels,
        vocab_size=vocab,
        family=family or name,
        nominal_parameters=nominal,
    )


#: OpenAI's checkpoints (model card and the hub config.json files). English-only models have one token
#: fewer (51864); large-v3 and turbo have 128 mel bins and 51866 tokens (a Cantonese token).
MODELS: dict[str, WhisperArch] = {
    a.name: a
    for a in (
        _arch("tiny", 4, 4, 384, 6, nominal="39 M"),
        _arch("tiny.en", 4, 4, 384, 6, vocab=51864, nominal="39 M", family="tiny"),
        _arch("base", 6, 6, 512, 8, nominal="74 M"),
        _arch("base.en", 6, 6, 512, 8, vocab=51864, nominal="74 M", family="base"),
        _arch("small", 12, 12, 768, 12, nominal="244 M"),
        _arch("small.en", 12, 12, 768, 12, vocab=51864, nominal="244 M", family="small"),
        _arch("medium", 24, 24, 1024, 16, nominal="769 M"),
        _arch("medium.en", 24, 24, 1024, 16, vocab=51864, nominal="769 M", family="medium"),
        _arch("large", 32, 32, 1280, 20, nominal="1550 M"),
        _arch("large-v2", 32, 32, 1280, 20, nominal="1550 M", family="large"),
        _arch("large-v3", 32, 32, 1280, 20, mels=128, vocab=51866, nominal="1550 M"),
        _arch("large-v3-turbo", 32, 4, 1280, 20, mels=128, vocab=51866, nominal="809 M"),
    )
}

#: Other spellings of table entries.
ALIASES = {"turbo": "large-v3-turbo", "large-v1": "large"}

#: ``pip:<name>`` packaged models (whisper_tune.models.packaged) and the checkpoint each one is.
PACKAGED = {"tiny.en": "tiny.en", "base": "base"}

HUB_PREFIX = "openai/whisper-"


def known_names() -> list[str]:
    return [HUB_PREFIX + name for name in MODELS]


def _family_of(arch: WhisperArch) -> str | None:
    """The table family whose layer structure ``arch`` shares exactly (vocabulary aside)."""
    for entry in MODELS.values():
        if (
            entry.encoder_layers,
            entry.decoder_layers,
            entry.d_model,
            entry.encoder_attention_heads,
            entry.decoder_attention_heads,
            entry.encoder_ffn_dim,
            entry.decoder_ffn_dim,
            entry.num_mel_bins,
        ) == (
            arch.encoder_layers,
            arch.decoder_layers,
            arch.d_model,
            arch.encoder_attention_heads,
            arch.decoder_attention_heads,
            arch.encoder_ffn_dim,
            arch.decoder_ffn_dim,
            arch.num_mel_bins,
        ):
            return entry.family
    return None


def _int(config: dict[str, Any], key: str, path: Path, default: int | None = None) -> int:
    value = config.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ModelError(f"{path}: '{key}' is {value!r}, not a positive integer")
    return value


def read_hf_config(model_dir: Path) -> WhisperArch:
    """A Hugging Face Whisper model directory's ``config.json`` -> ``WhisperArch`` (no transformers)."""
    from whisper_tune.models.ct2_import import read_json_object

    path = Path(model_dir) / "config.json"
    config = read_json_object(path)
    if config.get("model_type") != "whisper":
        raise ModelError(
            f"{path} describes a '{config.get('model_type')}' model, not Whisper",
            hint="give the directory of a Whisper model",
        )
    d_model = _int(config, "d_model", path)
    arch = WhisperArch(
        name=Path(model_dir).name or str(model_dir),
        source=f"config.json in {model_dir}",
        encoder_layers=_int(config, "encoder_layers", path),
        decoder_layers=_int(config, "decoder_layers", path),
        d_model=d_model,
        encoder_attention_heads=_int(config, "encoder_attention_heads", path),
        decoder_attention_heads=_int(config, "decoder_attention_heads", path),
        encoder_ffn_dim=_int(config, "encoder_ffn_dim", path, 4 * d_model),
        decoder_ffn_dim=_int(config, "decoder_ffn_dim", path, 4 * d_model),
        num_mel_bins=_int(config, "num_mel_bins", path, 80),
        vocab_size=_int(config, "vocab_size", path),
        max_source_positions=_int(config, "max_source_positions", path, ENCODER_FRAMES),
        max_target_positions=_int(config, "max_target_positions", path, DECODER_POSITIONS),
    )
    return replace(arch, family=_family_of(arch))


def read_ct2_model(model_dir: Path) -> WhisperArch:
    """A CTranslate2 Whisper directory -> ``WhisperArch``, from the tensor names and shapes of model.bin.

    Uses the core's CT2 reader (memory-mapped; needs numpy, never torch).
    """
    import re

    from whisper_tune.models.ct2_import import read_ct2_file

    ct2 = read_ct2_file(Path(model_dir) / "model.bin")
    variables = ct2.variables

    def count(side: str) -> int:
        pattern = re.compile(rf"^{side}/layer_(\d+)/")
        found = {int(m.group(1)) for name in variables if (m := pattern.match(name))}
        if not found or found != set(range(len(found))):
            raise ModelError(f"{model_dir}: the {side} layers are missing or not numbered 0..n-1")
        return len(found)

    def shape(name: str) -> tuple[int, ...]:
        if name not in variables:
            raise ModelError(f"{model_dir}/model.bin lacks '{name}': not a complete Whisper model")
        return tuple(int(n) for n in variables[name].shape)

    vocab, d_model = shape("decoder/embeddings/weight")[:2]
    heads = {
        side: int(ct2.scalars.get(f"{side}/num_heads", d_model // 64)) for side in ("encoder", "decoder")
    }
    arch = WhisperArch(
        name=Path(model_dir).name or str(model_dir),
        source=f"CTranslate2 model.bin in {model_dir}",
        encoder_layers=count("encoder"),
        decoder_layers=count("decoder"),
        d_model=d_model,
        encoder_attention_heads=heads["encoder"],
        decoder_attention_heads=heads["decoder"],
        encoder_ffn_dim=shape("encoder/layer_0/ffn/linear_0/weight")[0],
        decoder_ffn_dim=shape("decoder/layer_0/ffn/linear_0/weight")[0],
        num_mel_bins=shape("encoder/conv1/weight")[1],
        vocab_size=vocab,
    )
    return replace(arch, family=_family_of(arch))


def _has_model_type(config: Path) -> bool:
    """True for a Hugging Face config.json (CTranslate2's config.json has no ``model_type``)."""
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "model_type" in data


def _table_key(name: str) -> str | None:
    key = name.strip().lower()
    for prefix in (HUB_PREFIX, "whisper-"):
        if key.startswith(prefix):
            key = key[len(prefix) :]
            break
    key = ALIASES.get(key, key)
    return key if key in MODELS else None


def resolve_model(name: str) -> WhisperArch:
    """``model.name`` -> its architecture, offline.

    Order: ``pip:<name>`` (the packaged OpenAI checkpoints); an existing local directory (Hugging Face
    ``config.json``, else a CTranslate2 ``model.bin``); the built-in table (``openai/whisper-small``,
    ``whisper-small`` or ``small``). Anything else is a ConfigError that lists what is known.
    """
    text = name.strip()
    if text.startswith("pip:"):
        packaged = text.removeprefix("pip:").lower()
        if packaged not in PACKAGED:
            raise ConfigError(
                f"unknown packaged model '{text}'",
                hint="known: " + ", ".join("pip:" + k for k in PACKAGED),
            )
        arch = MODELS[PACKAGED[packaged]]
        return replace(arch, source=f"{arch.source}, packaged as {text}")
    path = Path(text).expanduser()
    if path.is_dir():
        config = path / "config.json"
        if config.is_file() and _has_model_type(config):
            return read_hf_config(path)
        if (path / "model.bin").is_file():
            return read_ct2_model(path)
        if config.is_file():
            return read_hf_config(path)  # says precisely what is wrong with it
        raise ModelError(
            f"{path} holds neither a Hugging Face config.json nor a CTranslate2 model.bin",
            hint="give the directory of a Whisper model",
        )
    table_key = _table_key(text)
    if table_key is not None:
        return MODELS[table_key]
    close = difflib.get_close_matches(text.lower(), [n.lower() for n in known_names()], n=1)
    raise ConfigError(
        f"the IPU planner does not know the model '{text}' and cannot download its config (it plans offline)",
        hint=(f"did you mean '{close[0]}'? " if close else "")
        + "use an OpenAI checkpoint (openai/whisper-tiny ... openai/whisper-large-v3-turbo), pip:tiny.en, "
        "pip:base, or a local model directory with its config.json",
    )
