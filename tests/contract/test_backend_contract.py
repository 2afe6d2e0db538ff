"""The contract every installed backend keeps, one parametrised test per clause (and per backend).

Parametrised over the backends registered through the entry-point group here (``Registry().names()``),
so a new backend — in this repository or a third party's — is checked as soon as it is installed:

* options: every option (nested sections too) described, unknown keys refused with their dotted path,
  the models frozen; its flags set keys its options have, and the CLI lists them;
* ``probe()`` never raises: with CUDA absent, mocked present (two 80 GiB devices) and broken;
* ``check()`` and ``recipe_needs()`` answer with their types; ``plan()`` is JSON: ``plan.json`` and the
  launch in the job file round-trip;
* resume continues the loss curve, for backends that train in this Python environment (through the core's
  phases: a run of 4 steps and a run resumed from its step-2 checkpoint log the same losses); a backend
  that trains elsewhere and cannot resume (ipu) must refuse ``training.resume_from`` clearly;
* the option table in its README (backends/<name>/README.md) is the one generated from its Options.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from helpers import QUIET
from pydantic import BaseModel
from whisper_tune_testing import backend_folders, registered_backends

from whisper_tune.backend.protocol import (
    Backend,
    Capabilities,
    Issue,
    OwnRuntime,
    Plan,
    Probe,
    RecipeNeeds,
    TrainJob,
)
from whisper_tune.backend.registry import Registry
from whisper_tune.backend.setup import InProcessTrainer
from whisper_tune.config.schema import RunConfig
from whisper_tune.config_loading import load_config
from whisper_tune.errors import ConfigError

BACKENDS = registered_backends()


def cpu_mode(name: str) -> list[str]:
    """The overrides of the backend's CPU development mode, as the backend declares them (an in-process
    backend's ``cpu_overrides``; a backend that trains elsewhere: its defaults)."""
    return list(getattr(backend_of(name), "cpu_overrides", ()))


def backend_of(name: str) -> Any:
    return Registry().get(name)


def config_for(name: str, *overrides: str) -> RunConfig:
    return load_config(None, [*cpu_mode(name), *overrides], backend=name)


def option_models(model: type[BaseModel], prefix: str = "backend") -> list[tuple[str, type[BaseModel]]]:
    """(dotted prefix, model) for the options model and every section nested in it."""
    found = [(prefix, model)]
    for name, field in model.model_fields.items():
        for inner in [field.annotation, *typing.get_args(field.annotation)]:
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                found += option_models(inner, f"{prefix}.{name}")
    return found


def test_every_installed_backend_is_checked() -> None:
    assert "reference" in BACKENDS  # the core registers it; the others as installed (CI: all of them)


# --- options and flags ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", BACKENDS)
def test_is_a_backend(name: str) -> None:
    backend = backend_of(name)
    assert isinstance(backend, Backend) and backend.name == name and backend.description
    # it trains in this Python environment through the core (and writes no train of its own), or in a
    # runtime of its own through train()
    if isinstance(backend, InProcessTrainer):
        assert not isinstance(backend, OwnRuntime), f"{name}: the core dispatches in-process backends"
        assert isinstance(backend.cpu_overrides, tuple)
        assert all("=" in override for override in backend.cpu_overrides)
    else:
        assert isinstance(backend, OwnRuntime), f"{name} has neither training_setup nor train"
    assert issubclass(backend.Options, BaseModel)
    config = config_for(name)
    assert isinstance(config.backend.options, backend.Options)  # typed once, at load
    assert isinstance(backend.recipe_needs(config), RecipeNeeds)
    issues = backend.check(config, Capabilities(cpu_count=2))
    assert isinstance(issues, list) and all(isinstance(i, Issue) for i in issues)
    assert all(i.loc.split(".")[0] in RunConfig.model_fields for i in issues)  # dotted config paths


@pytest.mark.parametrize("name", BACKENDS)
def test_every_option_is_described_and_unknown_keys_are_refused(name: str) -> None:
    for prefix, model in option_models(backend_of(name).Options):
        assert model.model_config.get("extra") == "forbid", prefix
        assert model.model_config.get("frozen") is True, prefix
        for key, field in model.model_fields.items():
            assert field.description and field.description.strip(), f"{prefix}.{key} has no description"
        with pytest.raises(ConfigError, match=rf"{prefix}\.no_such_option: unknown key"):
            config_for(name, f"{prefix}.no_such_option=1")


