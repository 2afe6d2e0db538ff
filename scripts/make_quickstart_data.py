#!/usr/bin/env python3
"""Regenerate the small synthetic speech dataset in ``data/quickstart/``.

What it makes
-------------
Three Hugging Face "audiofolder" splits, each a folder with ``metadata.csv``
(header ``file_name,text``) and mono Ogg Vorbis files next to it:

* ``train/``       240 clips, espeak-ng voice ``en-us``, 22050 Hz.
* ``eval/``        40 clips, espeak-ng ``en-us``, 22050 Hz; held-out sentences
                   that share no sentence (and no near-duplicate) with ``train/``.
* ``other-voice/`` the same 40 sentences as ``eval/``, in the same order,
                   rendered by hibari-tts (bundled voice "heart"), 24000 Hz.
                   Never trained on.

Audio stays at each synthesiser's native sample rate on purpose: the
project's data pipeline resamples to 16 kHz itself, and the quickstart is
meant to exercise that path. It is stored lossy, as Ogg Vorbis at libsndfile
compression level ``VORBIS_LEVEL`` (0.5, i.e. Vorbis quality 0.5, "-q 5":
about 60 kbit/s for this mono speech, plus a 3.7 kB header per file), like
real ASR corpora such as Common Voice, which ships MP3. 16-bit FLAC would
cost about 23 kB per second, three times as much, and would not fit these
counts into the size budget.
Leading and trailing silence is trimmed to about 0.15 s when there is more
than that. Clips are kept between 1.5 s and 8 s. The script also writes
``README.md`` (counts, durations, sources, licences) and ``LICENSE`` into
the dataset folder. The run fails, leaving the old dataset in place, if the
result would exceed ``MAX_BYTES`` (12 MB).

Text comes from the one-line fortunes in Debian's fortune cookie files:
``fortunes``, ``literature`` and ``riddles`` of package ``fortunes-min``, and
``platitudes``, ``science``, ``wisdom`` and ``work`` of package ``fortunes``
(the other files of that package were left out as mostly unsuitable or too
small: drugs, politics, men-women, love, ethnic, ...). Filters: a single line
of 5-14 words, ASCII letters, spaces and . , ? ! ' - only (no digits), no
ALL-CAPS words, no attribution lines, no ellipses or repeated punctuation, a
keyword block list (including number words) and a hand-reviewed reject list
(``REJECT`` below) for anything crude, morbid, violent, religious, political
or otherwise unfit for a project README. Sentences are deduplicated after
lowercasing and stripping punctuation, and near-duplicates (a shared run of
four words, or half or more of the words in common) are kept on the same
side of the train/eval split.

Everything is deterministic (fixed seeds, fixed hibari noise seed, and the
Ogg stream serial number, which libsndfile draws at random, is rewritten to
a value derived from the file name); running the script twice gives
byte-identical files.

Tools needed
------------
::

    apt-get install espeak-ng fortunes-min fortunes
    pip install hibari-tts soundfile numpy

No network access is needed: hibari's "heart" voice ships inside the wheel.
(sox is not needed; trimming is done in numpy.)

Usage
-----
::

    python scripts/make_quickstart_data.py            # writes data/quickstart/
    python scripts/make_quickstart_data.py --out DIR  # somewhere else

The dataset is built in a temporary folder next to the destination and then
swapped in, so an interrupted run leaves the old dataset untouched. This is
a maintainer tool: the ``whisper_tune`` package never imports it.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "data" / "quickstart"

SEED = 20240617
N_TRAIN = 240
N_EVAL = 40
MAX_BYTES = 12_000_000
MIN_WORDS, MAX_WORDS = 5, 14
MIN_SECONDS, MAX_SECONDS = 1.5, 8.0
PAD_SECONDS = 0.15  # silence kept at each end after trimming
SILENCE_DB = -40.0  # frames this far below the loudest frame count as silence
ESPEAK_VOICE = "en-us"
HIBARI_VOICE = "heart"
HIBARI_SEED = 0
WORKERS = 2
# libsndfile's Vorbis setting: compression level L means Vorbis VBR quality 1 - L, so lower is
# better and bigger (checked: 0.0 ~ 100, 0.5 ~ 62, 1.0 ~ 32 kbit/s on espeak-ng speech).
# 0.5 (Vorbis "-q 5") keeps speech clean: its Whisper log-mel features differ from the
# uncompressed audio's by about 0.03 on average (on Whisper's roughly -1..1 scale).
VORBIS_LEVEL = 0.5
AUDIO_EXT = "ogg"

FORTUNE_DIR = Path("/usr/share/games/fortunes")
# Cookie files read, by the Debian package that installs them. The other files of `fortunes`
# were left out as mostly unsuitable (drugs, politics, men-women, love, ethnic, zippy, ...) or
# as giving almost no one-liners.
FORTUNE_PACKAGES = {
    "fortunes-min": ("fortunes", "literature", "riddles"),
    "fortunes": ("platitudes", "science", "wisdom", "work"),
}
FORTUNE_FILES = tuple(name for names in FORTUNE_PACKAGES.values() for name in names)
PACKAGE_OF = {name: pkg for pkg, names in FORTUNE_PACKAGES.items() for name in names}

ALLOWED = re.compile(r"^[A-Za-z][A-Za-z .,?!'\-]*[.?!]?$")

# Whole words (lowercase) that send a sentence straight out: death and violence,
# religion, politics, sex, crude or insulting words, a few names and brands, and
# number words (Whisper's normaliser rewrites those, which muddies a small WER).
BLOCK_WORDS = frozenset(
    """
    die dies died dead death deadly dying kill kills killed killing killer murder suicide grave buried
    funeral posthumous posthumously gunfire gun guns shoot shot bomb war army troop troops
    hostage radical prison jail police cops weapon dynamite violence fight fights fighting
    god gods heaven hell devil devilish jesus christ church pray prayer soul devout sin virgo
    angel satan bible holy
    president congress politics political politician government election elected vote
    democrat republican communist senator tax irs
    sex sexual orgy lover lovers affair divorce divorced alimony mate hanky-panky
    naked boyfriend girlfriend
    beer drunk drug drugs stoned cigarette
    stupid stupidity idiot ugly fat fattening moron dumb insane insanity perverted twisted
    crap damn dung soil vomit bugged blackmail cancer
    asian chrysler newark anita bryant
    zero two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen
    sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety
    hundred thousand million millions billion trillion millionth percent
    """.split()
)

# Sentences that pass the automatic filters but were rejected on reading
# (innuendo, unkindness, gloom, jokes that need context, awkward for TTS).
REJECT = frozenset(
    """
    Afternoon very favorable for romance. Try a single person for a change.
    Beware of a tall black man with one blond shoe.
    Blow it out your ear.
    Break into jail and claim police brutality.
    If you sow your wild oats, hope for a crop failure.
    If your life was a horse, you'd have to shoot it.
    Lady Luck brings added income today. Lady friend takes it away tonight.
    Never commit yourself! Let someone else commit you.
    So this is it. We're going to die.
    Time to be aggressive. Go after a tattooed Virgo.
    You are as I am with You.
    You are not dead yet. But watch for further reports.
    You are sick, twisted and perverted. I like that in a person.
    You are so boring that when I see you my feet go to sleep.
    You have a strong appeal for members of the opposite sex.
    You have a strong appeal for members of your own sex.
    You have an unusual equipment for success. Be sure to use it properly.
    You have had a long-term stimulation relative to business.
    You have many friends and very few living enemies.
    You will be a winner today. Pick a fight with a four-year-old.
    You will be held hostage by a radical group.
    You will be run over by a beer truck.
    You will be run over by a bus.
    You will be Told about it Tomorrow. Go Home and Prepare Thyself.
    You will be winged by an anti-aircraft battery.
    You will contract a rare disease.
    You will gain money by an immoral action.
    You will obey or molten silver will be poured into your ears.
    You will pass away very quickly.
    You will step on the night soil of many countries.
    You'll never be the man your mother was!
    You're ugly and your mother dresses you funny.
    Your aim is high and to the right.
    Your boyfriend takes chocolate from strangers.
    Your sister swims out to meet troop ships.
    Your step will soil many countries.
    You attempt things that you do not even plan because of your extreme stupidity.
    Hope that the day after you die is a nice day.
    Avoid gunfire in the bathroom tonight.
    Increased knowledge will help you now. Have mate's phone bugged.
    What happened last night can happen again.
    Artistic ventures highlighted. Rob a museum.
    Fine day to work off excess energy. Steal something heavy.
    You will be imprisoned for contributing your time and skill to a bank robbery.
    You will gain money by an illegal action.
    Good day to let down old friends who need help.
    You'll feel much better once you've given up hope.
    Your boss is a few sandwiches short of a picnic.
    Go to a movie tonight. Darkness becomes you.
    """.strip().splitlines()
    # From the files of the `fortunes` package (wisdom, platitudes, work, science), every
    # sentence that passes the automatic filters was read; these were turned down.
    + """
    Don't take life seriously, you'll never get out alive.
    Each man is his own prisoner, in solitary confinement for life.
    Everything ends badly. Otherwise it wouldn't end.
    Faith goes out through the window when beauty comes in at the door.
    Happiness is just an illusion, filled with sadness and confusion.
    If you have to hate, hate gently.
    In the next world, you're on your own.
    Life exists for no known purpose.
    Life is the urge to ecstasy.
    Man's reach must exceed his grasp, for why else the heavens?
    Sometimes you get an almost irresistible urge to go on living.
    The days are all empty and the nights are unreal.
    The savior becomes the victim.
    There are no winners in life, only survivors.
    You can't mend a wristwatch while falling from an airplane.
    A bird in the bush usually has a friend in there with him.
    A chronic disposition to inquiry deprives domestic felines of vital qualities.
    A man's best friend is his dogma.
    A mind is a wonderful thing to waste.
    A mushroom cloud has no silver lining.
    Absence makes the heart go wander.
    Better to be nouveau than never to have been riche at all.
    Do unto others before they undo you.
    It's better to burn out than it is to rust.
    It's better to burn out than to fade away.
    Many are called, few are chosen. Fewer still get to do the choosing.
    Many are called, few volunteer.
    Stop searching forever. Happiness is unattainable.
    When you are in it up to your ears, keep your mouth shut.
    You can make it illegal, but you can't make it unpopular.
    A mouse is an elephant built by the Japanese.
    Be sociable. Speak to the person next to you in the unemployment line tomorrow.
    Body by Nautilus, Brain by Mattel.
    In case of atomic attack, all work rules will be temporarily suspended.
    Is a person who blows up banks an econoclast?
    It is better to travel hopefully than to fly Continental.
    My idea of roughing it turning the air conditioner too low.
    Please keep your hands off the secretary's reproducing equipment.
    Promise her anything, but give her Exxon unleaded.
    Quantity is no substitute for quality, but its the only one we've got.
    Take everything in stride. Trample anyone who gets in your way.
    The meek don't want it.
    The trouble with a lot of self-made men is that they worship their creator.
    Things worth having are worth cheating for.
    Time to take stock. Go home with some office supplies.
    When you are working hard, get up and retch every so often.
    Work smarter, not harder, and be careful of your speling.
    An economist is a man who would marry Farrah Fawcett-Majors for her money.
    Chemist who falls in acid is absorbed in work.
    Chemist who falls in acid will be tripping for weeks.
    Gravity is a myth, the Earth sucks.
    Kleeneness is next to Godelness.
    Last yeer I kudn't spel Engineer. Now I are won.
    Logic is the chastity belt of the mind!
    Ma Bell is a mean mother!
    Polymer physicists are into chains.
    Science may someday discover what faith has always known.
    The moon is a planet just like the Earth, only it is even deader.
    Xerox never comes up with anything original.
    """.strip().splitlines()
)
REJECT = frozenset(s.strip() for s in REJECT)


# --------------------------------------------------------------------------- text


def words_of(text: str) -> list[str]:
    """Lowercase words without punctuation: the key for dedup and overlap checks."""
    return re.sub(r"[^a-z' ]+", " ", text.lower().replace("-", " ")).replace("'", "").split()


def key_of(text: str) -> str:
    return " ".join(words_of(text))


def read_one_liners(name: str) -> list[str]:
    """The fortunes in one cookie file that are a single line of text."""
    raw = (FORTUNE_DIR / name).read_bytes().decode("latin-1")
    out = []
    for entry in re.split(r"\n%\n", raw):
        lines = entry.strip("\n").split("\n")
        if len(lines) == 1:
            out.append(re.sub(r"\s+", " ", lines[0].strip()))
    return out


def acceptable(text: str) -> bool:
    if text in REJECT or not ALLOWED.match(text):
        return False
    toks = text.split()
    if not MIN_WORDS <= len(toks) <= MAX_WORDS:
        return False
    if "--" in text or ".." in text or re.search(r"[?!]{2,}", text):
        return False
    for tok in toks:
        bare = tok.strip(".,?!'-")
        if len(bare) > 1 and bare.isupper():
            return False
    raw = {tok.lower().strip(".,?!'").removesuffix("'s") for tok in toks}
    return not (raw | set(words_of(text))) & BLOCK_WORDS


def candidate_sentences() -> list[tuple[str, str]]:
    """(source file, sentence) pairs, filtered, deduplicated and shuffled with SEED."""
    lines = [(name, text) for name in FORTUNE_FILES for text in read_one_liners(name)]
    unknown = REJECT - {text for _, text in lines}
    if unknown:
        raise SystemExit(f"REJECT lists sentences not in the fortune files: {sorted(unknown)}")
    seen: set[str] = set()
    got = []
    for name, text in lines:
        k = key_of(text)
        if acceptable(text) and k not in seen:
            seen.add(k)
            got.append((name, text))
    random.Random(SEED).shuffle(got)
    return got


def near_duplicate(a: str, b: str) -> bool:
    wa, wb = words_of(a), words_of(b)
    grams = lambda w: {tuple(w[i : i + 4]) for i in range(len(w) - 3)}  # noqa: E731
    if grams(wa) & grams(wb):
        return True
    sa, sb = set(wa), set(wb)
    return len(sa & sb) / len(sa | sb) >= 0.5


def clusters(texts: list[str]) -> list[int]:
    """Connected components of the near-duplicate relation; returns a label per text."""
    parent = list(range(len(texts)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(texts)):
        for j in range(i + 1, len(texts)):
            if near_duplicate(texts[i], texts[j]):
                parent[find(i)] = find(j)
    return [find(i) for i in range(len(texts))]


# -------------------------------------------------------------------------- audio


def trim(x: np.ndarray, sr: int) -> np.ndarray:
    """Cut leading/trailing silence down to PAD_SECONDS (only where there is more)."""
    hop = max(1, sr // 100)  # 10 ms frames
    n = len(x) // hop
    if n == 0:
        return x
    frames = x[: n * hop].astype(np.float64).reshape(n, hop)
    rms = np.sqrt((frames**2).mean(axis=1)) + 1e-9
    loud = np.flatnonzero(20 * np.log10(rms / rms.max()) > SILENCE_DB)
    pad = int(PAD_SECONDS * sr)
    start = max(0, loud[0] * hop - pad)
    end = min(len(x), (loud[-1] + 1) * hop + pad)
    return x[start:end]


def espeak(text: str, voice: str | None = None) -> tuple[np.ndarray, int]:
    """``text`` read by espeak-ng ``voice`` (default ``ESPEAK_VOICE``), silence trimmed."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "out.wav"
        subprocess.run(["espeak-ng", "-v", voice or ESPEAK_VOICE, "-w", str(wav), text], check=True)
        x, sr = sf.read(wav, dtype="int16")
    if x.ndim != 1:
        raise RuntimeError(f"espeak-ng produced {x.ndim} channels")
    return trim(x, sr), sr


