"""Quantization kernel throughput: q4apr's codecs against gguf-py's Q4_0, same data, same run.

    python bench/kernels.py [--reps N] [--mi 64] [--side 8192]   native only
    python bench/kernels.py --all        native, then Pyodide in Node.js and in Chromium
    python bench/kernels.py --node | --chromium                  native plus one of them

Data: a 1-D float32 array of MI Mi values (normal, sigma 0.02, seeded) and the same
values as a SIDE x SIDE matrix (MI Mi == SIDE**2 by default, so the matrix is a reshape
of the array: same bytes, different shape).  Kernels, each timed in every repetition in
a rotating order (interleaved), median reported:

    q4apr APR_Q4   codecs.quantize(codecs.AprQ4, a)
    q4apr Q4_0     codecs.quantize(codecs.Q4_0, a)
    q4apr Q5_0/Q4_K/Q6_K   codecs.quantize(codecs.<that>, a), on a third, smaller 1-D case
                   (--kq-mi, 4 Mi values by default) where every other kernel runs too;
                   under Pyodide also "Q4_K wasm"/"Q6_K wasm": the page's kernels
                   (kquants.wasm, installed as the page does) and "Q4_K js"/"Q6_K js":
                   their plain JavaScript fallback (static/kquants.js); same bytes
    gguf-py Q4_0   gguf.quants.quantize(a, GGMLQuantizationType.Q4_0)   (the peer in the
                   same language: pure numpy; under Pyodide its constants/lazy/quants
                   modules are loaded on their own, the package needs PyYAML)
    np.copyto      a preallocated copy of the same data: the memory-bandwidth ceiling

MB/s are 10^6 bytes of float32 input per second.  q4apr's Q4_0 bytes are compared with
gguf-py's on both shapes (equal on finite data without all-zero blocks).  Under
Pyodide the same file runs (sys.platform == "emscripten") and prints one JSON line.
This is a benchmark: it prints figures and ratios, it asserts nothing about time.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
WASM = sys.platform == "emscripten"
if not WASM:
    sys.path.insert(0, os.path.join(HERE, "..", "py"))

import numpy as np   # noqa: E402

from q4apr import codecs   # noqa: E402



def load_peer():
    """gguf-py's quantize and its Q4_0 type, or (None, None) when it is not installed."""
    try:
        from gguf.constants import GGMLQuantizationType
        from gguf.quants import quantize
    except ImportError:
        return None, None
    return quantize, GGMLQuantizationType.Q4_0


def make_data(n, seed=0):
    """n float32 normal values * 0.02, generated in pieces (no float64 temporary)."""
    rng = np.random.default_rng(seed)
    x = np.empty(n, np.float32)
    step = 1 << 22
    for i in range(0, n, step):
        k = min(step, n - i)
        rng.standard_normal(k, np.float32, out=x[i:i + k])
    x *= np.float32(0.02)
    return x


def _kernel(name, fn):
    """codecs.quantize(name, a) with fn as its kernel (None: numpy's), for that call only."""
    def go(a):
        c = getattr(codecs, name)
        saved = c.kernel
        codecs.set_kernel(name, fn)
        try:
            return codecs.quantize(c, a)
        finally:
            codecs.set_kernel(name, saved)
    return go


