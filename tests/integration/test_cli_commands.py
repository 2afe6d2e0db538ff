"""Every CLI command once, in-process through the real entry point (``whisper_tune.cli.main``)."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import yaml
from helpers import QUICKSTART_DATA, REPO, toy_overrides

from whisper_tune import __version__
from whisper_tune.backend.registry import GROUP, KNOWN_BACKENDS, Registry
from whisper_tune.cli import main
from whisper_tune.config.presets import list_presets


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and __version__ in out


def test_backends_lists_installed_and_known(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each installed backend: its probe's verdict on its own line, then its description and
    distribution; each known backend that is not installed: its install command."""
    from whisper_tune import cli as cli_module

    code, out, _ = run_cli(capsys, "backends")
    assert code == 0
    lines = out.splitlines()
    registry = Registry()
    assert len(lines) == 2 * len(registry.names())  # everything known is installed here (CI: all of it)
    for n, name in enumerate(registry.names()):
        backend, info = registry.get(name), registry.info(name)
        probe = backend.probe()
        verdict = f"available: {probe.mode}" if probe.available else f"unavailable: {probe.reason}"
        assert lines[2 * n].startswith(f"{name:12} {verdict}"), lines[2 * n]
        assert info is not None
        origin = f"[{info.distribution} {info.version}]"
        assert lines[2 * n + 1] == f"{'':12} {backend.description} {origin}"
    # what "available" means here: without a GPU the GPU backends run only in their CPU dev modes
    for name, dev_mode in (("cuda-lora", "backend.device=cpu"), ("accelerate", "backend.device=cpu")):
        if name in registry.names() and registry.get(name).probe().capabilities.cuda_devices == 0:
            assert f"{name:12} available: CPU dev mode only" in out and dev_mode in out

    # with only the core installed, every other known backend is listed with its install command
    only_core = [ep for ep in entry_points(group=GROUP) if ep.name == "reference"]
    monkeypatch.setattr(cli_module, "Registry", lambda: Registry(only_core))
    code, out, _ = run_cli(capsys, "backends")
    assert code == 0 and out.startswith("reference    available: CPU, ")
    for name, known in KNOWN_BACKENDS.items():
        assert f"{name:12} not installed: {known.install}\n{'':12} {known.description}\n" in out


def test_plan_prints_global_batch(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "plan", "--config", "quickstart", "training.gradient_accumulation_steps=3")
    assert code == 0
    assert "batch per device:   4" in out and "global batch:       12" in out and "CPU" in out
    # the command that runs it, as given to plan (a plan in this process starts no other command)
    run_it = "run it:             whisper-tune run --config quickstart training.gradient_accumulation_steps=3"
    assert run_it in out.splitlines() and "torchrun" not in out
    data = str(REPO / "data" / "quickstart")
    code, out, _ = run_cli(capsys, "plan", "--model", "pip:tiny.en", "--data", data)
    assert code == 0 and f"run it:             whisper-tune run --model pip:tiny.en --data {data}" in out


