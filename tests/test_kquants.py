"""Q4_K, Q6_K and Q5_0 (py/q4apr/codecs.py) against ggml's own C code.

The oracle is tests/llama_cpp/quants_ref.c linked against the libggml-base.a of the
llama.cpp build (tests/llama_cpp/build_quants_ref.sh compiles it in seconds, cached in
.cache/ under its own hash, so the llama.cpp build's stamp is untouched). It calls
ggml_quantize_chunk without an importance matrix, the path llama-quantize takes
(quantize_q4_K -> quantize_row_q4_K_ref, ...), and ggml's to_float (dequantize_row_*).

- quantize: byte-identical on random data at many scales, on adversarial blocks (zeros,
  -0.0, constant blocks, one outlier, x.5 ties, f32 subnormals, values near and beyond
  f16's range, near f32's limit) and on hypothesis-drawn blocks;
- dequantize: bit-identical to ggml on its own output and on arbitrary bytes (any f16
  scale, NaN and Inf included), and equal to gguf-py's dequantizers;
- the dtype table, the scale positions, APR's zero-padded short last block, and a GGUF
  input holding these types decodes.

Skipped when llama.cpp is not built (tests/llama_cpp/build.sh), except under CI=true.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "py"))

from helpers import need  # noqa: E402
from q4apr import codecs as C  # noqa: E402
from q4apr import dtypes  # noqa: E402

F32 = np.float32
CODECS = {"Q4_K": C.Q4_K, "Q6_K": C.Q6_K, "Q5_0": C.Q5_0}
GGML = {"Q4_K": 12, "Q6_K": 14, "Q5_0": 6}


@pytest.fixture(scope="session")
def ref():
    r = subprocess.run(["bash", str(REPO / "tests" / "llama_cpp" / "build_quants_ref.sh")],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        reason = r.stderr.strip().replace("[llama_cpp/build_quants_ref.sh] ", "") or "no oracle"
        need(reason)
    exe = r.stdout.strip()

    class Ref:
        @staticmethod
        def quantize(name, x):
            x = np.ascontiguousarray(x, F32).reshape(-1)
            p = subprocess.run([exe, "q", str(GGML[name]), str(x.size)], input=x.tobytes(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=True)
            return np.frombuffer(p.stdout, np.uint8)

        @staticmethod
        def dequantize(name, b, n):
            p = subprocess.run([exe, "d", str(GGML[name]), str(n)], input=bytes(b),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=True)
            return np.frombuffer(p.stdout, F32)
    return Ref


def assert_same_blocks(name, ours, theirs, x):
    c = CODECS[name]
    a, b = ours.reshape(-1, c.type_size), theirs.reshape(-1, c.type_size)
    bad = np.flatnonzero((a != b).any(axis=1))
    if bad.size:
        i = bad[0]
        blk = x.reshape(-1, c.block_size)[i]
        pytest.fail(f"{name}: {bad.size} of {a.shape[0]} blocks differ from ggml; first #{i}, "
                    f"bytes {np.flatnonzero(a[i] != b[i]).tolist()}\nx = {blk.tolist()}")


def same_bits(a, b):
    """float32 arrays equal bit for bit, any NaN equal to any NaN."""
    a, b = np.asarray(a, F32).reshape(-1), np.asarray(b, F32).reshape(-1)
    na, nb = np.isnan(a), np.isnan(b)
    return a.shape == b.shape and np.array_equal(na, nb) and \
        np.array_equal(a[~na].view(np.uint32), b[~nb].view(np.uint32))


# --------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------

def adversarial(bs, seed=0):
    """Named (k, bs) float32 block sets that hit the edges of the arithmetic."""
    rng = np.random.default_rng(seed)
    g = lambda k=4: rng.standard_normal((k, bs)).astype(F32)  # noqa: E731
    b = {
        "zeros": np.zeros((2, bs), F32),
        "neg_zeros": np.full((2, bs), -0.0, F32),
        "mixed_zeros": np.where(rng.random((4, bs)) < 0.5, F32(0.0), F32(-0.0)).astype(F32),
        "first_neg_zero": np.concatenate([[-0.0], np.zeros(bs - 1)]).astype(F32)[None],
        "constant_pos": np.full((2, bs), 0.75, F32),
        "constant_neg": np.full((2, bs), -3.25, F32),
        "constant_mixed": np.repeat(np.array([[1.0], [-1.0], [1e-20], [-6e4]], F32), bs, 1),
        "one_outlier": np.where(np.arange(bs) == 37 % bs, F32(1e4), g(1) * F32(0.01)),
        "one_neg_outlier": np.where(np.arange(bs) == 5, F32(-300.0), g(1) * F32(0.5)),
        "lone_value": np.where(np.arange(bs) == bs - 1, F32(2.0), F32(0.0))[None],
        "halves": (rng.integers(-64, 65, (8, bs)) * 0.5).astype(F32),
        "small_ints": rng.integers(-16, 17, (8, bs)).astype(F32),
        "ramp": np.tile(np.linspace(-1, 1, bs, dtype=F32), (2, 1)),
        "grid15": (rng.integers(0, 16, (4, bs)) / F32(15)).astype(F32),
        "grid63": (rng.integers(-32, 32, (4, bs)) / F32(32)).astype(F32),
        "positive": np.abs(g()),
        "negative": -np.abs(g()),
        "sparse": np.where(rng.random((4, bs)) < 0.1, g(), F32(0)),
        "f32_subnormal": g() * F32(1e-40),
        "f32_subnormal_ulps": (rng.integers(-12, 13, (4, bs)) * F32(2.0 ** -149)).astype(F32),
        "f32_tiny_normal": g() * F32(1e-37),
        "below_group_eps": g() * F32(1e-17),
        "f16_subnormal_scale": g() * F32(3e-6),
        "f16_tiny": g() * F32(1e-9),
        "near_f16_max": rng.uniform(-65504, 65504, (4, bs)).astype(F32),
        "f16_max_exact": np.where(np.arange(bs) % 7 == 0, F32(65504), g(1)),
        "beyond_f16": g() * F32(1e6),
        "far_beyond_f16": g() * F32(1e12),
        "huge": g() * F32(1e30),
        "near_f32_max": rng.uniform(-3.4e38, 3.4e38, (4, bs)).astype(F32),
        "mixed_magnitudes": g() * np.exp(rng.uniform(-30, 30, (4, bs))).astype(F32),
        "per_subblock_scales": g() * np.repeat(10.0 ** rng.integers(-8, 8, (4, bs // 16)), 16, 1).astype(F32),
        "one_live_subblock": np.where(np.arange(bs) // 32 == 3, g(1), F32(0)),
    }
    return {k: np.ascontiguousarray(v, F32).reshape(-1, bs) for k, v in b.items()}


def hyp_blocks(bs, max_blocks=3):
    elements = st.one_of(
        st.floats(width=32, allow_nan=False, allow_infinity=False),
        st.floats(-4.0, 4.0, width=32),
        st.sampled_from([0.0, -0.0, 0.5, -0.5, 1.0, -1.0, 1.5, -1.5, 2.5, -2.5, 15.5, -16.0,
                         65504.0, -65504.0, 1e-40, -1e-40]),
        st.floats(-float(F32(1e-30)), float(F32(1e-30)), width=32),
    )
    return st.integers(1, max_blocks).flatmap(lambda nb: hnp.arrays(F32, nb * bs, elements=elements))


def hyp_scaled(bs, max_blocks=3):
    """Gaussian blocks (what weights look like) at a drawn scale: realistic ties between
    the 21 trial scales of make_qkx2_quants."""
    return st.tuples(st.integers(1, max_blocks), st.integers(0, 2 ** 32 - 1),
                     st.floats(-40, 34)).map(
        lambda t: (np.random.default_rng(t[1]).standard_normal(t[0] * bs)
                   * F32(10.0 ** t[2])).astype(F32))


# --------------------------------------------------------------------------------------
# Quantization: byte identity with ggml
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", CODECS)
@pytest.mark.parametrize("scale", [1.0, 0.02, 1e-4, 30.0, 1e4])
def test_random_matches_ggml(ref, name, scale):
    x = (np.random.default_rng(int(scale * 1000) % 97).standard_normal(256 * 300)
         * F32(scale)).astype(F32)
    assert_same_blocks(name, C.quantize(CODECS[name], x), ref.quantize(name, x), x)


@pytest.mark.parametrize("name", CODECS)
def test_adversarial_matches_ggml(ref, name):
    bs = CODECS[name].block_size
    for case, blocks in adversarial(bs).items():
        x = blocks.reshape(-1)
        ours, theirs = C.quantize(CODECS[name], x), ref.quantize(name, x)
        if not np.array_equal(ours, theirs):
            assert_same_blocks(name + " " + case, ours, theirs, x)


@pytest.mark.parametrize("name", CODECS)
def test_blocks_are_independent_of_chunking(name):
    """Chunks inside the codec (and the pipeline's) never change a block's bytes."""
    c = CODECS[name]
    x = np.random.default_rng(5).standard_normal(c.block_size * (c._chunk + 3)).astype(F32)
    whole = C.quantize(c, x)
    parts = np.concatenate([C.quantize(c, x[i:i + c.block_size * 7])
                            for i in range(0, x.size, c.block_size * 7)])
    assert np.array_equal(whole, parts)
    assert np.array_equal(c.quantize_blocks(x.reshape(-1, c.block_size)).reshape(-1), whole)


def _hyp(name, strat):
    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(x=strat)
    def check(ref, x):
        assert_same_blocks(name, C.quantize(CODECS[name], x), ref.quantize(name, x), x)
    return check


@pytest.mark.parametrize("name", CODECS)
def test_hypothesis_matches_ggml(ref, name):
    _hyp(name, hyp_blocks(CODECS[name].block_size))(ref)


@pytest.mark.parametrize("name", CODECS)
def test_hypothesis_gaussian_matches_ggml(ref, name):
    _hyp(name, hyp_scaled(CODECS[name].block_size, 4 if name != "Q5_0" else 32))(ref)


# --------------------------------------------------------------------------------------
# Dequantization: bit identity with ggml and gguf-py
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", CODECS)
def test_round_trip_matches_ggml_and_gguf_py(ref, name):
    gguf = pytest.importorskip("gguf")
    c = CODECS[name]
    x = np.concatenate([b.reshape(-1) for b in adversarial(c.block_size, 1).values()]
                       + [np.random.default_rng(2).standard_normal(256 * 64).astype(F32)])
    q = ref.quantize(name, x)
    ours = C.dequantize(c, q, x.size)
    assert same_bits(ours, ref.dequantize(name, q, x.size))
    with np.errstate(all="ignore"):
        theirs = gguf.quants.dequantize(q, gguf.GGMLQuantizationType[name]).reshape(-1)
    assert same_bits(ours, theirs)
    assert same_bits(c.dequantize_blocks(q.reshape(-1, c.type_size)).reshape(-1), ours)
    # and the error is what 4-6 bits give on the Gaussian tail
    g = x[-256 * 64:]
    err = np.sqrt(np.mean((ours[-g.size:] - g) ** 2))
    assert err < {"Q4_K": 0.12, "Q6_K": 0.03, "Q5_0": 0.07}[name]


@pytest.mark.parametrize("name", CODECS)
def test_dequantize_arbitrary_bytes_matches_ggml(ref, name):
    """Any bytes, any f16 scales (subnormal, Inf, NaN): ggml's to_float bit for bit."""
    c = CODECS[name]
    raw = np.random.default_rng(3).integers(0, 256, (512, c.type_size), dtype=np.uint8)
    o, k = c.f16_scales
    sc = raw[:, o:o + 2 * k].copy().view("<u2")
    sc[::4] &= 0x3FFF                                    # plenty of ordinary scales too
    sc[1::8] = 0x7C00                                    # +Inf
    sc[3::16] = 0x0001                                   # smallest subnormal
    raw[:, o:o + 2 * k] = sc.view(np.uint8)
    n = 512 * c.block_size
    with np.errstate(all="ignore"):
        ours = C.dequantize(c, raw.reshape(-1), n)
    assert same_bits(ours, ref.dequantize(name, raw.reshape(-1), n))


# --------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------

def test_dtype_codes():
    assert dtypes.BY_GGUF[12].name == "Q4_K" and dtypes.BY_GGUF[14].name == "Q6_K"
    assert dtypes.BY_GGUF[6].name == "Q5_0"
    assert dtypes.BY_APR[12].name == "Q4_K" and dtypes.BY_APR[14].name == "Q6_K"
    for name, c in CODECS.items():
        d = dtypes.BY_NAME[name]
        assert (d.block_size, d.type_size, d.is_float) == (c.block_size, c.type_size, True)
        assert C.get_codec(name) is c and C.CODECS[name] is c
    assert dtypes.tensor_nbytes(dtypes.BY_NAME["Q4_K"], (3, 512)) == 3 * 2 * 144


def test_scales_f16_positions():
    x = np.random.default_rng(4).standard_normal(256 * 3).astype(F32)
    q4k = C.quantize(C.Q4_K, x)
    s = C.scales_f16(C.Q4_K, q4k)
    assert s.shape == (3, 2) and np.all(s > 0)           # d and dmin
    assert np.array_equal(s[:, 0], q4k.reshape(3, 144)[:, 0:2].copy().view("<f2")[:, 0])
    q6k = C.quantize(C.Q6_K, x)
    s = C.scales_f16(C.Q6_K, q6k)
    assert s.shape == (3,) and np.array_equal(s, q6k.reshape(3, 210)[:, 208:].copy().view("<f2")[:, 0])
    with np.errstate(over="ignore"):
        big = C.quantize(C.Q6_K, x * F32(1e8))
    assert not np.isfinite(C.scales_f16(C.Q6_K, big)).any()


@pytest.mark.parametrize("name", ["Q4_K", "Q6_K"])
def test_short_last_block_is_zero_padded(ref, name):
    """APR flattens tensors: a short last 256-block is quantized as if zero padded."""
    c = CODECS[name]
    x = np.random.default_rng(6).standard_normal(256 * 2 + 100).astype(F32)
    pad = np.concatenate([x, np.zeros(156, F32)])
    q = C.quantize(c, x)
    assert np.array_equal(q, ref.quantize(name, pad))
    assert np.array_equal(C.dequantize(c, q, x.size), ref.dequantize(name, q, pad.size)[:x.size])
    with pytest.raises(ValueError):
        C.quantize(C.Q5_0, x[:40])


def test_gguf_input_with_k_quants_decodes(ref, tmp_path):
    """A GGUF whose tensors are Q4_K/Q6_K/Q5_0 reads through q4apr: the values it
    quantizes from are ggml's dequantization of the stored blocks."""
    gguf = pytest.importorskip("gguf")
    import q4apr
    from q4apr import pipeline
    rng = np.random.default_rng(7)
    tensors = {"a.weight": ("Q4_K", (4, 512)), "b.weight": ("Q6_K", (3, 256)),
               "c.weight": ("Q5_0", (5, 96))}
    stored = {}
    w = gguf.GGUFWriter(str(tmp_path / "k.gguf"), "llama")
    for tname, (qname, shape) in tensors.items():
        x = rng.standard_normal(shape).astype(F32)
        q = ref.quantize(qname, x).reshape(shape[0], -1)
        stored[tname] = (qname, q, x.size)
        w.add_tensor(tname, q, raw_dtype=gguf.GGMLQuantizationType[qname])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with q4apr.open_model([str(tmp_path / "k.gguf")]) as m:
        for e in m.tensors:
            qname, q, n = stored[e.name]
            assert e.dtype.name == qname
            with e.open() as f:
                raw = f.read(e.nbytes)
            got = pipeline._decode(e.dtype, memoryview(raw), n, np.empty(n, F32))
            assert same_bits(got, ref.dequantize(qname, q.reshape(-1), n))
        sink = q4apr.MemorySink()
        q4apr.quantize(m, sink, q4apr.Options(format="gguf", chunk_bytes=1000))
    r = gguf.GGUFReader(str(_write(tmp_path / "out.gguf", sink.getvalue())))
    assert {t.name: t.tensor_type.name for t in r.tensors} == {n: "Q4_0" for n in tensors}


def _write(p, b):
    p.write_bytes(b)
    return p


def test_fast_and_exact_searches_agree():
    """The float-lane scale searches (taken on tame chunks) and the step-by-step ones
    (taken when a value could leave nearest_int's range) give the same bits."""
    with np.errstate(all="ignore"):
        _fast_and_exact()


def _fast_and_exact():
    rng = np.random.default_rng(8)
    X = np.ascontiguousarray((rng.standard_normal((32, 700)) * np.exp(rng.uniform(-20, 20, 700)))
                             .astype(F32))
    X[:, :5] = 0
    X[:, 5] = -2.0
    W = np.abs(X) + np.sqrt(np.add.reduce(X * X, axis=0) / F32(32))
    fast = C.Q4_K._make_qkx2_fast(X, W)
    assert fast is not None
    for a, b in zip(fast, C.Q4_K._make_qkx2_exact(X, W)):
        assert same_bits(np.asarray(a, F32), np.asarray(b, F32))
    X16 = np.ascontiguousarray(X.reshape(16, -1))
    fast = C.Q6_K._make_qx_fast(X16)
    assert fast is not None
    for a, b in zip(fast, C.Q6_K._make_qx_exact(X16)):
        assert same_bits(np.asarray(a, F32), np.asarray(b, F32))
    assert C.Q4_K._make_qkx2_fast(X * F32(1e-39), W) is None     # subnormal ranges: exact path
    X16[0, 0] = np.inf
    assert C.Q6_K._make_qx_fast(X16) is None


@pytest.mark.parametrize("name", ["Q4_K", "Q6_K"])
def test_pyodide_rounding_route_matches_ggml(ref, name, monkeypatch):
    """Under Pyodide the fast searches round through int32 (float clip is slow there):
    the same bytes, checked natively by forcing that route."""
    monkeypatch.setattr(C, "_WASM", True)
    x = np.concatenate([(np.random.default_rng(9).standard_normal(256 * 40) * F32(0.05)).astype(F32)]
                       + [b.reshape(-1) for b in adversarial(256, 2).values()])
    assert_same_blocks(name, C.quantize(CODECS[name], x), ref.quantize(name, x), x)


def test_set_kernel_is_used_for_whole_chunks_and_can_be_removed():
    """C.set_kernel (the page's JavaScript K-quant kernels): called with whole blocks,
    its bytes are the output; None restores numpy."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal(256 * 40 + 100).astype(np.float32)   # a padded last block too
    want = C.quantize("Q4_K", x)
    calls = []

    def kernel(flat, out2d):
        calls.append((flat.size, out2d.shape))
        C.set_kernel("Q4_K", None)
        try:
            C.Q4_K._quantize_rows(flat, out2d)
        finally:
            C.set_kernel("Q4_K", kernel)
        out2d[:, 0] ^= 1   # so the test sees these bytes are the ones written
    C.set_kernel("Q4_K", kernel)
    try:
        got = C.quantize("Q4_K", x)
        # the pipeline's call (quantize_measured) quantizes once with it, then decodes
        x40 = x[: 256 * 40]
        measured = C.quantize_measured("Q4_K", x40, np.empty(40 * 144, np.uint8), np.empty_like(x40))[0]
    finally:
        C.set_kernel("Q4_K", None)
    assert calls == [(256 * 40, (40, 144)), (256, (1, 144)), (256 * 40, (40, 144))]
    assert np.array_equal(measured, got[: 40 * 144])
    flipped = want.reshape(-1, 144).copy()
    flipped[:, 0] ^= 1
    assert np.array_equal(got.reshape(-1, 144), flipped)
    assert np.array_equal(C.quantize("Q4_K", x), want)
    for name in ("Q5_0", "Q8_0"):      # no kernel slot (Q4_0, APR_Q4: tests/test_kquants_js.py)
        with pytest.raises(ValueError):
            C.set_kernel(name, kernel)
