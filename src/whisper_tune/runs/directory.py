"""A run's directory: its name, creating it (or refusing to overwrite a finished run), and the checkpoint a
resumed run starts from."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from whisper_tune.config.schema import RunConfig
from whisper_tune.disk import RUN_DIR_HINT, writing
from whisper_tune.errors import ConfigError, OutputError

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"


def model_label(name: str) -> str:
    """The model's part of a run directory name: its last path part, or for a run's ``final/`` (or a
    checkpoint) the run's name."""
    path = Path(name.replace("pip:", "").rstrip("/"))
    parts = [p for p in path.parts if p not in ("final", "best", "checkpoints") and not p.startswith("step-")]
    return (parts[-1] if parts else path.name).replace("/", "-")


def run_dir_path(config: RunConfig, *, train: bool = True) -> Path:
    """Where a run of ``config`` started now writes: ``output.dir`` / ``output.run_name``, or
    ``<UTC time>-<backend>-<model>`` (with ``-eval`` for an evaluation-only run)."""
    name = config.output.run_name or "{}-{}-{}{}".format(
        datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S"),
        config.backend.name,
        model_label(config.model.name),
        "" if train else "-eval",
    )
    return Path(config.output.dir).expanduser() / name


def make_run_dir(config: RunConfig, *, train: bool = True) -> Path:
    """Create the run directory; a clear OutputError if it cannot be created or written."""
    run_dir = run_dir_path(config, train=train)
    resuming = config.training.resume_from is not None
    if (run_dir / METRICS_FILE).exists() and not resuming:
        raise OutputError(
            f"run directory {run_dir} already holds a finished run",
            hint="choose another output.run_name (nothing was overwritten)",
        )
    probe = run_dir / ".write-test"
    with writing(
        "the run directory",
        run_dir,
        hint=RUN_DIR_HINT,
        fix="set output.dir to a writable directory",
        partial=probe,
    ):
        run_dir.mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
        probe.unlink()
    return run_dir


def resolve_resume(config: RunConfig, run_dir: Path) -> Path | None:
    # lazy: keeps numpy out of this module's import
    from whisper_tune.training.checkpoints import list_checkpoints

    value = config.training.resume_from
    if value is None:
        return None
    if value == "latest":
        found = list_checkpoints(run_dir / "checkpoints")
        if not found:
            raise ConfigError(
                f"training.resume_from=latest but {run_dir / 'checkpoints'} has no checkpoint",
                hint="set output.run_name to the run to resume",
            )
        return found[-1]
    path = Path(value).expanduser()
    if not (path / "trainer_state.json").is_file():
        raise ConfigError(f"training.resume_from: {path} is not a whisper-tune checkpoint")
    return path


def resumed_step(checkpoint: Path | None) -> int:
    """The step a resumed run starts at (0: a new run), read before training prunes checkpoints."""
    if checkpoint is None:
        return 0
    # lazy: keeps numpy out of this module's import
    from whisper_tune.training.checkpoints import read_state

    return read_state(checkpoint)[0]
