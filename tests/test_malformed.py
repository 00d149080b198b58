"""Hostile input: every reader turns a malformed file into a clear BadInput, never a crash.

The corpus is built from valid files written by the real packages (safetensors, gguf-py,
numpy) and by our own APR writer, each broken in one way (APR CRCs recomputed so that the
rule itself is what is tested). Each case goes through open_model and a full quantize to
APR and to GGUF (small chunks) under tests/hostile.py's harness: reads may not ask for
more bytes than the file has, the input may not change, the traced peak allocation stays
small, and the only outcomes allowed are success or a BadInput that names the file (and
the tensor, where there is one) and says what is wrong.
"""

import io
import json
import os
import random
import re
import signal
import struct
import tempfile
import time
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

import hostile
import q4apr

pytest.importorskip("gguf")
pytest.importorskip("safetensors")

TB = 1 << 40
MEMORY_LIMIT = 24 << 20   # the traced peak of one case; the seeds are a few KB


@dataclass
class Case:
    id: str
    files: dict               # {filename: bytes}; bytes may be a callable(folder) -> None
    bad: bool = True          # must end in BadInput (else success is fine too)
    match: str = ""           # regex the problem must match
    tensor: str | None = None  # the tensor the message must name


_TMP = tempfile.TemporaryDirectory(prefix="q4apr-seeds-")
SEEDS = hostile.seeds(_TMP.name)
SEED = {fmt: dict(sets[0]) for fmt, sets in SEEDS.items()}


def rand_bytes(n, seed):
    return random.Random(seed).randbytes(n)


# ---------------------------------------------------------------- safetensors

def st_parse(data):
    (n,) = struct.unpack_from("<Q", data)
    return json.loads(data[8:8 + n]), data[8 + n:]


def st_raw(header_text, data=b"", length=None):
    """A safetensors file from header text (str or bytes) and data; length overrides."""
    h = header_text.encode("utf-8", "surrogatepass") if isinstance(header_text, str) else header_text
    return struct.pack("<Q", len(h) if length is None else length) + h + data


def st_file(header, data):
    return st_raw(json.dumps(header), data)


def st_with(name, field, value):
    """The seed with one field of one tensor's entry replaced (None deletes it)."""
    header, data = st_parse(SEED["safetensors"]["m.safetensors"])
    if value is None:
        del header[name][field]
    else:
        header[name][field] = value
    return {"m.safetensors": st_file(header, data)}


def st_small(entries, data):
    """A hand-made file: entries [(name, dtype, shape, [begin, end])]."""
    header = {n: {"dtype": d, "shape": s, "data_offsets": o} for n, d, s, o in entries}
    return {"m.safetensors": st_file(header, data)}


def st_nonfinite(value, dtype=np.float32, name="blk.0.w.weight", shape=(4, 32)):
    from safetensors.numpy import save
    a = np.ones(shape, dtype)
    a.flat[37 % a.size] = value
    return {"m.safetensors": save({name: a, "norm.weight": np.ones(32, np.float32)})}


