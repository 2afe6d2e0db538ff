"""Preset or YAML file -> ``key=value`` overrides -> two-phase validation -> a frozen ``RunConfig``.

Precedence, lowest first: schema defaults, backend option defaults, the backend's defaults for core
fields (its optional ``defaults`` hook: e.g. LoRA's learning rate), environment defaults (a SageMaker job's
channels, only for keys nothing else sets), the preset / YAML file, ``key=value`` overrides, first-class
flags (``--backend``, ``--model``, ``--ipus``, ``--num-processes``).

Phase 1 validates the core sections and the backend's name; phase 2 asks that backend's ``Options`` model
to validate the rest of the ``backend`` section. Every problem is reported at once, each with its dotted
path and, for a misspelt key, the closest valid key.
"""

from __future__ import annotations

import copy
import difflib
import os
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from whisper_tune.backend.protocol import BackendDefault
from whisper_tune.config.presets import find_preset
from whisper_tune.config.schema import BackendConfig, RunConfig
from whisper_tune.errors import BackendUnavailableError, ConfigError

Raw = dict[str, Any]


class UncheckedOptions(BaseModel):
    """Backend options kept as given because that backend is not installed here (core-only validation)."""

    model_config = ConfigDict(frozen=True, extra="allow")


def read_yaml(path: Path) -> Raw:
    """Read a YAML mapping, turning every failure into a one-line ConfigError."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path} is not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path} must hold a mapping of sections (model:, data:, ...), not {type(data).__name__}"
        )
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    """``training.learning_rate=1e-4`` -> (["training", "learning_rate"], 1e-4); values are YAML."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(
            f"override '{item}' is not of the form key=value", hint="e.g. training.max_steps=100"
        )
    parts = key.strip().split(".")
    if any(not p for p in parts):
        raise ConfigError(f"override key '{key}' has an empty part")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return parts, parsed


def set_path(data: Raw, parts: Sequence[str], value: Any) -> None:
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def has_path(data: Mapping[str, Any], parts: Sequence[str]) -> bool:
    node: Any = data
    for part in parts:
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def sagemaker_defaults(env: Mapping[str, str]) -> list[tuple[list[str], str]]:
    """Inside a SageMaker training job (seed 000) data and output default from its SM_* variables."""
    pairs = [
        ("SM_CHANNEL_TRAIN", ["data", "dataset"]),
        ("SM_OUTPUT_DATA_DIR", ["output", "dir"]),
        ("SM_MODEL_DIR", ["output", "model_dir"]),
    ]
    return [(path, env[var]) for var, path in pairs if env.get(var)]


def _field_names(model: type[BaseModel], loc: Sequence[str | int]) -> list[str]:
    """Valid keys of the (nested) model at ``loc``, for "did you mean" hints."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(part)
        if field is None:
            return []
        current = _model_in(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _model_in(annotation: Any) -> Any:
    """The BaseModel class inside Optional[...] / tuple[X, ...] / X, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def format_validation_error(
    exc: ValidationError, model: type[BaseModel], prefix: Sequence[str] = (), source: str = ""
) -> list[str]:
    lines = []
    for err in exc.errors(include_url=False):
        loc = [*prefix, *[str(p) for p in err["loc"]]]
        where = ".".join(loc) or "(top level)"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            valid = _field_names(model, err["loc"][:-1])
            close = difflib.get_close_matches(str(err["loc"][-1]), valid, n=1, cutoff=0.6)
            message = "unknown key" + (f" (did you mean '{close[0]}'?)" if close else "")
            if valid and not close:
                message += f"; valid keys here: {', '.join(valid)}"
        elif "input_value" not in message and "input" in err and err["type"] != "missing":
            message += f" (got {err['input']!r})"
        lines.append(f"{where}: {message}")
    return lines


def merge_sources(
    config: str | Path | None,
    overrides: Iterable[str] = (),
    *,
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> Raw:
    """The raw (unvalidated) config dict after applying every layer."""
    raw: Raw = copy.deepcopy(read_yaml(find_preset(config))) if config is not None else {}
    if isinstance(raw.get("backend"), str):  # "backend: cuda-lora" is short for "backend: {name: cuda-lora}"
        raw["backend"] = {"name": raw["backend"]}
    for path, value in sagemaker_defaults(os.environ if env is None else env):
        if not has_path(raw, path):
            set_path(raw, path, value)
    for item in overrides:
        set_path(raw, *parse_override(item))
    for dotted, value in (flags or {}).items():
        if value is not None:
            set_path(raw, dotted.split("."), value)
    return raw


def validate(raw: Raw, *, registry: Any | None = None, require_backend: bool = True) -> RunConfig:
    """Two-phase validation of a raw config dict.

    With ``require_backend=False`` a backend that is not installed keeps its options unchecked
    (``UncheckedOptions``) instead of failing, so presets of backends built elsewhere still validate.
    """
    raw = copy.deepcopy(raw)
    backend_raw = raw.pop("backend", None) or {}
    if not isinstance(backend_raw, dict):
        raise ConfigError(f"backend: must be a mapping or a backend name, not {type(backend_raw).__name__}")
    name = backend_raw.pop("name", BackendConfig.model_fields["name"].default)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"backend.name: must be a backend name, not {name!r}")
    errors: list[str] = []
    core: RunConfig | None = None
    try:
        core = RunConfig.model_validate(raw | {"backend": {"name": name}})
    except ValidationError as exc:
        errors += format_validation_error(exc, RunConfig)

    options: BaseModel | None = None
    if registry is None:
        from whisper_tune.backend.registry import Registry

        registry = Registry()
    try:
        backend = registry.get(str(name))
    except BackendUnavailableError as exc:
        if require_backend:
            if errors:
                errors.append(f"backend.name: {exc.message}")
            else:
                raise
        else:
            options = UncheckedOptions(**backend_raw)
    except ConfigError as exc:  # an unknown backend name
        errors.append(f"backend.name: {exc.message}" + (f" ({exc.hint})" if exc.hint else ""))
    else:
        try:
            options = backend.Options.model_validate(backend_raw)
        except ValidationError as exc:
            errors += format_validation_error(exc, backend.Options, prefix=("backend",))
    if errors or core is None or options is None:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(errors))
    if not isinstance(options, UncheckedOptions):
        core = _with_backend_defaults(core, raw, name, backend_defaults(raw, backend, options))
    return core.model_copy(update={"backend": BackendConfig(name=str(name), options=options)})


