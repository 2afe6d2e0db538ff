"""One process of the 2-process gradient test (tests/integration/test_engine.py), started by torchrun.

Rank r takes samples 4r..4r+3 of the same 8 real clips, runs ``backward_step`` with one micro-batch of 4
through an Accelerate (gloo) DDP model, and rank 0 saves the all-reduced gradients.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: helpers


def main(model_dir: str, out: str) -> None:
    import torch
    from helpers import real_samples
    from safetensors.torch import save_file
    from transformers import WhisperForConditionalGeneration

    from whisper_tune.config.schema import TrainingConfig
    from whisper_tune.data.collator import SpeechSeq2SeqCollator
    from whisper_tune.training.loop import backward_step, build_accelerator

    accelerator = build_accelerator(TrainingConfig(batch_size=4), cpu=True)
    assert accelerator.num_processes == 2
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration.from_pretrained(model_dir)
    collator = SpeechSeq2SeqCollator(model.config.decoder_start_token_id)
    samples = real_samples(Path(model_dir), 8)
    rank = accelerator.process_index
    batch = {k: v.to(accelerator.device) for k, v in collator(samples[4 * rank : 4 * rank + 4]).items()}
    prepared = accelerator.prepare(model)
    prepared.train()
    _, tokens = backward_step(accelerator, prepared, [batch])
    if accelerator.is_main_process:
        grads = {n: p.grad.contiguous() for n, p in model.named_parameters() if p.grad is not None}
        grads["_tokens"] = torch.tensor([tokens])
        save_file(grads, out)
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    from whisper_tune.execution.worker import exit_now

    main(sys.argv[1], sys.argv[2])
    exit_now(0)  # no interpreter teardown: a DDP model collected at shutdown can deadlock under gloo
