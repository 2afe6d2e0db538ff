"""The IPU pipeline planner: pure Python (no torch, no poptorch, no optimum-graphcore), works offline.

Given a Whisper architecture (``whisper_tune_ipu.models``) and the IPU options, ``plan_ipu`` returns a
frozen ``IpuPlan``: ``layers_per_ipu``, ``matmul_proportion``, ``ipus_per_replica``,
``replication_factor``, the inference (generation) layout, where every block sits, a per-IPU memory
estimate, and whether the plan is *published* (every layout in it was published, by Graphcore or a user,
for this model and pipeline depth), *heuristic* (some part comes from the heuristics below) or *custom*
(the user's own layouts). An impossible request raises ``PlanError`` with the reason and the config
key (``loc``) it is about.

Semantics follow optimum-graphcore 0.7.1 (``IPUConfig``, ``modeling_utils._expand_layers_per_ipu_wildcard``,
``split_encoder_decoder_ipu_config`` and ``PipelinedWhisperForConditionalGeneration.parallelize``):

* ``layers_per_ipu`` is expanded exactly as upstream does: ``[-1]`` or ``[-1] * ipus_per_replica`` is an
  even split with the whole remainder on the last IPU; mixed ``-1`` entries (only with one entry per IPU)
  share what the fixed entries leave, remainder on the last wildcard; otherwise there must be one entry
  per IPU and they must sum to the layer count. Upstream lets a negative wildcard result through
  (``[20, -1]`` on 12 layers gives ``[20, -8]``); we refuse it. Without ``ipus_per_replica``, upstream
  takes ``len(layers_per_ipu)``, so ``[-1]`` alone means one IPU; we refuse that with the reason.
* Encoder and decoder never share an IPU (upstream allows it in training; the issue and every published
  layout keep them apart). Generation runs the encoder and the decoder as two executables: the encoder
  part of ``inference_layers_per_ipu`` must end on an IPU boundary that is a power of two (upstream takes
  the largest such boundary), and each part needs at least one IPU, so generation needs >= 2 IPUs.
* Placement: conv1, conv2 and the encoder positions on IPU 0; the encoder layer norm with the last encoder
  layer; the token embedding, decoder positions and the tied LM head on the first decoder IPU (or the one
  non-zero entry of ``serialized_projection_splits_per_ipu``); the decoder layer norm with the last decoder
  layer.
* Pipeline stages: poptorch starts a new stage at every change of IPU in forward order, so the LM head
  going back to the first decoder IPU adds one. Training runs 2F - 1 stages for F forward stages and
  poptorch refuses ``gradientAccumulation`` below that (poptorch ``popart_compiler/Compiler.cpp``, user
  guide "Pipelined execution"): ``IpuPlan.min_gradient_accumulation_steps``.
* IPU counts: Poplar hands out multi-IPU devices in powers of two and optimum-graphcore's ``n_ipu`` is
  documented as "a power of 2 and a multiple of ipus_per_replica", so ``ipus`` must be a power of two and
  ``ipus_per_replica`` must divide it (hence is one too); ``replication_factor = ipus // ipus_per_replica``.
  ``use_encoder_output_buffer`` needs ``inference_replication_factor == 1``.
* ``inference_matmul_proportion`` defaults as upstream: the training value, unless that is a list whose
  length differs from ``inference_ipus_per_replica``, in which case upstream silently uses 0.2.

Published layouts (``PUBLISHED_TRAINING``, ``PUBLISHED_INFERENCE``; sources in each entry) are used as they
are. Everything else comes from these heuristics (never run on IPU hardware):

* **Side split** (``split_side``): a side's layers are spread evenly over its IPUs with the remainder
  towards the back; when a side has at least ``LIGHTER_FIRST_MIN_LAYERS`` (8) layers, one layer moves from
  its first IPU to its second, because the first encoder IPU also holds the conv front end and the first
  decoder IPU the embedding and LM head. This reproduces every published training layout (tiny/2 [4,4],
  tiny/4 [2,2,2,2], small/4 [5,7,5,7]).
* **Encoder/decoder IPUs** (training): half each when the encoder and decoder have as many layers (as in
  every published layout); otherwise (turbo: 32 + 4) the split whose largest per-IPU estimate is
  smallest, ties going to the one nearest half-and-half.
* **Pipeline depth** (``ipus_per_replica``): the published depth where there is one (tiny 2, small 4),
  else the smallest power of two whose heuristic layout fits the memory budget at micro-batch 1 (the IPU
  trainer's default ``per_device_train_batch_size`` and seed 004's).
* **matmul_proportion** (heuristic plans): ``ENCODER_MATMUL_PROPORTION`` 0.2 on encoder IPUs and
  ``DECODER_MATMUL_PROPORTION`` 0.6 on decoder IPUs, as in the fine-tuning notebook's small/4 layout
  (the encoder's activations are long: 1500 frames; the decoder's are short).
* **projection_serialization_factor** (heuristic plans): ``DEFAULT_PROJECTION_SERIALIZATION_FACTOR`` 5, the
  fine-tuning notebook's value, not tuned per size.
* **Inference layout** (no published one): the encoder gets the smallest power-of-two number of IPUs whose
  layout fits the budget, the decoder the smallest number that fits, judged at eval batch 1 (as the
  depth is at micro-batch 1); if nothing within the IPUs fits, the layout with the smallest peak (with a
  warning). One generation replica while ``use_encoder_output_buffer`` is on, else as many as fit.

Memory estimate (``training_memory`` / ``inference_memory``; decimal MB), per IPU:

* budget: ``IPU_MEMORY_MB`` 900 (In-Processor-Memory of a GC200 / Bow IPU, Graphcore's product sheets) x
  ``USABLE_FRACTION`` 0.7 = 630 MB. The other 30 % is left for what the estimate does not model: compiled
  code, exchange buffers, pipeline stashes of in-flight micro-batches, Poplar's own overheads. 0.7 is
  calibrated so that every published layout fits: the tightest, medium.en inference [12,12,13,11], puts
  about 577 MB on its first decoder IPU (eval batch 1, a 448-position KV cache).
* training: parameters x (2 bytes fp16 weight + 2 bytes fp16 gradient, + 8 bytes fp32 Adam moments when the
  optimizer state is on chip) + 2 x the largest working set of one layer on that IPU (the model runs in
  fp16 and recomputes every layer, so one layer's activations and their gradients are live at a time) +
  the conv front end's activations (IPU 0) + the logits and their gradient (LM-head IPU).
* inference: parameters x 2 bytes + one layer's forward working set + on decoder IPUs the self-attention
  KV cache (and the cross-attention cache with ``use_cross_cache``), the encoder output buffer and the
  logits of one step.
* working sets, fp16, per sample: encoder layer hT^2 (attention probabilities, softmax in place) + 2Tf
  (feed-forward) + 8Td (projections, residuals, norms); decoder layer hL^2 + hLT (cross-attention) + 2Lf +
  10Ld + 2Td (cross keys/values); one generation step h(L + T) + 2Td; front end (mels + d) x 3000 +
  d x 1500; with T = 1500 frames, L = the padded label length (generation: the cache length), f the
  feed-forward width, h the heads. Attention at T = 1500 dominates: for large it is 90 MB per sample and
  layer, twice that in training, which is why the estimate wants many IPUs for the big models (the
  encoder attention's batch/sequence serialisation in optimum-graphcore would cut it; it is not modelled).
It is a starting point for a compile-only check on a machine with the SDK, not a guarantee.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from whisper_tune.errors import ConfigError
from whisper_tune_ipu.models import ENCODER_FRAMES, MEL_FRAMES, WhisperArch

IPU_MEMORY_MB = 900.0
USABLE_FRACTION = 0.7
BUDGET_MB = IPU_MEMORY_MB * USABLE_FRACTION
FP16 = 2
LIGHTER_FIRST_MIN_LAYERS = 8
ENCODER_MATMUL_PROPORTION = 0.2
DECODER_MATMUL_PROPORTION = 0.6
#: optimum-graphcore's fallback for inference_matmul_proportion (and IPUConfig's default).
UPSTREAM_DEFAULT_MATMUL_PROPORTION = 0.2
DEFAULT_PROJECTION_SERIALIZATION_FACTOR = 5
#: The largest IPU count planned for (an IPU-POD256); more is refused as implausible.
MAX_IPUS = 256

#: published: every layout in the plan was published for this model and pipeline depth; heuristic: some
#: part comes from the heuristics above; custom: the user set the layouts and none is a published one.
Source = Literal["published", "heuristic", "custom"]


class PlanError(ConfigError):
    """The planner refuses the request; ``loc`` is the config key it is about."""

    def __init__(self, message: str, hint: str | None = None, loc: str = "backend") -> None:
        super().__init__(message, hint)
        self.loc = loc


# --------------------------------------------------------------------------------------------------------
# Published layouts
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PublishedTraining:
    layers_per_ipu: tuple[int, ...]
    matmul_proportion: tuple[float, ...]
    source: str
    projection_serialization_factor: int | None = None
    serialized_projection_splits_per_ipu: tuple[int, ...] | None = None
    #: The inference layout published together with it (None: the family's published inference layout).
    inference_layers_per_ipu: tuple[int, ...] | None = None


@dataclass(frozen=True)
class PublishedInference:
    layers_per_ipu: tuple[int, ...]
    source: str


NOTEBOOK = "optimum-graphcore 0.7.1 notebooks/whisper_finetuning.ipynb"
INFERENCE_NOTEBOOK = "optimum-graphcore 0.7.1 notebooks/whisper-example.ipynb"

#: (family, ipus_per_replica) -> a published training layout.
PUBLISHED_TRAINING: dict[tuple[str, int], PublishedTraining] = {
    ("tiny", 2): PublishedTraining(
        (4, 4),
        (0.6, 0.6),
        "Hugging Face Hub Graphcore/whisper-tiny-ipu ipu_config.json (optimum-graphcore PR #400); "
        "matmul_proportion 0.6 for every IPU",
        projection_serialization_factor=4,
    ),
    ("tiny", 4): PublishedTraining(
        (2, 2, 2, 2),
        (0.2, 0.2, 0.6, 0.6),
        "Hugging Face Hub TheAIchemist13/whisper-tiny-hi-model ipu_config.json: a user's adaptation of "
        f"{NOTEBOOK} to tiny (not Graphcore's)",
        projection_serialization_factor=5,
        inference_layers_per_ipu=(4, 4),
    ),
    ("small", 4): PublishedTraining(
        (5, 7, 5, 7),
        (0.2, 0.2, 0.6, 0.6),
        NOTEBOOK + " (seed 004)",
        projection_serialization_factor=5,
        inference_layers_per_ipu=(12, 12),
    ),
    ("small", 8): PublishedTraining(
        (1, 2, 3, 3, 3, 0, 6, 6),
        (0.6, 0.6, 0.2, 0.2, 0.2, 0.6, 0.2, 0.2),
        "Hugging Face Hub Graphcore/whisper-small-ipu ipu_config.json (training only; IPU 5 holds just "
        "the embedding and LM head)",
        serialized_projection_splits_per_ipu=(0, 0, 0, 0, 0, 4, 0, 0),
    ),
}

#: family -> published generation layout.
PUBLISHED_INFERENCE: dict[str, PublishedInference] = {
    "tiny": PublishedInference(
        (4, 4), f"{INFERENCE_NOTEBOOK} (tiny.en, 2 IPUs) and Graphcore/whisper-tiny-ipu"
    ),
    "base": PublishedInference((6, 6), f"{INFERENCE_NOTEBOOK} (base.en on 2 IPUs, even split)"),
    "small": PublishedInference((12, 12), f"{NOTEBOOK} and {INFERENCE_NOTEBOOK}"),
    "medium": PublishedInference((12, 12, 13, 11), f"{INFERENCE_NOTEBOOK} (medium.en)"),
    "large": PublishedInference(
        (8, 8, 8, 8, 6, 9, 9, 8),
        f"{INFERENCE_NOTEBOOK} (large-v2) and examples/speech-recognition/run_whisper_pipeline.py",
    ),
}

#: family -> published pipeline depth (the IPUs per replica of its reference fine-tuning recipe).
PUBLISHED_DEPTH: dict[str, tuple[int, str]] = {
    "tiny": (2, "Graphcore/whisper-tiny-ipu"),
    "small": (4, NOTEBOOK),
}


# --------------------------------------------------------------------------------------------------------
# Request and plan
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanRequest:
    """What the user asked for (None: let the planner choose) and the recipe facts the estimate needs."""

    ipus: int | None = None
    ipus_per_replica: int | None = None
    layers_per_ipu: tuple[int, ...] | None = None
    matmul_proportion: float | tuple[float, ...] | None = None
    projection_serialization_factor: int | None = None
    serialized_projection_splits_per_ipu: tuple[int, ...] | None = None
    inference_layers_per_ipu: tuple[int, ...] | None = None
    inference_ipus_per_replica: int | None = None
    inference_replication_factor: int | None = None
    inference_matmul_proportion: float | tuple[float, ...] | None = None
    use_cache: bool = True
    use_cross_cache: bool = False
    use_encoder_output_buffer: bool = True
    optimizer_state_offchip: bool = True
    #: training micro-batch per replica (training.batch_size).
    micro_batch_size: int = 1
    #: labels are padded to this length (backend.max_label_length).
    max_label_length: int = 224
    eval_batch_size: int = 1
    num_beams: int = 1
    #: decoder positions of the generation KV cache.
    generation_max_length: int = 448


@dataclass(frozen=True)
class IpuPlan:
    model: str
    ipus: int
    ipus_per_replica: int
    replication_factor: int
    layers_per_ipu: tuple[int, ...]
    #: IPUs 0 .. encoder_ipus-1 hold the encoder (training pipeline).
    encoder_ipus: int
    matmul_proportion: tuple[float, ...]
    projection_serialization_factor: int | None
    serialized_projection_splits_per_ipu: tuple[int, ...] | None
    #: IPU holding the token embedding and the tied LM head.
    lm_head_ipu: int
    #: forward pipeline stages of the training model (training runs 2F - 1).
    pipeline_stages: int
    inference_layers_per_ipu: tuple[int, ...]
    inference_ipus_per_replica: int
    inference_replication_factor: int
    #: the encoder executable runs on this many IPUs (a power of two), the decoder on the rest.
    inference_encoder_ipus: int
    inference_matmul_proportion: tuple[float, ...]
    source: Source
    training_source: str
    inference_source: str
    memory_mb: tuple[float, ...]
    inference_memory_mb: tuple[float, ...]
    budget_mb: float = BUDGET_MB
    notes: tuple[str, ...] = field(default=())
    encoder_layers: int = 0
    decoder_layers: int = 0

    @property
    def min_gradient_accumulation_steps(self) -> int:
        return 2 * self.pipeline_stages - 1

    @property
    def decoder_ipus(self) -> int:
        return self.ipus_per_replica - self.encoder_ipus

    @property
    def inference_decoder_ipus(self) -> int:
        return self.inference_ipus_per_replica - self.inference_encoder_ipus

    def ipu_config(self) -> dict[str, Any]:
        """The planner's part of an optimum-graphcore ``IPUConfig``: explicit values, no wildcards."""
        config: dict[str, Any] = {
            "ipus_per_replica": self.ipus_per_replica,
            "replication_factor": self.replication_factor,
            "layers_per_ipu": list(self.layers_per_ipu),
            "matmul_proportion": list(self.matmul_proportion),
            "inference_ipus_per_replica": self.inference_ipus_per_replica,
            "inference_replication_factor": self.inference_replication_factor,
            "inference_layers_per_ipu": list(self.inference_layers_per_ipu),
            "inference_matmul_proportion": list(self.inference_matmul_proportion),
        }
        if self.serialized_projection_splits_per_ipu is not None:
            config["serialized_projection_splits_per_ipu"] = list(self.serialized_projection_splits_per_ipu)
        else:
            config["projection_serialization_factor"] = self.projection_serialization_factor
        return config

    def placement(self) -> tuple[str, ...]:
        """One line per training IPU, then the generation layout."""
        lines = []
        enc_ipu = _layer_ipus(self.layers_per_ipu)
        last_enc, last_dec = enc_ipu[self.encoder_layers - 1], enc_ipu[-1]
        for ipu in range(self.ipus_per_replica):
            parts = []
            layers = [i for i, x in enumerate(enc_ipu) if x == ipu]
            enc = [i for i in layers if i < self.encoder_layers]
            dec = [i - self.encoder_layers for i in layers if i >= self.encoder_layers]
            if enc:
                parts.append(f"encoder layers {_span(enc)}")
            if dec:
                parts.append(f"decoder layers {_span(dec)}")
            extras = []
            if ipu == 0:
                extras.append("conv front end, encoder positions")
            if ipu == last_enc:
                extras.append("encoder layer norm")
            if ipu == self.lm_head_ipu:
                extras.append("token embedding, decoder positions, LM head (tied)")
            if ipu == last_dec:
                extras.append("decoder layer norm")
            text = ", ".join(parts) if parts else "no layers"
            if extras:
                text += f" (+ {'; '.join(extras)})"
            lines.append(
                f"IPU{ipu}: {text}; matmul {self.matmul_proportion[ipu]:g}; ~{self.memory_mb[ipu]:.0f} MB"
            )
        k = self.inference_encoder_ipus
        enc_layout = list(self.inference_layers_per_ipu[:k])
        dec_layout = list(self.inference_layers_per_ipu[k:])
        lines.append(
            f"generation: encoder executable on {k} IPU{'s' if k > 1 else ''} {enc_layout}, decoder "
            f"executable on {len(dec_layout)} IPU{'s' if len(dec_layout) > 1 else ''} {dec_layout}; "
            f"~{max(self.inference_memory_mb):.0f} MB on the fullest IPU"
        )
        return tuple(lines)


