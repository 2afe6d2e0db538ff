"""Where samples come from: Hugging Face datasets, local audiofolders, CSV/JSONL manifests.

Every source yields ``RawSample``s (an id, something decodable, a transcript); decoding happens later in
``prepare`` so that one bad file is counted and skipped, never fatal. The layouts are in docs/data.md.
``available_splits`` and ``data_shortcut`` (``--data``) look at a local data set without reading audio.
Nothing heavy is imported at module level (NumPy only for ``seeded_split``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

from whisper_tune.config.schema import DataConfig, DatasetKind
from whisper_tune.errors import DataError
from whisper_tune.hub import NO_LOCAL_DIRECTORY, hub_offline, is_network_error, missing_locally

PREPARED_MANIFEST = "manifest.json"
AUDIOFOLDER_METADATA = "metadata.csv"
NO_NETWORK_HINT = (
    "the Hugging Face hub cannot be reached or the dataset needs a loading script that current `datasets` "
    "no longer runs; point data.dataset at a local copy (audiofolder, CSV/JSONL manifest or parquet), "
    "see docs/data.md"
)
SPLIT_COLUMN = "split"
#: ``--data`` evaluates on the first of these splits the data has (else it holds out DEFAULT_TEST_SIZE)
EVAL_SPLIT_NAMES = ("eval", "test", "validation", "valid", "dev")
DEFAULT_TEST_SIZE = 0.1


@dataclass(frozen=True)
class RawSample:
    key: str
    audio: Any  # a path, encoded bytes, or {"array", "sampling_rate"} / {"bytes", "path"}
    text: Any
    language: Any = None  # the row's language (data.language_column), as written in the data
    #: the row's timestamped segments (data.segments_column, with data.timestamps) as written in the data
    #: ("" when the cell is empty); None when the split is read without them
    segments: Any = None


@dataclass(frozen=True)
class SplitSpec:
    """One split of one dataset, with the columns to read."""

    dataset: str
    kind: DatasetKind
    split: str
    subset: str | None = None
    audio_column: str = "audio"
    text_column: str = "text"
    language_column: str | None = None
    streaming: bool = False
    #: data.timestamps: the column with each row's segments (training split only)
    segments_column: str | None = None


def looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).suffix.lower() in {".csv", ".jsonl", ".json"}


def detect_kind(dataset: str) -> DatasetKind:
    """Decide how to read ``dataset`` from what is on disk; a missing path is a DataError."""
    path = Path(dataset).expanduser()
    if path.is_dir():
        if (path / PREPARED_MANIFEST).is_file() or any(path.glob(f"*/{PREPARED_MANIFEST}")):
            return "prepared"
        if (path / AUDIOFOLDER_METADATA).is_file() or any(path.glob(f"*/{AUDIOFOLDER_METADATA}")):
            return "audiofolder"
        return "hub"  # a local directory `datasets` can read (parquet, arrow, csv shards...)
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return "csv"
        if path.suffix.lower() in {".jsonl", ".json"}:
            return "jsonl"
        raise DataError(f"{dataset} is a file, but not a .csv or .jsonl manifest")
    if looks_like_path(dataset):
        raise DataError(f"dataset path {dataset} does not exist")
    return "hub"


def resolve_kind(dataset: str, kind: DatasetKind) -> DatasetKind:
    if kind != "auto":
        if kind != "hub" and not Path(dataset).expanduser().exists():
            raise DataError(f"dataset path {dataset} does not exist")
        return kind
    return detect_kind(dataset)


def split_parts(split: str) -> list[str]:
    parts = [p.strip() for p in split.split("+")]
    if not all(parts):
        raise DataError(f"split '{split}' has an empty part")
    return parts


def _require_columns(available: list[str], spec: SplitSpec, where: str) -> None:
    optional = [c for c in (spec.language_column, spec.segments_column) if c]
    wanted = (spec.audio_column, spec.text_column, *optional)
    missing = [c for c in wanted if c not in available]
    if missing:
        raise DataError(
            f"{where} has no column {', '.join(repr(c) for c in missing)}; "
            f"its columns are: {', '.join(available)}",
            hint="set data.audio_column / data.text_column / data.language_column",
        )


def _read_table(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    try:
        if path.suffix.lower() == ".csv":
            with path.open(newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                rows = list(reader)
                return list(reader.fieldnames or []), rows
        rows = []
        with path.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise DataError(f"{path} line {n} is not valid JSON: {exc.msg}") from None
        columns = list(dict.fromkeys(k for row in rows for k in row))
        return columns, rows
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None


def _iter_table(path: Path, spec: SplitSpec, split_filter: str | None) -> Iterator[RawSample]:
    columns, rows = _read_table(path)
    _require_columns(columns, spec, str(path))
    if split_filter is not None:
        if "split" not in columns:
            raise DataError(
                f"{path} has no 'split' column, so it cannot provide the split '{split_filter}'",
                hint="add a split column, or set data.eval_split=null and data.test_size=0.1",
            )
        rows = [r for r in rows if str(r.get("split")) == split_filter]
    for n, row in enumerate(rows):
        audio = row.get(spec.audio_column)
        audio_path = (path.parent / str(audio)) if audio not in (None, "") else None
        yield RawSample(
            key=f"{path.name}:{n + 1}",
            audio=audio_path,
            text=row.get(spec.text_column),
            language=_language(row, spec),
            segments=_segments(row, spec),
        )


def _language(row: dict[str, Any], spec: SplitSpec) -> Any:
    return row.get(spec.language_column) if spec.language_column else None


def _segments(row: dict[str, Any], spec: SplitSpec) -> Any:
    if not spec.segments_column:
        return None
    value = row.get(spec.segments_column)
    return "" if value is None else value


def _audiofolder_split_dir(root: Path, split: str) -> Path:
    if (root / split / AUDIOFOLDER_METADATA).is_file():
        return root / split
    if split == "train" and (root / AUDIOFOLDER_METADATA).is_file():
        return root
    available = sorted(p.parent.name for p in root.glob(f"*/{AUDIOFOLDER_METADATA}"))
    raise DataError(
        f"audiofolder {root} has no split '{split}' (no {split}/{AUDIOFOLDER_METADATA})",
        hint=f"available splits: {', '.join(available) or 'none'}",
    )


def _iter_audiofolder(spec: SplitSpec, part: str) -> Iterator[RawSample]:
    folder = _audiofolder_split_dir(Path(spec.dataset).expanduser(), part)
    metadata = folder / AUDIOFOLDER_METADATA
    columns, rows = _read_table(metadata)
    audio_col = "file_name" if spec.audio_column == "audio" and "audio" not in columns else spec.audio_column
    _require_columns(columns, replace(spec, audio_column=audio_col), str(metadata))
    for row in rows:
        name = row.get(audio_col) or ""
        yield RawSample(
            key=f"{folder.name}/{name}",
            audio=(folder / name) if name else None,
            text=row.get(spec.text_column),
            language=_language(row, spec),
            segments=_segments(row, spec),
        )


def _raise_hub_error(spec: SplitSpec, part: str, exc: Exception) -> NoReturn:
    if isinstance(exc, ValueError):
        raise DataError(f"cannot load split '{part}' of {spec.dataset}: {str(exc).splitlines()[0]}") from None
    # datasets raises its own classes (DatasetNotFoundError, ...) that share no useful base.
    if isinstance(exc, (FileNotFoundError, ConnectionError, OSError, RuntimeError)) or type(
        exc
    ).__module__.startswith(("datasets", "huggingface_hub")):
        raise DataError(
            f"cannot load dataset {spec.dataset}: {str(exc).splitlines()[0]}", hint=NO_NETWORK_HINT
        ) from None
    raise exc


def _load_hub_split(spec: SplitSpec, part: str) -> Any:
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a dependency
        raise DataError(
            "reading a Hugging Face dataset needs the `datasets` package", hint="pip install datasets"
        ) from exc
    try:
        ds = datasets.load_dataset(spec.dataset, spec.subset, split=part, streaming=spec.streaming)
    except Exception as exc:
        if missing_locally(spec.dataset) and (hub_offline() or is_network_error(exc)):
            raise DataError(
                f"cannot load dataset {spec.dataset}: {NO_LOCAL_DIRECTORY}",
                hint=f"the hub is not reachable here ({str(exc).splitlines()[0]}); give the path of a "
                "local copy (audiofolder, CSV/JSONL manifest or parquet), see docs/data.md",
            ) from None
        _raise_hub_error(spec, part, exc)
    columns = list(ds.features or {}) if ds.features is not None else []
    if columns:
        _require_columns(columns, spec, f"dataset {spec.dataset} ({part})")
        if isinstance(ds.features[spec.audio_column], datasets.Audio):
            # Decode ourselves with soundfile: no dependency on the decoder `datasets` bundles this year.
            ds = ds.cast_column(spec.audio_column, datasets.Audio(decode=False))
    return ds


def _iter_hub(spec: SplitSpec, part: str, ds: Any | None = None) -> Iterator[RawSample]:
    ds = _load_hub_split(spec, part) if ds is None else ds
    for n, row in enumerate(ds):
        if n == 0:
            _require_columns(list(row), spec, f"dataset {spec.dataset} ({part})")
        yield RawSample(
            key=f"{part}:{n}",
            audio=row.get(spec.audio_column),
            text=row.get(spec.text_column),
            language=_language(row, spec),
            segments=_segments(row, spec),
        )


def iter_split(spec: SplitSpec) -> Iterator[RawSample]:
    """All samples of a split (``a+b`` joins splits), lazily."""
    for part in split_parts(spec.split):
        if spec.kind == "audiofolder":
            yield from _iter_audiofolder(spec, part)
        elif spec.kind in ("csv", "jsonl"):
            yield from _iter_table(Path(spec.dataset).expanduser(), spec, None if part == "all" else part)
        elif spec.kind == "hub":
            yield from _iter_hub(spec, part)
        else:
            raise DataError(f"data kind '{spec.kind}' cannot be read as raw samples")


def seeded_split(
    samples: list[RawSample], test_size: float, seed: int
) -> tuple[list[RawSample], list[RawSample]]:
    """Hold out ``test_size`` of the samples for evaluation, reproducibly (same seed, same split)."""
    if len(samples) < 2:
        raise DataError(f"cannot split {len(samples)} sample(s) into train and test")
    import numpy as np

    n_test = max(1, round(len(samples) * test_size))
    order = np.random.default_rng(seed).permutation(len(samples))
    test_idx = set(order[:n_test].tolist())
    train = [s for i, s in enumerate(samples) if i not in test_idx]
    test = [s for i, s in enumerate(samples) if i in test_idx]
    return train, test


def train_and_eval_specs(data: DataConfig) -> tuple[SplitSpec, SplitSpec | None]:
    """The train split, and the eval split if the data names one (else test_size applies)."""
    if data.dataset is None:
        raise DataError(
            "no dataset given", hint="set data.dataset (a hub name, audiofolder, manifest or prepared dir)"
        )
    kind = resolve_kind(data.dataset, data.kind)
    common = dict(
        dataset=data.dataset,
        kind=kind,
        subset=data.subset,
        audio_column=data.audio_column,
        text_column=data.text_column,
        language_column=data.language_column,
        streaming=data.streaming,
    )
    segments = data.segments_column if data.timestamps else None
    train = SplitSpec(split=data.train_split, segments_column=segments, **common)  # type: ignore[arg-type]
    manifest = kind in ("csv", "jsonl")
    if manifest and data.eval_split is None:
        train = SplitSpec(split="all", segments_column=segments, **common)  # type: ignore[arg-type]
    evaluation = SplitSpec(split=data.eval_split, **common) if data.eval_split else None  # type: ignore[arg-type]
    return train, evaluation


def available_splits(dataset: str, kind: DatasetKind) -> list[str] | None:
    """The splits a local data set has, without reading audio: sub-folders of an audiofolder or prepared
    directory (a top-level metadata.csv / manifest.json is ``train``), values of a manifest's ``split``
    column (``[]`` when it has none: the whole file is one set). None when only loading can tell (hub)."""
    root = Path(dataset).expanduser()
    if kind in ("audiofolder", "prepared"):
        marker = AUDIOFOLDER_METADATA if kind == "audiofolder" else PREPARED_MANIFEST
        splits = sorted(p.parent.name for p in root.glob(f"*/{marker}"))
        if (root / marker).is_file() and "train" not in splits:
            splits.insert(0, "train")
        return splits
    if kind in ("csv", "jsonl"):
        columns, rows = _read_table(root)
        if SPLIT_COLUMN not in columns:
            return []
        return sorted({str(row.get(SPLIT_COLUMN)) for row in rows if row.get(SPLIT_COLUMN) not in (None, "")})
    return None


def data_shortcut(dataset: str, current: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """``--data DIR_OR_MANIFEST``: the ``data`` keys that use this data set with the splits it has, and a
    line saying what was chosen. Trains on ``train`` (or the only split), evaluates on the first of
    EVAL_SPLIT_NAMES it has, else holds out a seeded ``test_size`` of the training data; the preset's
    extra eval sets are dropped (they belong to the preset's data)."""
    kind = detect_kind(dataset)
    updates: dict[str, Any] = {"dataset": dataset, "kind": "auto", "extra_eval": []}
    dropped = "; the preset's extra eval sets are not used" if current.get("extra_eval") else ""
    splits = available_splits(dataset, kind)
    if splits is None:
        train = current.get("train_split", DataConfig.model_fields["train_split"].default)
        evaluation = current.get("eval_split", DataConfig.model_fields["eval_split"].default)
        return updates, (
            f"data: {dataset} (read with `datasets`; splits as configured: train '{train}', "
            f"eval '{evaluation}'){dropped}"
        )
    updates.update(subset=None, streaming=False)
    test_size = current.get("test_size") or DEFAULT_TEST_SIZE
    seed = current.get("split_seed", DataConfig.model_fields["split_seed"].default)
    holdout = f"holding out {test_size:.0%} of it for evaluation (data.test_size={test_size:g}, seed {seed})"
    if not splits:
        updates.update(eval_split=None, test_size=test_size)
        return updates, f"data: {dataset} ({kind}, no split column): train on all rows, {holdout}{dropped}"
    train = "train" if "train" in splits else (splits[0] if len(splits) == 1 else None)
    if train is not None:
        updates["train_split"] = train
    else:  # several splits, none called train: the user names it (the check before the run says so)
        train = current.get("train_split", DataConfig.model_fields["train_split"].default)
    evaluation = next((name for name in EVAL_SPLIT_NAMES if name in splits and name != train), None)
    if evaluation is not None:
        updates.update(eval_split=evaluation, test_size=None)
        chosen = f"train split '{train}', eval split '{evaluation}'"
    else:
        updates.update(eval_split=None, test_size=test_size)
        chosen = f"train split '{train}', {holdout}"
    return updates, f"data: {dataset} ({kind}, splits: {', '.join(splits)}): {chosen}{dropped}"
