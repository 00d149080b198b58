"""llama.cpp itself as the oracle for our GGUF output.

tests/llama_cpp/build.sh builds, from the llama.cpp vendored in the PyPI sdist of
llama-cpp-python (pinned there), llama.cpp's `llama-quantize` and our `gguf_check`
(tests/llama_cpp/gguf_check.cpp: ggml's gguf_init_from_file reading the whole file, then
ggml_validate_row_data on every tensor).

(a) ggml's loader accepts our GGUF files and sees what gguf-py sees: the same key/values,
    tensor names, types, shapes, offsets and data.
(b) Byte-exactness against llama-quantize: a tiny llama-architecture GGUF in F32, F16 and
    BF16 (written by gguf-py, with blocks picked to hit the edge cases of Q4_0's
    arithmetic) quantized by `llama-quantize [--pure] IN OUT Q4_0` and by
    `python -m q4apr quantize IN -o OUT --format gguf`: every tensor both stored in the
    same type has the same bytes, and the key/values are the same.

What llama-quantize does with a llama model (llama.cpp src/llama-quant.cpp):
- it never quantizes a 1-D tensor or a `*_norm.weight`, --pure or not; q4apr's --pure
  matches `llama-quantize --pure` exactly (for GGUF; an APR --pure run quantizes 1-D
  tensors too);
- without --pure (the "Q4_0 mixture", q4apr's default since --type: q4apr.mixtures)
  output.weight becomes Q6_K, or Q8_0 when its rows are not a multiple of 256, in both;
- a Q4_0 tensor whose rows are not whole 32-blocks falls back to F16, as in q4apr;
- it needs no vocab: it loads the hparams and the tensors only;
- its file differs from ours as a whole only in order: it sorts the tensors (non-layer
  ones first, then by layer and name) and appends general.file_type after the copied
  key/values; q4apr keeps the input's order and sets general.file_type in place.

Skipped when the build is not there (run tests/llama_cpp/build.sh), except under
CI=true, where ./build.sh test builds it first and a missing build is a failure.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import llama_like, need, write_gguf_tensors

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType

REPO = Path(__file__).resolve().parent.parent
BUILD_SH = REPO / "tests" / "llama_cpp" / "build.sh"


# ---------------------------------------------------------------- the oracle

@pytest.fixture(scope="session")
def llama_bin():
    r = subprocess.run(["bash", str(BUILD_SH), "--print"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    if r.returncode == 0:
        return Path(r.stdout.strip())
    need(r.stderr.strip().replace("[llama_cpp/build.sh] ", "") or "llama.cpp is not built")


def gguf_check(llama_bin, path):
    """ggml's view of a GGUF file (tests/llama_cpp/gguf_check.cpp); fails the test if
    ggml rejects it."""
    r = subprocess.run([str(llama_bin / "gguf_check"), str(path)], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=120)
    if r.returncode != 0:
        pytest.fail(f"ggml rejected {path} (gguf_check exit {r.returncode}):\n{r.stderr[-4000:]}",
                    pytrace=False)
    out = {"kv": [], "tensors": {}}
    for line in r.stdout.splitlines():
        f = line.split("\t")
        if f[0] == "kv":
            out["kv"].append((f[1], f[2]))
        elif f[0] == "tensor":
            out["tensors"][f[1]] = {"type": f[2], "n_dims": int(f[3]),
                                    "ne": tuple(int(v) for v in f[4].split(",")),
                                    "offset": int(f[5]), "nbytes": int(f[6]), "fnv": f[7]}
        elif f[0] != "ok":
            out[f[0]] = int(f[1])
    assert r.stdout.endswith("ok\n")
    return out


def llama_quantize(llama_bin, src, dst, pure):
    cmd = [str(llama_bin / "llama-quantize")] + (["--pure"] if pure else []) + [str(src), str(dst), "Q4_0", "2"]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    if r.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-6000:]}", pytrace=False)
    return r.stdout


def q4apr_cli(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO / "py"))
    r = subprocess.run([sys.executable, "-m", "q4apr", "quantize", "-q", *map(str, args)],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, timeout=300)
    if r.returncode != 0:
        pytest.fail(f"python -m q4apr quantize {' '.join(map(str, args))} failed ({r.returncode}):\n"
                    f"{r.stdout[-4000:]}", pytrace=False)


# gguf-py's GGUFValueType names -> ggml's gguf_type_name()
GGUF_TYPE_NAME = {"UINT8": "u8", "INT8": "i8", "UINT16": "u16", "INT16": "i16", "UINT32": "u32",
                  "INT32": "i32", "FLOAT32": "f32", "BOOL": "bool", "STRING": "str", "ARRAY": "arr",
                  "UINT64": "u64", "INT64": "i64", "FLOAT64": "f64"}


def fnv1a64(b):
    h = 0xcbf29ce484222325
    for x in b:
        h = ((h ^ x) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def raw(reader, t):
    return reader.data[t.data_offset: t.data_offset + t.n_bytes].tobytes()


def kv_values(reader):
    out = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):
            continue  # gguf-py's pseudo-fields for the header
        v = field.contents()
        out[name] = (field.types[0].name if field.types else None, v)
    return out


# ---------------------------------------------------------------- (a) ggml's loader

def assert_ggml_sees_what_gguf_py_sees(llama_bin, path):
    """gguf_check's view == gguf-py's; returns {tensor name: ggml type name}."""
    g = gguf_check(llama_bin, path)
    r = gguf.GGUFReader(str(path))
    assert g["version"] == 3
    assert g["alignment"] == r.alignment
    assert g["data_offset"] == r.data_offset
    kv_py = [(name, f.types[0].name) for name, f in r.fields.items() if not name.startswith("GGUF.")]
    assert [k for k, _ in g["kv"]] == [k for k, _ in kv_py]
    assert [GGUF_TYPE_NAME[t] for _, t in kv_py] == [t for _, t in g["kv"]]
    assert g["n_tensors"] == len(r.tensors) == len(g["tensors"])
    assert list(g["tensors"]) == [t.name for t in r.tensors]   # same order
    for t in r.tensors:
        e = g["tensors"][t.name]
        ne = tuple(int(v) for v in t.shape) + (1,) * (4 - len(t.shape))
        assert e["type"].upper() == t.tensor_type.name, t.name
        assert e["ne"] == ne, t.name
        assert e["n_dims"] <= len(t.shape), t.name   # ggml counts dims up to the last ne > 1
        assert e["offset"] == t.data_offset - r.data_offset, t.name
        assert e["nbytes"] == t.n_bytes, t.name
        assert e["fnv"] == fnv1a64(raw(r, t)), f"{t.name}: ggml read other bytes than gguf-py"
    return {name: e["type"].upper() for name, e in g["tensors"].items()}


def write_gguf_py_mixed(path, rng):
    """A GGUF written by gguf-py with F32, F16, Q8_0 and Q4_0 tensors and varied metadata."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("mixed")
    w.add_context_length(128)
    w.add_array("test.strings", ["a", "bé", "<s>", ""])
    w.add_array("test.floats", [0.5, -1.0])
    w.add_uint64("test.u64", 1 << 40)
    w.add_int8("test.i8", -3)
    w.add_bool("test.bool", False)
    t = {"token_embd.weight": (rng.standard_normal((96, 64)), Q.F32),
         "blk.0.attn_q.weight": (rng.standard_normal((64, 64)), Q.F16),
         "blk.0.ffn_up.weight": (rng.standard_normal((128, 64)), Q.Q8_0),
         "blk.0.ffn_down.weight": (rng.standard_normal((64, 128)), Q.Q4_0),
         "blk.0.attn_norm.weight": (np.ones(64), Q.F32),
         "blk.0.odd.weight": (rng.standard_normal((5, 3, 40)), Q.F32),   # 3-D, rows of 40
         "output.weight": (rng.standard_normal((96, 64)), Q.F32)}
    write_gguf_tensors(w, t)
    return path


