"""Fingerprints of prepared sets, so a resumed (or repeated) run reuses what it prepared before.

A set's fingerprint is a SHA-256 over: the prepared format version; the split it comes from (dataset,
kind, split, subset, columns); for local data, every file of the split (audiofolder: the split folder;
a manifest: the manifest file; a Common Voice folder: the split's .tsv files; a save_to_disk folder:
the split's folder; a local datasets folder: all of it) by relative path, size and
modification time; the filters (durations, label length) and the sample limit; the model, language,
task and decoder prefix the labels were made with; and anything else that decides the samples (a seeded
``test_size`` split: its fraction and seed). Hub datasets by name are fingerprinted by name only.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from whisper_tune.data.preparation import Filters
from whisper_tune.data.sources import SplitSpec
from whisper_tune.data.store import VERSION


def source_files(spec: SplitSpec) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime in ns) of the local files a split is read from; [] for a hub name."""
    path = Path(spec.dataset).expanduser()
    if path.is_file():
        stat = path.stat()
        return [(path.name, stat.st_size, stat.st_mtime_ns)]
    if not path.is_dir():
        return []
    if spec.kind == "commonvoice":  # the split's .tsv files (a release's clips never change by name)
        files = [path / f"{part.strip()}.tsv" for part in spec.split.split("+")]
        return sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file())
    split_dir = spec.kind in ("audiofolder", "saved") and (path / spec.split).is_dir()
    root = path / spec.split if split_dir else path
    found = []
    for file in root.rglob("*"):
        if file.is_file():
            stat = file.stat()
            found.append((file.relative_to(path).as_posix(), stat.st_size, stat.st_mtime_ns))
    return sorted(found)


def set_fingerprint(
    spec: SplitSpec, filters: Filters, limit: int | None, meta: dict[str, Any] | None, **extra: Any
) -> str:
    document = {
        "format_version": VERSION,
        "split": asdict(spec),
        "files": source_files(spec),
        "filters": asdict(filters),
        "limit": limit,
        "labels": meta or {},
        **extra,
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()
