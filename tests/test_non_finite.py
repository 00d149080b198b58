"""NaN and Inf in any float tensor written: refused (tensor and first flat index), or with
allow_non_finite / --allow-non-finite written as they are and counted per tensor.

Every input format, and the three ways a tensor is written: kept (bytes copied),
converted (decoded, e.g. BF16 -> F32, F32 -> F16) and passed through as stored (a block
type, judged by its block scales).  Small chunks, so the bad value is not in the first.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import hostile
from helpers import bf16_bytes, parse_apr, run, safetensors_bytes, write_bytes, write_gguf_tensors

import q4apr

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHUNK = 128   # 32 F32 values per chunk


def refused(paths, **options):
    with pytest.raises(q4apr.BadInput) as e:
        run(paths, chunk_bytes=CHUNK, **options)
    return e.value.message


def allowed(paths, **options):
    data, rep = run(paths, chunk_bytes=CHUNK, allow_non_finite=True, **options)
    return data, rep, {t["name"]: t for t in rep["tensors"]}


def with_bad(a, index, value):
    a = np.array(a, copy=True)
    a.reshape(-1)[index] = value
    return a


def st(tmp_path, tensors):
    """{name: (safetensors dtype, array)} -> a .safetensors path."""
    raw = {}
    for name, (dtype, a) in tensors.items():
        b = bf16_bytes(a) if dtype == "BF16" else np.ascontiguousarray(a).tobytes()
        raw[name] = (dtype, a.shape, b)
    return write_bytes(tmp_path / "m.safetensors", safetensors_bytes(raw))


# ------------------------------------------------------------------ safetensors, every path

ST_CASES = [
    # id, safetensors dtype, numpy dtype, shape, options, bad flat index, value, dtype_out
    ("kept-f32-norm", "F32", np.float32, (100,), {}, 37, np.nan, "F32"),
    ("kept-f32-not-a-weight", "F32", np.float32, (4, 64), {}, 200, -np.inf, "F32"),
    ("kept-f16-skipped", "F16", np.float16, (4, 64), {"skip": ("w.*",)}, 130, np.inf, "F16"),
    ("kept-bf16-skipped", "BF16", np.float32, (4, 64), {"skip": ("w.*",)}, 65, -np.inf, "BF16"),
    ("kept-f64-skipped", "F64", np.float64, (2, 64), {"skip": ("w.*",)}, 99, np.nan, "F64"),
    ("converted-bf16-f32", "BF16", np.float32, (100,), {}, 70, np.inf, "F32"),
    ("converted-f16-f32", "F16", np.float16, (100,), {}, 33, np.nan, "F32"),
    ("converted-f64-f32", "F64", np.float64, (100,), {}, 99, -np.inf, "F32"),
    ("converted-f32-f16", "F32", np.float32, (8, 64), {"keep_embeddings_f16": True}, 300,
     np.nan, "F16"),
    ("converted-f32-f16-gguf-rows", "F32", np.float32, (4, 48), {"format": "gguf"}, 100,
     np.inf, "F16"),
]


@pytest.mark.parametrize("case", ST_CASES, ids=[c[0] for c in ST_CASES])
def test_safetensors_kept_and_converted(tmp_path, case):
    _, dtype, np_dtype, shape, options, index, value, dtype_out = case
    name = {"kept-f32-not-a-weight": "w.bias_table", "converted-f32-f16": "model.embed_tokens.weight",
            "converted-f32-f16-gguf-rows": "w.weight"}.get(case[0], "w.weight" if len(shape) > 1
                                                           else "model.norm.weight")
    good = np.random.default_rng(1).standard_normal(shape).astype(np_dtype)
    bad = with_bad(good, index, value)
    p = st(tmp_path, {name: (dtype, bad), "other.weight": ("F32", np.ones((2, 32), np.float32))})

    msg = refused([p], **options)
    assert f"'{name}'" in msg and f"at flat index {index} " in msg and "non-finite weight" in msg
    assert "m.safetensors" in msg and "--allow-non-finite" in msg

    data, rep, t = allowed([p], **options)
    assert t[name]["dtype_out"] == dtype_out and t[name]["non_finite"] == 1
    assert t["other.weight"]["non_finite"] == 0 and rep["totals"]["non_finite"] == 1
    assert t[name]["action"] in ("keep", "convert")
    if options.get("format") != "gguf":   # the value is in the file, where it was
        raw = parse_apr(data)[2][name][2]
        out = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32) \
            if dtype_out == "BF16" else np.frombuffer(raw, {"F32": "<f4", "F16": "<f2", "F64": "<f8"}[dtype_out])
        assert np.isnan(out[index]) if np.isnan(value) else out[index] == value
        assert np.isfinite(np.delete(out, index)).all()


def test_quantized_tensor_refused_or_kept_at_f32(tmp_path):
    a = with_bad(np.random.default_rng(2).standard_normal((4, 64)).astype(np.float32), 131, np.nan)
    p = st(tmp_path, {"w.weight": ("F32", a)})
    msg = refused([p])
    assert "'w.weight'" in msg and "at flat index 131 " in msg
    for fmt in ("apr", "gguf"):
        _, _, t = allowed([p], format=fmt)
        w = t["w.weight"]
        assert w["dtype_out"] == "F32" and w["non_finite"] == 1
        assert "non-finite values cannot be quantized: kept at F32" in w["reason"]
        assert w["mse"] is None
    assert parse_apr(run([p], allow_non_finite=True)[0])[2]["w.weight"][2] == a.tobytes()


@pytest.mark.parametrize("fmt,qtype,name,want", [
    ("gguf", "Q4_K_M", "model.layers.0.self_attn.q_proj.weight", "Q4_K"),
    ("gguf", "Q4_K_M", "model.layers.0.self_attn.v_proj.weight", "Q6_K"),
    ("apr", "Q4_K_M", "model.layers.0.self_attn.q_proj.weight", "Q4_K"),
    ("gguf", "Q4_0", "lm_head.weight", "Q6_K"),
    ("gguf", "Q4_K_M", "model.layers.0.self_attn.q_proj.weight", "Q5_0"),   # 288-wide rows
])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_k_quant_and_fallback_tensors_refuse_non_finite(tmp_path, fmt, qtype, name, want, value):
    """ggml's K-quant max scans (`>`) pass NaN by: a NaN block may keep finite scales, so
    the pipeline must find it in the values, not only in the scales."""
    rng = np.random.default_rng(5)
    cols = 288 if want == "Q5_0" else 256
    good = rng.standard_normal((256, cols)).astype(np.float32)
    for index in (5, 256 * 40 + 77, good.size - 1):
        tensors = {name: ("F32", with_bad(good, index, value)),
                   "model.layers.0.self_attn.k_proj.weight": ("F32", good[:, :256].copy())}
        p = st(tmp_path, tensors)
        msg = refused([p], format=fmt, type=qtype)
        assert f"'{name}'" in msg and f"at flat index {index} " in msg, msg
        _, rep, t = allowed([p], format=fmt, type=qtype)
        assert t[name]["dtype_out"] == "F32" and t[name]["non_finite"] == 1
        assert t["model.layers.0.self_attn.k_proj.weight"]["dtype_out"] != "F32"
    _, rep, t = allowed([st(tmp_path, {name: ("F32", good)})], format=fmt, type=qtype)
    assert t[name]["dtype_out"] == want   # the planned type, when every value is finite


def test_count_is_every_value_over_chunks(tmp_path):
    a = np.ones(1000, np.float32)
    a[[3, 40, 41, 500, 999]] = [np.nan, np.inf, -np.inf, np.nan, np.inf]
    p = st(tmp_path, {"n.weight": ("F32", a)})
    assert "at flat index 3 " in refused([p])
    assert allowed([p])[2]["n.weight"]["non_finite"] == 5


def test_all_finite_output_is_unchanged_by_the_option(tmp_path):
    a = np.random.default_rng(3).standard_normal((4, 64)).astype(np.float32)
    p = st(tmp_path, {"w.weight": ("F32", a), "n.weight": ("F32", a[0])})
    plain, rep = run([p])
    assert run([p], allow_non_finite=True)[0] == plain
    assert rep["totals"]["non_finite"] == 0 and all(t["non_finite"] == 0 for t in rep["tensors"])


# ------------------------------------------------------------------ GGUF

def gguf_file(tmp_path, tensors):
    """{name: (array, GGMLQuantizationType) or (raw uint8 blocks, qtype)} -> path."""
    import gguf
    p = str(tmp_path / "m.gguf")
    write_gguf_tensors(gguf.GGUFWriter(p, "llama"), tensors)
    return p


def q_blocks(qtype, shape, bad_block, scale, seed=4):
    """gguf-py's blocks of a random tensor, with block `bad_block`'s f16 scale replaced."""
    import gguf
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    q = gguf.quants.quantize(x, qtype)
    flat = q.reshape(-1)
    ts = {gguf.GGMLQuantizationType.Q4_0: 18, gguf.GGMLQuantizationType.Q8_0: 34}[qtype]
    flat[bad_block * ts: bad_block * ts + 2] = np.frombuffer(np.float16(scale).tobytes(), np.uint8)
    return q


def test_gguf_kept_f32_and_f16(tmp_path):
    import gguf
    T = gguf.GGMLQuantizationType
    n = with_bad(np.ones(96, np.float32), 90, np.inf)
    h = with_bad(np.ones((2, 40), np.float16), 77, np.nan)   # rows not whole blocks: F16 kept
    p = gguf_file(tmp_path, {"blk.0.attn_norm.weight": (n, T.F32), "blk.0.x.weight": (h, T.F16)})
    msg = refused([p], format="gguf")
    assert "'blk.0.attn_norm.weight'" in msg and "at flat index 90 " in msg and "m.gguf" in msg
    _, _, t = allowed([p], format="gguf")
    assert t["blk.0.attn_norm.weight"]["non_finite"] == 1
    assert t["blk.0.x.weight"]["non_finite"] == 1 and t["blk.0.x.weight"]["dtype_out"] == "F16"


def test_gguf_q4_0_passed_through_is_judged_by_its_scales(tmp_path):
    import gguf
    T = gguf.GGMLQuantizationType
    q = q_blocks(T.Q4_0, (4, 128), 13, np.nan)     # 16 blocks; the 13th's scale is NaN
    p = gguf_file(tmp_path, {"blk.0.ffn_up.weight": (q, T.Q4_0)})
    msg = refused([p], format="gguf")
    assert "'blk.0.ffn_up.weight'" in msg and "non-finite block scale nan at flat index 416 " in msg
    data, _, t = allowed([p], format="gguf")
    w = t["blk.0.ffn_up.weight"]
    assert w["action"] == "passthrough" and w["non_finite"] == 32
    reader = gguf.GGUFReader(write_bytes(tmp_path / "out.gguf", data))
    assert bytes(reader.tensors[0].data.reshape(-1)) == q.tobytes()   # byte for byte
    # to APR the blocks are decoded: the first element of the bad block is the index named
    assert "non-finite weight nan at flat index 416 " in refused([p], format="apr")


@pytest.mark.parametrize("scale", [np.inf, -np.inf, np.nan])
def test_gguf_q8_0_decoded_to_f32(tmp_path, scale):
    import gguf
    T = gguf.GGMLQuantizationType
    q = q_blocks(T.Q8_0, (96,), 2, scale)          # 1-D: decoded, kept at F32
    p = gguf_file(tmp_path, {"blk.0.ffn_norm.weight": (q, T.Q8_0)})
    msg = refused([p], format="gguf")
    assert "'blk.0.ffn_norm.weight'" in msg and "at flat index 64 " in msg
    _, _, t = allowed([p], format="gguf")
    w = t["blk.0.ffn_norm.weight"]
    assert w["dtype_out"] == "F32" and w["action"] == "convert"
    assert w["non_finite"] == 32    # every element of the block (Inf x 0 is NaN)


# ------------------------------------------------------------------ APR

def apr_model(tmp_path):
    """Our own APR output of a small model: an APR Q4 matrix and an F32 vector."""
    a = np.random.default_rng(5).standard_normal((4, 96)).astype(np.float32)
    np.savez(tmp_path / "src.npz", **{"w": a, "v": np.ones(70, np.float32)})
    data, _ = run([str(tmp_path / "src.npz")])
    return data


def patch_apr(data, name, at, raw):
    """`raw` written at byte `at` of tensor `name`'s data, CRCs fixed."""
    doff = parse_apr(data)[0]["data_offset"]
    tensor = parse_apr(data)[2][name][2]
    start = data.index(tensor, doff)
    b = bytearray(data)
    b[start + at: start + at + len(raw)] = raw
    return hostile.fix_apr_crcs(bytes(b))