@pytest.fixture(scope="module")
def safetensors_model(tmp_path_factory):
    from safetensors.numpy import save_file
    d = tmp_path_factory.mktemp("st")
    rng = np.random.default_rng(11)
    t = llama_like(rng)
    t["model.layers.0.mlp.odd_proj.weight"] = rng.standard_normal((8, 48)).astype(np.float32)  # F16 fallback
    t["model.layers.0.mlp.odd3d.weight"] = rng.standard_normal((2, 3, 20)).astype(np.float32)  # F16 fallback
    t["model.layers.0.self_attn.q_proj.bias"] = rng.standard_normal(64).astype(np.float32)
    p = d / "model.safetensors"
    save_file(t, str(p), metadata={"format": "pt"})
    return p


@pytest.mark.parametrize("opts", [(), ("--keep-embeddings-f16",), ("--keep-embeddings-f16", "--keep-output-f16"),
                                  ("--pure",)], ids=["default", "emb-f16", "emb-out-f16", "pure"])
def test_ggml_accepts_our_gguf_from_safetensors(llama_bin, safetensors_model, tmp_path, opts):
    out = tmp_path / "model.Q4_0.gguf"
    q4apr_cli(safetensors_model, "-o", out, "--format", "gguf", *opts)
    types = assert_ggml_sees_what_gguf_py_sees(llama_bin, out)
    assert types["model.layers.0.mlp.odd_proj.weight"] == "F16"
    assert types["model.layers.0.mlp.odd3d.weight"] == "F16"
    assert types["model.embed_tokens.weight"] == ("F16" if "--keep-embeddings-f16" in opts else "Q4_0")
    # the Q4_0 mixture: the output head at Q6_K, Q8_0 for rows of 64 (not whole 256-blocks)
    assert types["lm_head.weight"] == ("F16" if "--keep-output-f16" in opts else
                                       "Q4_0" if "--pure" in opts else "Q8_0")
    assert types["model.norm.weight"] == "F32"     # llama-quantize --pure keeps 1-D tensors
    assert types["model.layers.0.self_attn.q_proj.weight"] == "Q4_0"


