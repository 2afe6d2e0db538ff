"""Log-mel at batch time (data/features.py) equals Whisper's feature extractor (its NumPy path), on real
clips of several lengths, 80 and 128 mel bins; prepared audio (int16) round-trips through the collator."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from helpers import QUICKSTART_DATA

#: the largest absolute difference allowed between the batched torch features and the extractor's
#: NumPy features (both in Whisper's scaled log10 units, where a clip's values span about 2)
TOLERANCE = 2e-4


def real_clips() -> list[np.ndarray]:
    """Quickstart clips at 16 kHz: a short one, a long one, and several joined to ~29 s and to 35 s (cut
    to the 30 s window, as the extractor cuts it)."""
    import soundfile as sf
    import soxr

    rows = list(csv.DictReader((QUICKSTART_DATA / "train" / "metadata.csv").open()))
    clips = []
    for row in rows[:12]:
        audio, rate = sf.read(QUICKSTART_DATA / "train" / row["file_name"], dtype="float32")
        clips.append(soxr.resample(audio, rate, 16_000).astype(np.float32))
    clips.sort(key=len)
    joined = np.concatenate(clips)
    return [clips[0], clips[-1], joined[: 29 * 16_000], np.concatenate([joined, joined])[: 35 * 16_000]]


@pytest.mark.parametrize("num_mel_bins", [80, 128])
def test_batched_log_mel_equals_the_feature_extractor(num_mel_bins: int) -> None:
    import torch
    from transformers import WhisperFeatureExtractor

    from whisper_tune.data.collator import SpeechSeq2SeqCollator
    from whisper_tune.data.features import log_mel

    extractor = WhisperFeatureExtractor(feature_size=num_mel_bins)
    clips = real_clips()
    assert [round(len(c) / 16_000) for c in clips][2:] == [29, 35] and len(clips[0]) < 3 * 16_000
    batch = SpeechSeq2SeqCollator(50257)([{"audio": c, "labels": [1, 2]} for c in clips])
    ours = log_mel(batch["audio"], num_mel_bins)
    assert ours.shape == (len(clips), num_mel_bins, 3000) and ours.dtype == torch.float32
    for i, clip in enumerate(clips):
        padded = np.zeros(480_000, dtype=np.float32)
        padded[: min(len(clip), 480_000)] = clip[:480_000]
        reference = extractor._np_extract_fbank_features(padded[None, :], "cpu")[0]
        assert np.abs(ours[i].numpy() - reference).max() < TOLERANCE, i


def test_prepared_audio_round_trips_and_int16_moves_features_little(tmp_path: Path) -> None:
    from whisper_tune.data.collator import SpeechSeq2SeqCollator
    from whisper_tune.data.features import log_mel
    from whisper_tune.data.store import PreparedDataset, PreparedWriter, to_pcm

    clips = real_clips()[:2]
    writer = PreparedWriter(tmp_path / "set", num_mel_bins=80, shard_size=1)
    for i, clip in enumerate(clips):
        writer.add(to_pcm(clip), [50257, i, 50256], f"t{i}", f"k{i}")
    writer.close()
    data = PreparedDataset(tmp_path / "set")
    assert [len(data[i]["audio"]) for i in range(2)] == [len(c) for c in clips]
    assert np.abs(data[1]["audio"] - clips[1]).max() <= 1 / 32768
    collate = SpeechSeq2SeqCollator(50257)
    stored = log_mel(collate([data[0], data[1]])["audio"], 80)
    original = log_mel(collate([{"audio": c, "labels": [1]} for c in clips])["audio"], 80)
    assert float((stored - original).abs().mean()) < 1e-3  # 16-bit audio: ~96 dB below full scale
    size = sum(p.stat().st_size for p in (tmp_path / "set").iterdir())
    seconds = sum(len(c) for c in clips) / 16_000
    assert size / seconds < 33_000  # 32 kB of int16 per second of audio, plus a little JSON


def test_a_v1_directory_gets_a_clear_message(tmp_path: Path) -> None:
    import json

    from whisper_tune.data.store import PreparedDataset
    from whisper_tune.errors import DataError

    (tmp_path / "manifest.json").write_text(json.dumps({"format": "whisper-tune-prepared", "version": 1}))
    with pytest.raises(DataError, match="older whisper-tune") as caught:
        PreparedDataset(tmp_path)
    assert "prepare it again" in (caught.value.hint or "")
