"""``whisper-tune push``: a run's final model (or adapter), or an export, uploaded with its model card to a
Hub repo through huggingface_hub — the repo created if it does not exist, then one commit of every file.

What is pushed: a run directory's final/ (a full model or a LoRA adapter); an export directory's hf/ (or
``--format ct2-float16`` / ``ct2-int8``); or any model folder given directly. The folder's README.md is
the card written with it (a run from before cards has one written first). Failures a user can fix — no
token, the Hub out of reach, a repo that is not theirs — are a ``PushError`` (exit code 10), one line each.
``HF_ENDPOINT`` chooses the Hub (huggingface_hub reads it when it is imported).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from whisper_tune.console import Reporter
from whisper_tune.errors import ConfigError, PushError
from whisper_tune.hub import hub_offline, is_network_error
from whisper_tune.runs.card import CARD_FILE, run_inputs, write_run_card
from whisper_tune.runs.model_ref import final_dir, is_run_dir

EXPORT_REPORT = "export.json"  # export/exporter.py's REPORT_FILE (export is a layer above)
EXPORT_FORMATS = ("hf", "ct2-float16", "ct2-int8")
TOKEN_HINT = "set HF_TOKEN to a token with write access, or run 'hf auth login'"


@dataclass
class PushResult:
    repo_id: str
    folder: Path
    files: list[tuple[str, int]]  # (path in the repo, bytes)
    url: str | None = None
    lines: list[str] = field(default_factory=list)


def push_folder(source: Path, fmt: str | None = None, *, write: bool = True) -> Path:
    """The folder that ``source`` (a run, an export, or a model folder) pushes; with ``write``, its card
    written first when a run's final/ has none (a run from before cards)."""
    source = source.expanduser()
    if not source.is_dir():
        raise ConfigError(f"{source} is not a directory", hint="give a run directory, an export or a model")
    if is_run_dir(source):
        folder = final_dir(source)
        if write and not (folder / CARD_FILE).is_file():
            config, metrics = run_inputs(source)
            write_run_card(folder, config, metrics, source.name)
        return folder
    if (source / EXPORT_REPORT).is_file():
        folder = source / (fmt or "hf")
        if not folder.is_dir():
            raise ConfigError(f"the export {source} has no {fmt or 'hf'}/ folder")
        return folder
    if fmt is not None:
        raise ConfigError("--format is for an export directory (one with export.json)")
    if any((source / name).is_file() for name in ("config.json", "adapter_config.json", "model.bin")):
        return source
    raise ConfigError(
        f"{source} is neither a run directory, an export directory nor a model folder",
        hint="give a run directory (its final/ is pushed), an export directory (its hf/) or a model folder",
    )


def folder_files(folder: Path) -> list[tuple[str, Path]]:
    """Every file under ``folder`` as (path in the repo, local path), sorted."""
    return sorted((path.relative_to(folder).as_posix(), path) for path in folder.rglob("*") if path.is_file())


def push(
    source: Path,
    repo_id: str,
    *,
    private: bool = False,
    dry_run: bool = False,
    fmt: str | None = None,
    reporter: Reporter | None = None,
) -> PushResult:
    """Upload ``source``'s model folder with its card to ``repo_id`` (``dry_run``: only list it)."""
    reporter = reporter or Reporter()
    folder = push_folder(source, fmt, write=not dry_run)
    files = folder_files(folder)
    result = PushResult(repo_id, folder, [(name, path.stat().st_size) for name, path in files])
    visibility = "private" if private else "public"
    if dry_run:
        card = [] if (folder / CARD_FILE).is_file() else [f"  {CARD_FILE} (the model card, written at push)"]
        result.lines = [f"would push {folder} to {repo_id} ({visibility}), {len(files) + len(card)} files:"]
        result.lines += card + [f"  {name} ({size} bytes)" for name, size in result.files]
        return result
    reporter.info(f"push {folder} -> {repo_id} ({visibility}, {len(files)} files)")
    result.url = _upload(folder, files, repo_id, private)
    result.lines = [f"pushed {len(files)} files of {folder} to {result.url}"]
    return result


def _upload(folder: Path, files: list[tuple[str, Path]], repo_id: str, private: bool) -> str:
    """The repo created (or found, when it is ours) and one commit of ``files``; its URL."""
    # lazy: keeps huggingface_hub out of this module's import
    from huggingface_hub import CommitOperationAdd, HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    if hub_offline():
        raise PushError("cannot push: offline mode is on (HF_HUB_OFFLINE)", hint="unset HF_HUB_OFFLINE")
    token = get_token()
    if not token:
        raise PushError(f"no Hugging Face token to push to {repo_id} with", hint=TOKEN_HINT)
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        operations = [
            CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)) for name, path in files
        ]
        info = api.create_commit(
            repo_id, operations, commit_message=f"whisper-tune: upload {folder.parent.name}/{folder.name}"
        )
    except HfHubHTTPError as exc:
        raise _http_error(exc, repo_id, api.endpoint) from None
    except Exception as exc:
        if is_network_error(exc):
            raise PushError(
                f"cannot reach the Hub at {api.endpoint} to push {repo_id} ({type(exc).__name__})",
                hint="check the network (and HF_ENDPOINT); nothing was uploaded",
            ) from None
        raise
    return str(getattr(info, "commit_url", None) or f"{api.endpoint}/{repo_id}")


def _http_error(exc: Any, repo_id: str, endpoint: str) -> PushError:
    status = getattr(getattr(exc, "response", None), "status_code", None)
    detail = _server_message(exc)
    if status == 401:
        return PushError(f"the Hub at {endpoint} refused the token ({detail})", hint=TOKEN_HINT)
    if status in (403, 409):
        return PushError(
            f"{repo_id} exists and is not yours to write ({status}: {detail})",
            hint="choose a repo id in your own namespace or an organisation where you can write",
        )
    return PushError(f"the Hub at {endpoint} answered {status} while pushing {repo_id} ({detail})")


def _server_message(exc: Any) -> str:
    """The server's one-line error message, else the first line of the exception."""
    response = getattr(exc, "response", None)
    try:
        message = json.loads(response.text).get("error") if response is not None else None
    except (ValueError, AttributeError):
        message = None
    if message:
        return str(message)
    return (str(exc).splitlines() or ["no message"])[0]
