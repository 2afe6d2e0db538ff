"""Sharing a run: its final/README.md model card, and ``whisper-tune push`` through the real
huggingface_hub client against a stand-in for the Hub's API on 127.0.0.1 (tests/hub_standin.py).

The push runs as the real command in a child process, because huggingface_hub reads HF_ENDPOINT when it
is imported.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest
from helpers import QUIET, cli_argv, run_child, toy_overrides
from hub_standin import TOKEN, StandInHub

from whisper_tune import load_config, run


@pytest.fixture(scope="module")
def toy_run(toy_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("push-runs")
    run(
        load_config("quickstart", toy_overrides(toy_model_dir, out, **{"output.run_name": "toy"})),
        reporter=QUIET,
    )
    return out / "toy"


def hub_env(tmp_path: Path, endpoint: str, token: str | None = TOKEN) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1")
    if token is not None:
        env["HF_TOKEN"] = token
    return env


def push_cli(tmp_path: Path, endpoint: str, *args: str, token: str | None = TOKEN) -> Any:
    return run_child(cli_argv("push", *args), timeout=120, env=hub_env(tmp_path, endpoint, token))


def test_final_has_a_model_card_with_the_metrics(toy_run: Path) -> None:
    from huggingface_hub import ModelCard

    card = ModelCard.load(toy_run / "final" / "README.md")
    metrics = json.loads((toy_run / "metrics.json").read_text())
    after = metrics["evaluation"]["after"]
    found = {(r.dataset_name, r.metric_type): r.metric_value for r in card.data.eval_results}
    expected = {
        (name, kind): scores[key]
        for name, scores in after.items()
        for key, kind in (("normalized_wer", "wer"), ("normalized_cer", "cer"))
    }
    assert found == expected
    assert card.data.library_name == "transformers" and card.data.language == "en"
    assert "## How to use" in card.text and "## Guard sets" in card.text and "other-voice" in card.text


def test_push_commits_the_files_byte_for_byte(toy_run: Path, tmp_path: Path) -> None:
    final = toy_run / "final"
    with StandInHub() as hub:
        result = push_cli(tmp_path, hub.endpoint, str(toy_run), "--repo-id", "me/toy-whisper", "--private")
        state = hub.state
    assert result.returncode == 0, result.stderr
    assert state.repos["me/toy-whisper"] == {
        "name": "toy-whisper",
        "organization": "me",
        "visibility": "private",
    }
    local = {p.relative_to(final).as_posix(): p.read_bytes() for p in final.rglob("*") if p.is_file()}
    assert "README.md" in local and "model.safetensors" in local
    assert state.files["me/toy-whisper"] == local
    assert len(state.commits) == 1
    assert "pushed" in result.stdout


def test_push_to_an_existing_repo_of_ours_commits_again(toy_run: Path, tmp_path: Path) -> None:
    with StandInHub() as hub:
        hub.state.repos["me/again"], hub.state.files["me/again"] = {}, {}
        result = push_cli(tmp_path, hub.endpoint, str(toy_run), "--repo-id", "me/again")
        assert result.returncode == 0, result.stderr
        assert "README.md" in hub.state.files["me/again"]


def test_dry_run_lists_and_uploads_nothing(toy_run: Path, tmp_path: Path) -> None:
    with StandInHub() as hub:
        result = push_cli(tmp_path, hub.endpoint, str(toy_run), "--repo-id", "me/x", "--dry-run")
        assert hub.state.requests == []
    assert result.returncode == 0, result.stderr
    assert "would push" in result.stdout
    for name in ("README.md", "config.json", "model.safetensors"):
        assert f"  {name} (" in result.stdout


def assert_one_line_error(result: Any, code: int, fragment: str) -> None:
    assert result.returncode == code, (result.stdout, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def test_no_token_is_exit_code_10(toy_run: Path, tmp_path: Path) -> None:
    with StandInHub() as hub:
        result = push_cli(tmp_path, hub.endpoint, str(toy_run), "--repo-id", "me/x", token=None)
        assert hub.state.requests == []
    assert_one_line_error(result, 10, "no Hugging Face token")


def test_unreachable_hub_is_exit_code_10(toy_run: Path, tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = push_cli(tmp_path, f"http://127.0.0.1:{port}", str(toy_run), "--repo-id", "me/x")
    assert_one_line_error(result, 10, "cannot reach the Hub")


def test_a_repo_that_is_not_ours_is_exit_code_10(toy_run: Path, tmp_path: Path) -> None:
    with StandInHub() as hub:
        hub.state.foreign.add("someone-else")
        result = push_cli(tmp_path, hub.endpoint, str(toy_run), "--repo-id", "someone-else/model")
        assert hub.state.files == {}
    assert_one_line_error(result, 10, "is not yours to write")


def test_a_bad_token_is_exit_code_10(toy_run: Path, tmp_path: Path) -> None:
    with StandInHub() as hub:
        result = push_cli(tmp_path, hub.endpoint, str(toy_run), "--repo-id", "me/x", token="hf_wrong")
    assert_one_line_error(result, 10, "refused the token")


def test_not_a_run_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = push_cli(tmp_path, "http://127.0.0.1:9", str(tmp_path / "empty"), "--repo-id", "me/x")
    assert_one_line_error(result, 2, "neither a run directory")


@pytest.mark.slow
def test_output_push_to_pushes_at_the_end_of_a_run(toy_model_dir: Path, tmp_path: Path) -> None:
    overrides = toy_overrides(
        toy_model_dir, tmp_path / "runs", **{"output.run_name": "pushed", "output.push_to": "me/at-the-end"}
    )
    with StandInHub(lifetime=300) as hub:
        result = run_child(
            cli_argv("run", "--config", "quickstart", *overrides),
            timeout=300,
            env=hub_env(tmp_path, hub.endpoint),
        )
        state = hub.state
    assert result.returncode == 0, result.stderr
    final = tmp_path / "runs" / "pushed" / "final"
    local = {p.relative_to(final).as_posix(): p.read_bytes() for p in final.rglob("*") if p.is_file()}
    assert state.files["me/at-the-end"] == local
    assert state.repos["me/at-the-end"]["visibility"] == "public"


def test_export_writes_a_card_per_format(toy_run: Path, tmp_path: Path) -> None:
    from huggingface_hub import ModelCard

    from whisper_tune.export.exporter import export

    export(str(toy_run), tmp_path / "export", formats=("hf",), check=False, reporter=QUIET)
    card = ModelCard.load(tmp_path / "export" / "hf" / "README.md")
    metrics = json.loads((toy_run / "metrics.json").read_text())
    assert {r.metric_value for r in card.data.eval_results} == {
        s[k] for s in metrics["evaluation"]["after"].values() for k in ("normalized_wer", "normalized_cer")
    }
    assert "whisper-tune export" in card.text and card.data.library_name == "transformers"
