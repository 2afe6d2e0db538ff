"""The model card (README.md) of a run's final/ and of every export: YAML metadata with model-index
results taken from metrics.json, then the text a reader needs — the recipe, the selection, the guard sets
and how to load the model.

Every number in model-index is the normalised WER or CER of ``evaluation.after.<set>`` in metrics.json,
unrounded; after a selection (``eval.keep: auto``) those are the report half's (the clips selection never
saw), and each result's name says which half. The before-training numbers are in the text only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from whisper_tune.config.schema import ModelConfig, RunConfig
from whisper_tune.config_loading import load_config
from whisper_tune.disk import Text, write_text
from whisper_tune.errors import ModelError
from whisper_tune.evaluation.guards import REAL_SPEECH_SET, REGRESSION_SET
from whisper_tune.evaluation.selection import PRIMARY
from whisper_tune.languages import language_code
from whisper_tune.models.adapters import is_adapter_dir
from whisper_tune.models.packaged import PACKAGED_MODELS, PREFIX
from whisper_tune.reading import read_json_object
from whisper_tune.version import __version__

CARD_FILE = "README.md"
#: kind of the folder the card describes: a full model, a LoRA adapter, or a CTranslate2 export
CardKind = Literal["full", "adapter", "ct2"]
LIBRARY: dict[str, str] = {"full": "transformers", "adapter": "peft", "ct2": "ctranslate2"}
ASR = "automatic-speech-recognition"
#: the metrics of model-index: (metrics.json key, model-index type, what it is)
METRICS = (("normalized_wer", "wer", "normalised WER"), ("normalized_cer", "cer", "normalised CER"))
BUNDLED_SETS = {
    REGRESSION_SET: "the bundled regression slice (whisper-tune's own clips)",
    REAL_SPEECH_SET: "the bundled real English recordings",
}


def base_model_id(name: str) -> str | None:
    """The hub id of the model a run started from, where it has one (a local folder has none)."""
    if name.startswith(PREFIX):
        packaged = PACKAGED_MODELS.get(name.removeprefix(PREFIX).strip().lower())
        return packaged.hub_id if packaged is not None else None
    if Path(name).expanduser().exists() or name.count("/") != 1:
        return None
    return name


def _display(name: str) -> str:
    """A model or dataset as the card names it: a hub id as it is, a local path by its folder name."""
    if name.startswith(PREFIX) or not Path(name).expanduser().exists():
        return name
    return Path(name).expanduser().name


def card_language(config: RunConfig, english_only: bool | None) -> str | None:
    if config.model.language:
        return language_code(config.model.language)
    if english_only or config.model.name.endswith(".en"):
        return "en"
    return None


def set_sources(config: RunConfig) -> dict[str, tuple[str, str | None]]:
    """Each evaluated set's dataset (a hub id, or ``whisper-tune/<set>`` for a local one) and split."""

    def source(dataset: str | None, split: str | None, set_name: str) -> tuple[str, str | None]:
        local = dataset is None or Path(dataset).expanduser().exists()
        return (f"whisper-tune/{set_name}" if local else str(dataset)), split

    data = config.data
    sources = {PRIMARY: source(data.dataset, data.eval_split, PRIMARY)}
    for extra in data.extra_eval:
        sources[extra.name] = source(extra.dataset, extra.split, extra.name)
    for name in BUNDLED_SETS:
        sources[name] = (f"whisper-tune/{name}", None)
    return sources


def eval_results(config: RunConfig, metrics: Mapping[str, Any]) -> list[Any]:
    """``huggingface_hub.EvalResult`` for every set evaluated after training: normalised WER and CER,
    the very values of metrics.json."""
    # lazy: keeps huggingface_hub out of this module's import
    from huggingface_hub import EvalResult

    sources = set_sources(config)
    results = []
    for name, scores in metrics.get("evaluation", {}).get("after", {}).items():
        dataset, split = sources.get(name, (f"whisper-tune/{name}", None))
        half = scores.get("half", "all")
        for key, kind, label in METRICS:
            if scores.get(key) is None:
                continue
            results.append(
                EvalResult(
                    task_type=ASR,
                    task_name="Speech recognition",
                    dataset_type=dataset,
                    dataset_name=name,
                    dataset_split=split,
                    metric_type=kind,
                    metric_value=scores[key],
                    metric_name=f"{label} after training ({half} half)" if half != "all" else label,
                )
            )
    return results


