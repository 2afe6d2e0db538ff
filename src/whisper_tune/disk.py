"""Every file whisper-tune writes goes through ``writing`` (or ``write_text`` / ``write_json``, built on
it): prepared sets, checkpoints, the best checkpoint, final/, merges, exports, the CTranslate2 import
cache, run files, predictions, metrics.json, the plot, model cards, transcripts.

When a write fails, the state of the target's filesystem decides what the user is told, never the
exception: its type and text differ from one writer to the next (numpy raises an ``OSError`` without an
errno, safetensors a ``SafetensorError``, torch's zip writer and ctranslate2 a ``RuntimeError``).

* the nearest existing directory of the target is on a read-only filesystem or not writable:
  ``cannot write <what> to <target>: <directory> is on a read-only filesystem`` (or ``is not writable``);
* less space is free than the write needs (its partial output counted as free: safetensors removes its
  own, numpy and torch leave theirs), and at least under 1 MiB, or no inode is free: the disk is full,
  ``no space left on the device to write <what> to <target>: it needs about N MB, M MB free on <mount
  point>; <what survived>``, with the caller's hint (what to free, how to go on). Callers say what a
  write needs wherever they can tell (a model's tensors, a text's bytes, the last checkpoint's size);
* any other ``OSError``: ``cannot write <what> to <target>: <its reason>``;
* anything else is raised as it is (a bug keeps its traceback).

All three are ``OutputError`` (exit code 7). The partial output a caller names is removed once the free
space has been measured.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from whisper_tune.errors import OutputError, WhisperTuneError

#: free bytes under which a failed write counts as a full disk when its size is not known: a write
#: fails for lack of space only once less than its next block is left
LOW_SPACE = 1 << 20

#: the hint of a full disk under a run directory
RUN_DIR_HINT = "free space there, or set output.dir to a larger disk"
#: the hint of a full disk under a command's --out
OUT_HINT = "free space there, or give --out a larger disk"

#: text computed only when a write fails (what survived, how much the write needs)
Text = str | Callable[[], str | None] | None
Size = int | Callable[[], int | None] | None


@dataclass(frozen=True)
class Space:
    """What the filesystem holding a path has left."""

    #: bytes free for an unprivileged user (``shutil.disk_usage``'s free)
    free: int
    #: False when the filesystem counts inodes and none is left
    inodes: bool
    read_only: bool
    writable: bool
    #: the existing directory measured: the target's own, or its nearest existing parent
    directory: Path
    mount: Path


def existing_directory(path: Path) -> Path:
    """``path`` if it is a directory, else its nearest existing parent directory."""
    path = Path(os.path.abspath(path))
    while not path.is_dir() and path != path.parent:
        path = path.parent
    return path


def mount_point(path: Path) -> Path:
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def space_at(path: Path) -> Space:
    directory = existing_directory(path)
    stat = os.statvfs(directory)
    return Space(
        free=shutil.disk_usage(directory).free,
        inodes=stat.f_files == 0 or stat.f_favail > 0,
        read_only=bool(stat.f_flag & os.ST_RDONLY),
        writable=os.access(directory, os.W_OK),
        directory=directory,
        mount=mount_point(directory),
    )


def size_of(path: Path | None) -> int:
    """Bytes in the file or directory tree ``path`` (0 if it does not exist)."""
    if path is None or not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def tensor_bytes(tensors: Any) -> int:
    """Bytes of the tensors in ``tensors`` (nested dicts, lists and tuples; each storage once)."""
    seen: set[tuple[int, int]] = set()
    total = 0

    def visit(item: Any) -> None:
        nonlocal total
        if isinstance(item, dict):
            for value in item.values():
                visit(value)
        elif isinstance(item, (list, tuple)):
            for value in item:
                visit(value)
        elif hasattr(item, "element_size") and hasattr(item, "numel"):
            key = (item.data_ptr(), item.numel())
            if key not in seen:
                seen.add(key)
                total += item.numel() * item.element_size()

    visit(tensors)
    return total


def megabytes(n: int) -> str:
    if n >= 10**10:
        return f"{n / 1e9:.0f} GB"
    if n >= 10**9:
        return f"{n / 1e9:.1f} GB"
    if n >= 10**7:
        return f"{n / 1e6:.0f} MB"
    if n >= 10**6:
        return f"{n / 1e6:.1f} MB"
    if n >= 10**3:
        return f"{n / 1e3:.0f} kB"
    return f"{n} bytes"


def _value(item: Any) -> Any:
    return item() if callable(item) else item


def _remove(path: Path | None) -> None:
    if path is None:
        return
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with suppress(OSError):
            path.unlink(missing_ok=True)


def full(space: Space, needs: int | None, held: int = 0) -> bool:
    """The disk is full for a write of ``needs`` bytes (``held`` of them in its partial output, still on
    the disk when ``space`` was measured)."""
    return not space.inodes or space.free < max(LOW_SPACE, (needs or 0) - held)


def write_error(
    exc: BaseException,
    what: str,
    target: Path,
    space: Space,
    *,
    needs: int | None = None,
    held: int = 0,
    kept: str | None = None,
    hint: str | None = None,
    fix: str | None = None,
) -> OutputError | None:
    """The error a failed write of ``what`` to ``target`` is, from ``space`` measured right after it;
    None: not a problem of the output (raise ``exc`` as it is)."""
    # a file's own name needs no second mention: "to write /runs/r/metrics.json"
    thing = f"{target}" if target.as_posix().endswith(what) else f"{what} to {target}"
    if space.read_only or not space.writable:
        reason = "is on a read-only filesystem" if space.read_only else "is not writable"
        return OutputError(f"cannot write {thing}: {space.directory} {reason}", hint=fix)
    if full(space, needs, held):
        now = space_at(target)  # after the partial output was removed: what `df` shows
        free = f"{megabytes(now.free)} free" if now.inodes else "no inode free"
        size = f"it needs about {megabytes(needs)}, " if needs else ""
        survived = f"; {kept}" if kept else ""
        return OutputError(
            f"no space left on the device to write {thing}: {size}{free} on {now.mount}{survived}",
            hint=hint or "free space there, or write to a larger disk",
        )
    if isinstance(exc, OSError):
        return OutputError(f"cannot write {thing}: {exc.strerror or exc}", hint=fix)
    return None


@contextmanager
def writing(
    what: str,
    target: Path,
    *,
    needs: Size = None,
    kept: Text = None,
    hint: Text = None,
    fix: str | None = None,
    partial: Path | None = None,
) -> Iterator[None]:
    """Write ``what`` to ``target`` inside the block; a failure becomes one ``OutputError`` (see the
    module). ``needs``: the bytes the whole write takes, when known; ``kept``: what survived, for the
    disk-full message; ``hint``: what to do about a full disk, ``fix``: about any other failure (a
    read-only directory); ``partial``: the incomplete output, removed on failure. ``needs``, ``kept`` and
    ``hint`` may be functions, called only when the write fails."""
    try:
        yield
    except WhisperTuneError:
        _remove(partial)
        raise
    except Exception as exc:
        space = space_at(partial if partial is not None else target)
        held = size_of(partial)
        _remove(partial)
        error = write_error(
            exc,
            what,
            target,
            space,
            needs=_value(needs),
            held=held,
            kept=_value(kept),
            hint=_value(hint),
            fix=fix,
        )
        if error is None:
            raise
        raise error from exc


def write_bytes(
    path: Path,
    data: bytes,
    what: str | None = None,
    *,
    kept: Text = None,
    hint: Text = None,
    fix: str | None = None,
) -> Path:
    """``path.write_bytes(data)`` through ``writing``, atomically: written beside it and renamed, so
    ``path`` is either the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with writing(what or path.name, path, needs=len(data), kept=kept, hint=hint, fix=fix, partial=tmp):
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return path


def write_text(
    path: Path,
    text: str,
    what: str | None = None,
    *,
    kept: Text = None,
    hint: Text = None,
    fix: str | None = None,
) -> Path:
    """``write_bytes`` of ``text`` in UTF-8."""
    return write_bytes(path, text.encode("utf-8"), what, kept=kept, hint=hint, fix=fix)


def write_json(
    path: Path, data: Any, what: str | None = None, *, kept: Text = None, hint: Text = None
) -> Path:
    """``data`` as indented JSON, written atomically through ``writing``."""
    text = json.dumps(data, indent=2, default=str) + "\n"
    return write_text(path, text, what, kept=kept, hint=hint)


def write_lines(
    path: Path, rows: Any, what: str | None = None, *, kept: Text = None, hint: Text = None
) -> Path:
    """One JSON object per line (``.jsonl``), through ``writing``."""
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return write_text(path, text, what, kept=kept, hint=hint)


def make_dir(path: Path, what: str | None = None, *, fix: str | None = None) -> Path:
    """``mkdir -p`` through ``writing``."""
    with writing(what or f"the directory {path.name}", path, fix=fix):
        path.mkdir(parents=True, exist_ok=True)
    return path
