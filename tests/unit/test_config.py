"""Config schema and loader: layering, two-phase validation, error messages."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from whisper_tune.backend.reference import ReferenceBackend, ReferenceOptions
from whisper_tune.backend.registry import Registry
from whisper_tune.config.load import (
    UncheckedOptions,
    load_config,
    merge_sources,
    parse_override,
    validate,
)
from whisper_tune.config.schema import ModelConfig, RunConfig
from whisper_tune.errors import BackendUnavailableError, ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_validate_and_are_frozen() -> None:
    cfg = load_config()
    assert cfg.backend.name == "reference"
    assert isinstance(cfg.backend.options, ReferenceOptions)
    with pytest.raises(ValidationError):
        cfg.training.learning_rate = 1.0  # type: ignore[misc]


def test_precedence_yaml_then_overrides_then_flags(tmp_path: Path) -> None:
    path = write(tmp_path, "model: {name: a}\ntraining: {learning_rate: 0.1, batch_size: 4}\n")
    cfg = load_config(path, ["training.learning_rate=0.5", "model.name=b"], model="c")
    assert cfg.training.learning_rate == 0.5
    assert cfg.training.batch_size == 4
    assert cfg.model.name == "c"


def test_override_values_are_yaml_typed() -> None:
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("a=null") == (["a"], None)
    assert parse_override("a=[1, 2]") == (["a"], [1, 2])
    assert parse_override("a=true") == (["a"], True)
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("training.max_steps")


def test_typo_names_the_path_and_suggests(tmp_path: Path) -> None:
    path = write(tmp_path, "training:\n  learning_rte: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "training.learning_rte: unknown key (did you mean 'learning_rate'?)" in err.value.message


def test_typo_in_backend_options_is_phase_two() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["backend.thread=2"])
    assert "backend.thread: unknown key (did you mean 'threads'?)" in err.value.message
    assert load_config(None, ["backend.threads=2"]).backend.options.threads == 2  # type: ignore[attr-defined]


def test_all_errors_reported_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["training.batch_size=0", "eval.num_beams=0", "data.oops=1"])
    text = err.value.message
    assert "training.batch_size" in text and "eval.num_beams" in text and "data.oops" in text


def test_language_names_and_codes() -> None:
    assert ModelConfig(name="openai/whisper-small", language="Marathi").language == "mr"
    assert ModelConfig(language="ca").language == "ca"
    with pytest.raises(ValidationError, match="did you mean 'marathi'"):
        ModelConfig(language="marathii")


def test_english_only_model_refuses_a_language() -> None:
    with pytest.raises(ValidationError, match="English-only"):
        ModelConfig(name="openai/whisper-tiny.en", language="mr")
    assert ModelConfig(name="pip:tiny.en", language="en").english_only


def test_unknown_backend_suggests() -> None:
    with pytest.raises(
        ConfigError, match="backend.name: unknown backend 'referenc'.*did you mean 'reference'"
    ):
        load_config(None, backend="referenc")
    with pytest.raises(ConfigError, match="unknown backend 'cuda-lor'"):  # also when options stay unchecked
        validate(merge_sources(None, ["backend.name=cuda-lor"]), require_backend=False)


def test_backend_shorthand_keeps_its_name_under_overrides(tmp_path: Path) -> None:
    raw = merge_sources(
        write(tmp_path, "backend: ipu\n"), ["backend.layers_per_ipu=[2, 2]"], flags={"backend.ipus": 4}
    )
    assert raw["backend"] == {"name": "ipu", "layers_per_ipu": [2, 2], "ipus": 4}


def test_known_backend_not_installed_gives_install_command() -> None:
    only_reference = Registry(
        [], instances={"reference": ReferenceBackend()}
    )  # as if nothing else were installed
    with pytest.raises(BackendUnavailableError) as err:
        load_config(None, backend="ipu", registry=only_reference)
    assert "pip install" in (err.value.hint or "")


def test_core_only_validation_keeps_options_of_missing_backend() -> None:
    cfg = validate(
        merge_sources(None, ["backend.name=ipu", "backend.layers_per_ipu=[5, 7, 5, 7]"]),
        require_backend=False,
        registry=Registry([], instances={"reference": ReferenceBackend()}),
    )
    assert isinstance(cfg.backend.options, UncheckedOptions)
    assert cfg.to_yaml_dict()["backend"] == {"name": "ipu", "layers_per_ipu": [5, 7, 5, 7]}


def test_flags_map_to_backend_options() -> None:
    with pytest.raises(ConfigError, match="backend.ipus: unknown key"):
        load_config(None, ipus=4)  # the reference backend has no IPUs


def test_sagemaker_environment_fills_only_unset_keys(tmp_path: Path) -> None:
    env = {
        "SM_CHANNEL_TRAIN": "/opt/ml/input/data/train",
        "SM_OUTPUT_DATA_DIR": "/opt/ml/output",
        "SM_MODEL_DIR": "/opt/ml/model",
    }
    cfg = load_config(None, env=env)
    assert cfg.data.dataset == "/opt/ml/input/data/train"
    assert cfg.output.dir == "/opt/ml/output"
    assert cfg.output.model_dir == "/opt/ml/model"
    path = write(tmp_path, "data: {dataset: mine}\n")
    assert load_config(path, env=env).data.dataset == "mine"


def test_bad_yaml_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not valid YAML \(line 3"):
        load_config(write(tmp_path, "model:\n  name: [unclosed\n"))
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="no config file or preset"):
        load_config("does-not-exist")


def test_yaml_round_trip() -> None:
    import yaml

    cfg = load_config(None, ["training.max_steps=3", "backend.threads=1"])
    again = validate(yaml.safe_load(yaml.safe_dump(cfg.to_yaml_dict())))
    assert again == cfg


def test_cross_field_rules() -> None:
    with pytest.raises(ConfigError, match="eval_split or data.test_size"):
        load_config(None, ["data.test_size=0.2"])
    assert load_config(None, ["data.test_size=0.2", "data.eval_split=null"]).data.test_size == 0.2
    with pytest.raises(ConfigError, match="warmup_steps"):
        load_config(None, ["training.max_steps=2", "training.warmup_steps=5"])
    with pytest.raises(ConfigError, match="run_name"):
        load_config(None, ["output.run_name=a/b"])


def test_run_config_is_importable_from_the_top() -> None:
    import whisper_tune

    assert whisper_tune.RunConfig is RunConfig
