"""The IPU planner: golden tests against the published Whisper layouts, optimum-graphcore 0.7.1's
layout rules (and the traps it lets through), and properties over every size x IPU count."""

from __future__ import annotations

import pytest
from whisper_tune_ipu.models import MODELS
from whisper_tune_ipu.planner import (
    BUDGET_MB,
    PUBLISHED_INFERENCE,
    PUBLISHED_TRAINING,
    IpuPlan,
    PlanError,
    PlanRequest,
    expand_layers_per_ipu,
    generation_cut,
    heuristic_training_layout,
    is_power_of_two,
    plan_ipu,
)

IPU_COUNTS = (1, 2, 4, 8, 16, 32, 64)


def plan(model: str, **request: object) -> IpuPlan:
    return plan_ipu(MODELS[model], PlanRequest(**request))  # type: ignore[arg-type]


# -- golden: the published layouts ---------------------------------------------------------------------------


def test_tiny_on_2_ipus_is_graphcores_hub_config() -> None:
    p = plan("tiny", ipus=2)
    assert p.source == "published"
    assert (p.layers_per_ipu, p.ipus_per_replica, p.replication_factor) == ((4, 4), 2, 1)
    assert p.matmul_proportion == (0.6, 0.6)
    assert p.projection_serialization_factor == 4
    assert (p.inference_layers_per_ipu, p.inference_encoder_ipus) == ((4, 4), 1)


def test_tiny_on_a_4_ipu_pipeline() -> None:
    p = plan("tiny", ipus=4, ipus_per_replica=4)
    assert p.source == "published"
    assert p.layers_per_ipu == (2, 2, 2, 2)
    assert p.matmul_proportion == (0.2, 0.2, 0.6, 0.6)
    assert (p.inference_layers_per_ipu, p.inference_ipus_per_replica) == ((4, 4), 2)


def test_small_on_4_ipus_is_the_fine_tuning_notebook() -> None:
    p = plan("small", ipus=4)
    assert p.source == "published"
    assert "whisper_finetuning.ipynb" in p.training_source
    assert (p.layers_per_ipu, p.ipus_per_replica, p.replication_factor) == ((5, 7, 5, 7), 4, 1)
    assert p.matmul_proportion == (0.2, 0.2, 0.6, 0.6)
    assert p.projection_serialization_factor == 5
    assert p.inference_layers_per_ipu == (12, 12)
    assert (p.inference_ipus_per_replica, p.inference_replication_factor) == (2, 1)
    # optimum-graphcore's fallback: the 4-entry list does not fit 2 inference IPUs -> 0.2
    assert p.inference_matmul_proportion == (0.2, 0.2)
    assert (p.encoder_ipus, p.lm_head_ipu) == (2, 2)


def test_small_on_16_ipus_is_4_replicas_of_the_notebook_pipeline() -> None:
    p = plan("small", ipus=16)
    assert (p.layers_per_ipu, p.replication_factor, p.inference_replication_factor) == ((5, 7, 5, 7), 4, 1)


def test_small_on_an_8_ipu_pipeline_is_graphcores_hub_config() -> None:
    p = plan("small", ipus=8, ipus_per_replica=8)
    assert p.layers_per_ipu == (1, 2, 3, 3, 3, 0, 6, 6)
    assert p.serialized_projection_splits_per_ipu == (0, 0, 0, 0, 0, 4, 0, 0)
    assert p.projection_serialization_factor is None
    assert p.lm_head_ipu == 5  # IPU 5 holds only the embedding and LM head
    assert p.encoder_ipus == 5
    assert p.pipeline_stages == 9  # 8 IPUs + the LM head going back to IPU 5
    # the Hub config is training-only: as its own generation layout it has no power-of-two boundary ...
    assert generation_cut(p.layers_per_ipu, 12) is None
    # ... so generation uses the notebook's layout
    assert p.inference_layers_per_ipu == (12, 12)
    assert p.source == "published"
    placement = p.placement()
    assert placement[5].startswith("IPU5: no layers (+ token embedding")


@pytest.mark.parametrize(
    ("model", "ipus", "layout", "cut"),
    [
        ("medium", 16, (12, 12, 13, 11), 2),
        ("medium.en", 16, (12, 12, 13, 11), 2),
        ("large-v2", 32, (8, 8, 8, 8, 6, 9, 9, 8), 4),
        ("base", 2, (6, 6), 1),
    ],
)
def test_published_generation_layouts(model: str, ipus: int, layout: tuple[int, ...], cut: int) -> None:
    p = plan(model, ipus=ipus)
    assert (p.inference_layers_per_ipu, p.inference_encoder_ipus) == (layout, cut)
    assert p.inference_source.startswith("published")
    assert p.source == "heuristic"  # nobody published a training layout for these sizes


