"""The native CLI end to end: `python -m q4apr quantize` on large safetensors, MB/s and peak RSS.

    python bench/e2e_native.py [--dir /tmp/q4bench] [--reps 3] [--only f32|f16] [--format apr|gguf]

Same inputs as bench/e2e_browser.py (generated with bench/make_model.py when missing).
Each run is `/usr/bin/time -v python -m q4apr quantize IN -o OUT --force -q` in a fresh
process, the inputs interleaved; MB/s = input bytes / wall time (median), peak RSS =
time's "Maximum resident set size" (largest over the runs).  The output is checked with
`python -m q4apr verify`.  A benchmark: prints figures, asserts nothing about time.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from e2e_browser import INPUTS, ensure_input   # noqa: E402

TIME = "/usr/bin/time"


def run_cli(path, out, fmt):
    env = dict(os.environ, PYTHONPATH=str(REPO / "py"))
    cmd = [TIME, "-v", sys.executable, "-m", "q4apr", "quantize", str(path), "-o", str(out),
           "--format", fmt, "--force", "-q"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"quantize failed ({r.returncode}):\n{r.stderr[-3000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr).group(1))
    user = float(re.search(r"User time \(seconds\): ([\d.]+)", r.stderr).group(1))
    sys_ = float(re.search(r"System time \(seconds\): ([\d.]+)", r.stderr).group(1))
    return {"seconds": wall, "rss_bytes": rss_kb * 1024, "cpu_seconds": user + sys_}


def verify(path):
    env = dict(os.environ, PYTHONPATH=str(REPO / "py"))
    r = subprocess.run([sys.executable, "-m", "q4apr", "verify", str(path)], env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return r.returncode == 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "q4bench"))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", choices=sorted(INPUTS), action="append")
    ap.add_argument("--format", choices=("apr", "gguf"), default="apr")
    args = ap.parse_args()
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
