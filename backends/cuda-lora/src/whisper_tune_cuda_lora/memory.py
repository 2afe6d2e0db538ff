"""Model shapes, LoRA parameter counts and a GPU-memory estimate for LoRA training, without loading anything.

The estimate (GiB, 2**30 bytes) of peak allocated GPU memory while training is

    peak = weights + 16 B x LoRA parameters + OVERHEAD + batch x units x k[quantization, checkpointing]

* weights: the Linear layers at ``LINEAR_BYTES[quantization]`` per parameter (int8: 1, nf4/fp4: 0.5 plus
  the blockwise constants, none: the training dtype) and everything else (embeddings, convolutions,
  layer norms) at 4 bytes under int8/4bit (``prepare_model_for_kbit_training`` casts them to fp32) or
  the training dtype with quantization none;
* 16 bytes per trainable LoRA parameter: fp32 weight, gradient and AdamW's two moments;
* ``units`` = d_model x (1500 x encoder_layers + 448 x decoder_layers): activations scale with width,
  depth and sequence length (the 30 s encoder window and the longest label);
* ``k`` (bytes per unit per sample) is fitted to the team's earlier H100 measurements (``ANCHORS``):
  bf16 base + checkpointing 2.7, without 30; int8 + checkpointing 17.8; 4-bit + checkpointing 11.3 (the
  bitsandbytes kernels keep extra copies of their inputs for the backward pass). int8 and 4-bit without
  checkpointing were not measured: they are extrapolated as the bf16 value plus the kernels' extra
  (int8 45, 4-bit 39). fp32 activations (training.precision fp32) are taken as twice the bf16 ones.

``ANCHORS`` are reproduced within 3 % (a test checks it); other models, batch sizes and label lengths
are extrapolations: treat the estimate as +-15 % and the extrapolated modes as rougher still.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from whisper_tune_cuda_lora.options import Quantization

GIB = 2**30
ENCODER_FRAMES = 1500
LABEL_TOKENS = 448
#: fixed extra (allocator blocks, cuBLAS workspaces), GiB
OVERHEAD_GIB = 0.25
#: fraction of a GPU's total memory a run may plan to use (headroom for fragmentation and the context)
USABLE_FRACTION = 0.95
#: bytes per unit of activations per sample: (quantization, gradient checkpointing) -> k
ACTIVATION_BYTES: dict[tuple[str, bool], float] = {
    ("none", True): 2.7,
    ("none", False): 30.0,
    ("int8", True): 17.8,
    ("int8", False): 45.0,  # extrapolated, never measured
    ("4bit", True): 11.3,
    ("4bit", False): 39.0,  # extrapolated, never measured
}
#: the team's earlier H100 measurements the constants are fitted to:
#: (model, quantization, gradient checkpointing, batch, peak GiB)
ANCHORS: tuple[tuple[str, Quantization, bool, int, float], ...] = (
    ("openai/whisper-large-v2", "int8", True, 8, 12.7),  # the seeds' recipe (fp16 autocast)
    ("openai/whisper-large-v3", "none", False, 32, 74.6),  # plain peft LoRA on a bf16 base
    ("openai/whisper-large-v3", "none", True, 48, 13.0),
    ("openai/whisper-large-v3", "4bit", True, 8, 8.2),  # nf4, double quantisation
)


@dataclass(frozen=True)
class WhisperShape:
    d_model: int
    encoder_layers: int
    decoder_layers: int
    num_mel_bins: int = 80
    vocab_size: int = 51865
    ffn_dim: int = 0  # 0 = 4 x d_model

    @property
    def ffn(self) -> int:
        return self.ffn_dim or 4 * self.d_model

    @property
    def linear_params(self) -> int:
        """Weights of the Linear layers (what bitsandbytes quantises); biases are negligible."""
        d, f = self.d_model, self.ffn
        return self.encoder_layers * (4 * d * d + 2 * d * f) + self.decoder_layers * (8 * d * d + 2 * d * f)

    @property
    def other_params(self) -> int:
        """Token and decoder position embeddings, encoder positions, the two convolutions."""
        d = self.d_model
        return (self.vocab_size + LABEL_TOKENS + ENCODER_FRAMES) * d + 3 * self.num_mel_bins * d + 3 * d * d

    @property
    def params(self) -> int:
        return self.linear_params + self.other_params

    @property
    def activation_units(self) -> int:
        return self.d_model * (ENCODER_FRAMES * self.encoder_layers + LABEL_TOKENS * self.decoder_layers)


#: OpenAI's checkpoints by size name (vocabulary: English-only 51864, multilingual 51865, v3 51866).
KNOWN_SHAPES: dict[str, WhisperShape] = {
    "tiny": WhisperShape(384, 4, 4),
    "base": WhisperShape(512, 6, 6),
    "small": WhisperShape(768, 12, 12),
    "medium": WhisperShape(1024, 24, 24),
    "large": WhisperShape(1280, 32, 32),
    "large-v1": WhisperShape(1280, 32, 32),
    "large-v2": WhisperShape(1280, 32, 32),
    "large-v3": WhisperShape(1280, 32, 32, num_mel_bins=128, vocab_size=51866),
    "large-v3-turbo": WhisperShape(1280, 32, 4, num_mel_bins=128, vocab_size=51866),
    "turbo": WhisperShape(1280, 32, 4, num_mel_bins=128, vocab_size=51866),
}


def shape_from_name(name: str) -> WhisperShape | None:
    """``openai/whisper-large-v3``, ``pip:tiny.en``, ``whisper-small`` ... -> the known shape, else None."""
    key = name.rstrip("/").split("/")[-1].split(":")[-1].lower().removeprefix("whisper-")
    english = key.endswith(".en")
    shape = KNOWN_SHAPES.get(key.removesuffix(".en"))
    if shape is None or not english:
        return shape
    return WhisperShape(shape.d_model, shape.encoder_layers, shape.decoder_layers, shape.num_mel_bins, 51864)


def shape_from_config(config: dict[str, object]) -> WhisperShape | None:
    """A Hugging Face ``config.json`` of a Whisper model -> its shape (None if it is not one)."""
    try:
        return WhisperShape(
            d_model=int(config["d_model"]),  # type: ignore[call-overload]
            encoder_layers=int(config["encoder_layers"]),  # type: ignore[call-overload]
            decoder_layers=int(config["decoder_layers"]),  # type: ignore[call-overload]
            num_mel_bins=int(config.get("num_mel_bins", 80)),  # type: ignore[call-overload]
            vocab_size=int(config.get("vocab_size", 51865)),  # type: ignore[call-overload]
            ffn_dim=int(config.get("encoder_ffn_dim", 0)),  # type: ignore[call-overload]
        )
    except (KeyError, TypeError, ValueError):
        return None


def read_json(path: Path) -> dict[str, object] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def model_shape(name: str) -> WhisperShape | None:
    """The shape of the configured model: a local directory's config.json, else by name; None if unknown."""
    config = read_json(Path(name).expanduser() / "config.json")
    shape = shape_from_config(config) if config else None
    return shape or shape_from_name(name)


