#!/usr/bin/env python3
"""Write a small deterministic llama-shaped sample model as safetensors.

Usage: python make_sample.py OUT.safetensors

The weights come from integer arithmetic only (splitmix64 bits, a sum of four
uniform 16-bit draws for a roughly normal shape, then exact power-of-two
scaling), so the file is the same bytes on every machine and numpy version.
Needs only numpy; the safetensors writer is the minimal one below (header JSON
with sorted keys, padded with spaces to a multiple of 8 bytes).
"""
import json
import struct
import sys

import numpy as np

NAME = "q4apr-sample-llama"
CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 512,
    "hidden_size": 128,
    "intermediate_size": 352,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5,
}

_M64 = (1 << 64) - 1


def _splitmix64(seed, n):
    """n uint64 values of splitmix64 starting at seed (vectorised, wraps mod 2**64)."""
    with np.errstate(over="ignore"):
        x = np.uint64(seed & _M64) + np.arange(1, n + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _seed(name):
    h = 1469598103934665603  # FNV-1a 64 of the tensor name
    for b in name.encode():
        h = ((h ^ b) * 1099511628211) & _M64
    return h


def gaussianish(name, shape, log2_scale):
    """Deterministic roughly-normal values: (sum of four u16 - mean) * 2**log2_scale."""
    n = int(np.prod(shape))
    bits = _splitmix64(_seed(name), n)
    s = np.zeros(n, dtype=np.int64)
    for k in range(4):
        s += ((bits >> np.uint64(16 * k)) & np.uint64(0xFFFF)).astype(np.int64)
    s -= 2 * 65535  # centre: mean of the sum is 4 * 65535 / 2
    # sd of the sum is about 37837 (~2**15.2): scale so sd ~ 2**log2_scale
    vals = s.astype(np.float64) * (2.0 ** (log2_scale - 15))
    vals = vals.reshape(shape)
    # a few deterministic outliers per matrix, like real weights have
    if len(shape) == 2:
        idx = (bits[:4] % np.uint64(n)).astype(np.int64)
        flat = vals.reshape(-1)
        flat[idx] *= 8.0
    return vals


def build_tensors():
    c = CONFIG
    h, inter, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    head = h // c["num_attention_heads"]
    kv = head * c["num_key_value_heads"]
    t = {}
    t["model.embed_tokens.weight"] = ("F16", gaussianish("model.embed_tokens.weight", (v, h), -3))
    for i in range(c["num_hidden_layers"]):
        dt = "F32" if i % 2 == 0 else "F16"
        p = f"model.layers.{i}."
        shapes = {
            "self_attn.q_proj.weight": (h, h),
            "self_attn.k_proj.weight": (kv, h),
            "self_attn.v_proj.weight": (kv, h),
            "self_attn.o_proj.weight": (h, h),
            "mlp.gate_proj.weight": (inter, h),
            "mlp.up_proj.weight": (inter, h),
            "mlp.down_proj.weight": (h, inter),
        }
        for k, shp in shapes.items():
            t[p + k] = (dt, gaussianish(p + k, shp, -5))
        for k in ("input_layernorm.weight", "post_attention_layernorm.weight"):
            t[p + k] = ("F32", 1.0 + gaussianish(p + k, (h,), -6))
    t["model.norm.weight"] = ("F32", 1.0 + gaussianish("model.norm.weight", (h,), -6))
    t["lm_head.weight"] = ("F32", gaussianish("lm_head.weight", (v, h), -4))
    return t


_NP = {"F32": "<f4", "F16": "<f2"}


def safetensors_bytes(tensors, metadata):
    header = {"__metadata__": metadata}
    blobs = []
    off = 0
    for name in sorted(tensors):
        dtype, arr = tensors[name]
        b = np.ascontiguousarray(arr.astype(_NP[dtype])).tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    hj = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    hj += b" " * (-len(hj) % 8)
    return struct.pack("<Q", len(hj)) + hj + b"".join(blobs)


def main(argv):
    if len(argv) != 2:
        sys.stderr.write("usage: make_sample.py OUT.safetensors\n")
        return 2
    meta = {"format": "pt", "name": NAME, "config": json.dumps(CONFIG, sort_keys=True)}
    data = safetensors_bytes(build_tensors(), meta)
    with open(argv[1], "wb") as f:
        f.write(data)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
