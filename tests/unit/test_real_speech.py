"""The real English speech sets: the in-run guard set shipped in the package and the larger benchmark
set in data/real-speech (built by scripts/make_real_speech.py; the script itself is not run here)."""

from __future__ import annotations

import csv
from pathlib import Path

import soundfile as sf

from whisper_tune.evaluation.guards import bundled_regression_dir

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "data" / "real-speech"
IN_RUN_ROWS = 61
BENCH_ROWS = 227
PREFIXES = ("librivox", "cards", "sonnet", "jfk", "praatio", "arctic", "pocketsphinx", "asterisk")


def _in_run() -> list[dict[str, str]]:
    with open(bundled_regression_dir() / "real-speech.csv", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _bench() -> list[dict[str, str]]:
    with open(BENCH / "all" / "metadata.csv", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _prefix(name: str) -> str:
    return Path(name).name.split("-", 1)[0]


def test_the_in_run_set_has_every_clip_decodable_at_16k_mono() -> None:
    rows = _in_run()
    assert len(rows) == IN_RUN_ROWS
    assert rows[1]["text"] == "he was not an ill disposed young man"  # the first ten are kept first
    assert sum(_prefix(r["audio"]) == "asterisk" for r in rows) == 40
    assert len({r["audio"] for r in rows}) == IN_RUN_ROWS
    root = bundled_regression_dir()
    for r in rows:
        path = root / r["audio"]
        assert path.is_file(), path
        info = sf.info(str(path))
        assert (info.samplerate, info.channels) == (16000, 1), path
        assert 0.3 <= info.duration <= 30.0, (path, info.duration)
        x, _ = sf.read(str(path), dtype="float32")
        assert len(x) > 0 and abs(x).max() > 0.01, path
        assert r["text"].strip() and r["language"] == "en", r
        assert "*" not in r["text"] and "#" not in r["text"], r


def test_the_readmes_name_every_source_and_ship_the_licences() -> None:
    used = {_prefix(r["audio"]) for r in _in_run()} | {_prefix(r["file_name"]) for r in _bench()}
    assert used <= set(PREFIXES), used
    for readme in (bundled_regression_dir() / "README.md", BENCH / "README.md"):
        text = readme.read_text(encoding="utf-8")
        for prefix in used:
            if prefix in ("librivox", "cards") and readme.parent == BENCH:
                continue  # the benchmark set does not hold the ten earlier clips
            assert f"`{prefix}-" in text, (readme, prefix)
        assert "CC-BY-SA-3.0" in text and "Allison Smith" in text
        for licence in ("Asterisk-CC-BY-SA-3.0.txt", "LibriVox.txt", "praatio-MIT.txt", "CMU-ARCTIC.txt"):
            assert (readme.parent / "licences" / licence).is_file(), licence


def test_the_benchmark_set_is_a_complete_audiofolder() -> None:
    rows = _bench()
    assert len(rows) == BENCH_ROWS
    assert list(rows[0]) == ["file_name", "text", "speaker", "source", "licence"]
    for r in rows:
        assert (BENCH / "all" / r["file_name"]).is_file(), r["file_name"]
        assert r["text"].strip() and r["licence"].strip(), r
    in_run_ast = {Path(r["audio"]).name for r in _in_run() if _prefix(r["audio"]) == "asterisk"}
    assert in_run_ast <= {r["file_name"] for r in rows}  # the README says the 40 overlap


def test_the_benchmark_set_reads_as_an_audiofolder() -> None:
    from whisper_tune.data.sources import SplitSpec, iter_split

    samples = list(iter_split(SplitSpec(dataset=str(BENCH), kind="audiofolder", split="all")))
    assert len(samples) == BENCH_ROWS and all(Path(s.audio).is_file() for s in samples)


def test_the_benchmark_set_stays_out_of_the_wheel() -> None:
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert '"data/quickstart" = "whisper_tune/data/quickstart"' in pyproject
    assert "data/real-speech" not in pyproject and '"data" =' not in pyproject


def test_the_rebuild_script_is_not_imported_by_the_package() -> None:
    assert (REPO / "scripts" / "make_real_speech.py").is_file()
    src = REPO / "src" / "whisper_tune"
    assert not any("make_real_speech" in p.read_text(encoding="utf-8") for p in src.rglob("*.py"))
