"""The tokenizer the preparation workers get (``LabelTokenizer``): the same label ids as transformers'
tokenizer, for English-only and multilingual vocabularies, without importing transformers in a worker."""

from __future__ import annotations

import csv
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import QUICKSTART_DATA
from whisper_tune_testing import packaged_or_skip

from whisper_tune.data.preparation import Dropped, Filters, LabelTokenizer, prepare_one
from whisper_tune.data.sources import RawSample

FILTERS = Filters(30.0, 0.0, 448)
CLIP = QUICKSTART_DATA / "train" / "train-0001.ogg"


def quickstart_texts() -> list[str]:
    rows = csv.DictReader((QUICKSTART_DATA / "train" / "metadata.csv").open(encoding="utf-8"))
    return [row["text"] for row in rows]


@pytest.fixture(scope="module")
def multilingual_tokenizer() -> Any:
    """pip:base's real multilingual tokenizer, its prefix naming French and transcribe."""
    from whisper_tune.models.ct2_import import load_tokenizer

    tokenizer = load_tokenizer(packaged_or_skip("base") / "tokenizer.json", 51865)
    tokenizer.set_prefix_tokens(language="fr", task="transcribe", predict_timestamps=False)
    return tokenizer


def test_the_labels_are_transformers_ids_for_every_quickstart_sentence(english_tokenizer: Any) -> None:
    labels = LabelTokenizer.of(english_tokenizer)
    texts = [*quickstart_texts(), "", "  spaces  around ", "Ünïcödé, émojis 🙂 and <|endoftext|> as text"]
    assert len(texts) > 200
    for text in texts:
        assert labels.encode(text) == list(english_tokenizer(text).input_ids), text
    assert len(labels) == len(english_tokenizer) and not labels.has_language
    assert LabelTokenizer.of(labels) is labels


def test_a_multilingual_prefix_and_each_rows_language(multilingual_tokenizer: Any) -> None:
    tokenizer = multilingual_tokenizer
    labels = LabelTokenizer.of(tokenizer)
    assert labels.has_language
    text = "Bonjour à tous, c'est une phrase en français."
    expected = list(tokenizer(text).input_ids)
    assert labels.encode(text) == expected
    assert tokenizer.convert_ids_to_tokens(expected[:3]) == [
        "<|startoftranscript|>",
        "<|fr|>",
        "<|transcribe|>",
    ]
    # a row in German: its language token replaces the prefix's, as transformers' id for it
    made = prepare_one(RawSample("k", CLIP, "Guten Tag", language="German"), labels, FILTERS)
    assert not isinstance(made, Dropped)
    assert made.labels[1] == tokenizer.convert_tokens_to_ids("<|de|>")
    assert made.labels[2:] == list(tokenizer("Guten Tag").input_ids)[2:]
    # Cantonese is a Whisper language whose token only large-v3's vocabulary has: the row is dropped
    # (transformers would have given <|endoftext|>'s id for the missing token)
    assert prepare_one(RawSample("k", CLIP, "你好", language="yue"), labels, FILTERS) == Dropped(
        "k", "unknown_language"
    )


def test_a_worker_unpickles_it_without_importing_transformers(english_tokenizer: Any, tmp_path: Path) -> None:
    blob = tmp_path / "labels.pickle"
    blob.write_bytes(pickle.dumps(LabelTokenizer.of(english_tokenizer)))
    code = (
        "import pickle, sys; import whisper_tune.data.preparation; "
        f"labels = pickle.loads(open({str(blob)!r}, 'rb').read()); "
        "print(labels.encode('Hello there.')); print('transformers' in sys.modules, 'torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    ids, imported = done.stdout.splitlines()
    assert ids == str(list(english_tokenizer("Hello there.").input_ids))
    assert imported == "False False"