@pytest.mark.parametrize("opts", [(), ("--keep-embeddings-f16",), ("--pure",)],
                         ids=["default", "emb-f16", "pure"])
def test_ggml_accepts_our_gguf_from_gguf_py(llama_bin, tmp_path, opts):
    src = write_gguf_py_mixed(tmp_path / "mixed.gguf", np.random.default_rng(12))
    assert_ggml_sees_what_gguf_py_sees(llama_bin, src)   # the input itself, as a control
    out = tmp_path / "mixed.Q4_0.gguf"
    q4apr_cli(src, "-o", out, "--format", "gguf", *opts)
    types = assert_ggml_sees_what_gguf_py_sees(llama_bin, out)
    assert types["blk.0.odd.weight"] == "F16"                 # rows of 40
    assert types["blk.0.attn_q.weight"] == types["blk.0.ffn_up.weight"] == "Q4_0"
    assert types["token_embd.weight"] == ("F16" if "--keep-embeddings-f16" in opts else "Q4_0")
    # the input's key/values come through with the values gguf-py reads
    a, b = kv_values(gguf.GGUFReader(str(src))), kv_values(gguf.GGUFReader(str(out)))
    assert [k for k in a if a[k] != b.get(k)] == []
    assert set(b) - set(a) == {"general.file_type", "general.quantization_version"}
    assert b["general.file_type"][1] == 2 and b["general.quantization_version"][1] == 2


def test_gguf_check_rejects_a_damaged_file(llama_bin, tmp_path):
    """The checker itself: ggml must say no to a truncated file and to a NaN scale."""
    src = write_gguf_py_mixed(tmp_path / "mixed.gguf", np.random.default_rng(13))
    out = tmp_path / "m.gguf"
    q4apr_cli(src, "-o", out, "--format", "gguf")
    data = out.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:-7])
    r = subprocess.run([str(llama_bin / "gguf_check"), str(cut)], capture_output=True, text=True)
    assert r.returncode == 1 and "rejected" in r.stderr
    rd = gguf.GGUFReader(str(out))
    t = next(t for t in rd.tensors if t.tensor_type == Q.Q4_0)
    bad = bytearray(data)
    bad[t.data_offset: t.data_offset + 2] = np.float16(np.nan).tobytes()
    nan = tmp_path / "nan.gguf"
    nan.write_bytes(bytes(bad))
    r = subprocess.run([str(llama_bin / "gguf_check"), str(nan)], capture_output=True, text=True)
    assert r.returncode == 1 and "ggml_validate_row_data rejected" in r.stderr


# ---------------------------------------------------------------- (b) byte-exact vs llama-quantize

