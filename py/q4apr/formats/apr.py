"""APR v2 (Aprender): 64-byte header, JSON metadata, sorted tensor index, 64-aligned data,
CRC32 footer. Byte layout per shared/docs/apr-v2.md; the writer reproduces Aprender's. 2-D
Q4_K / Q6_K are stored row by row, rows zero padded to whole super-blocks, as Aprender's
writer stores them (shared/docs/runnable-models.md; dtypes.padded_row), and a tied LM head
has 0 data bytes."""

import json
import os
import struct
import zlib

from .._version import __version__
from ..dtypes import BY_APR, BY_NAME, apr_nbytes, numel, padded_row
from ..errors import BadInput
from ..model import Model, TensorEntry, check_names, check_overlaps, load_json, model_name

MAGIC = b"APR\0"
FLAG_ROW_MAJOR, FLAG_QUANTIZED, FLAG_COLUMN_MAJOR = 0x0400, 0x0020, 0x0800
FLAG_UNSUPPORTED = {0x1: "LZ4 compression", 0x2: "ZSTD compression", 0x4: "encryption"}
MAX_NDIM, MAX_NAME = 8, 256
MAX_METADATA = 64 << 20
MAX_INDEX = 64 << 20     # about 200,000 tensors of long names
MIN_ENTRY = 21           # bytes of an index entry with a 1-byte name and one dim
MAX_TENSORS = 1 << 20
ALIGN = 64
# an LM head of 0 data bytes (its full shape kept) is tied to the embedding: Aprender's
# exporters write a tied head so, and its runtime reads the embedding's bytes for it
TIED_HEADS = {"lm_head.weight": "model.embed_tokens.weight", "output.weight": "token_embd.weight"}


def align64(n):
    return (n + 63) & ~63


def header_crc(header):
    """CRC32 of the header with its checksum field (bytes 40..44) left out."""
    return zlib.crc32(header[:40] + header[44:64])


def pack_header(flags, tensor_count, metadata_size, index_len):
    index_off = 64 + align64(metadata_size)
    data_off = index_off + align64(index_len)
    h = bytearray(64)
    h[0:4] = MAGIC
    h[4:6] = bytes([2, 0])
    struct.pack_into("<HIQIQQ", h, 6, flags, tensor_count, 64, metadata_size, index_off, data_off)
    struct.pack_into("<I", h, 40, header_crc(h))
    return bytes(h)


def pack_entry(name, dtype, shape, offset, size):
    b = name.encode("utf-8")
    return (struct.pack("<H", len(b)) + b + struct.pack("<BB", dtype.apr, len(shape))
            + struct.pack(f"<{len(shape)}Q", *shape) + struct.pack("<QQ", offset, size))


def metadata_json(metadata, slice_items=1 << 14):
    """Compact JSON as serde_json writes it (UTF-8, no spaces, keys in the given order).

    The bytes of json.dumps(metadata), made piece by piece: a long list (a tokenizer's
    vocabulary or merges) is encoded a slice at a time, so no str of the whole text is
    held (one emoji in Gemma's 262k tokens makes that str 4 bytes a character)."""
    enc = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    if not isinstance(metadata, dict) or not all(isinstance(k, str) for k in metadata):
        return enc.encode(metadata).encode("utf-8")
    items = []
    for key, value in metadata.items():
        if isinstance(value, list) and len(value) > slice_items:
            body = b",".join(enc.encode(value[i: i + slice_items])[1:-1].encode("utf-8")
                             for i in range(0, len(value), slice_items))
            value = b"[" + body + b"]"
            del body
        else:
            value = enc.encode(value).encode("utf-8")
        items.append(enc.encode(key).encode("utf-8") + b":" + value)
    return b"{" + b",".join(items) + b"}"


def output_metadata(model, param_count, tensors=(), mixture=None):
    """An APR input keeps its metadata (so a second pass changes nothing); others get ours.
    tensors: [(dtype, bytes, elements)] of the tensors that hold data, for `quantization`;
    mixture: the --type (with " --pure"), or None."""
    if model.format == "apr":
        meta = dict(model.metadata)
    elif model.description is not None:
        from ..runnable import apr_metadata
        meta = apr_metadata(model)
    else:
        meta = {"name": model.name, "original_format": model.format}
        arch = model.metadata.get("general.architecture") if model.format == "gguf" else None
        if isinstance(arch, str):
            meta["model_type"] = arch
        if model.format == "gguf":
            scalars = {k: v for k, v in model.metadata.items()
                       if isinstance(v, (int, float, str, bool)) and not
                       (isinstance(v, str) and v.startswith("[") and "×" in v)}
            if scalars:
                meta["gguf_metadata"] = scalars
        elif model.metadata:
            meta["source_metadata"] = model.metadata
    meta["param_count"] = param_count
    meta["quantization"] = quantization(tensors, mixture)
    meta["writer"] = f"q4apr {__version__}"   # which tool (and version) made these bytes
    return meta