class HibariVoice:
    def __init__(self) -> None:
        from hibari import SAMPLE_RATE, Hibari

        self.tts = Hibari(voice=HIBARI_VOICE, threads=WORKERS)
        self.sr = SAMPLE_RATE

    def __call__(self, text: str) -> tuple[np.ndarray, int]:
        y = np.asarray(self.tts(text, seed=HIBARI_SEED), dtype=np.float64)
        x = np.round(np.clip(y, -1.0, 1.0) * 32767.0).astype(np.int16)
        return trim(x, self.sr), self.sr


def seconds(clip: tuple[np.ndarray, int]) -> float:
    return len(clip[0]) / clip[1]


def in_range(clip: tuple[np.ndarray, int]) -> bool:
    return MIN_SECONDS <= seconds(clip) <= MAX_SECONDS


# ------------------------------------------------------------------------ building


@dataclass
class Item:
    source: str
    text: str
    clip: tuple[np.ndarray, int]


def select(n_train: int, n_eval: int) -> tuple[list[Item], list[Item], list[tuple[np.ndarray, int]], dict]:
    pool = candidate_sentences()
    with ThreadPoolExecutor(WORKERS) as ex:
        clips = list(ex.map(espeak, [t for _, t in pool]))
    usable = [Item(s, t, c) for (s, t), c in zip(pool, clips, strict=True) if in_range(c)]
    n_total = n_train + n_eval
    if len(usable) < n_total:
        sys.exit(f"only {len(usable)} usable sentences for {n_total} clips")
    chosen = usable[:n_total]

    labels = clusters([it.text for it in chosen])
    singletons = [i for i, lab in enumerate(labels) if labels.count(lab) == 1]
    order = singletons[:]
    random.Random(SEED + 1).shuffle(order)

    hibari = HibariVoice()
    eval_idx: list[int] = []
    other: list[tuple[np.ndarray, int]] = []
    for i in order:
        if len(eval_idx) == n_eval:
            break
        clip = hibari(chosen[i].text)
        if in_range(clip):
            eval_idx.append(i)
            other.append(clip)
    if len(eval_idx) < n_eval:
        sys.exit(f"only {len(eval_idx)} eval sentences available")
    eval_set = set(eval_idx)
    train = [it for i, it in enumerate(chosen) if i not in eval_set]
    evals = [chosen[i] for i in eval_idx]

    stats = {
        "candidates": len(pool),
        "usable": len(usable),
        "files": {
            pkg: {name: sum(it.source == name for it in chosen) for name in names}
            for pkg, names in FORTUNE_PACKAGES.items()
        },
    }
    return train, evals, other, stats


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
        table.append(crc & 0xFFFFFFFF)
    return table


