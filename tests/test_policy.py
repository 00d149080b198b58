"""Which tensors become Q4, and why: every rule of the policy, and its refusals."""

import numpy as np
import pytest

import q4apr
from q4apr.dtypes import BY_NAME
from q4apr.model import TensorEntry
from q4apr.policy import decide


def entry(name, shape, dtype="F32"):
    return TensorEntry(name, tuple(shape), BY_NAME[dtype], 0, "m.safetensors")


def out(name, shape, dtype="F32", fmt="safetensors", **opts):
    d = decide(entry(name, shape, dtype), q4apr.Options(**opts), fmt)
    return d and (d.dtype_out.name, d.action)


@pytest.mark.parametrize("name,shape,want", [
    ("model.layers.0.self_attn.q_proj.weight", (64, 64), ("APR_Q4", "quantize")),
    # llama-quantize's Q4_0 mixture: the output head (alone, an embedding counts as tied)
    # at Q6_K, which APR holds only for rows of whole 256-blocks: F16 here
    # at Q6_K; rows that are not whole 256-blocks go in Aprender's row layout (llama.cpp:
    # Q8_0, which APR lacks), unless padding them makes them larger than F16
    ("model.embed_tokens.weight", (96, 576), ("Q6_K", "quantize")),
    ("lm_head.weight", (96, 576), ("Q6_K", "quantize")),
    ("lm_head.weight", (96, 64), ("F16", "convert")),
    ("lm_head.weight", (96, 256), ("Q6_K", "quantize")),
    ("model.norm.weight", (64,), ("F32", "keep")),
    ("model.layers.0.self_attn.q_proj.bias", (64,), ("F32", "keep")),
    ("blk.0.ffn_gate_inp.weight", (8, 64), ("F32", "keep")),          # MoE router
    ("transformer.wpe.weight", (1024, 64), ("F32", "keep")),          # positions
    ("some.matrix", (64, 64), ("F32", "keep")),                       # not a weight
])
def test_default_policy(name, shape, want):
    assert out(name, shape) == want


@pytest.mark.parametrize("name,shape,want", [
    ("blk.0.attn_q.weight", (64, 64), ("Q4_0", "quantize")),
    ("output.weight", (96, 512), ("Q6_K", "quantize")),
    ("output.weight", (96, 64), ("Q8_0", "quantize")),      # Q6_K's rows are 256-blocks
    ("token_embd.weight", (96, 64), ("Q8_0", "quantize")),  # alone: tied
    ("output.weight", (96, 48), ("F16", "convert")),        # not even 32-blocks
    ("blk.0.attn_q.weight", (64, 80), ("F16", "convert")),
    ("position_embd.weight", (64, 64), ("F32", "keep")),
    ("token_types.weight", (2, 64), ("F32", "keep")),
    ("blk.0.attn_q.weight", (1, 64), ("F32", "keep")),      # ggml counts it 1-D
])
def test_default_gguf_policy_is_llama_quantize_q4_0(name, shape, want):
    assert out(name, shape, fmt="gguf", format="gguf") == want


@pytest.mark.parametrize("name,shape,fmt,want", [
    ("blk.0.attn_q.weight", (64, 512), "gguf", ("Q4_K", "quantize")),
    ("blk.0.attn_q.weight", (64, 64), "gguf", ("Q5_0", "quantize")),
    ("blk.0.attn_v.weight", (64, 512), "gguf", ("Q6_K", "quantize")),   # layer 0 of 1
    ("output.weight", (96, 64), "gguf", ("Q8_0", "quantize")),
    ("model.layers.0.self_attn.q_proj.weight", (64, 512), "apr", ("Q4_K", "quantize")),
    ("model.layers.0.self_attn.q_proj.weight", (64, 576), "apr", ("Q4_K", "quantize")),  # padded
    ("model.layers.0.self_attn.q_proj.weight", (64, 64), "apr", ("F16", "convert")),  # 18 bits
    ("model.layers.0.self_attn.q_proj.weight", (2, 64, 576), "apr", ("F16", "convert")),  # 3-D
    ("lm_head.weight", (96, 256), "apr", ("Q6_K", "quantize")),
])
def test_q4_k_m_policy(name, shape, fmt, want):
    assert out(name, shape, fmt="gguf" if name.startswith(("blk", "output")) else "safetensors",
               format=fmt, type="Q4_K_M") == want


def test_npy_and_npz_matrices_count_as_weights():
    assert out("arr_0", (64, 64), fmt="npz") == ("APR_Q4", "quantize")


def test_f16_input_vectors_become_f32():
    assert out("model.norm.weight", (64,), "F16") == ("F32", "convert")