def _span(indices: Sequence[int]) -> str:
    return f"{indices[0]}-{indices[-1]}" if len(indices) > 1 else f"{indices[0]}"


def _layer_ipus(layers_per_ipu: Sequence[int]) -> list[int]:
    """The IPU of each layer, in order (upstream ``get_layer_ipu``)."""
    out: list[int] = []
    for ipu, count in enumerate(layers_per_ipu):
        out += [ipu] * count
    return out


def is_power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


# --------------------------------------------------------------------------------------------------------
# optimum-graphcore 0.7.1 semantics
# --------------------------------------------------------------------------------------------------------


def expand_layers_per_ipu(
    layers_per_ipu: Sequence[int], ipus_per_replica: int, total_layers: int, key: str = "layers_per_ipu"
) -> tuple[int, ...]:
    """Upstream's wildcard expansion, refusing what upstream would fail on later or let through.

    Raises PlanError for entries below -1, a length that does not match ``ipus_per_replica``, counts
    that do not sum to ``total_layers``, and a negative wildcard result (upstream: ``[20, -1]`` on 12
    layers silently gives ``[20, -8]``).
    """
    loc = f"backend.{key}"
    layers = list(layers_per_ipu)
    if not layers:
        raise PlanError(f"{key} is empty", loc=loc)
    if any(n < -1 for n in layers):
        raise PlanError(f"{key}={layers}: entries must be -1 (wildcard) or a layer count >= 0", loc=loc)
    if ipus_per_replica == 1:
        return (total_layers,)  # upstream puts everything on IPU 0, whatever the list says
    if layers in ([-1], [-1] * ipus_per_replica):
        q, r = divmod(total_layers, ipus_per_replica)
        out = [q] * ipus_per_replica
        out[-1] += r
        return tuple(out)
    if len(layers) != ipus_per_replica:
        raise PlanError(
            f"{key}={layers} has {len(layers)} entries for {ipus_per_replica} IPUs per replica",
            hint="give one entry per IPU (or [-1] for an even split)",
            loc=loc,
        )
    if -1 in layers:
        wild = [i for i, n in enumerate(layers) if n == -1]
        left = total_layers - sum(n for n in layers if n != -1)
        q, r = divmod(left, len(wild))
        if left < 0:
            raise PlanError(
                f"{key}={layers}: the fixed entries already place {total_layers - left} layers but the "
                f"model has {total_layers}; optimum-graphcore 0.7.1 would silently give the wildcards "
                f"{q} layers each",
                hint=f"the entries must add up to {total_layers}",
                loc=loc,
            )
        for i in wild:
            layers[i] = q
        layers[wild[-1]] += r
        return tuple(layers)
    if sum(layers) != total_layers:
        raise PlanError(
            f"{key}={layers} places {sum(layers)} layers but the model has {total_layers} "
            "(encoder + decoder)",
            hint=f"the entries must add up to {total_layers}",
            loc=loc,
        )
    return tuple(layers)


