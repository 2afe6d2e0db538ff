"""What ``export`` and ``transcribe`` accept as a model, resolved to something loadable.

* a run directory (``runs/<name>/``: config.yaml + final/): its final model, full or a LoRA adapter,
  with the language/task of its config;
* a Hugging Face model directory (e.g. an export), a PEFT adapter directory, or a hub id;
* a CTranslate2 directory (e.g. an export; faster-whisper runs it as is);
* ``pip:tiny.en`` / ``pip:base`` (imported to Hugging Face weights, see ``models.packaged``).

Nothing heavy is imported here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from whisper_tune.config.schema import EvalConfig, ModelConfig
from whisper_tune.config_loading import load_config
from whisper_tune.errors import ConfigError, ModelError
from whisper_tune.models.adapters import adapter_base_name, is_adapter_dir, load_adapter_model
from whisper_tune.models.ct2_import import is_ct2_directory
from whisper_tune.models.loading import configure_generation, load_model, load_processor
from whisper_tune.models.packaged import resolve_model_source

RUN_CONFIG = "config.yaml"
ModelKind = Literal["hf", "adapter", "ct2"]


@dataclass(frozen=True)
class ModelRef:
    """A resolved model: ``path`` is a Hugging Face directory or hub id (kind ``hf``), a PEFT adapter
    directory (``adapter``) or a CTranslate2 directory (``ct2``)."""

    name: str
    kind: ModelKind
    path: str
    model_cfg: ModelConfig
    run_dir: Path | None = None
    eval_cfg: EvalConfig | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "path": self.path,
            "run_dir": str(self.run_dir) if self.run_dir else None,
            "language": self.model_cfg.language,
            "task": self.model_cfg.task,
        }


def is_run_dir(path: Path) -> bool:
    return (path / RUN_CONFIG).is_file() and ((path / "final").is_dir() or (path / "metrics.json").is_file())


def final_dir(run_dir: Path) -> Path:
    """A run's final model folder: where metrics.json recorded it, else final/."""
    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        try:
            document = json.loads(metrics.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # unreadable, not UTF-8, not JSON: final/ then
            document = None
        recorded = document.get("final_model_dir") if isinstance(document, dict) else None
        if recorded and Path(recorded).is_dir():
            return Path(recorded)
    final = run_dir / "final"
    if not final.is_dir():
        raise ModelError(
            f"the run {run_dir} has no final model (no final/ directory)",
            hint="the run may have been interrupted or run with output.save_final_model=false",
        )
    return final


def _model_cfg(name: str, language: str | None, task: str | None) -> ModelConfig:
    try:
        return ModelConfig(name=name, language=language, task=task or "transcribe")
    except ValueError as exc:
        raise ConfigError(f"--language/--task: {str(exc).splitlines()[-1]}") from None


def resolve_run(run_dir: Path, language: str | None = None, task: str | None = None) -> ModelRef:
    """A run directory: its final model with the run's language/task (``language``/``task`` override)."""

    config = load_config(run_dir / RUN_CONFIG, require_backend=False)
    model_cfg = config.model
    if language is not None or task is not None:
        model_cfg = _model_cfg(model_cfg.name, language or model_cfg.language, task or model_cfg.task)
    final = final_dir(run_dir)
    kind: ModelKind = "adapter" if is_adapter_dir(final) else "hf"
    return ModelRef(str(run_dir), kind, str(final), model_cfg, run_dir=run_dir, eval_cfg=config.eval)


def resolve_model(
    name: str, language: str | None = None, task: str | None = None, *, keep_ct2: bool = False
) -> ModelRef:
    """Any accepted model reference. With ``keep_ct2`` a CTranslate2 directory stays one (faster-whisper
    runs it); otherwise it is imported to Hugging Face weights like every other CT2 model."""

    path = Path(name).expanduser()
    if path.is_dir() and is_run_dir(path):
        return resolve_run(path, language, task)
    if path.is_dir() and is_adapter_dir(path):
        return ModelRef(name, "adapter", str(path), _model_cfg(name, language, task))
    if keep_ct2 and path.is_dir() and is_ct2_directory(path):
        return ModelRef(name, "ct2", str(path), _model_cfg(name, language, task))
    return ModelRef(name, "hf", resolve_model_source(name), _model_cfg(name, language, task))


def load_hf(ref: ModelRef, *, merge: bool = True) -> tuple[Any, Any]:
    """(model, processor) on the CPU in float32, language/task configured. An adapter is merged into
    its base, or with ``merge=False`` kept as a PeftModel (what the run evaluated)."""
    import torch

    if ref.kind == "ct2":
        raise ModelError(f"{ref.path} is a CTranslate2 model, not a Hugging Face one")
    if ref.kind == "adapter":
        model = load_adapter_model(ref.path)
        if merge:
            model = model.merge_and_unload()
        configure_generation(model if merge else model.get_base_model(), ref.model_cfg)
        try:
            processor = load_processor(ref.path, ref.model_cfg)
        except ModelError:
            processor = load_processor(resolve_model_source(adapter_base_name(ref.path)), ref.model_cfg)
        return model, processor
    model = load_model(ref.path, ref.model_cfg, dtype=torch.float32)
    model.eval()
    return model, load_processor(ref.path, ref.model_cfg)
