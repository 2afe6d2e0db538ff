"""Shipped presets validate, live in their backend's folder, and docs/config.md matches the schema."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from whisper_tune.backend.registry import KNOWN_BACKENDS, Registry
from whisper_tune.config import schema
from whisper_tune.config.docs import config_reference_markdown
from whisper_tune.config.presets import list_presets
from whisper_tune.config_loading import UncheckedOptions, merge_sources, validate

REPO = Path(__file__).resolve().parents[2]
PRESETS = list_presets()
#: Presets allowed at the top of configs/ (not in a backend folder), with the backend they must use.
TOP_LEVEL = {"quickstart": "reference"}
SEED_PRESETS = {
    "cuda-lora/seed000-marathi-large-v2",
    "cuda-lora/seed002-hindi-large-v2",
    "accelerate/seed003-swedish-tiny",
    "ipu/seed004-catalan-small",
}
#: Hub datasets that are loading scripts, which `datasets` >= 4 no longer runs.
SCRIPT_DATASETS = {
    "mozilla-foundation/common_voice_11_0",
    "mozilla-foundation/common_voice_13_0",
    "google/fleurs",
    "openslr",
}
REGENERATE = "regenerate it with: whisper-tune config docs > docs/config.md"


def raw_preset(name: str) -> dict:
    return merge_sources(PRESETS[name], env={})  # env={}: no SageMaker defaults leak in


def test_seed_presets_are_shipped() -> None:
    missing = SEED_PRESETS - set(PRESETS)
    assert not missing, f"seed presets missing from configs/: {sorted(missing)}"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_validates(name: str) -> None:
    raw = raw_preset(name)
    config = validate(raw, require_backend=False)  # core sections, whatever is installed
    backend = config.backend.name
    installed = Registry().names()
    assert backend in {*installed, *KNOWN_BACKENDS}, f"{name}: unknown backend '{backend}'"
    if backend in installed:
        # The backend is here: its own options must pass phase two as well.
        full = validate(raw, require_backend=True)
        assert not isinstance(full.backend.options, UncheckedOptions)
    else:
        assert isinstance(config.backend.options, UncheckedOptions)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_lives_in_its_backends_folder(name: str) -> None:
    backend = validate(raw_preset(name), require_backend=False).backend.name
    parts = name.split("/")
    if len(parts) == 1:
        assert name in TOP_LEVEL, (
            f"preset '{name}' is at the top of configs/: move it to configs/{backend}/{name}.yaml"
        )
        assert backend == TOP_LEVEL[name]
    else:
        assert parts[0] == backend, f"preset '{name}' uses backend '{backend}' but lives in {parts[0]}/"


@pytest.mark.parametrize("name", sorted(SEED_PRESETS & set(PRESETS)))
def test_seed_preset_says_where_it_comes_from(name: str) -> None:
    text = PRESETS[name].read_text(encoding="utf-8")
    seed = name.split("/")[1].split("-")[0].removeprefix("seed")
    assert text.startswith(f"# Seed {seed} "), f"{name}: the top comment must name seed {seed}"
    dataset = raw_preset(name)["data"]["dataset"]
    if dataset in SCRIPT_DATASETS:
        assert "docs/presets.md" in text, f"{name}: {dataset} no longer loads; point to docs/presets.md"


def test_config_docs_are_generated_from_the_schema() -> None:
    path = REPO / "docs" / "config.md"
    assert path.is_file(), f"docs/config.md is missing: {REGENERATE}"
    assert path.read_text(encoding="utf-8") == config_reference_markdown(), (
        f"docs/config.md is out of date with src/whisper_tune/config/schema.py: {REGENERATE}"
    )


def test_config_reference_is_deterministic_and_complete() -> None:
    text = config_reference_markdown()
    assert text == config_reference_markdown()
    for section, field in schema.RunConfig.model_fields.items():
        model = field.annotation
        if isinstance(model, type) and issubclass(model, BaseModel):
            for key in model.model_fields:
                if (section, key) != ("backend", "options"):
                    assert f"`{section}.{key}`" in text
    for key in schema.EvalSetConfig.model_fields:
        assert f"`data.extra_eval[].{key}`" in text


def schema_models() -> list[type[BaseModel]]:
    return [
        obj
        for obj in vars(schema).values()
        if isinstance(obj, type) and issubclass(obj, BaseModel) and obj.__module__ == schema.__name__
    ]


def test_every_schema_field_has_a_description() -> None:
    undocumented = [
        f"{model.__name__}.{name}"
        for model in schema_models()
        for name, field in model.model_fields.items()
        if not (field.description or "").strip()
    ]
    assert schema.RunConfig in schema_models()
    assert not undocumented, f"schema fields without a description: {undocumented}"
