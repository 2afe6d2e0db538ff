"""The seeds' presets on the CPU, exactly as docs/presets.md writes the command ("Trying a seed recipe
without a GPU"): int8 LoRA on multilingual pip:base, on the bundled Marathi / Hindi demo clips. The
commands are read from the document, so the document cannot drift from what runs; the test only appends
keys that make the run short (one step, two clips, one evaluation of a few tokens)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import yaml
from helpers import REPO

from whisper_tune.cli import main

pytest.importorskip("bitsandbytes")
pytestmark = pytest.mark.slow

DOC = REPO / "docs" / "presets.md"
SHORT = [
    "training.max_steps=1",
    "training.batch_size=2",
    "data.max_train_samples=2",
    "data.max_eval_samples=2",
    "eval.batch_size=2",
    "eval.max_new_tokens=8",
    "eval.regression_set=null",
    "eval.before=false",  # int8 generation is the slow part on the CPU (bitsandbytes' int8 kernels)
    "eval.detect_language=false",
    "training.report_to=[none]",
    "output.plot=false",
]


def documented_commands() -> dict[str, list[str]]:
    """preset name -> the arguments after 'whisper-tune' of each seed command in the CPU section."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Trying a seed recipe without a GPU", 1)[1].split("\n## ", 1)[0]
    commands: dict[str, list[str]] = {}
    for block in section.split("```")[1::2]:
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            args = shlex.split(line)
            if args[:2] == ["whisper-tune", "run"]:
                commands[args[args.index("--config") + 1]] = args[1:]
    return commands


def test_the_document_has_a_cpu_command_for_each_seed_preset() -> None:
    commands = documented_commands()
    assert set(commands) == {"cuda-lora/seed000-marathi-large-v2", "cuda-lora/seed002-hindi-large-v2"}
    for args in commands.values():
        assert "backend.device=cpu" in args and "--model" in args


@pytest.mark.parametrize("preset", ["cuda-lora/seed000-marathi-large-v2", "cuda-lora/seed002-hindi-large-v2"])
def test_a_seed_preset_runs_on_the_cpu_as_documented(
    preset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(REPO)  # the command's data path is relative to the repository
    args = documented_commands()[preset]
    assert main(["plan", *args[1:]]) == 0
    assert "base weights: int8 (bitsandbytes LLM.int8)" in capsys.readouterr().out
    # one generation pass is enough for both: the Marathi run trains only
    extra = ["eval.after=false"] if "marathi" in preset else []
    code = main(["-q", *args, *SHORT, *extra, f"output.dir={tmp_path}", "output.run_name=seed"])
    assert code == 0, capsys.readouterr().err
    run_dir = tmp_path / "seed"
    config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    language = "mr" if "marathi" in preset else "hi"
    assert config["model"]["language"] == language and config["backend"]["quantization"] == "int8"
    assert config["training"]["gradient_checkpointing"] and config["training"]["lora"]["r"] == 32
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 1
    assert set(metrics["evaluation"]) == (set() if extra else {"after"})
    assert (run_dir / "final" / "adapter_model.safetensors").is_file()