def card_metadata(
    config: RunConfig, metrics: Mapping[str, Any], kind: CardKind, name: str, english_only: bool | None
) -> Any:
    """The YAML header as ``huggingface_hub.ModelCardData``."""
    # lazy: keeps huggingface_hub out of this module's import
    from huggingface_hub import ModelCardData

    tags = ["whisper", "whisper-tune", ASR, config.model.task]
    tags += {"adapter": ["lora", "peft"], "ct2": ["faster-whisper", "ctranslate2"], "full": []}[kind]
    datasets = sorted(
        {_display(config.data.dataset or "")}
        | {_display(e.dataset or "") for e in config.data.extra_eval} - {""}
    )
    results = eval_results(config, metrics)
    return ModelCardData(
        base_model=base_model_id(config.model.name),
        language=card_language(config, english_only),
        license=config.output.license,
        library_name=LIBRARY[kind],
        pipeline_tag=ASR,
        tags=tags,
        datasets=datasets or None,
        model_name=name if results else None,
        eval_results=results or None,
    )


def _pct(value: Any) -> str:
    return "–" if value is None else f"{value:g}"


def results_text(metrics: Mapping[str, Any]) -> list[str]:
    evaluation = metrics.get("evaluation", {})
    before, after = evaluation.get("before", {}), evaluation.get("after", {})
    lines = [
        "| set | clips | half | WER before | WER after | CER before | CER after |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys([*after, *before]):
        b, a = before.get(name, {}), after.get(name, {})
        lines.append(
            f"| {name} | {a.get('samples', b.get('samples', '–'))} | {a.get('half', b.get('half', 'all'))} "
            f"| {_pct(b.get('normalized_wer'))} | {_pct(a.get('normalized_wer'))} "
            f"| {_pct(b.get('normalized_cer'))} | {_pct(a.get('normalized_cer'))} |"
        )
    return [
        "## Results",
        "",
        "Normalised WER and CER in percent (Whisper's text normalisers), before and after training, from the "
        "run's metrics.json; the model-index above holds the after-training values. "
        + (
            "A selection chose how much of the change to keep on each set's *choose* half, so every number "
            "here is on the *report* half, the clips the selection never saw."
            if any(s.get("half") == "report" for s in after.values())
            else "Every number is on the whole set."
        ),
        "",
        *lines,
    ]


def recipe_text(config: RunConfig, metrics: Mapping[str, Any]) -> list[str]:
    t, train = config.training, metrics.get("train") or {}
    method: str = t.method
    if t.method != "full":
        targets = t.lora.target_modules
        on = targets if isinstance(targets, str) else ", ".join(targets)
        method += f" (r {t.lora.r}, alpha {t.lora.alpha:g}, on {on})"
    elif t.freeze_encoder:
        method += " (encoder frozen: the decoder trains)"
    data = config.data
    extra = ", ".join(
        f"{e.name} ({_display(e.dataset or data.dataset or '')}:{e.split})" for e in data.extra_eval
    )
    return [
        "## Recipe",
        "",
        f"- base model: `{_display(config.model.name)}`; language {config.model.language or 'as the model'}, "
        f"task {config.model.task}",
        f"- data: `{_display(data.dataset or '')}`, train split `{data.train_split}`, eval split "
        f"`{data.eval_split}`" + (f"; extra eval sets: {extra}" if extra else ""),
        f"- method: {method}; backend {config.backend.name}",
        f"- learning rate {t.learning_rate:g}, batch {t.batch_size} x {t.gradient_accumulation_steps} "
        f"accumulation, {train.get('steps', '–')} steps ({train.get('clips', '–')} clips seen), "
        f"{t.lr_scheduler} schedule, {t.warmup_steps} warm-up steps, precision {t.precision}, seed {t.seed}",
        f"- final loss {train.get('final_loss', '–')}; trained with whisper-tune {__version__}",
    ]


def selection_text(metrics: Mapping[str, Any]) -> list[str]:
    keep = metrics.get("keep") or {}
    lines = ["## Selection", ""]
    if keep.get("mode") == "auto" and keep.get("chosen"):
        chosen = keep["chosen"]
        lines.append(
            f"`eval.keep: auto` kept {chosen['label']} of the change (encoder {chosen.get('encoder')}, "
            f"decoder {chosen.get('decoder')}); "
            + ("every guard set stayed within its margin" if chosen.get("passed") else "best-guarded")
            + f" on the choose halves (seed {keep.get('seed')}). Rule: {keep.get('rule')}."
        )
        if keep.get("warning"):
            lines.append(f"\nWarning: {keep['warning']}")
    elif keep.get("mode") == "skipped":
        lines.append(f"The whole change is kept ({keep.get('reason')}).")
    elif keep.get("chosen"):
        lines.append(f"A fixed share of the change is kept: {keep['chosen'].get('label')}.")
    else:
        lines.append("No selection: the whole change is kept.")
    if metrics.get("selection"):
        lines.append(f"\nDuring training: {json.dumps(metrics['selection'], sort_keys=True)}")
    return lines


def guard_text(metrics: Mapping[str, Any]) -> list[str]:
    guard = metrics.get("guard") or {}
    sets = guard.get("sets") or {}
    lines = ["## Guard sets", ""]
    if not sets:
        return [*lines, "No held-out guard set was evaluated."]
    lines.append("Held-out sets that must not get worse by more than their margin (normalised WER points):")
    lines.append("")
    for name, s in sets.items():
        origin = f" ({BUNDLED_SETS[name]})" if name in BUNDLED_SETS else ""
        verdict = "regressed" if s.get("regressed") else "within margin"
        lines.append(
            f"- {name}{origin}: {_pct(s.get('before'))} -> {_pct(s.get('after'))} "
            f"(margin {_pct(s.get('margin'))}): {verdict}"
        )
    for warning in guard.get("warnings") or []:
        lines.append(f"- warning: {warning}")
    return lines


def usage_text(config: RunConfig, kind: CardKind) -> list[str]:
    language = f'language="{config.model.language}", ' if config.model.language else ""
    task = config.model.task
    base = base_model_id(config.model.name) or _display(config.model.name)
    if kind == "ct2":
        code = [
            "from faster_whisper import WhisperModel",
            "",
            'model = WhisperModel("ORG/NAME")  # this repository, or the path of this folder',
            f'segments, info = model.transcribe("audio.wav", {language}task="{task}")',
            'print(" ".join(s.text for s in segments))',
        ]
    else:
        code = [
            "from transformers import WhisperForConditionalGeneration, WhisperProcessor",
            *(["from peft import PeftModel"] if kind == "adapter" else []),
            "",
            'repo = "ORG/NAME"  # this repository, or the path of this folder',
            *(
                [
                    f'base = WhisperForConditionalGeneration.from_pretrained("{base}")',
                    "model = PeftModel.from_pretrained(base, repo).merge_and_unload()",
                    f'processor = WhisperProcessor.from_pretrained("{base}")',
                ]
                if kind == "adapter"
                else [
                    "model = WhisperForConditionalGeneration.from_pretrained(repo)",
                    "processor = WhisperProcessor.from_pretrained(repo)",
                ]
            ),
            'features = processor(audio, sampling_rate=16_000, return_tensors="pt").input_features',
            f'ids = model.generate(features, {language}task="{task}")',
            "print(processor.batch_decode(ids, skip_special_tokens=True)[0])",
        ]
    what = {"full": "transformers", "adapter": "peft (a LoRA adapter on its base)", "ct2": "faster-whisper"}
    return [
        "## How to use",
        "",
        f"With {what[kind]}:",
        "",
        "```python",
        *code,
        "```",
        "",
        "Or with whisper-tune: `whisper-tune transcribe --model ORG/NAME audio.wav`.",
    ]


def card_text(
    config: RunConfig,
    metrics: Mapping[str, Any],
    kind: CardKind,
    name: str,
    *,
    english_only: bool | None = None,
    notes: list[str] | None = None,
) -> str:
    """The whole README.md: YAML metadata, then the text."""
    data = card_metadata(config, metrics, kind, name, english_only)
    what = {"full": "model", "adapter": "LoRA adapter", "ct2": "CTranslate2 export"}[kind]
    if metrics:
        intro = f"A Whisper {what} fine-tuned from `{_display(config.model.name)}` with whisper-tune."
        run = [*results_text(metrics), "", *recipe_text(config, metrics), "", *selection_text(metrics)]
        run += ["", *guard_text(metrics), ""]
    else:
        intro = f"A Whisper {what} of `{_display(config.model.name)}`, written by whisper-tune."
        run = ["It is not a whisper-tune run: no training recipe or results were recorded.", ""]
    body = [f"# {name}", "", intro, "", *run, *([*notes, ""] if notes else []), *usage_text(config, kind)]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body) + "\n"