def run(mi, side, reps, peer=True, kq_mi=4):
    gguf_quantize, Q4_0 = load_peer() if peer else (None, None)
    n = mi << 20
    x = make_data(n)
    cases = [(f"1-D {mi} Mi", x)]
    if side:
        if side * side == n:
            cases.append((f"{side}x{side}", x.reshape(side, side)))
        else:
            cases.append((f"{side}x{side}", make_data(side * side, seed=1).reshape(side, side)))
    dst = np.empty(max(a.size for _, a in cases), np.float32)
    dst[...] = 0   # touch the pages once

    kernels = [
        ("q4apr APR_Q4", lambda a: codecs.quantize(codecs.AprQ4, a)),
        ("q4apr Q4_0", lambda a: codecs.quantize(codecs.Q4_0, a)),
    ]
    if gguf_quantize is not None:
        kernels.append(("gguf-py Q4_0", lambda a: gguf_quantize(a, Q4_0)))
    kernels.append(("np.copyto", lambda a: np.copyto(dst[: a.size].reshape(a.shape), a)))
    # The 256-block K-quants (and Q5_0, their fallback) are 10-30x slower: they run on a
    # smaller 1-D case only, beside the Q4_0 kernels timed on that same case.
    slow = [("q4apr Q5_0", lambda a: codecs.quantize(codecs.Q5_0, a)),
            ("q4apr Q4_K", _kernel("Q4_K", None)),
            ("q4apr Q6_K", _kernel("Q6_K", None))]
    for module in ("q4apr_kernels", "q4apr_kernels_js"):   # under Pyodide: the page's kernels
        try:
            page = __import__(module)
        except ImportError:
            continue
        slow += [(f"q4apr Q4_K {page.name}", _kernel("Q4_K", page.Q4_K)),
                 (f"q4apr Q6_K {page.name}", _kernel("Q6_K", page.Q6_K))]
    if kq_mi:
        cases.append((f"1-D {kq_mi} Mi", x[: kq_mi << 20]))

    same = {}
    if gguf_quantize is not None:
        for label, a in cases:
            ours = codecs.quantize(codecs.Q4_0, a)
            theirs = gguf_quantize(a, Q4_0)
            same[label] = bool(np.array_equal(ours.reshape(-1), theirs.reshape(-1)))
            del ours, theirs

    small = f"1-D {kq_mi} Mi" if kq_mi else None
    per_case = {label: kernels + (slow if label == small else []) for label, _ in cases}
    times = {(label, k): [] for label, _ in cases for k, _ in per_case[label]}
    for rep in range(reps):
        for label, a in cases:
            ks = per_case[label]
            order = ks[rep % len(ks):] + ks[: rep % len(ks)]
            for name, fn in order:
                t0 = time.perf_counter()
                out = fn(a)
                times[(label, name)].append(time.perf_counter() - t0)
                del out
    rows = []
    for (label, name), ts in times.items():
        nbytes = dict(cases)[label].nbytes
        rows.append({"case": label, "kernel": name, "seconds": ts,
                     "mbps": nbytes / statistics.median(ts) / 1e6,
                     "mbps_best": nbytes / min(ts) / 1e6})
    return {"platform": "pyodide" if WASM else "native", "python": platform.python_version(),
            "numpy": np.__version__, "reps": reps, "n": n, "rows": rows, "same_bytes_as_gguf": same}


def ratios(result):
    """{case: {name: ratio}} for our kernels over gguf-py's Q4_0 (median MB/s)."""
    by = {(r["case"], r["kernel"]): r["mbps"] for r in result["rows"]}
    out = {}
    for case in dict.fromkeys(r["case"] for r in result["rows"]):
        peer = by.get((case, "gguf-py Q4_0"))
        if peer:
            out[case] = {k: by[(case, k)] / peer for k in ("q4apr APR_Q4", "q4apr Q4_0",
                         "q4apr Q5_0", "q4apr Q4_K", "q4apr Q6_K", "q4apr Q4_K wasm",
                         "q4apr Q6_K wasm", "q4apr Q4_K js", "q4apr Q6_K js") if (case, k) in by}
    return out


