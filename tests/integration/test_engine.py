"""The one training engine (training/loop.py): token-weighted loss over micro-batches and processes,
checkpoints that load without pickle and name a damaged file (the no-import-cycle check is in
tests/unit/test_layers.py).

Gradients are computed on 8 real quickstart clips (4 short transcripts, 4 long ones) with a random toy
Whisper: the 2 micro-batches of 4 differ a lot in label tokens, so a per-micro-batch mean (the old way)
gives a visibly different gradient, and the test would catch a return to it.
"""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import QUIET, real_samples

from whisper_tune.config.schema import TrainingConfig
from whisper_tune.errors import ConfigError


def fresh_model(model_dir: Path) -> Any:
    import torch
    from transformers import WhisperForConditionalGeneration

    torch.manual_seed(0)
    return WhisperForConditionalGeneration.from_pretrained(model_dir).train()


def grads_of(model: Any) -> dict[str, Any]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def step_gradients(model_dir: Path, samples: list[dict[str, Any]], micro: int) -> tuple[dict[str, Any], int]:
    """The gradient ``backward_step`` leaves for one optimizer step over ``samples`` cut into
    micro-batches of ``micro`` (one process)."""
    from whisper_tune.data.collator import SpeechSeq2SeqCollator
    from whisper_tune.training.loop import backward_step, build_accelerator

    accumulation = len(samples) // micro
    accelerator = build_accelerator(
        TrainingConfig(batch_size=micro, gradient_accumulation_steps=accumulation), cpu=True
    )
    model = fresh_model(model_dir)
    collator = SpeechSeq2SeqCollator(model.config.decoder_start_token_id)
    batches = [collator(samples[i : i + micro]) for i in range(0, len(samples), micro)]
    prepared = accelerator.prepare(model)
    _, tokens = backward_step(accelerator, prepared, batches)
    return grads_of(model), tokens


def assert_same(a: dict[str, Any], b: dict[str, Any], rtol: float = 1e-4, atol: float = 1e-7) -> None:
    import torch

    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=rtol, atol=atol, msg=name)


@pytest.fixture(scope="module")
def eight(toy_model_dir: Path) -> list[dict[str, Any]]:
    return real_samples(toy_model_dir, 8)


@pytest.fixture(scope="module")
def one_batch_of_eight(toy_model_dir: Path, eight: list[dict[str, Any]]) -> tuple[dict[str, Any], int]:
    return step_gradients(toy_model_dir, eight, micro=8)


def test_two_accumulated_micro_batches_give_the_gradient_of_one_batch(
    toy_model_dir: Path, eight: list[dict[str, Any]], one_batch_of_eight: tuple[dict[str, Any], int]
) -> None:
    import torch

    from whisper_tune.data.collator import SpeechSeq2SeqCollator

    whole, tokens = one_batch_of_eight
    accumulated, tokens_acc = step_gradients(toy_model_dir, eight, micro=4)
    assert tokens == tokens_acc == sum(len(s["labels"]) - 1 for s in eight)  # the start token is stripped
    assert_same(accumulated, whole)
    # The gradient of one batch is the model's own mean loss over its tokens: the reference.
    model = fresh_model(toy_model_dir)
    collator = SpeechSeq2SeqCollator(model.config.decoder_start_token_id)
    model(**collator(eight)).loss.backward()
    assert_same(grads_of(model), whole)
    # The old way (mean of each micro-batch's token mean) differs: the test can tell them apart.
    model = fresh_model(toy_model_dir)
    lengths = []
    for half in (eight[:4], eight[4:]):
        batch = collator(half)
        lengths.append(int((batch["labels"] != -100).sum()))
        (model(**batch).loss / 2).backward()
    assert lengths[1] > 2 * lengths[0]
    old = grads_of(model)
    name = "model.decoder.layers.0.fc1.weight"
    assert not torch.allclose(old[name], whole[name], rtol=1e-2, atol=1e-6)