def test_keep_embeddings_and_output_f16():
    assert out("model.embed_tokens.weight", (96, 64), keep_embeddings_f16=True) == ("F16", "convert")
    assert out("token_embd.weight", (96, 64), keep_embeddings_f16=True) == ("F16", "convert")
    assert out("lm_head.weight", (96, 64), keep_output_f16=True) == ("F16", "convert")
    assert out("output.weight", (96, 64), "F16", keep_output_f16=True) == ("F16", "keep")
    assert out("lm_head.weight", (96, 256), keep_embeddings_f16=True) == ("Q6_K", "quantize")


def test_pure_is_llama_quantize_pure_and_apr_pure_quantizes_vectors_too():
    assert out("model.norm.weight", (64,), pure=True) == ("APR_Q4", "quantize")
    assert out("lm_head.weight", (96, 64), pure=True) == ("APR_Q4", "quantize")
    assert out("lm_head.weight", (96, 64), pure=True, format="gguf") == ("Q4_0", "quantize")
    assert out("a.weight", (64, 512), pure=True, format="gguf", type="Q4_K_M") == ("Q4_K", "quantize")
    assert out("a.weight", (64, 64), pure=True, format="gguf", type="Q4_K_M") == ("Q5_0", "quantize")
    assert out("a.weight", (64, 576), pure=True, format="apr", type="Q4_K_M") == ("Q4_K", "quantize")
    assert out("a.weight", (64, 64), pure=True, format="apr", type="Q4_K_M") == ("F16", "convert")
    assert out("a.weight", (2, 64, 576), pure=True, format="apr", type="Q4_K_M") == ("F16", "convert")
    assert out("model.norm.weight", (40,), pure=True, type="Q4_K_M") == ("Q4_K", "quantize")
    # llama-quantize --pure never quantizes a 1-D tensor or a tensor not named like a weight
    assert out("some.matrix", (64, 64), pure=True, format="gguf") == ("F32", "keep")
    assert out("model.norm.weight", (40,), pure=True, format="gguf") == ("F32", "keep")


def test_skip_patterns_keep_the_input_type():
    assert out("a.q_proj.weight", (64, 64), "BF16", skip=("*q_proj*",)) == ("BF16", "keep")
    assert out("a.k_proj.weight", (64, 64), skip=("*q_proj*",)) == ("APR_Q4", "quantize")


def test_gguf_rows_must_be_whole_blocks():
    assert out("a.weight", (64, 48), format="gguf") == ("F16", "convert")
    assert out("a.weight", (64, 48), format="apr") == ("APR_Q4", "quantize")   # APR flattens


def test_already_quantized_passes_through_and_integers_are_kept():
    assert out("a.weight", (64, 64), "APR_Q4") == ("APR_Q4", "passthrough")
    assert out("a.weight", (64, 64), "Q4_0", format="gguf") == ("Q4_0", "passthrough")
    assert out("a.weight", (64, 64), "Q4_0", format="apr") == ("APR_Q4", "quantize")
    assert out("ids", (5,), "I32") == ("I32", "passthrough")
    assert out("ids", (5,), "I16") is None           # APR has no I16: the pipeline refuses


def test_unstorable_dtype_is_refused_naming_the_tensor(tmp_path):
    np.savez(tmp_path / "m.npz", ids=np.arange(4, dtype=np.int16))
    with q4apr.open_model(str(tmp_path / "m.npz")) as m:
        with pytest.raises(q4apr.BadInput, match=r"m\.npz.*'ids'.*I16.*APR"):
            q4apr.quantize(m, q4apr.MemorySink(), q4apr.Options())


@pytest.mark.parametrize("bad,match", [({"format": "onnx"}, "onnx"), ({"colour": 1}, "colour"),
                                       ({"chunk_bytes": 3}, "chunk"),
                                       ({"chunk_bytes": 1 << 40}, "too large"),
                                       ({"skip": [1]}, "strings"),
                                       ({"type": "Q4_K_S"}, "Q4_K_S")])
def test_bad_options_are_refused(bad, match):
    with pytest.raises(q4apr.BadInput, match=match):
        q4apr.Options.from_dict(bad)


def test_every_decision_is_reported_with_its_reason(tmp_path):
    from helpers import llama_like, run
    np.savez(tmp_path / "m.npz", **llama_like(np.random.default_rng(0)))
    _, rep = run([str(tmp_path / "m.npz")], keep_output_f16=True, skip=["*down_proj*"])
    reasons = {t["name"]: t["reason"] for t in rep["tensors"]}
    assert reasons["lm_head.weight"] == "output head kept at F16 (option)"
    assert "skipped by pattern" in reasons["model.layers.0.mlp.down_proj.weight"]
    assert reasons["model.norm.weight"].startswith("1-D")
    assert all(r for r in reasons.values())