def backend_defaults(raw: Raw, backend: Any, options: BaseModel) -> dict[str, BackendDefault]:
    """What ``backend`` supplies (its optional ``defaults(options)`` hook) for core fields that no layer
    of ``raw`` set: dotted key -> ``BackendDefault(value, reason)``."""
    hook = getattr(backend, "defaults", None)
    if hook is None:
        return {}
    supplied: dict[str, BackendDefault] = hook(options)
    for key in supplied:
        if key.split(".")[0] not in RunConfig.model_fields or key.startswith("backend."):
            raise ValueError(f"backend '{backend.name}' supplies a default for '{key}', not a core field")
    return {key: d for key, d in supplied.items() if not has_path(raw, key.split("."))}


def _with_backend_defaults(
    core: RunConfig, raw: Raw, name: str, supplied: dict[str, BackendDefault]
) -> RunConfig:
    if not supplied:
        return core
    raw = copy.deepcopy(raw)
    for key, default in supplied.items():
        set_path(raw, key.split("."), default.value)
    try:
        return RunConfig.model_validate(raw | {"backend": {"name": name}})
    except ValidationError as exc:
        lines = format_validation_error(exc, RunConfig)
        raise ConfigError(
            f"invalid configuration with backend {name}'s defaults ("
            + ", ".join(f"{k}={d.value}" for k, d in supplied.items())
            + "):\n  "
            + "\n  ".join(lines),
            hint="set those fields yourself",
        ) from None


class Resolved(NamedTuple):
    """A validated config and the backend defaults in it (``config show`` and ``plan`` name them)."""

    config: RunConfig
    backend_defaults: dict[str, BackendDefault]


def resolve_config(
    config: str | Path | None = None,
    overrides: Iterable[str] = (),
    *,
    registry: Any | None = None,
    env: Mapping[str, str] | None = None,
    require_backend: bool = True,
    **flags: Any,
) -> Resolved:
    """``load_config`` (same arguments), plus which fields the backend's defaults filled in."""
    raw = merge_sources(config, overrides, flags=_flag_paths(**flags), env=env)
    resolved = validate(raw, registry=registry, require_backend=require_backend)
    options = resolved.backend.options
    supplied: dict[str, BackendDefault] = {}
    if not isinstance(options, UncheckedOptions):
        if registry is None:
            from whisper_tune.backend.registry import Registry

            registry = Registry()
        core_raw = {k: v for k, v in raw.items() if k != "backend"}
        supplied = backend_defaults(core_raw, registry.get(resolved.backend.name), options)
    return Resolved(resolved, supplied)


def _flag_paths(
    backend: str | None = None,
    model: str | None = None,
    ipus: int | None = None,
    num_processes: int | None = None,
) -> dict[str, Any]:
    return {
        "backend.name": backend,
        "model.name": model,
        "backend.ipus": ipus,
        "backend.num_processes": num_processes,
    }


def load_config(
    config: str | Path | None = None,
    overrides: Iterable[str] = (),
    *,
    backend: str | None = None,
    model: str | None = None,
    ipus: int | None = None,
    num_processes: int | None = None,
    registry: Any | None = None,
    env: Mapping[str, str] | None = None,
    require_backend: bool = True,
) -> RunConfig:
    """Build a validated ``RunConfig`` from a preset name or YAML path plus overrides.

    >>> load_config("quickstart", ["training.max_steps=10"])  # doctest: +SKIP
    """
    flags = {
        "backend.name": backend,
        "model.name": model,
        "backend.ipus": ipus,
        "backend.num_processes": num_processes,
    }
    raw = merge_sources(config, overrides, flags=flags, env=env)
    return validate(raw, registry=registry, require_backend=require_backend)


def dump_yaml(config: RunConfig, comments: Mapping[str, str] | None = None) -> str:
    """The config as YAML; ``comments`` (dotted key -> text) are appended to those keys' lines."""
    text: str = yaml.safe_dump(config.to_yaml_dict(), sort_keys=False, allow_unicode=True)
    if not comments:
        return text
    lines = text.splitlines()
    path: list[tuple[int, str]] = []  # (indent, key) of the mapping keys enclosing a line
    for i, line in enumerate(lines):
        key, sep, _ = line.strip().partition(":")
        if not sep or line.lstrip().startswith(("- ", "#")):
            continue
        indent = len(line) - len(line.lstrip())
        path = [p for p in path if p[0] < indent] + [(indent, key)]
        comment = comments.get(".".join(k for _, k in path))
        if comment:
            lines[i] = f"{line}  # {comment}"
    return "\n".join(lines) + "\n"