def write_card(folder: Path, text: str, kept: Text = None, hint: Text = None) -> Path:
    """``folder``/README.md (``kept``, ``hint``: what survives a full disk, and what to do)."""
    what = f"the model card {folder.name}/{CARD_FILE}"
    return write_text(folder / CARD_FILE, text, what, kept=kept, hint=hint)


def run_inputs(run_dir: Path) -> tuple[RunConfig, dict[str, Any]]:
    """A run directory's config and metrics.json (empty when the run wrote none)."""
    config = load_config(run_dir / "config.yaml", require_backend=False)
    metrics_path = run_dir / "metrics.json"
    metrics: dict[str, Any] = {}
    if metrics_path.is_file():
        metrics = read_json_object(metrics_path, ModelError, "a run's metrics.json")
    return config, metrics


def write_run_card(
    final: Path,
    config: RunConfig,
    metrics: Mapping[str, Any],
    name: str,
    english_only: bool | None = None,
    kept: Text = None,
    hint: Text = None,
) -> Path:
    """final/README.md of a run: the card of a full model or of a LoRA adapter."""
    kind: CardKind = "adapter" if is_adapter_dir(final) else "full"
    return write_card(final, card_text(config, metrics, kind, name, english_only=english_only), kept, hint)


def export_card_text(
    kind: CardKind, model_cfg: ModelConfig, run_dir: Path | None, fmt: str, parity: Mapping[str, Any] | None
) -> str:
    """The card of one export format: the source run's card (its config and metrics.json) with what the
    export is and its parity check; for a model that is not a run, the card of the model alone."""
    if run_dir is not None:
        config, metrics = run_inputs(run_dir)
        name = f"{run_dir.name}-{fmt}"
    else:
        config, metrics, name = RunConfig(model=model_cfg), {}, f"{_display(model_cfg.name)}-{fmt}"
    notes = ["## Export", "", f"Written by `whisper-tune export` as `{fmt}`."]
    verdict = (parity or {}).get("formats", {}).get(fmt) if parity else None
    if verdict:
        notes[-1] += (
            f" Parity check: normalised WER {verdict['export_wer']:.2f}% against the source's "
            f"{verdict['source_wer']:.2f}% on {parity['clips']['count']} clips "  # type: ignore[index]
            f"(tolerance +{verdict['tolerance']:g}): {'passed' if verdict['passed'] else 'FAILED'}."
        )
    return card_text(config, metrics, kind, name, notes=notes)