_CRC_TABLE = _crc_table()


def _ogg_crc(data: bytes) -> int:
    """The Ogg page checksum: CRC-32, polynomial 0x04C11DB7, not reflected, initial value 0."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _CRC_TABLE[(crc >> 24) ^ byte]
    return crc


def set_ogg_serial(data: bytes, serial: int) -> bytes:
    """Rewrite the stream serial number of every Ogg page (and its checksum).

    libsndfile picks the serial number at random, so without this two runs differ in those
    bytes only. Only single-stream files are expected.
    """
    out = bytearray(data)
    pos = 0
    while pos < len(out):
        if out[pos : pos + 4] != b"OggS" or pos + 27 > len(out):
            raise RuntimeError(f"not an Ogg page at byte {pos}")
        nseg = out[pos + 26]
        size = 27 + nseg + sum(out[pos + 27 : pos + 27 + nseg])
        out[pos + 14 : pos + 18] = serial.to_bytes(4, "little")
        out[pos + 22 : pos + 26] = bytes(4)
        out[pos + 22 : pos + 26] = _ogg_crc(bytes(out[pos : pos + size])).to_bytes(4, "little")
        pos += size
    return bytes(out)


def encode_ogg(x: np.ndarray, sr: int, serial: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, sr, format="OGG", subtype="VORBIS", compression_level=VORBIS_LEVEL)
    return set_ogg_serial(buf.getvalue(), serial)


@contextmanager
def replacing(out: Path, prefix: str) -> Iterator[Path]:
    """A temporary folder beside ``out`` to build in; renamed to ``out`` (replacing it) when the block
    ends, removed if it fails, so ``out`` is never half written."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=out.parent))
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_split(folder: Path, prefix: str, rows: list[tuple[str, tuple[np.ndarray, int]]]) -> None:
    folder.mkdir(parents=True)
    with open(folder / "metadata.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["file_name", "text"])
        for i, (text, (x, sr)) in enumerate(rows):
            name = f"{prefix}-{i:04d}.{AUDIO_EXT}"
            (folder / name).write_bytes(encode_ogg(x, sr, serial=zlib.crc32(name.encode())))
            w.writerow([name, text])


def check(train: list[Item], evals: list[Item]) -> None:
    train_keys = {key_of(it.text) for it in train}
    assert len(train_keys) == len(train), "duplicate sentence in train"
    assert len({key_of(it.text) for it in evals}) == len(evals), "duplicate sentence in eval"
    assert not train_keys & {key_of(it.text) for it in evals}, "eval sentence also in train"
    for e in evals:
        for t in train:
            assert not near_duplicate(e.text, t.text), (e.text, t.text)


def summary(rows: list[tuple[np.ndarray, int]], folder: Path) -> tuple[int, float, float, float, int]:
    """Clips, total seconds, shortest, longest, bytes of audio on disk."""
    d = [seconds(c) for c in rows]
    audio = sum(p.stat().st_size for p in folder.glob(f"*.{AUDIO_EXT}"))
    return len(d), sum(d), min(d), max(d), audio


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def build(out: Path, n_train: int, n_eval: int) -> None:
    train, evals, other, stats = select(n_train, n_eval)
    check(train, evals)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)
    try:
        write_split(tmp / "train", "train", [(it.text, it.clip) for it in train])
        write_split(tmp / "eval", "eval", [(it.text, it.clip) for it in evals])
        voiced = [(it.text, c) for it, c in zip(evals, other, strict=True)]
        write_split(tmp / "other-voice", "other-voice", voiced)
        splits = {
            "train": summary([it.clip for it in train], tmp / "train"),
            "eval": summary([it.clip for it in evals], tmp / "eval"),
            "other-voice": summary(other, tmp / "other-voice"),
        }
        (tmp / "README.md").write_text(readme(splits, stats, n_train, n_eval), encoding="utf-8")
        (tmp / "LICENSE").write_text(LICENSE_TEXT, encoding="utf-8")
        size = folder_bytes(tmp)
        if size > MAX_BYTES:
            raise SystemExit(
                f"dataset would be {size / 1e6:.2f} MB, over {MAX_BYTES / 1e6:.0f} MB: "
                "lower --train/--eval or raise VORBIS_LEVEL"
            )
        old = out.with_name(f".{out.name}.old")
        if old.exists():
            shutil.rmtree(old)
        if out.exists():
            out.rename(old)
        tmp.rename(out)
        if old.exists():
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    for name, (n, total, lo, hi, audio) in splits.items():
        print(
            f"{name:12s} {n:4d} clips  {total:7.1f} s  ({lo:.2f}-{hi:.2f} s per clip)"
            f"  {audio / 1e6:.2f} MB, {audio * 8 / total / 1000:.0f} kbit/s"
        )
    print(f"sentences: {stats['candidates']} candidates, {stats['usable']} in the duration range")
    for pkg, files in stats["files"].items():
        print(f"  from {pkg}: " + ", ".join(f"{name} {k}" for name, k in files.items()))
    print(f"total size: {size / 1e6:.2f} MB in {out}")