def generation_cut(layers: Sequence[int], encoder_layers: int) -> int | None:
    """Upstream's encoder/decoder split for generation: the largest power-of-two IPU boundary at which
    exactly the encoder's layers have been placed (None: there is none, generation is impossible)."""
    total = 0
    cuts = []
    for i, n in enumerate(layers):
        total += n
        if total == encoder_layers:
            cuts.append(i + 1)
    good = [c for c in cuts if is_power_of_two(c) and c < len(layers)]
    return max(good) if good else None


def inference_matmul_fallback(
    matmul: float | tuple[float, ...], inference_ipus: int
) -> tuple[tuple[float, ...], bool]:
    """Upstream's default for inference_matmul_proportion: (value per inference IPU, fell back to 0.2)."""
    if isinstance(matmul, tuple):
        if len(matmul) != inference_ipus:
            return (UPSTREAM_DEFAULT_MATMUL_PROPORTION,) * inference_ipus, True
        return matmul, False
    return (matmul,) * inference_ipus, False


def split_side(n_layers: int, n_ipus: int) -> list[int]:
    """The side-split heuristic: even, remainder to the back, one layer off a side's first IPU when it
    has >= LIGHTER_FIRST_MIN_LAYERS layers (the first IPU also holds the front end or the embedding)."""
    q, r = divmod(n_layers, n_ipus)
    out = [q] * n_ipus
    for i in range(r):
        out[n_ipus - 1 - i] += 1
    if n_ipus >= 2 and n_layers >= LIGHTER_FIRST_MIN_LAYERS and out[0] >= 2:
        out[0] -= 1
        out[1] += 1
    return out


