"""``whisper-tune export``: write the formats, check parity on eval clips, write export.json.

Layout of ``--out DIR``::

    DIR/hf/            merged Hugging Face model (always written: the CT2 formats are converted from it)
    DIR/ct2-float16/   CTranslate2, float16 weights
    DIR/ct2-int8/      CTranslate2, int8 weights
    DIR/export.json    source, clips, WER of the source and of each format, delta, tolerance, verdict
    DIR/parity-predictions.jsonl   per clip: reference, source transcript, each format's transcript

Each format's folder gets README.md, its model card (runs/card.py: the source run's results, the parity).

A format whose normalised WER is worse than the source's by more than its tolerance fails the export
(ExportError, exit code 8) after export.json is written; the exported files are kept for inspection.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from whisper_tune.config.schema import EvalConfig
from whisper_tune.console import Reporter
from whisper_tune.disk import OUT_HINT, Text, write_json, write_lines, writing
from whisper_tune.errors import ConfigError, ExportError, ModelError, OutputError
from whisper_tune.export import parity
from whisper_tune.export.ct2 import cpu_compute_type, export_ct2, load_faster_whisper
from whisper_tune.export.hf import export_hf
from whisper_tune.runs.card import CardKind, export_card_text, write_card
from whisper_tune.runs.model_ref import ModelRef, load_hf, resolve_model

FORMATS = ("hf", "ct2-float16", "ct2-int8")
#: Allowed |WER(export) - WER(source)| in normalised-WER percentage points, per format.
DEFAULT_TOLERANCE = {"hf": 1.0, "ct2-float16": 1.0, "ct2-int8": 2.0}
DEFAULT_MAX_CLIPS = 32
REPORT_FILE = "export.json"
PREDICTIONS_FILE = "parity-predictions.jsonl"


@dataclass
class ExportResult:
    out_dir: Path
    report: dict[str, Any]
    lines: list[str] = field(default_factory=list)


def _check_out_dir(out_dir: Path, formats: Sequence[str]) -> None:
    for name in ("hf", *formats):
        target = out_dir / name
        if target.exists() and any(target.iterdir()):
            raise OutputError(
                f"{target} already exists and is not empty",
                hint="choose another --out (nothing was overwritten)",
            )
    with writing("the export folder", out_dir, fix="give --out a writable directory"):
        out_dir.mkdir(parents=True, exist_ok=True)


def _kept(written: dict[str, Path]) -> Text:
    """What a full disk leaves of an export: the formats complete so far (a function: read when it fails)."""
    return lambda: f"complete: {', '.join(f'{fmt}/' for fmt in written)}" if written else None


def _write_cards(ref: ModelRef, written: dict[str, Path], report: dict[str, Any] | None) -> None:
    """README.md, the model card, in every format's folder (the run's results, the format's parity)."""
    for fmt, path in written.items():
        kind: CardKind = "full" if fmt == "hf" else "ct2"
        text = export_card_text(kind, ref.model_cfg, ref.run_dir, fmt, report)
        write_card(path, text, _kept(written), OUT_HINT)


