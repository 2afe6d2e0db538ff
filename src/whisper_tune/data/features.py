"""Log-mel features at batch time, on the device that trains.

Prepared data holds 16 kHz audio (``prepared.py``, format v2), not features: a batch's clips are padded to
Whisper's 30 s window by the collator, moved to the training device with the batch, and turned into
log-mel features there — the computation of transformers' ``WhisperFeatureExtractor`` torch path
(Hann-window STFT, 400-point FFT, hop 160, the extractor's own mel filter bank, log10 clamped 8 below the
batch row's maximum, scaled ``(x + 4) / 4``), batched. ``tests/unit/test_features.py`` checks it against
the extractor's NumPy output on real clips of several lengths, 80 and 128 bins.
"""

from __future__ import annotations

import functools
from typing import Any

SAMPLING_RATE = 16_000
#: Whisper's window: 30 s of 16 kHz audio -> 3000 frames
WINDOW_SAMPLES = 480_000
N_FFT = 400
HOP = 160


@functools.lru_cache(maxsize=8)
def mel_filters(num_mel_bins: int) -> Any:
    """The mel filter bank of Whisper's feature extractor for ``num_mel_bins`` (80, or 128 for large-v3)."""
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(feature_size=num_mel_bins)  # type: ignore[no-untyped-call]
    return extractor.mel_filters  # (201, num_mel_bins)


def log_mel(audio: Any, num_mel_bins: int) -> Any:
    """(batch, 480000) float audio on any device -> (batch, num_mel_bins, 3000) float32 log-mel features on
    the same device, as ``WhisperFeatureExtractor`` computes them."""
    import torch

    audio = audio.to(torch.float32)
    window = torch.hann_window(N_FFT, device=audio.device)
    stft = torch.stft(audio, N_FFT, HOP, window=window, return_complex=True)
    magnitudes = (stft[..., :-1].abs() ** 2).contiguous()
    filters = torch.from_numpy(mel_filters(num_mel_bins)).to(audio.device, torch.float32)
    log_spec = torch.clamp(filters.T @ magnitudes, min=1e-10).log10()
    peak = log_spec.amax(dim=(1, 2), keepdim=True)
    log_spec = torch.maximum(log_spec, peak - 8.0)
    return (log_spec + 4.0) / 4.0


def model_inputs(batch: dict[str, Any], num_mel_bins: int, device: Any = None, dtype: Any = None) -> Any:
    """The ``input_features`` of a collated batch on ``device``: computed there from its ``audio``, or the
    precomputed ``input_features`` a batch of feature samples carries (tools and tests)."""
    if "input_features" in batch:
        features = batch["input_features"].to(device=device)
    else:
        features = log_mel(batch["audio"].to(device=device), num_mel_bins)
    return features if dtype is None else features.to(dtype)
