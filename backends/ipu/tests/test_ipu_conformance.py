"""Conformance: the planner's IPUConfig dicts against optimum-graphcore 0.7.1's own code.

The cases below go, as JSON, to ``conformance/upstream_check.py``, which runs inside the IPU worker's pinned
stack (``.venvs/ipu-stack``: optimum-graphcore 0.7.1, transformers 4.29.2, optimum 1.6.1; made by
``backends/ipu/scripts/setup-stack-venv.sh``). There ``IPUConfig(**config)`` validates each dict and
upstream's ``_expand_layers_per_ipu_wildcard`` / ``get_layer_ipu`` (the training layer -> IPU map) and
``split_encoder_decoder_ipu_config`` (the generation split) process it. poptorch, popart and popdist are
replaced there by stand-ins ONLY so that the modules import (they ship with the Poplar SDK alone); the code
compared is plain Python and never calls them.

Three groups:

* **planned**: every plan the planner makes for tiny … large-v3 at 2 … 64 IPUs and every pipeline depth,
  plus the published layouts. Upstream must accept each dict and derive the same training layout, the same
  layer -> IPU map and the same encoder/decoder generation split (layers, IPUs, matmul proportions).
* **both reject**: configs upstream rejects (at construction, in the wildcard expansion or in the
  generation split); the planner (or the backend's options) must reject them too.
* **stricter**: traps upstream lets through and the planner refuses: expected disagreements, counted and
  listed separately.

The random cases compare the two wildcard expansions and generation splits over many layouts.
"""

from __future__ import annotations

import itertools
import json
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest
from ipu_stack import ROOT, STACK_PYTHON, needs_stack
from pydantic import ValidationError
from whisper_tune_ipu.models import resolve_model
from whisper_tune_ipu.options import IpuOptions
from whisper_tune_ipu.planner import (
    PlanError,
    PlanRequest,
    expand_layers_per_ipu,
    generation_cut,
    plan_ipu,
)

SCRIPT = Path(__file__).parent / "conformance" / "upstream_check.py"
MODELS = ("tiny", "base", "small", "medium", "large-v2", "large-v3")
IPUS = (2, 4, 8, 16, 32, 64)

pytestmark = needs_stack


def planner_accepts(model: str, **options: Any) -> bool:
    """The plugin's verdict: the options validate and the planner plans them."""
    try:
        opts = IpuOptions(**options)
    except ValidationError:
        return False
    request = PlanRequest(
        ipus=opts.ipus,
        ipus_per_replica=opts.ipus_per_replica,
        layers_per_ipu=opts.layers_per_ipu,
        matmul_proportion=opts.matmul_proportion,
        projection_serialization_factor=opts.projection_serialization_factor,
        serialized_projection_splits_per_ipu=opts.serialized_projection_splits_per_ipu,
        inference_layers_per_ipu=opts.inference_layers_per_ipu,
        inference_ipus_per_replica=opts.inference_ipus_per_replica,
        inference_replication_factor=opts.inference_replication_factor,
        use_encoder_output_buffer=opts.inference_parallelize_kwargs.use_encoder_output_buffer,
    )
    try:
        plan_ipu(resolve_model(model), request)
    except PlanError:
        return False
    return True


