"""Where samples come from: Hugging Face datasets, local audiofolders, CSV/TSV/JSONL manifests
(Whisper-Finetune's JSONL among them), Common Voice release folders and ``datasets``' save_to_disk folders.

Every source yields ``RawSample``s (an id, something decodable, a transcript); decoding happens later in
``prepare`` so that one bad file is counted and skipped, never fatal. The layouts are in docs/data.md.
``available_splits`` and ``data_shortcut`` (``--data``) look at a local data set without reading audio.
Nothing heavy is imported at module level (NumPy only for ``seeded_split``).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

from whisper_tune.config.schema import DataConfig, DatasetKind
from whisper_tune.errors import DataError
from whisper_tune.hub import NO_LOCAL_DIRECTORY, hub_offline, is_network_error, missing_locally
from whisper_tune.languages import language_code
from whisper_tune.reading import read_json_object, read_text, text_problem

PREPARED_MANIFEST = "manifest.json"
AUDIOFOLDER_METADATA = "metadata.csv"
#: save_to_disk writes this file at the top of a DatasetDict folder, and these two into a Dataset folder
SAVED_DICT = "dataset_dict.json"
SAVED_DATASET = ("state.json", "dataset_info.json")
#: a Common Voice release folder: <split>.tsv files (columns path, sentence, locale ...) and clips/
COMMONVOICE_CLIPS = "clips"
COMMONVOICE_COLUMNS = ("path", "sentence")
#: the column each kind holds its row's language in, used when the model is multilingual and
#: data.language_column is unset (``own_language_column``)
COMMONVOICE_LANGUAGE = "locale"
WHISPER_FINETUNE_LANGUAGE = "language"
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


MANIFEST_SUFFIXES = {".csv": "csv", ".tsv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}
#: columns a kind's own layout uses when the configured one is the default and absent:
#: (kind, role) -> names tried in order (audiofolder: file_name; Common Voice: path and sentence;
#: Whisper-Finetune's JSONL: sentence)
COLUMN_ALIASES: dict[tuple[str, str], tuple[str, ...]] = {
    ("audiofolder", "audio"): ("file_name",),
    ("commonvoice", "audio"): ("path",),
    ("commonvoice", "text"): ("sentence",),
    ("csv", "audio"): ("path",),
    ("csv", "text"): ("sentence",),
    ("jsonl", "text"): ("sentence",),
    ("saved", "text"): ("sentence",),
}
DEFAULT_COLUMNS = {"audio": "audio", "text": "text"}


def looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).suffix.lower() in MANIFEST_SUFFIXES


def column_for(kind: str, role: str, configured: str, available: list[str]) -> str:
    """The column that holds ``role`` ("audio" / "text"): the configured one, or where the configured one
    is the default and absent, the name the kind's own layout uses (Common Voice's ``path`` and
    ``sentence``, an audiofolder's ``file_name``) when the data has it."""
    if configured in available or configured != DEFAULT_COLUMNS.get(role):
        return configured
    return next((c for c in COLUMN_ALIASES.get((kind, role), ()) if c in available), configured)


def with_own_columns(spec: SplitSpec, available: list[str]) -> SplitSpec:
    """``spec`` with its audio and text columns as ``column_for`` finds them in ``available``."""
    return replace(
        spec,
        audio_column=column_for(spec.kind, "audio", spec.audio_column, available),
        text_column=column_for(spec.kind, "text", spec.text_column, available),
    )


def is_saved_dataset(path: Path) -> bool:
    """A folder written by ``datasets``' ``save_to_disk`` (a DatasetDict or one Dataset)."""
    return (path / SAVED_DICT).is_file() or all((path / name).is_file() for name in SAVED_DATASET)


def commonvoice_splits(path: Path) -> list[str]:
    """The split files of a Common Voice release folder: each ``<split>.tsv`` whose header has ``path``
    and ``sentence`` (train, dev, test, validated, other, invalidated ...); [] when there are none."""
    found = []
    release = (path / COMMONVOICE_CLIPS).is_dir()
    for tsv in sorted(path.glob("*.tsv")):
        try:
            with tsv.open("rb") as fh:
                first = fh.readline(1 << 16)
        except OSError:
            continue
        problem = text_problem(first, "a TSV manifest")
        if problem is not None:
            if release:  # a Common Voice folder's split file that is binary or not UTF-8: say so
                raise DataError(f"{tsv} {problem}")
            continue
        header = first.decode("utf-8-sig").rstrip("\r\n").split("\t")
        if all(c in header for c in COMMONVOICE_COLUMNS):
            found.append(tsv.stem)
    return found