@pytest.mark.parametrize("name", BACKENDS)
def test_flags_set_keys_of_its_options_and_the_cli_lists_them(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from whisper_tune.cli import cli, main

    backend = backend_of(name)
    core_options = {opt for p in cli.commands["run"].params for opt in p.opts}
    assert main(["run", "--help"]) == 0
    run_help = capsys.readouterr().out
    for flag in backend.flags:
        assert flag.name.startswith("--") and flag.name not in core_options, flag.name
        value: Any = {"int": max(1, int(flag.min or 1)), "float": float(flag.min or 1.0)}.get(flag.type, "x")
        options = config_with_flags(name, {flag.name: value}).backend.options
        node: Any = options
        for part in flag.key.split(".")[1:]:
            node = getattr(node, part)
        assert flag.key.startswith("backend.") and node == value, flag
        assert flag.name in run_help and flag.key in run_help


def config_with_flags(name: str, backend_flags: dict[str, Any]) -> RunConfig:
    return load_config(None, cpu_mode(name), backend=name, backend_flags=backend_flags)


# --- probe ------------------------------------------------------------------------------------------


def fake_cuda(monkeypatch: pytest.MonkeyPatch, state: str) -> None:
    import torch

    if state == "absent":
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    elif state == "present":
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
        monkeypatch.setattr(
            torch.cuda,
            "get_device_properties",
            lambda i: SimpleNamespace(name="mocked GPU", total_memory=80 * 2**30, major=9, minor=0),
        )
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    else:  # a broken driver

        def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("CUDA driver initialization failed")

        for attr in ("is_available", "device_count", "get_device_properties", "is_bf16_supported"):
            monkeypatch.setattr(torch.cuda, attr, broken)


@pytest.mark.parametrize("cuda", ["absent", "present", "broken"])
@pytest.mark.parametrize("name", BACKENDS)
def test_probe_never_raises(name: str, cuda: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cuda(monkeypatch, cuda)
    probe = backend_of(name).probe()
    assert isinstance(probe, Probe)
    assert probe.mode if probe.available else probe.reason
    caps = probe.capabilities
    if cuda == "present":
        assert caps.cuda_devices in (0, 2)  # a backend may not look at CUDA at all (ipu, reference)
        if caps.cuda_devices:
            assert caps.cuda_memory_gib == (80.0, 80.0) and probe.mode.startswith("GPU")
    else:
        assert caps.cuda_devices == 0


# --- plan ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BACKENDS)
def test_plan_is_json_and_its_launch_crosses_the_job_file(name: str, tmp_path: Path) -> None:
    from whisper_tune.runs.run import plan

    config = config_for(name)
    the_plan = plan(config, Registry())
    assert isinstance(the_plan, Plan) and the_plan.backend == name
    document = json.loads(json.dumps({**dataclasses.asdict(the_plan), "global_batch": the_plan.global_batch}))
    assert document["launch"]["mode"] in ("in-process", "command")
    launch = the_plan.launch.resolved(tmp_path)
    job = TrainJob(config=config, run_dir=tmp_path, model_dir="m", train_data=None, launch=launch)
    assert TrainJob.model_validate_json(job.model_dump_json()).launch == job.launch
    assert "{run_dir}" not in json.dumps(dataclasses.asdict(job.launch))  # type: ignore[arg-type]


# --- resume -------------------------------------------------------------------------------------


RESUME_RUN = [
    "training.max_steps=4",
    "training.save_steps=2",
    "training.save_total_limit=5",
    "training.batch_size=2",
    "training.learning_rate=1e-3",
    "training.warmup_steps=0",
    "training.logging_steps=1",
    "training.precision=fp32",
]


@pytest.mark.parametrize("name", BACKENDS)
def test_resume_continues_the_loss_curve(
    name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    backend = backend_of(name)
    if not isinstance(backend, InProcessTrainer):  # trains outside this Python environment
        config = config_for(name, "training.resume_from=runs/x/checkpoints/step-000002")
        refusals = [i for i in backend.check(config, Capabilities()) if i.loc == "training.resume_from"]
        if not refusals:
            pytest.skip(f"{name} trains outside this Python environment and says it can resume")
        (refusal,) = refusals
        assert refusal.level == "error" and "resume" in refusal.message and refusal.hint
        return
    from whisper_tune.training.phases import train_in_process

    model_dir: Path = request.getfixturevalue("toy_model_dir")
    train_data: Path = request.getfixturevalue("toy_train_data")
    config = config_for(name, f"model.name={model_dir}", *RESUME_RUN)
    caps = backend.probe().capabilities
    if not backend.uses_cpu(config) and not caps.cuda_devices:
        pytest.skip(f"{name} needs a CUDA GPU (no CPU mode is known for it)")
    assert [i for i in backend.check(config, caps) if i.level == "error"] == []

    def train(run: str, resume_from: Path | None = None) -> Any:
        job = TrainJob(
            config=config,
            run_dir=tmp_path / run,
            model_dir=str(model_dir),
            train_data=train_data,
            evaluate_before=False,
            evaluate_after=False,
            resume_from=resume_from,
        )
        return train_in_process(backend, job, QUIET)

    full = train("full")
    checkpoint = tmp_path / "full" / "checkpoints" / "step-000002"
    assert checkpoint.is_dir()
    resumed = train("resumed", resume_from=checkpoint)
    assert resumed.steps == full.steps == 4
    assert [r["step"] for r in resumed.log_history] == [r["step"] for r in full.log_history] == [1, 2, 3, 4]
    full_losses = [r["loss"] for r in full.log_history]
    assert [r["loss"] for r in resumed.log_history] == pytest.approx(full_losses, rel=1e-4)
    assert len(set(full_losses)) == 4  # the curve moves: equal losses would prove nothing


# --- documentation ------------------------------------------------------------------------------


@pytest.mark.parametrize("folder", sorted(backend_folders()))
def test_readme_option_table_is_generated_from_the_options(folder: str) -> None:
    from whisper_tune.config.docs import backend_options_markdown

    if folder not in BACKENDS:
        pytest.skip(f"the {folder} backend is not installed: pip install --no-deps -e backends/{folder}")
    readme = (backend_folders()[folder] / "README.md").read_text(encoding="utf-8")
    assert backend_options_markdown(backend_of(folder)) in readme, (
        f"backends/{folder}/README.md's option table is out of date with its Options model: regenerate it "
        f"with: whisper-tune config docs --backend {folder} --into backends/{folder}/README.md"
    )
