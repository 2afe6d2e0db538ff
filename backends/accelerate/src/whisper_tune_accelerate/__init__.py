"""whisper-tune backend ``accelerate``: full fine-tuning over many processes (Accelerate)."""
