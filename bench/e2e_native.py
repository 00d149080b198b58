"""The native CLI end to end: `python -m q4apr quantize` on large safetensors, MB/s and peak RSS.

    python bench/e2e_native.py [--dir /tmp/q4bench] [--reps 3] [--only f32|f16] [--format apr|gguf]
    python bench/e2e_native.py --profile [--only f32] [--format apr|gguf] [--threads N]
    python bench/e2e_native.py --vs-gguf [--reps 5] [--format apr|gguf] [--threads-list 1,2]

Same inputs as bench/e2e_browser.py (generated with bench/make_model.py when missing).
Each run is `/usr/bin/time -v python -m q4apr quantize IN -o OUT --force -q` in a fresh
process, the inputs interleaved; MB/s = input bytes / wall time (median), peak RSS =
time's "Maximum resident set size" (largest over the runs) and, with --vs-gguf, also the
largest sum over the CLI and its worker processes of their proportional set sizes
(sampled from /proc every 20 ms).  The output is checked with
`python -m q4apr verify`.  A benchmark: prints figures, asserts nothing about time.

--profile runs the pipeline in this process instead, with the pipeline's pieces wrapped
in timers, and splits the wall time into read (pipeline._read_chunk), kernel
(codecs.quantize), statistics (codecs.dequantize for the round trip, or the fused
codecs.quantize(..., dequantized=) overhead when present, plus the per-chunk sums: the
rest of the loop), CRC (APR's zlib.crc32), output write (FileSink.write, finish's fsync).
Timers add up across threads, so profile with --threads 1.

--vs-gguf times, interleaved in one run, the CLI on the 1 GiB F32 file with each
--threads count and gguf-py's Q4_0 kernel alone (gguf.quants.quantize) on an 8192x8192
float32 array in this process (bench/kernels.py's data), and prints the ratios with both
sides: CLI MB/s (file bytes / wall time) over gguf-py's MB/s (float32 bytes / kernel
time), N threads over 1 thread, and each run's peak RSS.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from e2e_browser import INPUTS, ensure_input   # noqa: E402

TIME = "/usr/bin/time"


def run_cli(path, out, fmt, threads=None):
    env = dict(os.environ, PYTHONPATH=str(REPO / "py"))
    cmd = [TIME, "-v", sys.executable, "-m", "q4apr", "quantize", str(path), "-o", str(out),
           "--format", fmt, "--force", "-q"] + (["--threads", str(threads)] if threads else [])
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    peak = [0]
    sampler = threading.Thread(target=_sample_tree_pss, args=(proc, peak), daemon=True)
    sampler.start()
    _, err = proc.communicate()
    wall = time.perf_counter() - t0
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"quantize failed ({proc.returncode}):\n{err[-3000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", err).group(1))
    user = float(re.search(r"User time \(seconds\): ([\d.]+)", err).group(1))
    sys_ = float(re.search(r"System time \(seconds\): ([\d.]+)", err).group(1))
    return {"seconds": wall, "rss_bytes": rss_kb * 1024, "cpu_seconds": user + sys_,
            "tree_pss_bytes": peak[0]}


def _sample_tree_pss(proc, peak):
    """The largest sum over the CLI and its worker processes of each one's proportional
    set size (Pss: a page shared by k processes, as the workers share numpy's with the CLI
    they were forked from, counts 1/k in each, so the sum is the memory they take; time -v
    gives the largest single process's RSS), sampled every 20 ms while it runs (Linux)."""
    def tree(pid):
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                kids = [int(c) for c in f.read().split()]
        except OSError:
            return []
        return [pid] + [q for k in kids for q in tree(k)]

    def pss(pid):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0
    while proc.poll() is None:
        peak[0] = max(peak[0], sum(pss(p) for p in tree(proc.pid)[1:]))   # not time itself
        time.sleep(0.02)


def verify(path):
    env = dict(os.environ, PYTHONPATH=str(REPO / "py"))
    r = subprocess.run([sys.executable, "-m", "q4apr", "verify", str(path)], env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return r.returncode == 0


def _timers():
    """q4apr.profiling.Timers of this tree, loaded by path: --py may profile an older
    package that has no such module."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("_q4apr_profiling",
                                                  REPO / "py" / "q4apr" / "profiling.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.Timers()


def profile(path, out, fmt, threads, reps, py=None):
    """Median over reps of each part of one in-process run (see the module docstring)."""
    sys.path.insert(0, py or str(REPO / "py"))
    import types
    import zlib
    from q4apr import codecs, pipeline, sinks
    from q4apr.formats import open_model
    opts = {"format": fmt}
    if "threads" in {f.name for f in __import__("dataclasses").fields(pipeline.Options)}:
        opts["threads"] = threads
    rows = []
    for _ in range(reps):
        t = _timers()
        saved_zlib = pipeline.zlib   # the pipeline's crc32 alone, not every zlib user's
        pipeline.zlib = types.SimpleNamespace(crc32=t.wrap("crc", zlib.crc32))
        try:
            sums = [(codecs, "unit_squares", "sums")] if hasattr(codecs, "unit_squares") else []
            with t.patched((pipeline, "_read_chunk", "read"), (codecs, "quantize", "kernel"),
                           (codecs, "dequantize", "dequantize"), *sums, (sinks.FileSink, "write", "write"),
                           (sinks.FileSink, "finish", "write")):
                t0 = time.perf_counter()
                with open_model([str(path)]) as model:
                    pipeline.quantize(model, sinks.FileSink(str(out)), pipeline.Options(**opts))
                t["total"] = time.perf_counter() - t0
        finally:
            pipeline.zlib = saved_zlib
        t["kernel"] -= t.get("fused", 0.0)
        t["rest"] = t["total"] - sum(v for k, v in t.items() if k != "total")
        rows.append(dict(t))
    size = path.stat().st_size
    med = {k: statistics.median(r.get(k, 0.0) for r in rows) for k in rows[0]}
    print(f"{path.name} -> {out.name}, {fmt}, threads {threads}, median of {reps}: "
          f"{med['total']:.2f} s = {size / med['total'] / 1e6:.0f} MB/s")
    names = [("read", "read (_read_chunk)"), ("kernel", "kernel (codecs.quantize)"),
             ("dequantize", "statistics: round trip (codecs.dequantize)"),
             ("sums", "statistics: sums of squares (codecs.unit_squares)"),
             ("rest", "statistics: max, checks (rest of the loop)"),
             ("crc", "CRC-32 (APR)"), ("write", "output write (+ fsync)")]
    print("| part | seconds | share |\n|---|---:|---:|")
    for k, label in names:
        print(f"| {label} | {med.get(k, 0.0):.3f} | {med.get(k, 0.0) / med['total']:.0%} |")
    print(f"| total | {med['total']:.3f} | 100% |")


def vs_gguf(path, fmt, threads_list, reps, side=8192):
    sys.path.insert(0, str(HERE))
    from kernels import load_peer, make_data
    gguf_quantize, Q4_0 = load_peer()
    if gguf_quantize is None:
        raise SystemExit("gguf-py is not installed (pip install gguf)")
    a = make_data(side * side).reshape(side, side)
    size = path.stat().st_size
    ext = ".apr" if fmt == "apr" else ".Q4_0.gguf"
    out = Path(path).parent / f"vs-gguf{ext}"
    runs = {t: [] for t in threads_list}
    peer = []
    for rep in range(reps):
        for t in threads_list:
            r = run_cli(path, out, fmt, t)
            runs[t].append(r)
            print(f"rep {rep + 1}: CLI --threads {t}: {r['seconds']:.2f} s "
                  f"({size / r['seconds'] / 1e6:.0f} MB/s), peak RSS {r['rss_bytes'] / 1e6:.0f} MB",
                  flush=True)
        t0 = time.perf_counter()
        gguf_quantize(a, Q4_0)
        peer.append(time.perf_counter() - t0)
        print(f"rep {rep + 1}: gguf-py Q4_0 {side}x{side}: {peer[-1]:.2f} s "
              f"({a.nbytes / peer[-1] / 1e6:.0f} MB/s)", flush=True)
    ok = verify(out)
    peer_mbps = a.nbytes / statistics.median(peer) / 1e6
    mbps = {t: size / statistics.median(r["seconds"] for r in runs[t]) / 1e6 for t in threads_list}
    print(f"\n{path.name} ({size / 1e9:.2f} GB) -> {fmt}, median of {reps}, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; verify: {'ok' if ok else 'FAILED'}")
    print("| CLI --threads | median s | MB/s | / gguf-py Q4_0 kernel | / 1 thread | peak RSS "
          "(largest process / all, Pss) | CPU s (cores used) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    base = threads_list[0]
    for t in threads_list:
        secs = statistics.median(r["seconds"] for r in runs[t])
        rss = max(r["rss_bytes"] for r in runs[t])
        tree_pss = max(r["tree_pss_bytes"] for r in runs[t])
        cpu = statistics.median(r["cpu_seconds"] for r in runs[t])
        print(f"| {t} | {secs:.2f} | {mbps[t]:.0f} | {mbps[t]:.0f} / {peer_mbps:.0f} = "
              f"**{mbps[t] / peer_mbps:.2f}×** | {mbps[t]:.0f} / {mbps[base]:.0f} = "
              f"{mbps[t] / mbps[base]:.2f}× | {rss / 1e6:.0f} / {tree_pss / 1e6:.0f} MB | "
              f"{cpu:.2f} ({cpu / secs:.2f}) |")
    print(f"| gguf-py Q4_0, {side}×{side} f32 (kernel alone) | {statistics.median(peer):.2f} | "
          f"{peer_mbps:.0f} | | | | |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "q4bench"))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", choices=sorted(INPUTS), action="append")
    ap.add_argument("--format", choices=("apr", "gguf"), default="apr")
    ap.add_argument("--profile", action="store_true", help="in-process split of the time")
    ap.add_argument("--threads", type=int, default=1, help="with --profile")
    ap.add_argument("--py", help="with --profile: the q4apr package's folder (e.g. an older "
                                 "commit's py/, from git archive), to compare")
    ap.add_argument("--vs-gguf", action="store_true", help="CLI vs gguf-py's kernel, by threads")
    ap.add_argument("--threads-list", default="1,2", help="with --vs-gguf")
    args = ap.parse_args()
    if args.vs_gguf:
        os.makedirs(args.dir, exist_ok=True)
        vs_gguf(ensure_input(args.dir, "f32"), args.format,
                [int(t) for t in args.threads_list.split(",")], args.reps)
        return
    if args.profile:
        os.makedirs(args.dir, exist_ok=True)
        ext = ".apr" if args.format == "apr" else ".Q4_0.gguf"
        for k in args.only or ["f32"]:
            profile(ensure_input(args.dir, k), Path(args.dir) / f"profile-{k}{ext}",
                    args.format, args.threads, args.reps, args.py)
        return
    if not os.path.exists(TIME):
        raise SystemExit(f"{TIME} is missing (apt-get install time)")
    os.makedirs(args.dir, exist_ok=True)
    keys = args.only or list(INPUTS)
    paths = {k: ensure_input(args.dir, k) for k in keys}
    ext = ".apr" if args.format == "apr" else ".Q4_0.gguf"
    runs = {k: [] for k in keys}
    for rep in range(args.reps):
        for k in keys:
            out = Path(args.dir) / f"native-{k}{ext}"
            runs[k].append(run_cli(paths[k], out, args.format))
            r = runs[k][-1]
            print(f"{paths[k].name} run {rep + 1}: {r['seconds']:.2f} s, peak RSS {r['rss_bytes'] / 2**20:.0f} MiB",
                  flush=True)
    print()
    for k in keys:
        size = paths[k].stat().st_size
        out = Path(args.dir) / f"native-{k}{ext}"
        secs = statistics.median(r["seconds"] for r in runs[k])
        cpu = statistics.median(r["cpu_seconds"] for r in runs[k])
        rss = max(r["rss_bytes"] for r in runs[k])
        print(f"{paths[k].name} ({size / 1e9:.2f} GB) -> {out.name} ({out.stat().st_size / 1e6:.0f} MB): "
              f"median {secs:.2f} s = {size / secs / 1e6:.0f} MB/s (CPU {cpu:.2f} s = {size / cpu / 1e6:.0f} MB/s), "
              f"peak RSS {rss / 2**20:.0f} MiB ({rss / 1e6:.0f} MB), verify: {'ok' if verify(out) else 'FAILED'}")


if __name__ == "__main__":
    main()
