"""The IPU backend's options: the ``backend:`` section of a config when ``backend.name`` is ``ipu``.

Names follow optimum-graphcore's ``IPUConfig`` where they are its keys, so a seed's ipu_config reads
across unchanged. Single-field rules live here (types, floors); rules that involve the model, the IPU
count or other sections are the planner's and the backend's ``check`` (they report the config key).
"""

from __future__ import annotations

import os
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Environment variable naming the Poplar SDK environment's Python (the default of ``sdk_python``).
SDK_PYTHON_ENV = "WHISPER_TUNE_IPU_PYTHON"

LayerCount = Annotated[int, Field(ge=-1)]
Proportion = Annotated[float, Field(ge=0, le=1)]
Split = Annotated[int, Field(ge=0)]


class GenerationKwargs(BaseModel):
    """``inference_parallelize_kwargs``: how the model is parallelised for generation (evaluation)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    use_cache: bool = Field(
        True, description="Static self-attention KV cache for generation (needed for on-device generation)."
    )
    use_cross_cache: bool = Field(
        False, description="Also cache the cross-attention keys and values (more memory, less compute)."
    )
    use_encoder_output_buffer: bool = Field(
        True,
        description="Keep the encoder output in a buffer on the decoder IPUs (poptorch >= 3.3); needs "
        "inference_replication_factor 1.",
    )
    on_device_generation_steps: int = Field(
        16,
        ge=0,
        description="Tokens generated on the IPU per host round trip (0 = one token per call); needs "
        "use_cache.",
    )

    @model_validator(mode="after")
    def _on_device_needs_cache(self) -> GenerationKwargs:
        if self.on_device_generation_steps > 0 and not self.use_cache:
            raise ValueError("on_device_generation_steps > 0 needs use_cache: true (optimum-graphcore)")
        return self


class IpuOptions(BaseModel):
    """Options of the ``ipu`` backend (Graphcore IPUs through optimum-graphcore 0.7.1)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ipus: int | None = Field(
        None,
        ge=1,
        description="IPUs to use in all (optimum-graphcore's n_ipu), a power of two. Beyond the pipeline "
        "depth they become data-parallel replicas: 16 IPUs with a 4-IPU pipeline = 4 replicas. Default: one "
        "replica of the pipeline.",
    )
    ipus_per_replica: int | None = Field(
        None,
        ge=1,
        description="IPUs one copy of the model is pipelined over (a power of two, at least 2). Default: "
        "the model's published depth (tiny 2, small 4), else the smallest that fits the planner's memory "
        "estimate; len(layers_per_ipu) when that is set.",
    )
    layers_per_ipu: tuple[LayerCount, ...] | None = Field(
        None,
        min_length=1,
        description="Transformer layers (encoder then decoder) per IPU in training; -1 is a wildcard "
        "sharing the rest (optimum-graphcore's rules). Default: the published layout, else the planner's.",
    )
    matmul_proportion: Proportion | tuple[Proportion, ...] | None = Field(
        None,
        description="Share of each IPU's memory matmuls may use as scratch (one number, or one per IPU). "
        "Default: published, else 0.2 on encoder and 0.6 on decoder IPUs.",
    )
    projection_serialization_factor: int | None = Field(
        None,
        ge=1,
        description="Split the LM head (vocabulary projection) into this many serial matmuls on its IPU. "
        "Default: published, else 5. Not with serialized_projection_splits_per_ipu.",
    )
    serialized_projection_splits_per_ipu: tuple[Split, ...] | None = Field(
        None,
        min_length=1,
        description="Put the embedding and LM head on one chosen decoder IPU, split this many times, e.g. "
        "[0,0,0,0,0,4,0,0] (Graphcore/whisper-small-ipu). Not with projection_serialization_factor.",
    )
    recompute_checkpoint_every_layer: bool = Field(
        True, description="Checkpoint every layer's output and recompute the rest in the backward pass."
    )
    optimizer_state_offchip: bool = Field(
        True, description="Keep the optimizer state in streaming (off-chip) memory instead of on the IPUs."
    )
    enable_half_partials: bool = Field(
        True, description="Accumulate matmul and convolution partials in fp16 (faster, less memory)."
    )
    inference_layers_per_ipu: tuple[LayerCount, ...] | None = Field(
        None,
        min_length=1,
        description="Layers per IPU for generation (evaluation); the encoder's part must end after a "
        "power-of-two number of IPUs. Default: the published layout, else the planner's.",
    )
    inference_ipus_per_replica: int | None = Field(
        None,
        ge=1,
        description="IPUs one generation replica uses. Written out explicitly: optimum-graphcore derives 1 "
        "from a wildcard layout, which breaks generation.",
    )
    inference_replication_factor: int | None = Field(
        None,
        ge=1,
        description="Generation replicas. Default: 1 with use_encoder_output_buffer (which requires it), "
        "else as many as the IPUs allow.",
    )
    inference_matmul_proportion: Proportion | tuple[Proportion, ...] | None = Field(
        None,
        description="matmul_proportion for generation. Default as optimum-graphcore: the training value, or "
        "0.2 when that is a list of another length.",
    )
    inference_parallelize_kwargs: GenerationKwargs = Field(
        default_factory=GenerationKwargs,
        description="How the model is parallelised for generation (seed 004's values by default).",
    )
    max_label_length: int = Field(
        224,
        gt=0,
        le=448,
        description="Labels are padded with -100 to a multiple of this length (static shapes; seed 004's "
        "MAX_LENGTH).",
    )
    drop_last: bool = Field(
        True,
        description="Drop the last incomplete batch so every step has the same global batch (required on "
        "IPUs; false is refused).",
    )
    num_workers: int = Field(0, ge=0, description="Data loader worker processes (0 = the main process).")
    sdk_python: str | None = Field(
        default_factory=lambda: os.environ.get(SDK_PYTHON_ENV) or None,
        description="Python of the Poplar SDK environment that runs the IPU worker (Python 3.8 with "
        f"poptorch). Default: ${SDK_PYTHON_ENV}.",
        json_schema_extra={"doc_default": f"`${SDK_PYTHON_ENV}`"},
    )
    stand_in: bool = Field(
        False,
        description="CPU test mode: the worker trains with transformers' Seq2SeqTrainer in fp32 instead of "
        "optimum-graphcore's IPUSeq2SeqTrainer, so the data, padding, batching and result path run without "
        "the SDK (sdk_python may then be any Python with the worker's pinned stack). Never for IPUs.",
    )
    executable_cache_dir: str | None = Field(
        None,
        description="Directory where compiled Poplar executables are cached between runs (IPUConfig's "
        "executable_cache_dir); unset: compile every run.",
    )

    @model_validator(mode="after")
    def _one_projection_setting(self) -> IpuOptions:
        if self.projection_serialization_factor is not None and self.serialized_projection_splits_per_ipu:
            raise ValueError(
                "set either projection_serialization_factor or serialized_projection_splits_per_ipu, not both"
            )
        return self