def test_quantised_large_generation_layout_expands_like_upstream() -> None:
    p = plan(
        "large-v2",
        ipus=32,
        inference_layers_per_ipu=(-1, -1, 14, 18),
        inference_ipus_per_replica=4,
    )
    assert (p.inference_layers_per_ipu, p.inference_encoder_ipus) == ((16, 16, 14, 18), 2)


def test_the_heuristic_reproduces_every_published_training_layout() -> None:
    for (family, depth), published in PUBLISHED_TRAINING.items():
        if published.serialized_projection_splits_per_ipu is not None:
            continue  # the Hub small/8 layout (an IPU with only the LM head) is not heuristic-shaped
        layout = heuristic_training_layout(MODELS[family], depth, PlanRequest())
        assert layout is not None and layout[0] == published.layers_per_ipu, (family, depth)


def test_every_published_layout_fits_the_memory_budget_at_micro_batch_1() -> None:
    for family, depth in PUBLISHED_TRAINING:
        assert max(plan(family, ipus=depth, ipus_per_replica=depth).memory_mb) <= BUDGET_MB
    for family in PUBLISHED_INFERENCE:
        p = plan(family, ipus=64)
        assert p.inference_source.startswith("published")
        assert max(p.inference_memory_mb) <= BUDGET_MB, family


# -- optimum-graphcore 0.7.1 semantics -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layers", "ipus", "total", "expected"),
    [
        ((-1, -1, -1, -1), 4, 24, (6, 6, 6, 6)),
        ((-1,), 4, 8, (2, 2, 2, 2)),
        ((-1, -1, -1), 3, 64, (21, 21, 22)),  # the whole remainder on the last IPU
        ((1, -1, -1, -1), 4, 24, (1, 7, 7, 9)),
        ((5, 7, 5, 7), 1, 24, (24,)),  # one IPU: everything on IPU 0, whatever the list says
        ((-1, -1, 14, 18), 4, 64, (16, 16, 14, 18)),
    ],
)
def test_wildcard_expansion_matches_upstream(
    layers: tuple[int, ...], ipus: int, total: int, expected: tuple[int, ...]
) -> None:
    assert expand_layers_per_ipu(layers, ipus, total) == expected


def test_the_20_minus_1_trap_is_refused() -> None:
    # optimum-graphcore 0.7.1 turns [20, -1] on 12 layers into [20, -8] without a word
    with pytest.raises(PlanError, match=r"-8") as info:
        plan("base", layers_per_ipu=(20, -1))
    assert info.value.loc == "backend.layers_per_ipu"


@pytest.mark.parametrize(
    ("request_", "loc", "message"),
    [
        ({"layers_per_ipu": (5, 7, 5, 6)}, "backend.layers_per_ipu", "places 23 layers but the model has 24"),
        ({"layers_per_ipu": (6, 6, 6)}, "backend.ipus_per_replica", "not a power of two"),
        (
            {"layers_per_ipu": (12, 12), "ipus_per_replica": 4},
            "backend.layers_per_ipu",
            "2 entries for 4 IPUs",
        ),
        ({"layers_per_ipu": (-1,)}, "backend.ipus_per_replica", "1-IPU pipeline"),
        ({"layers_per_ipu": (6, 7, 5, 6)}, "backend.layers_per_ipu", "encoder and decoder layers on IPU1"),
        ({"inference_layers_per_ipu": (4, 4, 4, 12)}, "backend.inference_layers_per_ipu", "power of two"),
        ({"inference_layers_per_ipu": (6, 7, 5, 6)}, "backend.inference_layers_per_ipu", "power of two"),
        (
            {"inference_layers_per_ipu": (-1, -1, -1), "inference_ipus_per_replica": 3},
            "backend.inference_layers_per_ipu",
            "power of two",
        ),
        ({"inference_layers_per_ipu": (-1,)}, "backend.inference_ipus_per_replica", "1-IPU generation"),
        ({"matmul_proportion": (0.2, 0.2)}, "backend.matmul_proportion", "2 entries for 4 IPUs"),
        (
            {"projection_serialization_factor": 5, "serialized_projection_splits_per_ipu": (0, 0, 4, 0)},
            "backend.serialized_projection_splits_per_ipu",
            "not both",
        ),
        (
            {"serialized_projection_splits_per_ipu": (0, 0, 2, 2)},
            "backend.serialized_projection_splits_per_ipu",
            "one IPU",
        ),
        (
            {"serialized_projection_splits_per_ipu": (0, 4, 0, 0)},
            "backend.serialized_projection_splits_per_ipu",
            "holds encoder layers",
        ),
        ({"inference_replication_factor": 2, "ipus": 8}, "backend.inference_replication_factor", "needs 1"),
        ({"ipus": 12}, "backend.ipus", "power-of-two"),
        ({"ipus": 2}, "backend.ipus", "too few IPUs"),
        ({"ipus": 8, "ipus_per_replica": 16}, "backend.ipus", "too few IPUs"),
    ],
)
def test_refusals_on_small(request_: dict[str, object], loc: str, message: str) -> None:
    with pytest.raises(PlanError, match=message) as info:
        plan("small", **request_)
    assert info.value.loc == loc


