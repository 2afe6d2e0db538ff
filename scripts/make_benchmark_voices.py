#!/usr/bin/env python3
"""Make the recipe benchmark's second training domain and its large second-voice guard set.

``data/benchmark/`` (not shipped in the wheel; used by ``benchmarks/recipe_quality.py``):

* ``voice-b/train``: the quickstart's 240 training sentences in a second training voice, espeak-ng
  ``en-gb-x-rp+f2`` (female, Received Pronunciation). Pretrained tiny.en starts near 30 % WER on it
  (measured on 40 held-out sentences when the voice was picked: en-us 23 %, en-gb-x-rp+f2 30 %,
  en-us-nyc+m3 31 %, en-029 42 %, en-gb-x-gbclan+f4 50 %, en-gb-scotland+f3 54 %).
* ``voice-b/eval``: ``N_EVAL_B`` held-out sentences in that voice.
* ``second-voice``: ``N_SECOND`` other held-out sentences read by hibari-tts (voice ``heart``), the
  voice of the quickstart's ``other-voice`` set; no training set of the benchmark uses it.

Held-out sentences come from the same fortune pool as the quickstart (scripts/make_quickstart_data.py,
same filters), minus every sentence of the quickstart's splits and every near-duplicate of a training
sentence; ``voice-b/eval`` and ``second-voice`` share no sentence. Deterministic, like the quickstart.

    apt-get install espeak-ng fortunes-min fortunes
    pip install hibari-tts soundfile
    python scripts/make_benchmark_voices.py
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import make_quickstart_data as qs

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "data" / "benchmark"
VOICE_B = "en-gb-x-rp+f2"
N_EVAL_B = 50
N_SECOND = 110


def texts(split: str) -> list[str]:
    with open(REPO / "data" / "quickstart" / split / "metadata.csv", newline="", encoding="utf-8") as fh:
        return [row["text"] for row in csv.DictReader(fh)]


def voice_b(text: str) -> tuple:
    return qs.espeak(text, VOICE_B)


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    train = texts("train")
    used = {qs.key_of(t) for split in ("train", "eval") for t in texts(split)}
    held = [t for _, t in qs.candidate_sentences() if qs.key_of(t) not in used]
    held = [t for t in held if not any(qs.near_duplicate(t, u) for u in train)]
    with ThreadPoolExecutor(qs.WORKERS) as ex:
        train_clips = list(ex.map(voice_b, train))
        held_clips = list(ex.map(voice_b, held))
    in_range = [(t, c) for t, c in zip(held, held_clips, strict=True) if qs.in_range(c)]
    evals = in_range[:N_EVAL_B]
    hibari = qs.HibariVoice()
    second: list[tuple[str, tuple]] = []
    for text, _ in in_range[N_EVAL_B:]:
        clip = hibari(text)
        if qs.in_range(clip):
            second.append((text, clip))
        if len(second) == N_SECOND:
            break
    if len(evals) < N_EVAL_B or len(second) < N_SECOND:
        sys.exit(f"only {len(evals)} eval and {len(second)} second-voice sentences")
    with qs.replacing(OUT, ".benchmark.tmp-") as tmp:
        qs.write_split(tmp / "voice-b" / "train", "train", list(zip(train, train_clips, strict=True)))
        qs.write_split(tmp / "voice-b" / "eval", "eval", evals)
        qs.write_split(tmp / "second-voice", "second-voice", second)
        words = sum(len(t.split()) for t, _ in second)
        (tmp / "README.md").write_text(README.format(
            voice=VOICE_B, n_eval=len(evals), n_second=len(second), words=words,
            eval_words=sum(len(t.split()) for t, _ in evals),
        ), encoding="utf-8")  # fmt: skip
        shutil.copy(REPO / "data" / "quickstart" / "LICENSE", tmp / "LICENSE")
    print(f"voice-b/train {len(train)}, voice-b/eval {len(evals)}, second-voice {len(second)} ({words} words)")


README = """\
# Recipe benchmark data

Made by `scripts/make_benchmark_voices.py` (deterministic; do not edit by hand); used by
`benchmarks/recipe_quality.py`; not shipped in the wheel.

| split | clips | voice | sentences |
|---|---|---|---|
| `voice-b/train` | 240 | espeak-ng `{voice}` | the quickstart's training sentences |
| `voice-b/eval` | {n_eval} ({eval_words} words) | espeak-ng `{voice}` | held out: in no training set |
| `second-voice` | {n_second} ({words} words) | hibari-tts `heart` | held out: in no training set, not in `voice-b/eval` |

The second training domain (`voice-b`) is a voice no guard set uses; `second-voice` is the voice of the
quickstart's `other-voice` set, reading sentences no training set or eval set of the benchmark holds.
Text, tools and licences as in `data/quickstart/README.md` (`LICENSE` is that folder's).
"""


if __name__ == "__main__":
    main()
