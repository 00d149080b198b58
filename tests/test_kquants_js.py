"""The browser's Q4_K/Q6_K kernels against ggml's own C code: kquants.wasm (static/kquants.ts,
WebAssembly SIMD, what the page uses) and static/kquants.js (plain JavaScript, its fallback).

Byte identity with the C oracle of tests/test_kquants.py (quantize_row_q4_K_ref and
quantize_row_q6_K_ref, no importance matrix) on random data at many scales, on its
adversarial blocks, on non-finite blocks (NaN with any payload, +-Inf) and on
hypothesis-drawn blocks; and with the numpy codecs on a few MB. The kernels run in Node
through tests/node/kquants_cli.mjs, many blocks per process. Mutation tests check that
these comparisons catch a kernel that is wrong in a small way (the wasm mutants are
compiled with build.sh's AssemblyScript).
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "py"))
sys.path.insert(0, str(REPO / "tests"))

from q4apr import codecs as C  # noqa: E402
from test_kquants import (adversarial, assert_same_blocks, hyp_blocks, hyp_scaled,  # noqa: E402,F401
                          ref)

F32 = np.float32
CLI = REPO / "tests" / "node" / "kquants_cli.mjs"
KERNEL = REPO / "static" / "kquants.js"
KERNEL_TS = REPO / "static" / "kquants.ts"
MODES = {"Q4_K": "q4k", "Q6_K": "q6k"}
NAMES = list(MODES)
IMPLS = ["wasm", "js"]


@pytest.fixture(scope="session")
def node():
    exe = shutil.which("node")
    if exe is None:
        pytest.fail("node is not installed (./build.sh test installs it)", pytrace=False)
    return exe


@pytest.fixture(scope="session")
def wasm_module(dist_dir):
    return dist_dir / "static" / "kquants.wasm"


def run_cli(node, x, args, env):
    """kquants_cli.mjs's stdout (bytes) for the f32 values x and args, with env added."""
    p = subprocess.run([node, str(CLI), *args], input=x.tobytes(), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, env=dict(os.environ, **env), timeout=600)
    if p.returncode != 0:
        pytest.fail(f"kquants_cli.mjs failed:\n{p.stderr.decode(errors='replace')[-3000:]}", pytrace=False)
    return p.stdout


def kernel_quantize(node, name, x, kernel=None, impl="js"):
    """The K-quant blocks from kquants.js (impl "js"; kernel: another copy of it) or from a
    kquants.wasm (impl "wasm"; kernel: the module's path)."""
    x = np.ascontiguousarray(x, F32).reshape(-1)
    env = {"KQUANTS_IMPL": impl}
    if kernel is not None:
        env["KQUANTS_WASM" if impl == "wasm" else "KQUANTS_JS"] = str(kernel)
    out = np.frombuffer(run_cli(node, x, [MODES[name], str(x.size)], env), np.uint8)
    assert out.size == x.size // 256 * C.CODECS[name].type_size
    return out


@pytest.fixture(params=IMPLS)
def kq(request, node):
    """quantize(name, x) with one of the page's kernels (wasm: dist's kquants.wasm)."""
    impl = request.param
    module = request.getfixturevalue("wasm_module") if impl == "wasm" else None
    return lambda name, x: kernel_quantize(node, name, x, kernel=module, impl=impl)


def check(kq, ref, name, x):
    assert_same_blocks(name, kq(name, x), ref.quantize(name, x), x)


# ------------------------------------------------------------------------------ inputs

SCALES = [1.0, 0.02, 1e-4, 30.0, 1e4, 1e-12, 1e-39, 1e18, 1e30]


def random_data(blocks_per_scale=200, seed=0):
    rng = np.random.default_rng(seed)
    parts = [(rng.standard_normal(256 * blocks_per_scale) * F32(s)).astype(F32) for s in SCALES]
    # skewed blocks: all positive, all negative, offset (the min is not 0)
    g = rng.standard_normal(256 * blocks_per_scale).astype(F32)
    parts += [np.abs(g), -np.abs(g), g + F32(3), (g * F32(0.1) - F32(1)).astype(F32)]
    return np.concatenate(parts)


def adversarial_data():
    return np.concatenate([b.reshape(-1) for seed in (0, 1) for b in adversarial(256, seed).values()])


def non_finite_data():
    """Blocks holding NaN (several payloads, both signs), +Inf and -Inf."""
    rng = np.random.default_rng(11)
    blocks = []
    for bits in (0x7FC00000, 0xFFC00000, 0x7FC00001, 0x7F800001, 0xFFFFFFFF, 0x7F800000, 0xFF800000):
        for pos in (0, 1, 5, 31, 37, 255):
            b = rng.standard_normal(256).astype(F32)
            b.view(np.uint32)[pos] = bits
            blocks.append(b)
        z = np.zeros(256, F32)
        z.view(np.uint32)[40] = bits
        blocks += [z, np.full(256, bits, np.uint32).view(F32)]
    b = rng.standard_normal(256).astype(F32)
    b[3], b[7], b[100] = np.inf, -np.inf, np.nan
    blocks.append(b)
    b = np.full(256, 3e38, F32)
    b[::2] = -3e38                                    # max - min overflows to Inf
    blocks.append(b)
    return np.concatenate(blocks)


