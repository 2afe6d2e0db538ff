"""Import a CTranslate2 (faster-whisper) Whisper directory as a Hugging Face Whisper model.

Why this exists: the only pretrained Whisper weights that install offline (pip packages, see
``whisper_tune.models.packaged``) and many fine-tuned models people already have are CTranslate2 directories
(``model.bin`` + ``config.json`` + ``tokenizer.json``). Training needs PyTorch weights, so we read the CT2
binary format ourselves (no ctranslate2 needed) and write a normal Hugging Face directory.

The CT2 file (binary version 6, spec ``WhisperSpec``) is: u32 version, string spec name, u32 revision,
u32 variable count, then per variable: string name, u8 rank, u32 dims, u8 dtype, u32 byte count, raw
little-endian data; then u32 alias count and (alias, target) string pairs. A string is a u16 length that
counts a trailing NUL, the UTF-8 bytes, then the NUL.

What the mapping has to undo (all checked against ctranslate2 itself in tests/unit/test_ct2_import.py):
q, k and v are fused in self-attention and k, v in cross-attention; CT2 carries a k bias that HF does not
have (dropping it is exact: ``q·b_k`` is the same for every key, so softmax cancels it); the output
projection is an alias of the token embedding (HF ties ``proj_out`` to it).

Module import stays light (no numpy, torch or transformers at import time): ``whisper_tune.models`` is
reachable from the CLI's ``--help`` path.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from whisper_tune.disk import writing
from whisper_tune.errors import ModelError
from whisper_tune.reading import read_json_object as read_json_file

if TYPE_CHECKING:
    from numpy.typing import NDArray

    Array = NDArray[Any]

#: Bump when the output of the conversion changes: imported models are cached under a key that includes it.
CONVERTER_VERSION = 2
#: The CT2 binary format version this reader understands.
BINARY_VERSION = 6
SPEC_NAME = "WhisperSpec"
#: Environment variable that moves the cache (default ``~/.cache/whisper-tune``).
CACHE_ENV = "WHISPER_TUNE_CACHE"
#: Written last into every converted directory: what it was made from (and proof it is complete).
MARKER_FILE = "whisper_tune_import.json"
#: A staging directory this old was left by a killed process (a live conversion takes seconds to minutes).
STALE_STAGING_SECONDS = 6 * 3600
#: Files that make a directory a Hugging Face model rather than a CT2 one.
HF_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)

# CT2's DataType enum order (include/ctranslate2/types.h): float32, int8, int16, int32, float16, bfloat16.
_DTYPES: dict[int, str] = {0: "<f4", 1: "i1", 2: "<i2", 3: "<i4", 4: "<f2", 5: "bfloat16"}
_ITEMSIZE: dict[int, int] = {0: 4, 1: 1, 2: 2, 3: 4, 4: 2, 5: 2}
# CT2's ActivationType enum: 3 is the exact (erf) GELU that Whisper uses.
_GELU = 3
# A Whisper vocabulary ends with 1501 timestamp tokens preceded by fixed special tokens; these are
# their distances from the end of the vocabulary (the same for English-only, multilingual and large-v3).
_FROM_END = {"notimestamps": 1502, "startofprev": 1504, "transcribe": 1506, "translate": 1507}
_TIMESTAMPS = 1501
MULTILINGUAL_VOCAB = 51865  # English-only Whisper vocabularies have 51864 tokens
_LANGUAGE_TOKEN = re.compile(r"^<\|[a-z]{2,3}\|>$")


# --------------------------------------------------------------------------------------------------------
# Reading model.bin
# --------------------------------------------------------------------------------------------------------


@dataclass
class Ct2File:
    """The parsed contents of a CT2 ``model.bin``: tensors, scalars (rank 0) and aliases already resolved."""

    spec: str
    revision: int
    variables: dict[str, Array] = field(default_factory=dict)
    scalars: dict[str, int | float] = field(default_factory=dict)


class _Reader:
    """Bounds-checked little-endian reader: a short file becomes a ModelError, never a struct.error."""

    def __init__(self, data: bytes | mmap.mmap, path: Path) -> None:
        self.data = data
        self.path = path
        self.pos = 0
        self.where = "the header"

    def corrupt(self, why: str) -> ModelError:
        return ModelError(
            f"{self.path} is not a valid CTranslate2 Whisper model: {why} (in {self.where}, byte {self.pos})",
            hint="the file is truncated or damaged; copy or convert it again",
        )

    def take(self, n: int) -> int:
        """Reserve ``n`` bytes and return where they start."""
        start = self.pos
        if n < 0 or start + n > len(self.data):
            raise self.corrupt(f"it ends after {len(self.data)} bytes")
        self.pos = start + n
        return start

    def uint(self, size: int) -> int:
        start = self.take(size)
        return int.from_bytes(self.data[start : start + size], "little")

    def string(self) -> str:
        length = self.uint(2)
        start = self.take(length)
        raw = self.data[start : start + length]
        if length == 0 or raw[-1] != 0:
            raise self.corrupt("a name is not NUL-terminated")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError:
            raise self.corrupt("a name is not UTF-8") from None


def _decode_array(data: bytes | mmap.mmap, offset: int, dtype_id: int, dims: list[int]) -> Array:
    """A read-only view of the raw bytes (bfloat16, which numpy lacks, is widened to float32 exactly)."""
    import numpy as np

    count = 1
    for dim in dims:
        count *= dim
    if _DTYPES[dtype_id] == "bfloat16":
        raw = np.frombuffer(data, dtype="<u2", count=count, offset=offset).astype(np.uint32) << 16
        return raw.view(np.float32).reshape(dims)
    return np.frombuffer(data, dtype=_DTYPES[dtype_id], count=count, offset=offset).reshape(dims)


def _read_variable(reader: _Reader, index: int) -> tuple[str, Array]:
    reader.where = f"variable {index}"
    name = reader.string()
    reader.where = f"variable {index} ('{name}')"
    dims = [reader.uint(4) for _ in range(reader.uint(1))]
    dtype_id = reader.uint(1)
    if dtype_id not in _DTYPES:
        raise reader.corrupt(f"unknown data type code {dtype_id}")
    nbytes = reader.uint(4)
    expected = _ITEMSIZE[dtype_id]
    for dim in dims:
        expected *= dim
    if nbytes != expected:
        raise reader.corrupt(f"{nbytes} bytes stored for shape {dims} ({expected} expected)")
    offset = reader.take(nbytes)
    return name, _decode_array(reader.data, offset, dtype_id, dims)


def _map_file(path: Path) -> bytes | mmap.mmap:
    """The file's bytes, memory-mapped: a large-v3 model.bin is 3 GB and only the float32 copies made
    during conversion need to be in memory (the map stays valid after the file is closed)."""
    with path.open("rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            return b""
        return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)


def read_ct2_file(path: Path) -> Ct2File:
    """Parse a CT2 Whisper ``model.bin`` completely (header, variables, aliases) with every read checked."""
    try:
        data = _map_file(Path(path))
    except OSError as exc:
        raise ModelError(f"cannot read the CTranslate2 model {path}: {exc.strerror or exc}") from None
    reader = _Reader(data, Path(path))
    version = reader.uint(4)
    if version != BINARY_VERSION:
        raise ModelError(
            f"{path} is CTranslate2 binary version {version}; only version {BINARY_VERSION} can be imported",
            hint="convert the model again with a current ctranslate2",
        )
    spec = reader.string()
    if spec != SPEC_NAME:
        raise ModelError(f"{path} holds a CTranslate2 '{spec}' model, not Whisper ('{SPEC_NAME}')")
    result = Ct2File(spec=spec, revision=reader.uint(4))
    for index in range(reader.uint(4)):
        name, array = _read_variable(reader, index)
        if array.ndim == 0:
            result.scalars[name] = array.item()
        else:
            result.variables[name] = array
    reader.where = "the alias table"
    for _ in range(reader.uint(4)):
        alias, target = reader.string(), reader.string()
        if target not in result.variables:
            raise reader.corrupt(f"alias '{alias}' points to a missing variable '{target}'")
        result.variables[alias] = result.variables[target]
    reader.where = "the end of the file"
    if reader.pos != len(data):
        raise reader.corrupt(f"{len(data) - reader.pos} unexpected bytes follow the model")
    return result


def read_ct2_variables(path: Path) -> dict[str, Array]:
    """The tensors of a CT2 Whisper ``model.bin`` by CT2 name; aliases resolved, scalar flags skipped.

    Arrays keep the stored dtype (float16 for the packaged models; int8 weights come with a
    ``weight_scale``) and are read-only views of a memory map of the file: nothing is copied until used.
    """
    return read_ct2_file(path).variables


# --------------------------------------------------------------------------------------------------------
# Recognising a CT2 directory
# --------------------------------------------------------------------------------------------------------


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file that must hold an object; any failure is a one-line ModelError."""
    return read_json_file(path, ModelError)


