"""APR against the GGUF of the same --type: file sizes, and which types the APR holds.

python bench/apr_sizes.py [FOLDER_OR_FILE ...]

Without arguments: SmolLM2-135M-Instruct's folder (tests/fixtures: rows of 576, not whole
256-blocks, a tied embedding) and a synthetic llama-shaped weights file whose rows are
whole 256-blocks (dim 512, ff 1536). For each and for --type Q4_0 and Q4_K_M it writes
the APR and the GGUF with q4apr (whose GGUF is llama-quantize's, byte for byte) and prints
both sizes and APR / GGUF; issue 20's targets: <= 1.15x, <= 1.0x where rows are whole.
"""

import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "py"), str(REPO / "tests")]

import numpy as np  # noqa: E402

import q4apr  # noqa: E402
from helpers import llama_like, safetensors_bytes  # noqa: E402

TYPES = ("Q4_0", "Q4_K_M")


def whole_rows_model(tmp):
    """Llama-shaped weights with every row a whole number of 256-blocks (no lm_head: tied)."""
    t = llama_like(np.random.default_rng(0), dim=512, vocab=2048, ff=1536, layers=4)
    t.pop("lm_head.weight")
    path = Path(tmp) / "whole-rows-512.safetensors"
    path.write_bytes(safetensors_bytes({n: ("F32", a.shape, a.astype(np.float32).tobytes())
                                        for n, a in t.items()}))
    return path


def convert(src, out, qtype):
    t0 = time.perf_counter()
    with q4apr.open_model([str(src)]) as m:
        fmt = "apr" if str(out).endswith(".apr") else "gguf"
        rep = q4apr.quantize(m, q4apr.FileSink(str(out)), q4apr.Options(format=fmt, type=qtype))
    counts = {}
    for t in rep.to_dict()["tensors"]:
        counts[t["dtype_out"]] = counts.get(t["dtype_out"], 0) + 1
    return os.path.getsize(out), time.perf_counter() - t0, counts


def main(argv):
    tmp = tempfile.mkdtemp(prefix="q4apr-apr-sizes-")
    sources = [Path(a) for a in argv]
    if not sources:
        from fixtures import hf
        sources = [hf.model_dir("smollm2-135m"), whole_rows_model(tmp)]
    print(f"{'model':34} {'type':7} {'APR bytes':>12} {'GGUF bytes':>12} {'APR/GGUF':>9}  APR types")
    for src in sources:
        for qtype in TYPES:
            a, ta, types = convert(src, Path(tmp) / "m.apr", qtype)
            g, tg, _ = convert(src, Path(tmp) / "m.gguf", qtype)
            print(f"{src.name[:34]:34} {qtype:7} {a:12,} {g:12,} {a / g:8.3f}x  "
                  + ", ".join(f"{k} {v}" for k, v in sorted(types.items()))
                  + f"  ({ta:.1f} s / {tg:.1f} s)")
    print(f"(outputs in {tmp})")


if __name__ == "__main__":
    main(sys.argv[1:])