def export(
    source: str,
    out_dir: Path,
    *,
    formats: Sequence[str] = FORMATS,
    clips: Path | None = None,
    max_clips: int = DEFAULT_MAX_CLIPS,
    tolerance: float | None = None,
    language: str | None = None,
    task: str | None = None,
    check: bool = True,
    check_only: bool = False,
    reporter: Reporter | None = None,
) -> ExportResult:
    """Export ``source`` (a run directory or any model reference) to ``out_dir`` in ``formats``; with
    ``check_only`` write nothing but re-run the parity check on the formats already in ``out_dir``."""

    reporter = reporter or Reporter()
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ExportError(f"unknown export format(s) {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
    ref = resolve_model(source, language, task)
    if (check or check_only) and clips is None and ref.run_dir is None:
        raise ConfigError(
            f"the parity check of '{source}' needs eval clips: give --clips (a prepared directory or an "
            "audio folder with metadata.csv), or --no-check",
            hint="a run directory uses its own prepared eval set",
        )
    written: dict[str, Path] = {}
    if check_only:
        written = {
            fmt: out_dir / fmt for fmt in ("hf", *formats) if (out_dir / fmt / "config.json").is_file()
        }
        if not written:
            raise ExportError(f"{out_dir} holds no exported model (hf/, ct2-float16/, ct2-int8/)")
        check = True
    else:
        _check_out_dir(out_dir, formats)
        hf_dir = out_dir / "hf"
        reporter.info(f"export {ref.kind} model {ref.path} -> {hf_dir}")
        written["hf"] = export_hf(ref, hf_dir)
        for fmt in formats:
            if fmt.startswith("ct2-"):
                quantization = fmt.removeprefix("ct2-")
                reporter.info(f"convert to CTranslate2 ({quantization}) -> {out_dir / fmt}")
                kept = _kept(written)
                written[fmt] = export_ct2(hf_dir, out_dir / fmt, quantization, kept)  # type: ignore[arg-type]
    report: dict[str, Any] = {
        "source": ref.describe(),
        "formats": {fmt: {"path": str(path)} for fmt, path in written.items()},
    }
    lines = [f"{fmt}: {path}" for fmt, path in written.items()]
    if not check:
        report["parity"] = None
        write_json(out_dir / REPORT_FILE, report, kept=_kept(written), hint=OUT_HINT)
        _write_cards(ref, written, None)
        return ExportResult(out_dir, report, [*lines, "parity check skipped (--no-check)"])
    tolerances = {fmt: (DEFAULT_TOLERANCE[fmt] if tolerance is None else tolerance) for fmt in written}
    parity, predictions = check_parity(ref, written, out_dir, clips, max_clips, tolerances, reporter)
    for fmt, verdict in parity.pop("formats").items():
        report["formats"][fmt].update(verdict)
    report.update(parity)
    write_json(out_dir / REPORT_FILE, report, kept=_kept(written), hint=OUT_HINT)
    _write_cards(ref, written, report)
    write_lines(out_dir / PREDICTIONS_FILE, predictions, kept=_kept(written), hint=OUT_HINT)
    for fmt in written:
        verdict = report["formats"][fmt]
        lines.append(
            f"parity {fmt}: WER {verdict['export_wer']:.2f}% vs source {verdict['source_wer']:.2f}% "
            f"(Δ {verdict['delta']:+.2f}, tolerance +{verdict['tolerance']:g}) "
            f"{'ok' if verdict['passed'] else 'FAILED'}"
        )
    failed = [fmt for fmt in written if not report["formats"][fmt]["passed"]]
    if failed:
        verdicts = report["formats"]
        details = "; ".join(
            f"{fmt}: {verdicts[fmt]['export_wer']:.2f}% vs {verdicts[fmt]['source_wer']:.2f}%"
            for fmt in failed
        )
        hint = f"the export is kept for inspection: see {out_dir / REPORT_FILE} and {PREDICTIONS_FILE}"
        step = parity["clips"]["one_word_pts"]
        if step > min(verdicts[fmt]["tolerance"] for fmt in failed):
            hint += (
                f"; one word is {step:.2f} points on these {parity['clips']['count']} clips, more than the "
                "tolerance: check on more clips (--max-clips) before trusting this verdict"
            )
        raise ExportError(
            f"the exported model does not transcribe like its source ({details}; normalised WER on "
            f"{parity['clips']['count']} clips, tolerance exceeded)",
            hint=hint,
        )
    return ExportResult(out_dir, report, lines)


def check_parity(
    ref: ModelRef,
    written: dict[str, Path],
    work_dir: Path,
    clips_path: Path | None,
    max_clips: int,
    tolerances: dict[str, float],
    reporter: Reporter,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Decode the clips with the source and every written format; the verdicts and per-clip rows."""

    model, processor = load_hf(ref, merge=False)
    eval_cfg = parity.parity_eval_config(ref.eval_cfg or EvalConfig(), processor)
    clips = parity.load_clips(ref.run_dir, clips_path, max_clips, processor, work_dir, reporter)
    tokenizer = processor.tokenizer
    prompt = list(tokenizer.prefix_tokens)

    def scored(ids: list[list[int]]) -> dict[str, Any]:
        return parity.score(tokenizer, ids, clips, ref.model_cfg, eval_cfg)

    source = scored(parity.decode_hf(model, clips, ref.model_cfg, eval_cfg, reporter, "source"))
    del model
    gc.collect()
    results: dict[str, dict[str, Any]] = {}
    engines: dict[str, str] = {}
    for fmt, path in written.items():
        if fmt == "hf":
            hf_ref = ModelRef(str(path), "hf", str(path), ref.model_cfg)
            exported, _ = load_hf(hf_ref)
            results[fmt] = scored(parity.decode_hf(exported, clips, ref.model_cfg, eval_cfg, reporter, fmt))
            engines[fmt] = "transformers generate, float32"
            del exported
        else:
            compute_type = cpu_compute_type(fmt.removeprefix("ct2-"))  # type: ignore[arg-type]
            try:
                whisper = load_faster_whisper(path, compute_type=compute_type)
            except ModelError as exc:
                raise ExportError(exc.message, hint=exc.hint) from None
            ids = parity.decode_ct2(whisper.model, clips, prompt, eval_cfg, reporter, fmt)
            results[fmt] = scored(ids)
            engines[fmt] = f"faster-whisper/ctranslate2 on CPU, compute_type {whisper.model.compute_type}"
            del whisper
        gc.collect()
    verdicts = {
        fmt: {**parity.compare(source, result, tolerances[fmt]), "decoder": engines[fmt]}
        for fmt, result in results.items()
    }
    rows = [
        {
            "reference": ref_text,
            "source": source["texts"][i],
            **{fmt: result["texts"][i] for fmt, result in results.items()},
        }
        for i, ref_text in enumerate(clips.texts)
    ]
    summary = {
        "clips": {
            "origin": clips.origin,
            "count": len(clips.texts),
            # the WER step of one word on these clips: a tolerance below it fails on any one-word change
            "one_word_pts": round(100 / max(1, source["metrics"]["reference_words"]), 3),
        },
        "metric": parity.METRIC,
        "decoding": {
            "prompt": tokenizer.convert_ids_to_tokens(prompt),
            "num_beams": eval_cfg.num_beams,
            "max_new_tokens": eval_cfg.max_new_tokens,
            "normalizer": source["metrics"].get("normalizer"),
        },
        "source_metrics": source["metrics"],
        "passed": all(v["passed"] for v in verdicts.values()),
        "formats": verdicts,
    }
    return summary, rows