def is_ct2_directory(path: Path) -> bool:
    """True for a CT2 model directory: ``model.bin``, no HF weights, and a config.json (if any) that is
    not a Hugging Face config (those carry ``model_type``)."""
    path = Path(path)
    if not (path / "model.bin").is_file():
        return False
    if any((path / name).exists() for name in HF_WEIGHT_FILES):
        return False
    config = path / "config.json"
    if not config.exists():
        return True
    try:
        return "model_type" not in read_json_object(config)
    except ModelError:
        return False


# --------------------------------------------------------------------------------------------------------
# Weight mapping
# --------------------------------------------------------------------------------------------------------


class _Weights:
    """CT2 variables with dequantisation and a record of what was used (leftovers mean an unknown layout)."""

    def __init__(self, ct2: Ct2File, path: Path) -> None:
        self.variables = ct2.variables
        self.scalars = ct2.scalars
        self.path = path
        self.used: set[str] = set()

    def get(self, name: str) -> Array:
        """The variable as float32 (int8/int16 weights divided by their CT2 ``weight_scale``)."""
        import numpy as np

        if name not in self.variables:
            raise ModelError(f"{self.path} lacks the variable '{name}': not a complete Whisper model")
        self.used.add(name)
        array = self.variables[name]
        if array.dtype.kind in "iu" and name.endswith("/weight"):
            scale_name = name[: -len("weight")] + "weight_scale"
            if scale_name in self.scalars:  # int16: one scale for the whole matrix
                whole: Array = array.astype(np.float32) / np.float32(self.scalars[scale_name])
                return whole.astype(np.float32)
            if scale_name not in self.variables:
                raise ModelError(f"{self.path}: '{name}' is quantised but has no '{scale_name}'")
            self.used.add(scale_name)
            scale = self.variables[scale_name].astype(np.float32)  # int8: one scale per output row
            scale = scale.reshape(-1, *([1] * (array.ndim - 1)))
            return (array.astype(np.float32) / scale).astype(np.float32)
        return np.ascontiguousarray(array, dtype=np.float32)

    def split(self, name: str, parts: int) -> list[Array]:
        """Split fused rows (q|k|v or k|v) into equal blocks."""
        array = self.get(name)
        if array.shape[0] % parts:
            raise ModelError(f"{self.path}: '{name}' has {array.shape[0]} rows, not {parts} equal blocks")
        rows = array.shape[0] // parts
        return [array[i * rows : (i + 1) * rows].copy() for i in range(parts)]