# ------------------------------------------------------------------ README, LICENSE


def espeak_version() -> str:
    try:
        line = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=True).stdout
        m = re.search(r"text-to-speech:\s*(\S+)", line)
        return m.group(1) if m else line.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def readme(splits: dict, stats: dict, n_train: int, n_eval: int) -> str:
    from importlib.metadata import version

    voices = {
        "train": "espeak-ng `en-us`, 22050 Hz",
        "eval": "espeak-ng `en-us`, 22050 Hz",
        "other-voice": "hibari-tts `heart`, 24000 Hz",
    }
    table = "\n".join(
        f"| `{name}/` | {n} | {total / 60:.1f} min ({total:.0f} s) | {lo:.1f}-{hi:.1f} s "
        f"| {voices[name]} | {audio / 1e6:.1f} MB ({audio * 8 / total / 1000:.0f} kbit/s) |"
        for name, (n, total, lo, hi, audio) in splits.items()
    )
    files = {
        pkg: ", ".join(f"`{name}` ({k})" for name, k in counts.items() if k)
        for pkg, counts in stats["files"].items()
    }
    return README_TEMPLATE.format(
        table=table,
        n_train=n_train,
        n_eval=n_eval,
        n_sentences=n_train + n_eval,
        files_min=files["fortunes-min"],
        files_full=files["fortunes"],
        level=VORBIS_LEVEL,
        quality=1 - VORBIS_LEVEL,
        audio_mb=sum(audio for *_, audio in splits.values()) / 1e6,
        espeak=espeak_version(),
        hibari=version("hibari-tts"),
        soundfile=version("soundfile"),
        libsndfile=sf.__libsndfile_version__,
        seed=SEED,
    )


