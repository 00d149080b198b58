"""Write a large synthetic safetensors model, streaming, for the end-to-end benchmarks.

python bench/make_model.py OUT.safetensors --gb 1.0 [--dtype F32|F16] [--big-tensor-gb 1.0]

Llama-shaped tensor names; data from a seeded generator, written chunk by chunk
so that making a 3 GB file needs no 3 GB of memory. Same arguments, same bytes.
"""

import argparse
import json
import struct

import numpy as np

CHUNK = 1 << 22  # elements per write


def plan(total_bytes, itemsize, big_bytes, dim=4096):
    """[(name, shape)] adding up to about total_bytes, the first one big_bytes large."""
    tensors = []
    if big_bytes:
        rows = max(1, int(big_bytes // (dim * itemsize)))
        tensors.append(("model.embed_tokens.weight", (rows, dim)))
    used = sum(r * c for _, (r, c) in tensors) * itemsize
    layer = 0
    while used < total_bytes:
        for part, rows in (("self_attn.q_proj", dim), ("self_attn.o_proj", dim),
                           ("mlp.up_proj", dim)):
            if used >= total_bytes:
                break
            tensors.append((f"model.layers.{layer}.{part}.weight", (rows, dim)))
            used += rows * dim * itemsize
        tensors.append((f"model.layers.{layer}.input_layernorm.weight", (dim,)))
        used += dim * itemsize
        layer += 1
    return tensors


def write(path, tensors, dtype, seed=0):
    np_dtype = {"F32": np.float32, "F16": np.float16}[dtype]
    item = np.dtype(np_dtype).itemsize
    header, off = {}, 0
    for name, shape in tensors:
        n = int(np.prod(shape)) * item
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for name, shape in tensors:
            left = int(np.prod(shape))
            while left:
                k = min(CHUNK, left)
                f.write((rng.standard_normal(k, np.float32) * 0.02).astype(np_dtype).tobytes())
                left -= k
    return 8 + len(h) + off


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--gb", type=float, default=1.0, help="total size in GB (10^9 bytes)")
    ap.add_argument("--dtype", choices=("F32", "F16"), default="F32")
    ap.add_argument("--big-tensor-gb", type=float, default=0.0, help="one tensor this large first")
    args = ap.parse_args()
    item = 4 if args.dtype == "F32" else 2
    size = write(args.out, plan(args.gb * 1e9, item, args.big_tensor_gb * 1e9), args.dtype)
    print(f"wrote {args.out}: {size / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
