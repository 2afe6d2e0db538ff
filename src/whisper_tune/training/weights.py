"""How a model's trainable weights are written and read: the whole model, or only its LoRA adapter.

The training loop, the best-checkpoint keeper and the final save all go through a ``WeightsFormat``, so a
LoRA run never writes its (possibly quantised) base: only ``adapter_config.json`` naming the base and
``adapter_model.safetensors`` (Accelerate's ``save_state`` would write the whole PeftModel). ``save``
takes an optional gathered ``state_dict`` (FSDP / ZeRO-3 shard the weights; the loop gathers them on
every process and the main process writes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from whisper_tune.backend.setup import WeightsFormat
from whisper_tune.disk import tensor_bytes
from whisper_tune.errors import ConfigError

ADAPTER_WEIGHTS = "adapter_model.safetensors"


class FullWeights:
    """Every weight, as ``save_pretrained`` writes them (safetensors, config, generation config)."""

    name = "full"

    def save(self, model: Any, directory: Path, state_dict: dict[str, Any] | None = None) -> None:
        model.save_pretrained(directory, state_dict=state_dict, safe_serialization=True)

    def load(self, model: Any, directory: Path) -> None:
        from safetensors.torch import load_file

        files = sorted(directory.glob("*.safetensors"))
        if not files:
            raise ConfigError(f"checkpoint {directory} has no weights (*.safetensors)")
        state: dict[str, Any] = {}
        for f in files:
            try:
                state.update(load_file(f))
            except Exception as exc:
                raise ConfigError(f"checkpoint weights {f} are damaged ({type(exc).__name__})") from None
        missing, unexpected = model.load_state_dict(state, strict=False)
        # Tied weights (proj_out = embed_tokens) are stored once and legitimately "missing".
        real_missing = [k for k in missing if not k.endswith("proj_out.weight")]
        if real_missing or unexpected:
            raise ConfigError(
                f"checkpoint {directory} does not match the model "
                f"(missing {real_missing[:3]}, unexpected {list(unexpected)[:3]})"
            )


class AdapterWeights:
    """The LoRA adapter only (peft's format), plus the generation config (language/task) so the
    folder is usable for merge and inference on its own."""

    name = "adapter"

    def save(self, model: Any, directory: Path, state_dict: dict[str, Any] | None = None) -> None:
        kwargs = {"state_dict": state_dict} if state_dict is not None else {}
        model.save_pretrained(directory, safe_serialization=True, **kwargs)
        model.generation_config.save_pretrained(directory)

    def load(self, model: Any, directory: Path) -> None:
        """Put adapter weights saved by ``save`` back into ``model`` (a PeftModel)."""
        from peft import load_peft_weights, set_peft_model_state_dict

        if not (directory / ADAPTER_WEIGHTS).is_file():
            raise ConfigError(f"checkpoint {directory} has no LoRA adapter ({ADAPTER_WEIGHTS})")
        device = next(p.device for p in model.parameters() if p.requires_grad)
        try:
            weights = load_peft_weights(str(directory), device=str(device))
        except Exception as exc:
            raise ConfigError(
                f"checkpoint adapter {directory / ADAPTER_WEIGHTS} is damaged ({type(exc).__name__})"
            ) from None
        result = set_peft_model_state_dict(model, weights)
        unexpected = list(getattr(result, "unexpected_keys", []))
        if unexpected:
            raise ConfigError(
                f"checkpoint {directory} does not match this LoRA configuration "
                f"(unexpected {unexpected[:3]})",
                hint="resume with the same LoRA settings the checkpoint was trained with",
            )


FULL_WEIGHTS = FullWeights()
ADAPTER_ONLY = AdapterWeights()


def weights_format_of(model: Any) -> WeightsFormat:
    """Adapter-only for a peft model, the full weights otherwise."""
    return ADAPTER_ONLY if hasattr(model, "peft_config") else FULL_WEIGHTS


def weights_bytes(model: Any, weights: WeightsFormat) -> int:
    """About the bytes ``weights.save`` writes for ``model``: its trainable tensors for an adapter, every
    tensor of its state dict (a shared one once) for the full weights."""
    if weights.name == ADAPTER_ONLY.name:
        return tensor_bytes([p for p in model.parameters() if p.requires_grad])
    return tensor_bytes(model.state_dict())
