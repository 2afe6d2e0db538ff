"""Turn the ``data`` section into prepared directories: train, eval, and every extra eval set.

Also the way back in: a directory written by ``whisper-tune prepare`` is used as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from whisper_tune.config.schema import DataConfig, EvalSetConfig
from whisper_tune.console import Reporter
from whisper_tune.data.fingerprint import set_fingerprint
from whisper_tune.data.preparation import Filters, Workers, prepare_samples
from whisper_tune.data.sources import (
    SplitSpec,
    iter_split,
    own_language_column,
    resolve_kind,
    seeded_split,
    train_and_eval_specs,
)
from whisper_tune.data.store import PreparedDataset
from whisper_tune.errors import DataError
from whisper_tune.models.loading import is_multilingual

EVAL = "eval"


@dataclass(frozen=True)
class PreparedSets:
    train: Path | None
    evals: dict[str, Path] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        """Counts, audio duration and drops for each set (goes into metrics.json)."""
        sets = {"train": self.train} if self.train else {}
        sets.update(self.evals)
        out = {}
        for name, path in sets.items():
            ds = PreparedDataset(path)
            out[name] = {
                "samples": len(ds),
                "audio_minutes": round(ds.total_seconds / 60, 2),
                "dropped": ds.dropped,
                "path": str(path),
            }
        return out


def _prepared_split(root: Path, split: str) -> Path:
    candidate = root / split
    if (candidate / "manifest.json").is_file():
        return candidate
    if split == "train" and (root / "manifest.json").is_file():
        return root
    raise DataError(
        f"prepared data {root} has no split '{split}'",
        hint=f"available: {', '.join(sorted(p.parent.name for p in root.glob('*/manifest.json')))}",
    )


def prepare_all(
    data: DataConfig,
    out_dir: Path,
    *,
    feature_extractor: Any,
    tokenizer: Any,
    reporter: Reporter,
    include_train: bool = True,
    meta: dict[str, Any] | None = None,
) -> PreparedSets:
    """Prepare train + eval (+ extra eval sets) into ``out_dir/<name>``; reuse prepared input as is.
    Every set is prepared by the same worker processes (``data.num_workers``)."""
    filters = Filters.from_config(data)
    with Workers(data.num_workers, tokenizer, filters) as workers:
        common = dict(
            feature_extractor=feature_extractor,
            tokenizer=tokenizer,
            filters=filters,
            reporter=reporter,
            meta=meta,
            workers=workers,
        )
        return _prepare_all(data, out_dir, feature_extractor, include_train, reporter, common)


def _prepare_all(
    data: DataConfig,
    out_dir: Path,
    feature_extractor: Any,
    include_train: bool,
    reporter: Reporter,
    common: dict[str, Any],
) -> PreparedSets:
    train_dir: Path | None = None
    evals: dict[str, Path] = {}
    if data.dataset is not None and resolve_kind(data.dataset, data.kind) == "prepared":
        root = Path(data.dataset).expanduser()
        train_dir = _prepared_split(root, data.train_split) if include_train else None
        if data.eval_split:
            evals[EVAL] = _prepared_split(root, data.eval_split)
        _check_mel_bins([p for p in [train_dir, *evals.values()] if p], int(feature_extractor.feature_size))
    else:
        train_spec, eval_spec = train_and_eval_specs(data)
        train_spec = _own_language(train_spec, common, reporter)
        eval_spec = _own_language(eval_spec, common) if eval_spec is not None else None
        if data.test_size is not None:
            everything = list(iter_split(train_spec))
            train_samples, eval_samples = seeded_split(everything, data.test_size, data.split_seed)
            reporter.info(
                f"split {len(everything)} samples: {len(train_samples)} train, {len(eval_samples)} eval "
                f"(test_size {data.test_size}, seed {data.split_seed})"
            )
            held_out = {"test_size": data.test_size, "split_seed": data.split_seed}
            if include_train:
                train_dir = prepare_samples(
                    train_samples,
                    out_dir / "train",
                    limit=data.max_train_samples,
                    total=len(train_samples),
                    name="train",
                    fingerprint=_fingerprint(
                        train_spec, data.max_train_samples, common, part="train", **held_out
                    ),
                    **common,
                )
            evals[EVAL] = prepare_samples(
                eval_samples,
                out_dir / EVAL,
                limit=data.max_eval_samples,
                total=len(eval_samples),
                name=EVAL,
                fingerprint=_fingerprint(train_spec, data.max_eval_samples, common, part="eval", **held_out),
                **common,
            )
        else:
            if include_train:
                train_dir = prepare_samples(
                    iter_split(train_spec),
                    out_dir / "train",
                    limit=data.max_train_samples,
                    name="train",
                    fingerprint=_fingerprint(train_spec, data.max_train_samples, common),
                    **common,
                )
            if eval_spec is not None:
                evals[EVAL] = prepare_samples(
                    iter_split(eval_spec),
                    out_dir / EVAL,
                    limit=data.max_eval_samples,
                    name=EVAL,
                    fingerprint=_fingerprint(eval_spec, data.max_eval_samples, common),
                    **common,
                )
    for extra in data.extra_eval:
        evals[extra.name] = _prepare_extra(extra, data, out_dir, common)
    return PreparedSets(train_dir, evals)


def _prepare_extra(extra: EvalSetConfig, data: DataConfig, out_dir: Path, common: dict[str, Any]) -> Path:
    kind = resolve_kind(extra.dataset, "auto")
    if kind == "prepared":
        path = _prepared_split(Path(extra.dataset).expanduser(), extra.split)
        _check_mel_bins([path], int(common["feature_extractor"].feature_size))
        return path
    spec = SplitSpec(
        dataset=extra.dataset,
        kind=kind,
        split=extra.split,
        subset=extra.subset,
        audio_column=extra.audio_column or data.audio_column,
        text_column=extra.text_column or data.text_column,
        language_column=extra.language_column or data.language_column,
    )
    spec = _own_language(spec, common, common["reporter"], extra.name)
    return prepare_samples(
        iter_split(spec),
        out_dir / extra.name,
        limit=extra.max_samples,
        name=extra.name,
        fingerprint=_fingerprint(spec, extra.max_samples, common),
        **common,
    )


def _own_language(
    spec: SplitSpec, common: dict[str, Any], reporter: Reporter | None = None, name: str = "data"
) -> SplitSpec:
    """With a multilingual model and no language column configured, a data set whose own layout gives each
    row's language (Common Voice's ``locale``, Whisper-Finetune's ``language``) is read with it: each
    row's labels carry its language token (``data.language_column``, docs/data.md)."""
    if spec.language_column is not None or not is_multilingual(len(common["tokenizer"])):
        return spec
    column = own_language_column(spec.dataset, spec.kind)
    if column is None:
        return spec
    if reporter is not None:
        reporter.info(f"{name}: each row's language from its '{column}' column (a multilingual model)")
    return replace(spec, language_column=column)


def _fingerprint(spec: SplitSpec, limit: int | None, common: dict[str, Any], **extra: Any) -> str:

    return set_fingerprint(spec, common["filters"], limit, common["meta"], **extra)


def _check_mel_bins(paths: list[Path], expected: int) -> None:
    for path in paths:
        got = PreparedDataset(path).num_mel_bins
        if got != expected:
            raise DataError(
                f"prepared data {path} has {got} mel bins but the model needs {expected}",
                hint="prepare the data again for this model",
            )
