"""whisper-tune's one-GPU LoRA backend: an int8 / 4-bit (bitsandbytes) or unquantised base with peft LoRA."""

__version__ = "0.1.0"
