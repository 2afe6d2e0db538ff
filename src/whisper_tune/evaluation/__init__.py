"""Evaluation: batched generation on prepared sets, WER/CER with Whisper's normalisers, guard rails."""
