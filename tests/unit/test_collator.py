"""The seq2seq collator: -100 padding, decoder-start stripping, dynamic and fixed-length padding."""

from __future__ import annotations

import numpy as np
import torch

from whisper_tune.data.collator import LABEL_PAD, SpeechSeq2SeqCollator

SOT = 50258


def items(*label_rows: list[int]) -> list[dict[str, object]]:
    return [
        {"input_features": np.full((80, 3000), i, dtype=np.float16), "labels": row}
        for i, row in enumerate(label_rows)
    ]


def test_dynamic_padding_and_start_token_strip() -> None:
    batch = SpeechSeq2SeqCollator(SOT)(items([SOT, 1, 2, 3], [SOT, 4]))
    assert batch["labels"].tolist() == [[1, 2, 3], [4, LABEL_PAD, LABEL_PAD]]
    assert batch["input_features"].shape == (2, 80, 3000)
    assert batch["input_features"].dtype == torch.float32
    assert batch["input_features"][1, 0, 0] == 1


def test_start_token_kept_unless_every_row_has_it() -> None:
    batch = SpeechSeq2SeqCollator(SOT)(items([SOT, 1], [2, 3]))
    assert batch["labels"].tolist() == [[SOT, 1], [2, 3]]


def test_fixed_length_padding_for_static_shapes() -> None:
    collate = SpeechSeq2SeqCollator(SOT, label_pad_multiple=8, feature_dtype="float16")
    batch = collate(items([SOT, 1, 2], [SOT, 3]))
    assert batch["labels"].shape == (2, 8)
    assert batch["input_features"].dtype == torch.float16
    long = collate(items([SOT, *range(1, 11)]))
    assert long["labels"].shape == (1, 16)  # next multiple, never truncated