N_EMBD, N_HEAD, N_HEAD_KV, N_FF, N_LAYER, N_VOCAB = 64, 4, 2, 80, 2, 96
N_TENSORS = 3 + 9 * N_LAYER             # token_embd, output_norm, output + 9 per layer
N_Q4 = 2 + 6 * N_LAYER                  # token_embd, output + q/k/v/o/gate/up per layer
ONE_D = {"output_norm.weight"} | {f"blk.{i}.{n}_norm.weight" for i in range(N_LAYER) for n in ("attn", "ffn")}
NO_KV_DIFF = {"only_llama": [], "only_q4apr": [], "different": []}


def edge_blocks():
    """32-element f32 blocks that hit the corners of Q4_0's arithmetic (all finite, all
    with scales that fit f16): zero and signed-zero blocks, ties for the largest
    magnitude (the first one wins), x*id + 8.5 landing exactly on integers and a hair
    off them, scales rounding to even in f16 (normal and subnormal), f16-subnormal
    scales, f32-subnormal inputs (1/d overflows to inf), scales just under f16's largest."""
    f = np.float32
    B = []
    B.append(np.zeros(32, f))
    B.append(np.full(32, -0.0, f))
    B.append(np.array([0.0, -0.0] * 16, f))
    b = np.linspace(-1, 1, 32, dtype=f); b[0], b[7] = -1.5, 1.5; B.append(b)      # tie, negative first
    b = np.linspace(-1, 1, 32, dtype=f); b[3], b[20] = 2.0, -2.0; B.append(b)     # tie, positive first
    B.append(np.full(32, 0.7, f))
    B.append(np.full(32, -0.7, f))
    # d = -1 (max = 8): x*id + 8.5 = 8.5 - x, exact halves and integers
    b = np.arange(32, dtype=f) / 2 - 8; b[31] = 8; B.append(b)
    b = np.arange(32, dtype=f) / 2 - 7.75; b[0] = 8; B.append(b)
    # a hair either side of the truncation points
    base = (np.arange(32, dtype=f) % 16) - 7.5
    B.append(np.nextafter(base, f(np.inf)).astype(f) * f(0.25))
    B.append(np.nextafter(base, f(-np.inf)).astype(f) * f(0.25))
    b = np.nextafter(base, f(np.inf)).astype(f); b[5] = 8.0; B.append(b)
    b = np.nextafter(base, f(-np.inf)).astype(f); b[5] = -8.0; B.append(b)
    # scales that round to even in f16: 1 + 2^-11 (-> 1), 1 + 3*2^-11 (-> 1 + 2^-9), in the
    # subnormal range 1.5, 2.5 and 0.5 units of 2^-24 (-> 2, 2, 0), 0.5 units and a bit (-> 1)
    for d in (1 + 2 ** -11, 1 + 3 * 2 ** -11, 2 ** -14 * (1 + 2 ** -11),
              1.5 * 2 ** -24, 2.5 * 2 ** -24, 2 ** -25, 2 ** -25 * (1 + 2 ** -10)):
        b = np.linspace(-0.9, 0.9, 32, dtype=f) * f(8 * d); b[9] = f(-8 * d); B.append(b)
    # f16-subnormal scales, tiny normal and f32-subnormal inputs
    for m in (8 * 2.0 ** -20, 8 * 2.0 ** -24, 2.0 ** -24, 2.0 ** -100, 2.0 ** -125, 1e-40, 1e-44):
        b = np.linspace(-1, 1, 32).astype(f) * f(m); b[30] = f(m); B.append(b.astype(f))
    # scales near f16's largest (65504), still finite after rounding
    for d in (65504.0, 65510.0, 60000.5):
        b = np.linspace(-1, 1, 32, dtype=f) * f(7.9 * d); b[2] = f(-8 * d); B.append(b)
    # the largest magnitude last, negative
    b = np.linspace(-1, 1, 32, dtype=f); b[31] = -3.25; B.append(b)
    return [np.ascontiguousarray(x, np.float32) for x in B]


