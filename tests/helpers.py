"""Shared helpers for the core's tests: model files written by real tools, and runs."""

import json
import os
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "py"))

import q4apr  # noqa: E402

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need(reason):
    """A test's oracle or tool is missing: skip it here, fail it under CI=true (where
    ./build.sh test installs everything, so a skip would hide a broken setup)."""
    import pytest
    if CI:
        pytest.fail(f"{reason} (CI=true: ./build.sh test provides it)", pytrace=False)
    pytest.skip(reason)


def run(paths, executor=None, **options):
    """Quantize into memory; (bytes, report dict)."""
    with q4apr.open_model(paths) as model:
        sink = q4apr.MemorySink()
        report = q4apr.quantize(model, sink, q4apr.Options(**options), executor=executor)
    return sink.getvalue(), report.to_dict()


def write_bytes(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def bf16_bytes(a):
    """float32 -> BF16 bytes (round to nearest even), as torch and gguf-py do."""
    u = np.ascontiguousarray(a, np.float32).view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return u.tobytes()


def safetensors_bytes(tensors, metadata=None):
    """A safetensors file by hand: {name: (dtype, shape, raw bytes)} (for dtypes numpy lacks)."""
    header, blobs, off = {}, [], 0
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    if metadata:
        header["__metadata__"] = metadata
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def llama_like(rng, dim=64, vocab=96, ff=128, layers=2, dtype=np.float32):
    """A small model with the tensor names and shapes of a Llama checkpoint."""
    t = {"model.embed_tokens.weight": rng.standard_normal((vocab, dim)),
         "model.norm.weight": 1 + 0.1 * rng.standard_normal(dim),
         "lm_head.weight": rng.standard_normal((vocab, dim))}
    for i in range(layers):
        p = f"model.layers.{i}."
        for n in ("q", "k", "v", "o"):
            t[p + f"self_attn.{n}_proj.weight"] = rng.standard_normal((dim, dim)) * 0.05
        t[p + "mlp.gate_proj.weight"] = rng.standard_normal((ff, dim)) * 0.05
        t[p + "mlp.up_proj.weight"] = rng.standard_normal((ff, dim)) * 0.05
        t[p + "mlp.down_proj.weight"] = rng.standard_normal((dim, ff)) * 0.05
        t[p + "input_layernorm.weight"] = np.ones(dim)
        t[p + "post_attention_layernorm.weight"] = np.ones(dim)
    return {k: np.ascontiguousarray(v, dtype) for k, v in t.items()}


def parse_apr(data):
    """A minimal, independent APR reader for tests: (header fields, metadata, {name: (dtype, shape, bytes)})."""
    magic, = struct.unpack_from("<4s", data, 0)
    flags, count, moff, msize, ioff, doff = struct.unpack_from("<HIQIQQ", data, 6)
    meta = json.loads(data[moff: moff + msize])
    pos, out = ioff, {}
    for _ in range(count):
        n, = struct.unpack_from("<H", data, pos)
        name = data[pos + 2: pos + 2 + n].decode()
        dt, nd = struct.unpack_from("<BB", data, pos + 2 + n)
        dims = struct.unpack_from(f"<{nd}Q", data, pos + 4 + n)
        off, size = struct.unpack_from("<QQ", data, pos + 4 + n + 8 * nd)
        out[name] = (dt, dims, data[doff + off: doff + off + size])
        pos += 4 + n + 8 * nd + 16
    return {"magic": magic, "flags": flags, "count": count, "data_offset": doff}, meta, out


def write_gguf_tensors(writer, tensors):
    """Add {name: (array, GGMLQuantizationType)} to a gguf.GGUFWriter and write the file:
    F32/F16 as they are, block and BF16 types through gguf-py's own quantizer, uint8
    arrays as raw blocks of that type."""
    import gguf
    plain = {gguf.GGMLQuantizationType.F32: np.float32, gguf.GGMLQuantizationType.F16: np.float16}
    for name, (arr, qtype) in tensors.items():
        if arr.dtype == np.uint8:
            writer.add_tensor(name, arr, raw_dtype=qtype)
        elif qtype in plain:
            writer.add_tensor(name, np.asarray(arr).astype(plain[qtype]))
        else:
            writer.add_tensor(name, gguf.quants.quantize(np.asarray(arr, np.float32), qtype),
                              raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
