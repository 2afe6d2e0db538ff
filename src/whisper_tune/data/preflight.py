"""Check every data set of a run before anything heavy happens: that it exists, has the configured
splits and the configured columns. Every problem is reported at once, each naming the config field to
change. Reads only metadata (CSV/JSONL headers and split columns, folder layouts), never audio, and
imports nothing heavy; hub data sets are checked when they are loaded (only offline mode is known here).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from whisper_tune.config.schema import DataConfig, DatasetKind
from whisper_tune.data.sources import (
    AUDIOFOLDER_METADATA,
    SPLIT_COLUMN,
    _read_table,
    available_splits,
    column_for,
    resolve_kind,
    saved_columns,
    split_parts,
)
from whisper_tune.errors import DataError
from whisper_tune.hub import NO_LOCAL_DIRECTORY, hub_offline, missing_locally

HOLD_OUT = "data.eval_split=null data.test_size=0.1 to hold out part of the training data"
DROP_EXTRA = "or data.extra_eval=[] to drop the extra sets"


@dataclass(frozen=True)
class Column:
    name: str | None
    field: str  # the config field that sets it
    inherited: str = ""  # the field it came from when not set on an extra eval set


@dataclass(frozen=True)
class SetCheck:
    """One split of one data set, and the fields that configure it."""

    dataset: str
    kind: DatasetKind
    split: str
    split_field: str
    columns: tuple[Column, ...]
    #: another way out, appended to a split problem ("or data.extra_eval=[] to drop the extra sets")
    remedy: str = ""
    #: the same for a column problem
    column_remedy: str = ""
    #: said after the field in every problem, e.g. " (extra eval set 'other-voice')"
    label: str = ""
    #: splits not to suggest for this one (the training split, for the eval split)
    exclude: tuple[str, ...] = ()


def check_data(data: DataConfig, *, include_train: bool = True) -> list[str]:
    """Problems with the ``data`` section's sets, one line each, starting with the field to change."""
    problems: list[str] = []
    checks: list[SetCheck] = []
    if data.dataset is None:
        problems.append(
            "data.dataset: no dataset given; set it (or use --data) to an audiofolder, a CSV/JSONL "
            "manifest, a 'whisper-tune prepare' directory or a hub name"
        )
    else:
        kind = _kind(data.dataset, data.kind, "data.dataset", problems)
        if kind is not None:
            columns = (
                Column(data.audio_column, "data.audio_column"),
                Column(data.text_column, "data.text_column"),
                Column(data.language_column, "data.language_column"),
            )
            whole_manifest = kind in ("csv", "jsonl") and data.eval_split is None
            if include_train:
                split = "all" if whole_manifest else data.train_split
                segments = Column(data.segments_column if data.timestamps else None, "data.segments_column")
                checks.append(SetCheck(data.dataset, kind, split, "data.train_split", (*columns, segments)))
            if data.eval_split:
                train_parts = tuple(p.strip() for p in data.train_split.split("+"))
                checks.append(
                    SetCheck(
                        data.dataset,
                        kind,
                        data.eval_split,
                        "data.eval_split",
                        columns,
                        remedy="or " + HOLD_OUT,
                        exclude=train_parts,
                    )
                )
    for check in checks:
        problems += check_set(check)
    checks = []
    for n, extra in enumerate(data.extra_eval):
        field = f"data.extra_eval.{n}"
        kind = _kind(
            extra.dataset, "auto", f"{field}.dataset (extra eval set '{extra.name}')", problems, DROP_EXTRA
        )
        if kind is None:
            continue

        def column(own: str | None, role: str, default: str | None, field: str = field) -> Column:
            return Column(own or default, f"{field}.{role}", "" if own else f"data.{role}")

        columns = (
            column(extra.audio_column, "audio_column", data.audio_column),
            column(extra.text_column, "text_column", data.text_column),
            column(extra.language_column, "language_column", data.language_column),
        )
        checks.append(
            SetCheck(
                extra.dataset,
                kind,
                extra.split,
                f"{field}.split",
                columns,
                remedy=DROP_EXTRA,
                column_remedy=DROP_EXTRA,
                label=f" (extra eval set '{extra.name}')",
            )
        )
    for check in checks:
        problems += check_set(check)
    return list(dict.fromkeys(problems))