def detect_kind(dataset: str) -> DatasetKind:
    """Decide how to read ``dataset`` from what is on disk; a missing path is a DataError."""
    path = Path(dataset).expanduser()
    if path.is_dir():
        if (path / PREPARED_MANIFEST).is_file() or any(path.glob(f"*/{PREPARED_MANIFEST}")):
            return "prepared"
        if (path / AUDIOFOLDER_METADATA).is_file() or any(path.glob(f"*/{AUDIOFOLDER_METADATA}")):
            return "audiofolder"
        if is_saved_dataset(path):
            return "saved"
        if commonvoice_splits(path):
            return "commonvoice"
        return "hub"  # a local directory `datasets` can read (parquet, arrow, csv shards...)
    if path.is_file():
        if path.suffix.lower() in MANIFEST_SUFFIXES:
            return MANIFEST_SUFFIXES[path.suffix.lower()]  # type: ignore[return-value]
        raise DataError(f"{dataset} is a file, but not a .csv, .tsv or .jsonl manifest")
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
    """A CSV / TSV / JSONL manifest's columns and rows; a file that is not UTF-8 text, a CSV row cut
    short or a JSONL line that is not one JSON object is one DataError naming the file and the line."""
    suffix = path.suffix.lower()
    what = {".tsv": "a TSV manifest", ".csv": "a CSV manifest"}.get(suffix, "a JSONL manifest")
    text = read_text(path, DataError, what)
    if suffix in (".csv", ".tsv"):
        return _csv_rows(text, path, tsv=suffix == ".tsv")
    rows = []
    lines = text.split("\n")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        last = n == len(lines)  # no newline after it
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            ending = ": the file looks truncated" if last else ""
            detail = f"column {exc.colno}: {exc.msg}"
            raise DataError(f"{path} line {n} is not valid JSON ({detail}){ending}") from None
        if not isinstance(row, dict):
            raise DataError(
                f"{path} line {n} is not a JSON object (one sample per line, e.g. "
                '{"audio": "clip.wav", "text": "..."})'
            )
        rows.append(row)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    return columns, rows


