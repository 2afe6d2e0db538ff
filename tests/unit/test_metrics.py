"""WER/CER through jiwer with Whisper's normalisers from transformers."""

from __future__ import annotations

import math

import pytest

from whisper_tune.evaluation.metrics import make_normalizer, pick_normalizer, repeated_ngram_rate, score


def test_raw_and_normalised_rates() -> None:
    english = make_normalizer("english")
    result = score(["Hello, world!"], ["hello world"], english)
    assert result["wer"] == pytest.approx(100.0)  # raw: both words differ in case/punctuation
    assert result["normalized_wer"] == 0.0
    assert result["samples"] == 1


def test_english_normaliser_uses_the_spelling_map() -> None:
    english = make_normalizer("english")
    assert english("The colour is grey.") == "the color is gray"


def test_known_wer_value() -> None:
    basic = make_normalizer("basic")
    result = score(["the cat sat on the mat", "a b c"], ["the cat sat on a mat", "a b c d"], basic)
    # 1 substitution + 1 deletion over 10 reference words
    assert result["normalized_wer"] == pytest.approx(20.0) and result["reference_words"] == 10
    assert 0 < result["normalized_cer"] < result["normalized_wer"]


def test_empty_normalised_references_are_skipped_and_counted() -> None:
    result = score(["anything", "ok"], ["...", "ok"], make_normalizer("basic"))
    assert result["skipped_empty_references"] == 1
    assert result["normalized_wer"] == 0.0
    assert math.isnan(score(["x"], ["..."], make_normalizer("basic"))["normalized_wer"])


def test_normaliser_choice() -> None:
    assert pick_normalizer("auto", "en", False) == "english"
    assert pick_normalizer("auto", None, True) == "english"
    assert pick_normalizer("auto", "mr", False) == "basic"
    assert pick_normalizer("basic", "en", True) == "basic"


def test_hallucination_signals_flag_a_repetition_loop() -> None:
    basic = make_normalizer("basic")
    clean = score(["the cat sat on the mat"], ["the cat sat on the mat"], basic)
    assert clean["insertion_rate"] == 0.0
    assert clean["repeated_ngram_rate"] == 0.0
    looped = score(
        ["the cat sat on the mat thank you thank you thank you"], ["the cat sat on the mat"], basic
    )
    # 6 inserted words over 6 reference words; of the 10 trigrams, 2 repeat an earlier one
    assert looped["insertion_rate"] == pytest.approx(100.0)
    assert looped["repeated_ngram_rate"] == pytest.approx(20.0)
    assert looped["repeated_ngram_rate_reference"] == 0.0
    assert looped["insertion_rate"] + looped["deletion_rate"] + looped["substitution_rate"] == pytest.approx(
        looped["normalized_wer"]
    )


def test_repeated_ngram_rate_counts_within_each_text_only() -> None:
    assert repeated_ngram_rate(["a b c", "a b c"]) == 0.0
    assert repeated_ngram_rate(["a b c a b c"]) == pytest.approx(25.0)  # abc bca cab abc -> 1 of 4
    assert repeated_ngram_rate(["short"]) == 0.0