# --------------------------------------------------------------------------------------------------------
# Memory estimate
# --------------------------------------------------------------------------------------------------------


def _encoder_layer_working_set(arch: WhisperArch, batch: int) -> float:
    t, d, h, f = ENCODER_FRAMES, arch.d_model, arch.encoder_attention_heads, arch.encoder_ffn_dim
    return float(FP16 * batch * (h * t * t + 2 * t * f + 8 * t * d))


def _decoder_layer_working_set(arch: WhisperArch, batch: int, length: int) -> float:
    t, d, h, f = ENCODER_FRAMES, arch.d_model, arch.decoder_attention_heads, arch.decoder_ffn_dim
    n = length
    return float(FP16 * batch * (h * n * n + h * n * t + 2 * n * f + 10 * n * d + 2 * t * d))


def _front_end_working_set(arch: WhisperArch, batch: int) -> float:
    d = arch.d_model
    return float(FP16 * batch * ((arch.num_mel_bins + d) * MEL_FRAMES + d * ENCODER_FRAMES))


def _ipu_parameters(arch: WhisperArch, layers: Sequence[int], lm_head_ipu: int) -> list[float]:
    """Parameters per IPU for a layout whose first ``arch.encoder_layers`` layers are the encoder's."""
    owner = _layer_ipus(layers)
    params = [0.0] * len(layers)
    params[0] += arch.front_end_parameters()
    for i, ipu in enumerate(owner):
        if i < arch.encoder_layers:
            params[ipu] += arch.encoder_layer_parameters()
        else:
            params[ipu] += arch.decoder_layer_parameters()
    params[owner[arch.encoder_layers - 1]] += 2 * arch.d_model
    params[owner[-1]] += 2 * arch.d_model
    params[lm_head_ipu] += arch.embedding_parameters()
    return params