def planned_cases() -> list[dict[str, Any]]:
    cases = []
    requests = [
        {"ipus": n, **({"ipus_per_replica": d} if d else {})}
        for n in IPUS
        for d in (None, 2, 4, 8, 16, 32)
        if d is None or d <= n
    ]
    requests += [{"ipus_per_replica": 4}, {"ipus_per_replica": 8}]  # tiny/4 and small/8: published
    for model in MODELS:
        arch = resolve_model(model)
        for req in requests:
            try:
                plan = plan_ipu(arch, PlanRequest(**req))
            except PlanError:
                continue  # too few IPUs for the memory estimate etc.: not an upstream rule
            cases.append(
                {
                    "id": f"{model} {req}",
                    "encoder_layers": arch.encoder_layers,
                    "decoder_layers": arch.decoder_layers,
                    "config": plan.ipu_config(),
                    "expect": {
                        "train_layers": list(plan.layers_per_ipu),
                        "encoder_ipus": plan.encoder_ipus,
                        "generation_encoder": list(
                            plan.inference_layers_per_ipu[: plan.inference_encoder_ipus]
                        ),
                        "generation_decoder": list(
                            plan.inference_layers_per_ipu[plan.inference_encoder_ipus :]
                        ),
                        "generation_matmul": [
                            list(plan.inference_matmul_proportion[: plan.inference_encoder_ipus]),
                            list(plan.inference_matmul_proportion[plan.inference_encoder_ipus :]),
                        ],
                        "source": plan.source,
                    },
                }
            )
    return cases


#: (id, model, upstream IPUConfig kwargs, the same request as backend options). Upstream rejects each.
BOTH_REJECT: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = [
    (
        "sum 23 for 24 layers",
        "small",
        {
            "layers_per_ipu": [5, 7, 5, 6],
            "inference_layers_per_ipu": [12, 12],
            "inference_ipus_per_replica": 2,
        },
        {"layers_per_ipu": [5, 7, 5, 6]},
    ),
    (
        "sum 25 for 24 layers",
        "small",
        {
            "layers_per_ipu": [6, 7, 5, 7],
            "inference_layers_per_ipu": [12, 12],
            "inference_ipus_per_replica": 2,
        },
        {"layers_per_ipu": [6, 7, 5, 7]},
    ),
    (
        "matmul list of 2 for 4 IPUs",
        "small",
        {"layers_per_ipu": [5, 7, 5, 7], "matmul_proportion": [0.2, 0.2]},
        {"layers_per_ipu": [5, 7, 5, 7], "matmul_proportion": [0.2, 0.2]},
    ),
    (
        "2 entries for 4 IPUs",
        "small",
        {"layers_per_ipu": [12, 12], "ipus_per_replica": 4},
        {"layers_per_ipu": [12, 12], "ipus_per_replica": 4},
    ),
    (
        "3 entries for 2 IPUs",
        "tiny",
        {"layers_per_ipu": [2, 2, 4], "ipus_per_replica": 2},
        {"layers_per_ipu": [2, 2, 4], "ipus_per_replica": 2},
    ),
    ("entry below -1", "tiny", {"layers_per_ipu": [-2, 10]}, {"layers_per_ipu": [-2, 10]}),
    (
        "matmul below 0",
        "tiny",
        {"layers_per_ipu": [4, 4], "matmul_proportion": -0.1},
        {"layers_per_ipu": [4, 4], "matmul_proportion": -0.1},
    ),
    (
        "projection factor and splits",
        "tiny",
        {
            "layers_per_ipu": [4, 4],
            "projection_serialization_factor": 4,
            "serialized_projection_splits_per_ipu": [0, 4],
        },
        {
            "layers_per_ipu": [4, 4],
            "projection_serialization_factor": 4,
            "serialized_projection_splits_per_ipu": [0, 4],
        },
    ),
    (
        "projection splits on non-consecutive IPUs",
        "small",
        {"layers_per_ipu": [5, 7, 5, 7], "serialized_projection_splits_per_ipu": [2, 0, 2, 0]},
        {"layers_per_ipu": [5, 7, 5, 7], "serialized_projection_splits_per_ipu": [2, 0, 2, 0]},
    ),
    (
        "projection splits of the wrong length",
        "small",
        {"layers_per_ipu": [5, 7, 5, 7], "serialized_projection_splits_per_ipu": [0, 0, 4]},
        {"layers_per_ipu": [5, 7, 5, 7], "serialized_projection_splits_per_ipu": [0, 0, 4]},
    ),
    (
        "projection splits on the encoder (generation)",
        "small",
        {
            "layers_per_ipu": [12, 12],
            "serialized_projection_splits_per_ipu": [4, 0],
            "inference_serialized_projection_splits_per_ipu": [4, 0],
        },
        {"layers_per_ipu": [12, 12], "serialized_projection_splits_per_ipu": [4, 0]},
    ),
    (
        "generation [6,7,5,6]: no encoder boundary",
        "small",
        {
            "layers_per_ipu": [5, 7, 5, 7],
            "inference_layers_per_ipu": [6, 7, 5, 6],
            "inference_ipus_per_replica": 4,
        },
        {
            "layers_per_ipu": [5, 7, 5, 7],
            "inference_layers_per_ipu": [6, 7, 5, 6],
            "inference_ipus_per_replica": 4,
        },
    ),
    (
        "generation [4,4,4,12]: encoder on 3 IPUs",
        "small",
        {
            "layers_per_ipu": [5, 7, 5, 7],
            "inference_layers_per_ipu": [4, 4, 4, 12],
            "inference_ipus_per_replica": 4,
        },
        {
            "layers_per_ipu": [5, 7, 5, 7],
            "inference_layers_per_ipu": [4, 4, 4, 12],
            "inference_ipus_per_replica": 4,
        },
    ),
    (
        "generation [-1]*3 on small (8,8,8)",
        "small",
        {
            "layers_per_ipu": [5, 7, 5, 7],
            "inference_layers_per_ipu": [-1, -1, -1],
            "inference_ipus_per_replica": 3,
        },
        {
            "layers_per_ipu": [5, 7, 5, 7],
            "inference_layers_per_ipu": [-1, -1, -1],
            "inference_ipus_per_replica": 3,
        },
    ),
    (
        "generation on 1 IPU",
        "tiny",
        {"layers_per_ipu": [4, 4], "inference_layers_per_ipu": [8], "inference_ipus_per_replica": 1},
        {"layers_per_ipu": [4, 4], "inference_layers_per_ipu": [8], "inference_ipus_per_replica": 1},
    ),
    (
        "Hub small/8 layout used for generation",
        "small",
        {
            "layers_per_ipu": [1, 2, 3, 3, 3, 0, 6, 6],
            "serialized_projection_splits_per_ipu": [0, 0, 0, 0, 0, 4, 0, 0],
        },
        {
            "layers_per_ipu": [1, 2, 3, 3, 3, 0, 6, 6],
            "serialized_projection_splits_per_ipu": [0, 0, 0, 0, 0, 4, 0, 0],
            "inference_layers_per_ipu": [1, 2, 3, 3, 3, 0, 6, 6],
            "inference_ipus_per_replica": 8,
        },
    ),
    (
        "generation sum 23",
        "small",
        {
            "layers_per_ipu": [5, 7, 5, 7],
            "inference_layers_per_ipu": [12, 11],
            "inference_ipus_per_replica": 2,
        },
        {
            "layers_per_ipu": [5, 7, 5, 7],
            "inference_layers_per_ipu": [12, 11],
            "inference_ipus_per_replica": 2,
        },
    ),
]

