"""The run configuration: frozen pydantic models, one section per concern.

Every field has a description; docs/config.md is generated from them (``whisper-tune config docs``).
The ``backend`` section holds the backend's name plus that backend's own options model, validated in a
second phase by ``whisper_tune.config_loading`` once the backend is known.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, field_validator, model_validator

from whisper_tune.errors import ConfigError
from whisper_tune.languages import language_code

SAMPLING_RATE = 16_000
MAX_AUDIO_SECONDS = 30.0
MAX_LABEL_TOKENS = 448
BUNDLED_REGRESSION = "bundled"
#: a Hub repo id: ORG/NAME
REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
TrackerName = Literal[
    "auto", "none",
    "aim", "comet_ml", "mlflow", "tensorboard", "wandb", "clearml", "dvclive", "swanlab", "trackio",
]  # fmt: skip


class Section(BaseModel):
    """Base of every config section: immutable, unknown keys are errors. Three short forms are read as
    what they stand for: an empty section (``eval:`` with nothing under it, YAML's null) is the
    defaults; ``true`` / ``false`` for a section with an ``enabled`` key is that key
    (``data.packing=true``); one value for a list is a list of one (``training.report_to=wandb``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    @model_validator(mode="before")
    @classmethod
    def _short_forms(cls, data: Any) -> Any:
        if data is None:
            return {}
        if isinstance(data, bool) and "enabled" in cls.model_fields:
            return {"enabled": data}
        if isinstance(data, Mapping):
            lists = _scalar_list_fields(cls)
            single = {
                k: [v]
                for k, v in data.items()
                if k in lists and isinstance(v, (str, int, float)) and not isinstance(v, bool)
            }
            if single:
                return {**data, **single}
        return data


def _scalar_list_fields(model: type[BaseModel]) -> frozenset[str]:
    """The fields of ``model`` that hold a list of plain values (``tuple[str, ...]``, optional or not)."""
    found = set()
    for name, field in model.model_fields.items():
        for annotation in (field.annotation, *typing.get_args(field.annotation)):
            args = typing.get_args(annotation)
            if typing.get_origin(annotation) is tuple and len(args) == 2 and args[1] is Ellipsis:
                item = typing.get_args(args[0])[0] if typing.get_origin(args[0]) is Annotated else args[0]
                if not (isinstance(item, type) and issubclass(item, BaseModel)):
                    found.add(name)
    return frozenset(found)


class SpecAugmentConfig(Section):
    """SpecAugment on the log-mel input during training (Whisper's own masking; off in evaluation)."""

    enabled: bool = Field(False, description="Mask time steps and mel channels of the input while training.")
    mask_time_prob: float = Field(
        0.05, ge=0, le=1, description="Share of time steps covered by time masks (approximately)."
    )
    mask_time_length: int = Field(10, gt=0, description="Length of each time mask, in frames (10 ms each).")
    mask_time_min_masks: int = Field(2, ge=0, description="At least this many time masks per input.")
    mask_feature_prob: float = Field(
        0.0, ge=0, le=1, description="Share of mel channels covered by feature masks (approximately)."
    )
    mask_feature_length: int = Field(10, gt=0, description="Width of each feature mask, in mel channels.")
    mask_feature_min_masks: int = Field(0, ge=0, description="At least this many feature masks per input.")

    def model_overrides(self) -> dict[str, Any]:
        """The WhisperConfig attributes these settings stand for."""
        return {"apply_spec_augment": self.enabled, **self.model_dump(exclude={"enabled"})}


class ModelConfig(Section):
    name: str = Field(
        "openai/whisper-small",
        description=(
            "Which Whisper to fine-tune: a Hugging Face hub id (openai/whisper-small), a local Hugging Face "
            "model directory, a CTranslate2 / faster-whisper directory (imported to Hugging Face weights on "
            "first use), or 'pip:tiny.en' / 'pip:base' for pretrained weights installed from a pip package. "
            "A relative directory in a YAML file is relative to that file's folder (see data.dataset)."
        ),
    )
    language: str | None = Field(
        None,
        description=(
            "Language of the speech, as a Whisper code ('mr') or name ('Marathi'). Sets the language token "
            "in the labels and at generation. Must be unset for English-only '.en' models. Unset on a "
            "multilingual model means no language token is forced."
        ),
    )
    task: Literal["transcribe", "translate"] = Field(
        "transcribe", description="Whisper task token: transcribe, or translate into English."
    )
    spec_augment: SpecAugmentConfig = Field(
        default_factory=SpecAugmentConfig,
        description="SpecAugment masking of the input features while training (off by default).",
    )

    @field_validator("language")
    @classmethod
    def _known_language(cls, value: str | None) -> str | None:
        return None if value is None else language_code(value)

    @property
    def english_only(self) -> bool:
        """True for OpenAI's English-only checkpoints, recognised by name (``*.en``)."""
        return self.name.rstrip("/").endswith(".en")

    @model_validator(mode="after")
    def _english_only_models_take_no_language(self) -> ModelConfig:
        if self.english_only and self.language not in (None, "en"):
            raise ValueError(
                f"'{self.name}' is an English-only model: it has no language tokens, so model.language "
                f"'{self.language}' cannot be used. Pick a multilingual model (e.g. --model pip:base, or "
                "openai/whisper-small) or unset model.language."
            )
        if self.english_only and self.task == "translate":
            raise ValueError(f"'{self.name}' is an English-only model and cannot translate.")
        return self


class EvalSetConfig(Section):
    """A further dataset evaluated before and after training but never trained on."""

    name: str = Field(description="Name of the set in reports (metrics.json, plots).")
    dataset: str = Field(
        description="Dataset for this set; same forms as data.dataset (relative paths in a YAML file are "
        "relative to that file's folder)."
    )
    subset: str | None = Field(None, description="Dataset configuration name (e.g. a language code).")
    split: str = Field("test", description="Split to evaluate; audiofolders use sub-folder names.")
    audio_column: str | None = Field(None, description="Audio column; defaults to data.audio_column.")
    text_column: str | None = Field(None, description="Transcript column; defaults to data.text_column.")
    language_column: str | None = Field(
        None, description="Per-row language column; defaults to data.language_column."
    )
    max_samples: int | None = Field(None, gt=0, description="Evaluate at most this many samples.")
    regression_margin: float | None = Field(
        None,
        ge=0,
        description="Guard rail: warn when this set's normalised WER rises by more than this many points "
        "during training; null = eval.regression_margin.",
    )


DatasetKind = Literal["auto", "hub", "audiofolder", "csv", "jsonl", "prepared", "commonvoice", "saved"]


class PackingConfig(Section):
    """Training clips joined into 30 s windows with Whisper's timestamp tokens (data/packing.py)."""

    enabled: bool | None = Field(
        None,
        description="Join training clips into windows of at most max_window_s (and data.max_label_tokens "
        "label tokens), each clip a segment between timestamp tokens in Whisper's multi-segment format. "
        "training.batch_size then counts windows. Evaluation stays per clip, without timestamps. Unset "
        "(the default): packed when the prepared training clips average under auto_below_s, with "
        "data.timestamp_fraction 0.2 unless set (measured in docs/benchmarks.md); the run says which way "
        "it went and why. A streamed training set is never packed.",
    )
    auto_below_s: float = Field(
        15.0,
        gt=0,
        le=MAX_AUDIO_SECONDS,
        description="With enabled unset: pack when the training clips average under this many seconds.",
    )
    gap_s: float = Field(
        0.3, ge=0, le=5, description="Silence between two clips of a window, in seconds (0.02 s steps)."
    )
    random_offset: bool = Field(
        False,
        description="Start each window's first clip at a random point of the window's free time instead "
        "of at 0 s (seeded by training.seed and the epoch), so the model does not learn that speech "
        "always starts at 0.",
    )
    max_window_s: float = Field(
        MAX_AUDIO_SECONDS,
        gt=1,
        le=MAX_AUDIO_SECONDS,
        description="Audio per window at most, in seconds (Whisper's window is 30 s).",
    )


class DataConfig(Section):
    dataset: str | None = Field(
        None,
        description=(
            "Where the data is: a Hugging Face dataset name, a local audiofolder (audio files + "
            "metadata.csv, one sub-folder per split), a CSV/TSV or JSONL manifest (Whisper-Finetune's JSONL "
            "too), a Common Voice release folder, a datasets save_to_disk folder, or a directory written by "
            "'whisper-tune prepare'. In a YAML file a relative path is relative to that file's folder "
            "('./x', '../x' and 'x.csv' always; 'x/y' when it exists there, else it is a hub name); on the "
            "command line it is relative to the working directory. 'whisper-tune run --data PATH' sets it "
            "and picks the splits the data has. Inside a SageMaker job it defaults to the 'train' channel."
        ),
    )
    kind: DatasetKind = Field(
        "auto",
        description="How to read data.dataset; 'auto' decides from the path (see docs/data.md). "
        "'commonvoice': a Common Voice release folder (<split>.tsv + clips/); 'saved': a folder written "
        "by datasets' save_to_disk; 'csv' also reads .tsv manifests.",
    )
    subset: str | None = Field(
        None, description="Hub dataset configuration name, e.g. 'mr' for Common Voice."
    )
    train_split: str = Field(
        "train", description="Training split; '+' joins splits, e.g. 'train+validation' (seed 000)."
    )
    eval_split: str | None = Field(
        "test", description="Evaluation split. Set to null and use test_size to split the training data."
    )
    test_size: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Hold out this fraction of the training split for evaluation (seeded, like seed 004).",
    )
    split_seed: int = Field(0, description="Seed of the test_size split.")
    streaming: bool = Field(
        False,
        description="Stream a hub dataset instead of downloading it first (seed 003). Needs max_*_samples "
        "or a finite dataset; samples are prepared as they arrive.",
    )
    audio_column: str = Field("audio", description="Column holding the audio (or the path to it).")
    text_column: str = Field(
        "text", description="Column holding the transcript ('sentence' on Common Voice)."
    )
    language_column: str | None = Field(
        None,
        description="Column with each row's language (code or name) for mixed-language data: that row's "
        "labels carry its language token and evaluation forces it. Empty cells fall back to "
        "model.language. Needs a multilingual model.",
    )
    max_train_samples: int | None = Field(None, gt=0, description="Use at most this many training samples.")
    max_eval_samples: int | None = Field(None, gt=0, description="Evaluate on at most this many samples.")
    max_duration_s: float = Field(
        MAX_AUDIO_SECONDS,
        gt=0,
        le=MAX_AUDIO_SECONDS,
        description="Drop clips longer than this (Whisper sees 30 s windows); drops are counted.",
    )
    min_duration_s: float = Field(0.0, ge=0, description="Drop clips shorter than this.")
    max_label_tokens: int = Field(
        MAX_LABEL_TOKENS,
        gt=8,
        le=MAX_LABEL_TOKENS,
        description="Drop samples whose tokenised transcript (with prefix tokens) is longer than this.",
    )
    num_workers: int | None = Field(
        None,
        ge=1,
        description="Processes that decode, resample and tokenise while preparing data (null: one per CPU "
        "core; 1: in the main process). The output and its order do not depend on it.",
    )
    extra_eval: tuple[EvalSetConfig, ...] = Field(
        (),
        description="More datasets evaluated before and after training and never trained on, to see "
        "whether the model improved or merely memorised (another voice, another domain).",
    )
    packing: PackingConfig = Field(
        default_factory=PackingConfig,
        description="Pack short training clips into 30 s windows with timestamp tokens (by default when "
        "the training clips average under data.packing.auto_below_s).",
    )
    timestamps: bool = Field(
        False,
        description="Train with timestamp tokens from data.segments_column: each training clip's labels "
        "become its segments, each between its start and end timestamp tokens (packed or not). "
        "Evaluation stays without timestamps.",
    )
    segments_column: str = Field(
        "sentences",
        description="With data.timestamps: the column holding each clip's segments, a list (or a JSON "
        "string of a list) of {start, end, text} with times in seconds from the clip's start (the layout "
        "of Whisper-Finetune, which calls it 'sentences').",
    )
    timestamp_fraction: float | None = Field(
        None,
        ge=0,
        le=1,
        description="With data.packing or data.timestamps: the share of training windows labelled with "
        "timestamp tokens (a seeded draw per window and epoch). The others are labelled "
        "<|notimestamps|> and their segments' texts, the form evaluation decodes in. distil-whisper "
        "trains with 0.2: mostly timestamped targets cost transcription accuracy. Unset: 0.2 when the "
        "run packs by itself (data.packing.enabled unset), 1 when data.packing.enabled or "
        "data.timestamps is set.",
    )
    no_speech_fraction: float = Field(
        0.0,
        ge=0,
        le=0.5,
        description="Share of training windows (or clips, unpacked) that are silence or noise with "
        "Whisper's no-speech target <|startoftranscript|><|nocaptions|><|endoftext|>, added to each "
        "epoch (seeded). 0 adds none.",
    )

    @property
    def windowed(self) -> bool:
        """Training reads windows built per epoch (data/windows.py), not the prepared clips as they are."""
        return bool(self.packing.enabled) or self.timestamps or self.no_speech_fraction > 0

    @property
    def timestamp_share(self) -> float:
        """``timestamp_fraction``, 1 where unset (a run that packs by itself has set it by then)."""
        return 1.0 if self.timestamp_fraction is None else self.timestamp_fraction

    @model_validator(mode="after")
    def _one_eval_source(self) -> DataConfig:
        if self.test_size is not None and self.eval_split is not None:
            raise ValueError("set either data.eval_split or data.test_size, not both")
        names = [s.name for s in self.extra_eval]
        if len(set(names)) != len(names) or "eval" in names:
            raise ValueError("data.extra_eval names must be unique and not 'eval'")
        if self.min_duration_s >= self.max_duration_s:
            raise ValueError("data.min_duration_s must be below data.max_duration_s")
        if self.streaming and self.windowed:
            raise ValueError(
                "data.packing, data.timestamps and data.no_speech_fraction need a prepared training set: "
                "set data.streaming=false"
            )
        return self


#: Whisper's Linear layers (attention and MLP, encoder and decoder): what LoRA can adapt
WHISPER_LINEAR = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
ALL_LINEAR = "all-linear"
TrainingMethod = Literal["full", "lora"]
#: the peak learning rate each method gets when the config sets none (see docs/benchmarks.md)
DEFAULT_LEARNING_RATE: dict[str, float] = {"full": 3e-5, "lora": 1e-3}
#: how far (a factor either way) from its method's default a learning rate is "far outside the usual
#: range": a run then warns (LoRA at 1e-5, full fine-tuning at 1e-3; runs/opening.learning_rate_issues)
LEARNING_RATE_FAR = 10.0
#: whether each method freezes the encoder when the config does not say (see docs/benchmarks.md)
DEFAULT_FREEZE_ENCODER: dict[str, bool] = {"full": True, "lora": False}


class LoraConfig(Section):
    """The LoRA adapter (peft ``LoraConfig``) trained with ``training.method: lora``: the seeds' r=32,
    alpha=64, dropout 0.05, on every Linear layer (the seeds adapt q_proj/v_proj only; the recipe benchmark
    chose every layer, docs/benchmarks.md)."""

    r: int = Field(32, gt=0, description="LoRA rank.")
    alpha: float = Field(64, gt=0, description="LoRA scaling numerator (lora_alpha); the update is alpha/r.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA branch (lora_dropout).")
    target_modules: tuple[str, ...] = Field(
        WHISPER_LINEAR,
        min_length=1,
        description="Module names that get adapters: any of q_proj, k_proj, v_proj, out_proj, fc1, fc2 "
        "(matched in encoder and decoder, self- and cross-attention), or 'all-linear' for all six (the "
        "default; the seeds' recipes use [q_proj, v_proj]).",
    )
    bias: Literal["none", "all", "lora_only"] = Field(
        "none", description="peft's bias setting (seeds: none)."
    )

    @field_validator("target_modules", mode="before")
    @classmethod
    def _all_linear(cls, value: Any) -> Any:
        if value == ALL_LINEAR or (isinstance(value, (list, tuple)) and list(value) == [ALL_LINEAR]):
            return WHISPER_LINEAR
        return value

    @field_validator("target_modules")
    @classmethod
    def _whisper_modules(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [name for name in value if name not in WHISPER_LINEAR]
        if unknown:
            raise ValueError(
                f"{', '.join(unknown)}: not a Whisper Linear layer; use any of {', '.join(WHISPER_LINEAR)} "
                f"or '{ALL_LINEAR}'"
            )
        return tuple(dict.fromkeys(value))


class TrainingConfig(Section):
    method: TrainingMethod = Field(
        "lora",
        description="What trains: 'lora' (LoRA adapters from training.lora on a frozen base; checkpoints "
        "and final/ hold the adapter only) or 'full' (every weight; the encoder too unless "
        "freeze_encoder). The default, LoRA on every Linear layer at 1e-3 followed by eval.keep=auto, is "
        "the recipe benchmark's choice (docs/benchmarks.md: 3 seeds, two training voices). Every "
        "in-process backend supports both; cuda-lora is LoRA only, accelerate and ipu default to full "
        "(their defaults say so).",
    )
    lora: LoraConfig = Field(
        default_factory=LoraConfig, description="The LoRA adapter, used with method 'lora'."
    )
    learning_rate: float = Field(
        DEFAULT_LEARNING_RATE["lora"],
        gt=0,
        description="Peak learning rate (never rescaled silently). Unset: "
        + ", ".join(f"{rate:g} for method '{m}'" for m, rate in DEFAULT_LEARNING_RATE.items())
        + f". A rate more than {LEARNING_RATE_FAR:g}x from its method's default (LoRA at 1e-5, full "
        "fine-tuning at 1e-3) gets a warning naming that default.",
    )
    batch_size: int = Field(16, gt=0, description="Batch size per device (as in the seeds and HF Trainer).")
    gradient_accumulation_steps: int = Field(1, gt=0, description="Micro-batches per optimizer step.")
    max_steps: int | None = Field(
        None, gt=0, description="Optimizer steps to run; overrides num_epochs when set."
    )
    num_epochs: float = Field(1.0, gt=0, description="Passes over the training data when max_steps is unset.")
    warmup_steps: int = Field(
        0,
        ge=0,
        description="Linear warm-up steps. A run warns when they are not fewer than its training steps "
        "(the learning rate would never reach learning_rate).",
    )
    lr_scheduler: Literal["linear", "constant", "cosine"] = Field(
        "linear", description="Learning-rate schedule after warm-up."
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Clip gradients to this norm; null disables.")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="Compute precision; what each backend supports is checked in its own phase."
    )
    gradient_checkpointing: bool = Field(False, description="Recompute activations to save memory.")
    freeze_encoder: bool = Field(
        DEFAULT_FREEZE_ENCODER["lora"],
        description="Train only the decoder (faster, less memory; with LoRA: only the decoder's "
        "adapters). Unset: "
        + ", ".join(f"{str(v).lower()} for method '{m}'" for m, v in DEFAULT_FREEZE_ENCODER.items())
        + ".",
    )
    seed: int = Field(42, description="Seed for weights of new layers, shuffling and dropout.")
    logging_steps: int = Field(1, gt=0, description="Log the loss every this many optimizer steps.")
    save_steps: int | None = Field(
        None,
        gt=0,
        description="Also save a resumable checkpoint every this many steps, and at the last step (even "
        "with training.save_last=false). Unset: only the last step's (training.save_last) and, when the run "
        "is interrupted (Ctrl-C / SIGTERM), one to resume from.",
    )
    save_last: bool = Field(
        True,
        description="Save a resumable checkpoint at the last step, before final/ is written: a failure "
        "while writing final/ (a full disk) or evaluating loses no training, and the same command with "
        "training.resume_from=latest output.run_name=<the run> finishes the run without training again. "
        "false (with training.save_steps unset) saves its disk space: the weights and the optimizer state, "
        "about 3x the weights for full fine-tuning. The ipu backend's own runtime saves only at "
        "training.save_steps.",
    )
    save_total_limit: int = Field(
        2, gt=0, description="Keep at most this many checkpoints; older are pruned."
    )
    resume_from: str | None = Field(
        None,
        description="Resume from a checkpoint directory (relative to the working directory, like "
        "output.dir), or 'latest' for the newest in output.dir.",
    )
    report_to: tuple[TrackerName, ...] = Field(
        ("auto",),
        description="Experiment trackers for the loss and WER: 'auto' (TensorBoard in <run dir>/tensorboard "
        "when the tensorboard package is installed), 'none', or Accelerate tracker names (tensorboard, "
        "wandb, mlflow, comet_ml, clearml, dvclive, aim, swanlab, trackio); one name or a list.",
    )

    @model_validator(mode="after")
    def _method_learning_rate(self) -> TrainingConfig:
        """An unset learning rate and freeze_encoder are the method's (LoRA's fresh adapters need ~30x
        full fine-tuning's rate); they stay unset (``model_fields_set``), so ``plan`` names them
        defaults."""
        if "learning_rate" not in self.model_fields_set:
            object.__setattr__(self, "learning_rate", DEFAULT_LEARNING_RATE[self.method])
        if "freeze_encoder" not in self.model_fields_set:
            object.__setattr__(self, "freeze_encoder", DEFAULT_FREEZE_ENCODER[self.method])
        return self


class EvalConfig(Section):
    before: bool = Field(True, description="Evaluate before training (seed 003 does), to show the change.")
    after: bool = Field(True, description="Evaluate after training.")
    batch_size: int = Field(16, gt=0, description="Batch size for generation.")
    max_new_tokens: int = Field(128, gt=0, le=440, description="Tokens generated per utterance at most.")
    num_beams: int = Field(1, gt=0, description="Beam width; 1 is greedy decoding.")
    normalizer: Literal["auto", "english", "basic"] = Field(
        "auto",
        description="Whisper text normaliser for the normalised WER/CER: English for English, Basic "
        "otherwise ('auto' picks by language).",
    )
    regression_set: str | None = Field(
        BUNDLED_REGRESSION,
        description="Guard rail: a held-out set evaluated before and after whose WER must not rise by more "
        "than regression_margin. 'bundled' = the small slice shipped with whisper-tune (multilingual "
        "speech for multilingual models, other-domain English for '.en' models); or the name of a "
        "data.extra_eval set; null = none.",
    )
    regression_margin: float = Field(
        2.0,
        ge=0,
        description="Warn when the normalised WER of the regression set, or of any other set evaluated "
        "before and after (data.extra_eval), rises by more than this (points).",
    )
    fail_on_regression: bool = Field(
        False,
        description="Make those warnings an error for pipelines: the run still finishes and writes "
        "everything (final/, metrics.json with the warnings), then exits with code 9.",
    )
    detect_language: bool = Field(
        True,
        description="Multilingual models: also detect each eval clip's language before and after training "
        "and report the share still detected as the configured language.",
    )
    language_drop_margin: float = Field(
        5.0,
        ge=0,
        description="Warn when that share falls by more than this many points during training.",
    )
    keep: Literal["auto", "off"] | Annotated[float, Field(gt=0, le=1)] = Field(
        "auto",
        description="After training, keep only as much of the change as the held-out sets allow: 'auto' "
        "decodes candidates (the change scaled by α; LoRA: the adapter scaled) on one seeded half of "
        "every eval set, keeps the one with the lowest eval WER whose guard sets are no worse than the "
        "pretrained model's beyond their margins (paired word errors), bakes it into final/, and reports "
        "every number on the other half (docs/guard-rails.md); a number in (0, 1] keeps that fraction "
        "without choosing; 'off' keeps the whole change and reports on whole sets.",
    )
    keep_grid: tuple[Annotated[float, Field(gt=0, le=1)], ...] | None = Field(
        None,
        description="eval.keep=auto: the α candidates (whole model). null = 0.25, 0.5, 0.75, 1, plus encoder "
        "0 and 0.5 with the decoder at 1 when the encoder trains.",
    )
    steps: int | None = Field(
        None,
        gt=0,
        description="Also evaluate every this many optimizer steps during training (WER on eval_subset "
        "samples of the eval set); needed for keep_best and early stopping. null = only before/after.",
    )
    subset_size: int | None = Field(
        64,
        gt=0,
        description="Evaluations during training use the first this many eval samples (bounds their "
        "cost on big test sets); null = the whole eval set.",
    )
    metric: Literal["wer", "cer"] = Field(
        "wer",
        description="With eval.steps: what the best checkpoint and early stopping go by, the normalised "
        "'wer' or 'cer' (CER for languages written without spaces between words, such as Chinese, "
        "Japanese or Thai). Both are measured and reported either way.",
    )
    keep_best: bool = Field(
        True,
        description="With eval.steps: end with the weights of the checkpoint that had the lowest eval WER "
        "(or CER: eval.metric), kept on disk as checkpoints/best, not the last.",
    )
    early_stopping_patience: int | None = Field(
        None,
        gt=0,
        description="With eval.steps: stop when this many evaluations in a row did not improve the WER "
        "(or CER: eval.metric).",
    )

    @field_validator("keep", mode="before")
    @classmethod
    def _yaml_booleans(cls, value: Any) -> Any:
        """YAML reads a bare ``off`` (``eval.keep=off``) as false and ``on`` as true."""
        if value is False:
            return "off"
        if value is True:
            return "auto"
        return value


class OutputConfig(Section):
    dir: str = Field(
        "runs",
        description="Parent directory of run directories, relative to the working directory (also in a "
        "YAML file: outputs never go next to a preset). Inside a SageMaker job it defaults to "
        "SM_OUTPUT_DATA_DIR.",
    )
    run_name: str | None = Field(
        None, description="Run directory name; default '<UTC time>-<backend>-<model>'."
    )
    model_dir: str | None = Field(
        None,
        description="Where the final weights and processor go; default <run dir>/final. Inside a SageMaker "
        "job it defaults to SM_MODEL_DIR.",
    )
    save_final_model: bool = Field(True, description="Save the trained weights and processor.")
    plot: bool = Field(True, description="Write plot.png with the loss and WER curves.")
    license: str = Field(
        "apache-2.0",
        description="The licence field of the model card (final/README.md), a Hub licence id; Whisper's "
        "own weights are Apache-2.0 on the Hub (MIT in OpenAI's repository). Check your data's terms.",
    )
    push_to: str | None = Field(
        None,
        description="A Hub repo id (ORG/NAME): at the end of a run, upload final/ with its model card there, "
        "as 'whisper-tune push' does (needs a token: HF_TOKEN or 'hf auth login').",
    )
    push_private: bool = Field(False, description="With output.push_to: create the repo private.")

    @field_validator("run_name")
    @classmethod
    def _plain_name(cls, value: str | None) -> str | None:
        if value is not None and (not value or Path(value).name != value):
            raise ValueError("output.run_name must be a plain directory name, without '/'")
        return value

    @field_validator("push_to")
    @classmethod
    def _repo_id(cls, value: str | None) -> str | None:
        if value is not None and not REPO_ID.fullmatch(value):
            raise ValueError("output.push_to must be a Hub repo id ORG/NAME (letters, digits, '-', '_', '.')")
        return value


OptionsT = TypeVar("OptionsT", bound=BaseModel)


class BackendConfig(Section):
    name: str = Field(
        "reference", description="Backend that runs the training (see 'whisper-tune backends')."
    )
    options: SerializeAsAny[BaseModel] = Field(
        default_factory=lambda: NoOptions(),
        description="The backend's own options, written next to 'name' in YAML and validated by the backend.",
    )

    @field_validator("options", mode="before")
    @classmethod
    def _keep_unvalidated_keys(cls, value: Any) -> Any:
        """A mapping (a config read back from JSON) keeps its keys until its backend validates them."""
        return UncheckedOptions(**value) if isinstance(value, Mapping) else value

    def options_as(self, options_model: type[OptionsT]) -> OptionsT:
        """The options as ``options_model``, the backend's ``Options``, which validated them once (phase 2
        of ``whisper_tune.config_loading.validate``). A config built in Python without options gets that
        model's defaults; options its backend never validated are a ConfigError, not validated here."""
        if isinstance(self.options, options_model):
            return self.options
        if type(self.options) is NoOptions:
            return options_model()
        raise ConfigError(
            f"backend '{self.name}': its options were not validated by {options_model.__name__} "
            f"(they are a {type(self.options).__name__})",
            hint="build the configuration with whisper_tune.load_config (or config_loading.validate), or "
            "pass the backend's own options model as backend.options",
        )


class NoOptions(Section):
    """Options model of a backend that has none (and of a config built in Python without options)."""


class UncheckedOptions(BaseModel):
    """Backend options kept as given: their backend is not installed here (core-only validation), or the
    config was read back from JSON and its backend has not validated them yet."""

    model_config = ConfigDict(frozen=True, extra="allow")


class RunConfig(Section):
    """Everything one run needs. Build it with ``whisper_tune.load_config`` or directly in Python."""

    schema_version: Literal[1] = Field(1, description="Version of this configuration format.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The model to fine-tune.")
    data: DataConfig = Field(default_factory=DataConfig, description="Where the speech comes from.")
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="Optimisation settings.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Generation-based WER/CER evaluation.")
    output: OutputConfig = Field(default_factory=OutputConfig, description="Where results are written.")
    backend: BackendConfig = Field(default_factory=BackendConfig, description="How and where to train.")

    @model_validator(mode="after")
    def _cross_section_rules(self) -> RunConfig:
        if self.model.english_only and self.data.language_column is not None:
            raise ValueError(
                f"'{self.model.name}' is English-only: data.language_column needs a multilingual model "
                "(e.g. --model pip:base)"
            )
        regression = self.eval.regression_set
        names = {s.name for s in self.data.extra_eval}
        if regression not in (None, BUNDLED_REGRESSION) and regression not in names:
            raise ValueError(
                f"eval.regression_set '{regression}' is neither 'bundled' nor a data.extra_eval set "
                f"({', '.join(sorted(names)) or 'none defined'})"
            )
        if BUNDLED_REGRESSION in names or "regression" in names:
            raise ValueError("'bundled' and 'regression' are reserved names for data.extra_eval sets")
        return self

    def to_yaml_dict(self) -> dict[str, Any]:
        """A plain dict in the YAML layout (backend options written flat next to the name)."""
        data = self.model_dump(mode="json", exclude={"backend"})
        data["backend"] = {"name": self.backend.name, **self.backend.options.model_dump(mode="json")}
        return data


PositiveInt = Annotated[int, Field(gt=0)]
