"""The model card: huggingface_hub.ModelCard parses it, and every number in model-index is metrics.json's."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from huggingface_hub import ModelCard

from whisper_tune.config.schema import DataConfig, EvalSetConfig, ModelConfig, RunConfig, TrainingConfig
from whisper_tune.runs.card import base_model_id, card_text, export_card_text


def scores(wer: float, cer: float, half: str = "report") -> dict[str, Any]:
    return {
        "wer": wer + 3,
        "cer": cer + 1,
        "normalized_wer": wer,
        "normalized_cer": cer,
        "samples": 20,
        "half": half,
    }


BEFORE = {
    "eval": scores(12.844, 7.248),
    "other-voice": scores(0.476, 0.093),
    "real-speech": scores(14.201, 10.199),
}
AFTER = {
    "eval": scores(11.009, 6.33),
    "other-voice": scores(0.476, 0.093),
    "real-speech": scores(13.314, 9.823),
}
CHOSEN = {"label": "α=0.5", "encoder": 0.5, "decoder": 0.5, "passed": True}
METRICS: dict[str, Any] = {
    "model": "pip:tiny.en",
    "evaluation": {"before": BEFORE, "after": AFTER},
    "guard": {
        "warnings": [],
        "sets": {
            "other-voice": {"before": 0.476, "after": 0.476, "margin": 2.0, "regressed": False},
            "real-speech": {"before": 14.201, "after": 13.314, "margin": 2.0, "regressed": False},
        },
    },
    "train": {"steps": 24, "clips": 192, "final_loss": 0.39},
    "selection": None,
    "keep": {"mode": "auto", "seed": 42, "rule": "the rule", "chosen": CHOSEN, "warning": None},
}


def config(**training: Any) -> RunConfig:
    return RunConfig(
        model=ModelConfig(name="pip:tiny.en"),
        data=DataConfig(
            dataset="someone/speech",
            eval_split="test",
            extra_eval=(EvalSetConfig(name="other-voice", dataset="someone/other", split="validation"),),
        ),
        training=TrainingConfig(**training),
    )


def model_index(card: ModelCard) -> dict[tuple[str, str], float]:
    return {(r.dataset_name, r.metric_type): r.metric_value for r in card.data.eval_results}


def test_model_index_holds_metrics_json_after_training() -> None:
    card = ModelCard(card_text(config(), METRICS, "full", "my-run", english_only=True))
    assert model_index(card) == {
        (name, kind): s[key]
        for name, s in METRICS["evaluation"]["after"].items()
        for key, kind in (("normalized_wer", "wer"), ("normalized_cer", "cer"))
    }
    data = card.data
    assert data.base_model == "openai/whisper-tiny.en" and data.language == "en"
    assert data.library_name == "transformers" and data.license == "apache-2.0"
    assert data.pipeline_tag == "automatic-speech-recognition" and "whisper-tune" in data.tags
    assert data.datasets == ["someone/other", "someone/speech"]
    by_set = {r.dataset_name: r for r in data.eval_results}
    assert by_set["eval"].dataset_type == "someone/speech" and by_set["eval"].dataset_split == "test"
    assert by_set["real-speech"].dataset_type == "whisper-tune/real-speech"
    assert all("report half" in (r.metric_name or "") for r in data.eval_results)
    # the before-training values are in the text, with the selection and the guard sets
    assert "| eval | 20 | report | 12.844 | 11.009 | 7.248 | 6.33 |" in card.text
    assert "α=0.5" in card.text and "real-speech (the bundled real English recordings)" in card.text
    assert "WhisperForConditionalGeneration.from_pretrained(repo)" in card.text


def test_adapter_and_ct2_cards_say_how_to_load_them() -> None:
    adapter = ModelCard(card_text(config(method="lora"), METRICS, "adapter", "r"))
    assert adapter.data.library_name == "peft" and "lora" in adapter.data.tags
    assert "PeftModel.from_pretrained(base, repo)" in adapter.text
    assert 'from_pretrained("openai/whisper-tiny.en")' in adapter.text
    ct2 = ModelCard(card_text(config(), METRICS, "ct2", "r"))
    assert ct2.data.library_name == "ctranslate2" and "faster-whisper" in ct2.data.tags
    assert 'WhisperModel("ORG/NAME")' in ct2.text


def test_a_run_without_after_numbers_or_selection() -> None:
    metrics = copy.deepcopy(METRICS)
    metrics["evaluation"].pop("after")
    metrics["keep"] = None
    card = ModelCard(card_text(config(), metrics, "full", "r"))
    assert card.data.eval_results is None
    assert "No selection: the whole change is kept." in card.text


def test_a_model_that_is_not_a_run() -> None:
    text = export_card_text(
        "ct2", ModelConfig(name="openai/whisper-small", language="fr"), None, "ct2-int8", None
    )
    card = ModelCard(text)
    assert card.data.language == "fr" and card.data.base_model == "openai/whisper-small"
    assert card.data.eval_results is None and "not a whisper-tune run" in card.text


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("pip:tiny.en", "openai/whisper-tiny.en"),
        ("openai/whisper-small", "openai/whisper-small"),
        ("/nope/x/y", None),
    ],
)
def test_base_model_id(name: str, expected: str | None) -> None:
    assert base_model_id(name) == expected
