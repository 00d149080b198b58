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


def js_quantize(node, name, x, kernel=None, impl="js"):
    """The blocks from kquants.js (impl "js"; kernel: another copy of it) or from a
    kquants.wasm (impl "wasm"; kernel: the module's path)."""
    x = np.ascontiguousarray(x, F32).reshape(-1)
    env = dict(os.environ, KQUANTS_IMPL=impl)
    if kernel is not None:
        env["KQUANTS_WASM" if impl == "wasm" else "KQUANTS_JS"] = str(kernel)
    p = subprocess.run([node, str(CLI), MODES[name], str(x.size)], input=x.tobytes(),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, timeout=600)
    if p.returncode != 0:
        pytest.fail(f"kquants_cli.mjs failed:\n{p.stderr.decode(errors='replace')[-3000:]}", pytrace=False)
    out = np.frombuffer(p.stdout, np.uint8)
    assert out.size == x.size // 256 * C.CODECS[name].type_size
    return out


@pytest.fixture(params=IMPLS)
def kq(request, node):
    """quantize(name, x) with one of the page's kernels (wasm: dist's kquants.wasm)."""
    impl = request.param
    module = request.getfixturevalue("wasm_module") if impl == "wasm" else None
    return lambda name, x: js_quantize(node, name, x, kernel=module, impl=impl)


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
    assert np.array_equal(js_quantize(node, name, x), want)
    for pat, repl in MUTANTS[name] + MUTANTS["both"]:
        mutated, n = re.subn(pat, repl, src)
        assert n >= 1, f"mutant pattern not found (kernel changed?): {pat}"
        k = tmp_path / "kquants_mutant.js"
        k.write_text(mutated)
        assert not np.array_equal(js_quantize(node, name, x, kernel=k), want), \
            f"{name}: the tests do not notice the mutant {pat!r} -> {repl!r}"


# Mutants of static/kquants.ts, compiled as build.sh compiles it.
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
        # C's nearest_int garbage for NaN (kept: the bytes of NaN blocks are ggml's too);
        # in Q6_K the block's final pass overwrites the L where it would show
        (r"return i32x4.sub\(v128.and\(f32x4.add\(t, f32x4.splat\(MAGIC\)\), i32x4.splat\(0x007fffff\)\), i32x4.splat\(0x00400000\)\);",
         "return i32x4.trunc_sat_f32x4_s(f32x4.nearest(t));"),
    ],
    "Q6_K": [
        (r"f32x4.gt\(f32x4.mul\(sumlx, sumlx\), f32x4.mul\(best, suml2\)\)", "f32x4.ge(f32x4.mul(sumlx, sumlx), f32x4.mul(best, suml2))"),
        (r"if \(k == 9\) continue;", "if (k == 9 || k == 0) continue;"),
        (r"-32, 31\);\n      v128.store\(dst", "-31, 31);\n      v128.store(dst"),
        (r"v128.bitselect\(i32x4.splat\(0\), i32x4.add\(v128.load\(pl \+ i\), off\), tiny\)", "i32x4.add(v128.load(pl + i), off)"),
        (r"const wi = f32x4.mul\(xi, xi\);", "const wi = f32x4.abs(xi);"),
    ],
    "both": [],
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


@pytest.mark.parametrize("name", NAMES)
def test_wasm_mutants_are_caught(node, ref, wasm_module, name, tmp_path):
    src = KERNEL_TS.read_text()
    asc, flags = asc_command()
    x = np.concatenate([random_data(40, 3), adversarial_data(), non_finite_data(),
                        _drawn(hyp_scaled(256, 4), 150), _drawn(hyp_blocks(256), 150)])
    want = ref.quantize(name, x)
    assert np.array_equal(js_quantize(node, name, x, kernel=wasm_module, impl="wasm"), want)
    for pat, repl in WASM_MUTANTS[name] + WASM_MUTANTS["both"]:
        mutated, n = re.subn(pat, repl, src)
        assert n >= 1, f"mutant pattern not found (kernel changed?): {pat}"
        ts, wasm = tmp_path / "kquants_mutant.ts", tmp_path / "kquants_mutant.wasm"
        ts.write_text(mutated)
        subprocess.run([node, *asc, str(ts), *flags, "-o", str(wasm)], check=True, timeout=300)
        assert not np.array_equal(js_quantize(node, name, x, kernel=wasm, impl="wasm"), want), \
            f"{name}: the tests do not notice the wasm mutant {pat!r} -> {repl!r}"
