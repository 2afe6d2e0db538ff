"""whisper-tune: fine-tune OpenAI's Whisper on the hardware you have.

``import whisper_tune`` is light: torch, transformers and backends load only when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["RunConfig", "__version__", "load_config", "run"]

if TYPE_CHECKING:
    from whisper_tune.config.load import load_config
    from whisper_tune.config.schema import RunConfig
    from whisper_tune.pipeline import run


def __getattr__(name: str) -> Any:
    if name == "RunConfig":
        from whisper_tune.config.schema import RunConfig

        return RunConfig
    if name == "load_config":
        from whisper_tune.config.load import load_config

        return load_config
    if name == "run":
        from whisper_tune.pipeline import run

        return run
    raise AttributeError(f"module 'whisper_tune' has no attribute {name!r}")