#: Traps upstream lets through and the planner refuses: (id, model, upstream kwargs, options, why).
STRICTER: list[tuple[str, str, dict[str, Any], dict[str, Any], str]] = [
    (
        "[20,-1] on base's 12 layers",
        "base",
        {
            "layers_per_ipu": [20, -1],
            "ipus_per_replica": 2,
            "inference_layers_per_ipu": [6, 6],
            "inference_ipus_per_replica": 2,
        },
        {"layers_per_ipu": [20, -1], "ipus_per_replica": 2},
        "upstream expands it to [20, -8] silently",
    ),
    (
        "[-1] without ipus_per_replica",
        "small",
        {"layers_per_ipu": [-1], "inference_layers_per_ipu": [12, 12], "inference_ipus_per_replica": 2},
        {"layers_per_ipu": [-1]},
        "upstream derives 1 IPU per replica and puts the whole model on IPU 0",
    ),
    (
        "encoder and decoder share IPU 1 in training",
        "tiny",
        {"layers_per_ipu": [3, 5], "inference_layers_per_ipu": [4, 4], "inference_ipus_per_replica": 2},
        {"layers_per_ipu": [3, 5]},
        "upstream allows it in training; every published layout keeps them apart",
    ),
    (
        "12 IPUs: 3 replicas of a 4-IPU pipeline",
        "small",
        {
            "layers_per_ipu": [5, 7, 5, 7],
            "replication_factor": 3,
            "inference_layers_per_ipu": [12, 12],
            "inference_ipus_per_replica": 2,
        },
        {"ipus": 12},
        "IPUConfig takes any replication factor; Poplar hands out IPUs in powers of two",
    ),
    (
        "encoder output buffer with 2 generation replicas",
        "small",
        {
            "layers_per_ipu": [5, 7, 5, 7],
            "inference_layers_per_ipu": [12, 12],
            "inference_ipus_per_replica": 2,
            "inference_replication_factor": 2,
            "inference_parallelize_kwargs": {"use_cache": True, "use_encoder_output_buffer": True},
        },
        {"ipus": 4, "inference_replication_factor": 2},
        "upstream fails only when generation starts on the IPU (use_encoder_output_buffer needs 1 replica)",
    ),
]


