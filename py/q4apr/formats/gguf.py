"""GGUF v3 (llama.cpp): key/values, tensor infos (dims innermost first), aligned data.

Strings are kept as bytes so that a GGUF input's metadata is written back exactly.
"""

import os
import struct

import numpy as np

from ..dtypes import BY_GGUF, numel, tensor_nbytes
from ..errors import BadInput
from ..ggufvalues import ARRAY, STRING, UINT32
from ..model import Model, TensorEntry, check_names, check_overlaps, model_name

MAGIC = b"GGUF"
VERSION = 3
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4                      # GGML_MAX_DIMS
MAX_NAME = 4096                   # bytes of a tensor name (llama.cpp itself allows 63)
MAX_TENSORS = 1 << 20
# strings and arrays inside metadata arrays, all told: each costs ~50 bytes of Python objects
# for its 8 bytes of file (the largest vocabularies hold well under a million)
MAX_ITEMS = 1 << 22
FILE_TYPE_MOSTLY_Q4_0 = 2
QUANTIZATION_VERSION = 2          # GGML_QNT_VERSION

# value type -> struct code; 7 is bool, 8 string, 9 array
SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1",
         10: "<u8", 11: "<i8", 12: "<f8"}
TYPE_NAMES = {0: "u8", 1: "i8", 2: "u16", 3: "i16", 4: "u32", 5: "i32", 6: "f32", 7: "bool",
              8: "string", 9: "array", 10: "u64", 11: "i64", 12: "f64"}


class _Reader:
    """Bounded reads from the head of a GGUF file; every count is checked against what is left."""

    def __init__(self, f, path, size):
        self.f, self.path, self.size = f, path, size
        self.items = MAX_ITEMS   # what is left of the budget of strings/arrays in arrays

    def left(self):
        return self.size - self.f.tell()

    def take(self, n, what):
        if n > self.left():
            raise BadInput(f"{what} needs {n} bytes but only {self.left()} are left", self.path)
        return self.f.read(n)

    def unpack(self, fmt, what):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))[0]

    def string(self, what):
        n = self.unpack("Q", what)
        return self.take(n, what)

    def value(self, vtype, what, depth=0):
        if vtype in SCALARS:
            return self.unpack(SCALARS[vtype], what)
        if vtype == STRING:
            return self.string(what)
        if vtype == ARRAY:
            if depth > 2:
                raise BadInput(f"{what}: arrays nested too deep", self.path)
            sub = self.unpack("I", what)
            count = self.unpack("Q", what)
            if sub in NUMPY:
                nbytes = count * np.dtype(NUMPY[sub]).itemsize
                return sub, np.frombuffer(self.take(nbytes, what), NUMPY[sub]).copy()
            if sub not in (STRING, ARRAY):
                raise BadInput(f"{what}: unknown array element type {sub}", self.path)
            if count * 8 > self.left():
                raise BadInput(f"{what}: {count} elements cannot fit in the "
                               f"{self.left()} bytes left", self.path)
            if count > self.items:
                raise BadInput(f"{what}: more than {MAX_ITEMS} strings or arrays in the "
                               "metadata's arrays", self.path)
            self.items -= count
            return sub, [self.value(sub, what, depth + 1) for _ in range(count)]
        raise BadInput(f"{what}: unknown value type {vtype}", self.path)


