"""Reading the files a user names — YAML configs, CSV/TSV/JSONL manifests, an audiofolder's metadata.csv,
the JSON files of a model or data set folder — as UTF-8 text (a byte-order mark is allowed).

Whatever is wrong with such a file (it is binary, in another encoding, UTF-16, cut off, unreadable) becomes
one sentence naming the file and the problem, raised as the caller's error class (a ConfigError for a
config, a DataError for a manifest, a ModelError for a model's config.json), never a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from whisper_tune.errors import WhisperTuneError

#: how much of a file is looked at to tell binary data from text in another encoding
SNIFF_BYTES = 8192
#: control bytes that text files hold (tab, newline, carriage return, form feed, escape)
TEXT_CONTROLS = frozenset(b"\t\n\r\f\x1b")
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
JSON_KINDS = {
    list: "array",
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}
SAVE_AS_UTF8 = "save it as UTF-8"


def read_bytes(path: Path, error: type[WhisperTuneError]) -> bytes:
    """The file's bytes; a missing, unreadable or directory path is one ``error``."""
    try:
        return Path(path).read_bytes()
    except IsADirectoryError:
        raise error(f"{path} is a directory, not a file") from None
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror or exc}") from None


def read_text(path: Path, error: type[WhisperTuneError], what: str = "a text file") -> str:
    """The file as UTF-8 text (a leading byte-order mark dropped); ``what`` names what it should be
    ("a YAML config", "a CSV manifest") in the error when it is not text."""
    return decode_text(read_bytes(path, error), path, error, what)


def decode_text(data: bytes, path: Path, error: type[WhisperTuneError], what: str = "a text file") -> str:
    """``data`` (the bytes of ``path``) as UTF-8 text, or one ``error`` that says why it is not."""
    problem = text_problem(data, what)
    if problem is not None:
        raise error(f"{path} {problem}")
    return data.decode("utf-8-sig")


def text_problem(data: bytes, what: str = "a text file") -> str | None:
    """Why ``data`` is not UTF-8 text, as the end of a sentence that starts with the file's name; None
    when it is."""
    if data.startswith(UTF16_BOMS):
        return f"is UTF-16 text, not UTF-8; {SAVE_AS_UTF8}"
    if looks_binary(data):
        return f"is binary data, not {what}"
    try:
        data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        if exc.reason == "unexpected end of data":
            return f"ends in the middle of a character (line {line}): the file looks truncated"
        return (
            f"is not UTF-8 text: byte 0x{data[exc.start]:02x} on line {line}, column {column} (is it "
            f"Latin-1 or Windows-1252?); {SAVE_AS_UTF8}"
        )
    return None


def looks_binary(data: bytes) -> bool:
    """A NUL byte, or more than a tenth control bytes, in the file's first ``SNIFF_BYTES``."""
    head = data[:SNIFF_BYTES]
    if not head:
        return False
    if b"\x00" in head:
        return True
    controls = sum(1 for b in head if (b < 0x20 and b not in TEXT_CONTROLS) or b == 0x7F)
    return controls > len(head) / 10


def parse_json(text: str, path: Path, error: type[WhisperTuneError]) -> Any:
    """``text`` (read from ``path``) as JSON, or one ``error`` naming the line; an error at the very end
    says the file looks truncated."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        rest = text[exc.pos :].strip()
        unterminated = exc.msg.startswith("Unterminated string") and '"' not in rest[1:]
        ending = ": the file looks truncated" if not rest or unterminated else ""
        where = f"line {exc.lineno}, column {exc.colno}"
        raise error(f"{path} is not valid JSON ({where}: {exc.msg}){ending}") from None


def read_json(path: Path, error: type[WhisperTuneError], what: str = "a JSON file") -> Any:
    """The JSON value in ``path``; a file that is not UTF-8 JSON is one ``error``."""
    return parse_json(read_text(path, error, what), path, error)


def read_json_object(path: Path, error: type[WhisperTuneError], what: str = "a JSON file") -> dict[str, Any]:
    """The JSON object in ``path``; anything else (a list, a number, not JSON) is one ``error``."""
    value = read_json(path, error, what)
    if not isinstance(value, dict):
        kind = JSON_KINDS.get(type(value), type(value).__name__)
        raise error(f"{path} holds a JSON {kind}, not an object: it is not {what}")
    return value


#: the largest safetensors header accepted (the format's own limit)
SAFETENSORS_MAX_HEADER = 100_000_000


def safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete safetensors file (a sentence that follows the file's name), read from
    its header alone: not safetensors at all, or shorter than the tensors its header lists (truncated);
    None when it is whole."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(8)
            length = int.from_bytes(head, "little") if len(head) == 8 else -1
            if length < 2 or length > min(SAFETENSORS_MAX_HEADER, size - 8):
                return "is not a safetensors file, or is truncated (its header does not fit in it)"
            header = json.loads(fh.read(length))
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    except ValueError:
        return "is not a safetensors file (its header is not JSON)"
    if not isinstance(header, dict):
        return "is not a safetensors file (its header is not a JSON object)"
    ends = [
        entry["data_offsets"][1]
        for key, entry in header.items()
        if key != "__metadata__" and isinstance(entry, dict) and isinstance(entry.get("data_offsets"), list)
    ]
    needed = 8 + length + max(ends, default=0)
    if needed > size:
        return f"is truncated: {size} bytes of the {needed} its header describes"
    return None
