"""Guard rails: the bundled regression slice, per-row languages, language retention and the warnings,
on real audio, real tokenizers and small random Whisper models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import QUIET, toy_overrides

from whisper_tune import load_config, run
from whisper_tune.config.schema import EvalConfig, ModelConfig, RunConfig, SpecAugmentConfig
from whisper_tune.data.collator import SpeechSeq2SeqCollator
from whisper_tune.data.store import PreparedDataset
from whisper_tune.errors import ConfigError
from whisper_tune.evaluation.evaluate import generate_predictions
from whisper_tune.evaluation.guards import bundled_regression_dir, guard_report
from whisper_tune.models.loading import load_model

MULTILINGUAL = bundled_regression_dir() / "multilingual.csv"


@pytest.mark.slow
def test_bundled_regression_slice_is_evaluated_before_and_after(toy_model_dir: Path, tmp_path: Path) -> None:
    summary = run(
        load_config(
            "quickstart",
            toy_overrides(
                toy_model_dir, tmp_path, **{"eval.regression_set": "bundled", "output.run_name": "g"}
            ),
        ),
        reporter=QUIET,
    )
    metrics = summary.metrics
    regression = metrics["guard"]["regression"]
    # English-only model: the English other-domain part of the slice (12 clips), scored like the run
    # (on its report half: eval.keep chose on the other 6)
    halves = metrics["keep"]["halves"]["regression"]
    assert sorted(halves["choose"] + halves["report"]) == list(range(12))
    assert metrics["evaluation"]["before"]["regression"]["samples"] == len(halves["report"]) == 6
    assert regression["set"] == "regression"
    assert regression["before"] == metrics["evaluation"]["before"]["regression"]["normalized_wer"]
    assert regression["after"] == metrics["evaluation"]["after"]["regression"]["normalized_wer"]
    assert regression["change"] == pytest.approx(regression["after"] - regression["before"], abs=1e-3)
    assert (summary.run_dir / "predictions" / "regression-after.jsonl").is_file()
    assert metrics["guard"]["language_share"] == {}  # English-only: no language detection
    for scores in metrics["evaluation"]["after"].values():
        assert {"insertion_rate", "repeated_ngram_rate"} <= set(scores)


@pytest.mark.slow
def test_mixed_language_data_trains_with_each_rows_language(
    toy_multilingual_dir: Path, tmp_path: Path
) -> None:
    overrides = toy_overrides(
        toy_multilingual_dir,
        tmp_path,
        **{
            "model.language": "null",
            "data.dataset": str(MULTILINGUAL),
            "data.audio_column": "audio",
            "data.language_column": "language",
            "data.eval_split": "null",
            "data.test_size": 0.25,
            "data.max_train_samples": "null",
            "data.max_eval_samples": "null",
            "data.extra_eval": "[]",
            "eval.regression_set": "bundled",
            "output.run_name": "mixed",
        },
    )
    summary = run(load_config("quickstart", overrides), reporter=QUIET)
    prepared = PreparedDataset(summary.run_dir / "prepared" / "train")
    base_tokenizer_ids = json.loads((toy_multilingual_dir / "tokenizer.json").read_text())["added_tokens"]
    lang_id = {t["content"]: t["id"] for t in base_tokenizer_ids}
    for sample in prepared.samples:
        # <|startoftranscript|> <|row language|> <|transcribe|> <|notimestamps|> text...
        assert sample["labels"][1] == lang_id[f"<|{sample['language']}|>"]
        assert sample["labels"][2] == lang_id["<|transcribe|>"]
    assert len(set(prepared.languages)) > 3
    evaluation = summary.metrics["evaluation"]
    for phase in ("before", "after"):
        for name in ("eval", "regression"):
            assert 0.0 <= evaluation[phase][name]["language_share"] <= 100.0
    assert set(summary.metrics["guard"]["language_share"]) == {"eval", "regression", "real-speech"}
    halves = summary.metrics["keep"]["halves"]["regression"]  # multilingual model: the whole slice
    assert sorted(halves["choose"] + halves["report"]) == list(range(36))
    assert evaluation["before"]["regression"]["samples"] == len(halves["report"]) == 18
    assert evaluation["before"]["regression"]["normalizer"] == "basic"


def test_generation_forces_each_rows_language(toy_multilingual_dir: Path, tmp_path: Path) -> None:
    cfg = load_config(
        "quickstart",
        toy_overrides(
            toy_multilingual_dir,
            tmp_path,
            **{"model.language": "en", "data.dataset": str(MULTILINGUAL), "data.language_column": "language"},
        ),
    )
    from whisper_tune.runs.run import prepare

    sets = prepare(
        cfg.model_copy(update={"data": cfg.data.model_copy(update={"eval_split": "all", "extra_eval": ()})}),
        tmp_path / "prep",
        reporter=QUIET,
        include_train=False,
    )
    dataset = PreparedDataset(sets.evals["eval"])
    model = load_model(str(toy_multilingual_dir), cfg.model)
    ids = generate_predictions(
        model,
        dataset,
        SpeechSeq2SeqCollator(model.config.decoder_start_token_id),
        model_cfg=cfg.model,
        eval_cfg=EvalConfig(max_new_tokens=2, batch_size=8),
    )
    lang_to_id = model.generation_config.lang_to_id
    assert [row[1] for row in ids] == [lang_to_id[f"<|{lang}|>"] for lang in dataset.languages]


def scores(wer: float, share: float | None = None, insertions: float = 0.0) -> dict[str, Any]:
    return {
        "normalized_wer": wer,
        "language_share": share,
        "insertion_rate": insertions,
        "repeated_ngram_rate": 0.0,
    }


def test_guard_report_warns_on_regression_language_loss_and_hallucinations() -> None:
    config = RunConfig.model_validate(
        {
            "data": {"extra_eval": [{"name": "held", "dataset": "x"}]},
            "eval": {"regression_set": "held", "regression_margin": 2.0, "language_drop_margin": 5.0},
        }
    )
    fine = guard_report(
        config, {"before": {"held": scores(20.0, 90.0)}, "after": {"held": scores(21.5, 88.0)}}
    )
    assert fine["warnings"] == []
    assert fine["regression"] == {
        "set": "held", "before": 20.0, "after": 21.5, "change": 1.5, "margin": 2.0, "regressed": False
    }
    bad = guard_report(
        config,
        {"before": {"held": scores(20.0, 90.0)}, "after": {"held": scores(26.0, 60.0, insertions=9.0)}},
    )
    assert len(bad["warnings"]) == 3
    assert "rose 20.0% -> 26.0%" in bad["warnings"][0]
    assert "90% -> 60%" in bad["warnings"][1]
    assert "insertion rate" in bad["warnings"][2]


def test_every_held_out_set_is_watched_not_only_the_regression_set() -> None:
    """A fine-tune that gains in domain and loses another voice or real speech warns (the quickstart's
    earlier recipe lost real speech while the synthetic regression slice did not move)."""
    config = RunConfig.model_validate(
        {
            "data": {
                "extra_eval": [{"name": "other-voice", "dataset": "x"}, {"name": "held", "dataset": "y"}]
            },
            "eval": {"regression_set": "held", "regression_margin": 2.0},
        }
    )
    evaluation = {
        "before": {"eval": scores(25.0, 90.0), "other-voice": scores(2.0, 90.0), "held": scores(1.4, 90.0)},
        "after": {"eval": scores(6.0, 90.0), "other-voice": scores(2.5, 90.0), "held": scores(9.9, 90.0)},
    }
    report = guard_report(config, evaluation)
    assert set(report["sets"]) == {"other-voice", "held"}  # the run's own eval set is the goal, not a guard
    assert report["sets"]["other-voice"]["change"] == pytest.approx(0.5)
    assert len(report["warnings"]) == 1
    assert "regression set 'held': WER rose 1.4% -> 9.9%" in report["warnings"][0]
    evaluation["after"]["other-voice"] = scores(6.0, 90.0)
    warnings = guard_report(config, evaluation)["warnings"]
    assert any(w.startswith("other-voice: WER rose 2.0% -> 6.0%") for w in warnings)


def test_each_extra_set_can_have_its_own_margin() -> None:
    config = RunConfig.model_validate(
        {
            "data": {
                "extra_eval": [
                    {"name": "strict", "dataset": "x", "regression_margin": 0.5},
                    {"name": "loose", "dataset": "y", "regression_margin": 10.0},
                    {"name": "plain", "dataset": "z"},
                ]
            },
            "eval": {"regression_set": None, "regression_margin": 2.0},
        }
    )
    rise = {"strict": scores(5.0, 90.0), "loose": scores(5.0, 90.0), "plain": scores(5.0, 90.0)}
    after = {name: scores(8.0, 90.0) for name in rise}
    report = guard_report(config, {"before": rise, "after": after})
    assert {n: (s["margin"], s["regressed"]) for n, s in report["sets"].items()} == {
        "strict": (0.5, True), "loose": (10.0, False), "plain": (2.0, True)
    }
    assert [w.split(":")[0] for w in report["warnings"]] == ["strict", "plain"]


def test_the_bundled_real_speech_set_goes_with_the_regression_slice() -> None:
    from whisper_tune.data.sources import SplitSpec, iter_split
    from whisper_tune.evaluation.guards import REAL_SPEECH_SET, with_regression_set

    config = load_config("quickstart", ["eval.regression_set=bundled"])
    data = with_regression_set(config, multilingual=False)
    real = next(s for s in data.extra_eval if s.name == REAL_SPEECH_SET)
    samples = list(iter_split(SplitSpec(dataset=real.dataset, kind="csv", split="all")))
    assert len(samples) == 61 and samples[1].text == "he was not an ill disposed young man"
    assert all(Path(s.audio).is_file() for s in samples)
    assert {s.name for s in data.extra_eval} >= {"regression", REAL_SPEECH_SET}


def test_config_rules_for_guard_rails() -> None:
    with pytest.raises(ValueError, match="neither 'bundled' nor a data.extra_eval set"):
        RunConfig.model_validate({"eval": {"regression_set": "nope"}})
    with pytest.raises(ValueError, match="English-only"):
        RunConfig.model_validate(
            {"model": {"name": "x/whisper-tiny.en"}, "data": {"language_column": "lang"}}
        )
    with pytest.raises(ConfigError, match="regression_set"):
        load_config("quickstart", ["eval.regression_set=held-out"])


def test_spec_augment_masks_only_in_training(toy_model_dir: Path) -> None:
    cfg = ModelConfig(
        name=str(toy_model_dir),
        spec_augment=SpecAugmentConfig(enabled=True, mask_time_prob=0.5, mask_feature_prob=0.5),
    )
    model = load_model(str(toy_model_dir), cfg)
    assert model.config.apply_spec_augment and model.config.mask_time_prob == 0.5
    features = torch.randn(2, 80, 3000)
    model.train()
    masked = model.model._mask_input_features(features.clone())
    assert (masked == 0).float().mean() > 0.2  # large parts of the input are masked
    model.eval()
    assert torch.equal(model.model._mask_input_features(features.clone()), features)
    assert not load_model(str(toy_model_dir), ModelConfig(name=str(toy_model_dir))).config.apply_spec_augment