def read(path):
    """A GGUF v2/v3 file: its key/values (kept for writing back) and tensor table."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        r = _Reader(f, path, size)
        if r.take(4, "the magic") != MAGIC:
            raise BadInput("not a GGUF file (bad magic)", path)
        version = r.unpack("I", "the version")
        if version not in (2, 3):
            raise BadInput(f"GGUF version {version} is not supported (2 and 3 are)", path)
        n_tensors = r.unpack("Q", "the tensor count")
        n_kv = r.unpack("Q", "the key/value count")
        # each key/value takes at least 12 bytes, each tensor info at least 24
        if n_kv * 12 + n_tensors * 24 > r.left():
            raise BadInput(f"{n_tensors} tensors and {n_kv} key/values cannot fit in the file", path)
        if n_tensors > MAX_TENSORS:
            raise BadInput(f"{n_tensors} tensors are more than the {MAX_TENSORS} q4apr reads", path)
        kv = []
        for i in range(n_kv):
            key = _text(r.string(f"key #{i}"), path, f"key #{i}")
            vtype = r.unpack("I", f"the type of {key[:80]}")
            kv.append((key, vtype, r.value(vtype, f"value of {key[:80]}")))
        kvd = _kv_dict(kv, path)
        alignment = _alignment(kvd, path)
        infos = []
        for i in range(n_tensors):
            raw = r.string(f"tensor name #{i}")
            if len(raw) > MAX_NAME:
                raise BadInput(f"tensor name #{i} is {len(raw)} bytes long (at most {MAX_NAME})",
                               path)
            name = _text(raw, path, f"tensor name #{i}")
            ndim = r.unpack("I", f"n_dims of {name}")
            if not 1 <= ndim <= MAX_DIMS:
                raise BadInput(f"n_dims {ndim} is outside 1..{MAX_DIMS}", path, name)
            dims = [r.unpack("Q", f"dims of {name}") for _ in range(ndim)]
            gtype = r.unpack("I", f"type of {name}")
            offset = r.unpack("Q", f"offset of {name}")
            infos.append((name, dims, gtype, offset))
        data_start = -(-f.tell() // alignment) * alignment
    entries = []
    for name, dims, gtype, offset in infos:
        dtype = BY_GGUF.get(gtype)
        if dtype is None:
            raise BadInput(f"GGML type {gtype} is not supported", path, name)
        if any(d >= 1 << 48 for d in dims):
            raise BadInput(f"dims {dims} are too large", path, name)
        shape = tuple(reversed(dims))
        if dtype.quantized and dims[0] % dtype.block_size:
            raise BadInput(f"row length {dims[0]} is not a multiple of {dtype.block_size} "
                           f"for {dtype.name}", path, name)
        if offset % alignment:
            raise BadInput(f"data offset {offset} is not aligned to {alignment}", path, name)
        nbytes = tensor_nbytes(dtype, shape) if numel(shape) else 0
        if data_start + offset + nbytes > size:
            raise BadInput(f"data at {data_start + offset}..{data_start + offset + nbytes} runs "
                           f"past the end of the file ({size} bytes)", path, name)
        entries.append(TensorEntry(name, shape, dtype, nbytes, path, data_start + offset))
    check_names(entries)
    check_overlaps(path, entries)
    name = model_name(path)
    if "general.name" in kvd and kvd["general.name"][0] == STRING:
        name = kvd["general.name"][1].decode("utf-8", "replace") or name
    meta = {k: _json_value(t, v) for k, t, v in kv}
    return Model("gguf", [path], name, entries, meta,
                 {"gguf_kv": kv, "alignment": alignment, "version": version})


def _kv_dict(kv, path):
    """{key: (type, value)}; a key given twice makes the file ambiguous (llama.cpp refuses it)."""
    kvd = {}
    for k, t, v in kv:
        if k in kvd:
            raise BadInput(f"the key {k!r:.80} appears twice", path)
        kvd[k] = (t, v)
    return kvd


def _alignment(kvd, path):
    if "general.alignment" not in kvd:
        return DEFAULT_ALIGNMENT
    t, alignment = kvd["general.alignment"]
    if t != UINT32:
        raise BadInput(f"general.alignment has type {TYPE_NAMES.get(t, t)}, not u32", path)
    if alignment == 0 or alignment & (alignment - 1):
        raise BadInput(f"general.alignment {alignment} is not a power of two", path)
    return alignment


def _text(b, path, what):
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        raise BadInput(f"{what} is not UTF-8", path) from None


def _json_value(vtype, v, limit=16):
    """A JSON-able view of a value; long arrays are summarized, not copied."""
    if vtype == STRING:
        return v.decode("utf-8", "replace")
    if vtype == ARRAY:
        sub, items = v
        if len(items) > limit:
            return f"[{len(items)} × {TYPE_NAMES.get(sub, sub)}]"
        return [_json_value(sub, x) for x in (items.tolist() if sub in NUMPY else items)]
    if isinstance(v, float) and not np.isfinite(v):
        return str(v)
    return v


# ---------------------------------------------------------------- writing

def _pack_value(vtype, v, out):
    if vtype in SCALARS:
        out.append(struct.pack("<" + SCALARS[vtype], v))
    elif vtype == STRING:
        b = v.encode("utf-8") if isinstance(v, str) else bytes(v)
        out.append(struct.pack("<Q", len(b)))
        out.append(b)
    elif vtype == ARRAY:
        sub, items = v
        out.append(struct.pack("<IQ", sub, len(items)))
        if sub in NUMPY:
            out.append(np.ascontiguousarray(items, NUMPY[sub]).tobytes())
        else:
            for x in items:
                _pack_value(sub, x, out)
    else:
        raise ValueError(f"unknown GGUF value type {vtype}")


def output_kv(model, file_type=FILE_TYPE_MOSTLY_Q4_0):
    """The key/values of a quantized output: a GGUF input's, or a model folder's
    (architecture, tokenizer), with the file type set (llama_ftype: 2 Q4_0, 15 Q4_K_M)."""
    kv = list(model.extra.get("gguf_kv", []))
    if model.description is not None:
        from ..runnable import gguf_kv
        kv = gguf_kv(model, [("general.name", STRING, model.name.encode("utf-8"))])
    if not kv:
        kv.append(("general.name", STRING, model.name.encode("utf-8")))
    for key, value in (("general.file_type", file_type),
                       ("general.quantization_version", QUANTIZATION_VERSION)):
        item = (key, UINT32, value)
        at = [i for i, (k, _, _) in enumerate(kv) if k == key]
        if at:
            kv[at[0]] = item
        else:
            kv.append(item)
    return kv


class Layout:
    """The head of a GGUF file: known in size before the data, in content after it."""

    format = "gguf"

    def __init__(self, model, names_shapes, file_type=FILE_TYPE_MOSTLY_Q4_0):
        self.alignment = model.extra.get("alignment", DEFAULT_ALIGNMENT)
        kv = output_kv(model, file_type)
        parts = [MAGIC, struct.pack("<IQQ", VERSION, len(names_shapes), len(kv))]
        for key, vtype, value in kv:
            _pack_value(STRING, key, parts)
            parts.append(struct.pack("<I", vtype))
            _pack_value(vtype, value, parts)
        self._prefix = b"".join(parts)
        self._names_shapes = names_shapes
        infos = sum(8 + len(n.encode()) + 4 + 8 * len(s) + 4 + 8 for n, s in names_shapes)
        self.head_len = self._align(len(self._prefix) + infos)

    def _align(self, n):
        return -(-n // self.alignment) * self.alignment

    def tensor_start(self, data_len):
        """Where the next tensor's data starts: the data stream is padded to this."""
        return self._align(data_len)

    def tensor_end(self, data_len):
        return self._align(data_len)

    def head(self, records):
        """records: (name, shape, dtype, offset, size) in file order."""
        parts = [self._prefix]
        for name, shape, dtype, offset, _ in records:
            _pack_value(STRING, name, parts)
            parts.append(struct.pack("<I", len(shape)))
            parts.append(struct.pack(f"<{len(shape)}Q", *reversed(shape)))
            parts.append(struct.pack("<IQ", dtype.gguf, offset))
        head = b"".join(parts)
        assert len(head) <= self.head_len
        return head + bytes(self.head_len - len(head))

    def footer(self, head, data_crc, data_len):
        return b""
