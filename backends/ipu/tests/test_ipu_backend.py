"""The ``ipu`` backend through whisper-tune's own machinery: options, the seed 004 preset, probe, check,
plan (also through the CLI), recipe needs, train's honest refusal, and light imports."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
import yaml
from whisper_tune_ipu.backend import IpuBackend
from whisper_tune_ipu.options import IpuOptions

from whisper_tune.backend.protocol import Backend, Capabilities, Plan, Probe, RecipeNeeds, TrainJob
from whisper_tune.backend.registry import Registry
from whisper_tune.config.presets import find_preset
from whisper_tune.config.schema import RunConfig
from whisper_tune.config_loading import load_config
from whisper_tune.console import Reporter
from whisper_tune.errors import BackendUnavailableError, ConfigError

PRESET = "ipu/seed004-catalan-small"
SRC = Path(__file__).resolve().parents[1] / "src"

needs_entry_point = pytest.mark.skipif(
    not any(ep.name == "ipu" for ep in entry_points(group="whisper_tune.backends")),
    reason="the whisper-tune-ipu distribution is not installed: pip install -e backends/ipu --no-deps",
)


@pytest.fixture()
def no_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WHISPER_TUNE_IPU_PYTHON", raising=False)


def registry() -> Registry:
    return Registry(instances={"ipu": IpuBackend()})


def config(*overrides: str, preset: str | None = PRESET, **flags: Any) -> RunConfig:
    return load_config(preset, list(overrides), registry=registry(), require_backend=True, **flags)


@pytest.mark.usefixtures("no_sdk")
def test_is_a_backend() -> None:
    """Not only the Protocol's attribute names: every member answers with the Protocol's types for the
    seed 004 preset (the contract test, tests/contract, checks the same through the registry)."""
    backend = IpuBackend()
    assert isinstance(backend, Backend)
    assert backend.name == "ipu" and backend.Options is IpuOptions and backend.description
    assert [(f.name, f.key) for f in backend.flags] == [("--ipus", "backend.ipus")]
    cfg = config()
    probe = backend.probe()
    assert isinstance(probe, Probe) and not probe.available and "WHISPER_TUNE_IPU_PYTHON" in probe.reason
    assert backend.check(cfg, Capabilities()) == []  # the preset is a complete, runnable request
    assert backend.recipe_needs(cfg) == RecipeNeeds(224, "float16", True)
    plan = backend.plan(cfg, Capabilities())
    assert isinstance(plan, Plan) and plan.backend == "ipu" and plan.launch.mode == "command"


def test_every_option_has_a_description() -> None:
    for name, field in IpuOptions.model_fields.items():
        assert field.description, name


# -- the seed 004 preset -------------------------------------------------------------------------------------


def test_every_key_of_the_preset_is_a_typed_option() -> None:
    raw = yaml.safe_load(find_preset(PRESET).read_text())["backend"]
    assert set(raw) - {"name"} <= set(IpuOptions.model_fields)


@pytest.mark.usefixtures("no_sdk")
def test_preset_validates_fully() -> None:
    cfg = config()
    options = cfg.backend.options
    assert isinstance(options, IpuOptions)
    assert options.ipus == 4
    assert options.layers_per_ipu == (5, 7, 5, 7)
    assert options.matmul_proportion == (0.2, 0.2, 0.6, 0.6)
    assert options.inference_layers_per_ipu == (12, 12)
    assert options.inference_parallelize_kwargs.on_device_generation_steps == 16
    assert (options.max_label_length, options.num_workers, options.drop_last) == (224, 16, True)
    assert IpuBackend().check(cfg, Capabilities()) == []


@needs_entry_point
def test_preset_validates_through_the_installed_entry_point() -> None:
    cfg = load_config(PRESET, require_backend=True)
    assert isinstance(cfg.backend.options, IpuOptions)


@pytest.mark.usefixtures("no_sdk")
def test_preset_plan() -> None:
    plan = IpuBackend().plan(config(), Capabilities())
    assert plan.devices == "4 IPUs: 1 replica x 4-IPU pipeline"
    assert (plan.processes, plan.batch_per_device, plan.gradient_accumulation_steps) == (1, 1, 16)
    assert plan.global_batch == 16
    assert plan.placement[0].startswith("IPU0: encoder layers 0-4 (+ conv front end")
    assert plan.placement[2].startswith("IPU2: decoder layers 0-4 (+ token embedding")
    assert plan.placement[-1].startswith("generation: encoder executable on 1 IPU [12]")
    assert plan.notes[0].startswith("published plan for small")
    assert not any(n.startswith("run will refuse") for n in plan.notes)


def test_typo_in_an_option_names_the_key() -> None:
    typo = r"backend.layer_per_ipu: unknown key \(did you mean 'layers_per_ipu'"
    with pytest.raises(ConfigError, match=typo):
        config("backend.layer_per_ipu=[5,7,5,7]")
    with pytest.raises(ConfigError, match="backend.matmul_proportion"):
        config("backend.matmul_proportion=[0.2,0.2,1.5,0.6]")
    with pytest.raises(ConfigError, match="needs use_cache"):
        config("backend.inference_parallelize_kwargs.use_cache=false")


# -- check ---------------------------------------------------------------------------------------------------


def issues(cfg: RunConfig, caps: Capabilities | None = None) -> dict[str, tuple[str, bool]]:
    """loc -> (message, whether only a run is refused: plan still works)."""
    checked = IpuBackend().check(cfg, caps or Capabilities())
    return {i.loc: (i.message, i.run_only or i.hardware) for i in checked}


def test_layout_errors_block_the_plan() -> None:
    found = issues(config("backend.layers_per_ipu=[5,7,5,6]"))
    message, hardware = found["backend.layers_per_ipu"]
    assert "23 layers" in message and not hardware


def test_unknown_model_is_an_issue_at_model_name() -> None:
    found = issues(config(model="openai/whisper-huge"))
    assert not found["model.name"][1]


def test_run_only_problems_do_not_block_the_plan() -> None:
    checked = IpuBackend().check(config("training.precision=bf16"), Capabilities())
    precision = next(i for i in checked if i.loc == "training.precision")
    assert precision.run_only and not precision.hardware  # a config problem (exit 2), not hardware
    found = issues(config("training.precision=bf16", "training.gradient_accumulation_steps=4"))
    assert found["training.precision"][1] and "bf16" in found["training.precision"][0]
    assert found["training.gradient_accumulation_steps"][1]
    assert "below 9" in found["training.gradient_accumulation_steps"][0]


def test_large_v3_is_planned_but_run_refuses_it() -> None:
    cfg = config(preset=None, backend="ipu", model="openai/whisper-large-v3", backend_flags={"--ipus": 32})
    found = issues(cfg)
    assert found["model.name"][1] and "transformers 4.29.2" in found["model.name"][0]
    plan = IpuBackend().plan(cfg, Capabilities())
    assert plan.devices == "32 IPUs: 1 replica x 32-IPU pipeline"
    assert any(n.startswith("run will refuse: model.name") for n in plan.notes)


def test_ipu_count_is_checked_only_when_capabilities_know_it() -> None:
    cfg = config()
    assert "backend.ipus" not in issues(cfg, Capabilities(ipus=0))
    assert "backend.ipus" not in issues(cfg, Capabilities(ipus=16))
    message, hardware = issues(cfg, Capabilities(ipus=2))["backend.ipus"]
    assert hardware and "needs 4 IPUs but 2" in message


def test_drop_last_false_is_refused() -> None:
    assert "backend.drop_last" in issues(config("backend.drop_last=false"))


def test_missing_sdk_python_blocks_a_run() -> None:
    found = issues(config("backend.sdk_python=/nonexistent/python3.8"))
    assert found["backend.sdk_python"][1]


def test_recipe_needs() -> None:
    needs = IpuBackend().recipe_needs(config("backend.max_label_length=112"))
    assert (needs.label_pad_multiple, needs.feature_dtype, needs.drop_last) == (112, "float16", True)


# -- probe and train -----------------------------------------------------------------------------------------


@pytest.mark.usefixtures("no_sdk")
def test_probe_without_the_sdk_gives_the_install_steps() -> None:
    probe = IpuBackend().probe()
    assert not probe.available
    assert "WHISPER_TUNE_IPU_PYTHON" in probe.reason
    for step in ("enable.sh", "poptorch-*.whl", "worker"):
        assert step in probe.install_hint


def test_probe_with_an_sdk_python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WHISPER_TUNE_IPU_PYTHON", "/nonexistent/python")
    assert "does not exist" in IpuBackend().probe().reason
    monkeypatch.setenv("WHISPER_TUNE_IPU_PYTHON", sys.executable)
    assert IpuBackend().probe().available  # poptorch and the worker are checked by train, before any step


@pytest.mark.usefixtures("no_sdk")
def test_train_without_an_sdk_python_gives_the_install_steps(tmp_path: Path) -> None:
    job = TrainJob(config=config(), run_dir=tmp_path, model_dir="openai/whisper-small", train_data=tmp_path)
    with pytest.raises(BackendUnavailableError, match="SDK's Python is not configured") as info:
        IpuBackend().train(job, Reporter(quiet=True))
    assert "poptorch" in (info.value.hint or "") and "constraints.txt" in (info.value.hint or "")


def test_resume_and_eval_during_training_are_refused_for_a_run_only() -> None:
    found = issues(config("training.resume_from=latest", "eval.steps=10"))
    assert found["training.resume_from"][1]  # a run is refused, the plan still works
    assert found["eval.steps"][1]


# -- the CLI -------------------------------------------------------------------------------------------------


@needs_entry_point
def test_cli_plan_16_ipus_is_4_replicas(capsys: pytest.CaptureFixture[str]) -> None:
    from whisper_tune.cli import main

    assert main(["plan", "--backend", "ipu", "--ipus", "16", "--model", "openai/whisper-small"]) == 0
    out = capsys.readouterr().out
    assert "16 IPUs: 4 replicas x 4-IPU pipeline" in out
    assert "processes:          4" in out
    assert "published plan for small" in out


@needs_entry_point
def test_cli_plan_refuses_too_few_ipus(capsys: pytest.CaptureFixture[str]) -> None:
    from whisper_tune.cli import main

    assert main(["plan", "--backend", "ipu", "--ipus", "2", "--model", "openai/whisper-small"]) == 2
    assert "too few IPUs" in capsys.readouterr().err


@needs_entry_point
@pytest.mark.usefixtures("no_sdk")
def test_cli_run_without_the_sdk_stops_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    from whisper_tune.cli import main

    assert main(["run", "--config", PRESET]) == BackendUnavailableError.exit_code
    assert "poptorch" in capsys.readouterr().err


# -- light imports -------------------------------------------------------------------------------------------


def test_importing_and_planning_imports_no_torch() -> None:
    code = (
        "import sys; import whisper_tune_ipu.backend, whisper_tune_ipu.planner; "
        "from whisper_tune_ipu.models import resolve_model; "
        "from whisper_tune_ipu.planner import plan_ipu; plan_ipu(resolve_model('openai/whisper-medium')); "
        "print(','.join(m for m in ('torch', 'transformers', 'numpy', 'optimum', 'poptorch') "
        "if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == ""
