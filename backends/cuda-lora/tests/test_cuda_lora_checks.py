"""Options, presets, pre-flight checks (with explicit Capabilities) and the memory estimator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError
from whisper_tune_cuda_lora.backend import CudaLoraBackend
from whisper_tune_cuda_lora.checks import check_config
from whisper_tune_cuda_lora.memory import ANCHORS, estimate, lora_params, model_shape, shape_from_name
from whisper_tune_cuda_lora.options import CudaLoraOptions

from whisper_tune import load_config
from whisper_tune.backend.protocol import Capabilities
from whisper_tune.backend.registry import Registry
from whisper_tune.config.presets import list_presets
from whisper_tune.config.schema import (
    DEFAULT_FREEZE_ENCODER,
    DEFAULT_LEARNING_RATE,
    WHISPER_LINEAR,
    LoraConfig,
)
from whisper_tune.config_loading import merge_sources, validate
from whisper_tune.errors import ConfigError, HardwareError
from whisper_tune.runs.opening import raise_issues
from whisper_tune.runs.run import plan

H100 = Capabilities(cpu_count=16, cuda_devices=1, cuda_memory_gib=(79.1,), cuda_bf16=True)
T4 = Capabilities(cpu_count=4, cuda_devices=1, cuda_memory_gib=(14.6,), cuda_bf16=False)
NO_GPU = Capabilities(cpu_count=2)
BACKEND = Registry(instances={"cuda-lora": CudaLoraBackend()})


def config(*overrides: str, **flags: str) -> object:
    from whisper_tune.config_loading import load_config as load

    return load(None, ["backend.name=cuda-lora", *overrides], registry=BACKEND, **flags)


def issues(cfg: object, caps: Capabilities, bnb: str | None = "0.50.2") -> dict[str, list[object]]:
    found: dict[str, list[object]] = {}
    for issue in check_config(cfg, caps, bnb_version=bnb):  # type: ignore[arg-type]
        found.setdefault(issue.loc, []).append(issue)
    return found


def test_defaults_are_the_core_lora_on_an_unquantised_base() -> None:
    opts = CudaLoraOptions()
    assert opts.quantization == "none" and opts.device == "cuda"
    cfg = config()
    assert cfg.training.method == "lora"
    # the seeds' r, alpha and dropout, on every Linear layer (the core's LoRA default); the seed presets
    # pin the seeds' q_proj/v_proj
    assert cfg.training.lora == LoraConfig(r=32, alpha=64, dropout=0.05, target_modules=WHISPER_LINEAR)
    seed = load_config("cuda-lora/seed002-hindi-large-v2", registry=BACKEND).training.lora
    assert seed.target_modules == ("q_proj", "v_proj")


def test_every_option_is_described() -> None:
    def walk(model: type[BaseModel]) -> None:
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"

    walk(CudaLoraOptions)
    walk(LoraConfig)


@pytest.mark.parametrize("name", ["cuda-lora/seed000-marathi-large-v2", "cuda-lora/seed002-hindi-large-v2"])
def test_seed_presets_validate_as_the_int8_recipe(name: str) -> None:
    cfg = validate(merge_sources(list_presets()[name], env={}), registry=BACKEND)
    opts = cfg.backend.options
    assert isinstance(opts, CudaLoraOptions)
    assert opts.quantization == "int8" and cfg.training.lora.r == 32 and cfg.training.lora.alpha == 64
    assert cfg.training.method == "lora" and cfg.training.learning_rate == 1e-3
    assert cfg.training.precision == "fp16" and cfg.training.gradient_checkpointing


def test_bad_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="quantization"):
        config("backend.quantization=3bit")
    with pytest.raises(ConfigError, match="backend.lora moved to training.lora"):
        config("backend.lora.r=8")
    with pytest.raises(ConfigError, match="training.lora"):
        config("training.lora.rank=8")
    with pytest.raises(ValidationError):
        LoraConfig(target_modules=())
    with pytest.raises(ValidationError, match="not a Whisper Linear layer"):
        LoraConfig(target_modules=("q_proj", "query"))
    assert LoraConfig(target_modules="all-linear").target_modules == (  # type: ignore[arg-type]
        "q_proj",
        "k_proj",
        "v_proj",
        "out_proj",
        "fc1",
        "fc2",
    )
    (full,) = issues(config("backend.device=cpu", "training.method=full"), NO_GPU)["training.method"]
    assert "trains LoRA adapters" in full.message


def test_no_cuda_device_is_a_hardware_error_unless_on_the_cpu() -> None:
    found = issues(config(), NO_GPU)
    (issue,) = found["backend.device"]
    assert issue.hardware and "no CUDA device" in issue.message and "backend.device=cpu" in issue.hint
    with pytest.raises(HardwareError, match="no CUDA device"):
        raise_issues(check_config(config(), NO_GPU, bnb_version="0.50.2"))
    assert not issues(config("backend.device=cpu"), NO_GPU)


def test_missing_bitsandbytes_is_reported_for_quantised_modes_only() -> None:
    for mode in ("int8", "4bit"):
        (issue,) = issues(config(f"backend.quantization={mode}", "training.precision=fp16"), H100, bnb=None)[
            "backend.quantization"
        ]
        assert "needs bitsandbytes" in issue.message and "./backends/cuda-lora[bnb]" in issue.hint
        assert issue.run_only  # 'whisper-tune plan' still shows the plan
    assert "backend.quantization" not in issues(config("training.precision=bf16"), H100, bnb=None)
    assert not issues(config("backend.quantization=int8", "training.precision=fp16"), H100)


def test_quantised_modes_run_on_the_cpu_with_a_bitsandbytes_that_has_a_cpu_backend() -> None:
    for mode in ("int8", "4bit"):
        for precision in ("fp32", "bf16"):
            cpu = config(
                "backend.device=cpu", f"backend.quantization={mode}", f"training.precision={precision}"
            )
            assert not issues(cpu, NO_GPU), (mode, precision)
        (old,) = issues(cpu, NO_GPU, bnb="0.46.1")["backend.quantization"]
        assert "bitsandbytes 0.46.1 cannot train" in old.message and "0.47 or newer" in old.message
        assert old.run_only and "./backends/cuda-lora[bnb]" in old.hint
        assert not issues(cpu, NO_GPU, bnb="0.47.0.dev0")
        # on a GPU the old release stays acceptable (the seeds ran on older ones)
        gpu = config(f"backend.quantization={mode}", "training.precision=fp16")
        assert not issues(gpu, H100, bnb="0.46.1")
    (fp16,) = issues(
        config("backend.device=cpu", "backend.quantization=int8", "training.precision=fp16"), NO_GPU
    )["training.precision"]
    assert "fp16 is not supported on the CPU" in fp16.message and "bf16" in fp16.hint


def test_lora_defaults_fill_only_the_fields_nobody_set(capsys: pytest.CaptureFixture[str]) -> None:
    from whisper_tune.cli import main
    from whisper_tune.config_loading import resolve_config

    gpu = config()
    assert gpu.training.learning_rate == 1e-3 and gpu.training.precision == "bf16"
    cpu = config("backend.device=cpu")
    assert cpu.training.learning_rate == 1e-3 and cpu.training.precision == "fp32"
    mine = config("training.learning_rate=2e-4", "training.precision=fp16")
    assert mine.training.learning_rate == 2e-4 and mine.training.precision == "fp16"
    # a preset's values are set values: the quickstart's rate stays, whatever the method's default
    quickstart = load_config(
        "quickstart", ["backend.name=cuda-lora", "training.learning_rate=6e-5"], registry=BACKEND
    )
    assert quickstart.training.learning_rate == 6e-5 and quickstart.training.method == "lora"
    plain = load_config("quickstart", ["backend.name=cuda-lora"], registry=BACKEND).training
    assert (plain.method, plain.learning_rate, plain.freeze_encoder) == ("lora", 1e-3, False)
    # the core's default is LoRA too, at the same rate; full fine-tuning has its own rate
    core = load_config(None).training
    assert (core.method, core.learning_rate, core.freeze_encoder) == ("lora", 1e-3, False)
    full = load_config(None, ["training.method=full"]).training
    assert (full.learning_rate, full.freeze_encoder) == (
        DEFAULT_LEARNING_RATE["full"],
        DEFAULT_FREEZE_ENCODER["full"],
    )
    assert cpu.training.freeze_encoder is False  # cuda-lora's LoRA keeps the encoder's adapters
    resolved = resolve_config(None, ["backend.device=cpu"], backend="cuda-lora", registry=BACKEND)
    assert resolved.config == cpu and set(resolved.backend_defaults) == {"training.method"}
    assert "LoRA" in resolved.backend_defaults["training.method"].reason

    assert main(["config", "show", "--backend", "cuda-lora"]) == 0
    shown = capsys.readouterr().out
    assert "  method: lora  # cuda-lora default: this backend trains LoRA adapters" in shown
    assert "  learning_rate: 0.001" in shown
    assert "  precision: bf16  # cuda-lora default: bf16 autocast on a GPU" in shown
    assert main(["plan", "--backend", "cuda-lora", "backend.device=cpu", "training.precision=bf16"]) == 0
    planned = capsys.readouterr().out
    assert "method:             lora (cuda-lora default: this backend trains LoRA" in planned
    assert "learning rate:      0.001 (whisper-tune default for training.method lora)" in planned
    assert "precision:          bf16 (set in the config)" in planned
    assert main(["plan", "--backend", "reference", "training.method=full"]) == 0
    shown = capsys.readouterr().out
    full_rate = DEFAULT_LEARNING_RATE["full"]
    assert f"learning rate:      {full_rate:g} (whisper-tune default for training.method full)" in shown


def test_precision_checks() -> None:
    (bf16,) = issues(config("training.precision=bf16"), T4)["training.precision"]
    assert bf16.hardware and "bf16" in bf16.message and "fp16" in bf16.hint
    (fp32,) = issues(config("training.precision=fp32"), H100)["training.precision"]
    assert fp32.level == "warning" and "training.precision=bf16" in fp32.hint
    (cpu,) = issues(config("backend.device=cpu", "training.precision=fp16"), NO_GPU)["training.precision"]
    assert cpu.level == "error" and "CPU" in cpu.message


def write_model_dir(root: Path, model_mels: int, extractor_mels: int) -> Path:
    root.mkdir()
    (root / "config.json").write_text(
        json.dumps({"d_model": 1280, "encoder_layers": 32, "decoder_layers": 32, "num_mel_bins": model_mels})
    )
    (root / "preprocessor_config.json").write_text(json.dumps({"feature_size": extractor_mels}))
    return root


def test_a_128_mel_model_with_an_80_mel_extractor_is_caught(tmp_path: Path) -> None:
    bad = write_model_dir(tmp_path / "v3-bad", 128, 80)
    (issue,) = issues(config(f"model.name={bad}", "training.precision=bf16"), H100)["model.name"]
    assert "expects 128 mel bins but its feature extractor makes 80" in issue.message
    assert "feature_size=128" in issue.hint
    good = write_model_dir(tmp_path / "v3-good", 128, 128)
    assert "model.name" not in issues(config(f"model.name={good}", "training.precision=bf16"), H100)


def test_a_batch_that_cannot_fit_names_the_batch_that_does() -> None:
    cfg = config(
        "model.name=openai/whisper-large-v3",
        "training.precision=bf16",
        "training.batch_size=64",
        "training.lora.target_modules=[q_proj, v_proj]",  # the seeds' adapter (all-linear fits 31)
    )
    (issue,) = issues(cfg, H100)["training.batch_size"]
    assert issue.hardware
    assert (
        "batch 64 needs about" in issue.message and "the largest batch that fits is about 32" in issue.message
    )
    assert "training.batch_size=32 training.gradient_accumulation_steps=2" in issue.hint
    assert "training.gradient_checkpointing=true makes batch 64 fit" in issue.hint
    # the seeds' recipe (int8, checkpointing, batch 8) fits a 16 GB T4, as the seed's blog says
    seed = config(
        "model.name=openai/whisper-large-v2",
        "backend.quantization=int8",
        "training.precision=fp16",
        "training.gradient_checkpointing=true",
        "training.batch_size=8",
    )
    assert "training.batch_size" not in issues(seed, T4)
    # not even batch 1: say so, and point at what helps
    (tiny_gpu,) = issues(cfg, Capabilities(cuda_devices=1, cuda_memory_gib=(4.0,), cuda_bf16=True))[
        "training.batch_size"
    ]
    assert "not even batch 1 fits" in tiny_gpu.message and "quantization=4bit" in tiny_gpu.hint


def test_plan_reports_quantisation_trainable_parameters_and_memory() -> None:
    cfg = load_config("cuda-lora/seed002-hindi-large-v2", registry=BACKEND)
    the_plan = plan(cfg, registry=BACKEND, caps=H100)
    notes = "\n".join(the_plan.notes)
    assert the_plan.devices == "cuda:0 (79 GiB)" and the_plan.batch_per_device == 8
    assert "int8" in notes and "r=32 alpha=64" in notes and "15.73 M" in notes
    assert "GPU memory estimate at batch 8: 12.7 GiB" in notes
    # plan still works where bitsandbytes and the GPU are missing (run-only / hardware issues)
    assert plan(cfg, registry=BACKEND, caps=NO_GPU).devices.startswith("cuda:0 (no CUDA device")


@pytest.mark.parametrize(("model", "quantization", "checkpointing", "batch", "measured"), ANCHORS)
def test_memory_estimate_reproduces_the_team_h100_anchors(
    model: str, quantization: str, checkpointing: bool, batch: int, measured: float
) -> None:
    shape = shape_from_name(model)
    assert shape is not None
    precision = "fp16" if quantization == "int8" else "bf16"
    est = estimate(
        shape,
        quantization=quantization,
        checkpointing=checkpointing,
        batch=batch,
        precision=precision,  # type: ignore[arg-type]
    )
    assert est.peak_gib == pytest.approx(measured, rel=0.03)


def test_shapes_and_lora_sizes() -> None:
    large_v2 = shape_from_name("openai/whisper-large-v2")
    assert large_v2 is not None
    # the seed 002 blog's print_trainable_parameters(): 15728640 trainable of 1559033600 (peft counts
    # the tied proj_out once more) -> 63 MB of fp32 adapter
    assert lora_params(large_v2, 32, ("q_proj", "v_proj")) == 15_728_640
    assert large_v2.params == pytest.approx(1_543_490_560, rel=0.01)
    assert shape_from_name("pip:tiny.en") is not None and shape_from_name("pip:tiny.en").vocab_size == 51864  # type: ignore[union-attr]
    assert shape_from_name("openai/whisper-large-v3-turbo").decoder_layers == 4  # type: ignore[union-attr]
    assert shape_from_name("my-org/custom") is None


def test_shape_of_a_local_model_matches_its_real_parameter_count(toy_model_dir: Path) -> None:
    from transformers import WhisperForConditionalGeneration

    shape = model_shape(str(toy_model_dir))
    assert shape is not None and shape.d_model == 64
    real = sum(p.numel() for p in WhisperForConditionalGeneration.from_pretrained(toy_model_dir).parameters())
    assert shape.params == pytest.approx(real, rel=0.02)


def test_a_full_fine_tuning_rate_run_as_lora_warns(tmp_path: Path) -> None:
    """A config written for full fine-tuning (learning_rate 1e-5) run with --backend cuda-lora would train
    LoRA at 1e-5 without a word: plan and run warn, naming LoRA's default."""
    import logging

    from whisper_tune.console import LOGGER_NAME

    written = tmp_path / "full-ft.yaml"
    written.write_text("model: {name: pip:tiny.en}\ntraining: {learning_rate: 1.0e-5}\n")
    cfg = load_config(written, ["backend.device=cpu"], backend="cuda-lora", registry=BACKEND)
    assert cfg.training.method == "lora" and cfg.training.learning_rate == 1e-5

    class Lines(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.lines.append(record.getMessage())

    handler, logger = Lines(), logging.getLogger(LOGGER_NAME)
    logger.addHandler(handler)
    try:
        plan(cfg, registry=BACKEND)
    finally:
        logger.removeHandler(handler)
    (warning,) = [line for line in handler.lines if "training.learning_rate" in line]
    assert warning.startswith("warning: training.learning_rate: 1e-05 is far below the usual range")
    assert "LoRA's default is 0.001" in warning and "leave training.learning_rate unset" in warning


def test_the_cpu_switch_is_spelled_as_on_every_backend() -> None:
    """backend.device=cpu here as on accelerate and reference; backend.cpu=true is read as it too."""
    new, old = config("backend.device=cpu"), config("backend.cpu=true")
    assert new.backend.options == old.backend.options  # type: ignore[attr-defined]
    assert CudaLoraBackend().uses_cpu(old)  # type: ignore[arg-type]
    assert CudaLoraBackend.cpu_overrides == ("backend.device=cpu",)