def test_config_list_show_validate_docs(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, _ = run_cli(capsys, "config", "list")
    assert code == 0 and all(name in out for name in list_presets())
    code, out, _ = run_cli(capsys, "config", "show", "--config", "ipu/seed004-catalan-small")
    shown = yaml.safe_load(out)
    assert code == 0 and shown["model"]["language"] == "ca"
    assert shown["backend"]["layers_per_ipu"] == [5, 7, 5, 7]
    assert shown["training"]["learning_rate"] == 1e-5  # defaults are filled in too
    # a GPU preset with hub data and model validates on this CPU machine (no hub access happens: nothing is
    # loaded; offline, its hub data set would be refused as a run refuses it, test_validate_* below)
    for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(variable, raising=False)
    code, out, err = run_cli(capsys, "config", "validate", "--config", "cuda-lora/seed000-marathi-large-v2")
    installed = "cuda-lora" in Registry().names()
    expected = "backend 'cuda-lora' options and checks" if installed else "not installed here"
    assert code == 0 and expected in out, err
    if installed and not Registry().get("cuda-lora").probe().capabilities.cuda_devices:
        # what this machine lacks is a warning, not a refusal
        assert "warning: this machine cannot run it: backend.device: no CUDA device" in err, err
    code, out, _ = run_cli(capsys, "config", "validate", "--config", "quickstart")
    assert code == 0 and "backend 'reference' options and checks, data sets and model name" in out
    code, out, _ = run_cli(capsys, "config", "docs")
    assert code == 0 and out == (REPO / "docs" / "config.md").read_text()


def test_a_yaml_path_may_come_first(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run_cli(capsys, "config", "validate", "configs/quickstart.yaml", "training.max_steps=3")
    assert code == 0 and out.startswith("valid (core sections, backend 'reference' options and checks"), err
    code, out, err = run_cli(capsys, "config", "show", str(REPO / "configs" / "quickstart.yaml"))
    assert code == 0 and yaml.safe_load(out)["training"]["max_steps"] == 50, err
    code, out, _ = run_cli(
        capsys, "config", "show", "quickstart", "training.max_steps=3"
    )  # a preset name too
    assert code == 0 and yaml.safe_load(out)["training"]["max_steps"] == 3
    # run takes it too: here a YAML whose data does not exist stops before anything is loaded
    config = tmp_path / "mine.yaml"
    config.write_text("data: {dataset: ./no-such-audio}\noutput: {dir: runs}\n")
    code, _, err = run_cli(capsys, "run", str(config), "training.max_steps=1")
    assert code == 3 and f"data.dataset: dataset path {tmp_path / 'no-such-audio'} does not exist" in err
    code, _, err = run_cli(capsys, "config", "validate", "--config", "quickstart", str(config))
    assert code == 2 and "two configs given" in err
    code, _, err = run_cli(capsys, "config", "validate", "configs/no-such.yaml")
    assert code == 2 and "no config file or preset called 'configs/no-such.yaml'" in err


@pytest.mark.slow
def test_a_run_prints_its_summary_once_and_warns_of_a_long_warmup(
    toy_model_dir: Path, tmp_path: Path
) -> None:
    overrides = toy_overrides(
        toy_model_dir,
        tmp_path,
        **{"training.max_steps": 1, "training.warmup_steps": 1, "output.run_name": "r"},
    )
    result = subprocess.run(  # not -q: what a user sees on the console
        [sys.executable, "-m", "whisper_tune", "run", "configs/quickstart.yaml", *overrides],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,  # subprocess.run kills the child when this passes
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("eval: WER") == 1 and result.stdout.count("other-voice: WER") == 1
    assert "WER" not in result.stderr  # the summary is printed once, on stdout
    assert "warning: training.warmup_steps: 1 warm-up steps for 1 training step" in result.stderr
    log = (tmp_path / "r" / "run.log").read_text()
    assert log.count("eval: WER") == 1 and "warm-up steps" in log


def test_eval_command(capsys: pytest.CaptureFixture[str], toy_model_dir: Path, tmp_path: Path) -> None:
    code, out, err = run_cli(
        capsys,
        "-q",
        "eval",
        "--model",
        str(toy_model_dir),
        "--data",
        str(QUICKSTART_DATA),
        "--split",
        "eval",
        "data.max_eval_samples=3",
        f"output.dir={tmp_path}",
        "eval.max_new_tokens=4",
    )
    assert code == 0, err
    assert "eval: WER" in out and "training" not in out  # nothing was trained: no "before training"
    run_dir = Path(out.splitlines()[0].removeprefix("run directory: "))
    assert run_dir.name.endswith("-toy-model0-eval") and run_dir.parent == tmp_path


def test_prepare_command(capsys: pytest.CaptureFixture[str], toy_model_dir: Path, tmp_path: Path) -> None:
    code, out, err = run_cli(
        capsys,
        "-q",
        "prepare",
        "--config",
        "quickstart",
        "--model",
        str(toy_model_dir),
        "--out",
        str(tmp_path / "p"),
        f"data.dataset={QUICKSTART_DATA}",
        "data.max_train_samples=4",
        "data.max_eval_samples=2",
        "data.extra_eval=[]",
    )
    assert code == 0, err
    assert "train: 4 samples" in out and "eval: 2 samples" in out
    assert (tmp_path / "p" / "train" / "manifest.json").is_file()


def test_usage_error_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "run", "--no-such-flag")
    assert code == 2 and "No such option" in err