# bits of one value of each type (of its codes; the block scales are in bits_per_weight)
_BITS = {"APR_Q4": 4, "Q4_0": 4, "Q4_K": 4, "Q5_0": 5, "Q6_K": 6, "Q8_0": 8, "APR_Q8": 8,
         "F16": 16, "BF16": 16, "F32": 32, "F64": 64}
_ASYMMETRIC = ("Q4_K",)   # a block minimum besides the scale


def quantization(tensors, mixture=None):
    """The `quantization` block: Aprender's typed fields (quant_type, bits as a u8,
    block_size, symmetric) for the type that holds most of the weights, then what the file
    holds: bits per weight over every tensor with data, and how many tensors of each type."""
    counts, elems, nbytes, total = {}, {}, 0, 0
    for dtype, size, n in tensors:
        counts[dtype.name] = counts.get(dtype.name, 0) + 1
        elems[dtype.name] = elems.get(dtype.name, 0) + n
        nbytes += size
        total += n
    four = [k for k in ("Q4_K", "APR_Q4") if k in elems]   # the 4-bit type, else the most
    main = max(four or elems, key=lambda k: (elems[k], k)) if elems else "F32"
    dt = BY_NAME[main]
    name = main
    if mixture == "Q4_K_M" and main == "Q4_K":
        name = "Q4_K_M"   # the mixture: Q4_K with Q6_K where llama.cpp puts more bits
    q = {"quant_type": name, "bits": _BITS.get(main, 8),
         "block_size": dt.block_size if dt.quantized else None,
         "symmetric": main not in _ASYMMETRIC}
    if mixture:
        q["mixture"] = mixture
    q["bits_per_weight"] = round(8 * nbytes / total, 3) if total else 0.0
    q["tensor_types"] = dict(sorted(counts.items()))
    return q


def fit_metadata(new, old):
    """The metadata JSON `new` in place of `old` without moving the tensor index: the same
    length rounded up to 64, padded with spaces (JSON whitespace) when shorter; `old` when
    `new` would need more room (the data is written already)."""
    if align64(len(new)) == align64(len(old)):
        return new
    if len(new) < len(old):
        return new + b" " * (len(old) - len(new))
    return old


class Layout:
    """The head of an APR file: its size is fixed before the data, its content after."""

    format = "apr"

    def __init__(self, metadata, names_shapes, flags=None, requantize=None):
        self.metadata = metadata_json(metadata)
        self.flags = flags
        # records -> the `quantization` block of the file as written (a tensor planned as Q4
        # may have gone to F32 on an overflow), or None: as planned. Only a changed block
        # re-encodes the metadata (a tokenizer's lists are most of it)
        self._planned, self._requantize = metadata, requantize
        self._order = sorted(names_shapes, key=lambda ns: ns[0].encode("utf-8"))
        index_len = sum(2 + len(n.encode("utf-8")) + 2 + 8 * len(s) + 16 for n, s in names_shapes)
        self._index_len = index_len
        self.head_len = 64 + align64(len(self.metadata)) + align64(index_len)

    @property
    def order(self):
        """Names in the order the data must be written: sorted by bytes."""
        return [n for n, _ in self._order]

    def tensor_start(self, data_len):
        return align64(data_len)

    def tensor_end(self, data_len):
        return align64(data_len)

    def head(self, records):
        flags = self.flags
        if flags is None:
            flags = FLAG_ROW_MAJOR | (FLAG_QUANTIZED if any(r[2].quantized for r in records) else 0)
        index = b"".join(pack_entry(r[0], r[2], r[1], r[3], r[4]) for r in
                         sorted(records, key=lambda r: r[0].encode("utf-8")))
        assert len(index) == self._index_len
        meta = self.metadata
        if self._requantize is not None:
            q = self._requantize(records)
            if q != self._planned.get("quantization"):
                meta = fit_metadata(metadata_json(dict(self._planned, quantization=q)), meta)
        m = len(meta)
        return (pack_header(flags, len(records), m, len(index)) + meta
                + bytes(align64(m) - m) + index + bytes(align64(len(index)) - len(index)))

    def footer(self, head, data_crc, data_len):
        from ..crc import crc32_combine
        return struct.pack("<I", crc32_combine(zlib.crc32(head), data_crc, data_len))