def random_cases(n: int = 600, seed: int = 0) -> list[dict[str, Any]]:
    """Random layouts for the wildcard expansion and the generation split (fixed seed)."""
    rng = random.Random(seed)
    cases = []
    for i in range(n):
        model = rng.choice(MODELS)
        arch = resolve_model(model)
        depth = rng.choice([2, 3, 4, 6, 8, 16])
        total = arch.encoder_layers + arch.decoder_layers
        kind = rng.choice(["even", "wild", "exact", "near"])
        if kind == "even":
            layers = [-1] * depth if rng.random() < 0.5 else [-1]
        elif kind == "wild":
            layers = [rng.choice([-1, rng.randint(0, total // 2)]) for _ in range(depth)]
        else:
            cuts = sorted(rng.randint(0, total) for _ in range(depth - 1))
            layers = [b - a for a, b in itertools.pairwise([0, *cuts, total])]
            if kind == "near":
                layers[rng.randrange(depth)] += rng.choice([-1, 1])
                layers = [max(-1, x) for x in layers]
        cases.append(
            {
                "id": f"random {i}: {model} {layers} on {depth}",
                "encoder_layers": arch.encoder_layers,
                "decoder_layers": arch.decoder_layers,
                "config": {
                    "layers_per_ipu": layers,
                    "ipus_per_replica": depth,
                    "inference_layers_per_ipu": layers,
                    "inference_ipus_per_replica": depth,
                },
            }
        )
    return cases


def planner_expansion(case: dict[str, Any]) -> tuple[str, Any, Any]:
    """(verdict, expanded layout, generation split) of our own rules for a random case."""
    cfg = case["config"]
    total = case["encoder_layers"] + case["decoder_layers"]
    try:
        layers = list(expand_layers_per_ipu(cfg["layers_per_ipu"], cfg["ipus_per_replica"], total))
    except PlanError as exc:
        return ("negative" if "would silently give" in exc.message else "reject"), None, None
    cut = generation_cut(layers, case["encoder_layers"]) if cfg["ipus_per_replica"] >= 2 else None
    return "ok", layers, (None if cut is None else [layers[:cut], layers[cut:]])


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    cases = planned_cases() + random_cases()
    for name, model, kwargs, *_ in BOTH_REJECT + STRICTER:
        arch = resolve_model(model)
        cases.append(
            {
                "id": name,
                "encoder_layers": arch.encoder_layers,
                "decoder_layers": arch.decoder_layers,
                "config": kwargs,
            }
        )
    work = tmp_path_factory.mktemp("conformance")
    (work / "cases.json").write_text(json.dumps(cases), encoding="utf-8")
    subprocess.run(
        [str(STACK_PYTHON), str(SCRIPT), str(work / "cases.json"), str(work / "results.json")],
        check=True,
        cwd=ROOT,
        timeout=600,
    )
    out = json.loads((work / "results.json").read_text(encoding="utf-8"))
    assert out["optimum_graphcore"] == "0.7.1"
    return {r["id"]: r for r in out["results"]}


def upstream_accepts(result: dict[str, Any]) -> bool:
    return all(result.get(stage) == "ok" for stage in ("construct", "train", "generation"))


def test_every_planned_config_is_accepted_and_laid_out_identically(
    upstream: dict[str, dict[str, Any]],
) -> None:
    cases = planned_cases()
    assert len(cases) >= 80
    mismatches = []
    for case in cases:
        got, want = upstream[case["id"]], case["expect"]
        layer_ipu = got.get("train_layer_ipu", [])
        n_enc = case["encoder_layers"]
        agree = (
            upstream_accepts(got)
            and got["train_layers"] == want["train_layers"]
            # encoder layers below the planner's first decoder IPU, decoder layers from it on (an IPU may
            # hold no layer: Graphcore's small/8 puts only the LM head on IPU 5)
            and max(layer_ipu[:n_enc]) < want["encoder_ipus"] <= min(layer_ipu[n_enc:])
            and got["generation_encoder"] == want["generation_encoder"]
            and got["generation_decoder"] == want["generation_decoder"]
            and got["generation_matmul"] == want["generation_matmul"]
        )
        if not agree:
            mismatches.append((case["id"], got, want))
    print(f"\nconformance: {len(cases) - len(mismatches)}/{len(cases)} planned configs agree with upstream")
    assert not mismatches, mismatches[:3]
    published = [c for c in cases if c["expect"]["source"] == "published"]
    assert {tuple(c["expect"]["train_layers"]) for c in published} >= {
        (4, 4),
        (2, 2, 2, 2),
        (5, 7, 5, 7),
        (1, 2, 3, 3, 3, 0, 6, 6),
    }


@pytest.mark.parametrize("name", [c[0] for c in BOTH_REJECT])
def test_configs_upstream_rejects_are_rejected_by_the_planner(
    name: str, upstream: dict[str, dict[str, Any]]
) -> None:
    _, model, _, options = next(c for c in BOTH_REJECT if c[0] == name)
    assert not upstream_accepts(upstream[name]), upstream[name]
    assert not planner_accepts(model, **options)


@pytest.mark.parametrize("name", [c[0] for c in STRICTER])
def test_traps_upstream_lets_through_are_refused_by_the_planner(
    name: str, upstream: dict[str, dict[str, Any]]
) -> None:
    _, model, _, options, _why = next(c for c in STRICTER if c[0] == name)
    assert upstream_accepts(upstream[name]), upstream[name]
    assert not planner_accepts(model, **options)


def test_random_layouts_expand_and_split_as_upstream(upstream: dict[str, dict[str, Any]]) -> None:
    agree = stricter = 0
    disagree = []
    for case in random_cases():
        got = upstream[case["id"]]
        verdict, layers, split = planner_expansion(case)
        up_layers = got.get("train_layers") if got["construct"] == "ok" and got.get("train") == "ok" else None
        up_split = (
            [got["generation_encoder"], got["generation_decoder"]] if got.get("generation") == "ok" else None
        )
        if verdict == "negative" and up_layers is not None and min(up_layers) < 0:
            stricter += 1  # upstream's silent negative wildcard: we refuse it
        elif (layers, split) == (up_layers, up_split):
            agree += 1
        else:
            disagree.append((case["id"], (layers, split), (up_layers, up_split), got))
    print(
        f"\nconformance: random layouts: {agree} agree, {stricter} negative wildcards refused by us only, "
        f"{len(disagree)} disagree"
    )
    assert not disagree, disagree[:3]
    assert agree > 400