# ------------------------------------------------------------------------------ tests

@pytest.mark.parametrize("name", NAMES)
def test_random_matches_ggml(kq, ref, name):
    check(kq, ref, name, random_data())


@pytest.mark.parametrize("name", NAMES)
def test_adversarial_matches_ggml(kq, ref, name):
    check(kq, ref, name, adversarial_data())


@pytest.mark.parametrize("name", NAMES)
def test_non_finite_matches_ggml(kq, ref, name):
    """ggml's bytes for NaN/Inf blocks too (its `>` scans skip NaN, so a NaN block may
    even get finite scales); the pipeline refuses such input before quantizing."""
    check(kq, ref, name, non_finite_data())


def _drawn(strategy, n):
    """n examples of a hypothesis strategy, to run as one batch (one node process)."""
    got = []

    @settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(x=strategy)
    def collect(x):
        got.append(np.asarray(x, F32).reshape(-1))
    collect()
    return np.concatenate(got)


@pytest.mark.parametrize("name", NAMES)
def test_hypothesis_matches_ggml(kq, ref, name):
    check(kq, ref, name, _drawn(hyp_blocks(256), 400))


@pytest.mark.parametrize("name", NAMES)
def test_hypothesis_gaussian_matches_ggml(kq, ref, name):
    check(kq, ref, name, _drawn(hyp_scaled(256, 4), 400))


@pytest.mark.parametrize("name", NAMES)
def test_matches_numpy_codecs(kq, name):
    """The same bytes as the numpy codec (what the CLI writes) on 4 MB of weights."""
    rng = np.random.default_rng(21)
    x = (rng.standard_normal(1 << 20) * F32(0.02)).astype(F32)
    ours = kq(name, x)
    assert_same_blocks(name, ours, C.quantize(C.CODECS[name], x), x)