README_TEMPLATE = """\
# Quickstart speech data

A tiny synthetic English speech dataset for the quickstart and the tests. The
quickstart fine-tunes Whisper tiny.en on `train/`, then measures WER on
`eval/` (held-out sentences, same voice) and on `other-voice/` (the same
held-out sentences in a different synthetic voice that is never trained on).

Generated by `scripts/make_quickstart_data.py`; do not edit by hand.

| split | clips | audio | per clip | voice, sample rate | size |
|---|---|---|---|---|---|
{table}

Layout: Hugging Face "audiofolder". Each split folder holds `metadata.csv`
(columns `file_name,text`, CSV-quoted) and mono Ogg Vorbis files (`.ogg`) at
the synthesiser's native sample rate, 22050 or 24000 Hz. The project's
pipeline decodes them with soundfile and resamples to 16 kHz itself; the
quickstart exercises that path on purpose. `other-voice/other-voice-NNNN.ogg`
says the same sentence as `eval/eval-NNNN.ogg`.

The audio is lossy, as in real ASR corpora (Mozilla Common Voice, for one,
ships MP3): Ogg Vorbis at libsndfile compression level {level}, which
libsndfile turns into Vorbis VBR quality {quality:.1f} (the same as `oggenc -q 5`);
{audio_mb:.1f} MB of audio in all, including a Vorbis setup header of about
3.7 kB per file. On sample clips checked when this setting was chosen, the
Whisper log-mel features differed from those of the uncompressed synthesiser
output by about 0.03 on average, on Whisper's roughly -1 to 1 feature scale.
16-bit FLAC would take about three times the space (about 23 kB per second of
espeak-ng audio).

## How it was made

```
apt-get install espeak-ng fortunes-min fortunes
pip install hibari-tts soundfile
python scripts/make_quickstart_data.py
```

espeak-ng {espeak} (`espeak-ng -v en-us -w out.wav TEXT`, default rate and
pitch) and hibari-tts {hibari} (bundled voice `heart`, noise seed 0); encoded
by soundfile {soundfile} with libsndfile {libsndfile}. Silence at either end is
trimmed to about 0.15 s; clips run 1.5-8 s. Selection seed {seed}. The script
is deterministic: libsndfile gives each Ogg stream a random serial number, so
the script rewrites it (and the page checksums) to a value derived from the
file name, and two runs give byte-identical files.

Sentences: one-line fortunes from Debian's fortune cookie files, 5-14 words,
letters and . , ? ! ' - only (no digits), no all-caps words, no attribution
lines, no number words from "two" up (Whisper's text normaliser rewrites
those as digits), filtered by a keyword block list and a hand-read reject
list for anything crude, morbid, violent, religious, political or otherwise
unfit, then shuffled with the seed. The {n_sentences} sentences used come from
these cookie files (sentences from each):

* package `fortunes-min`: {files_min}
* package `fortunes`: {files_full}

The script reads only `fortunes`, `literature` and `riddles` of
`fortunes-min`, and only `platitudes`, `science`, `wisdom` and `work` of
`fortunes`; the other files of `fortunes` were left out as mostly unsuitable
(drugs, politics, men-women, love, ...) or as holding almost no one-liners.
Every sentence of those seven files that passes the automatic filters was
read by hand. No sentence appears twice, and no eval
sentence appears in `train/` or has a near-duplicate there (a shared run of
four words, or half or more of the words in common). {n_eval} sentences are
held out for `eval/` and `other-voice/`; the remaining {n_train} make up
`train/`.

## Sources and licences

* **Text: Debian fortune cookie files**, packages `fortunes-min` and
  `fortunes` (both built from the fortune-mod 1.99.1 source). Both packages
  carry the same Debian copyright file (`/usr/share/doc/fortunes-min/copyright`
  and `/usr/share/doc/fortunes/copyright` are identical). Its section "Legal
  information" states: "This program falls under the BSD copyright", then
  gives "Copyright (c) 1991 The Regents of the University of California. All
  rights reserved." and the BSD licence conditions with clause 3 marked
  "Deleted" (the remaining clauses 1, 2 and 4 are those of the 3-clause BSD
  licence). The file names no separate terms for the cookie files used here
  (its one further section, "Atheism cookie file copyright information", only
  names the maintainer of an atheism cookie file that neither package
  installs). It names Ken Arnold as the original author and says Amy A. Lewis
  "modified the sources (and the fortune files) heavily". Many fortunes are
  short quotations and sayings from many, mostly unnamed, people. That
  licence text is reproduced in `LICENSE`.
* **Voice of `train/` and `eval/`: espeak-ng**, a program licensed GPL-3.0 or
  later (Debian copyright file: "either version 3 of the License, or (at your
  option) any later version"). The audio files are output of running the
  program on the sentences above; no espeak-ng code or data is included here.
  The GPL-3.0 itself says: "The output from running a covered work is covered
  by this License only if the output, given its content, constitutes a covered
  work."
* **Voice of `other-voice/`: hibari-tts**, Apache-2.0 (the package's `LICENSE`
  and `NOTICE`). The voice model that makes this audio, `heart`
  (`hibari/assets/hibari.onnx`), ships inside the package and comes under the
  package's Apache-2.0 licence; there is no separate model licence in the
  package. Its `NOTICE` says the model was distilled from Kokoro-82M (voice
  `af_heart`, Apache-2.0, by hexgrad). The audio files are output of running
  the model; no hibari code or model data is included here.

See `LICENSE` for the terms this dataset is offered under.
"""

