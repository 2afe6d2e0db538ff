"""Decode, downmix and resample audio to Whisper's 16 kHz mono float32.

Decoding goes through soundfile (libsndfile: WAV, FLAC, OGG/Vorbis/Opus, MP3 on recent builds), and
through PyAV (FFmpeg, installed with faster-whisper) for what libsndfile cannot read: m4a/AAC phone
recordings, webm/Opus browser captures, the audio of mp4 videos. Resampling goes through soxr (the SoX
resampler, "HQ" quality). Problems are ``BadAudio`` exceptions that the caller counts and skips, so one
broken file never stops a run; a WAV or Ogg file cut short (which libsndfile decodes as far as it goes) is
one of them (``truncated_audio``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from whisper_tune.config.schema import SAMPLING_RATE

Audio = npt.NDArray[np.float32]


class BadAudio(Exception):
    """A sample whose audio cannot be used; ``reason`` is a short key used in drop reports."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class DecodedAudio:
    samples: Audio
    source_rate: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / SAMPLING_RATE


def to_mono_16k(samples: npt.NDArray[np.floating], rate: int) -> Audio:
    """Average channels (soundfile gives frames x channels), then resample to 16 kHz."""
    import soxr

    data = np.asarray(samples, dtype=np.float32)
    if data.ndim == 2:
        data = data.mean(axis=1, dtype=np.float32)
    elif data.ndim != 1:
        raise BadAudio("bad_shape", f"audio array has shape {data.shape}")
    if data.size == 0:
        raise BadAudio("empty_audio")
    if not np.isfinite(data).all():
        raise BadAudio("non_finite_audio")
    if rate != SAMPLING_RATE:
        data = soxr.resample(data, rate, SAMPLING_RATE, quality="HQ").astype(np.float32, copy=False)
    return data


#: bytes read from the end of an Ogg file to find its last page (a page is at most 65,307 bytes)
OGG_TAIL = 65_536 + 27


def truncation(source: str | Path | bytes) -> str | None:
    """Why a WAV or Ogg file is cut short (libsndfile decodes what is there without a word, so a clip
    copied halfway would train on half its audio with all of its transcript); None when it is whole or
    another format. WAV: fewer bytes than its RIFF header declares. Ogg: its last page incomplete, or not
    the end of the stream."""
    if isinstance(source, bytes):
        size, head, tail = len(source), source[:12], source[-OGG_TAIL:]
    else:
        try:
            with Path(source).open("rb") as fh:
                head = fh.read(12)
                size = fh.seek(0, 2)
                fh.seek(max(0, size - OGG_TAIL))
                tail = fh.read()
        except OSError:
            return None  # decoding reports it
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        declared = int.from_bytes(head[4:8], "little") + 8
        # a recorder that streams writes a placeholder size it never corrects (0, 0x7FFFFFFF, 0xFFFFFFFF):
        # only a size below 2 GiB is taken at its word
        if 8 < declared < 0x7FFFFFFF and size < declared:
            return f"{size} of the {declared} bytes its WAV header declares"
        return None
    if head[:4] == b"OggS":
        start = tail.rfind(b"OggS")
        page = tail[start:]
        if len(page) < 27 or len(page) < 27 + page[26]:
            return "its last Ogg page is cut off"
        body = sum(page[27 : 27 + page[26]])
        if len(page) < 27 + page[26] + body:
            return "its last Ogg page is cut off"
        if not page[5] & 0x04:
            return "it ends before the end of its Ogg stream"
    return None


def decode(source: str | Path | bytes) -> DecodedAudio:
    """Decode a file path or encoded bytes into 16 kHz mono float32."""
    import soundfile as sf

    if not isinstance(source, bytes) and not Path(source).is_file():
        raise BadAudio("missing_file", str(source))
    cut = truncation(source)
    if cut is not None:
        raise BadAudio("truncated_audio", cut)
    try:
        handle = io.BytesIO(source) if isinstance(source, bytes) else source
        samples, rate = sf.read(handle, dtype="float32", always_2d=False)
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError) as exc:
        decoded = decode_with_pyav(source)
        if decoded is None:
            raise BadAudio(
                "unreadable_audio", str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            ) from None
        samples, rate = decoded
    return DecodedAudio(to_mono_16k(samples, int(rate)), int(rate))


def decode_with_pyav(source: str | Path | bytes) -> tuple[npt.NDArray[np.float32], int] | None:
    """Decode the first audio stream of any container FFmpeg reads (m4a, webm, mp4, ...) at its own rate,
    frames x channels float32; None when PyAV is not installed or cannot read it."""
    try:
        # lazy: keeps PyAV (FFmpeg), like soundfile, out of this module's import; optional
        import av
    except ImportError:
        return None
    chunks: list[npt.NDArray[Any]] = []
    try:
        with av.open(io.BytesIO(source) if isinstance(source, bytes) else str(source)) as container:
            if not container.streams.audio:
                return None
            stream = container.streams.audio[0]
            # planar float at the stream's own rate and layout; soxr resamples like every other file
            resampler = av.AudioResampler(format="fltp")
            rate = 0
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    rate = rate or out.sample_rate
                    chunks.append(out.to_ndarray())
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray())
    except (av.FFmpegError, OSError, ValueError, EOFError):
        return None
    if not chunks or not rate:
        return None
    return np.concatenate(chunks, axis=1).T.astype(np.float32, copy=False), int(rate)


def from_array(array: npt.ArrayLike, rate: int) -> DecodedAudio:
    """Audio already decoded (a datasets ``{"array", "sampling_rate"}`` dict, a numpy array)."""
    return DecodedAudio(to_mono_16k(np.asarray(array), int(rate)), int(rate))