def _layer_count(variables: dict[str, Array], side: str, path: Path) -> int:
    """Number of ``{side}/layer_{i}/`` blocks (a plain ``layer_norm`` must not count)."""
    pattern = re.compile(rf"^{side}/layer_(\d+)/")
    indices = {int(m.group(1)) for name in variables if (m := pattern.match(name))}
    if not indices or indices != set(range(len(indices))):
        raise ModelError(f"{path}: the {side} layers are missing or not numbered 0..n-1")
    return len(indices)


def _linear(w: _Weights, ct2: str, hf: str, out: dict[str, Array]) -> None:
    out[f"{hf}.weight"] = w.get(f"{ct2}/weight")
    out[f"{hf}.bias"] = w.get(f"{ct2}/bias")


def _norm(w: _Weights, ct2: str, hf: str, out: dict[str, Array]) -> None:
    out[f"{hf}.weight"] = w.get(f"{ct2}/gamma")
    out[f"{hf}.bias"] = w.get(f"{ct2}/beta")


def _fused(w: _Weights, ct2: str, hf: str, projections: tuple[str, ...], out: dict[str, Array]) -> None:
    """Fused rows -> separate HF projections; k_proj has no bias in HF (the CT2 k bias cannot matter)."""
    weights = w.split(f"{ct2}/weight", len(projections))
    biases = w.split(f"{ct2}/bias", len(projections))
    for proj, weight, bias in zip(projections, weights, biases, strict=True):
        out[f"{hf}.{proj}.weight"] = weight
        if proj != "k_proj":
            out[f"{hf}.{proj}.bias"] = bias


