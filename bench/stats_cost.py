"""What the report's statistics (MSE, SNR, max error) cost beside the quantization kernel.

    python bench/stats_cost.py [--mi 64] [--reps 7] [--codec APR_Q4|Q4_0]

Per 4 MiB chunk (1 Mi float32 values, as the pipeline), interleaved, median of reps:
  kernel      codecs.quantize alone
  before      kernel, then the round trip codecs.dequantize, np.dot(x, x), y - x,
              np.dot(e, e), max|e| on the bits, the f16 scale checks (the pipeline
              until this change)
  after       codecs.quantize(..., dequantized=y) (the round trip from the codes before
              packing), pipeline._unit_squares (256-value units: the figures do not depend
              on the chunk size), y - x, max|e|, the scale checks on the f16 bits
The statistics' cost is (before or after) - kernel.  A benchmark: asserts nothing.
"""

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "py"))
sys.path.insert(0, HERE)

import numpy as np   # noqa: E402

from kernels import make_data   # noqa: E402
from q4apr import codecs, pipeline   # noqa: E402

ABS = np.int32(0x7FFFFFFF)


def kernel(c, x, q, y):
    codecs.quantize(c, x, out=q)


def before(c, x, q, y):
    out = codecs.quantize(c, x, out=q)
    s = codecs.scales_f16(c, out)
    np.isfinite(s).all()
    np.count_nonzero(np.abs(s) < 2.0 ** -14)
    codecs.dequantize(c, out, x.size, out=y)
    float(np.dot(x, x))
    np.subtract(y, x, out=y)
    float(np.dot(y, y))
    yi = y.view(np.int32)
    np.bitwise_and(yi, ABS, out=yi)
    yi.max()


def after(c, x, q, y):
    out = codecs.quantize(c, x, out=q, dequantized=y)
    mag = np.bitwise_and(codecs.scales_f16(c, out).view(np.uint16), np.uint16(0x7FFF))
    mag.max(initial=0) >= 0x7C00
    np.count_nonzero(mag < np.uint16(0x0400))
    pipeline._accumulate(0.0, pipeline._unit_squares(x))
    np.subtract(y, x, out=y)
    pipeline._accumulate(0.0, pipeline._unit_squares(y))
    yi = y.view(np.int32)
    np.bitwise_and(yi, ABS, out=yi)
    yi.max()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mi", type=int, default=64)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--codec", default="APR_Q4")
    args = ap.parse_args()
    c = codecs.get_codec(args.codec)
    x = make_data(args.mi << 20)
    n = 1 << 20
    q = np.empty(codecs.nbytes(c, n), np.uint8)
    y = np.empty(n, np.float32)
    fns = [kernel, before, after]
    times = {f.__name__: [] for f in fns}
    for rep in range(args.reps):
        for f in fns[rep % 3:] + fns[:rep % 3]:
            t0 = time.perf_counter()
            for i in range(0, x.size, n):
                f(c, x[i:i + n], q, y)
            times[f.__name__].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    mb = x.nbytes / 1e6
    print(f"{c.name}, {args.mi} Mi f32 in 1 Mi chunks, median of {args.reps}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| | seconds | MB/s | statistics' cost | of the kernel |\n|---|---:|---:|---:|---:|")
    print(f"| kernel alone | {med['kernel']:.3f} | {mb / med['kernel']:.0f} | | |")
    for k in ("before", "after"):
        extra = med[k] - med["kernel"]
        print(f"| kernel + statistics, {k} | {med[k]:.3f} | {mb / med[k]:.0f} | {extra:.3f} s | "
              f"{extra / med['kernel']:.0%} |")


if __name__ == "__main__":
    main()
