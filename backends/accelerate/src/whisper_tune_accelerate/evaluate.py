"""Generation over all processes: each rank generates for its shard, predictions are gathered in order.

The eval set is cut into ``eval.batch_size`` batches in dataset order and Accelerate's data loader gives
rank ``r`` batches ``r, r+N, ...``; ``gather_for_metrics`` concatenates one batch per rank per step (so
the gathered order is the dataset's) and drops the samples repeated to even out the last step, so every
sample is scored exactly once, as a one-process evaluation would score it.
"""

from __future__ import annotations

import contextlib
from typing import Any

from whisper_tune.config.schema import EvalConfig, ModelConfig
from whisper_tune.recipe.collator import SpeechSeq2SeqCollator
from whisper_tune.recipe.evaluation import SupportsSamples, strip_padding
from whisper_tune.recipe.model import generate_kwargs
from whisper_tune.recipe.progress import Reporter


def full_parameters(accelerator: Any, model: Any) -> Any:
    """A context in which the unwrapped model holds all its weights (FSDP gathers its shards)."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        from torch.distributed.fsdp import FullyShardedDataParallel

        if any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
            return FullyShardedDataParallel.summon_full_params(model, writeback=False)
    return contextlib.nullcontext()


def gathered_predictions(
    accelerator: Any,
    model: Any,
    dataset: SupportsSamples,
    collator: SpeechSeq2SeqCollator,
    *,
    model_cfg: ModelConfig,
    eval_cfg: EvalConfig,
    reporter: Reporter,
    name: str,
) -> list[list[int]]:
    """Token ids for every sample of ``dataset`` in dataset order, generated across all processes (a
    collective call: every rank must make it)."""
    import torch
    from accelerate.utils import DistributedType
    from torch.utils.data import DataLoader

    unwrapped = accelerator.unwrap_model(model)
    was_training = unwrapped.training
    model.eval()
    kwargs: dict[str, Any] = {
        "max_new_tokens": eval_cfg.max_new_tokens,
        "num_beams": eval_cfg.num_beams,
        "return_dict_in_generate": True,
        **generate_kwargs(unwrapped, model_cfg),
    }
    zero3 = (
        accelerator.distributed_type == DistributedType.DEEPSPEED
        and accelerator.state.deepspeed_plugin.zero_stage == 3
    )
    if zero3:
        kwargs["synced_gpus"] = True  # ZeRO-3 gathers weights per forward: ranks step generation together
    loader = accelerator.prepare_data_loader(
        DataLoader(dataset, batch_size=eval_cfg.batch_size, shuffle=False, collate_fn=collator)  # type: ignore[arg-type]
    )
    pad = unwrapped.generation_config.pad_token_id
    eos = unwrapped.generation_config.eos_token_id
    dtype = next(unwrapped.parameters()).dtype
    out: list[list[int]] = []
    with (
        reporter.progress(f"evaluate {name}", total=len(dataset), unit="utt") as bar,
        torch.inference_mode(),
        full_parameters(accelerator, model),
    ):
        for batch in loader:
            features = batch["input_features"].to(dtype=dtype)
            with accelerator.autocast():
                sequences = unwrapped.generate(input_features=features, **kwargs)
            sequences = sequences if isinstance(sequences, torch.Tensor) else sequences.sequences
            rows = [strip_padding(row, pad, eos) for row in sequences.tolist()]
            gathered = accelerator.gather_for_metrics(rows, use_gather_object=True)
            out.extend(gathered)
            bar.update(len(gathered))
    if was_training:
        model.train()
    if len(out) != len(dataset):  # gather_for_metrics dropped or repeated samples: never score that
        raise RuntimeError(f"gathered {len(out)} predictions for the {len(dataset)} samples of {name}")
    return out