def _ffn(w: _Weights, ct2: str, hf: str, out: dict[str, Array]) -> None:
    _linear(w, f"{ct2}/ffn/linear_0", f"{hf}.fc1", out)
    _linear(w, f"{ct2}/ffn/linear_1", f"{hf}.fc2", out)
    _norm(w, f"{ct2}/ffn/layer_norm", f"{hf}.final_layer_norm", out)


def _self_attention(w: _Weights, ct2: str, hf: str, out: dict[str, Array]) -> None:
    _fused(w, f"{ct2}/self_attention/linear_0", f"{hf}.self_attn", ("q_proj", "k_proj", "v_proj"), out)
    _linear(w, f"{ct2}/self_attention/linear_1", f"{hf}.self_attn.out_proj", out)
    _norm(w, f"{ct2}/self_attention/layer_norm", f"{hf}.self_attn_layer_norm", out)


def _encoder(w: _Weights, layers: int, out: dict[str, Array]) -> None:
    for conv in ("conv1", "conv2"):  # Conv1d weights are [out, in, kernel] in both
        _linear(w, f"encoder/{conv}", f"model.encoder.{conv}", out)
    out["model.encoder.embed_positions.weight"] = w.get("encoder/position_encodings/encodings")
    _norm(w, "encoder/layer_norm", "model.encoder.layer_norm", out)
    for i in range(layers):
        _self_attention(w, f"encoder/layer_{i}", f"model.encoder.layers.{i}", out)
        _ffn(w, f"encoder/layer_{i}", f"model.encoder.layers.{i}", out)


def _decoder(w: _Weights, layers: int, out: dict[str, Array]) -> None:
    out["model.decoder.embed_tokens.weight"] = w.get("decoder/embeddings/weight")
    out["model.decoder.embed_positions.weight"] = w.get("decoder/position_encodings/encodings")
    _norm(w, "decoder/layer_norm", "model.decoder.layer_norm", out)
    for i in range(layers):
        ct2, hf = f"decoder/layer_{i}", f"model.decoder.layers.{i}"
        _self_attention(w, ct2, hf, out)
        _linear(w, f"{ct2}/attention/linear_0", f"{hf}.encoder_attn.q_proj", out)
        _fused(w, f"{ct2}/attention/linear_1", f"{hf}.encoder_attn", ("k_proj", "v_proj"), out)
        _linear(w, f"{ct2}/attention/linear_2", f"{hf}.encoder_attn.out_proj", out)
        _norm(w, f"{ct2}/attention/layer_norm", f"{hf}.encoder_attn_layer_norm", out)
        _ffn(w, ct2, hf, out)


def _tied_projection_ok(variables: dict[str, Array]) -> bool:
    """HF ties proj_out to the embedding; a CT2 model with a separate projection cannot be represented."""
    projection = variables.get("decoder/projection/weight")
    embedding = variables.get("decoder/embeddings/weight")
    if projection is None or embedding is None or projection is embedding:
        return True
    return projection.shape == embedding.shape and bool((projection == embedding).all())


def map_weights(ct2: Ct2File, path: Path) -> tuple[dict[str, Array], int, int]:
    """All HF tensors (float32) plus the encoder and decoder layer counts."""
    variables = ct2.variables
    if not _tied_projection_ok(variables):
        raise ModelError(
            f"{path}: the output projection differs from the token embedding, "
            "which a Hugging Face Whisper model cannot represent"
        )
    weights = _Weights(ct2, path)
    weights.used.add("decoder/projection/weight")
    if "decoder/projection/bias" in variables:  # HF's proj_out has no bias: only an all-zero one is exact
        if weights.get("decoder/projection/bias").any():
            raise ModelError(
                f"{path}: the output projection has a bias, which a Hugging Face Whisper model "
                "cannot represent"
            )
    enc_layers = _layer_count(variables, "encoder", path)
    dec_layers = _layer_count(variables, "decoder", path)
    out: dict[str, Array] = {}
    _encoder(weights, enc_layers, out)
    _decoder(weights, dec_layers, out)
    leftovers = sorted(set(variables) - weights.used)
    if leftovers:
        raise ModelError(
            f"{path} has {len(leftovers)} variable(s) the importer does not know ({leftovers[0]}, …): "
            "converting it would silently drop them"
        )
    return out, enc_layers, dec_layers


