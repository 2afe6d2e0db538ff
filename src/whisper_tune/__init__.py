"""whisper-tune: fine-tune OpenAI's Whisper on the hardware you have.

``import whisper_tune`` is light: torch, transformers and backends load only when used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from whisper_tune.version import __version__

__all__ = ["RunConfig", "__version__", "load_config", "run"]

if TYPE_CHECKING:
    from whisper_tune.config.schema import RunConfig
    from whisper_tune.config_loading import load_config
    from whisper_tune.runs.run import run


#: the public names and the modules that define them, imported on first use (PEP 562), so that
#: `import whisper_tune` loads no pydantic, yaml or torch until a name is used
_PUBLIC = {
    "RunConfig": "whisper_tune.config.schema",
    "load_config": "whisper_tune.config_loading",
    "run": "whisper_tune.runs.run",
}


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'whisper_tune' has no attribute {name!r}")