@pytest.mark.slow
def test_two_processes_with_one_micro_batch_each_give_the_gradient_of_one_batch(
    toy_model_dir: Path, one_batch_of_eight: tuple[dict[str, Any], int], tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "grads.safetensors"
    worker = Path(__file__).with_name("grad_worker.py")
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    argv += ["--master_addr", "127.0.0.1", "--master_port", str(port)]
    argv += [str(worker), str(toy_model_dir), str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    grads = load_file(out)
    whole, tokens = one_batch_of_eight
    assert int(grads.pop("_tokens")[0]) == tokens  # summed over both processes
    assert_same(grads, whole)


@pytest.mark.slow
def test_accumulation_and_batch_size_train_the_same_weights_and_log_the_same_loss(
    toy_model_dir: Path, tmp_path: Path
) -> None:
    """The whole loop: 2 steps of 2 x 4 accumulated vs 2 steps of 8, same seeded data order."""
    import torch

    from whisper_tune.data.collator import SpeechSeq2SeqCollator
    from whisper_tune.training.loop import TrainLoop, build_accelerator

    data = real_samples(toy_model_dir, 16)
    runs = []
    for batch, accumulation in ((8, 1), (4, 2)):
        cfg = TrainingConfig(
            batch_size=batch,
            gradient_accumulation_steps=accumulation,
            max_steps=2,
            learning_rate=1e-3,
            warmup_steps=0,
        )
        model = fresh_model(toy_model_dir)
        collator = SpeechSeq2SeqCollator(model.config.decoder_start_token_id)
        loop = TrainLoop(
            model, data, collator, cfg, tmp_path / f"b{batch}", QUIET, build_accelerator(cfg, cpu=True)
        )
        runs.append((loop.run(), model))
    (whole, model_a), (accumulated, model_b) = runs
    assert [r["loss"] for r in whole.log_history] == pytest.approx(
        [r["loss"] for r in accumulated.log_history], rel=1e-5
    )
    assert whole.train_samples == accumulated.train_samples == 16
    # Adam's first steps move each weight by about lr * g / (|g| + eps): an element whose gradient is
    # ~eps (summed in another order by 8 vs 2 x 4) can differ by a fraction of lr. Measured with torch
    # 2.13: one element of one 64x64 weight off by 2.6e-6 (0.3 % of lr), every other within 1e-6.
    loose = 0
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-2 * cfg.learning_rate, msg=name)
        loose += int(((a - b).abs() > 1e-6).sum())
    assert loose <= 10


# --- checkpoints -------------------------------------------------------------------------------


def test_rng_state_round_trips_without_pickle(tmp_path: Path) -> None:
    import random

    import numpy as np
    import torch

    from whisper_tune.training.checkpoints import restore_rng, rng_file, save_rng

    (tmp_path / "step-000001").mkdir()
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    random.gauss(0, 1)  # a cached Gaussian in Python's state
    save_rng(tmp_path / "step-000001" / rng_file(0))
    expected = (random.random(), random.gauss(0, 1), np.random.rand(), torch.rand(1).item())
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    restore_rng(tmp_path / "step-000001", rank=0)
    assert (random.random(), random.gauss(0, 1), np.random.rand(), torch.rand(1).item()) == expected
    assert (tmp_path / "step-000001" / rng_file(0)).read_bytes()[:8] != pickle.dumps(0)[:8]


class Trap:
    """Unpickling this runs code: what a crafted checkpoint file would do."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, ("touch PWNED",))


def checkpoint_with(tmp_path: Path) -> Path:
    """Two checkpoints' state and RNG files (enough for these loaders); returns the second."""
    import torch

    from whisper_tune.training.checkpoints import rng_file, save_rng, write_state

    for step in (1, 2):
        folder = tmp_path / "checkpoints" / f"step-{step:06d}"
        folder.mkdir(parents=True)
        write_state(folder, step, [{"step": step, "loss": 1.0}])
        save_rng(folder / rng_file(0))
        torch.save({"last_epoch": step}, folder / "scheduler.pt")
    return folder


def test_a_crafted_pickle_is_never_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from whisper_tune.training.checkpoints import load_tensors_file, restore_rng, rng_file

    monkeypatch.chdir(tmp_path)
    checkpoint = checkpoint_with(tmp_path)
    (checkpoint / rng_file(0)).unlink()
    torch.save({"python": Trap()}, checkpoint / "rng.pt")  # an old-style pickled RNG file
    with pytest.raises(ConfigError, match=r"older whisper-tune \(rng.pt, a pickle, which is never loaded\)"):
        restore_rng(checkpoint)
    torch.save({"state": Trap()}, checkpoint / "optimizer.pt")
    with pytest.raises(ConfigError, match="optimizer.pt is damaged"):
        load_tensors_file(checkpoint, "optimizer.pt")
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("rng-rank00000.safetensors", b"\x00garbage", "rng-rank00000.safetensors is damaged"),
        ("trainer_state.json", b'{"step": "x"', "trainer_state.json is damaged"),
        ("scheduler.pt", b"PK\x03\x04 truncated", "scheduler.pt is damaged"),
    ],
)
def test_a_damaged_checkpoint_file_is_named_with_the_previous_checkpoint_as_the_way_out(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    from whisper_tune.training.checkpoints import load_tensors_file, read_state, restore_rng

    checkpoint = checkpoint_with(tmp_path)
    (checkpoint / name).write_bytes(content)
    load = {
        "rng-rank00000.safetensors": lambda: restore_rng(checkpoint),
        "trainer_state.json": lambda: read_state(checkpoint),
        "scheduler.pt": lambda: load_tensors_file(checkpoint, "scheduler.pt"),
    }[name]
    with pytest.raises(ConfigError, match=message) as caught:
        load()
    assert str(checkpoint) in caught.value.message
    previous = checkpoint.parent / "step-000001"
    assert caught.value.hint == f"resume from the previous checkpoint: training.resume_from={previous}"


@pytest.mark.slow
def test_a_run_resuming_from_a_damaged_checkpoint_exits_2_with_one_line(
    toy_model_dir: Path, tmp_path: Path
) -> None:
    from helpers import cli_argv, toy_overrides

    args = toy_overrides(toy_model_dir, tmp_path, **{"training.save_steps": 1, "output.run_name": "r"})
    done = subprocess.run(cli_argv("run", "--config", "quickstart", *args), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    last = tmp_path / "r" / "checkpoints" / "step-000002"
    (last / "rng-rank00000.safetensors").write_bytes(b"\x00")
    resume = [*args, f"training.resume_from={last}", "training.max_steps=3", "output.run_name=r2"]
    done = subprocess.run(cli_argv("run", "--config", "quickstart", *resume), capture_output=True, text=True)
    assert done.returncode == 2
    assert "rng-rank00000.safetensors is damaged" in done.stderr and "Traceback" not in done.stderr
    assert "training.resume_from=" in done.stderr and "step-000001" in done.stderr


# --- what a backend needs from the recipe ------------------------------------------------------


@pytest.mark.usefixtures("fresh_accelerator_state")  # bf16, where the other in-process runs use fp32
def test_the_phases_follow_the_backends_recipe_needs(
    toy_model_dir: Path, toy_train_data: Path, tmp_path: Path
) -> None:
    """A backend's RecipeNeeds reach the collator and the loop: labels padded to a multiple of
    label_pad_multiple, features fed as feature_dtype, the last incomplete batch dropped (10 samples in
    batches of 4: 2 steps in an epoch, not 3)."""
    import dataclasses

    from whisper_tune.backend.protocol import RecipeNeeds, TrainJob
    from whisper_tune.config_loading import load_config
    from whisper_tune.data.collator import LABEL_PAD
    from whisper_tune.execution.reference_backend import ReferenceBackend
    from whisper_tune.training.phases import train_in_process

    seen: list[dict[str, Any]] = []
    fed: list[str] = []  # the dtype of the features the encoder got (made from the audio at batch time)

    class StaticShapes(ReferenceBackend):
        def recipe_needs(self, config: Any) -> RecipeNeeds:
            return RecipeNeeds(label_pad_multiple=32, feature_dtype="float16", drop_last=True)

        def training_setup(self, job: Any, accelerator: Any, reporter: Any) -> Any:
            setup = super().training_setup(job, accelerator, reporter)
            setup.model.model.encoder.register_forward_pre_hook(
                lambda module, args, kwargs: fed.append(str(kwargs.get("input_features", args[0]).dtype)),
                with_kwargs=True,
            )
            return dataclasses.replace(setup, on_batch=seen.append)

    config = load_config(
        None,
        [
            f"model.name={toy_model_dir}",
            "training.batch_size=4",
            "training.num_epochs=1",
            "training.warmup_steps=0",
            "training.precision=bf16",  # CPU autocast takes the fp16 features
            "training.logging_steps=1",
            "training.method=full",
        ],
    )
    job = TrainJob(
        config=config,
        run_dir=tmp_path,
        model_dir=str(toy_model_dir),
        train_data=toy_train_data,
        evaluate_before=False,
        evaluate_after=False,
    )
    result = train_in_process(StaticShapes(), job, QUIET)
    assert result.steps == 2 and result.train_samples == 8 and len(seen) == 2
    for batch in seen:
        labels = batch["labels"]
        assert labels.shape[0] == 4 and labels.shape[1] % 32 == 0
        assert (labels[:, -1] == LABEL_PAD).any()  # padded beyond the longest row
        assert "audio" in batch  # prepared data is audio: features are made on the training device
    assert fed and set(fed) == {"torch.float16"}
    plain_job = job.model_copy(update={"run_dir": tmp_path / "plain"})
    plain = train_in_process(ReferenceBackend(), plain_job, QUIET)
    assert plain.steps == 3 and plain.train_samples == 10  # the default needs: the last batch of 2 too
