#!/usr/bin/env python3
"""Make the packing benchmark's larger in-domain eval sets: ``data/benchmark/held-eval/{espeak-us,voice-b}``.

The same ``N_HELD`` held-out sentences read by both training voices of the recipe benchmark
(espeak-ng ``en-us``, the quickstart's, and ``en-gb-x-rp+f2``, voice-b's), so that each training domain
is scored on at least 100 clips of its own voice. The sentences come from the quickstart's fortune pool
(scripts/make_quickstart_data.py, same filters), minus every sentence of the quickstart's splits, of
``voice-b/eval`` and of ``second-voice``, and minus every near-duplicate of a training sentence: no run
of the benchmarks trains or selects on them. Deterministic, like the other data scripts; needs no
hibari-tts.

    apt-get install espeak-ng fortunes-min fortunes
    python scripts/make_held_eval.py
"""

from __future__ import annotations

import argparse
import csv
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import make_quickstart_data as qs
from make_benchmark_voices import VOICE_B

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "data" / "benchmark" / "held-eval"
VOICES = {"espeak-us": qs.ESPEAK_VOICE, "voice-b": VOICE_B}
N_HELD = 110


def texts(folder: Path) -> list[str]:
    with open(folder / "metadata.csv", newline="", encoding="utf-8") as fh:
        return [row["text"] for row in csv.DictReader(fh)]


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    quickstart, bench = REPO / "data" / "quickstart", REPO / "data" / "benchmark"
    train = texts(quickstart / "train")
    used = {
        qs.key_of(t)
        for folder in (quickstart / "train", quickstart / "eval", quickstart / "other-voice",
                       bench / "voice-b" / "eval", bench / "second-voice")
        for t in texts(folder)
    }  # fmt: skip
    held = [t for _, t in qs.candidate_sentences() if qs.key_of(t) not in used]
    held = [t for t in held if not any(qs.near_duplicate(t, u) for u in train)]
    chosen: list[str] = []
    clips: dict[str, list[tuple]] = {name: [] for name in VOICES}
    with ThreadPoolExecutor(qs.WORKERS) as ex:
        for start in range(0, len(held), 40):
            batch = held[start : start + 40]
            made = {
                name: list(ex.map(lambda t, v=voice: qs.espeak(t, v), batch)) for name, voice in VOICES.items()
            }
            for i, text in enumerate(batch):
                if all(qs.in_range(made[name][i]) for name in VOICES) and len(chosen) < N_HELD:
                    chosen.append(text)
                    for name in VOICES:
                        clips[name].append(made[name][i])
            if len(chosen) == N_HELD:
                break
    if len(chosen) < N_HELD:
        sys.exit(f"only {len(chosen)} held-out sentences in range for both voices")
    with qs.replacing(OUT, ".held-eval.tmp-") as tmp:
        for name in VOICES:
            qs.write_split(tmp / name, f"held-{name}", list(zip(chosen, clips[name], strict=True)))
    words = sum(len(t.split()) for t in chosen)
    print(f"held-eval: {len(chosen)} sentences ({words} words) in {', '.join(VOICES)}")


if __name__ == "__main__":
    main()