def require_usable_data(data: DataConfig, *, include_train: bool = True) -> None:
    """``check_data``, raising one DataError that lists every problem."""
    problems = check_data(data, include_train=include_train)
    if problems:  # one problem on one line; several one per line
        raise DataError(
            "the data cannot be used as configured:" + ("\n  " if len(problems) > 1 else " ")
            + "\n  ".join(problems),
            hint="'whisper-tune run --data DIR_OR_MANIFEST' uses a data set with the splits it has "
            "(docs/data.md)",
        )


def _kind(
    dataset: str, kind: DatasetKind, field: str, problems: list[str], remedy: str = ""
) -> DatasetKind | None:
    try:
        resolved = resolve_kind(dataset, kind)
    except DataError as exc:
        problems.append(f"{field}: {exc.message}" + (f"; {remedy}" if remedy else ""))
        return None
    if resolved == "hub" and missing_locally(dataset) and hub_offline():
        problems.append(f"{field}: '{dataset}': {NO_LOCAL_DIRECTORY}, and offline mode is on")
        return None
    return resolved


def check_set(check: SetCheck) -> list[str]:
    """Problems with one split of one data set (none for hub data sets: only loading can tell)."""
    if check.kind == "hub":
        return []
    root = Path(check.dataset).expanduser()
    remedy = f", {check.remedy}" if check.remedy else ""
    try:
        parts = split_parts(check.split)
    except DataError as exc:
        return [f"{check.split_field}: {exc.message}"]
    problems = []
    splits = available_splits(check.dataset, check.kind) or []
    listed = ", ".join(splits) or "none"
    others = [s for s in splits if s not in check.exclude]
    field = f"{check.split_field}{check.label}"
    if others:
        target = f"={others[0]}" if len(others) == 1 else " to one of " + ", ".join(others)
        choose = f"set {check.split_field}{target}{remedy}"
    else:
        choose = check.remedy.removeprefix("or ") or f"set {check.split_field}"
    for part in parts:
        if check.kind in ("audiofolder", "prepared", "commonvoice", "saved"):
            if part not in splits:
                what = {"commonvoice": "Common Voice folder", "saved": "save_to_disk folder"}
                problems.append(
                    f"{field}: {what.get(check.kind, check.kind)} {root} has no split '{part}' "
                    f"(its splits: {listed}); {choose}"
                )
            elif check.kind == "audiofolder":
                metadata = root / part / AUDIOFOLDER_METADATA
                if not metadata.is_file():
                    metadata = root / AUDIOFOLDER_METADATA
                columns, _ = _read_table(metadata)
                problems += _column_problems(check, columns, metadata)
            elif check.kind == "commonvoice":
                columns, _ = _read_table(root / f"{part}.tsv")
                problems += _column_problems(check, columns, root / f"{part}.tsv")
            elif check.kind == "saved":
                problems += _column_problems(check, saved_columns(root, part), root / part)
            continue
        columns, rows = _read_table(root)  # csv / jsonl
        if part != "all":
            if SPLIT_COLUMN not in columns:
                problems.append(
                    f"{field}: {root} has no '{SPLIT_COLUMN}' column, so it has no split '{part}'; add "
                    f"that column, {check.remedy or 'or ' + HOLD_OUT}"
                )
            elif not any(str(row.get(SPLIT_COLUMN)) == part for row in rows):
                problems.append(
                    f"{field}: {root} has no rows with {SPLIT_COLUMN} '{part}' "
                    f"(its splits: {listed}); {choose}"
                )
        problems += _column_problems(check, columns, root)
    return problems


def _column_problems(check: SetCheck, columns: list[str], where: Path) -> list[str]:
    problems = []
    for column in check.columns:
        if column.name is None or column.name in columns:
            continue
        role = column.field.rsplit(".", 1)[-1].removesuffix("_column")
        if role in ("audio", "text") and column_for(check.kind, role, column.name, columns) in columns:
            continue  # the kind's own name for it (an audiofolder's file_name, Common Voice's sentence)
        inherited = f" (inherited from {column.inherited})" if column.inherited else ""
        remedy = f", {check.column_remedy}" if check.column_remedy else ""
        problems.append(
            f"{column.field}{check.label}: {where} has no column '{column.name}'{inherited}; its "
            f"columns are: {', '.join(columns) or 'none'}; set {column.field} to one of them{remedy}"
        )
    return problems
