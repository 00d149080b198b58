"""The fixtures of tests/fixtures/hf.py are what they claim: every tiny model folder is a
Hugging Face folder that llama.cpp's converter takes, both config styles and a sharded
checkpoint are among them, and llama.cpp runs the real models' reference GGUFs
deterministically.

Cold, this makes every fixture (~5 min on 2 cores, besides the llama.cpp build); cached,
a few seconds.
"""
import json
import math
import os

import pytest

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
if not CI:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

from fixtures import hf  # noqa: E402

ARCH = {"tiny-llama": "llama", "tiny-mistral": "llama", "tiny-qwen2": "qwen2",
        "tiny-qwen3": "qwen3", "tiny-gemma3": "gemma3", "tiny-phi3": "phi3", "tiny-bert": "bert",
        "smollm2-135m": "llama", "minilm": "bert"}


def _str(reader, key):
    f = reader.fields[key]
    return bytes(f.parts[f.data[0]]).decode()


@pytest.mark.parametrize("name", hf.TINY_NAMES)
def test_tiny_model_converts(name):
    d = hf.model_dir(name)
    files = {p.name for p in d.iterdir()}
    assert {"config.json", "tokenizer.json", "tokenizer_config.json"} <= files
    assert any(f.endswith(".safetensors") for f in files)
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["vocab_size"] >= len(json.loads((d / "tokenizer.json").read_text())["model"]["vocab"])
    for kind in ("f32", "q4_0_pure"):
        r = gguf.GGUFReader(hf.reference_gguf(name, kind))
        assert _str(r, "general.architecture") == ARCH[name]
        assert len(r.fields["tokenizer.ggml.tokens"].data) == cfg["vocab_size"]
        types = {t.tensor_type for t in r.tensors}
        if kind == "q4_0_pure":
            assert gguf.GGMLQuantizationType.Q4_0 in types
        else:
            assert types == {gguf.GGMLQuantizationType.F32}


def test_fixture_variety():
    """Both rope config styles, a sharded checkpoint, tied and untied, several dtypes."""
    cfgs = {n: json.loads((hf.model_dir(n) / "config.json").read_text()) for n in hf.TINY_NAMES}
    decoders = [n for n in hf.TINY_NAMES if n != "tiny-bert"]
    assert any("rope_theta" in cfgs[n] and "rope_parameters" not in cfgs[n] for n in decoders)
    assert any("rope_parameters" in cfgs[n] and "rope_theta" not in cfgs[n] for n in decoders)
    assert any((hf.model_dir(n) / "model.safetensors.index.json").exists() for n in decoders)
    ties = {bool(cfgs[n].get("tie_word_embeddings")) for n in decoders}
    assert ties == {True, False}
    dtypes = {cfgs[n].get("dtype") or cfgs[n].get("torch_dtype") for n in hf.TINY_NAMES}
    assert {"bfloat16", "float16", "float32"} <= dtypes


def test_smollm2_generates_deterministically():
    ref = hf.reference_gguf("smollm2-135m")
    a = hf.llama_generate(ref, "The capital of France is", 12)
    b = hf.llama_generate(ref, "The capital of France is", 12)
    print(f"\nsmollm2-135m Q4_0 (llama.cpp, greedy): {a!r}")
    assert a.strip() and a == b


def test_minilm_embeds_deterministically():
    ref = hf.reference_gguf("minilm")
    a = hf.llama_embed(ref, "A sentence to embed.")
    b = hf.llama_embed(ref, "A sentence to embed.")
    assert len(a) == 384 and all(math.isfinite(v) for v in a)
    assert a == b and any(v != 0 for v in a)