def read(path, check_crc=True):
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        h = f.read(64)
        if len(h) < 64:
            raise BadInput(f"too short for an APR file ({size} bytes, the header alone is 64)", path)
        if h[:4] != MAGIC:
            raise BadInput(f"not an APR v2 file (magic {h[:4]!r})", path)
        if h[4] != 2:
            raise BadInput(f"APR version {h[4]}.{h[5]} is not supported (2.x is)", path)
        flags, count, meta_off, meta_size, index_off, data_off = struct.unpack_from("<HIQIQQ", h, 6)
        (crc,) = struct.unpack_from("<I", h, 40)
        if crc != header_crc(h):
            raise BadInput("header checksum mismatch (the file is damaged)", path)
        if flags & FLAG_COLUMN_MAJOR:
            raise BadInput("column-major tensors are not supported", path)
        for bit, what in FLAG_UNSUPPORTED.items():
            if flags & bit:
                raise BadInput(f"{what} is not supported", path)
        if not (64 <= meta_off and meta_off + meta_size <= index_off <= data_off <= size - 4):
            raise BadInput(f"section offsets out of order or past the end (metadata {meta_off}+"
                           f"{meta_size}, index {index_off}, data {data_off}, file {size})", path)
        if meta_size > MAX_METADATA:
            raise BadInput(f"metadata of {meta_size} bytes is over the limit", path)
        if data_off - index_off > MAX_INDEX:
            raise BadInput(f"a tensor index of {data_off - index_off} bytes is over the "
                           f"{MAX_INDEX} byte limit", path)
        if check_crc:   # a damaged file is reported as damaged, before its content is read
            check_footer(path, size)
        f.seek(meta_off)
        meta = load_json(f.read(meta_size), path, "the metadata") if meta_size else {}
        f.seek(index_off)
        index = f.read(data_off - index_off)
    entries = _parse_index(path, index, count, data_off, size)
    check_names(entries)
    check_overlaps(path, entries)
    return Model("apr", [path], str(meta.get("name") or model_name(path)), entries, meta,
                 {"flags": flags})


def _parse_index(path, index, count, data_off, size):
    """The index entries: sorted unique names, known dtypes, sizes that match the shapes."""
    if count > len(index) // MIN_ENTRY:
        raise BadInput(f"tensor count {count} cannot fit in an index of {len(index)} bytes", path)
    if count > MAX_TENSORS:
        raise BadInput(f"{count} tensors are more than the {MAX_TENSORS} q4apr reads", path)
    entries, pos, prev = [], 0, None
    for i in range(count):
        raw, dcode, shape, offset, nbytes, pos = _unpack_entry(path, index, pos, i)
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise BadInput(f"tensor name #{i} is not UTF-8", path) from None
        if prev is not None and raw <= prev:
            raise BadInput("tensor names are not sorted and unique (the index is invalid)", path, name)
        prev = raw
        entries.append(_entry(path, name, dcode, shape, offset, nbytes, data_off, size))
    return entries


def _unpack_entry(path, index, pos, i):
    """(name bytes, dtype code, shape, offset, size, next pos) of the entry at pos."""
    try:
        (n,) = struct.unpack_from("<H", index, pos)
        raw = index[pos + 2: pos + 2 + n]
        dcode, ndim = struct.unpack_from("<BB", index, pos + 2 + n)
        if ndim > MAX_NDIM:
            raise BadInput(f"ndim {ndim} is over {MAX_NDIM}", path, raw.decode("utf-8", "replace"))
        shape = struct.unpack_from(f"<{ndim}Q", index, pos + 4 + n)
        offset, nbytes = struct.unpack_from("<QQ", index, pos + 4 + n + 8 * ndim)
    except struct.error:
        raise BadInput(f"the tensor index ends inside entry #{i}", path) from None
    return raw, dcode, shape, offset, nbytes, pos + 4 + n + 8 * ndim + 16


def _entry(path, name, dcode, shape, offset, nbytes, data_off, size):
    """One tensor: its dtype known, its size that of its shape, its data 64-aligned in the file."""
    dtype = BY_APR.get(dcode)
    if dtype is None:
        raise BadInput(f"unknown dtype code {dcode}", path, name)
    if any(d >= 1 << 48 for d in shape):
        raise BadInput(f"shape {list(shape)} is too large", path, name)
    n = numel(shape)
    want = apr_nbytes(dtype, shape)
    tied = None
    if nbytes == 0 and n and name in TIED_HEADS:
        tied = TIED_HEADS[name]   # Aprender's exporters write a tied head so: 0 data bytes
    elif nbytes != want:
        pad = padded_row(dtype, shape)
        if pad is not None and nbytes == dtype.nbytes(n):
            raise BadInput(f"{dtype.name} {list(shape)} is stored flat ({nbytes} bytes), not row "
                           f"by row: Aprender's layout pads each row of {pad[0]} to {pad[1]} "
                           f"({want} bytes), and its runtime reads it so", path, name)
        raise BadInput(f"size {nbytes} does not match shape {list(shape)} of {dtype.name} "
                       f"({want} bytes)", path, name)
    if offset % ALIGN:
        raise BadInput(f"data offset {offset} is not {ALIGN}-byte aligned", path, name)
    start = data_off + offset
    if start + nbytes > size - 4:
        raise BadInput(f"data at {start}..{start + nbytes} runs past the end of the file", path, name)
    return TensorEntry(name, tuple(shape), dtype, nbytes, path, start, tied_to=tied)


def check_footer(path, size=None):
    """The last 4 bytes must be the CRC32 of everything before them."""
    size = os.path.getsize(path) if size is None else size
    crc = 0
    with open(path, "rb") as f:
        left = size - 4
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        while left > 0:
            n = f.readinto(view[: min(left, len(buf))])
            if not n:
                break
            crc = zlib.crc32(view[:n], crc)
            left -= n
        stored = f.read(4)
    if len(stored) != 4 or struct.unpack("<I", stored)[0] != crc:
        raise BadInput("footer checksum mismatch (the file is damaged or truncated)", path)