# --------------------------------------------------------------------------------------------------------
# Config, generation config, tokenizer
# --------------------------------------------------------------------------------------------------------


def _transformers() -> Any:
    """transformers, imported on first use (module import stays light) and used untyped: its
    annotations are partial and change between releases."""
    import transformers

    return transformers


@dataclass(frozen=True)
class SpecialTokens:
    """Whisper's special token ids, which follow from the vocabulary size alone."""

    vocab_size: int

    @property
    def multilingual(self) -> bool:
        return self.vocab_size >= MULTILINGUAL_VOCAB

    @property
    def eot(self) -> int:
        return 50257 if self.multilingual else 50256

    @property
    def sot(self) -> int:
        return self.eot + 1

    def from_end(self, name: str) -> int:
        return self.vocab_size - _FROM_END[name]


def _check_scalars(scalars: dict[str, int | float], path: Path) -> None:
    """Refuse CT2 flags that would make the HF architecture compute something else."""
    expected = {
        "decoder/activation": _GELU,
        "decoder/pre_norm": 1,
        "decoder/scale_embeddings": 0,
        "decoder/alibi": 0,
        "decoder/start_from_zero_embedding": 0,
    }
    for name, value in expected.items():
        if name in scalars and int(scalars[name]) != value:
            raise ModelError(
                f"{path}: '{name}' is {scalars[name]} where Whisper has {value}: not a standard Whisper model"
            )