def test_too_many_ipus_per_replica_for_the_layers() -> None:
    with pytest.raises(PlanError, match="leaves IPUs without layers") as info:
        plan("tiny", ipus=16, ipus_per_replica=16)
    assert "at most 8" in info.value.message


def test_explicit_depth_below_the_estimate_plans_with_a_warning() -> None:
    p = plan("small", ipus=2, ipus_per_replica=2)
    assert (p.layers_per_ipu, p.source) == ((12, 12), "heuristic")
    assert any(n.startswith("warning: the training estimate exceeds") for n in p.notes)


def test_custom_layouts_are_labelled_custom() -> None:
    p = plan("small", layers_per_ipu=(6, 6, 6, 6), inference_layers_per_ipu=(6, 6, 6, 6))
    assert p.source == "custom"
    assert (p.inference_encoder_ipus, p.inference_ipus_per_replica) == (2, 4)


def test_generation_replicas_without_the_encoder_output_buffer() -> None:
    p = plan("small", ipus=16, use_encoder_output_buffer=False)
    assert (p.inference_ipus_per_replica, p.inference_replication_factor) == (2, 8)


def test_ipu_config_has_no_wildcards() -> None:
    config = plan("small", ipus=16).ipu_config()
    assert config["layers_per_ipu"] == [5, 7, 5, 7]
    assert config["inference_ipus_per_replica"] == 2
    assert config["replication_factor"] == 4
    assert "serialized_projection_splits_per_ipu" not in config


# -- properties: every size x IPU count ----------------------------------------------------------------------


def check_plan(p: IpuPlan, model: str, ipus: int) -> None:
    arch = MODELS[model]
    n_enc, n_dec = arch.encoder_layers, arch.decoder_layers
    layers = p.layers_per_ipu
    assert sum(layers) == n_enc + n_dec and min(layers) >= 0
    assert len(layers) == p.ipus_per_replica == len(p.matmul_proportion) == len(p.memory_mb)
    assert p.replication_factor * p.ipus_per_replica == ipus == p.ipus
    assert is_power_of_two(p.ipus_per_replica) and p.ipus_per_replica >= 2
    # encoder and decoder on separate IPUs
    assert sum(layers[: p.encoder_ipus]) == n_enc
    assert layers[p.encoder_ipus - 1] > 0 and p.encoder_ipus <= p.lm_head_ipu < p.ipus_per_replica
    # generation: the encoder ends on a power-of-two IPU boundary and the decoder has IPUs
    inference = p.inference_layers_per_ipu
    assert sum(inference) == n_enc + n_dec and min(inference) >= 0
    assert sum(inference[: p.inference_encoder_ipus]) == n_enc
    assert is_power_of_two(p.inference_encoder_ipus) and p.inference_decoder_ipus >= 1
    assert generation_cut(inference, n_enc) == p.inference_encoder_ipus
    assert len(inference) == p.inference_ipus_per_replica == len(p.inference_matmul_proportion)
    assert p.inference_ipus_per_replica * p.inference_replication_factor <= ipus
    assert p.min_gradient_accumulation_steps == 2 * p.pipeline_stages - 1
    assert p.source in ("published", "heuristic")
    assert len(p.placement()) == p.ipus_per_replica + 1


@pytest.mark.parametrize("model", sorted(MODELS))
def test_properties_over_ipu_counts(model: str) -> None:
    accepted = 0
    for ipus in IPU_COUNTS:
        for depth in (None, *(d for d in IPU_COUNTS if 2 <= d <= ipus)):
            try:
                p = plan(model, ipus=ipus, ipus_per_replica=depth)
            except PlanError as exc:
                assert exc.message and exc.loc.startswith("backend."), (model, ipus, depth)
                if depth is None and ipus >= 2:
                    assert "too few IPUs" in exc.message
                continue
            check_plan(p, model, ipus)
            accepted += 1
    assert accepted


@pytest.mark.parametrize("model", sorted(MODELS))
def test_one_ipu_is_always_refused(model: str) -> None:
    with pytest.raises(PlanError) as info:
        plan(model, ipus=1)
    assert info.value.hint


def test_default_depths() -> None:
    depth = {m: plan(m, ipus=64).ipus_per_replica for m in ("tiny", "base", "small", "medium", "large-v2")}
    # published: tiny 2, small 4; estimated: the smallest power of two that fits at micro-batch 1
    assert depth == {"tiny": 2, "base": 2, "small": 4, "medium": 16, "large-v2": 32}
    for model in ("base", "medium", "large-v2"):
        p = plan(model, ipus=64)
        assert max(plan(model, ipus=64, micro_batch_size=1).memory_mb) <= BUDGET_MB
        if p.ipus_per_replica > 2:
            shallower = plan(model, ipus=64, ipus_per_replica=p.ipus_per_replica // 2)
            assert max(shallower.memory_mb) > BUDGET_MB, model