def test_apr_kept_f32_vector(tmp_path):
    data = patch_apr(apr_model(tmp_path), "v", 4 * 66, np.float32(-np.inf).tobytes())
    p = write_bytes(tmp_path / "m.apr", data)
    msg = refused([p])
    assert "'v'" in msg and "non-finite weight -inf at flat index 66 " in msg and "m.apr" in msg
    out, _, t = allowed([p])
    assert t["v"]["non_finite"] == 1 and t["v"]["action"] == "keep"
    assert out == data    # an APR output quantized again: the same file, the Inf included


def test_apr_q4_passed_through_is_judged_by_its_scales(tmp_path):
    data = patch_apr(apr_model(tmp_path), "w", 18 * 9, np.float16(np.inf).tobytes())
    p = write_bytes(tmp_path / "m.apr", data)
    msg = refused([p])
    assert "'w'" in msg and "non-finite block scale inf at flat index 288 " in msg
    out, _, t = allowed([p])
    assert t["w"]["non_finite"] == 32 and t["w"]["action"] == "passthrough"
    assert out == data


def test_apr_q4_partial_last_block_counts_its_elements_only(tmp_path):
    np.save(tmp_path / "v.npy", np.ones((2, 40), np.float32))      # 80 values: 3 blocks, last 16
    data, _ = run([str(tmp_path / "v.npy")], pure=True)
    data = patch_apr(data, "v", 36, np.float16(np.nan).tobytes())
    _, _, t = allowed([write_bytes(tmp_path / "m.apr", data)])
    assert t["v"]["non_finite"] == 16


