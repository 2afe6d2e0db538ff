"""The CLI owns its terminal: other libraries' log records (transformers, peft, bitsandbytes, datasets,
accelerate, huggingface_hub, kernels, ...) and ``warnings.warn`` go to the run's run.log, and to the terminal
only with ``--debug``. Before a run directory exists they are held back and written to run.log when it
opens; a command that opens none drops them (``--debug`` shows them)."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

import pytest
from helpers import REPO, run_child, toy_overrides

from whisper_tune.console import Reporter, library_log, route_library_output

KERNELS = (
    "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes' because Hugging Face "
    "Hub is in offline mode."
)


def transformers_logger(name: str = "transformers.modeling_utils") -> logging.Logger:
    """A logger as transformers hands them out: its library logger configured (its own stderr handler,
    propagation off), as after ``import transformers``."""
    from transformers.utils import logging as transformers_logging

    logger = transformers_logging.get_logger(name)
    # as in a fresh process: warnings on (an earlier library-mode Reporter in this process set errors only),
    # printed to this test's stderr if they print
    transformers_logging.set_verbosity_warning()
    handler = transformers_logging._default_handler
    if handler is not None:  # (it also keeps its first stream's flush)
        handler.stream, handler.flush = sys.stderr, sys.stderr.flush
    return logger


def emit_all(tag: str) -> None:
    transformers_logger().warning(f"{tag}: a transformers warning")
    logging.getLogger("kernels._internals.hf_hub").warning(f"{tag}: {KERNELS}")  # no handler of its own
    logging.getLogger("datasets.builder").warning(f"{tag}: a datasets warning")
    warnings.warn(f"{tag}: a warnings.warn", UserWarning, stacklevel=1)


def test_library_records_go_to_run_log_not_the_terminal(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    transformers_logger()  # configured before the CLI starts, as when a test imported it
    with route_library_output(debug=False) as routed:
        reporter = Reporter(quiet=True, progress=False)  # as the CLI makes it: inside the routing
        assert library_log() is routed
        emit_all("before")  # no run directory yet: held back
        reporter.log_to(tmp_path / "run.log")
        emit_all("during")
        emit_all("during")  # the same message again is written once
        reporter.close()
    out, err = capfd.readouterr()
    assert out == "" and err == "", err
    log = (tmp_path / "run.log").read_text()
    for tag in ("before", "during"):
        assert f"WARNING [transformers.modeling_utils] {tag}: a transformers warning" in log
        assert f"WARNING [kernels._internals.hf_hub] {tag}: {KERNELS}" in log
        assert f"WARNING [datasets.builder] {tag}: a datasets warning" in log
        assert "WARNING [py.warnings] " in log and f"UserWarning: {tag}: a warnings.warn" in log
    assert log.count("during: a transformers warning") == 1
    assert log.index("before: a transformers warning") < log.index("during: a transformers warning")


def test_with_debug_they_reach_the_terminal_too(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    transformers_logger()
    with route_library_output(debug=True):
        reporter = Reporter(quiet=True, progress=False)
        reporter.log_to(tmp_path / "run.log")
        emit_all("debug")
        reporter.close()
    _, err = capfd.readouterr()
    assert "transformers.modeling_utils: WARNING: debug: a transformers warning" in err
    assert f"kernels._internals.hf_hub: WARNING: debug: {KERNELS}" in err
    assert "UserWarning: debug: a warnings.warn" in err
    assert err.count("debug: a transformers warning") == 1  # transformers' own handler stays out
    assert "debug: a transformers warning" in (tmp_path / "run.log").read_text()


def test_without_a_run_directory_they_are_dropped_and_everything_is_put_back(
    capfd: pytest.CaptureFixture[str],
) -> None:
    from transformers.utils import logging as transformers_logging

    transformers_logger()
    top = logging.getLogger("transformers")
    handlers, propagate, cls = list(top.handlers), top.propagate, type(top)
    with route_library_output(debug=False):
        emit_all("early")
        assert logging.getLogger("transformers").propagate  # transformers cannot turn it off meanwhile
    _, err = capfd.readouterr()
    assert err == ""
    assert library_log() is None
    assert type(top) is cls and top.handlers == handlers and top.propagate == propagate
    assert transformers_logging._default_handler in top.handlers  # its console handler is back
    with warnings.catch_warnings(record=True) as caught:  # warnings are warnings again
        warnings.simplefilter("always")
        warnings.warn("after", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["after"]


LAUNCHER = """
import logging, sys, warnings
from whisper_tune.runs import run as run_module

def emit(tag):
    from transformers.utils import logging as transformers_logging
    transformers_logging.get_logger("transformers.modeling_utils").warning(f"{tag}: a transformers warning")
    logging.getLogger("kernels._internals.hf_hub").warning(f"{tag}: a kernels warning")
    warnings.warn(f"{tag}: a warnings.warn", UserWarning, stacklevel=1)

opened, prepared = run_module.Run.open, run_module.Run.prepare

def open_(self):
    emit("before the run directory")
    return opened(self)

def prepare(self):
    emit("during the run")
    return prepared(self)

run_module.Run.open, run_module.Run.prepare = open_, prepare
from whisper_tune.cli import main
sys.exit(main())
"""


@pytest.mark.slow
@pytest.mark.parametrize("debug", [False, True], ids=["default", "debug"])
def test_a_real_run_keeps_library_warnings_in_run_log(
    tmp_path: Path, toy_model_dir: Path, debug: bool
) -> None:
    """A real `whisper-tune run` whose run emits a transformers warning, a warning on a library logger
    without handlers and a ``warnings.warn``, before and after its directory exists: all of them in
    run.log; on the terminal only with --debug."""
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER)
    overrides = toy_overrides(
        toy_model_dir,
        tmp_path / "runs",
        **{"training.max_steps": 1, "eval.before": "false", "output.run_name": "r", "output.plot": "false"},
    )
    argv = [sys.executable, str(launcher), *(["--debug"] if debug else []), "run", "quickstart", *overrides]
    # as a user's shell has it: not the errors-only verbosity a library-mode Reporter in this process set
    env = {k: v for k, v in os.environ.items() if k != "TRANSFORMERS_VERBOSITY"}
    done = run_child(argv, cwd=REPO, timeout=600, env={**env, "PYTHONUNBUFFERED": "1"})
    assert done.returncode == 0, done.stderr
    log = (tmp_path / "runs" / "r" / "run.log").read_text()
    for tag in ("before the run directory", "during the run"):
        for message in (
            f"[transformers.modeling_utils] {tag}: a transformers warning",
            f"[kernels._internals.hf_hub] {tag}: a kernels warning",
            f"UserWarning: {tag}: a warnings.warn",
        ):
            assert message in log, log
            bare = message.split("] ", 1)[-1]
            assert (bare in done.stderr) == debug, done.stderr
    if not debug:  # whisper-tune's own lines are all that is left on the terminal
        assert "WARNING" not in done.stderr and "Warning" not in done.stderr, done.stderr