def _heads(scalars: dict[str, int | float], side: str, d_model: int, path: Path) -> int:
    """Attention heads from CT2's ``num_heads`` flag; Whisper's head size is 64 when the flag is absent."""
    heads = int(scalars.get(f"{side}/num_heads", d_model // 64))
    if heads <= 0 or d_model % heads:
        raise ModelError(f"{path}: {heads} {side} heads do not divide d_model={d_model}")
    return heads


def build_whisper_config(
    ct2: Ct2File,
    weights: dict[str, Array],
    enc_layers: int,
    dec_layers: int,
    ct2_config: dict[str, Any],
    path: Path,
) -> Any:
    """WhisperConfig from tensor shapes (so 128-mel large-v3 and any size work without a table)."""
    WhisperConfig = _transformers().WhisperConfig

    _check_scalars(ct2.scalars, path)
    vocab, d_model = weights["model.decoder.embed_tokens.weight"].shape
    ids = SpecialTokens(int(vocab))
    return WhisperConfig(
        vocab_size=int(vocab),
        num_mel_bins=int(weights["model.encoder.conv1.weight"].shape[1]),
        d_model=int(d_model),
        encoder_layers=enc_layers,
        decoder_layers=dec_layers,
        encoder_attention_heads=_heads(ct2.scalars, "encoder", int(d_model), path),
        decoder_attention_heads=_heads(ct2.scalars, "decoder", int(d_model), path),
        encoder_ffn_dim=int(weights["model.encoder.layers.0.fc1.weight"].shape[0]),
        decoder_ffn_dim=int(weights["model.decoder.layers.0.fc1.weight"].shape[0]),
        max_source_positions=int(weights["model.encoder.embed_positions.weight"].shape[0]),
        max_target_positions=int(weights["model.decoder.embed_positions.weight"].shape[0]),
        pad_token_id=ids.eot,
        bos_token_id=ids.eot,
        eos_token_id=ids.eot,
        decoder_start_token_id=ids.sot,
        # Generation settings live in generation_config only: transformers 5 warns when the model config
        # carries them too (and 4.x added duplicate logits processors).
        suppress_tokens=None,
        begin_suppress_tokens=None,
        tie_word_embeddings=True,
    )


def _int_list(ct2_config: dict[str, Any], key: str) -> list[int] | None:
    """A list of token ids from CT2's config.json (null or absent: None; anything else: ModelError)."""
    value = ct2_config.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ModelError(f"the CTranslate2 config.json has a malformed '{key}' (not a list of token ids)")
    return [int(v) for v in value]


def _language_ids(ids: SpecialTokens, ct2_config: dict[str, Any]) -> list[int]:
    """Language token ids: CT2's ``lang_ids`` when present, else every id between SOT and translate."""
    listed = _int_list(ct2_config, "lang_ids")
    if listed:
        return listed
    return list(range(ids.sot + 1, ids.from_end("translate")))


def build_generation_config(config: Any, tokenizer: Any, ct2_config: dict[str, Any], path: Path) -> Any:
    """GenerationConfig by hand: what ``generate(language=..., task=...)`` reads; no forced_decoder_ids."""
    GenerationConfig = _transformers().GenerationConfig

    ids = SpecialTokens(config.vocab_size)
    gen = GenerationConfig(
        decoder_start_token_id=ids.sot,
        bos_token_id=ids.eot,
        eos_token_id=ids.eot,
        pad_token_id=ids.eot,
        max_length=config.max_target_positions,
        suppress_tokens=_int_list(ct2_config, "suppress_ids") or [],
        begin_suppress_tokens=_int_list(ct2_config, "suppress_ids_begin") or [220, ids.eot],
        forced_decoder_ids=None,
    )
    gen.no_timestamps_token_id = ids.from_end("notimestamps")
    gen.prev_sot_token_id = ids.from_end("startofprev")
    gen.is_multilingual = ids.multilingual
    gen.max_initial_timestamp_index = 50
    gen.return_timestamps = False
    heads = ct2_config.get("alignment_heads")
    if heads:
        if not all(isinstance(h, list) and len(h) == 2 and all(isinstance(x, int) for x in h) for h in heads):
            raise ModelError(f"{path}/config.json: 'alignment_heads' is not a list of [layer, head] pairs")
        gen.alignment_heads = [[int(layer), int(head)] for layer, head in heads]
    if ids.multilingual:
        tokens = tokenizer.convert_ids_to_tokens(_language_ids(ids, ct2_config))
        if not all(isinstance(t, str) and _LANGUAGE_TOKEN.match(t) for t in tokens):
            raise ModelError(
                f"{path}: the tokenizer has no language tokens where this model expects them",
                hint="use the tokenizer.json that belongs to this model",
            )
        gen.lang_to_id = dict(zip(tokens, _language_ids(ids, ct2_config), strict=True))
        gen.task_to_id = {"translate": ids.from_end("translate"), "transcribe": ids.from_end("transcribe")}
    return gen


def load_tokenizer(tokenizer_file: Path, vocab_size: int) -> Any:
    """WhisperTokenizerFast from a lone tokenizer.json, checked against the model's special-token layout.

    A tokenizer.json has no pad token (batch label padding would fail), so pad = ``<|endoftext|>``.
    Tokenizers without timestamp tokens (tiny.en's) get the 1501 ``<|0.00|>``… tokens the model has.
    """
    tf = _transformers()

    try:
        tokenizer = tf.WhisperTokenizerFast(
            tokenizer_file=str(tokenizer_file), pad_token="<|endoftext|>", model_max_length=448
        )
    except Exception as exc:  # tokenizers raises its own exception types for a bad file
        raise ModelError(f"cannot read the tokenizer {tokenizer_file}: {str(exc).splitlines()[0]}") from None
    ids = SpecialTokens(vocab_size)
    if len(tokenizer) == vocab_size - _TIMESTAMPS:
        stamps = [f"<|{i * 0.02:.2f}|>" for i in range(_TIMESTAMPS)]
        tokenizer.add_tokens(
            [tf.AddedToken(t, lstrip=False, rstrip=False, normalized=False, special=False) for t in stamps]
        )
    expected = {
        "<|endoftext|>": ids.eot,
        "<|startoftranscript|>": ids.sot,
        "<|notimestamps|>": ids.from_end("notimestamps"),
        "<|startofprev|>": ids.from_end("startofprev"),
        "<|0.00|>": ids.from_end("notimestamps") + 1,
    }
    wrong = {
        tok: tokenizer.convert_tokens_to_ids(tok)
        for tok, i in expected.items()
        if tokenizer.convert_tokens_to_ids(tok) != i
    }
    if wrong or len(tokenizer) != vocab_size:
        raise ModelError(
            f"the tokenizer {tokenizer_file} does not fit a Whisper model with {vocab_size} tokens "
            f"(it has {len(tokenizer)} tokens; misplaced: {wrong or 'none'})",
            hint="use the tokenizer.json that belongs to this model",
        )
    return tokenizer


# --------------------------------------------------------------------------------------------------------
# Conversion and the cache
# --------------------------------------------------------------------------------------------------------


def _build_model(config: Any, weights: dict[str, Array], path: Path) -> Any:
    """The HF model with our tensors assigned (built on the meta device: no wasted random init)."""
    import torch

    WhisperForConditionalGeneration = _transformers().WhisperForConditionalGeneration

    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    state = {name: torch.from_numpy(array) for name, array in weights.items()}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as exc:  # shape mismatches: the file's tensors do not belong to one model
        detail = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc))
        raise ModelError(f"{path}: the tensor shapes do not form one Whisper model ({detail})") from None
    if unexpected or set(missing) != {"proj_out.weight"}:
        raise RuntimeError(f"CT2 import bug: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
    model.proj_out.weight = model.model.decoder.embed_tokens.weight
    meta = [n for n, p in model.named_parameters(remove_duplicate=False) if p.is_meta]
    if meta:
        raise RuntimeError(f"CT2 import bug: parameters left unset: {meta[:3]}")
    return model.eval()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def staging_dir(target: Path) -> Iterator[Path]:
    """A fresh hidden directory next to ``target`` (same filesystem, so the final rename is atomic);
    removed again unless the caller renamed it away."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.partial-*"):  # left by a killed process
        with suppress(OSError):
            if time.time() - stale.stat().st_mtime > STALE_STAGING_SECONDS:
                shutil.rmtree(stale, ignore_errors=True)
    staging = target.parent / f".{target.name}.partial-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish(staging: Path, target: Path) -> bool:
    """Rename ``staging`` to ``target``; False (staging left for cleanup) if ``target`` appeared meanwhile."""
    try:
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        os.rename(staging, target)
    except OSError:
        if target.exists():
            return False
        raise
    return True


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Silence transformers' "Writing model shards" bar for one save (the caller reports progress)."""
    hf_logging = _transformers().utils.logging
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _write_hf_directory(ct2_dir: Path, tokenizer_file: Path, staging: Path) -> None:
    """Everything from_pretrained / WhisperProcessor.from_pretrained need, written into ``staging``."""
    config_path = ct2_dir / "config.json"
    ct2_config = read_json_object(config_path) if config_path.exists() else {}
    ct2 = read_ct2_file(ct2_dir / "model.bin")
    weights, enc_layers, dec_layers = map_weights(ct2, ct2_dir)
    config = build_whisper_config(ct2, weights, enc_layers, dec_layers, ct2_config, ct2_dir)
    tokenizer = load_tokenizer(tokenizer_file, config.vocab_size)
    model = _build_model(config, weights, ct2_dir)
    model.generation_config = build_generation_config(config, tokenizer, ct2_config, ct2_dir)
    with _no_progress_bars():
        model.save_pretrained(staging)
    tf = _transformers()
    # The hub's layout (tokenizer files + preprocessor_config.json), not transformers 5's single
    # processor_config.json: every transformers version, and anyone editing the extractor, reads it.
    tokenizer.save_pretrained(staging)
    tf.WhisperFeatureExtractor(feature_size=config.num_mel_bins).save_pretrained(staging)


def _match_mode(folder: Path, reference: Path) -> None:
    """Give every file the mode of one we wrote with open() (the user's umask): the safetensors writer
    makes its file owner-only, which breaks a cache shared through $WHISPER_TUNE_CACHE."""
    mode = reference.stat().st_mode & 0o777
    for item in folder.iterdir():
        if item.is_file():
            item.chmod(mode)


def _convert(ct2_dir: Path, out_dir: Path, tokenizer_file: Path | None, provenance: dict[str, Any]) -> bool:
    """Convert into a staging dir and rename it to ``out_dir``; False if someone else published first."""
    ct2_dir = Path(ct2_dir)
    if not (ct2_dir / "model.bin").is_file():
        raise ModelError(f"{ct2_dir} is not a CTranslate2 model directory (no model.bin)")
    tokenizer_file = Path(tokenizer_file) if tokenizer_file else ct2_dir / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise ModelError(
            f"no tokenizer for the CTranslate2 model {ct2_dir}: {tokenizer_file} does not exist",
            hint="pass tokenizer_file= (the tokenizer.json of the same Whisper model)",
        )
    cache_hint = f"free space there, or set {CACHE_ENV} to a larger disk"
    with (
        writing(
            f"the Hugging Face copy of {ct2_dir}",
            out_dir,
            # float32 weights from (mostly) float16 ones, and the tokenizer files
            needs=2 * (ct2_dir / "model.bin").stat().st_size + 2 * tokenizer_file.stat().st_size,
            hint=cache_hint,
            fix=f"set {CACHE_ENV} to a writable directory",
        ),
        staging_dir(out_dir) as staging,
    ):
        started = time.perf_counter()
        _write_hf_directory(ct2_dir, tokenizer_file, staging)
        marker = {
            **provenance,
            "source": str(ct2_dir.resolve()),
            "tokenizer": str(tokenizer_file.resolve()),
            "converter_version": CONVERTER_VERSION,
            "seconds": round(time.perf_counter() - started, 2),
        }
        (staging / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        _match_mode(staging, staging / MARKER_FILE)
        return publish(staging, out_dir)


def convert_ct2_directory(ct2_dir: Path, out_dir: Path, *, tokenizer_file: Path | None = None) -> Path:
    """Convert a CT2 Whisper directory into a Hugging Face directory at ``out_dir`` and return it.

    Weights are stored as float32 safetensors (the float16 source widens exactly; float32 storage means
    ``from_pretrained`` gives a trainable float32 model whatever its dtype default). The directory appears
    only when complete (written next to it, then renamed); an existing non-empty ``out_dir`` is an error.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ModelError(
            f"the output directory {out_dir} already exists", hint="remove it or choose another one"
        )
    if not _convert(Path(ct2_dir), out_dir, tokenizer_file, {}):
        raise ModelError(f"the output directory {out_dir} was created by someone else during the conversion")
    return out_dir


def cache_root(cache_dir: Path | None = None) -> Path:
    """Where whisper-tune keeps derived files: ``cache_dir``, else $WHISPER_TUNE_CACHE, else
    ~/.cache/whisper-tune."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "whisper-tune"


def import_key(ct2_dir: Path) -> tuple[str, dict[str, str]]:
    """Cache key: the content of model.bin, config.json and tokenizer.json plus CONVERTER_VERSION."""
    hashes = {
        name: _sha256(ct2_dir / name)
        for name in ("model.bin", "config.json", "tokenizer.json")
        if (ct2_dir / name).is_file()
    }
    if "model.bin" not in hashes:
        raise ModelError(f"{ct2_dir} is not a CTranslate2 model directory (no model.bin)")
    material = json.dumps({"converter_version": CONVERTER_VERSION, **hashes}, sort_keys=True)
    return hashlib.sha256(material.encode()).hexdigest()[:24], hashes


def import_ct2(ct2_dir: Path, cache_dir: Path | None = None) -> Path:
    """The Hugging Face directory for a CT2 directory, converted once and then reused from the cache
    (``<cache>/imported/<key>``); safe when several processes import the same model at once."""
    ct2_dir = Path(ct2_dir).expanduser()
    if not ct2_dir.is_dir():
        raise ModelError(f"the CTranslate2 model directory {ct2_dir} does not exist")
    key, hashes = import_key(ct2_dir)
    target = cache_root(cache_dir) / "imported" / key
    if (target / MARKER_FILE).is_file():
        return target
    if target.exists():  # a directory without the marker was not made by us: replace it
        shutil.rmtree(target)
    try:
        _convert(ct2_dir, target, None, {"sha256": hashes})
    except OSError as exc:
        raise ModelError(
            f"cannot write the imported model to {target}: {exc.strerror or exc}",
            hint=f"set {CACHE_ENV} to a writable directory",
        ) from None
    return target
