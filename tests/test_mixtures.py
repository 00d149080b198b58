"""--type Q4_0 / Q4_K_M: llama-quantize's per-tensor mixtures, byte for byte.

For GGUF, q4apr's output from the converter's F32 GGUF of each architecture equals
`llama-quantize IN OUT Q4_0` and `... Q4_K_M` tensor for tensor (names, types, bytes, and
general.file_type); so does its output from the model folder directly. A synthetic llama
model with rows of whole 256-blocks and ten layers exercises the K-quant paths the tiny
models cannot reach (their rows of 32/64 fall back to Q5_0/Q8_0): the attn_v / ffn_down
bumps by layer, the untied output head, and the fallbacks of a 384-wide ffn_down.

For APR the same choices map to Aprender's codes: Q4_0 -> APR Q4 (128), Q4_K/Q6_K -> 12/14
with the bytes llama-quantize writes, and where llama.cpp falls back to Q5_0/Q8_0 for the
row length, the Q4_K/Q6_K it wanted in Aprender's row layout (rows zero padded).
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import write_gguf_tensors

import q4apr
from q4apr import mixtures
from q4apr.formats import apr as apr_format

gguf = pytest.importorskip("gguf")
hf = pytest.importorskip("fixtures.hf", reason="tests/fixtures/hf.py (model folders) missing")
Q = gguf.GGMLQuantizationType

REPO = Path(__file__).resolve().parent.parent
TINY = ["tiny-llama", "tiny-mistral", "tiny-qwen2", "tiny-qwen3", "tiny-gemma3", "tiny-phi3",
        "tiny-bert"]
TYPES = ["Q4_0", "Q4_K_M"]
# SmolLM2-135M from its F32 GGUF: ~40 s for both types here; from its folder (BF16, row
# permutations) it takes longer: set Q4APR_SLOW=1 to include that too
SLOW = os.environ.get("Q4APR_SLOW", "") not in ("", "0")
REAL = ["minilm", "smollm2-135m"]
REAL_FOLDERS = ["minilm"] + (["smollm2-135m"] if SLOW else [])


def llama_quantize(src, dst, qtype, pure=False):
    cmd = [str(hf.llama_bin() / "llama-quantize")] + (["--pure"] if pure else []) + \
        [str(src), str(dst), qtype, "2"]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=1200)
    assert r.returncode == 0, f"{' '.join(cmd)}:\n{r.stdout[-4000:]}"
    return dst


def q4apr_cli(*args):
    r = subprocess.run([sys.executable, "-m", "q4apr", "quantize", "-q", "--force",
                        *map(str, args)], capture_output=True, text=True, timeout=3600,
                       env={**os.environ, "PYTHONPATH": str(REPO / "py")})
    assert r.returncode == 0, r.stderr[-4000:]


def tensors(path):
    r = gguf.GGUFReader(str(path))
    return {t.name: (tuple(int(d) for d in t.shape), t.tensor_type.name, t.data.tobytes())
            for t in r.tensors}


def file_type(path):
    return int(gguf.GGUFReader(str(path)).fields["general.file_type"].contents())


def assert_same_tensors(ref, ours):
    """Names, shapes, types and bytes equal; returns {type: count} of the reference."""
    a, b = tensors(ref), tensors(ours)
    assert sorted(a) == sorted(b)
    diff = [f"{n}: llama {a[n][1]} {a[n][0]}, q4apr {b[n][1]} {b[n][0]}"
            + ("" if a[n][:2] != b[n][:2] else " (bytes differ)")
            for n in a if a[n] != b[n]]
    assert not diff, "q4apr differs from llama-quantize:\n" + "\n".join(diff)
    counts = {}
    for _, t, _ in a.values():
        counts[t] = counts.get(t, 0) + 1
    return counts


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    """llama-quantize's output of the converter's F32 GGUF, made once per (name, type)."""
    made = {}

    def get(name, qtype):
        if (name, qtype) not in made:
            d = tmp_path_factory.mktemp(f"{name}-{qtype}")
            made[name, qtype] = llama_quantize(hf.reference_gguf(name, "f32"),
                                               d / f"{name}.{qtype}.gguf", qtype)
        return made[name, qtype]
    return get


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("name", TINY + REAL)
def test_from_the_converters_f32_gguf(refs, tmp_path, name, qtype):
    ref = refs(name, qtype)
    ours = tmp_path / f"ours.{qtype}.gguf"
    q4apr_cli(hf.reference_gguf(name, "f32"), "-o", ours, "--type", qtype)
    counts = assert_same_tensors(ref, ours)
    assert file_type(ours) == file_type(ref) == mixtures.FILE_TYPES[qtype]
    print(f"\n{name} {qtype}: {counts}")


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("name", TINY + REAL_FOLDERS)
def test_from_the_model_folder(refs, tmp_path, name, qtype):
    ref = refs(name, qtype)
    ours = tmp_path / f"{name}.{qtype}.gguf"
    q4apr_cli(hf.model_dir(name), "-o", ours, "--type", qtype)
    assert_same_tensors(ref, ours)
    assert file_type(ours) == mixtures.FILE_TYPES[qtype]


# ---------------------------------------------------------------- a model with K-quant rows

N_EMBD, N_HEAD, N_HEAD_KV, N_LAYER, N_VOCAB = 256, 4, 2, 10, 300


def synthetic(path, n_ff=512, tied=False, seed=0):
    """A llama GGUF (gguf-py, F32) whose rows are whole 256-blocks, but for ffn_down when
    n_ff is not a multiple of 256."""
    rng = np.random.default_rng(seed)

    def w(*shape):
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)
    hd = N_EMBD // N_HEAD
    t = {"token_embd.weight": w(N_VOCAB, N_EMBD), "output_norm.weight": 1 + w(N_EMBD)}
    if not tied:
        t["output.weight"] = w(N_VOCAB, N_EMBD)
    for i in range(N_LAYER):
        p = f"blk.{i}."
        t[p + "attn_norm.weight"] = 1 + w(N_EMBD)
        t[p + "attn_q.weight"] = w(N_EMBD, N_EMBD)
        t[p + "attn_k.weight"] = w(N_HEAD_KV * hd, N_EMBD)
        t[p + "attn_v.weight"] = w(N_HEAD_KV * hd, N_EMBD)
        t[p + "attn_output.weight"] = w(N_EMBD, N_EMBD)
        t[p + "ffn_norm.weight"] = 1 + w(N_EMBD)
        t[p + "ffn_gate.weight"] = w(n_ff, N_EMBD)
        t[p + "ffn_up.weight"] = w(n_ff, N_EMBD)
        t[p + "ffn_down.weight"] = w(N_EMBD, n_ff)
    t["blk.3.ffn_down.weight"][0, :8] = [0, 0, 0, 0, 1e-30, -1e-30, 3e4, -3e4]  # edge values
    wr = gguf.GGUFWriter(str(path), "llama")
    wr.add_name("synthetic")
    wr.add_context_length(128)
    wr.add_embedding_length(N_EMBD)
    wr.add_block_count(N_LAYER)
    wr.add_feed_forward_length(n_ff)
    wr.add_rope_dimension_count(hd)
    wr.add_head_count(N_HEAD)
    wr.add_head_count_kv(N_HEAD_KV)
    wr.add_layer_norm_rms_eps(1e-5)
    wr.add_file_type(0)
    write_gguf_tensors(wr, {n: (a, Q.F32) for n, a in t.items()})
    return path


@pytest.mark.parametrize("n_ff,tied", [(512, False), (384, True)], ids=["untied-512", "tied-384"])
@pytest.mark.parametrize("qtype", TYPES)
def test_synthetic_layers_and_fallbacks(tmp_path, qtype, n_ff, tied):
    src = synthetic(tmp_path / "syn.gguf", n_ff, tied)
    ref = llama_quantize(src, tmp_path / "ref.gguf", qtype)
    ours = tmp_path / "ours.gguf"
    q4apr_cli(src, "-o", ours, "--type", qtype)
    counts = assert_same_tensors(ref, ours)
    types = {n: t for n, (_, t, _) in tensors(ours).items()}
    head = "token_embd.weight" if tied else "output.weight"
    assert types[head] == "Q6_K"
    if qtype == "Q4_K_M":
        more = [i for i in range(N_LAYER) if mixtures.use_more_bits(i, N_LAYER)]
        assert more == [0, 3, 6, 8, 9]   # i < n/8, i >= 7n/8, (i - n/8) % 3 == 2
        for i in range(N_LAYER):
            assert types[f"blk.{i}.attn_v.weight"] == ("Q6_K" if i in more else "Q4_K")
            down = ("Q6_K" if i in more else "Q4_K") if n_ff % 256 == 0 else \
                ("Q8_0" if i in more else "Q5_0")
            assert types[f"blk.{i}.ffn_down.weight"] == down
    print(f"\n{qtype} n_ff={n_ff} tied={tied}: {counts}")


def test_pure_q4_k_m_is_llama_quantize_pure(tmp_path):
    src = synthetic(tmp_path / "syn.gguf", 384, False)
    ref = llama_quantize(src, tmp_path / "ref.gguf", "Q4_K_M", pure=True)
    ours = tmp_path / "ours.gguf"
    q4apr_cli(src, "-o", ours, "--type", "Q4_K_M", "--pure")
    assert assert_same_tensors(ref, ours) == {"F32": 2 * N_LAYER + 1, "Q4_K": 6 * N_LAYER + 2,
                                              "Q5_0": N_LAYER}


# ---------------------------------------------------------------- APR

def read_apr(path):
    with q4apr.open_model(str(path)) as m:
        out = {}
        for e in m.tensors:
            with e.open() as f:
                out[e.name] = (e.dtype.name, e.shape, f.read(e.nbytes))
        return out


@pytest.mark.parametrize("qtype", TYPES)
def test_apr_takes_llama_quantizes_choices(tmp_path, qtype):
    """APR from the synthetic GGUF: Q4_0 -> APR Q4, Q4_K/Q6_K -> codes 12/14 with llama's
    bytes (rows of whole 256-blocks: flattened = row by row), Q5_0/Q8_0 (the 384-wide
    ffn_down's fallbacks) -> the Q4_K/Q6_K llama.cpp wanted, rows padded to 512."""
    src = synthetic(tmp_path / "syn.gguf", 384, True)
    ref = tensors(llama_quantize(src, tmp_path / "ref.gguf", qtype))
    out = tmp_path / "ours.apr"
    q4apr_cli(src, "-o", out, "--type", qtype)
    ours = read_apr(out)
    assert sorted(ours) == sorted(ref)
    want = {"Q4_0": "APR_Q4", "Q4_K": "Q4_K", "Q6_K": "Q6_K", "Q5_0": "Q4_K", "Q8_0": "Q6_K",
            "F32": "F32"}
    seen = set()
    for name, (shape, t, data) in ref.items():
        dtype, ashape, raw = ours[name]
        assert tuple(ashape) == tuple(reversed(shape)), name
        assert dtype == want[t], name
        seen.add(dtype)
        if t in ("Q4_K", "Q6_K"):
            assert raw == data, f"{name}: {t} bytes differ from llama-quantize's"
            # an independent decoder (gguf-py's numpy port of ggml) reads them as ggml does
            x = gguf.quants.dequantize(np.frombuffer(raw, np.uint8).reshape(ashape[0], -1), Q[t])
            assert x.shape == tuple(ashape) and np.isfinite(x).all()
        elif t in ("Q5_0", "Q8_0"):   # rows padded: decoded row by row, near llama's values
            from apr_forward import dequantize as apr_dequantize
            x = apr_dequantize({"Q4_K": 12, "Q6_K": 14}[dtype], tuple(ashape),
                               np.frombuffer(raw, np.uint8))
            y = gguf.quants.dequantize(np.frombuffer(data, np.uint8).reshape(ashape[0], -1), Q[t])
            assert np.abs(x - y).max() < 0.15 * np.abs(y).max(), name
    assert seen == ({"APR_Q4", "Q6_K", "F32"} if qtype == "Q4_0" else {"Q4_K", "Q6_K", "F32"})
    codes = {e.name: e.dtype.apr for e in q4apr.open_model(str(out)).tensors}
    assert codes["blk.0.attn_v.weight"] == (128 if qtype == "Q4_0" else 14)


@pytest.mark.parametrize("qtype", TYPES)
def test_apr_from_a_folder_follows_its_gguf(tmp_path, qtype):
    """The APR of a folder gets, tensor by tensor (by Hugging Face source name), the type
    the folder's GGUF gets, mapped to APR; the tied lm_head is 0 bytes (Aprender's way)."""
    name = "tiny-llama"
    folder = hf.model_dir(name)
    g, a = tmp_path / "x.gguf", tmp_path / "x.apr"
    q4apr_cli(folder, "-o", g, "--type", qtype, "--json")
    r = subprocess.run([sys.executable, "-m", "q4apr", "quantize", "-q", "--force", "--json",
                        str(folder), "-o", str(a), "--type", qtype], capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": str(REPO / "py")})
    assert r.returncode == 0, r.stderr
    import json
    rep = {t["name"]: t for t in json.loads(r.stdout)["tensors"]}
    assert rep["lm_head.weight"]["bytes_out"] == 0 and "tied" in rep["lm_head.weight"]["reason"]
    gt = {n: t for n, (_, t, _) in tensors(g).items()}
    assert gt["token_embd.weight"] in ("Q6_K", "Q8_0")
    # llama.cpp's Q5_0 / Q8_0 are its fallbacks for rows of 64 / 128: APR pads the rows of
    # 128 instead (9 / 13 bits per weight), and keeps rows of 64 at F16 (padded: 18 / 26)
    apr_of = {"Q4_0": "APR_Q4", "Q5_0": "Q4_K", "Q8_0": "Q6_K", "F32": "F32", "Q4_K": "Q4_K",
              "Q6_K": "Q6_K"}
    narrow = dict(apr_of, Q5_0="F16", Q8_0="F16")
    assert rep["model.layers.0.self_attn.v_proj.weight"]["dtype_out"] == \
        narrow[gt["blk.0.attn_v.weight"]]
    assert rep["model.layers.1.mlp.down_proj.weight"]["dtype_out"] == \
        apr_of[gt["blk.1.ffn_down.weight"]]
