"""The one exception family of whisper-tune, each class with its own exit code.

A user sees one sentence and what to do about it; a real bug (any exception that is not a
``WhisperTuneError``) still shows its traceback. The table in docs/errors.md is generated from
``EXIT_CODES`` below and a test checks they agree.
"""

from __future__ import annotations


class WhisperTuneError(Exception):
    """Base class: a problem the user can fix. ``hint`` says how."""

    exit_code: int = 1
    kind: str = "error"

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class ConfigError(WhisperTuneError):
    """The configuration is invalid: unknown key, bad value, impossible combination."""

    exit_code = 2
    kind = "config"


class DataError(WhisperTuneError):
    """The dataset cannot be used: missing path, missing column, nothing usable left after filtering."""

    exit_code = 3
    kind = "data"


class ModelError(WhisperTuneError):
    """The model cannot be loaded or does not fit the request (mel bins, language on an .en model)."""

    exit_code = 4
    kind = "model"


class BackendUnavailableError(WhisperTuneError):
    """The chosen backend is not installed, or its software stack is missing."""

    exit_code = 5
    kind = "backend"


class HardwareError(WhisperTuneError):
    """The hardware the backend needs is not there or is too small."""

    exit_code = 6
    kind = "hardware"


class OutputError(WhisperTuneError):
    """The output (run) directory cannot be created or written."""

    exit_code = 7
    kind = "output"


class ExportError(WhisperTuneError):
    """An exported model is incomplete or does not transcribe like its source (WER beyond the tolerance)."""

    exit_code = 8
    kind = "export"


class GuardRailError(WhisperTuneError):
    """A guard rail fired and eval.fail_on_regression is set: a held-out set got worse beyond its margin."""

    exit_code = 9
    kind = "guard-rail"


class PushError(WhisperTuneError):
    """A push to the Hub failed: no token, the Hub cannot be reached, or the repo is not yours to write."""

    exit_code = 10
    kind = "push"


class InterruptedRun(WhisperTuneError):
    """The run was interrupted (Ctrl-C / SIGTERM); what was written so far is kept."""

    exit_code = 130
    kind = "interrupted"


#: Exit code -> (error class, when it happens). Exit code 1 is an unexpected bug (traceback shown).
EXIT_CODES: dict[int, tuple[str, str]] = {
    0: ("-", "success"),
    1: ("(any other exception)", "a bug in whisper-tune or a library: the traceback is printed"),
    **{
        cls.exit_code: (cls.__name__, (cls.__doc__ or "").strip().splitlines()[0])
        for cls in (
            ConfigError,
            DataError,
            ModelError,
            BackendUnavailableError,
            HardwareError,
            OutputError,
            ExportError,
            GuardRailError,
            PushError,
            InterruptedRun,
        )
    },
}