def training_memory(
    arch: WhisperArch,
    layers: Sequence[int],
    lm_head_ipu: int,
    *,
    micro_batch: int,
    label_length: int,
    optimizer_offchip: bool,
) -> tuple[float, ...]:
    """Estimated MB per IPU while training (see the module docstring for the model and its constants)."""
    owner = _layer_ipus(layers)
    bytes_per_param = FP16 + FP16 + (0 if optimizer_offchip else 8)
    params = _ipu_parameters(arch, layers, lm_head_ipu)
    enc_ws = _encoder_layer_working_set(arch, micro_batch)
    dec_ws = _decoder_layer_working_set(arch, micro_batch, label_length)
    out = []
    for ipu in range(len(layers)):
        held = [i for i, x in enumerate(owner) if x == ipu]
        working = max([enc_ws if i < arch.encoder_layers else dec_ws for i in held], default=0.0)
        total = params[ipu] * bytes_per_param + 2 * working
        if ipu == 0:
            total += 2 * _front_end_working_set(arch, micro_batch)
        if ipu == lm_head_ipu:
            total += 2 * FP16 * micro_batch * label_length * arch.vocab_size
        out.append(round(total / 1e6, 1))
    return tuple(out)


def inference_memory(
    arch: WhisperArch, layers: Sequence[int], encoder_ipus: int, request: PlanRequest
) -> tuple[float, ...]:
    """Estimated MB per IPU while generating (encoder and decoder executables)."""
    batch = request.eval_batch_size * request.num_beams
    length = request.generation_max_length
    owner = _layer_ipus(layers)
    lm_head = encoder_ipus
    params = _ipu_parameters(arch, layers, lm_head)
    d, t = arch.d_model, ENCODER_FRAMES
    enc_ws = _encoder_layer_working_set(arch, request.eval_batch_size)
    dec_ws = float(FP16 * batch * (arch.decoder_attention_heads * (length + t) + 2 * t * d))
    out = []
    for ipu in range(len(layers)):
        held = [i for i, x in enumerate(owner) if x == ipu]
        total = params[ipu] * FP16
        if ipu < encoder_ipus:
            total += enc_ws if held else 0.0
            if ipu == 0:
                total += _front_end_working_set(arch, request.eval_batch_size)
        else:
            n_dec = len(held)
            total += dec_ws if held else 0.0
            if request.use_cache:
                total += 2 * n_dec * FP16 * batch * length * d
            if request.use_cross_cache:
                total += 2 * n_dec * FP16 * batch * t * d
            if ipu == lm_head:
                total += FP16 * batch * arch.vocab_size
                if request.use_encoder_output_buffer:
                    total += FP16 * request.eval_batch_size * t * d
        out.append(round(total / 1e6, 1))
    return tuple(out)


# --------------------------------------------------------------------------------------------------------
# Heuristic layouts
# --------------------------------------------------------------------------------------------------------


def _memory_at_depth(
    arch: WhisperArch, request: PlanRequest, micro_batch: int
) -> Callable[[Sequence[int], int], tuple[float, ...]]:
    def estimate(layers: Sequence[int], lm_head_ipu: int) -> tuple[float, ...]:
        return training_memory(
            arch,
            layers,
            lm_head_ipu,
            micro_batch=micro_batch,
            label_length=request.max_label_length,
            optimizer_offchip=request.optimizer_state_offchip,
        )

    return estimate


