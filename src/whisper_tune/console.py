"""Console messages, the run log file, and progress bars (tqdm) in one small object."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

LOGGER_NAME = "whisper_tune"


class Progress:
    """A tqdm bar that is a no-op when progress output is off."""

    def __init__(self, desc: str, total: int | None, unit: str, enabled: bool) -> None:
        self._bar: Any = None
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False, file=sys.stderr
            )

    def update(self, n: int = 1, **postfix: Any) -> None:
        if self._bar is not None:
            if postfix:  # before the count moves, so the line drawn for this step shows this step's values
                self._bar.set_postfix(postfix, refresh=False)
            self._bar.update(n)

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.close()


def quiet_libraries() -> None:
    """Silence library chatter (weight-loading bars, deprecation notes) unless --debug is given.

    Only touches libraries that are already imported, so it never imports transformers itself.
    """
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # bitsandbytes logs a warning on every int8 matmul whose input is not fp16 (bf16 autocast, fp32) and,
    # on CPUs with AVX512-BF16, one at import about an optional hub kernel it falls back from
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    transformers_logging = sys.modules.get("transformers.utils.logging")
    if transformers_logging is not None:
        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()


class _ConsoleHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The one console handler whisper-tune adds to its logger (found again by type, never added twice).
    Records marked ``file_only`` (``Reporter.log_only``) are not shown."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "file_only", False) and bool(super().filter(record))


class _RunLog(logging.FileHandler):
    """run.log. A write that fails (a full disk) stops the file quietly instead of printing logging's
    "--- Logging error ---" traceback on every line: the console goes on, and the error that stops the run
    says what could not be written."""

    failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        self.failed = True

    def close(self) -> None:
        with contextlib.suppress(OSError):  # the last lines cannot be flushed to a full disk
            super().close()


class Reporter:
    """Writes to the console (stderr) and, once a run directory exists, to ``run.log`` in it."""

    def __init__(self, *, quiet: bool = False, progress: bool = True, verbose: bool = False) -> None:
        self.quiet = quiet
        self.show_progress = progress and not quiet
        self.logger = logging.getLogger(LOGGER_NAME)
        self.logger.setLevel(logging.DEBUG)
        self.logger.propagate = False
        self._file_handler: logging.Handler | None = None
        #: experiment trackers (``whisper_tune.runs.trackers``) that ``log_metrics`` also writes to
        self.trackers: list[Any] = []
        #: the steps already sent to the trackers: (step, keys)
        self.tracked: set[tuple[int, tuple[str, ...]]] = set()
        if not any(isinstance(h, _ConsoleHandler) for h in self.logger.handlers):
            console = _ConsoleHandler(sys.stderr)
            console.setFormatter(logging.Formatter("%(message)s"))
            self.logger.addHandler(console)
        for handler in self.logger.handlers:
            if isinstance(handler, _ConsoleHandler):
                handler.setLevel(logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO))
        if not verbose:
            quiet_libraries()

    @classmethod
    def silent(cls) -> Reporter:
        return cls(quiet=True, progress=False)

    def log_to(self, path: Path) -> None:
        self.close()
        handler = _RunLog(path, encoding="utf-8")
        handler.setLevel(logging.DEBUG)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self.logger.addHandler(handler)
        self._file_handler = handler

    def close(self) -> None:
        if self._file_handler is not None:
            self.logger.removeHandler(self._file_handler)
            self._file_handler.close()
            self._file_handler = None

    def info(self, message: str) -> None:
        self.logger.info(message)

    def debug(self, message: str) -> None:
        self.logger.debug(message)

    def log_only(self, message: str) -> None:
        """To run.log only, not the console (for what the caller prints itself)."""
        self.logger.info(message, extra={"file_only": True})

    def log_metrics(self, record: dict[str, float]) -> None:
        """One training log record ({"step", "loss", ...}): to run.log as JSON, and to the trackers."""
        import json

        self.logger.debug(json.dumps(record))
        self.track(record)

    def attach_trackers(self, trackers: list[Any]) -> None:
        """Trackers for one run (replacing any earlier run's)."""
        self.trackers, self.tracked = trackers, set()

    def track(self, record: dict[str, float]) -> None:
        """Send a log record to the trackers unless it was sent already."""
        if not self.trackers:
            return
        step = int(record["step"])
        values = {k: v for k, v in record.items() if k != "step"}
        key = (step, tuple(sorted(values)))
        if key in self.tracked:
            return
        self.tracked.add(key)
        for tracker in self.trackers:
            tracker.log(values, step=step)

    def warning(self, message: str) -> None:
        self.logger.warning(f"warning: {message}")

    def progress(self, desc: str, total: int | None = None, unit: str = "it") -> Progress:
        return Progress(desc, total, unit, self.show_progress)