def llama_tensors(rng):
    """F32 tensors of a tiny llama model, numpy shape (outermost first); ffn_down has rows
    of N_FF = 80 (not whole 32-blocks: F16 in both tools). blk.0.attn_q carries the edge
    blocks, blk.1.attn_q some rows of large values (~1e4)."""
    def w(*shape, scale=0.05):
        return (rng.standard_normal(shape) * scale).astype(np.float32)
    t = {"token_embd.weight": w(N_VOCAB, N_EMBD, scale=1.0)}
    hd = N_EMBD // N_HEAD
    for i in range(N_LAYER):
        p = f"blk.{i}."
        t[p + "attn_norm.weight"] = 1 + w(N_EMBD, scale=0.1)
        t[p + "attn_q.weight"] = w(N_EMBD, N_EMBD)
        t[p + "attn_k.weight"] = w(N_HEAD_KV * hd, N_EMBD)
        t[p + "attn_v.weight"] = w(N_HEAD_KV * hd, N_EMBD)
        t[p + "attn_output.weight"] = w(N_EMBD, N_EMBD)
        t[p + "ffn_norm.weight"] = 1 + w(N_EMBD, scale=0.1)
        t[p + "ffn_gate.weight"] = w(N_FF, N_EMBD)
        t[p + "ffn_up.weight"] = w(N_FF, N_EMBD)
        t[p + "ffn_down.weight"] = w(N_EMBD, N_FF)
    t["output_norm.weight"] = 1 + w(N_EMBD, scale=0.1)
    t["output.weight"] = w(N_VOCAB, N_EMBD, scale=1.0)
    q = t["blk.0.attn_q.weight"].reshape(-1, 32)
    blocks = edge_blocks()
    q[: len(blocks)] = np.stack(blocks)
    t["blk.1.attn_q.weight"][:4] *= np.float32(2e5)
    assert list(t) == sorted(t, key=list(t).index) and len(t) == N_TENSORS
    return t