# ------------------------------------------------------------------ npy / npz

def test_npy_and_npz(tmp_path):
    np.save(tmp_path / "v.npy", with_bad(np.ones(50, np.float32), 45, np.nan))
    msg = refused([str(tmp_path / "v.npy")])
    assert "'v'" in msg and "at flat index 45 " in msg and "v.npy" in msg
    assert allowed([str(tmp_path / "v.npy")])[2]["v"]["non_finite"] == 1

    np.savez_compressed(tmp_path / "m.npz", good=np.ones(40, np.float32),
                        bad=with_bad(np.ones(64, np.float64), 63, -np.inf))
    msg = refused([str(tmp_path / "m.npz")])
    assert "'bad'" in msg and "at flat index 63 " in msg and "m.npz" in msg
    _, _, t = allowed([str(tmp_path / "m.npz")])
    assert t["bad"]["non_finite"] == 1 and t["good"]["non_finite"] == 0


# ------------------------------------------------------------------ options and the CLI

def test_option_must_be_a_bool():
    with pytest.raises(q4apr.BadInput, match="allow_non_finite"):
        q4apr.Options(allow_non_finite="yes")
    assert q4apr.Options.from_dict({"allow_non_finite": True}).allow_non_finite is True


def cli(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "py"))
    return subprocess.run([sys.executable, "-m", "q4apr", *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=120)


def test_cli_refuses_then_allows(tmp_path):
    p = st(tmp_path, {"model.norm.weight": ("F32", with_bad(np.ones(64, np.float32), 9, np.nan)),
                      "w.weight": ("F32", np.ones((2, 32), np.float32))})
    r = cli("quantize", p)
    assert r.returncode == 2 and not (tmp_path / "m.apr").exists()
    assert "'model.norm.weight'" in r.stderr and "at flat index 9 " in r.stderr
    assert "--allow-non-finite" in r.stderr

    r = cli("quantize", p, "--allow-non-finite")
    assert r.returncode == 0, r.stderr
    assert "non-finite values written as they are (allowed) in 1 tensor(s):" in r.stdout
    assert "  model.norm.weight: 1 NaN/Inf" in r.stdout

    r = cli("quantize", p, "--allow-non-finite", "--json", "--force")
    rep = json.loads(r.stdout)
    assert rep["totals"]["non_finite"] == 1
    assert {t["name"]: t["non_finite"] for t in rep["tensors"]} == {"model.norm.weight": 1,
                                                                    "w.weight": 0}
