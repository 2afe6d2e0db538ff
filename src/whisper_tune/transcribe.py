"""``whisper-tune transcribe``: audio files -> text, JSON or SRT with a base model, a run or an export.

Audio is decoded by the core (soundfile + soxr, 16 kHz mono). Hugging Face models (a hub id, a local or
exported directory, ``pip:tiny.en``, a run's final model, merged if it is a LoRA adapter) run through
transformers' ASR pipeline with ``chunk_length_s=30``: audio longer than Whisper's 30-s window is cut
into overlapping chunks whose transcripts are stitched. CTranslate2 directories (e.g. an export) run
through faster-whisper, which walks long audio window by window using the predicted timestamps.
Decoding is greedy in both.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from whisper_tune.config.schema import SAMPLING_RATE
from whisper_tune.console import Reporter
from whisper_tune.disk import make_dir, write_text
from whisper_tune.errors import DataError, ModelError
from whisper_tune.export.ct2 import load_faster_whisper
from whisper_tune.models.loading import generate_kwargs
from whisper_tune.runs.model_ref import ModelRef, load_hf

OutputFormat = Literal["text", "json", "srt"]
CHUNK_LENGTH_S = 30
EXTENSIONS = {"text": ".txt", "json": ".json", "srt": ".srt"}
WRITABLE = "give --output a writable path"


@dataclass
class Segment:
    start: float
    end: float
    text: str


@dataclass
class Transcript:
    file: str
    text: str
    seconds: float
    engine: str
    language: str | None
    segments: list[Segment] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


Transcriber = Callable[[Any, float], tuple[str, list[Segment]]]


def _srt_time(seconds: float) -> str:
    millis = max(0, round(seconds * 1000))
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d},{millis:03d}"


def to_srt(transcript: Transcript) -> str:
    if not transcript.segments and transcript.text:
        raise ModelError(
            f"no timestamps for {transcript.file}: the model did not predict any",
            hint="a model fine-tuned without timestamps may have lost them; use --format text or json",
        )
    blocks = [
        f"{i}\n{_srt_time(s.start)} --> {_srt_time(s.end)}\n{s.text.strip()}\n"
        for i, s in enumerate(transcript.segments, start=1)
    ]
    return "\n".join(blocks)


def render(transcript: Transcript, fmt: OutputFormat) -> str:
    if fmt == "json":
        return json.dumps(transcript.to_json(), ensure_ascii=False, indent=2) + "\n"
    if fmt == "srt":
        return to_srt(transcript)
    return transcript.text + "\n"


def _segments_from_chunks(chunks: Sequence[dict[str, Any]], seconds: float) -> list[Segment]:
    """The pipeline's chunks -> segments; a missing end (the last chunk) is the next start or the end
    of the audio, and an end before its start is clipped to the start."""
    segments: list[Segment] = []
    for i, chunk in enumerate(chunks):
        start, end = chunk.get("timestamp") or (None, None)
        if start is None:
            continue
        if end is None:
            following = [c["timestamp"][0] for c in chunks[i + 1 :] if c.get("timestamp")]
            end = following[0] if following and following[0] is not None else seconds
        segments.append(
            Segment(float(start), max(float(start), float(end)), str(chunk.get("text", "")).strip())
        )
    return segments


def hf_transcriber(ref: ModelRef, timestamps: bool) -> Transcriber:
    """transformers' ASR pipeline with 30-s chunking over the (merged) model."""
    from transformers import pipeline

    model, processor = load_hf(ref, merge=True)
    asr = pipeline(
        "automatic-speech-recognition",
        model=model,
        tokenizer=processor.tokenizer,
        feature_extractor=processor.feature_extractor,
        chunk_length_s=CHUNK_LENGTH_S,
        device="cpu",
    )
    kwargs = generate_kwargs(model, ref.model_cfg)

    def run(samples: Any, seconds: float) -> tuple[str, list[Segment]]:
        out: Any = asr(
            {"raw": samples, "sampling_rate": SAMPLING_RATE},
            return_timestamps=timestamps,
            generate_kwargs=kwargs,
        )
        segments = _segments_from_chunks(out.get("chunks") or [], seconds) if timestamps else []
        return str(out["text"]).strip(), segments

    return run


def ct2_transcriber(ref: ModelRef) -> Transcriber:
    """faster-whisper over a CTranslate2 directory (float16 weights run as float32 on a CPU)."""

    model = load_faster_whisper(ref.path)
    language = ref.model_cfg.language

    def run(samples: Any, seconds: float) -> tuple[str, list[Segment]]:
        found, _info = model.transcribe(
            samples,
            language=language,
            task=ref.model_cfg.task,
            beam_size=1,
            vad_filter=False,
            condition_on_previous_text=False,
        )
        segments = [Segment(float(s.start), float(s.end), s.text.strip()) for s in found]
        return " ".join(s.text for s in segments if s.text).strip(), segments

    return run


def output_path(output: Path | None, audio: Path, fmt: OutputFormat, several: bool) -> Path | None:
    """Where one file's transcript goes: ``output`` itself for a single input, else
    ``output/<stem><ext>``; None means stdout."""
    if output is None:
        return None
    if several or output.is_dir():
        return output / f"{audio.stem}{EXTENSIONS[fmt]}"
    return output


def transcribe_files(
    files: Sequence[Path],
    ref: ModelRef,
    *,
    fmt: OutputFormat = "text",
    output: Path | None = None,
    emit: Callable[[str], None] = print,
    reporter: Reporter | None = None,
) -> list[Transcript]:
    """Transcribe ``files`` in order, writing (or emitting) each result as soon as it is done; a file
    that cannot be decoded stops with a DataError, and what was written before it is kept."""
    # lazy: keeps numpy out of this module's import
    from whisper_tune.data.audio import BadAudio, decode

    reporter = reporter or Reporter()
    missing = [str(f) for f in files if not Path(f).is_file()]
    if missing:
        raise DataError(f"no such audio file: {', '.join(missing)}")
    several = len(files) > 1
    if output is not None and several:
        make_dir(output, "the transcripts folder", fix=WRITABLE)
    timestamps = fmt != "text"
    run = ct2_transcriber(ref) if ref.kind == "ct2" else hf_transcriber(ref, timestamps)
    engine = "faster-whisper" if ref.kind == "ct2" else "transformers pipeline (chunk_length_s=30)"
    done: list[Transcript] = []
    with reporter.progress("transcribe", total=len(files), unit="file") as bar:
        for audio_file in files:
            try:
                audio = decode(audio_file)
            except BadAudio as bad:
                kept = f"; {len(done)} earlier file(s) done" if done else ""
                raise DataError(f"cannot transcribe {audio_file}: {bad}{kept}") from None
            text, segments = run(audio.samples, audio.seconds)
            transcript = Transcript(
                str(audio_file), text, round(audio.seconds, 3), engine, ref.model_cfg.language, segments
            )
            rendered = render(transcript, fmt)
            target = output_path(output, Path(audio_file), fmt, several)
            if target is None:
                emit((f"==> {audio_file} <==\n" if several and fmt == "text" else "") + rendered.rstrip("\n"))
            else:
                what = f"the transcript of {audio_file}"
                earlier = f"{len(done)} earlier transcript(s) are complete" if done else None
                make_dir(target.parent, what, fix=WRITABLE)
                write_text(target, rendered, what, kept=earlier, fix=WRITABLE)
                reporter.info(f"{audio_file} -> {target}")
            done.append(transcript)
            bar.update(1)
    return done
