"""GGUF: files written by gguf-py read right; our output read back by gguf.GGUFReader."""

import numpy as np
import pytest

from helpers import llama_like, parse_apr, run, write_bytes, write_gguf_tensors

import q4apr

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType


def write_gguf_with_gguf_py(path, tensors, extra_kv=True):
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny llama")
    if extra_kv:
        w.add_context_length(128)
        w.add_float32("test.f32", 0.5)
        w.add_bool("test.bool", True)
        w.add_array("test.strings", ["a", "bé", "<s>"])
        w.add_array("test.ints", list(range(100)))
        w.add_uint64("test.u64", 1 << 40)
        w.add_int8("test.i8", -3)
    write_gguf_tensors(w, tensors)
    return str(path)


@pytest.fixture
def gguf_file(tmp_path):
    rng = np.random.default_rng(5)
    t = {
        "token_embd.weight": (rng.standard_normal((96, 64)).astype(np.float32), Q.F32),
        "blk.0.attn_q.weight": (rng.standard_normal((64, 64)).astype(np.float16), Q.F16),
        "blk.0.ffn_up.weight": (rng.standard_normal((128, 64)).astype(np.float32), Q.Q8_0),
        "blk.0.ffn_down.weight": (rng.standard_normal((64, 128)).astype(np.float32), Q.Q4_0),
        "blk.0.attn_norm.weight": (np.ones(64, np.float32), Q.F32),
        "output.weight": (rng.standard_normal((96, 64)).astype(np.float32), Q.F32),
    }
    return write_gguf_with_gguf_py(tmp_path / "tiny.gguf", t), t


def test_reads_gguf_py_files(gguf_file):
    path, t = gguf_file
    m = q4apr.open_model(path)
    assert m.format == "gguf" and m.name == "tiny llama"
    got = {e.name: (e.shape, e.dtype.name) for e in m.tensors}
    want = {"F32": "F32", "F16": "F16", "Q8_0": "Q8_0", "Q4_0": "Q4_0"}
    for name, (arr, qt) in t.items():
        assert got[name] == (arr.shape, want[qt.name])
    assert m.metadata["test.strings"] == ["a", "bé", "<s>"]
    assert m.metadata["general.architecture"] == "llama"


def test_gguf_output_is_read_back_by_gguf_py_and_matches_its_quantizer(gguf_file, tmp_path):
    path, t = gguf_file
    out, report = run([path], format="gguf", chunk_bytes=1000, pure=True)   # Q4_0 everywhere
    outp = write_bytes(tmp_path / "out.gguf", out)
    r = gguf.GGUFReader(outp)
    by = {x.name: x for x in r.tensors}
    assert set(by) == set(t)
    # Q4_0 input passes through byte for byte
    assert by["blk.0.ffn_down.weight"].data.tobytes() == gguf.quants.quantize(
        t["blk.0.ffn_down.weight"][0], Q.Q4_0).tobytes()
    # F32 / F16 matrices become Q4_0 exactly as gguf-py quantizes them
    for name in ("token_embd.weight", "output.weight", "blk.0.attn_q.weight"):
        x = t[name][0].astype(np.float32)
        assert by[name].tensor_type == Q.Q4_0
        assert by[name].data.tobytes() == gguf.quants.quantize(x, Q.Q4_0).tobytes()
        assert list(by[name].shape) == list(reversed(x.shape))
    # Q8_0 is decoded, then quantized to Q4_0
    q8 = gguf.quants.dequantize(gguf.quants.quantize(t["blk.0.ffn_up.weight"][0], Q.Q8_0), Q.Q8_0)
    assert by["blk.0.ffn_up.weight"].data.tobytes() == gguf.quants.quantize(q8, Q.Q4_0).tobytes()
    assert by["blk.0.attn_norm.weight"].tensor_type == Q.F32
    f = r.fields
    assert f["general.file_type"].contents() == 2
    assert f["general.quantization_version"].contents() == 2
    assert f["test.strings"].contents() == ["a", "bé", "<s>"]
    assert f["test.u64"].contents() == 1 << 40
    assert f["general.architecture"].contents() == "llama"
    assert report["totals"]["quantized"] == 4


def test_gguf_requantize_is_identity(gguf_file, tmp_path):
    out1, _ = run([gguf_file[0]], format="gguf")
    p = write_bytes(tmp_path / "once.gguf", out1)
    out2, rep = run([p], format="gguf", chunk_bytes=256)
    assert out2 == out1
    assert all(t["action"] in ("passthrough", "keep") for t in rep["tensors"])


def test_safetensors_to_gguf_rows_not_multiple_of_32_stay_f16(tmp_path):
    from safetensors.numpy import save_file
    rng = np.random.default_rng(2)
    p = str(tmp_path / "m.safetensors")
    save_file({"a.weight": rng.standard_normal((8, 48)).astype(np.float32),
               "b.weight": rng.standard_normal((8, 64)).astype(np.float32)}, p)
    out, rep = run([p], format="gguf")
    r = gguf.GGUFReader(write_bytes(tmp_path / "o.gguf", out))
    types = {t.name: t.tensor_type for t in r.tensors}
    assert types == {"a.weight": Q.F16, "b.weight": Q.Q4_0}
    reasons = {t["name"]: t["reason"] for t in rep["tensors"]}
    assert "multiple of 32" in reasons["a.weight"]


def test_gguf_to_apr_keeps_scalar_metadata(gguf_file):
    out, _ = run([gguf_file[0]])
    _, meta, tensors = parse_apr(out)
    assert meta["model_type"] == "llama" and meta["original_format"] == "gguf"
    assert meta["gguf_metadata"]["test.u64"] == 1 << 40
    assert tensors["blk.0.ffn_down.weight"][0] == 128


def test_llama_like_to_gguf_reads_back(tmp_path):
    from safetensors.numpy import save_file
    p = str(tmp_path / "model.safetensors")
    save_file(llama_like(np.random.default_rng(0)), p)
    out, _ = run([p], format="gguf", keep_embeddings_f16=True)
    r = gguf.GGUFReader(write_bytes(tmp_path / "model.Q4_0.gguf", out))
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert types["model.embed_tokens.weight"] == "F16"
    assert types["lm_head.weight"] == "Q8_0"   # the Q4_0 mixture's Q6_K; rows of 64: Q8_0
    assert types["model.norm.weight"] == "F32"
    assert r.alignment == 32
