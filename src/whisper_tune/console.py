"""Console messages, the run log file, and progress bars (tqdm) in one small object; and, while the CLI
runs, other libraries' log records and warnings routed to run.log (``route_library_output``)."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections import deque
from collections.abc import Iterator
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


def quiet_libraries(*, errors_only: bool = True) -> None:
    """Turn off the libraries' progress bars (weight loading, downloads) and, with ``errors_only`` (when
    whisper-tune is used as a library, without the CLI's routing), their warnings too.

    Only touches libraries that are already imported, so it never imports transformers itself.
    """
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    transformers_logging = sys.modules.get("transformers.utils.logging")
    if transformers_logging is not None:
        transformers_logging.disable_progress_bar()
    if not errors_only:
        return  # their records go to run.log (``route_library_output``)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # bitsandbytes logs a warning on every int8 matmul whose input is not fp16 (bf16 autocast, fp32) and,
    # on CPUs with AVX512-BF16, one at import about an optional hub kernel it falls back from
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    if transformers_logging is not None:
        transformers_logging.set_verbosity_error()


#: the libraries that add a console handler of their own to their top logger (transformers also stops
#: its records from propagating); ``route_library_output`` takes those loggers over
OWN_CONSOLE_HANDLERS = ("transformers", "datasets", "huggingface_hub")
#: how many records of other libraries are kept in memory until run.log exists
PENDING_RECORDS = 1000
#: distinct (logger, level, message) triples remembered to write each once
DISTINCT_RECORDS = 10_000


class _RoutedLogger(logging.Logger):
    """A library's top logger while the CLI routes library output: its records always propagate to
    ``LibraryLog`` and the console handler the library adds itself (a plain ``StreamHandler``) is
    refused. Installed by swapping the class of the existing logger object, so the
    library's own references to it keep working."""

    @property
    def propagate(self) -> bool:
        return True

    @propagate.setter
    def propagate(self, value: bool) -> None:
        # transformers sets False when it configures its logger: kept aside, put back with the class
        self.__dict__["_routed_propagate"] = value

    def addHandler(self, hdlr: logging.Handler) -> None:
        if _is_console_handler(hdlr):
            self.__dict__.setdefault("_routed_refused", []).append(hdlr)
        else:
            super().addHandler(hdlr)


def _is_console_handler(handler: logging.Handler) -> bool:
    """The plain ``StreamHandler`` these libraries add (on stderr, as it was when they added it); a file
    handler, or a test's capturing handler, is a subclass and stays."""
    return type(handler) is logging.StreamHandler


class LibraryLog(logging.Handler):
    """Where the log records of other libraries (transformers, peft, bitsandbytes, datasets, accelerate,
    huggingface_hub, ...) and ``warnings.warn`` go while the CLI runs: the run's run.log, each distinct
    message once, and the terminal only with ``--debug``. Records from before a run directory exists are
    kept in memory (the last ``PENDING_RECORDS``) and written to run.log when it opens; a command that
    opens no run directory (an early error, ``plan``, ``export``, ...) drops them: ``--debug`` shows them.
    """

    def __init__(self, echo: bool) -> None:
        super().__init__(logging.DEBUG)
        self.echo = echo
        self.file: logging.Handler | None = None
        self.pending: deque[logging.LogRecord] = deque(maxlen=PENDING_RECORDS)
        self.seen: set[tuple[str, int, str]] = set()
        self.console = logging.StreamHandler(sys.stderr)
        self.console.setFormatter(logging.Formatter("%(name)s: %(levelname)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == LOGGER_NAME or record.name.startswith(LOGGER_NAME + "."):
            return  # whisper-tune's own lines have their handlers (console and run.log)
        try:
            message = record.getMessage()
        except Exception:  # a library's malformed record: logging's own report, not a crash
            self.handleError(record)
            return
        key = (record.name, record.levelno, message)
        if key in self.seen:
            return
        if len(self.seen) >= DISTINCT_RECORDS:
            self.seen.clear()
        self.seen.add(key)
        if self.echo:
            self.console.handle(record)
        line = logging.makeLogRecord({**record.__dict__, "msg": f"[{record.name}] {message}", "args": None})
        if self.file is not None:
            self.file.handle(line)
        else:
            self.pending.append(line)

    def attach(self, file: logging.Handler) -> None:
        """run.log is open: what was held back goes there first, then every new record."""
        self.file = file
        while self.pending:
            file.handle(self.pending.popleft())

    def detach(self, file: logging.Handler) -> None:
        if self.file is file:
            self.file = None


#: the routing in force (``route_library_output``), if any
_library_log: LibraryLog | None = None


@contextlib.contextmanager
def route_library_output(*, debug: bool) -> Iterator[LibraryLog]:
    """The CLI owns its terminal: while this is active, other libraries' log records and ``warnings.warn``
    go to ``LibraryLog`` (run.log; the terminal only with ``debug``), including the records of libraries
    that print through handlers of their own. Everything is put back on exit (tests call the CLI in
    process)."""
    global _library_log
    if _library_log is not None:  # nested (a CLI call inside a CLI call): the outer routing stays
        yield _library_log
        return
    handler = LibraryLog(echo=debug)
    root = logging.getLogger()
    swapped: list[tuple[logging.Logger, list[logging.Handler]]] = []
    for name in OWN_CONSOLE_HANDLERS:
        logger = logging.getLogger(name)
        if type(logger) is not logging.Logger:
            continue  # someone else's logger class: left alone
        swapped.append((logger, list(logger.handlers)))
        for h in [h for h in logger.handlers if _is_console_handler(h)]:
            logger.removeHandler(h)
        logger.__class__ = _RoutedLogger
    root.addHandler(handler)
    logging.captureWarnings(True)
    _library_log = handler
    try:
        yield handler
    finally:
        _library_log = None
        logging.captureWarnings(False)
        root.removeHandler(handler)
        for logger, before in swapped:  # as the libraries would have left them without the routing
            refused = logger.__dict__.pop("_routed_refused", [])
            propagate = logger.__dict__.pop("_routed_propagate", None)
            logger.__class__ = logging.Logger
            now = logger.handlers
            kept = [h for h in before if h in now or _is_console_handler(h)]  # in their order
            logger.handlers = [*kept, *(h for h in now if h not in before), *refused]
            if propagate is not None:
                logger.propagate = propagate


def library_log() -> LibraryLog | None:
    """The routing in force, if the CLI installed one."""
    return _library_log


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
            quiet_libraries(errors_only=_library_log is None)

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
        if _library_log is not None:
            _library_log.attach(handler)

    def close(self) -> None:
        if self._file_handler is not None:
            if _library_log is not None:
                _library_log.detach(self._file_handler)
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
