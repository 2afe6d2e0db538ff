"""Whisper's timestamp label format, from the model's own special tokens.

A window's labels in Whisper's multi-segment format::

    <|startoftranscript|> [<|lang|> <|task|>] <|0.00|> text <|2.74|> <|3.10|> text <|5.82|> ... <|endoftext|>

English-only models have no language/task tokens. There is no ``<|notimestamps|>``: its absence is what
tells Whisper to predict timestamps. The timestamp tokens follow ``<|notimestamps|>`` in every Whisper
vocabulary, one per 0.02 s from ``<|0.00|>`` to ``<|30.00|>``; the token before it is the no-speech token
(``<|nocaptions|>``, ``<|nospeech|>`` in large-v3). transformers reads them the same way (its ASR
pipeline: ``timestamp_begin = <|notimestamps|> + 1``; ``generate``'s no-speech detection:
``no_timestamps_token_id - 1``), so tokenizer files that list no timestamp tokens (tiny.en's CTranslate2
``tokenizer.json``) work too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from whisper_tune.errors import DataError

#: seconds per timestamp token
TIME_STEP = 0.02
#: 16 kHz samples per timestamp token
SAMPLES_PER_STEP = 320
#: <|30.00|>: the last timestamp token
MAX_STEPS = 1500


@dataclass(frozen=True)
class Segment:
    """Text between two timestamps, in timestamp steps (0.02 s) from the window's start."""

    start: int
    end: int
    tokens: tuple[int, ...]

    def shifted(self, steps: int) -> Segment:
        return Segment(self.start + steps, self.end + steps, self.tokens)


@dataclass(frozen=True)
class SpecialTokens:
    """The ids of the tokens a timestamp label needs, read from the model's tokenizer."""

    start: int
    end: int
    no_timestamps: int

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> SpecialTokens:
        ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<|startoftranscript|>", "<|endoftext|>")]
        no_timestamps = tokenizer.convert_tokens_to_ids("<|notimestamps|>")
        if no_timestamps in (None, tokenizer.unk_token_id) or no_timestamps == ids[1]:
            raise DataError("the tokenizer has no <|notimestamps|> token: it is not a Whisper tokenizer")
        return cls(int(ids[0]), int(ids[1]), int(no_timestamps))

    @property
    def timestamp_begin(self) -> int:
        """<|0.00|>."""
        return self.no_timestamps + 1

    @property
    def no_speech(self) -> int:
        """<|nocaptions|> (<|nospeech|> in large-v3): Whisper's target after <|startoftranscript|> for
        audio without speech."""
        return self.no_timestamps - 1

    def timestamp(self, steps: int) -> int:
        """The token of ``steps`` x 0.02 s."""
        if not 0 <= steps <= MAX_STEPS:
            raise ValueError(f"timestamp {steps * TIME_STEP:.2f} s is outside Whisper's 30 s window")
        return self.timestamp_begin + steps

    def is_timestamp(self, token: int) -> bool:
        return self.timestamp_begin <= token <= self.timestamp_begin + MAX_STEPS

    def prefix_of(self, labels: Sequence[int]) -> tuple[int, ...]:
        """The decoder prefix of prepared labels (``<|startoftranscript|>`` [+ language + task]), without
        their ``<|notimestamps|>``."""
        try:
            return tuple(labels[: list(labels).index(self.no_timestamps)])
        except ValueError:
            raise DataError(
                "prepared labels without <|notimestamps|>: they were not made by whisper-tune's prepare",
                hint="prepare the training data again ('whisper-tune prepare' or delete the run's prepared/)",
            ) from None


def timestamp_labels(prefix: Sequence[int], segments: Sequence[Segment], special: SpecialTokens) -> list[int]:
    """``prefix`` <|start|> text <|end|> ... <|endoftext|>: a window's labels in Whisper's format."""
    labels = list(prefix)
    for segment in segments:
        labels += [special.timestamp(segment.start), *segment.tokens, special.timestamp(segment.end)]
    return [*labels, special.end]


def plain_labels(prefix: Sequence[int], segments: Sequence[Segment], special: SpecialTokens) -> list[int]:
    """``prefix`` <|notimestamps|> text text ... <|endoftext|>: a window's labels without timestamps (the
    form evaluation decodes in), never longer than its ``timestamp_labels``."""
    return [*prefix, special.no_timestamps, *(t for s in segments for t in s.tokens), special.end]


def label_length(prefix_length: int, segments: Sequence[Segment]) -> int:
    """Tokens of ``timestamp_labels`` without building them."""
    return prefix_length + sum(len(s.tokens) + 2 for s in segments) + 1


def no_speech_labels(special: SpecialTokens) -> list[int]:
    """Whisper's target for a window without speech: <|startoftranscript|><|nocaptions|><|endoftext|>."""
    return [special.start, special.no_speech, special.end]


def to_steps(seconds: float) -> int:
    """Seconds -> the nearest timestamp step."""
    return round(seconds / TIME_STEP)


def decoded_segments(ids: Sequence[int], special: SpecialTokens) -> list[tuple[float, float]]:
    """(start, end) in seconds of every segment a model predicted: each pair of a timestamp token followed
    by text and a closing timestamp token (a trailing unclosed segment is ignored)."""
    spans: list[tuple[float, float]] = []
    start: int | None = None
    text = False
    for token in ids:
        if special.is_timestamp(token):
            step = token - special.timestamp_begin
            if start is not None and text:
                spans.append((start * TIME_STEP, step * TIME_STEP))
                start, text = None, False
            else:
                start, text = step, False
        elif token < special.start and token != special.end and start is not None:
            text = True
    return spans
