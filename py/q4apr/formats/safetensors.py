"""safetensors: u64 header length, a JSON header, then raw little-endian tensors.

Sharded models are several such files plus model.safetensors.index.json, whose
weight_map says which shard holds which tensor; together they are one model.
"""

import os
import struct

from ..dtypes import BY_SAFETENSORS, numel
from ..errors import BadInput
from ..model import (Model, TensorEntry, check_names, check_overlaps, load_json, model_name,
                     read_exact)

MAX_HEADER = 100 << 20  # the reference implementation's own limit
MAX_DIMS = 16


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
    header = load_json(raw, path, "the header", top_names_tensors=True)
    return header, 8 + n, size


def read_file(path):
    """Tensors and __metadata__ of one file, in header order."""
    header, start, size = read_header(path)
    meta = header.pop("__metadata__", None)
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise BadInput("__metadata__ is not an object", path)
    entries = [_entry(path, name, info, start) for name, info in header.items()]
    check_names(entries)
    _check_layout(path, entries, start, size)
    return entries, {str(k): str(v) for k, v in meta.items()}


def _entry(path, name, info, start):
    """One header entry, its dtype, shape and offsets checked against each other."""
    if not isinstance(info, dict):
        raise BadInput("entry is not an object", path, name)
    dtype_s, shape, offs = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    dtype = BY_SAFETENSORS.get(dtype_s) if isinstance(dtype_s, str) else None
    if dtype is None:
        raise BadInput(f"unsupported dtype {dtype_s!r:.40}", path, name)
    if (not isinstance(shape, list) or len(shape) > MAX_DIMS
            or not all(type(d) is int and 0 <= d < 1 << 62 for d in shape)):
        raise BadInput(f"bad shape {shape!r:.80}", path, name)
    if (not isinstance(offs, list) or len(offs) != 2
            or not all(type(o) is int for o in offs) or not 0 <= offs[0] <= offs[1]):
        raise BadInput(f"bad data_offsets {offs!r:.80}", path, name)
    want = numel(shape) * dtype.type_size
    if offs[1] - offs[0] != want:
        raise BadInput(f"shape {shape} of {dtype.name} needs {want} bytes but data_offsets "
                       f"span {offs[1] - offs[0]}", path, name)
    return TensorEntry(name, tuple(shape), dtype, want, path, start + offs[0])


def _check_layout(path, entries, start, size):
    """As the reference reader: tensors tile the data exactly, no overlap, gap or tail."""
    for e in entries:
        if e.offset + e.nbytes > size:
            raise BadInput(f"data_offsets {[e.offset - start, e.offset - start + e.nbytes]} run "
                           f"past the end of the file ({size - start} bytes of data)", path, e.name)
    end = start
    for e in sorted(entries, key=lambda e: (e.offset, e.nbytes)):
        if e.offset > end:
            raise BadInput(f"{e.offset - end} bytes before this tensor's data belong to no "
                           "tensor (a gap in data_offsets)", path, e.name)
        end = max(end, e.offset + e.nbytes)
    check_overlaps(path, entries)
    if end != size:
        raise BadInput(f"the last {size - end} bytes of the file belong to no tensor", path)


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
    check_names(tensors)
    if index:
        tensors, metadata = _apply_index(index[0], shards, tensors, metadata)
    name = model_name(index[0] if index else shards[0])
    return Model("safetensors", list(paths), name, tensors, metadata)


def _apply_index(index_path, shards, tensors, metadata):
    """Check the shards against the index's weight_map; order tensors as it lists them."""
    idx = load_json(_read_index(index_path), index_path, "the index")
    wmap = idx.get("weight_map")
    if not isinstance(wmap, dict) or not all(isinstance(v, str) for v in wmap.values()):
        raise BadInput("no weight_map object mapping tensor names to shard files", index_path)
    given = {os.path.basename(p): p for p in shards}
    missing = sorted({v for v in wmap.values()} - set(given))
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise BadInput("shards listed in the index are missing: " + ", ".join(missing[:3]) + more,
                       index_path)
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


def _read_index(path):
    """The bytes of an index file, its size checked before it is read."""
    try:
        size = os.path.getsize(path)
        if size > MAX_HEADER:
            raise BadInput(f"an index of {size} bytes is over the {MAX_HEADER} byte limit", path)
        with open(path, "rb") as f:
            return read_exact(f, size, path, "the index")
    except OSError as e:
        raise BadInput(f"cannot read ({e.strerror or e})", path) from None