def skip_path_data(seed=5):
    """Blocks aimed at the kernels' exact shortcuts (incremental L, pruning): many trials
    near rounding boundaries (grids at random scales), heavy tails, offsets, and scales at
    the edges of Q6_K's `safe` range (|max| ~ 2^-20, sum |x| ~ 2^14)."""
    rng = np.random.default_rng(seed)
    n = 256 * 300
    s = lambda: np.repeat(10.0 ** rng.uniform(-3, 3, n // 16), 16)  # noqa: E731
    parts = [
        rng.laplace(size=n) * s(),
        rng.standard_t(2, size=n) * s(),
        rng.uniform(-1, 1, n) * s(),
        (rng.standard_normal(n) + 2.5) * s(),
        rng.integers(-33, 34, n) / rng.choice([15.0, 31.0, 32.0, 33.0, 64.0], n // 32).repeat(32),
        rng.integers(0, 31, n) * 0.5 - 7.25,
        rng.standard_normal(n) * np.repeat(2.0 ** rng.uniform(-22, -18, n // 16), 16),
        rng.standard_normal(n) * np.repeat(2.0 ** rng.uniform(9, 11.5, n // 16), 16),
    ]
    return np.concatenate(parts).astype(F32)


@pytest.mark.parametrize("name", NAMES)
def test_skip_paths_match_ggml(kq, ref, name):
    check(kq, ref, name, skip_path_data())


def test_blocks_are_independent_of_batching(kq):
    """A block's bytes do not depend on the blocks before it (module scratch is reset),
    nor on where the wasm wrapper's 1024-block slices fall."""
    x = np.concatenate([adversarial_data()[:256 * 40], random_data(3),
                        np.random.default_rng(4).standard_normal(256 * 2100).astype(F32)])
    for name in NAMES:
        ts = C.CODECS[name].type_size
        whole = kq(name, x)
        rev = kq(name, x.reshape(-1, 256)[::-1]).reshape(-1, ts)[::-1].reshape(-1)
        assert np.array_equal(whole, rev)
        assert np.array_equal(whole[-ts * 1500:], kq(name, x[-256 * 1500:]))


# ------------------------------------------------------------------------------ mutants

# Each mutant changes the kernel a little; the comparisons above must notice.
MUTANTS = {
    "Q4_K": [
        (r"if \(curError < bestError\)", "if (curError <= bestError)"),
        (r"for \(let i = 0; i < 32; \+\+i\) xm\[i\] = fr\(x\[i\] - min\);", ""),    # no `min` reuse
        (r"sumXL = fr\(sumXL \+ fr\(wl \* x\[i\]\)\);", "sumXL = sumXL + wl * x[i];"),  # f64 sum
        (r"if \(d === 0\) continue;", "if (!d) continue;"),
        (r"const avX = fr\(Math.sqrt\(fr\(sumX2 / 32\)\)\);", "const avX = Math.sqrt(sumX2 / 32);"),
        (r"if \(same\) continue;", "if (same && false) continue;\n    if (is === 20) continue;"),
        (r"if \(lb >= bestError\)", "if (lb >= bestError * 0.999)"),                # unsound pruning
        (r"const PR_MARGIN = 2 \*\* -24;", "const PR_MARGIN = -(2 ** -14);"),
        (r"const QKX2_THR = 1 - 2 \*\* -20;", "const QKX2_THR = 1 + 2 ** -9;"),      # unsound skip
        (r"fr\(fr\(iscale \* xmi\) \+ 12582912\) - 12582912;", "Math.round(fr(iscale * xmi));"),
        (r"sl2 \+= wi \* \(l \* l - lo \* lo\);", "sl2 += wi * (l * l);"),       # wrong incremental sum
    ],
    "Q6_K": [
        (r"fr\(sumlx \* sumlx\) > fr\(best \* suml2\)", "sumlx * sumlx > best * suml2"),
        (r"if \(k === 9\) continue;", "if (k === 9 || k === 0) continue;"),
        (r"l = l > 31 \? 31 : l < -32 \? -32 : l;\n        L6", "l = l > 31 ? 31 : l < -31 ? -31 : l;\n        L6"),
        (r"if \(d === 0\) continue;\n      const o = xo \+ 16", "if (!d) continue;\n      const o = xo + 16"),
        (r"if \(same\) continue;\n    if \(safe\)", "if (same || k === 10) continue;\n    if (safe)"),
        (r"const Q6_THR = 1 - 2 \*\* -20;", "const Q6_THR = 1 + 2 ** -9;"),          # unsound skip
        (r"const Q6_UP = 1 \+ 2 \*\* -16;", "const Q6_UP = 1 - 2 ** -10;"),         # unsound pruning
        (r"b \+= w\[i\] \* \(l \* l - lo \* lo\);", "b += w[i] * (l * l);"),        # wrong incremental sum
    ],
    "both": [
        (r"if \(v >= 8388608 && v < 16777216\) return \(v - 12582912\) \| 0;", "return Math.round(t);"),
    ],
}


@pytest.mark.parametrize("name", NAMES)
def test_mutants_are_caught(node, ref, name, tmp_path):
    src = KERNEL.read_text()
    x = np.concatenate([random_data(40, 3), adversarial_data(), non_finite_data(),
                        _drawn(hyp_scaled(256, 4), 150), _drawn(hyp_blocks(256), 150)])
    want = ref.quantize(name, x)
    assert np.array_equal(kernel_quantize(node, name, x), want)
    for pat, repl in MUTANTS[name] + MUTANTS["both"]:
        mutated, n = re.subn(pat, repl, src)
        assert n >= 1, f"mutant pattern not found (kernel changed?): {pat}"
        k = tmp_path / "kquants_mutant.js"
        k.write_text(mutated)
        assert not np.array_equal(kernel_quantize(node, name, x, kernel=k), want), \
            f"{name}: the tests do not notice the mutant {pat!r} -> {repl!r}"


# Mutants of static/kquants.ts, compiled as build.sh compiles it.
# (makeQkx2X4's 2**22 bound on |t| has no mutant here: no data we know makes a trial's
# refitted min rise that far above the sub-block's smallest value; the bound is argued
# exact in the kernel instead.)
WASM_MUTANTS = {
    "Q4_K": [
        (r"const upd = v128.and\(dPos, f32x4.lt\(cur, best\)\);", "const upd = v128.and(dPos, f32x4.le(cur, best));"),
        (r"    range = f32x4.sub\(max, min\);\n", "\n"),                                  # no `min` reuse
        (r"thisScale = v128.bitselect\(f32x4.div\(sxl, sl2\), thisScale, minPos\);", ""),
        (r"const flat = f32x4.eq\(max, min\);", "const flat = f32x4.ne(max, max);"),
        (r"if \(d == 0\) continue;                                        // C's",
         "if (d == 0 || d != d) continue;                                 // C's"),
        (r"sl2 = f32x4.add\(sl2, f32x4.mul\(wl, lf\)\);", "sl2 = f32x4.add(sl2, f32x4.mul(f32x4.mul(lf, lf), v128.load(pw + i)));"),
        (r"for \(let is = 0; is <= 20; \+\+is\) \{\n    iscale", "for (let is = 0; is < 20; ++is) {\n    iscale"),
        (r"f32x4.add\(v128.load\(px \+ i\), dmv\), dv\)\), 0, 15\)", "f32x4.add(v128.load(px + i), dmv), dv)), 0, 14)"),
        (r"i8x16.shl\(narrow\(p \+ 128\), 4\)", "i8x16.shl(narrow(p + 132), 4)"),
        # C's nearest_int garbage for NaN (kept: the bytes of NaN blocks are ggml's too);
        # in Q6_K the block's final pass overwrites the L where it would show
        (r"return i32x4.sub\(v128.and\(f32x4.add\(t, f32x4.splat\(MAGIC\)\), i32x4.splat\(0x007fffff\)\), i32x4.splat\(0x00400000\)\);",
         "return i32x4.trunc_sat_f32x4_s(f32x4.nearest(t));"),
    ],
    "Q6_K": [
        (r"f32x4.gt\(f32x4.mul\(sumlx, sumlx\), f32x4.mul\(best, suml2\)\)", "f32x4.ge(f32x4.mul(sumlx, sumlx), f32x4.mul(best, suml2))"),
        (r"if \(k == 9\) continue;", "if (k == 9 || k == 0) continue;"),
        (r"lo = f32x4.splat\(-32\)", "lo = f32x4.splat(-31)"),                     # finite groups
        (r"v128.load\(px \+ i\)\)\), -32, 31\)", "v128.load(px + i))), -31, 31)"),   # the others
        (r"const finite = hmax\(bits\) < 0x7F800000;", "const finite = true;"),
        (r"f32x4.nearest\(t\)", "f32x4.trunc(t)"),
        (r"v128.bitselect\(z, i32x4.add\(i32x4.trunc_sat_f32x4_s\(v128.load\(pl \+ i\)\), off\), tiny\)",
         "i32x4.add(i32x4.trunc_sat_f32x4_s(v128.load(pl + i)), off)"),
        (r"const wi = f32x4.mul\(xi, xi\);", "const wi = f32x4.abs(xi);"),
        (r"i8x16.shl\(i8x16.shr_u\(bb, 4\), 2\)", "i8x16.shl(i8x16.shr_u(bb, 4), 3)"),
        (r"f32x4.div\(v128.load\(px \+ i\), dv\)\), -32, 31\)", "f32x4.div(v128.load(px + i), dv)), -32, 30)"),
    ],
}


def asc_command():
    """build.sh's AssemblyScript compiler and flags (it fetched the compiler when it built dist)."""
    text = (REPO / "build.sh").read_text()
    version = re.search(r"^ASC_VERSION=(\S+)", text, re.M).group(1)
    flags = re.search(r"^ASC_FLAGS=\(([^)]*)\)", text, re.M).group(1).split()
    asc = REPO / ".cache" / f"assemblyscript-{version}" / "node_modules" / "assemblyscript" / "bin" / "asc.js"
    if not asc.exists():
        pytest.fail(f"{asc} is missing: ./build.sh build fetches it", pytrace=False)
    return [str(asc)], flags


def compiled_mutants(node, mutants, tmp_path):
    """(pattern, replacement, path of kquants.ts so mutated, compiled) for each mutant."""
    src = KERNEL_TS.read_text()
    asc, flags = asc_command()
    for pat, repl in mutants:
        mutated, n = re.subn(pat, repl, src)
        assert n >= 1, f"mutant pattern not found (kernel changed?): {pat}"
        ts, wasm = tmp_path / "kquants_mutant.ts", tmp_path / "kquants_mutant.wasm"
        ts.write_text(mutated)
        subprocess.run([node, *asc, str(ts), *flags, "-o", str(wasm)], check=True, timeout=300)
        yield pat, repl, wasm


@pytest.mark.parametrize("name", NAMES)
def test_wasm_mutants_are_caught(node, ref, wasm_module, name, tmp_path):
    x = np.concatenate([random_data(40, 3), adversarial_data(), non_finite_data(),
                        _drawn(hyp_scaled(256, 4), 150), _drawn(hyp_blocks(256), 150)])
    want = ref.quantize(name, x)
    assert np.array_equal(kernel_quantize(node, name, x, kernel=wasm_module, impl="wasm"), want)
    for pat, repl, wasm in compiled_mutants(node, WASM_MUTANTS[name], tmp_path):
        assert not np.array_equal(kernel_quantize(node, name, x, kernel=wasm, impl="wasm"), want), \
            f"{name}: the tests do not notice the wasm mutant {pat!r} -> {repl!r}"


# ------------------------------------------------------------------------------ Q4_0, APR Q4

# kquants.wasm also quantizes the 32-value formats (the page's Q4_0 and APR Q4): the same
# bytes and the same decoded values (the report's statistics) as the numpy codecs, which
# tests/test_codecs.py holds to gguf-py, ggml and Aprender; blocks outside its fast path
# (NaN, Inf, scales out of range) make it decline, and numpy does those.
MODES32 = {"Q4_0": "q4_0", "APR_Q4": "aprq4"}


def wasm_quantize32(node, module, name, x, stats=False):
    """(blocks, y, indices of the blocks left to numpy) from kquants.wasm; with stats, y is
    the statistics of codecs.quantize_measured (signal units, noise units, max error)."""
    x = np.ascontiguousarray(x, F32).reshape(-1)
    out = run_cli(node, x, [MODES32[name], str(x.size)] + (["stats"] if stats else []),
                  {"KQUANTS_IMPL": "wasm", "KQUANTS_WASM": str(module)})
    nb, ny = x.size // 32, (x.size // 128 + 1 if stats else x.size)
    assert (len(out) - 18 * nb - 4 * ny) % 4 == 0
    y = np.frombuffer(out, np.float32, ny, 18 * nb)
    return (np.frombuffer(out, np.uint8, 18 * nb).reshape(nb, 18),
            y if stats else y.reshape(nb, 32),
            np.frombuffer(out, np.int32, offset=18 * nb + 4 * ny))


def numpy32(name, x):
    y = np.empty(x.size, F32)
    return C.quantize(name, x, dequantized=y).reshape(-1, 18), y.reshape(-1, 32)


def scaled32(seed=0):
    """Blocks at scales across f32 (f16 subnormal and overflowing scales included), skewed,
    one outlier, half-way ties of the rounding, zeros."""
    rng = np.random.default_rng(seed)
    parts = [(rng.standard_normal(32 * 500) * F32(s)).astype(F32)
             for s in (1, 0.02, 1e-4, 3e-6, 6e-5, 1e-8, 1e-30, 1e-36, 1e-38, 1e-40, 1e4, 6e4, 7e4, 1e30, 4e37)]
    g = rng.standard_normal(32 * 500).astype(F32)
    tiny = np.zeros(32 * 4, F32)                      # max|x| = 2^-149: APR's d rounds to 0
    tiny[::3], tiny[1::3] = F32(1e-45), F32(-1e-45)
    parts += [np.abs(g), -np.abs(g), g + F32(3), np.zeros(32 * 20, F32), -np.zeros(32 * 4, F32), tiny]
    spike = np.zeros((500, 32), F32) + rng.standard_normal((500, 32)).astype(F32) * F32(1e-3)
    spike[np.arange(500), rng.integers(0, 32, 500)] = rng.choice([-7.0, 8.0, 1e3], 500)
    parts.append(spike.reshape(-1))
    ties = rng.integers(-16, 17, (500, 32)).astype(F32) * F32(0.5)
    ties[:, 0] = 7                                    # APR: d = 1, x/d on half-way points
    parts.append(ties.reshape(-1))
    return np.concatenate(parts)


def check32(node, module, name, x, expect_left=None):
    """The kernel's blocks and decoded values equal numpy's for every block it did; the
    ones it left are exactly those off numpy's fast path (when given)."""
    blocks, y, left = wasm_quantize32(node, module, name, x)
    want, want_y = numpy32(name, x)
    done = np.ones(len(want), bool)
    done[left] = False
    diff = np.flatnonzero(done & (blocks != want).any(axis=1))
    assert diff.size == 0, f"{name}: {diff.size} blocks differ, first {diff[0]}: x = {x.reshape(-1, 32)[diff[0]]}"
    assert np.array_equal(y[done].view(np.uint32), want_y[done].view(np.uint32))
    if expect_left is not None:
        assert sorted(left.tolist()) == sorted(expect_left)
    return left


@pytest.mark.parametrize("name", list(MODES32))
def test_32_value_formats_match_numpy_with_their_round_trip(node, wasm_module, name):
    x = np.concatenate([scaled32(), _drawn(hyp_scaled(32, 4), 300), _drawn(hyp_blocks(32), 300)])
    left = check32(node, wasm_module, name, x)
    assert len(left) < len(x) // 32 // 5            # the fast path does most blocks


@pytest.mark.parametrize("name", list(MODES32))
def test_32_value_formats_leave_the_blocks_numpy_does_slowly(node, wasm_module, name):
    """Exactly the blocks off the fast path (NaN, Inf, tiny or huge scales) are left,
    wherever they fall in the kernel's 8192-block slices; Q4_0's |max| ties (C takes the
    first of them) and all-zero blocks (C's d is -0) are done, as numpy does them."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((9000, 32)).astype(F32)
    odd = [np.full(32, np.nan, F32), np.full(32, -np.inf, F32), np.full(32, 1e-44, F32)]
    at = [0, 17, 8191]
    if name == "Q4_0":
        ties = [np.r_[np.float32(3e38), np.full(31, -3e38, F32)], np.zeros(32, F32), -np.zeros(32, F32),
                np.r_[np.float32(2), np.float32(-2), np.zeros(30, F32)],
                np.r_[np.zeros(5, F32), np.float32(-2), np.float32(2), np.zeros(25, F32)],
                np.r_[np.float32(1), np.full(30, -3, F32), np.float32(3)],
                np.r_[np.full(31, 0.5, F32), np.float32(-0.5)]]
        for i, b in zip([8192, 8999, 100, 101, 5, 6, 7], ties):
            x[i] = b
    for i, b in zip(at, odd):
        x[i] = b
    check32(node, wasm_module, name, x.reshape(-1), expect_left=at)


def stats_data():
    rng = np.random.default_rng(12)
    exact = (rng.integers(0, 8, 256) * 1e4).astype(F32)   # d = 1e4 (APR), no error...
    exact[0], exact[1] = 7e4, 4.9e3                       # ...but here: the largest, negative
    return np.concatenate([exact] + [(rng.standard_normal(256 * 40) * F32(s)).astype(F32)
                                     for s in (1, 0.02, 1e-5, 300)]
                          + [rng.standard_normal(256 * 9000).astype(F32)])   # > one 8192-block slice


def halving_squares(v):
    """The kernel's sums of squares: units of 256 (the last zero padded), v*v, then
    element i + element i + 128, then 64 apart, ..., 1, in f32."""
    a = np.zeros((-(-v.size // 256), 256), F32)
    a.reshape(-1)[: v.size] = v
    with np.errstate(over="ignore"):                  # squares beyond f32: Inf, as the kernel's
        a *= a
    w = 128
    while w >= 1:
        a[:, :w] = a[:, :w] + a[:, w:2 * w]
        w //= 2
    return a[:, 0].copy()


def check_stats(node, module, name, x):
    """The kernel's statistics equal the halving sums of x and of numpy's error, bit for
    bit, and numpy's own figures (its einsum order) to f32 rounding."""
    blocks, stats, left = wasm_quantize32(node, module, name, x, stats=True)
    assert left.size == 0
    c = C.CODECS[name]
    y = np.empty_like(x)
    want = C.quantize(c, x, dequantized=y)
    err = y - x
    u = x.size // 256
    assert np.array_equal(blocks.reshape(-1), want)
    assert np.array_equal(stats[:u].view(np.uint32), halving_squares(x).view(np.uint32))
    assert np.array_equal(stats[u:2 * u].view(np.uint32), halving_squares(err).view(np.uint32))
    assert stats[-1] == np.abs(err).max() > 0
    _, signal, noise, _ = C.quantize_measured(c, x, np.empty_like(want), np.empty_like(x))
    assert np.allclose(stats[:u], signal, rtol=1e-5) and np.allclose(stats[u:2 * u], noise, rtol=1e-5)


@pytest.mark.parametrize("name", list(MODES32))
def test_32_value_formats_give_the_report_statistics_bit_for_bit(node, wasm_module, name):
    """The fused statistics (unit sums of squares of x and of the error, max |error|) are
    the halving sums to the bit; a slice with a block left to numpy is reported as such
    (numpy then redoes it all)."""
    x = stats_data()
    check_stats(node, wasm_module, name, x)
    x[256 * 50 + 3] = np.nan
    assert wasm_quantize32(node, wasm_module, name, x, stats=True)[2].tolist() == [50 * 8]


def test_the_core_patches_the_blocks_a_kernel_leaves(monkeypatch):
    """codecs.quantize with a kernel that leaves some blocks: numpy does those (gathered),
    bytes and decoded values equal numpy's alone."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal(32 * 1000 + 7).astype(F32)
    x[32 * 5:32 * 6] = 0
    for name in MODES32:
        c = C.CODECS[name]
        want_y = np.empty(x.size if name == "APR_Q4" else 32 * 1000, F32)
        xs = x if name == "APR_Q4" else x[: 32 * 1000]
        want = C.quantize(name, xs, dequantized=want_y)

        def half(flat, out2d, y, bad, stats=None, c=c):   # does the odd blocks, leaves the even ones
            n = out2d.shape[0]
            if stats is not None:
                stats[:] = np.nan
            tmp_y = None if y is None else np.empty_like(y)
            c._numpy_rows(flat, out2d, tmp_y)
            out2d[::2] = 0xAA
            if y is not None:
                y[:] = tmp_y
                y.reshape(n, 32)[::2] = np.nan
            bad[: (n + 1) // 2] = np.arange(0, n, 2)
            return (n + 1) // 2
        monkeypatch.setattr(c, "kernel", half)
        monkeypatch.setattr(c, "kernel_stats", True)
        y = np.empty_like(want_y)
        got = C.quantize(name, xs, dequantized=y)
        assert np.array_equal(got, want) and np.array_equal(y.view(np.uint32), want_y.view(np.uint32))
        assert np.array_equal(C.quantize(name, xs), want)
        # the fused statistics too: a kernel that leaves blocks leaves them all to numpy
        x256 = x[: 32 * 1000 // 256 * 256]
        got_m = C.quantize_measured(c, x256, np.empty(C.nbytes(c, x256.size), np.uint8), np.empty_like(x256))
        monkeypatch.setattr(c, "kernel", None)
        want_m = C.quantize_measured(c, x256, np.empty(C.nbytes(c, x256.size), np.uint8), np.empty_like(x256))
        assert np.array_equal(got_m[0], want_m[0]) and got_m[3] == want_m[3]
        assert np.array_equal(got_m[1], want_m[1]) and np.array_equal(got_m[2], want_m[2])


WASM_MUTANTS_32 = {
    "Q4_0": [
        (r"f32x4.splat\(8.5\)", "f32x4.splat(8.499)"),
        (r"v128.store\(GL \+ i, i32x4.sub\(q, i32x4.shr_s\(q, 4\)\)\);", "v128.store(GL + i, q);"),
        (r"\(mx >= negMn \|\| negMn > mx\)", "(true)"),
        (r"ctz\(mask\)", "(31 - clz(mask))"),
        (r"mag != 0 \? firstOfMagnitude\(px, mag\) : 0", "firstOfMagnitude(px, mag)"),
        (r"d != 0 \? <f32>1 / d : 0", "<f32>1 / d"),
        (r"v128.store\(po \+ 2, v128.or\(lo, i8x16.shl\(hi, 4\)\)\);", "v128.store(po + 2, v128.or(hi, i8x16.shl(lo, 4)));"),
    ],
    "APR_Q4": [
        (r"i32x4.splat\(17\)", "i32x4.splat(16)"),
        (r"const h = f32x4.splat\(d \* <f32>0.5\);", "const h = f32x4.splat(d * <f32>0.5000001);"),
        (r"<f32>2.350988701644575e-38 && d <= MAX32", "<f32>0 && d <= MAX32"),
    ],
    "both": [
        (r"i32x4.sub\(v128.load\(GL \+ i\), i32x4.splat\(8\)\)", "i32x4.sub(v128.load(GL + i), i32x4.splat(7))"),
        (r"store<u16>\(po, <u16>d16\);", "store<u16>(po, <u16>(d16 ^ 1));"),
    ],
}


@pytest.mark.parametrize("name", list(MODES32))
def test_wasm_32_value_mutants_are_caught(node, wasm_module, name, tmp_path):
    nan = np.r_[np.full(32, np.nan, F32), np.arange(32, dtype=F32)]
    nan[32 + 7] = np.nan                              # a NaN among finite values
    x = np.concatenate([scaled32(), _drawn(hyp_blocks(32), 200), nan])
    check32(node, wasm_module, name, x)
    for pat, repl, wasm in compiled_mutants(node, WASM_MUTANTS_32[name] + WASM_MUTANTS_32["both"], tmp_path):
        with pytest.raises(AssertionError):
            check32(node, wasm, name, x)


STATS_MUTANTS = [
    (r"return \(load<f32>\(p\) \+ load<f32>\(p, 8\)\) \+ \(load<f32>\(p, 4\) \+ load<f32>\(p, 12\)\);",
     "return ((load<f32>(p) + load<f32>(p, 4)) + load<f32>(p, 8)) + load<f32>(p, 12);"),
    (r"return i32x4.max_s\(m, v128.and\(e, i32x4.splat\(0x7FFFFFFF\)\)\);", "return i32x4.max_s(m, e);"),
    (r"v128.store\(SQX \+ o, f32x4.mul\(xv, xv\)\);", "v128.store(SQX + o, f32x4.mul(y, y));"),
    (r"for \(let w: usize = 512; w >= 16; w >>= 1\)", "for (let w: usize = 512; w >= 32; w >>= 1)"),
]


def test_wasm_statistics_mutants_are_caught(node, wasm_module, tmp_path):
    x = stats_data()[: 256 * 1200]
    check_stats(node, wasm_module, "APR_Q4", x)
    for pat, repl, wasm in compiled_mutants(node, STATS_MUTANTS, tmp_path):
        with pytest.raises(AssertionError):
            check_stats(node, wasm, "APR_Q4", x)


# ------------------------------------------------------------------------ K-quant statistics

def wasm_kquant_stats(node, module, name, x):
    """(blocks, statistics) from the wasm K-quant kernel in its measuring mode."""
    x = np.ascontiguousarray(x, F32).reshape(-1)
    out = run_cli(node, x, [MODES[name], str(x.size), "stats"],
                  {"KQUANTS_IMPL": "wasm", "KQUANTS_WASM": str(module)})
    nb, ts = x.size // 256, C.CODECS[name].type_size
    assert len(out) == nb * ts + 4 * (2 * nb + 1)
    return np.frombuffer(out, np.uint8, nb * ts), np.frombuffer(out, np.float32, offset=nb * ts)


def kquant_stats_data():
    """The 32-value statistics data (1,100 blocks: past the kernel's 1,024-block slices),
    ggml's random scales, zero and flat blocks, and blocks whose f16 scale underflows."""
    rng = np.random.default_rng(21)
    flat = np.full(256, 0.25, F32)
    return np.concatenate([stats_data()[: 256 * 1100], random_data(20).reshape(-1), np.zeros(256, F32),
                           flat, (rng.standard_normal(512) * F32(1e-9)).astype(F32)])


def check_kquant_stats(node, module, name, x):
    """Blocks equal numpy's (ggml's); the statistics are the halving sums of x and of the
    error of numpy's dequantize, and max |error|, bit for bit."""
    blocks, stats = wasm_kquant_stats(node, module, name, x)
    y = np.empty_like(x)
    want = C.quantize(name, x, dequantized=y)
    err = y - x
    u = x.size // 256
    assert np.array_equal(blocks, want)
    assert np.array_equal(stats[:u].view(np.uint32), halving_squares(x).view(np.uint32))
    assert np.array_equal(stats[u:2 * u].view(np.uint32), halving_squares(err).view(np.uint32))
    # max |error| on the bits with the sign cleared, as the core takes it (NaN above all:
    # at 1e30, Q4_K's d1 * q - m1 is Inf - Inf)
    want_max = (err.view(np.int32) & np.int32(0x7FFFFFFF)).max()
    assert stats[-1:].view(np.int32)[0] == want_max > 0


@pytest.mark.parametrize("name", NAMES)
def test_kquant_kernels_give_the_report_statistics_bit_for_bit(node, wasm_module, name):
    check_kquant_stats(node, wasm_module, name, kquant_stats_data())


KQUANT_STATS_MUTANTS = {
    "Q4_K": [(r"f32x4.convert_i32x4_s\(v128.load\(pl \+ i\)\)\), m1\)", "f32x4.convert_i32x4_s(v128.load(pl + i))), f32x4.neg(m1))"),
             (r"const d1 = f32x4.splat\(dh \* ", "const d1 = f32x4.splat(dmh * ")],
    "Q6_K": [(r"i32x4.sub\(v128.load\(pl \+ i\), off\)", "i32x4.sub(v128.load(pl + i), i32x4.splat(31))"),
             (r"unchecked\(STATS\[nUnits \+ u\] = halve\(SQE\)\);", "unchecked(STATS[nUnits + u] = halve(SQX));")],
}


@pytest.mark.parametrize("name", NAMES)
def test_wasm_kquant_statistics_mutants_are_caught(node, wasm_module, name, tmp_path):
    x = kquant_stats_data()[-256 * 200:]
    check_kquant_stats(node, wasm_module, name, x)
    for pat, repl, wasm in compiled_mutants(node, KQUANT_STATS_MUTANTS[name], tmp_path):
        with pytest.raises(AssertionError):
            check_kquant_stats(node, wasm, name, x)


# ------------------------------------------------------------------------------- F16 input

F16_MUTANTS = [
    (r"i32x4.shl\(v128.and\(v, low\), 13\)", "i32x4.shl(v128.and(v, low), 12)"),
    (r"v128.bitselect\(v128.or\(em, top\), finite, special\)", "finite"),
    (r"i32x4.shl\(i32x4.shr_u\(v, 15\), 31\)", "i32x4.shl(i32x4.shr_u(v, 15), 30)"),
    (r"reinterpret<f32>\(0x77800000\)", "reinterpret<f32>(0x77000000)"),
]


def wasm_f16(node, module, h):
    out = run_cli(node, h, ["f16", str(h.size)], {"KQUANTS_IMPL": "wasm", "KQUANTS_WASM": str(module)})
    return np.frombuffer(out, np.float32)


def check_f16(node, module):
    """Every half (all 65,536 bit patterns: subnormals, Inf, NaN payloads, -0) decodes to
    numpy's float32 bits, across the kernel's slices and a last partial eight."""
    h = np.tile(np.arange(65536, dtype=np.uint16), 5)[: 5 * 65536 - 3]
    got = wasm_f16(node, module, h)
    assert np.array_equal(got.view(np.uint32), h.view(np.float16).astype(F32).view(np.uint32))


def test_f16_decoding_is_numpys_to_the_bit(node, wasm_module, tmp_path):
    check_f16(node, wasm_module)
    for pat, repl, wasm in compiled_mutants(node, F16_MUTANTS, tmp_path):
        with pytest.raises(AssertionError):
            check_f16(node, wasm)
