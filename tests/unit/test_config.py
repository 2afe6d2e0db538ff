"""Config schema and loader: layering, two-phase validation, error messages."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from whisper_tune.backend.protocol import Flag
from whisper_tune.backend.registry import Registry
from whisper_tune.config.schema import BackendConfig, ModelConfig, NoOptions, RunConfig
from whisper_tune.config_loading import (
    UncheckedOptions,
    dump_yaml,
    load_config,
    merge_sources,
    parse_override,
    validate,
)
from whisper_tune.errors import BackendUnavailableError, ConfigError
from whisper_tune.execution.reference_backend import ReferenceBackend, ReferenceOptions


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


def test_options_reach_the_backend_typed_once() -> None:
    cfg = load_config(None, ["backend.threads=2"])
    options = cfg.backend.options_as(ReferenceOptions)
    assert options is cfg.backend.options and options.threads == 2  # the object validated at load
    # a config built in Python without options: the backend's defaults
    assert RunConfig().backend.options_as(ReferenceOptions) == ReferenceOptions()
    assert isinstance(RunConfig().backend.options, NoOptions)


def test_options_no_backend_validated_are_refused_not_revalidated() -> None:
    # read back from JSON, the options keep their keys (not silently dropped) until a backend validates
    round_trip = RunConfig.model_validate_json(load_config(None, ["backend.threads=2"]).model_dump_json())
    assert isinstance(round_trip.backend.options, UncheckedOptions)
    assert round_trip.backend.options.model_dump() == {"device": "cpu", "threads": 2, "num_workers": 0}
    with pytest.raises(ConfigError, match="not validated by ReferenceOptions") as err:
        round_trip.backend.options_as(ReferenceOptions)
    assert "load_config" in (err.value.hint or "")
    wrong = BackendConfig(name="reference", options=UncheckedOptions(threads="many"))
    with pytest.raises(ConfigError, match="backend 'reference': its options were not validated"):
        wrong.options_as(ReferenceOptions)
    assert validate(round_trip.to_yaml_dict()).backend.options == ReferenceOptions(threads=2)


def test_backend_flags_set_the_key_their_backend_declares() -> None:
    class WithFlag(ReferenceBackend):
        flags = (Flag("--threads", "backend.threads", "torch CPU threads", min=1),)

    registry = Registry([], instances={"reference": WithFlag()})
    cfg = load_config(None, ["backend.threads=1"], backend_flags={"--threads": 2}, registry=registry)
    assert cfg.backend.options_as(ReferenceOptions).threads == 2  # flags win over key=value
    assert load_config(None, backend_flags={"--threads": None}, registry=registry).backend.options == (
        ReferenceOptions()
    )  # an unset flag sets nothing


def test_a_flag_of_another_backend_names_that_backend() -> None:
    class Other(ReferenceBackend):
        name = "other"
        flags = (Flag("--ipus", "backend.ipus", "IPUs"),)

    registry = Registry([], instances={"reference": ReferenceBackend(), "other": Other()})
    with pytest.raises(ConfigError, match="--ipus is a flag of the other backend, not of the configured "
                       "backend 'reference'") as err:
        load_config(None, backend_flags={"--ipus": 4}, registry=registry)
    assert err.value.hint == "choose the backend, e.g. --backend other, or leave --ipus out"
    with pytest.raises(ConfigError, match="--nope: no installed backend has this flag"):
        load_config(None, backend_flags={"--nope": 4}, registry=registry)


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
    # a warm-up longer than the run is a warning when the run starts (pipeline.warmup_issues), not an error
    assert load_config(None, ["training.max_steps=2", "training.warmup_steps=5"]).training.warmup_steps == 5
    with pytest.raises(ConfigError, match="run_name"):
        load_config(None, ["output.run_name=a/b"])


def test_run_config_is_importable_from_the_top() -> None:
    import whisper_tune

    assert whisper_tune.RunConfig is RunConfig


def test_a_section_error_shows_only_the_values_it_names() -> None:
    with pytest.raises(ConfigError) as err:
        load_config("quickstart", ["data.eval_split=test", "data.test_size=0.1"])
    assert "(got eval_split='test', test_size=0.1)" in err.value.message
    assert "train_split" not in err.value.message and "{" not in err.value.message
    with pytest.raises(ConfigError) as err:  # the message already quotes the values: nothing added
        load_config("quickstart", ["model.language=mr"])
    assert "'mr'" in err.value.message and "got" not in err.value.message
    with pytest.raises(ConfigError, match=r"learning_rate: must be greater than 0 \(got -1\)"):
        load_config("quickstart", ["training.learning_rate=-1"])


def test_overrides_index_lists() -> None:
    cfg = load_config("quickstart", ["data.extra_eval.0.split=eval", "data.extra_eval.0.max_samples=2"])
    assert cfg.data.extra_eval[0].split == "eval" and cfg.data.extra_eval[0].max_samples == 2
    with pytest.raises(ConfigError, match="index from 0 to 0"):
        load_config("quickstart", ["data.extra_eval.3.split=eval"])


def test_input_paths_in_a_yaml_file_are_relative_to_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    (project / "configs").mkdir(parents=True)
    (project / "audio").mkdir()
    (project / "configs" / "model").mkdir()
    (project / "configs" / "x.yaml").write_text(
        "model: {name: model}\n"  # exists next to the file: a local directory
        "data:\n"
        "  dataset: ../audio\n"
        "  extra_eval: [{name: more, dataset: ./more.csv}, {name: hub, dataset: org/set}]\n"
        "output: {dir: runs}\n"
        "training: {resume_from: runs/r/checkpoints/step-000002}\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(project / "configs" / "x.yaml")
    assert cfg.model.name == str(project / "configs" / "model")
    assert cfg.data.dataset == str(project / "audio")
    assert cfg.data.extra_eval[0].dataset == str(project / "configs" / "more.csv")  # a manifest: a path
    assert cfg.data.extra_eval[1].dataset == "org/set"  # not there: a hub name, as written
    assert cfg.output.dir == "runs"  # outputs stay relative to the working directory
    assert cfg.training.resume_from == "runs/r/checkpoints/step-000002"
    # on the command line a path is relative to the working directory
    cfg = load_config(project / "configs" / "x.yaml", ["data.dataset=./mine", "model.name=pip:tiny.en"])
    assert cfg.data.dataset == "./mine" and cfg.model.name == "pip:tiny.en"
    # the run's config.yaml holds the resolved paths, so it reloads to the same config from anywhere
    saved = tmp_path / "config.yaml"
    saved.write_text(dump_yaml(load_config(project / "configs" / "x.yaml")))
    assert load_config(saved) == load_config(project / "configs" / "x.yaml")


def test_the_quickstart_preset_finds_its_data_from_any_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config("quickstart")
    assert Path(cfg.data.dataset or "").is_absolute()
    assert (Path(cfg.data.dataset or "") / "train" / "metadata.csv").is_file()
    assert (Path(cfg.data.extra_eval[0].dataset) / "other-voice" / "metadata.csv").is_file()


def test_backend_device_cpu_is_read_by_the_reference_backend_too() -> None:
    """The CPU switch is spelled backend.device=cpu on every backend; the reference backend is the CPU."""
    assert load_config(None, ["backend.device=cpu"]).backend.options.device == "cpu"  # type: ignore[attr-defined]
    assert load_config(None, ["backend.cpu=true"]).backend.options.device == "cpu"  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="backend.device: must be 'cpu' \\(got 'cuda'\\)"):
        load_config(None, ["backend.device=cuda"])