def print_table(results):
    """One table: a row per (case, kernel), a column per platform."""
    plats = list(results)
    print()
    head = f"{'case':<14} {'kernel':<16}" + "".join(f" {p + ' MB/s':>16}" for p in plats)
    print(head)
    print("-" * len(head))
    keys = list(dict.fromkeys((r["case"], r["kernel"]) for res in results.values() for r in res["rows"]))
    for case, kernel in keys:
        cells = []
        for p in plats:
            m = {(r["case"], r["kernel"]): r for r in results[p]["rows"]}.get((case, kernel))
            cells.append(f" {m['mbps']:>16.0f}" if m else f" {'-':>16}")
        print(f"{case:<14} {kernel:<16}" + "".join(cells))
    print()
    for p, res in results.items():
        for case, rs in ratios(res).items():
            txt = ", ".join(f"{k} {v:.2f}x" for k, v in rs.items())
            print(f"{p:<9} {case:<14} ratio over gguf-py Q4_0: {txt}")
        if res["same_bytes_as_gguf"]:
            print(f"{p:<9} Q4_0 bytes equal to gguf-py's: "
                  + ", ".join(f"{c}: {'yes' if v else 'NO'}" for c, v in res["same_bytes_as_gguf"].items()))
        print(f"{p:<9} python {res['python']}, numpy {res['numpy']}, median of {res['reps']} interleaved runs"
              + (f", wasm heap after {res['heap'] / 2**20:.0f} MiB" if res.get("heap") else ""))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5, help="repetitions (median; default 5)")
    ap.add_argument("--wasm-reps", type=int, default=3, help="repetitions under Pyodide (default 3)")
    ap.add_argument("--mi", type=int, default=64, help="1-D array length in Mi values (default 64)")
    ap.add_argument("--side", type=int, default=8192, help="matrix side (default 8192; 0: none)")
    ap.add_argument("--kq-mi", type=int, default=4,
                    help="length in Mi values of the 1-D case that also times Q5_0/Q4_K/Q6_K "
                         "(default 4; 0: skip them)")
    ap.add_argument("--no-peer", action="store_true", help="skip gguf-py")
    ap.add_argument("--node", action="store_true", help="also under Pyodide in Node.js")
    ap.add_argument("--chromium", action="store_true", help="also under Pyodide in Chromium")
    ap.add_argument("--all", action="store_true", help="native, Node.js and Chromium")
    ap.add_argument("--no-native", action="store_true", help="skip the native run")
    ap.add_argument("--json", help="also write every figure to this JSON file")
    ap.add_argument("--emit-json", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--pypath", action="append", default=[], help=argparse.SUPPRESS)
    args = ap.parse_args()
    sys.path[:0] = args.pypath

    if WASM or args.emit_json:
        res = run(args.mi, args.side, args.reps, peer=not args.no_peer, kq_mi=args.kq_mi)
        print("RESULT " + json.dumps(res))
        return

    results = {}
    if not args.no_native:
        print(f"native: {args.mi} Mi float32, {args.reps} interleaved runs ...", flush=True)
        results["native"] = run(args.mi, args.side, args.reps, peer=not args.no_peer, kq_mi=args.kq_mi)
    sub = ["--mi", args.mi, "--side", args.side, "--reps", args.wasm_reps, "--kq-mi", args.kq_mi] + (["--no-peer"] if args.no_peer else [])
    files, gguf_dir = {}, None
    if args.node or args.chromium or args.all:
        import wasm
        if not args.no_peer:
            files, gguf_dir = wasm.gguf_quants_files()
    if args.node or args.all:
        print("Pyodide in Node.js ...", flush=True)
        out = wasm.run_node(os.path.join(HERE, "kernels.py"), sub + (["--pypath", gguf_dir] if gguf_dir else []),
                            mounts=[gguf_dir] if gguf_dir else [])
        res = _parse(out)
        results["node"] = res
    if args.chromium or args.all:
        print("Pyodide in Chromium ...", flush=True)
        out, info = wasm.run_chromium(os.path.join(HERE, "kernels.py"), sub, files=files)
        res = _parse(out)
        res["heap"] = info["heap"]
        res["ua"] = info["ua"]
        results["chromium"] = res
    if gguf_dir:
        import shutil
        shutil.rmtree(gguf_dir, ignore_errors=True)
    print_table(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


def _parse(stdout):
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError("no RESULT line in:\n" + stdout[-2000:])


if __name__ == "__main__":
    main()