def safetensors_cases():
    seed = SEED["safetensors"]["m.safetensors"]
    header, data = st_parse(seed)
    (n,) = struct.unpack_from("<Q", seed)
    W, IDS = "model.layers.0.mlp.up_proj.weight", "model.layers.0.ids"
    cases = [Case("empty", {"m.safetensors": b""}, match="empty|too short")]
    for at in (4, 8, 9, 8 + n // 2, 8 + n, 8 + n + 1, 8 + n + 2048, len(seed) - 1):
        cases.append(Case(f"truncated-at-{at}", {"m.safetensors": seed[:at]},
                          match="too short|header length|past the end|ends inside|no tensor"))
    for length in (len(seed) - 7, len(seed), TB, 1 << 63, (1 << 64) - 1, (100 << 20) + 1):
        cases.append(Case(f"header-length-{length}",
                          {"m.safetensors": struct.pack("<Q", length) + seed[8:]},
                          match="header length"))
    bad_json = {
        "zero-length": b"", "not-json": b"{not json}", "non-utf8": b'{"\xff\xfe": 1}',
        "nested-arrays": b"[" * 100_000 + b"]" * 100_000,
        "nested-objects": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        "array": b"[]", "string": b'"x"', "nan": b'{"w": NaN}', "infinity": b'{"w": -Infinity}',
        "float-overflow": b'{"w": {"dtype": "F32", "shape": [1e999], "data_offsets": [0, 4]}}',
        "int-5000-digits": b'{"w": {"dtype": "F32", "shape": [' + b"9" * 5000 + b"]}}",
        "truncated-json": seed[8: 8 + n // 2] + b" " * (n - n // 2),
    }
    for name, text in bad_json.items():
        cases.append(Case(f"json-{name}", {"m.safetensors": st_raw(text, b"")},
                          match="JSON|not an object"))
    cases += [
        Case("entry-not-object", {"m.safetensors": st_raw('{"w": 5}')}, match="not an object",
             tensor="w"),
        Case("metadata-not-object", {"m.safetensors": st_raw('{"__metadata__": [1]}')},
             match="__metadata__"),
        Case("metadata-nested-900", {"m.safetensors": st_raw(
            '{"__metadata__": {"a": ' + "[" * 900 + "]" * 900 + "}}")}, match="nests JSON deeper"),
        Case("duplicate-name", {"m.safetensors": st_raw(
            '{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
            '"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}', bytes(8))},
            match="duplicate", tensor="w"),
        Case("duplicate-field", {"m.safetensors": st_raw(
            '{"w": {"dtype": "F32", "dtype": "F16", "shape": [1], "data_offsets": [0, 4]}}',
            bytes(4))}, match="twice"),
        Case("name-lone-surrogate", {"m.safetensors": st_raw(
            '{"\\ud800x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', bytes(4))},
            match="UTF-8"),
        Case("metadata-lone-surrogate", {"m.safetensors": st_raw(
            '{"__metadata__": {"a": "\\udc80"}}')}, match="Unicode"),
    ]
    for dt in ("F8_E4M3", "Q4_0", "f32", "", 5, [], "F32 "):
        cases.append(Case(f"dtype-{dt!r}", st_with(W, "dtype", dt), match="dtype", tensor=W))
    cases.append(Case("dtype-missing", st_with(W, "dtype", None), match="dtype", tensor=W))
    for shape in ([-1], [1.5], [True, 8], "8", {"a": 1}, [1] * 17, [1 << 62], [8, -64]):
        cases.append(Case(f"shape-{shape!r}", st_with(W, "shape", shape), match="shape", tensor=W))
    cases += [
        Case("shape-missing", st_with(W, "shape", None), match="shape", tensor=W),
        Case("shape-overflows-u64", st_with(W, "shape", [1 << 61, 1 << 61, 1 << 61]),
             match="needs", tensor=W),
        Case("shape-disagrees-with-size", st_with(W, "shape", [8, 65]), match="needs", tensor=W),
        Case("shape-zero-elements", st_with(W, "shape", [0, 64]), match="needs", tensor=W),
    ]
    good = header[W]["data_offsets"]
    for offs in ([-1, 2047], [2048, 0], [0], [0, 2048, 4096], ["0", "2048"], [0.0, 2048.0],
                 [0, 1 << 64], [1 << 64, (1 << 64) + 2048], None):
        cases.append(Case(f"offsets-{offs!r}", st_with(W, "data_offsets", offs),
                          match="data_offsets|needs", tensor=W))
    cases.append(Case("offsets-past-end", st_with(IDS, "data_offsets", [len(data), len(data) + 24]),
                      match="past the end", tensor=IDS))
    cases.append(Case("offsets-terabyte", st_with(W, "data_offsets", [TB, TB + good[1]]),
                      match="past the end", tensor=W))
    f32 = np.arange(6, dtype=np.float32).tobytes()
    cases += [
        Case("offsets-overlap", st_small([("a", "F32", [4], [0, 16]), ("b", "F32", [4], [8, 24]),
                                          ("c", "F32", [2], [16, 24])], f32), match="overlaps"),
        Case("offsets-same", st_small([("a", "F32", [6], [0, 24]), ("b", "F32", [6], [0, 24])],
                                      f32), match="overlaps"),
        Case("offsets-gap", st_small([("a", "F32", [2], [0, 8]), ("b", "F32", [3], [12, 24])],
                                     f32), match="gap", tensor="b"),
        Case("offsets-gap-at-start", st_small([("a", "F32", [4], [8, 24])], f32),
             match="gap", tensor="a"),
        Case("trailing-bytes", {"m.safetensors": seed + bytes(8)}, match="no tensor"),
        Case("no-tensors", {"m.safetensors": st_raw("{}")}, bad=False),
        Case("bool-tensor", st_small([("mask", "BOOL", [4], [0, 4])], bytes(4)), bad=False),
        Case("nan-weight", st_nonfinite(np.nan), match="non-finite", tensor="blk.0.w.weight"),
        Case("inf-weight", st_nonfinite(np.inf), match="non-finite", tensor="blk.0.w.weight"),
        Case("inf-weight-f16", st_nonfinite(-np.inf, np.float16), match="non-finite",
             tensor="blk.0.w.weight"),
        Case("nan-in-norm", st_nonfinite(np.nan, name="norm2.weight", shape=(32,)),
             match="non-finite weight nan at flat index", tensor="norm2.weight"),
        Case("f64-beyond-f32", st_nonfinite(1e300, np.float64), match="beyond the range of F32",
             tensor="blk.0.w.weight"),
        Case("f64-beyond-f32-1d", st_nonfinite(-1e39, np.float64, name="n2.weight", shape=(32,)),
             match="beyond the range of F32", tensor="n2.weight"),
    ]
    for i, size in enumerate((16, 200, 5000)):
        cases.append(Case(f"random-{size}", {"m.safetensors": struct.pack("<Q", size - 8) + b"{"
                                             + rand_bytes(size - 9, i)}, match="JSON|header"))
    return cases


# ---------------------------------------------------------------- safetensors index

def index_set(index, files=None):
    """The sharded seed with its index replaced by `index` (bytes, str or a JSON value)."""
    files = dict(files or SEED["index"])
    if not isinstance(index, bytes):
        index = (index if isinstance(index, str) else json.dumps(index)).encode(
            "utf-8", "surrogatepass")
    files["model.safetensors.index.json"] = index
    return files


def index_cases():
    seed = SEED["index"]
    idx = json.loads(seed["model.safetensors.index.json"])
    wmap = idx["weight_map"]
    s1, s2 = sorted(f for f in seed if f.endswith(".safetensors"))
    one = sorted(wmap)[0]
    cases = [
        Case("empty", index_set(b""), match="empty"),
        Case("not-json", index_set(b"{weight_map"), match="JSON"),
        Case("non-utf8", index_set(b'{"weight_map": {"\xff": "x"}}'), match="JSON"),
        Case("nested", index_set(b"[" * 100_000 + b"]" * 100_000), match="JSON"),
        Case("array", index_set([]), match="object"),
        Case("metadata-nested-900", index_set('{"metadata": {"a": %s}, "weight_map": {}}'
                                              % ("[" * 900 + "]" * 900)), match="nests JSON deeper"),
        Case("nan-metadata", index_set('{"metadata": {"total_size": NaN}, "weight_map": {}}'),
             match="JSON"),
        Case("float-overflow", index_set('{"metadata": {"x": 1e400}, "weight_map": {}}'),
             match="JSON"),
        Case("no-weight-map", index_set({"metadata": {}}), match="weight_map"),
        Case("weight-map-array", index_set({"weight_map": [s1]}), match="weight_map"),
        Case("weight-map-values", index_set({"weight_map": {one: 5}}), match="weight_map"),
        Case("missing-shard", index_set({"weight_map": {**wmap, one: "model-00009.safetensors"}}),
             match="missing"),
        Case("many-missing-shards", index_set({"weight_map": {f"t{i}": f"s{i}.safetensors"
                                                              for i in range(10_000)}}),
             match="missing.*more"),
        Case("wrong-shard", index_set({"weight_map": {**wmap, one: s2 if wmap[one] == s1 else s1}}),
             match="does not hold", tensor=one),
        Case("tensor-not-in-index", index_set({"weight_map": {k: v for k, v in wmap.items()
                                                              if k != one}}),
             match="not in the index", tensor=one),
        Case("unknown-tensor", index_set({"weight_map": {**wmap, "ghost": s1}}),
             match="does not hold", tensor="ghost"),
        Case("duplicate-key", index_set('{"weight_map": {"%s": "%s", "%s": "%s"}}'
                                        % (one, s1, one, s2)), match="twice"),
        Case("lone-surrogate", index_set('{"weight_map": {"\\ud800": "%s"}}' % s1),
             match="Unicode"),
        Case("metadata-odd-values", index_set({"metadata": {"a": [1, {"b": None}], "n": None},
                                               "weight_map": wmap}), bad=False),
        Case("index-alone", {"model.safetensors.index.json": seed["model.safetensors.index.json"]},
             match="index file alone"),
        Case("two-indexes", {**seed, "other.index.json": seed["model.safetensors.index.json"]},
             match="more than one index"),
        Case("same-tensor-in-two-shards", {s1: seed[s1], "copy.safetensors": seed[s1]},
             match="duplicate"),
    ]
    for i, size in enumerate((1, 100, 3000)):
        cases.append(Case(f"random-{size}", index_set(b"{" + rand_bytes(size, 10 + i)),
                          match="JSON"))
    return cases


# ---------------------------------------------------------------- GGUF

def gguf_str(b):
    b = b.encode() if isinstance(b, str) else b
    return struct.pack("<Q", len(b)) + b


def gguf_kv(key, vtype, payload):
    return gguf_str(key) + struct.pack("<I", vtype) + payload


def gguf_info(name, dims, gtype, offset, ndim=None):
    return (gguf_str(name) + struct.pack("<I", len(dims) if ndim is None else ndim)
            + b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", gtype, offset))


def gguf_file(kvs=(), infos=(), data=b"", n_tensors=None, n_kv=None, version=3, align=32,
              magic=b"GGUF"):
    """A GGUF by hand: kvs and infos are already-packed records; data goes at the aligned start."""
    head = (magic + struct.pack("<IQQ", version, len(infos) if n_tensors is None else n_tensors,
                                len(kvs) if n_kv is None else n_kv) + b"".join(kvs) + b"".join(infos))
    return head + bytes(-len(head) % align) + data


F32_ROW = np.linspace(-1, 1, 32, dtype=np.float32).tobytes()


def gg(kvs=(), infos=None, data=None, **kw):
    """A one-tensor GGUF ('w.weight', F32 [1, 32]) unless infos/data are given."""
    if infos is None:
        infos = [gguf_info("w.weight", [32, 1], 0, 0)]
    return {"m.gguf": gguf_file(kvs, infos, F32_ROW if data is None else data, **kw)}


def gguf_boundaries(data):
    """Section boundaries of a gguf-py file, found by gguf-py's own reader."""
    import gguf
    with tempfile.NamedTemporaryFile(suffix=".gguf", delete=False) as f:
        f.write(data)
    try:
        r = gguf.GGUFReader(f.name)
        cuts = {int(x.offset) for x in r.fields.values()}
        cuts |= {int(t.field.offset) for t in r.tensors}
        cuts |= {int(t.data_offset) for t in r.tensors}
        cuts |= {int(t.data_offset) + int(t.n_bytes) // 2 for t in r.tensors}
        return sorted(c for c in cuts if 0 < c < len(data)), r.data_offset
    finally:
        os.unlink(f.name)


def gguf_cases():
    seed = SEED["gguf"]["m.gguf"]
    cuts, data_start = gguf_boundaries(seed)
    cases = [Case("empty", {"m.gguf": b""}, match="empty")]
    for at in sorted(set(cuts) | {2, 4, 6, data_start - 1, len(seed) - 1}):
        cases.append(Case(f"truncated-at-{at}", {"m.gguf": seed[:at]},
                          match="needs|cannot fit|past the end|magic|not a model file"))
    u32 = lambda v: struct.pack("<I", v)  # noqa: E731
    cases += [
        Case("valid-by-hand", gg(), bad=False),
        Case("bad-magic", {"m.gguf": b"GGUG" + seed[4:]}, match="not a model file"),
        Case("magic-only", {"m.gguf": b"GGUF"}, match="version"),
    ]
    for v in (0, 1, 4, 0xFFFFFFFF):
        cases.append(Case(f"version-{v}", gg(version=v), match="version"))
    for nt, nk in ((1 << 63, 0), (0, 1 << 63), ((1 << 64) - 1, (1 << 64) - 1), (2, 0), (1, 5)):
        cases.append(Case(f"counts-{nt}-{nk}", gg(n_tensors=nt, n_kv=nk),
                          match="cannot fit|needs|n_dims|version|type|GGML|past|aligned"))
    huge_str = struct.pack("<Q", 1 << 62)
    cases += [
        Case("key-length-huge", gg([huge_str + b"k"]), match="needs .* bytes"),
        Case("string-value-huge", gg([gguf_str("s") + u32(8) + struct.pack("<Q", TB)]),
             match="needs .* bytes"),
        Case("array-u8-huge", gg([gguf_str("a") + u32(9) + u32(0) + struct.pack("<Q", 1 << 61)]),
             match="needs .* bytes"),
        Case("array-f64-overflow", gg([gguf_kv("a", 9, u32(12) + struct.pack("<Q", (1 << 64) - 1))]),
             match="needs .* bytes"),
        Case("array-strings-huge", gg([gguf_kv("a", 9, u32(8) + struct.pack("<Q", 1 << 60))]),
             match="cannot fit"),
        Case("array-arrays-huge", gg([gguf_kv("a", 9, u32(9) + struct.pack("<Q", TB))]),
             match="cannot fit"),
        Case("array-nested-deep", gg([gguf_kv("a", 9, (u32(9) + struct.pack("<Q", 1)) * 6
                                              + u32(0) + struct.pack("<Q", 0))]),
             match="nested too deep"),
        Case("array-unknown-type", gg([gguf_kv("a", 9, u32(13) + struct.pack("<Q", 1))]),
             match="unknown array element type"),
        Case("value-unknown-type", gg([gguf_kv("a", 13, b"")]), match="unknown value type"),
        Case("key-not-utf8", gg([gguf_kv(b"\xff\xfe", 4, u32(1))]), match="UTF-8"),
        Case("key-twice", gg([gguf_kv("k", 4, u32(1)), gguf_kv("k", 4, u32(2))]), match="twice"),
        Case("alignment-zero", gg([gguf_kv("general.alignment", 4, u32(0))]), match="alignment"),
        Case("alignment-three", gg([gguf_kv("general.alignment", 4, u32(3))]), match="alignment"),
        Case("alignment-string", gg([gguf_kv("general.alignment", 8, gguf_str("32"))]),
             match="alignment"),
        Case("alignment-2^31", gg([gguf_kv("general.alignment", 4, u32(1 << 31))]),
             match="past the end"),
        Case("floats-nan-inf", gg([gguf_kv("f", 6, struct.pack("<f", np.nan)),
                                   gguf_kv("d", 12, struct.pack("<d", -np.inf)),
                                   gguf_kv("arr", 9, u32(6) + struct.pack("<Q2f", 2, np.nan, 1))]),
             bad=False),
        Case("tensor-name-huge", gg(infos=[huge_str + b"w"]), match="needs .* bytes"),
        Case("tensor-name-long", gg(infos=[gguf_info("w" * 5000, [32, 1], 0, 0)]),
             match="bytes long"),
        Case("tensor-name-not-utf8", gg(infos=[gguf_info(b"w\xff", [32, 1], 0, 0)]),
             match="UTF-8"),
        Case("tensor-name-twice", gg(infos=[gguf_info("w.weight", [32], 0, 0),
                                            gguf_info("w.weight", [32], 0, 128)],
                                     data=F32_ROW * 5), match="duplicate", tensor="w.weight"),
    ]
    for nd in (0, 5, 0xFFFFFFFF):
        cases.append(Case(f"n-dims-{nd}", gg(infos=[gguf_info("w.weight", [32, 1], 0, 0, ndim=nd)]),
                          match="n_dims|needs|GGML|bytes", tensor="w.weight" if nd in (0, 5) else None))
    cases += [
        Case("dims-2^48", gg(infos=[gguf_info("w.weight", [1 << 48], 0, 0)]), match="too large",
             tensor="w.weight"),
        Case("dims-overflow", gg(infos=[gguf_info("w.weight", [1 << 47] * 4, 0, 0)]),
             match="too large|past the end", tensor="w.weight"),
        Case("dims-product-overflow", gg(infos=[gguf_info("w.weight", [1 << 40, 1 << 40], 0, 0)]),
             match="past the end", tensor="w.weight"),
        Case("ggml-type-unknown", gg(infos=[gguf_info("w.weight", [32, 1], 99, 0)]),
             match="GGML type", tensor="w.weight"),
        Case("ggml-type-huge", gg(infos=[gguf_info("w.weight", [32, 1], 0xFFFFFFFF, 0)]),
             match="GGML type", tensor="w.weight"),
        Case("q4_0-row-not-whole-blocks", gg(infos=[gguf_info("w.weight", [48, 1], 2, 0)],
                                             data=bytes(36)), match="row length", tensor="w.weight"),
        Case("offset-misaligned", gg(infos=[gguf_info("w.weight", [8], 0, 4)]), match="aligned",
             tensor="w.weight"),
        Case("offset-past-end", gg(infos=[gguf_info("w.weight", [32, 1], 0, 64)]),
             match="past the end", tensor="w.weight"),
        Case("offset-terabyte", gg(infos=[gguf_info("w.weight", [32, 1], 0, TB)]),
             match="past the end", tensor="w.weight"),
        Case("offset-max", gg(infos=[gguf_info("w.weight", [32, 1], 0, (1 << 64) - 32)]),
             match="past the end", tensor="w.weight"),
        Case("data-short", gg(data=F32_ROW[:100]), match="past the end", tensor="w.weight"),
        Case("tensors-overlap", gg(infos=[gguf_info("a.weight", [32, 1], 0, 0),
                                          gguf_info("b.weight", [16, 1], 0, 64)]),
             match="overlaps"),
        Case("nan-weight", gg(infos=[gguf_info("w.weight", [32, 2], 0, 0)],
                              data=F32_ROW + struct.pack("<f", np.nan) + F32_ROW[4:]),
             match="non-finite", tensor="w.weight"),
        Case("inf-weight-f16", gg(infos=[gguf_info("w.weight", [32, 2], 1, 0)],
                                  data=np.full(64, np.inf, np.float16).tobytes()),
             match="non-finite", tensor="w.weight"),
        Case("q4_0-nan-scale", gg(infos=[gguf_info("w.weight", [32, 2], 2, 0)],
                                  data=(np.array([np.nan], np.float16).tobytes() + bytes(16)) * 2),
             match="non-finite weight nan at flat index 0", tensor="w.weight"),
        Case("zero-tensors", gg(infos=[], data=b""), bad=False),
    ]
    for i, size in enumerate((8, 24, 300, 5000)):
        cases.append(Case(f"random-{size}", {"m.gguf": b"GGUF" + rand_bytes(size, 20 + i)},
                          bad=False))
    return cases


# ---------------------------------------------------------------- APR

def apr_parse(data):
    """(flags, metadata bytes, [(name, dcode, shape, offset, size)], data bytes) of an APR file."""
    flags, count, moff, msize, ioff, doff = struct.unpack_from("<HIQIQQ", data, 6)
    entries, pos = [], ioff
    for _ in range(count):
        (n,) = struct.unpack_from("<H", data, pos)
        name = data[pos + 2: pos + 2 + n]
        dcode, nd = struct.unpack_from("<BB", data, pos + 2 + n)
        shape = struct.unpack_from(f"<{nd}Q", data, pos + 4 + n)
        off, size = struct.unpack_from("<QQ", data, pos + 4 + n + 8 * nd)
        entries.append((name, dcode, shape, off, size))
        pos += 4 + n + 8 * nd + 16
    return flags, data[moff: moff + msize], entries, data[doff:-4]


def apr_file(meta, entries, data, flags=0x0420, count=None, fields=None, version=(2, 0),
             magic=b"APR\0"):
    """An APR file from parts, laid out as the spec says, CRCs right; fields overrides header
    fields (count, meta_off, meta_size, index_off, data_off) after layout."""
    a64 = lambda n: (n + 63) & ~63  # noqa: E731
    index = b"".join(struct.pack("<H", len(n)) + n + struct.pack("<BB", d, len(s))
                     + b"".join(struct.pack("<Q", x) for x in s) + struct.pack("<QQ", o, z)
                     for n, d, s, o, z in entries)
    ioff = 64 + a64(len(meta))
    doff = ioff + a64(len(index))
    f = {"count": len(entries) if count is None else count, "meta_off": 64,
         "meta_size": len(meta), "index_off": ioff, "data_off": doff, **(fields or {})}
    h = bytearray(64)
    h[0:4] = magic
    h[4:6] = bytes(version)
    struct.pack_into("<HIQIQQ", h, 6, flags, f["count"], f["meta_off"], f["meta_size"],
                     f["index_off"], f["data_off"])
    body = (bytes(h) + meta + bytes(a64(len(meta)) - len(meta)) + index
            + bytes(a64(len(index)) - len(index)) + data)
    return hostile.fix_apr_crcs(body + bytes(4))


def apr_with(**kw):
    """The APR seed rebuilt with some parts replaced (meta, entries, data, flags, ...)."""
    flags, meta, entries, data = apr_parse(SEED["apr"]["m.apr"])
    args = {"meta": meta, "entries": entries, "data": data, "flags": flags}
    args.update(kw)
    if callable(args["entries"]):
        args["entries"] = args["entries"](list(entries))
    return {"m.apr": apr_file(**args)}


def apr_entry_with(i, **changes):
    """An entries function that changes entry i: name, dcode, shape, offset, size."""
    keys = ("name", "dcode", "shape", "offset", "size")

    def change(entries):
        e = dict(zip(keys, entries[i]))
        e.update(changes)
        entries[i] = tuple(e[k] for k in keys)
        return entries
    return change


def apr_cases():
    seed = SEED["apr"]["m.apr"]
    flags, meta, entries, data = apr_parse(seed)
    assert apr_file(meta, entries, data, flags) == seed   # the builder is faithful
    _, ioff, doff = struct.unpack_from("<IQQ", seed, 20)
    names = [e[0].decode() for e in entries]
    q4 = next(i for i, e in enumerate(entries) if e[1] == 128)
    q4k = next(i for i, e in enumerate(entries)     # a float tensor not of Q4_K's size
               if e[1] in (128, 1, 0) and -(-int(np.prod(e[2])) // 256) * 144 != e[4])
    f32 = next(i for i, e in enumerate(entries) if e[1] == 0)
    cases = [Case("empty", {"m.apr": b""}, match="empty|too short")]
    for at in (3, 32, 64, 64 + len(meta) // 2, ioff, ioff + 10, doff, doff + 100,
               len(seed) - 4, len(seed) - 1):
        cases.append(Case(f"truncated-at-{at}", {"m.apr": seed[:at]},
                          match="too short|checksum|offsets|not a model"))
        if 68 <= at < len(seed) - 4:   # cut, then made whole again: only the structure is wrong
            cases.append(Case(f"truncated-at-{at}-crcs-fixed",
                              {"m.apr": hostile.fix_apr_crcs(seed[:at] + bytes(4))},
                              match="offsets|past the end|ends inside|JSON"))
    hdr_bad = bytearray(seed)
    hdr_bad[50] ^= 1      # a reserved byte: only the header CRC can tell
    struct.pack_into("<I", hdr_bad, len(seed) - 4, zlib.crc32(hdr_bad[:-4]))
    foot_bad = bytearray(seed)
    foot_bad[-1] ^= 1
    cases += [
        Case("valid-rebuilt", apr_with(), bad=False),
        Case("header-crc", {"m.apr": bytes(hdr_bad)}, match="header checksum"),
        Case("footer-crc", {"m.apr": bytes(foot_bad)}, match="footer checksum"),
        Case("data-byte-flipped", {"m.apr": seed[:doff + 5] + bytes([seed[doff + 5] ^ 0x40])
                                   + seed[doff + 6:]}, match="footer checksum"),
    ]
    for magic in (b"APR2", b"APRN", b"APR\x01", b"apr\0"):
        cases.append(Case(f"magic-{magic!r}", apr_with(magic=magic),
                          match="magic|not a model file"))
    for v in ((1, 0), (3, 0), (255, 255)):
        cases.append(Case(f"version-{v[0]}.{v[1]}", apr_with(version=v), match="version"))
    for bit, what in ((0x0800, "column-major"), (0x1, "LZ4"), (0x2, "ZSTD"), (0x4, "encryption")):
        cases.append(Case(f"flag-{what}", apr_with(flags=flags | bit), match="not supported"))
    for field, value in (("meta_size", 0xFFFFFFFF), ("meta_off", 1 << 63), ("meta_off", 0),
                         ("index_off", 64), ("index_off", TB), ("data_off", len(seed)),
                         ("data_off", ioff - 1), ("data_off", (1 << 64) - 1)):
        cases.append(Case(f"{field}-{value}", apr_with(fields={field: value}),
                          match="section offsets"))
    for name, text in {"not-json": b"{meta", "non-utf8": b'{"a": "\xff"}', "array": b"[1]",
                       "nested": b"[" * 50_000 + b"]" * 50_000, "nan": b'{"x": NaN}',
                       "infinity": b'{"x": Infinity}', "float-overflow": b'{"x": -1e999}',
                       "key-twice": b'{"name": "a", "name": "b"}',
                       "nested-900": b'{"a": ' + b"[" * 900 + b"]" * 900 + b"}",
                       "lone-surrogate": b'{"name": "\\udfff"}'}.items():
        cases.append(Case(f"metadata-{name}", apr_with(meta=text),
                          match="metadata (is not valid JSON|is not a JSON object|has the key|"
                                "holds a string|nests JSON deeper)"))
    cases += [
        Case("metadata-empty", apr_with(meta=b""), bad=False),
        Case("metadata-odd-name", apr_with(meta=b'{"name": {"a": [1]}, "param_count": "x"}'),
             bad=False),
        Case("count-huge", apr_with(count=0xFFFFFFFF), match="cannot fit"),
        Case("count-plus-one", apr_with(count=len(entries) + 1),
             match="ends inside|cannot fit|not sorted"),
        Case("count-zero", apr_with(count=0), bad=False),
        Case("unsorted", apr_with(entries=lambda e: e[::-1]), match="not sorted",
             tensor=names[-2 if len(names) > 1 else 0]),
        Case("duplicate-name", apr_with(entries=lambda e: [e[0], e[0]] + e[2:]),
             match="not sorted and unique", tensor=names[0]),
        Case("name-not-utf8", apr_with(entries=apr_entry_with(0, name=b"\xff\xfe")),
             match="not UTF-8"),
        Case("name-length-huge", apr_with(entries=apr_entry_with(len(entries) - 1,
                                                                 name=b"z" * 0xFFFF)), bad=False),
    ]
    for nd in (9, 255):
        cases.append(Case(f"ndim-{nd}", apr_with(entries=apr_entry_with(q4, shape=(1,) * nd)),
                          match="ndim", tensor=names[q4]))
    for code in (2, 99, 255):
        cases.append(Case(f"dtype-code-{code}", apr_with(entries=apr_entry_with(q4, dcode=code)),
                          match="unknown dtype", tensor=names[q4]))
    e = entries[q4]
    cases += [
        Case("size-mismatch", apr_with(entries=apr_entry_with(q4, size=e[4] + 18)),
             match="does not match", tensor=names[q4]),
        # the Q4_K code on a tensor whose size is not Q4_K's for its shape
        Case("size-q4k-unchecked", apr_with(entries=apr_entry_with(q4k, dcode=12,
                                                                   size=entries[q4k][4])),
             match="does not match", tensor=names[q4k]),
        Case("shape-2^48", apr_with(entries=apr_entry_with(q4, shape=(1 << 48, 1))),
             match="too large", tensor=names[q4]),
        Case("shape-overflow", apr_with(entries=apr_entry_with(q4, shape=(1 << 47,) * 8)),
             match="does not match", tensor=names[q4]),
        Case("offset-past-end", apr_with(entries=apr_entry_with(q4, offset=len(data))),
             match="past the end", tensor=names[q4]),
        Case("offset-terabyte", apr_with(entries=apr_entry_with(q4, offset=TB)),
             match="past the end", tensor=names[q4]),
        Case("offset-max", apr_with(entries=apr_entry_with(q4, offset=(1 << 64) - 64)),
             match="past the end", tensor=names[q4]),
        Case("offset-misaligned", apr_with(entries=apr_entry_with(q4, offset=e[3] + 8)),
             match="aligned", tensor=names[q4]),
        Case("offsets-overlap", apr_with(entries=apr_entry_with(f32, offset=entries[q4][3])),
             match="overlaps"),
        Case("nan-in-f32-vector", apr_with(data=data[:entries[f32][3]] + struct.pack("<f", np.nan)
                                           + data[entries[f32][3] + 4:]),
             match="non-finite weight nan at flat index 0", tensor=names[f32]),
        Case("q4-nan-scale", apr_with(data=data[:e[3]] + np.array([np.nan], np.float16).tobytes()
                                      + data[e[3] + 2:]),
             match="non-finite block scale nan at flat index 0", tensor=names[q4]),
        Case("nan-in-f32-matrix", {"m.apr": apr_file(
            b'{"name":"m"}', [(b"x.weight", 0, (2, 32), 0, 256)],
            F32_ROW + struct.pack("<f", np.inf) + F32_ROW[4:] + F32_ROW)},
             match="non-finite", tensor="x.weight"),
    ]
    for i, size in enumerate((4, 64, 500, 5000)):
        cases.append(Case(f"random-{size}", {"m.apr": b"APR\0" + rand_bytes(size, 30 + i)},
                          match="checksum|too short|version"))
        cases.append(Case(f"random-{size}-crcs-fixed", {"m.apr": hostile.fix_apr_crcs(
            b"APR\0\x02\x00" + rand_bytes(size, 40 + i))}, bad=False))
    return cases


# ---------------------------------------------------------------- npy

def npy_raw(header, data=b"", version=1, length=None):
    h = header if isinstance(header, bytes) else header.encode("latin1")
    fmt = "<H" if version == 1 else "<I"
    n = len(h) if length is None else length
    return b"\x93NUMPY" + bytes([version, 0]) + struct.pack(fmt, n) + h + data


def npy_header(descr="<f4", fortran=False, shape=(4, 64)):
    return f"{{'descr': {descr!r}, 'fortran_order': {fortran}, 'shape': {shape!r}, }}\n"


def npy_bytes(a):
    b = io.BytesIO()
    np.save(b, a)
    return b.getvalue()


def npy_cases():
    seed = SEED["npy"]["m.npy"]
    (hlen,) = struct.unpack_from("<H", seed, 8)
    data = seed[10 + hlen:]
    cases = [Case("empty", {"m.npy": b""}, match="empty")]
    for at in (3, 6, 7, 8, 9, 10, 10 + hlen // 2, 10 + hlen, 10 + hlen + 100, len(seed) - 1):
        cases.append(Case(f"truncated-at-{at}", {"m.npy": seed[:at]},
                          match="magic|header|needs|not a model"))
    bad_headers = {
        "not-a-dict": "[1, 2, 3]", "not-a-literal": "{'descr': foo}", "unhashable": "{[1]: 2}",
        "unhashable-dict-key": "{{}: 1}", "nested": "(" * 5000 + ")" * 5000,
        "nested-lists": "[" * 60_000, "null-byte": "{'descr': '<f4'\0}", "call": "__import__('os')",
        "missing-shape": "{'descr': '<f4', 'fortran_order': False}", "set": "{1, 2}",
        "huge-int": "{'descr': '<f4', 'fortran_order': False, 'shape': (" + "9" * 5000 + ",)}",
    }
    for name, text in bad_headers.items():
        cases.append(Case(f"header-{name}", {"m.npy": npy_raw(text + "\n", data)},
                          match="header|dictionary|bad shape"))
    for descr in ("<U10", "O", ">f4", "V8", "<c8", "zz", "(100000000000,)f4", "(-1,)f4",
                  "M8[xyz]", "i4,i4", ",f4", "f4,", "(2)f4,", 5, [("a", "<i4")], "<f4\n"):
        cases.append(Case(f"descr-{descr!r}", {"m.npy": npy_raw(npy_header(descr), data)},
                          match="dtype"))
    for shape in ((-1,), (1.5,), "4", (True, 2), (1 << 48,), (1,) * 33, [4, 64], None):
        cases.append(Case(f"shape-{shape!r}", {"m.npy": npy_raw(npy_header(shape=shape), data)},
                          match="bad shape|needs"))
    cases += [
        Case("shape-overflow", {"m.npy": npy_raw(npy_header(shape=(1 << 40, 1 << 40)), data)},
             match="needs", tensor="m"),
        Case("shape-disagrees", {"m.npy": npy_raw(npy_header(shape=(4, 65)), data)},
             match="needs", tensor="m"),
        Case("fortran", {"m.npy": npy_raw(npy_header(fortran=True), data)}, match="Fortran"),
        Case("version-4", {"m.npy": seed[:6] + b"\x04" + seed[7:]}, match="version"),
        Case("version-0", {"m.npy": seed[:6] + b"\x00" + seed[7:]}, match="version"),
        Case("header-length-past-end", {"m.npy": npy_raw(npy_header(), b"", length=0xFFFF)},
             match="ends inside"),
        Case("header-length-u32-huge", {"m.npy": npy_raw(npy_header(), data, 2, 0xFFFFFFFF)},
             match="out of range"),
        Case("v3-non-utf8", {"m.npy": npy_raw(b"{'descr': '\xff'}\n", data, 3)},
             match="dictionary"),
        Case("trailing-bytes", {"m.npy": seed + b"\0"}, match="needs", tensor="m"),
        Case("nan-weight", {"m.npy": npy_bytes(np.full((2, 32), np.nan, np.float32))},
             match="non-finite", tensor="m"),
        Case("inf-weight-f64", {"m.npy": npy_bytes(np.full((2, 32), -np.inf))},
             match="non-finite", tensor="m"),
        Case("nan-1d", {"m.npy": npy_bytes(np.full(32, np.nan, np.float32))},
             match="non-finite weight nan at flat index 0", tensor="m"),
        Case("zero-d", {"m.npy": npy_bytes(np.float32(3.0))}, bad=False),
        Case("complex", {"m.npy": npy_bytes(np.zeros(4, np.complex64))}, match="dtype"),
    ]
    for i, size in enumerate((2, 4, 200, 5000)):
        cases.append(Case(f"random-{size}", {"m.npy": b"\x93NUMPY" + rand_bytes(size, 50 + i)},
                          match="header|version|magic|dictionary"))
    return cases


# ---------------------------------------------------------------- npz

def npz_of(members, compression=zipfile.ZIP_STORED):
    """A zip written by zipfile: {ZipInfo or name: bytes}."""
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", compression) as z:
        for info, data in members.items():
            z.writestr(info, data)
    return b.getvalue()


def npz_patch(data, sig, field_at, fmt, value, which=0):
    """Overwrite a field of the which-th zip record with signature sig."""
    pos = -1
    for _ in range(which + 1):
        pos = data.index(sig, pos + 1)
    b = bytearray(data)
    struct.pack_into(fmt, b, pos + field_at, value)
    return bytes(b)


LOCAL, CENTRAL, END = b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06"


def npz_cases():
    plain, comp = SEED["npz"]["m.npz"], SEEDS["npz"][1]["c.npz"]
    first_data = 30 + struct.unpack_from("<H", plain, 26)[0]
    cd = plain.index(CENTRAL)
    end = plain.index(END)
    good = npy_bytes(np.ones((2, 32), np.float32))
    two = npz_of({"a.npy": good, "b.npy": good}, zipfile.ZIP_DEFLATED)
    cases = [Case("empty", {"m.npz": b""}, match="empty")]
    for at in (2, 4, 20, first_data, first_data + 50, cd - 1, cd + 20, end, end + 10,
               len(plain) - 1):
        cases.append(Case(f"truncated-at-{at}", {"m.npz": plain[:at]},
                          match="zip|not a model|magic|header|needs"))
    mid = len(comp) // 3
    cases += [
        Case("deflate-corrupt", {"c.npz": comp[:40] + bytes(b ^ 0x55 for b in comp[40:120])
                                 + comp[120:]}, match="damaged|zip|header"),
        Case("deflate-corrupt-late", {"c.npz": comp[:mid] + bytes(b ^ 0xFF for b in comp[mid:mid + 40])
                                      + comp[mid + 40:]}, bad=False),
        Case("extract-version-17.3", {"m.npz": npz_patch(plain, CENTRAL, 6, "<H", 173)},
             match="not a readable"),
        Case("member-empty-name", {"m.npz": npz_of({zipfile.ZipInfo(""): good})},
             match="empty name"),
        Case("member-encrypted", {"m.npz": npz_patch(plain, CENTRAL, 8, "<H", 1)},
             match="encrypted", tensor="w"),
        Case("member-bzip2", {"m.npz": npz_patch(plain, CENTRAL, 10, "<H", 12)},
             match="compression method", tensor="w"),
        Case("member-method-99", {"m.npz": npz_patch(plain, CENTRAL, 10, "<H", 99)},
             match="compression method", tensor="w"),
        Case("local-method-differs", {"m.npz": npz_patch(plain, LOCAL, 8, "<H", 8)}, bad=False),
        Case("member-not-npy", {"m.npz": npz_of({"w.npy": b"hello, world"})}, match="magic",
             tensor="w"),
        Case("member-bad-header", {"m.npz": npz_of({"w.npy": npy_raw("{[1]: 2}\n")})},
             match="dictionary", tensor="w"),
        Case("member-huge-shape", {"m.npz": npz_of({"w.npy": npy_raw(
            npy_header(shape=(1 << 47, 1 << 47)), bytes(64))})}, match="needs", tensor="w"),
        Case("member-names-twice", {"m.npz": npz_of({"w.npy": good, "w": good})},
             match="duplicate", tensor="w"),
        Case("member-size-larger", {"m.npz": npz_patch(plain, CENTRAL, 24, "<I", 1 << 31)},
             match="member holds", tensor="w"),
        Case("member-size-smaller", {"m.npz": npz_patch(plain, CENTRAL, 24, "<I", 100)},
             match="member holds|damaged", tensor="w"),
        Case("member-compressed-size-huge", {"m.npz": npz_patch(plain, CENTRAL, 20, "<I",
                                                                0xFFFFFFF0)}, bad=False),
        Case("member-crc-wrong", {"m.npz": npz_patch(plain, CENTRAL, 16, "<I", 12345)},
             bad=False),
        Case("member-name-not-utf8", {"m.npz": npz_patch(
            plain.replace(b"w.npy", b"\xff\xfe.npy"), CENTRAL, 8, "<H", 0x800)},
             match="not a readable"),
        Case("member-offset-past-end", {"m.npz": npz_patch(plain, CENTRAL, 42, "<I", 1 << 30)},
             match="damaged|zip"),
        Case("end-cd-offset-huge", {"m.npz": npz_patch(plain, END, 16, "<I", 0xFFFFFFF0)},
             match="zip"),
        Case("end-cd-size-huge", {"m.npz": npz_patch(plain, END, 12, "<I", 0xFFFFFFF0)},
             match="zip"),
        Case("end-count-huge", {"m.npz": npz_patch(npz_patch(plain, END, 10, "<H", 0xFFFF),
                                                   END, 8, "<H", 0xFFFF)}, bad=False),
        Case("members-share-data", {"m.npz": npz_patch(two, CENTRAL, 42, "<I", 0, which=1)},
             match="overlap"),
        Case("nan-weight", {"m.npz": npz_of({"w.npy": npy_bytes(np.full((2, 32), np.nan,
                                                                        np.float32))})},
             match="non-finite", tensor="w"),
        Case("directory-member", {"m.npz": npz_of({"d/": b"", "w.npy": good})}, bad=False),
        Case("not-npy-named", {"m.npz": npz_of({"weights": good})}, bad=False),
    ]
    for i, size in enumerate((2, 30, 400, 5000)):
        cases.append(Case(f"random-{size}", {"m.npz": LOCAL + rand_bytes(size, 60 + i)},
                          match="zip"))
    return cases


# ---------------------------------------------------------------- zero-byte and junk files

def misc_cases():
    cases = []
    for ext in (".safetensors", ".gguf", ".apr", ".npy", ".npz", ".bin", ""):
        cases.append(Case(f"zero-bytes{ext or '-no-ext'}", {"m" + ext: b""}, match="empty"))
        cases.append(Case(f"junk{ext or '-no-ext'}", {"m" + ext: rand_bytes(300, 70)},
                          match="not a model file|header|JSON|zip|magic|checksum"))
    cases.append(Case("zero-byte-index", {"model.safetensors.index.json": b"",
                                          **{k: v for k, v in SEED["index"].items()
                                             if k.endswith(".safetensors")}}, match="empty"))
    return cases


CORPUS = {"safetensors": safetensors_cases(), "index": index_cases(), "gguf": gguf_cases(),
          "apr": apr_cases(), "npy": npy_cases(), "npz": npz_cases(), "misc": misc_cases()}
CASES = [pytest.param(c, id=f"{fmt}/{c.id}") for fmt, cs in CORPUS.items() for c in cs]


def check_case(case, folder):
    paths = hostile.write_set(folder, case.files)
    t0 = time.monotonic()
    err = hostile.exercise(paths, chunk_bytes=256, timeout=20, memory_limit=MEMORY_LIMIT)
    assert time.monotonic() - t0 < 10, "too slow for a file this small"
    if case.bad:
        assert err is not None, f"{case.id}: accepted, but it breaks a rule"
    if err is not None and case.match:
        assert re.search(case.match, err.problem, re.I), err.message
    if case.tensor is not None and case.bad:
        assert repr(case.tensor) in err.message, err.message
    return err


@pytest.mark.parametrize("case", CASES)
def test_corpus(case, tmp_path):
    check_case(case, tmp_path)


def test_corpus_is_large_enough():
    sizes = {fmt: len(cs) for fmt, cs in CORPUS.items()}
    assert all(n >= 20 for fmt, n in sizes.items() if fmt != "misc"), sizes
    ids = [f"{fmt}/{c.id}" for fmt, cs in CORPUS.items() for c in cs]
    assert len(ids) == len(set(ids))


def test_seeds_are_valid(tmp_path):
    for fmt, sets in SEEDS.items():
        for files in sets:
            folder = tmp_path / f"{fmt}-{len(os.listdir(tmp_path))}"
            folder.mkdir()
            assert hostile.exercise(hostile.write_set(folder, files)) is None, fmt


# ---------------------------------------------------------------- truncated everywhere

def cut_points(data, head=320, tail=0, step=17):
    """Every byte of the head (and tail), then every step-th: the structure is in the head."""
    n = len(data)
    return [i for i in range(n) if i < head or i >= n - tail or i % step == 0]


@pytest.mark.parametrize("fmt", ["safetensors", "gguf", "apr", "npy", "npz"])
def test_truncated_at_every_byte_is_bad_input(fmt, tmp_path):
    """Every prefix of a valid file (every byte of its head, its data sampled) is refused."""
    for name, data in SEED[fmt].items():
        tail = 400 if fmt == "npz" else 0   # the zip central directory is at the end
        head = {"safetensors": 400, "gguf": 660, "apr": 500}.get(fmt, 140)
        for at in cut_points(data, head, tail):
            p = hostile.write_set(tmp_path, {name: data[:at]})
            err = hostile.exercise(p, chunk_bytes=256)
            assert err is not None, f"{name} cut at {at} of {len(data)} was accepted"


def test_truncated_shard_or_index(tmp_path):
    for name, data in SEED["index"].items():
        for at in cut_points(data, 120, 0, 23):
            files = dict(SEED["index"])
            files[name] = data[:at]
            for p in os.listdir(tmp_path):
                os.unlink(tmp_path / p)
            err = hostile.exercise(hostile.write_set(tmp_path, files), chunk_bytes=256)
            assert err is not None, f"{name} cut at {at}"


# ---------------------------------------------------------------- sizes beyond the limits

def sparse(path, head, size):
    """A file of `size` bytes (a hole after `head`): big on paper, nothing on disk."""
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)
    return str(path)


def test_header_over_the_limit_is_refused_before_reading(tmp_path):
    n = (100 << 20) + 8
    p = sparse(tmp_path / "big.safetensors", struct.pack("<Q", n) + b"{", n + 64)
    err = hostile.exercise([p], memory_limit=MEMORY_LIMIT)
    assert err is not None and "limit" in err.problem


def test_index_over_the_limit_is_refused_before_reading(tmp_path):
    files = hostile.write_set(tmp_path, {k: v for k, v in SEED["index"].items()
                                         if k.endswith(".safetensors")})
    files.append(sparse(tmp_path / "model.safetensors.index.json", b"{", (100 << 20) + 1))
    err = hostile.exercise(files, memory_limit=MEMORY_LIMIT)
    assert err is not None and "limit" in err.problem


def test_apr_index_over_the_limit_is_refused_before_reading(tmp_path):
    flags, meta, entries, data = apr_parse(SEED["apr"]["m.apr"])
    size = (65 << 20)
    head = apr_file(meta, entries, data, flags,
                    fields={"data_off": size - 128})[:64 + len(meta)]
    p = sparse(tmp_path / "m.apr", head, size)
    err = hostile.exercise([p], memory_limit=MEMORY_LIMIT)
    assert err is not None and "limit" in err.problem


def test_gguf_metadata_string_budget(tmp_path, monkeypatch):
    from q4apr.formats import gguf as reader
    monkeypatch.setattr(reader, "MAX_ITEMS", 1000)
    strings = struct.pack("<IQ", 8, 1001) + gguf_str("") * 1001
    files = gg([gguf_kv("tokenizer.ggml.tokens", 9, strings)])
    err = check_case(Case("budget", files, match="more than 1000 strings"), tmp_path)
    assert "tokenizer.ggml.tokens" in err.message
    monkeypatch.setattr(reader, "MAX_ITEMS", 1001)
    assert hostile.exercise(hostile.write_set(tmp_path, files)) is None


def test_tensor_count_limits(tmp_path, monkeypatch):
    from q4apr.formats import apr as apr_reader
    from q4apr.formats import gguf as gguf_reader
    monkeypatch.setattr(gguf_reader, "MAX_TENSORS", 1)
    monkeypatch.setattr(apr_reader, "MAX_TENSORS", 1)
    for name, files in (("gguf", SEED["gguf"]), ("apr", SEED["apr"])):
        folder = tmp_path / name
        folder.mkdir()
        check_case(Case(name, files, match="tensors are more than the 1 q4apr reads"), folder)


def test_a_read_error_mid_tensor_is_bad_input(tmp_path, monkeypatch):
    """The disk (or a browser File) failing under a read is reported, not a traceback."""
    import errno

    class Failing(io.BytesIO):
        def readinto(self, b):
            raise OSError(errno.EIO, "Input/output error")

    p = hostile.write_set(tmp_path, SEED["npy"])
    with q4apr.open_model(p) as m:
        monkeypatch.setattr(type(m.tensors[0]), "open", lambda self: Failing())
        with pytest.raises(q4apr.BadInput, match="m.npy.*cannot read.*Input/output"):
            q4apr.quantize(m, q4apr.MemorySink(), q4apr.Options(chunk_bytes=256))


def test_reads_are_never_sized_by_unchecked_numbers(tmp_path):
    """The harness itself: a read larger than the file is caught (so the corpus means it)."""
    p = hostile.write_set(tmp_path, {"x.bin": b"abc"})[0]
    with hostile.guarded_reads([p]):
        with open(p, "rb") as f:
            with pytest.raises(hostile.HugeRead):
                f.read(TB)


# ---------------------------------------------------------------- short derandomized fuzz

FUZZ_FORMATS = ["safetensors", "index", "gguf", "apr", "npy", "npz"]
SPLICE = [d for sets in SEEDS.values() for files in sets for d in files.values()]
op = hs.tuples(hs.sampled_from(hostile.KINDS), hs.floats(0, 1, exclude_max=True),
               hs.floats(0, 1, exclude_max=True), hs.integers(0, 0xFFFF))


@pytest.mark.parametrize("fmt", FUZZ_FORMATS)
@settings(max_examples=120, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=hs.data())
def test_fuzz_mutations_end_in_bad_input_or_success(fmt, data):
    fileset = data.draw(hs.sampled_from(SEEDS[fmt]))
    files = dict(fileset)
    target = data.draw(hs.sampled_from(sorted(files)))
    if target.endswith((".json", ".safetensors")) and data.draw(hs.booleans()):
        files[target] = hostile.structured_mutation(
            random.Random(data.draw(hs.integers(0, 1 << 32))), target, files[target])
    ops = data.draw(hs.lists(op, min_size=0, max_size=4))
    other = data.draw(hs.sampled_from(SPLICE))
    fix = target.endswith(".apr") and data.draw(hs.booleans())
    files[target] = hostile.mutate(files[target], ops, other, fix)
    with tempfile.TemporaryDirectory() as folder:
        hostile.exercise(hostile.write_set(folder, files), chunk_bytes=256, timeout=10)


# ---------------------------------------------------------------- the CLI under Ctrl-C

@pytest.mark.skipif(not hasattr(signal, "SIGINT") or os.name != "posix", reason="POSIX signals")
def test_ctrl_c_mid_run_exits_130_and_leaves_nothing(tmp_path):
    hostile.interrupt_cli(tmp_path)
