"""safetensors: u64 header length, a JSON header, then raw little-endian tensors.

Sharded models are several such files plus model.safetensors.index.json, whose
weight_map says which shard holds which tensor; together they are one model.
"""

import json
import os
import struct

from ..dtypes import BY_SAFETENSORS, numel
from ..errors import BadInput
from ..model import Model, TensorEntry, check_names, model_name, read_exact

MAX_HEADER = 100 << 20  # the reference implementation's own limit


def read_header(path):
    """(header dict, data start, file size) of one safetensors file, checked."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if size < 8:
            raise BadInput("too short for a safetensors file (no header length)", path)
        (n,) = struct.unpack("<Q", read_exact(f, 8, path, "the header length"))
        if n > size - 8:
            raise BadInput(f"header length {n} is larger than the file ({size} bytes)", path)
        if n > MAX_HEADER:
            raise BadInput(f"header length {n} is over the {MAX_HEADER} byte limit", path)
        raw = read_exact(f, n, path, "the JSON header")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise BadInput(f"the header is not valid JSON ({str(e)[:80]})", path) from None
    if not isinstance(header, dict):
        raise BadInput("the header is not a JSON object", path)
    return header, 8 + n, size


def read_file(path):
    """Tensors and __metadata__ of one file, in header order."""
    header, start, size = read_header(path)
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise BadInput("__metadata__ is not an object", path)
    entries = []
    for name, info in header.items():
        if not isinstance(info, dict):
            raise BadInput("entry is not an object", path, name)
        dtype_s, shape, offs = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        dtype = BY_SAFETENSORS.get(dtype_s) if isinstance(dtype_s, str) else None
        if dtype is None:
            raise BadInput(f"unsupported dtype {dtype_s!r}", path, name)
        if (not isinstance(shape, list) or len(shape) > 16
                or not all(type(d) is int and 0 <= d < 1 << 62 for d in shape)):
            raise BadInput(f"bad shape {shape!r}", path, name)
        if (not isinstance(offs, list) or len(offs) != 2
                or not all(type(o) is int for o in offs) or not 0 <= offs[0] <= offs[1]):
            raise BadInput(f"bad data_offsets {offs!r}", path, name)
        n = numel(shape)
        want = n * dtype.type_size
        if offs[1] - offs[0] != want:
            raise BadInput(f"shape {shape} of {dtype.name} needs {want} bytes but data_offsets "
                           f"span {offs[1] - offs[0]}", path, name)
        if start + offs[1] > size:
            raise BadInput(f"data_offsets {offs} run past the end of the file", path, name)
        entries.append(TensorEntry(name, tuple(shape), dtype, want, path, start + offs[0]))
    ordered = sorted(entries, key=lambda e: e.offset)
    for a, b in zip(ordered, ordered[1:]):
        if b.offset < a.offset + a.nbytes:
            raise BadInput(f"data overlaps tensor {a.name!r}", path, b.name)
    return entries, {str(k): str(v) for k, v in meta.items()}


def read(paths, kinds):
    """One model from one file, or shards with (or without) their index."""
    index = [p for p, k in zip(paths, kinds) if k == "index"]
    shards = [p for p, k in zip(paths, kinds) if k == "safetensors"]
    if len(index) > 1:
        raise BadInput("more than one index file: " + ", ".join(map(os.path.basename, index)))
    if not shards:
        raise BadInput("an index file alone holds no weights; add its .safetensors shards",
                       index[0] if index else None)
    tensors, metadata = [], {}
    for p in shards:
        entries, meta = read_file(p)
        tensors += entries
        metadata = metadata or meta
    check_names(shards[0] if len(shards) == 1 else "the shards", tensors)
    if index:
        tensors, metadata = _apply_index(index[0], shards, tensors, metadata)
    name = model_name(index[0] if index else shards[0])
    return Model("safetensors", list(paths), name, tensors, metadata)


def _apply_index(index_path, shards, tensors, metadata):
    """Check the shards against the index's weight_map; order tensors as it lists them."""
    try:
        with open(index_path, "rb") as f:
            idx = json.loads(f.read(MAX_HEADER + 1).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise BadInput(f"not valid JSON ({str(e)[:80]})", index_path) from None
    wmap = idx.get("weight_map") if isinstance(idx, dict) else None
    if not isinstance(wmap, dict) or not all(isinstance(v, str) for v in wmap.values()):
        raise BadInput("no weight_map object mapping tensor names to shard files", index_path)
    given = {os.path.basename(p): p for p in shards}
    missing = sorted({v for v in wmap.values()} - set(given))
    if missing:
        raise BadInput("shards listed in the index are missing: " + ", ".join(missing), index_path)
    by_name = {t.name: t for t in tensors}
    for name, shard in wmap.items():
        t = by_name.get(name)
        if t is None or os.path.basename(t.path) != shard:
            raise BadInput(f"the index puts it in {shard}, which does not hold it", index_path, name)
    extra = [t.name for t in tensors if t.name not in wmap]
    if extra:
        raise BadInput("tensor is in a shard but not in the index", index_path, extra[0])
    meta = dict(metadata)
    if isinstance(idx.get("metadata"), dict):
        meta.update({str(k): v if isinstance(v, (int, float, str)) else str(v)
                     for k, v in idx["metadata"].items()})
    return tensors, meta
