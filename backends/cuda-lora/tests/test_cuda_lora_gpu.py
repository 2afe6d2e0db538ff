"""On a CUDA GPU only (marked ``gpu``; run through the device tool, never in CI): every quantisation mode
trains, generates, saves, reloads and merges on a small random Whisper, using scripts/gpu_verify.py's
functional check (WER of a handful of memorised clips must fall to near zero)."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.gpu

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_verify.py"


def gpu_verify() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_verify", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cuda() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")


@pytest.mark.parametrize("mode", ["int8", "4bit", "none"])
def test_mode_learns_a_handful_of_clips_and_merges(cuda: None, mode: str, tmp_path: Path) -> None:
    if mode != "none":
        pytest.importorskip("bitsandbytes")
    args = argparse.Namespace(
        device="cuda",
        tokenizer_from="pip:tiny.en",
        workdir=tmp_path,
        clips=4,
        functional_steps=300,
        functional_lr=2e-3,
    )
    result = gpu_verify().functional(mode, args)
    assert result["wer_before"] > 50  # percent
    assert result["wer_after"] <= 5, result["hypotheses"]
    assert result["merged_matches_adapter"], (result["merged_pipeline_texts"], result["hypotheses"])