LICENSE_TEXT = """\
Quickstart speech data (data/quickstart) of whisper-tune

The transcripts in metadata.csv are sentences from the Debian fortune cookie
files (packages fortunes-min and fortunes, fortune-mod 1.99.1). The audio was
synthesised from those sentences by espeak-ng (GPL-3.0-or-later program;
train/ and eval/) and by hibari-tts with its bundled "heart" voice
(Apache-2.0; other-voice/), and stored as Ogg Vorbis. No code or data of
either synthesiser is included; see README.md for details.

This dataset is offered under the terms that Debian's copyright file for
the fortune packages (/usr/share/doc/fortunes-min/copyright, identical to
/usr/share/doc/fortunes/copyright) states, which are reproduced here:

Copyright (c) 1991 The Regents of the University of California.
All rights reserved.

Redistribution and use in source and binary forms, with or without
modification, are permitted provided that the following conditions
are met:

1. Redistributions of source code must retain the above copyright
   notice, this list of conditions and the following disclaimer.
2. Redistributions in binary form must reproduce the above copyright
   notice, this list of conditions and the following disclaimer in the
   documentation and/or other materials provided with the distribution.
3. [ Deleted.  see :-
	ftp://ftp.cs.berkeley.edu/pub/4bsd/README.Impt.License.Change
   ]
4. Neither the name of the University nor the names of its contributors
   may be used to endorse or promote products derived from this software
   without specific prior written permission.

THIS SOFTWARE IS PROVIDED BY THE REGENTS AND CONTRIBUTORS ``AS IS'' AND
ANY EXPRESS OR IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE
IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE
ARE DISCLAIMED.  IN NO EVENT SHALL THE REGENTS OR CONTRIBUTORS BE LIABLE
FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL
DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS
OR SERVICES; LOSS OF USE, DATA, OR PROFITS; OR BUSINESS INTERRUPTION)
HOWEVER CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER IN CONTRACT, STRICT
LIABILITY, OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY
OUT OF THE USE OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF
SUCH DAMAGE.
"""


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="dataset folder (replaced)")
    ap.add_argument("--train", type=int, default=N_TRAIN, help="train clips")
    ap.add_argument("--eval", type=int, default=N_EVAL, help="eval clips (also other-voice)")
    args = ap.parse_args(argv)
    if shutil.which("espeak-ng") is None:
        sys.exit("espeak-ng not found: apt-get install espeak-ng")
    for name in FORTUNE_FILES:
        if not (FORTUNE_DIR / name).is_file():
            sys.exit(f"{FORTUNE_DIR / name} not found: apt-get install {PACKAGE_OF[name]}")
    os.environ.setdefault("OMP_NUM_THREADS", str(WORKERS))
    build(args.out.resolve(), args.train, args.eval)


if __name__ == "__main__":
    main()