def write_llama_gguf(path, tensors, dtype="F32", vocab=True):
    """A llama-architecture GGUF by gguf-py, every tensor in `dtype` (F32, F16 or BF16),
    with the hparams llama-quantize reads. llama-quantize loads no vocab (only the
    hparams and the tensors), so `vocab` is optional; with one, its array key/values are
    part of the metadata compared."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny llama")
    w.add_context_length(128)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_rope_dimension_count(N_EMBD // N_HEAD)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type({"F32": 0, "F16": 1, "BF16": 32}[dtype])
    if vocab:
        tokens = ["<unk>", "<s>", "</s>"] + [f"t{i}" for i in range(N_VOCAB - 3)]
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores([0.0] * N_VOCAB)
        w.add_token_types([2, 3, 3] + [1] * (N_VOCAB - 3))
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
    write_gguf_tensors(w, {name: (arr, Q[dtype]) for name, arr in tensors.items()})
    return path


def as_stored(arr, dtype):
    """The f32 values a tool sees after reading `arr` stored as `dtype`."""
    if dtype == "F16":
        return arr.astype(np.float16).astype(np.float32)
    if dtype == "BF16":
        return gguf.quants.dequantize(gguf.quants.quantize(arr, Q.BF16), Q.BF16)
    return arr


@pytest.fixture(scope="module", params=["F32", "F16", "BF16"])
def llama_src(request, tmp_path_factory):
    """(path, {name: f32 values as stored}, dtype): the tiny llama model in F32, F16 or BF16."""
    dtype = request.param
    t = llama_tensors(np.random.default_rng(2024))
    if dtype != "F32":   # keep every value and every Q4_0 scale within f16 (BF16 rounds up)
        t = {k: np.clip(v, -60000.0, 60000.0) for k, v in t.items()}
    path = write_llama_gguf(tmp_path_factory.mktemp("llama") / f"tiny-{dtype}.gguf", t, dtype)
    return path, {k: as_stored(v, dtype) for k, v in t.items()}, dtype


def describe_q4_0_diff(name, a, b, src):
    """Which blocks differ and how: d and nibbles of each side, and the input values."""
    A = np.frombuffer(a, np.uint8).reshape(-1, 18)
    B = np.frombuffer(b, np.uint8).reshape(-1, 18)
    bad = np.flatnonzero((A != B).any(axis=1))
    x = np.ascontiguousarray(src, np.float32).reshape(-1, 32)
    lines = [f"{name}: {len(bad)} of {len(A)} Q4_0 blocks differ (blocks {bad[:20].tolist()})"]

    def nib(blk):
        q = blk[2:]
        return np.concatenate([q & 15, q >> 4]).tolist()
    for i in bad[:6]:
        lines.append(f"  block {i}: llama-quantize d={float(A[i, :2].view(np.float16)[0])!r} "
                     f"({A[i, :2].tobytes().hex()}) q={nib(A[i])}\n"
                     f"           q4apr          d={float(B[i, :2].view(np.float16)[0])!r} "
                     f"({B[i, :2].tobytes().hex()}) q={nib(B[i])}\n"
                     f"           input={x[i].tolist()}")
    return "\n".join(lines)


def compare_with_llama_quantize(llama_bin, tmp_path, src_path, values, pure, q4apr_opts=()):
    """Quantize with both tools; assert that both outputs pass ggml's loader and that every
    tensor both stored in the same type has the same bytes (a Q4_0 difference is described
    block by block). Returns ([(name, llama type, q4apr type, identical)], metadata diff)."""
    ref = tmp_path / "llama.Q4_0.gguf"
    ours = tmp_path / "q4apr.Q4_0.gguf"
    llama_quantize(llama_bin, src_path, ref, pure)
    q4apr_cli(src_path, "-o", ours, "--format", "gguf", *q4apr_opts)
    assert_ggml_sees_what_gguf_py_sees(llama_bin, ref)
    assert_ggml_sees_what_gguf_py_sees(llama_bin, ours)

    rl, ro = gguf.GGUFReader(str(ref)), gguf.GGUFReader(str(ours))
    tl, to = {t.name: t for t in rl.tensors}, {t.name: t for t in ro.tensors}
    assert set(tl) == set(to) == set(values)
    table, failures = [], []
    for name in values:
        a, b = tl[name], to[name]
        assert list(a.shape) == list(b.shape), name
        same_type = a.tensor_type == b.tensor_type
        identical = same_type and raw(rl, a) == raw(ro, b)
        table.append((name, a.tensor_type.name, b.tensor_type.name, identical))
        if same_type and not identical:
            if a.tensor_type == Q.Q4_0:
                failures.append(describe_q4_0_diff(name, raw(rl, a), raw(ro, b), values[name]))
            else:
                failures.append(f"{name}: {a.tensor_type.name} data differ")
    assert not failures, "q4apr's bytes differ from llama-quantize's:\n" + "\n".join(failures)

    kl, ko = kv_values(rl), kv_values(ro)
    kv_diff = {"only_llama": sorted(set(kl) - set(ko)), "only_q4apr": sorted(set(ko) - set(kl)),
               "different": sorted(k for k in set(kl) & set(ko) if kl[k] != ko[k])}
    return table, kv_diff


def summarize(table):
    """(Q4_0 tensors byte-identical, tensors identical, {name: (llama type, q4apr type)} where they differ)"""
    n_q4 = sum(1 for _, a, b, same in table if a == b == "Q4_0" and same)
    n_same = sum(1 for *_, same in table if same)
    differ = {name: (a, b) for name, a, b, _ in table if a != b}
    return n_q4, n_same, differ


def test_llama_quantize_pure_is_byte_identical_to_q4apr_pure(llama_bin, llama_src, tmp_path):
    """`llama-quantize --pure IN OUT Q4_0` vs `q4apr --pure`: the same tensors are
    Q4_0 (every matrix) and F16 (rows of 80), with the same bytes, and the same metadata.
    The only difference: from an F16/BF16 model llama-quantize keeps the 1-D norms in their
    type, q4apr stores every 1-D tensor as F32 (lossless, README "Policy")."""
    src, values, dtype = llama_src
    table, kv_diff = compare_with_llama_quantize(llama_bin, tmp_path, src, values, pure=True,
                                                 q4apr_opts=("--pure",))
    n_q4, n_same, differ = summarize(table)
    print(f"\n[{dtype}] llama-quantize --pure vs q4apr --pure: {n_q4} Q4_0 tensors byte-identical, "
          f"{n_same}/{len(table)} tensors identical; types differ (llama, q4apr): {differ}; metadata: {kv_diff}")
    assert n_q4 == N_Q4
    assert differ == ({} if dtype == "F32" else {n: (dtype, "F32") for n in ONE_D})
    assert n_same == len(table) - len(differ) == N_TENSORS - len(differ)
    assert kv_diff == NO_KV_DIFF


def test_llama_quantize_default_mixture_is_q4apr_default(llama_bin, llama_src, tmp_path):
    """Without --pure llama-quantize's Q4_0 mixture puts output.weight at Q6_K (here Q8_0:
    rows of 64 are no whole 256-blocks); so does q4apr's default, with the same bytes.
    Every other matrix: Q4_0 in both, same bytes."""
    src, values, dtype = llama_src
    table, kv_diff = compare_with_llama_quantize(llama_bin, tmp_path, src, values, pure=False)
    n_q4, n_same, differ = summarize(table)
    print(f"\n[{dtype}] llama-quantize (Q4_0 mixture) vs q4apr default: {n_q4} Q4_0 tensors byte-identical, "
          f"{n_same}/{len(table)} identical; types differ (llama, q4apr): {differ}; metadata: {kv_diff}")
    one_d = {} if dtype == "F32" else {n: (dtype, "F32") for n in ONE_D}
    assert differ == one_d
    assert n_q4 == N_Q4 - 1
    assert dict((n, a) for n, a, _, _ in table)["output.weight"] == "Q8_0"
    assert kv_diff == NO_KV_DIFF


def test_q4apr_default_is_not_pure(llama_bin, llama_src, tmp_path):
    """q4apr's default (the Q4_0 mixture) against llama-quantize --pure: only the output
    head differs (Q8_0 against Q4_0); llama.cpp never quantizes a 1-D tensor
    (tensor_allows_quantization: ggml_n_dims < 2, never *_norm.weight), nor does q4apr."""
    src, values, dtype = llama_src
    table, _ = compare_with_llama_quantize(llama_bin, tmp_path, src, values, pure=True)
    n_q4, _, differ = summarize(table)
    one_d = {} if dtype == "F32" else {n: (dtype, "F32") for n in ONE_D}
    assert differ == {"output.weight": ("Q4_0", "Q8_0"), **one_d}
    assert n_q4 == N_Q4 - 1


def test_llama_quantize_needs_no_vocab(llama_bin, tmp_path):
    """The same model without any tokenizer key/values: llama-quantize still works (it
    loads hparams and tensors only) and still agrees with q4apr byte for byte."""
    t = llama_tensors(np.random.default_rng(7))
    src = write_llama_gguf(tmp_path / "novocab.gguf", t, vocab=False)
    (tmp_path / "out").mkdir()
    table, kv_diff = compare_with_llama_quantize(llama_bin, tmp_path / "out", src, t, pure=True,
                                                 q4apr_opts=("--pure",))
    n_q4, n_same, differ = summarize(table)
    assert (n_q4, n_same, differ, kv_diff) == (N_Q4, N_TENSORS, {}, NO_KV_DIFF)


def test_scale_beyond_f16_llama_quantize_refuses_q4apr_keeps_f32(llama_bin, tmp_path):
    """A block whose Q4_0 scale (max/-8) overflows f16: llama-quantize stops ("quantized
    data validation failed"); q4apr keeps that tensor at F32 (README "Policy") and the
    file passes ggml's loader."""
    t = llama_tensors(np.random.default_rng(8))
    t["blk.0.attn_k.weight"][3, 5] = np.float32(-8 * 70000.0)
    src = write_llama_gguf(tmp_path / "big.gguf", t)
    cmd = [str(llama_bin / "llama-quantize"), "--pure", str(src), str(tmp_path / "l.gguf"), "Q4_0", "2"]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert r.returncode != 0 and "validation failed" in r.stdout
    ours = tmp_path / "o.gguf"
    q4apr_cli(src, "-o", ours, "--format", "gguf")
    types = assert_ggml_sees_what_gguf_py_sees(llama_bin, ours)
    assert types["blk.0.attn_k.weight"] == "F32" and types["blk.0.attn_v.weight"] == "Q4_0"


def test_llama_cpp_loader_takes_our_llama_gguf(llama_bin, llama_src, tmp_path):
    """llama.cpp's model loader (llama_model_loader with check_tensors, through
    `llama-quantize --allow-requantize IN OUT COPY`) reads our Q4_0 file and copies every
    tensor unchanged."""
    src, _, _ = llama_src
    ours = tmp_path / "q4apr.Q4_0.gguf"
    q4apr_cli(src, "-o", ours, "--format", "gguf")
    copy = tmp_path / "copy.gguf"
    cmd = [str(llama_bin / "llama-quantize"), "--allow-requantize", str(ours), str(copy), "COPY"]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-6000:]
    ro, rc = gguf.GGUFReader(str(ours)), gguf.GGUFReader(str(copy))
    co = {t.name: t for t in rc.tensors}
    assert set(co) == {t.name for t in ro.tensors}
    for t in ro.tensors:
        assert co[t.name].tensor_type == t.tensor_type
        assert raw(rc, co[t.name]) == raw(ro, t), t.name