def heuristic_training_layout(
    arch: WhisperArch, depth: int, request: PlanRequest, micro_batch: int = 1
) -> tuple[tuple[int, ...], int] | None:
    """(layers_per_ipu, encoder IPUs) for a pipeline of ``depth`` IPUs, or None if some IPU would get no
    layer. Each side is laid out with ``split_side``. A model with as many encoder as decoder layers gets
    half the IPUs per side (as every published layout); otherwise the split of the IPUs whose largest
    per-IPU estimate is smallest wins, ties going to the one nearest half-and-half.
    """
    estimate = _memory_at_depth(arch, request, micro_batch)
    candidates = [e for e in range(1, depth) if e <= arch.encoder_layers and depth - e <= arch.decoder_layers]
    if arch.encoder_layers == arch.decoder_layers and depth // 2 in candidates:
        candidates = [depth // 2]
    best: tuple[float, float, tuple[int, ...], int] | None = None
    for enc_ipus in candidates:
        layers = tuple(
            split_side(arch.encoder_layers, enc_ipus) + split_side(arch.decoder_layers, depth - enc_ipus)
        )
        key = (max(estimate(layers, enc_ipus)), abs(enc_ipus - depth / 2), layers, enc_ipus)
        if best is None or key[:2] < best[:2]:
            best = key
    return None if best is None else (best[2], best[3])


def max_depth(arch: WhisperArch) -> int:
    """The deepest power-of-two pipeline that leaves no IPU without a layer."""
    depth = 2
    while depth * 2 <= arch.total_layers and heuristic_training_layout_possible(arch, depth * 2):
        depth *= 2
    return depth


def heuristic_training_layout_possible(arch: WhisperArch, depth: int) -> bool:
    return any(e <= arch.encoder_layers and depth - e <= arch.decoder_layers for e in range(1, depth))


def default_depth(arch: WhisperArch, request: PlanRequest) -> tuple[int | None, str]:
    """The model's pipeline depth: published, else the smallest power of two that fits at micro-batch 1.

    Returns (None, reason) when no depth fits the budget.
    """
    if arch.family in PUBLISHED_DEPTH:
        depth, source = PUBLISHED_DEPTH[arch.family]
        return depth, f"published: {source}"
    depth = 2
    deepest = max_depth(arch)
    while depth <= deepest:
        layout = heuristic_training_layout(arch, depth, request)
        if layout is not None:
            peak = max(_memory_at_depth(arch, request, 1)(layout[0], layout[1]))
            if peak <= BUDGET_MB:
                return depth, (
                    f"heuristic: the smallest power-of-two pipeline whose estimate fits {BUDGET_MB:.0f} MB "
                    f"per IPU at micro-batch 1, largest {peak:.0f} MB"
                )
        depth *= 2
    return None, (
        f"no pipeline of up to {deepest} IPUs fits the estimate of {BUDGET_MB:.0f} MB per IPU at "
        "micro-batch 1"
    )


def heuristic_inference_layout(
    arch: WhisperArch, request: PlanRequest, ipus: int
) -> tuple[tuple[int, ...], int, bool]:
    """(layers, encoder IPUs, fits) for generation on at most ``ipus`` IPUs (>= 2).

    Chosen at eval batch 1 without beams, as the training depth is chosen at micro-batch 1: the fewest
    IPUs (power-of-two encoder part) that fit the budget, else the layout with the smallest peak.
    """
    single = replace(request, eval_batch_size=1, num_beams=1)
    candidates = []
    enc = 1
    while enc <= min(arch.encoder_layers, ipus - 1):
        for dec in range(1, min(arch.decoder_layers, ipus - enc) + 1):
            layers = tuple(split_side(arch.encoder_layers, enc) + split_side(arch.decoder_layers, dec))
            peak = max(inference_memory(arch, layers, enc, single))
            candidates.append((peak > BUDGET_MB, enc + dec, peak, layers, enc))
        enc *= 2
    fitting = [c for c in candidates if not c[0]]
    if fitting:
        best = min(fitting, key=lambda c: (c[1], c[2]))
        return best[3], best[4], True
    best = min(candidates, key=lambda c: (c[2], c[1]))
    return best[3], best[4], False


# --------------------------------------------------------------------------------------------------------
# The planner
# --------------------------------------------------------------------------------------------------------


def _check_ipus(ipus: int, key: str = "ipus") -> None:
    if ipus < 1 or ipus > MAX_IPUS or not is_power_of_two(ipus):
        raise PlanError(
            f"{key}={ipus}: IPUs come in power-of-two partitions (1, 2, 4, ... {MAX_IPUS})",
            hint="optimum-graphcore's n_ipu must be a power of two and a multiple of ipus_per_replica",
            loc=f"backend.{key}",
        )


def _matmul(value: float | tuple[float, ...] | None, ipus: int, key: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    if isinstance(value, tuple):
        if len(value) != ipus:
            raise PlanError(
                f"{key}={list(value)} has {len(value)} entries for {ipus} IPUs",
                hint="give one value per IPU, or a single number for all",
                loc=f"backend.{key}",
            )
        return value
    return (value,) * ipus


def _lm_head_ipu(layers: Sequence[int], encoder_layers: int, splits: tuple[int, ...] | None) -> int:
    owner = _layer_ipus(layers)
    if splits is None:
        return owner[encoder_layers]
    nonzero = [i for i, n in enumerate(splits) if n]
    if len(splits) != len(layers):
        raise PlanError(
            f"serialized_projection_splits_per_ipu has {len(splits)} entries for {len(layers)} IPUs",
            loc="backend.serialized_projection_splits_per_ipu",
        )
    if not nonzero:
        raise PlanError(
            "serialized_projection_splits_per_ipu needs at least one split on one IPU",
            loc="backend.serialized_projection_splits_per_ipu",
        )
    if len(nonzero) > 1:
        raise PlanError(
            f"serialized_projection_splits_per_ipu={list(splits)}: for Whisper the LM head is tied to the "
            "embedding, so all its splits must sit on one IPU (optimum-graphcore refuses more)",
            loc="backend.serialized_projection_splits_per_ipu",
        )
    ipu = nonzero[0]
    if ipu <= owner[encoder_layers - 1]:
        raise PlanError(
            f"serialized_projection_splits_per_ipu puts the embedding and LM head on IPU{ipu}, which "
            "holds encoder layers; they belong to the decoder's IPUs",
            loc="backend.serialized_projection_splits_per_ipu",
        )
    return ipu


def pipeline_stages(layers: Sequence[int], encoder_layers: int, lm_head_ipu: int) -> int:
    """Forward pipeline stages: poptorch starts a stage at each change of IPU in execution order."""
    owner = _layer_ipus(layers)
    order = [0, *owner[:encoder_layers], owner[encoder_layers - 1], lm_head_ipu]
    order += [*owner[encoder_layers:], owner[-1], lm_head_ipu]
    stages = 1
    for prev, cur in itertools.pairwise(order):
        stages += prev != cur
    return stages


@dataclass(frozen=True)
class _Layout:
    layers: tuple[int, ...]
    source: str
    published: PublishedTraining | None = None
    fits: bool = True


def _choose_depth(arch: WhisperArch, req: PlanRequest) -> tuple[int, int, str]:
    """(ipus, ipus_per_replica, why that depth)."""
    if req.ipus is not None:
        _check_ipus(req.ipus)
    explicit = req.ipus_per_replica is not None or req.layers_per_ipu is not None
    if req.ipus_per_replica is not None:
        depth, why = req.ipus_per_replica, "set by backend.ipus_per_replica"
    elif req.layers_per_ipu is not None:
        depth, why = len(req.layers_per_ipu), "the length of backend.layers_per_ipu (as optimum-graphcore)"
        if depth == 1:
            raise PlanError(
                f"layers_per_ipu={list(req.layers_per_ipu)} without ipus_per_replica means a 1-IPU pipeline "
                "in optimum-graphcore (ipus_per_replica defaults to the list's length)",
                hint="set backend.ipus_per_replica, or give one entry per IPU",
                loc="backend.ipus_per_replica",
            )
    else:
        found, why = default_depth(arch, req)
        if found is None:
            raise PlanError(
                f"{arch.name} does not fit any IPU pipeline by the memory estimate: {why}",
                hint="set backend.ipus_per_replica (and layers_per_ipu) to plan one anyway",
                loc="backend.ipus_per_replica",
            )
        depth = found
    if depth < 2:
        raise PlanError(
            f"ipus_per_replica={depth}: the encoder and the decoder need IPUs of their own (at least 2)",
            loc="backend.ipus_per_replica",
        )
    if not is_power_of_two(depth):
        raise PlanError(
            f"ipus_per_replica={depth} is not a power of two, so it cannot divide a power-of-two IPU count",
            hint="use 2, 4, 8, 16, ... IPUs per replica",
            loc="backend.ipus_per_replica",
        )
    ipus = req.ipus if req.ipus is not None else depth
    if ipus < depth:
        if ipus < 2:
            hint = "the encoder and decoder need 2 IPUs at least; use --ipus 2 or more"
        elif explicit:
            hint = f"use --ipus {depth} (or more, for replicas)"
        else:
            hint = (
                f"use --ipus {depth}, or set backend.ipus_per_replica={ipus} to plan a pipeline of {ipus} "
                "IPUs anyway (heuristic layout; see its memory estimate)"
            )
        raise PlanError(
            f"too few IPUs: {arch.name} is planned as a {depth}-IPU pipeline ({why}) but only "
            f"{ipus} IPU{'s are' if ipus > 1 else ' is'} asked for",
            hint=hint,
            loc="backend.ipus",
        )
    if ipus % depth:
        raise PlanError(
            f"ipus={ipus} is not a multiple of ipus_per_replica={depth}", loc="backend.ipus_per_replica"
        )
    return ipus, depth, why


def _training_layout(arch: WhisperArch, req: PlanRequest, depth: int) -> _Layout:
    published = PUBLISHED_TRAINING.get((arch.family or "", depth))
    if req.layers_per_ipu is not None:
        layers = expand_layers_per_ipu(req.layers_per_ipu, depth, arch.total_layers)
        if published is not None and layers == published.layers_per_ipu:
            return _Layout(layers, f"published: {published.source}", published)
        return _Layout(layers, "custom: set by backend.layers_per_ipu (not a published layout)")
    if published is not None:
        return _Layout(published.layers_per_ipu, f"published: {published.source}", published)
    found = heuristic_training_layout(arch, depth, req)
    if found is None:
        raise PlanError(
            f"a {depth}-IPU pipeline leaves IPUs without layers: {arch.name} has {arch.encoder_layers} "
            f"encoder + {arch.decoder_layers} decoder layers (at most {max_depth(arch)} IPUs per replica)",
            hint="use fewer IPUs per replica; more IPUs become replicas",
            loc="backend.ipus_per_replica",
        )
    return _Layout(
        found[0],
        "heuristic: even split per side with the remainder towards the back and a lighter first IPU "
        "(conv front end / embedding)",
    )


def _inference_layout(arch: WhisperArch, req: PlanRequest, ipus: int, training: _Layout) -> _Layout:
    family = arch.family or ""
    public = PUBLISHED_INFERENCE.get(family)
    paired = training.published.inference_layers_per_ipu if training.published is not None else None
    if req.inference_layers_per_ipu is not None:
        raw = req.inference_layers_per_ipu
        count = req.inference_ipus_per_replica or len(raw)
        if count < 2:
            raise PlanError(
                f"inference_layers_per_ipu={list(raw)} gives a 1-IPU generation layout (optimum-graphcore "
                "takes its length when inference_ipus_per_replica is unset); the encoder and decoder "
                "executables need at least 2 IPUs",
                hint="set backend.inference_ipus_per_replica",
                loc="backend.inference_ipus_per_replica",
            )
        layers = expand_layers_per_ipu(raw, count, arch.total_layers, "inference_layers_per_ipu")
        if paired is not None and paired == layers:
            assert training.published is not None
            return _Layout(layers, f"published: {training.published.source}")
        if public is not None and public.layers_per_ipu == layers:
            return _Layout(layers, f"published: {public.source}")
        return _Layout(layers, "custom: set by backend.inference_layers_per_ipu (not a published layout)")
    candidates = []
    if paired is not None:
        assert training.published is not None
        candidates.append(_Layout(paired, f"published: {training.published.source}"))
    if public is not None:
        candidates.append(_Layout(public.layers_per_ipu, f"published: {public.source}"))
    wanted = req.inference_ipus_per_replica
    for candidate in candidates:
        if len(candidate.layers) <= ipus and wanted in (None, len(candidate.layers)):
            return candidate
    limit = wanted if wanted is not None else ipus
    if limit < 2:
        raise PlanError(
            f"inference_ipus_per_replica={limit}: the encoder and decoder executables need at least 2 IPUs",
            loc="backend.inference_ipus_per_replica",
        )
    if limit > ipus:
        raise PlanError(
            f"inference_ipus_per_replica={limit} is more than the {ipus} IPUs asked for",
            loc="backend.inference_ipus_per_replica",
        )
    if wanted is not None:
        layers, _, fits = _inference_at_exactly(arch, req, wanted)
    else:
        layers, _, fits = heuristic_inference_layout(arch, req, limit)
    return _Layout(
        layers,
        "heuristic: the encoder on the fewest power-of-two IPUs that fit the estimate, the decoder on the "
        "fewest that fit, each side split as in training",
        fits=fits,
    )


def plan_ipu(arch: WhisperArch, request: PlanRequest | None = None) -> IpuPlan:
    """Plan training and generation for ``arch`` on IPUs; PlanError (with ``loc``) if impossible."""
    req = request or PlanRequest()
    n_enc, n_dec = arch.encoder_layers, arch.decoder_layers
    ipus, depth, depth_reason = _choose_depth(arch, req)
    training = _training_layout(arch, req, depth)
    layers = training.layers
    owner = _layer_ipus(layers)
    if owner[n_enc - 1] == owner[n_enc]:
        raise PlanError(
            f"layers_per_ipu={list(layers)} puts encoder and decoder layers on IPU{owner[n_enc]} "
            f"({arch.name} has {n_enc} encoder layers)",
            hint="the entries up to some IPU must add up to exactly the encoder's layers",
            loc="backend.layers_per_ipu",
        )
    encoder_ipus = owner[n_enc - 1] + 1

    # projection: a factor (LM head on the first decoder IPU) or splits naming its IPU, never both
    splits = req.serialized_projection_splits_per_ipu
    factor = req.projection_serialization_factor
    if splits is not None and factor is not None:
        raise PlanError(
            "set either projection_serialization_factor or serialized_projection_splits_per_ipu, not both",
            loc="backend.serialized_projection_splits_per_ipu",
        )
    if splits is None and factor is None and training.published is not None:
        splits = training.published.serialized_projection_splits_per_ipu
        factor = training.published.projection_serialization_factor
    if splits is None and factor is None:
        factor = DEFAULT_PROJECTION_SERIALIZATION_FACTOR
    lm_head = _lm_head_ipu(layers, n_enc, splits)

    matmul = _matmul(req.matmul_proportion, depth, "matmul_proportion")
    if matmul is None:
        matmul = (
            training.published.matmul_proportion
            if training.published is not None
            else tuple(
                ENCODER_MATMUL_PROPORTION if i < encoder_ipus else DECODER_MATMUL_PROPORTION
                for i in range(depth)
            )
        )

    # generation
    notes: list[str] = []
    inference = _inference_layout(arch, req, ipus, training)
    inf_layers, inf_ipus = inference.layers, len(inference.layers)
    if req.inference_ipus_per_replica is not None and req.inference_ipus_per_replica != inf_ipus:
        raise PlanError(
            f"inference_ipus_per_replica={req.inference_ipus_per_replica} but the generation layout has "
            f"{inf_ipus} IPUs",
            loc="backend.inference_ipus_per_replica",
        )
    cut = generation_cut(inf_layers, n_enc)
    if cut is None:
        raise PlanError(
            f"generation layout {list(inf_layers)}: the encoder's {n_enc} layers must end on an IPU "
            "boundary that is a power of two (after 1, 2, 4, ... IPUs), with IPUs left for the decoder",
            hint=f"e.g. [{n_enc}, {n_dec}], or change backend.inference_layers_per_ipu",
            loc="backend.inference_layers_per_ipu",
        )
    inf_replication = req.inference_replication_factor
    if inf_replication is None:
        inf_replication = 1 if req.use_encoder_output_buffer else max(1, ipus // inf_ipus)
    if req.use_encoder_output_buffer and inf_replication != 1:
        raise PlanError(
            f"inference_replication_factor={inf_replication}: use_encoder_output_buffer needs 1 "
            "(optimum-graphcore 0.7.1)",
            hint="set inference_parallelize_kwargs.use_encoder_output_buffer=false to replicate generation",
            loc="backend.inference_replication_factor",
        )
    if inf_ipus * inf_replication > ipus:
        raise PlanError(
            f"generation needs {inf_ipus} IPUs x {inf_replication} replicas but only {ipus} IPUs are "
            "asked for",
            loc="backend.inference_layers_per_ipu",
        )
    if req.inference_matmul_proportion is not None:
        inf_matmul = _matmul(req.inference_matmul_proportion, inf_ipus, "inference_matmul_proportion")
        assert inf_matmul is not None
    else:
        given = req.matmul_proportion if req.matmul_proportion is not None else matmul
        inf_matmul, fell_back = inference_matmul_fallback(given, inf_ipus)
        if fell_back:
            notes.append(
                f"generation uses matmul_proportion {UPSTREAM_DEFAULT_MATMUL_PROPORTION} on every IPU "
                "(optimum-graphcore's fallback when the training list does not match the generation IPUs)"
            )

    memory = training_memory(
        arch,
        layers,
        lm_head,
        micro_batch=req.micro_batch_size,
        label_length=req.max_label_length,
        optimizer_offchip=req.optimizer_state_offchip,
    )
    inf_memory = inference_memory(arch, inf_layers, cut, req)
    kinds = {training.source.split(":")[0], inference.source.split(":")[0]}
    source: Source = (
        "published" if kinds == {"published"} else "heuristic" if "heuristic" in kinds else "custom"
    )
    notes[:0] = [
        f"pipeline depth {depth}: {depth_reason}",
        f"training layout {training.source}",
        f"generation layout {inference.source}",
    ]
    over = [i for i, mb in enumerate(memory) if mb > BUDGET_MB]
    if over:
        notes.append(
            f"warning: the training estimate exceeds {BUDGET_MB:.0f} MB per IPU {_where(over, memory)} at "
            f"micro-batch {req.micro_batch_size}"
            + (" with the optimizer state on chip" if not req.optimizer_state_offchip else "")
            + "; IPU recipes use micro-batch 1 with gradient accumulation"
        )
    inf_over = [i for i, mb in enumerate(inf_memory) if mb > BUDGET_MB]
    if inf_over or not inference.fits:
        notes.append(
            f"warning: the generation estimate exceeds {BUDGET_MB:.0f} MB per IPU "
            f"{_where(inf_over, inf_memory)} at eval batch {req.eval_batch_size} x {req.num_beams} beam"
            + ("s" if req.num_beams > 1 else "")
        )
    return IpuPlan(
        model=arch.name,
        ipus=ipus,
        ipus_per_replica=depth,
        replication_factor=ipus // depth,
        layers_per_ipu=tuple(layers),
        encoder_ipus=encoder_ipus,
        matmul_proportion=tuple(matmul),
        projection_serialization_factor=factor if splits is None else None,
        serialized_projection_splits_per_ipu=splits,
        lm_head_ipu=lm_head,
        pipeline_stages=pipeline_stages(layers, n_enc, lm_head),
        inference_layers_per_ipu=tuple(inf_layers),
        inference_ipus_per_replica=inf_ipus,
        inference_replication_factor=inf_replication,
        inference_encoder_ipus=cut,
        inference_matmul_proportion=tuple(inf_matmul),
        source=source,
        training_source=training.source,
        inference_source=inference.source,
        memory_mb=memory,
        inference_memory_mb=inf_memory,
        notes=tuple(notes),
        encoder_layers=n_enc,
        decoder_layers=n_dec,
    )


def _where(over: Sequence[int], memory: Sequence[float]) -> str:
    worst = max(over, key=lambda i: memory[i]) if over else max(range(len(memory)), key=lambda i: memory[i])
    return f"on {len(over)} of {len(memory)} IPUs (up to ~{memory[worst]:.0f} MB on IPU{worst})"


def _inference_at_exactly(
    arch: WhisperArch, request: PlanRequest, ipus: int
) -> tuple[tuple[int, ...], int, bool]:
    """The heuristic generation layout on exactly ``ipus`` IPUs (power-of-two encoder part)."""
    options = []
    enc = 1
    while enc < ipus and enc <= arch.encoder_layers:
        dec = ipus - enc
        if dec <= arch.decoder_layers:
            layers = tuple(split_side(arch.encoder_layers, enc) + split_side(arch.decoder_layers, dec))
            options.append((max(inference_memory(arch, layers, enc, request)), layers, enc))
        enc *= 2
    if not options:
        raise PlanError(
            f"no generation layout of {arch.name} uses exactly {ipus} IPUs with a power-of-two encoder part "
            "and a layer on every IPU",
            loc="backend.inference_ipus_per_replica",
        )
    peak, layers, enc = min(options)
    return layers, enc, peak <= BUDGET_MB