def _csv_rows(text: str, path: Path, *, tsv: bool) -> tuple[list[str], list[dict[str, Any]]]:
    """The rows of a CSV (or Common Voice's TSV: tab-separated, quotes are text) as dicts. A last row
    with fewer fields than the header and no line end after it is a DataError: the file was cut off (a
    short row elsewhere is a sample without audio or text, dropped and counted when it is prepared)."""
    stream = io.StringIO(text, newline="")
    if tsv:
        reader = csv.DictReader(stream, delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        reader = csv.DictReader(stream)
    rows = []
    cut_off = bool(text) and not text.endswith(("\n", "\r"))
    try:
        for row in reader:
            rows.append(row)
        last = rows[-1] if rows else {}
        if cut_off and None in last.values():
            fields = sum(v is not None for k, v in last.items() if k is not None)
            header = len(reader.fieldnames or [])
            raise DataError(
                f"{path} line {reader.line_num} has {fields} of the header's {header} fields and no line "
                "end: the file looks truncated"
            )
    except csv.Error as exc:
        kind = "TSV" if tsv else "CSV"
        raise DataError(f"{path} is not a readable {kind} file (line {reader.line_num}: {exc})") from None
    return list(reader.fieldnames or []), rows


def _audio_path(value: Any, folder: Path) -> Path | None:
    """A manifest's audio cell as a file: a path relative to the manifest's folder (or to its ``clips/``,
    as a Common Voice .tsv names them), absolute, or relative to the working directory (Whisper-Finetune's
    manifests are written so); Whisper-Finetune's ``{"path": ...}`` cells too."""
    if isinstance(value, dict):
        value = value.get("path")
    if value in (None, ""):
        return None
    name = Path(str(value)).expanduser()
    for candidate in (folder / name, folder / COMMONVOICE_CLIPS / name, name):
        if candidate.is_file():
            return candidate
    return folder / name  # missing: dropped and counted as missing_file


def _iter_table(path: Path, spec: SplitSpec, split_filter: str | None) -> Iterator[RawSample]:
    columns, rows = _read_table(path)
    spec = with_own_columns(spec, columns)
    _require_columns(columns, spec, str(path))
    if split_filter is not None:
        if "split" not in columns:
            raise DataError(
                f"{path} has no 'split' column, so it cannot provide the split '{split_filter}'",
                hint="add a split column, or set data.eval_split=null and data.test_size=0.1",
            )
        rows = [r for r in rows if str(r.get("split")) == split_filter]
    for n, row in enumerate(rows):
        yield RawSample(
            key=f"{path.name}:{n + 1}",
            audio=_audio_path(row.get(spec.audio_column), path.parent),
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
    yield from _table_samples(folder / AUDIOFOLDER_METADATA, spec, folder.name, folder)


def _table_samples(table: Path, spec: SplitSpec, key_prefix: str, audio_dir: Path) -> Iterator[RawSample]:
    """The rows of a metadata table (an audiofolder's metadata.csv, a Common Voice split's .tsv) whose
    audio column names files in ``audio_dir``; keys are ``<key_prefix>/<file name>``."""
    columns, rows = _read_table(table)
    spec = with_own_columns(spec, columns)
    _require_columns(columns, spec, str(table))
    for row in rows:
        name = row.get(spec.audio_column) or ""
        yield RawSample(
            key=f"{key_prefix}/{name}",
            audio=(audio_dir / name) if name else None,
            text=row.get(spec.text_column),
            language=_language(row, spec),
            segments=_segments(row, spec),
        )


def _iter_commonvoice(spec: SplitSpec, part: str) -> Iterator[RawSample]:
    root = Path(spec.dataset).expanduser()
    if part not in commonvoice_splits(root):
        raise DataError(
            f"Common Voice folder {root} has no split '{part}' (no {part}.tsv)",
            hint=f"available splits: {', '.join(commonvoice_splits(root)) or 'none'}",
        )
    yield from _table_samples(root / f"{part}.tsv", spec, part, root / COMMONVOICE_CLIPS)


def saved_splits(path: Path) -> list[str]:
    """The splits of a save_to_disk folder (from dataset_dict.json; one Dataset is ``train``)."""
    if (path / SAVED_DICT).is_file():
        saved = read_json_object(path / SAVED_DICT, DataError, "a save_to_disk dataset_dict.json")
        if not isinstance(saved.get("splits"), list):
            raise DataError(f"{path / SAVED_DICT} lists no splits (no \"splits\": [...])")
        return [str(s) for s in saved["splits"]]
    return ["train"]


def saved_columns(path: Path, split: str) -> list[str]:
    """A save_to_disk split's columns, from its dataset_info.json (no data read)."""
    folder = path / split if (path / SAVED_DICT).is_file() else path
    info = read_json_object(folder / "dataset_info.json", DataError, "a save_to_disk dataset_info.json")
    return list(info.get("features") or {})


def _load_saved_split(spec: SplitSpec, part: str) -> Any:
    import datasets  # lazy: keeps datasets out of this module's import

    root = Path(spec.dataset).expanduser()
    splits = saved_splits(root)
    if part not in splits:
        raise DataError(
            f"save_to_disk folder {root} has no split '{part}'", hint=f"available splits: {', '.join(splits)}"
        )
    try:
        loaded = datasets.load_from_disk(str(root))
    except Exception as exc:  # datasets raises its own classes (and FileNotFoundError, ValueError, ...)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"cannot load {root} with datasets.load_from_disk: {first}") from None
    ds = loaded[part] if isinstance(loaded, datasets.DatasetDict) else loaded
    return _undecoded(ds, with_own_columns(spec, list(ds.features)), f"{root} ({part})")


def _undecoded(ds: Any, spec: SplitSpec, where: str) -> Any:
    """Check the columns; an Audio column is read undecoded (decoded by whisper-tune itself)."""
    import datasets  # lazy: keeps datasets out of this module's import

    columns = list(ds.features or {}) if ds.features is not None else []
    if columns:
        _require_columns(columns, spec, where)
        if isinstance(ds.features[spec.audio_column], datasets.Audio):
            # Decode ourselves with soundfile: no dependency on the decoder `datasets` bundles this year.
            ds = ds.cast_column(spec.audio_column, datasets.Audio(decode=False))
    return ds


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
    return _undecoded(ds, spec, f"dataset {spec.dataset} ({part})")


def _iter_hub(spec: SplitSpec, part: str, ds: Any | None = None) -> Iterator[RawSample]:
    if ds is None:
        ds = _load_saved_split(spec, part) if spec.kind == "saved" else _load_hub_split(spec, part)
    if spec.kind == "saved":
        spec = with_own_columns(spec, list(ds.features or {}))
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
        elif spec.kind == "commonvoice":
            yield from _iter_commonvoice(spec, part)
        elif spec.kind in ("hub", "saved"):
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
    if kind == "commonvoice":
        return commonvoice_splits(root)
    if kind == "saved":
        return saved_splits(root)
    if kind in ("csv", "jsonl"):
        columns, rows = _read_table(root)
        if SPLIT_COLUMN not in columns:
            return []
        return sorted({str(row.get(SPLIT_COLUMN)) for row in rows if row.get(SPLIT_COLUMN) not in (None, "")})
    return None


def is_whisper_finetune(rows: list[dict[str, Any]], audio_column: str = "audio") -> bool:
    """Rows in yeyupiaoling/Whisper-Finetune's JSONL layout: ``{"audio": {"path": ...}, "sentence": ...}``."""
    return bool(rows) and isinstance(rows[0].get(audio_column), dict) and "path" in rows[0][audio_column]


def languages_in(dataset: str, limit: int = 500) -> tuple[str | None, list[str]]:
    """The column a local data set's own layout gives each row's language in (``own_language_column``)
    and the Whisper codes of its first ``limit`` rows, most frequent first; (None, []) when it has none.
    Cheap, for hints: nothing is decoded."""
    kind = detect_kind(dataset)
    column = own_language_column(dataset, kind)
    if column is None:
        return None, []
    root = Path(dataset).expanduser()
    table = root / f"{commonvoice_splits(root)[0]}.tsv" if kind == "commonvoice" else root
    try:
        rows = _read_table(table)[1][:limit]
    except DataError:
        return column, []
    counts: dict[str, int] = {}
    for row in rows:
        value = row.get(column)
        try:
            code = language_code(str(value)) if value else None
        except ValueError:
            code = None
        if code:
            counts[code] = counts.get(code, 0) + 1
    return column, sorted(counts, key=lambda c: -counts[c])


def own_language_column(dataset: str, kind: DatasetKind) -> str | None:
    """The column a data set's own layout gives each row's language in, if it has one: Common Voice's
    ``locale`` (its folder, or one of its .tsv files), Whisper-Finetune's ``language``. Used (as
    ``data.language_column``) when the model is multilingual and the config names no language column."""
    if kind in ("auto", "hub"):
        return None
    root = Path(dataset).expanduser()
    try:
        if kind == "commonvoice":
            splits = commonvoice_splits(root)
            columns = _read_table(root / f"{splits[0]}.tsv")[0] if splits else []
            return COMMONVOICE_LANGUAGE if COMMONVOICE_LANGUAGE in columns else None
        if kind == "csv" and root.suffix.lower() == ".tsv":  # one of a Common Voice release's .tsv files
            columns = _read_table(root)[0]
            if all(c in columns for c in (*COMMONVOICE_COLUMNS, COMMONVOICE_LANGUAGE)):
                return COMMONVOICE_LANGUAGE
        if kind == "jsonl":
            columns, rows = _read_table(root)
            if is_whisper_finetune(rows) and WHISPER_FINETUNE_LANGUAGE in columns:
                return WHISPER_FINETUNE_LANGUAGE
    except DataError:
        return None  # reading the data reports it
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
    timestamps = ""
    if kind == "jsonl":
        _, rows = _read_table(Path(dataset).expanduser())
        segments = current.get("segments_column") or DataConfig.model_fields["segments_column"].default
        if is_whisper_finetune(rows) and all(isinstance(r.get(segments), list) and r[segments] for r in rows):
            # Whisper-Finetune's layout with every row's timestamped segments: train with them
            updates["timestamps"] = True
            timestamps = f"; timestamps from its '{segments}' column (data.timestamps=true)"
    test_size = current.get("test_size") or DEFAULT_TEST_SIZE
    seed = current.get("split_seed", DataConfig.model_fields["split_seed"].default)
    holdout = f"holding out {test_size:.0%} of it for evaluation (data.test_size={test_size:g}, seed {seed})"
    if not splits:
        updates.update(eval_split=None, test_size=test_size)
        return updates, (
            f"data: {dataset} ({kind}, no split column): train on all rows, {holdout}{timestamps}{dropped}"
        )
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
    return updates, f"data: {dataset} ({kind}, splits: {', '.join(splits)}): {chosen}{timestamps}{dropped}"
