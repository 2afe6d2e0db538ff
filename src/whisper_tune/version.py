"""The package version (one place; ``whisper_tune.__version__`` and ``whisper-tune --version`` read it)."""

__version__ = "0.1.0"