def lora_params(shape: WhisperShape, r: int, target_modules: tuple[str, ...]) -> int:
    """Trainable LoRA parameters: r x (in + out) per adapted Linear layer, counted over the whole model."""
    d, f = shape.d_model, shape.ffn
    per_module = {
        "q_proj": 2 * d,
        "k_proj": 2 * d,
        "v_proj": 2 * d,
        "out_proj": 2 * d,
        "fc1": d + f,
        "fc2": d + f,
    }
    attention = {"q_proj", "k_proj", "v_proj", "out_proj"}
    total = 0
    for name in set(target_modules) & set(per_module):
        # encoder: self-attention; decoder: self- and cross-attention (fc1/fc2 once per layer)
        per_decoder_layer = 2 if name in attention else 1
        total += r * per_module[name] * (shape.encoder_layers + per_decoder_layer * shape.decoder_layers)
    return total


def dtype_bytes(precision: str) -> int:
    return 4 if precision == "fp32" else 2


def static_gib(shape: WhisperShape, quantization: Quantization, precision: str, lora: int) -> float:
    """Weights + LoRA training state + fixed overhead, GiB."""
    weights: float
    if quantization == "none":
        weights = shape.params * dtype_bytes(precision)
    else:
        per_linear = 1.0 if quantization == "int8" else 0.5 + 4 / 64  # nf4/fp4 + blockwise fp32 absmax
        weights = shape.linear_params * per_linear + shape.other_params * 4
    return (weights + 16 * lora) / GIB + OVERHEAD_GIB


def per_sample_gib(
    shape: WhisperShape, quantization: Quantization, checkpointing: bool, precision: str
) -> float:
    k = ACTIVATION_BYTES[(quantization, checkpointing)]
    if precision == "fp32":
        k *= 2
    return shape.activation_units * k / GIB


def double_quant_adjust(shape: WhisperShape, quantization: Quantization, double_quant: bool) -> float:
    """Double quantisation stores the 4-bit absmax in 8 bits: 3/64 byte less per quantised weight."""
    if quantization == "4bit" and double_quant:
        return -shape.linear_params * (3 / 64) / GIB
    return 0.0


@dataclass(frozen=True)
class MemoryEstimate:
    static_gib: float
    per_sample_gib: float
    batch: int

    @property
    def peak_gib(self) -> float:
        return self.static_gib + self.batch * self.per_sample_gib

    def largest_batch(self, memory_gib: float) -> int:
        """The largest batch whose estimate fits ``USABLE_FRACTION`` of ``memory_gib`` (0: not even 1)."""
        room = memory_gib * USABLE_FRACTION - self.static_gib
        return max(0, math.floor(room / self.per_sample_gib)) if self.per_sample_gib > 0 else 0


def estimate(
    shape: WhisperShape,
    *,
    quantization: Quantization,
    checkpointing: bool,
    batch: int,
    precision: str = "bf16",
    lora_r: int = 32,
    target_modules: tuple[str, ...] = ("q_proj", "v_proj"),
    double_quant: bool = True,
) -> MemoryEstimate:
    """Peak training memory of LoRA on this shape (see the module docstring for the formula)."""
    lora = lora_params(shape, lora_r, target_modules)
    return MemoryEstimate(
        static_gib=static_gib(shape, quantization, precision, lora)
        + double_quant_adjust(shape, quantization, double_quant),
        per_sample_gib=per_sample_gib(shape, quantization, checkpointing, precision),
        batch=batch,
    )
