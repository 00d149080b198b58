"""A model opened for reading: its tensors as byte ranges, read chunk by chunk.

Every reader turns a file into TensorEntry records that say where each tensor's
bytes are; nothing is loaded until the pipeline reads it, in chunks, into a
buffer it reuses. That is what lets a 3 GB model pass through a 256 MiB heap.
"""

import json
import math
import os
import re
from dataclasses import dataclass, field

import numpy as np

from .dtypes import DType
from .errors import BadInput

# Under Pyodide (wasm32) CPython is built without large-file support: seek() converts
# its offset through a 32-bit C long, so seeking past 2 GiB raises OverflowError, and a
# buffered reader fails there too (it checks the position seek() returns).  An unbuffered
# file stepped forward by relative seeks below 2**31 does work (its position lives in the
# JS file system); only the position seek()/tell() report is wrong, and it is not used.
_SEEK_MAX = 2**31 - 1
_SEEK_STEP = 1 << 30


def open_at(path, offset):
    """A binary reader of `path` positioned at `offset`, for read() and readinto()."""
    if offset <= _SEEK_MAX:
        f = open(path, "rb")
        f.seek(offset)
        return f
    f = open(path, "rb", buffering=0)
    try:
        left = offset
        while left:
            step = min(left, _SEEK_STEP)
            f.seek(step, os.SEEK_CUR)
            left -= step
    except BaseException:
        f.close()
        raise
    return f


# JSON nesting a reader accepts: what parses near Python's recursion limit would not print
MAX_JSON_DEPTH = 64


@dataclass
class TensorEntry:
    name: str
    shape: tuple
    dtype: DType
    nbytes: int
    path: str
    offset: int = 0
    opener: object = None   # callable() -> readable positioned at the tensor (e.g. a zip member)
    row_order: object = None  # source row of each output row (np.ndarray), or None: as stored
    add: float = None         # a constant added to every value (Gemma's norms), or None
    source: str = None        # the name in the input file, when the output renames it
    keep_f32: str = None      # why it must stay F32 whatever the options (a runtime needs it)
    tied_to: str = None       # 0 data bytes: an LM head tied to this embedding (Aprender's way)

    def open(self):
        """A binary reader positioned at the first byte of this tensor (its rows reordered
        when row_order says so)."""
        if self.row_order is not None:
            return RowReader(self.path, self.offset, self.nbytes // max(1, self.shape[0]),
                             self.row_order)
        if self.opener is not None:
            return self.opener()
        return open_at(self.path, self.offset)

    @property
    def transformed(self):
        """Its bytes differ from the stored ones by more than the row order."""
        return self.add is not None


class RowReader:
    """A tensor's bytes with its rows in another order, read straight from the file.

    Rows are read where they lie (relative seeks only: under Pyodide an absolute seek
    past 2 GiB fails), a block of consecutive source rows at a time (at most BLOCK
    bytes), and served from it while the order stays inside it: llama's Q/K order
    alternates between the two halves of each head, and under Pyodide every read that
    misses the worker's read-ahead is a synchronous read of the browser's file."""

    BLOCK = 1 << 20

    def __init__(self, path, offset, row_bytes, order):
        self._f = open_at(path, offset)
        self._base, self._row_bytes, self._order = offset, row_bytes, order
        self._pos = offset       # where the file is now
        self._out = 0            # bytes handed out so far
        self._rows = int(order.max()) + 1 if len(order) else 0   # source rows read from
        self._block = max(1, self.BLOCK // row_bytes) if row_bytes else 1
        self._buf, self._first, self._count = None, 0, 0   # rows [first, first+count)

    def _load(self, src):
        n = min(self._block, self._rows - src)
        want = self._base + src * self._row_bytes
        if want != self._pos:
            self._f.seek(want - self._pos, os.SEEK_CUR)
            self._pos = want
        size = n * self._row_bytes
        if self._buf is None or len(self._buf) < size:
            self._buf = bytearray(size)
        view, got = memoryview(self._buf)[:size], 0
        while got < size:
            k = self._f.readinto(view[got:])
            if not k:
                break
            got += k
        self._pos += got
        self._first, self._count = src, got // self._row_bytes

    def readinto(self, view):
        total = len(self._order) * self._row_bytes
        if self._out >= total or not len(view):
            return 0
        row, within = divmod(self._out, self._row_bytes)
        src = int(self._order[row])
        if not self._first <= src < self._first + self._count:
            self._load(src)
            if not self._first <= src < self._first + self._count:
                return 0         # the file ended: the caller reports the short read
        at = (src - self._first) * self._row_bytes + within
        n = min(len(view), self._row_bytes - within)
        memoryview(view)[:n] = memoryview(self._buf)[at: at + n]
        self._out += n
        return n

    def close(self):
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@dataclass
class Model:
    format: str
    paths: list
    name: str
    tensors: list
    metadata: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)   # format-specific (GGUF key/values, APR flags)
    description: object = None   # a model folder's Description (architecture, tokenizer)

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_small(path, limit, what):
    """The bytes of a config or tokenizer file, its size checked before it is read."""
    try:
        size = os.path.getsize(path)
        if size > limit:
            raise BadInput(f"{what} of {size} bytes is over the {limit} byte limit", path)
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise BadInput(f"cannot read ({e.strerror or e})", path) from None


def read_exact(f, n, path, what):
    """n bytes from f, or a BadInput that says the file ended inside `what`."""
    data = f.read(n)
    if len(data) != n:
        raise BadInput(f"file ends inside {what} (wanted {n} bytes, got {len(data)})", path)
    return data


def check_names(entries):
    """Tensor names are valid UTF-8 (no lone surrogates) and unique across all files."""
    seen = {}
    for e in entries:
        try:
            e.name.encode("utf-8")
        except UnicodeEncodeError:
            raise BadInput("the tensor name is not valid UTF-8", e.path, e.name) from None
        if e.name in seen:
            other = seen[e.name]
            where = "" if other == e.path else f" (also in {os.path.basename(other)})"
            raise BadInput(f"duplicate tensor name{where}", e.path, e.name)
        seen[e.name] = e.path


def check_overlaps(path, entries):
    """No two tensors of one file share a byte."""
    ordered = sorted(entries, key=lambda e: (e.offset, e.nbytes))
    for a, b in zip(ordered, ordered[1:]):
        if b.offset < a.offset + a.nbytes:
            raise BadInput(f"data overlaps tensor {a.name!r}", path, b.name)


def load_json(raw, path, what, top_names_tensors=False):
    """A JSON object from a stranger's bytes: UTF-8, finite numbers, no key twice, no lone
    surrogates. A duplicate top-level key is named as a tensor if top_names_tensors."""
    dups = []

    def pairs(items):
        d = dict(items)
        dups.append(_first_duplicate(items) if len(d) != len(items) else None)
        return d

    if _bracket_depth(raw) > MAX_JSON_DEPTH:   # before parsing: deep JSON kills wasm's stack
        raise BadInput(f"{what} nests JSON deeper than {MAX_JSON_DEPTH} levels", path)
    try:
        ascii_text = _ascii_escaped(raw) if len(raw) >= LEAN_JSON_BYTES else None
        text = raw.decode("utf-8") if ascii_text is None else None
        del raw     # the caller's temporary: freed before the parse allocates the tree
        if text is None:
            text = str(ascii_text, "ascii")
            del ascii_text
        value = json.loads(text, object_pairs_hook=pairs,
                           parse_constant=_no_constant, parse_float=_finite_float)
    except (UnicodeDecodeError, ValueError, RecursionError, MemoryError) as e:
        raise BadInput(f"{what} is not valid JSON ({str(e)[:80]})", path) from None
    del text
    if not isinstance(value, dict):
        raise BadInput(f"{what} is not a JSON object", path)
    if top_names_tensors:
        _check_top_names(value, dups, path, what)
    bad = next((k for k in reversed(dups) if k is not None), None)
    if bad is not None:
        raise BadInput(f"{what} has the key {bad!r} twice", path)
    bad = _bad_string(value)
    if bad is not None:
        raise BadInput(f"{what} holds a string that is not valid Unicode: {bad!r:.60}", path)
    return value


# JSON text from this size on is parsed from an ASCII copy (see _ascii_escaped)
LEAN_JSON_BYTES = 1 << 20
_HEX = np.frombuffer(b"0123456789abcdef", np.uint8)


def _char_cuts(data, chunk):
    """Offsets that cut data into pieces of about `chunk` bytes, each cut at a byte that
    is no UTF-8 continuation byte (so no character is split)."""
    cuts, n = [0], len(data)
    at = chunk
    while at < n:
        while at < n and (data[at] & 0xC0) == 0x80:
            at += 1
        if at < n:
            cuts.append(at)
        at += chunk
    cuts.append(n)
    return cuts


def _ascii_escaped(raw, chunk=1 << 18):
    """raw's JSON text with every character beyond ASCII written as a \\uXXXX escape
    (a surrogate pair beyond U+FFFF), as a uint8 array; None when it cannot be (a
    non-ASCII character right after a backslash: the escape would change what the
    backslash means). Text that is not UTF-8 raises raw.decode's own error.

    Why: json.loads needs one str, and a str is as wide as its widest character: one
    emoji makes Gemma's 32 MB tokenizer.json a 114 MiB str (UTF-8 decoding passes
    through a 64 MiB buffer even without it); its ASCII copy is 35 MiB. Inside a JSON
    string an escape is the same character; outside one both are refused (the error's
    column then counts the escapes)."""
    data = np.frombuffer(raw, np.uint8)
    cuts = _char_cuts(data, chunk)
    total = 0
    for a, b in zip(cuts, cuts[1:]):
        try:
            raw[a:b].decode("utf-8")
        except UnicodeDecodeError:
            raw.decode("utf-8")      # raises with the position in the whole text
            raise
        piece = data[a:b]
        high = piece >= 0x80
        leads = np.count_nonzero(high & (piece >= 0xC0))
        total += (b - a - np.count_nonzero(high)) + 6 * leads + 6 * np.count_nonzero(piece >= 0xF0)
    out = np.empty(total, np.uint8)
    at = 0
    for a, b in zip(cuts, cuts[1:]):
        piece = data[a:b]
        high = piece >= 0x80
        li = np.flatnonzero(high & (piece >= 0xC0))
        if not len(li):
            out[at: at + len(piece)] = piece
            at += len(piece)
            continue
        before = li + (a - 1)
        if np.any(data[before[before >= 0]] == 0x5C):
            return None
        lead = piece[li].astype(np.int32)
        n = len(piece) - 1
        c1 = piece[np.minimum(li + 1, n)].astype(np.int32) & 0x3F
        c2 = piece[np.minimum(li + 2, n)].astype(np.int32) & 0x3F
        c3 = piece[np.minimum(li + 3, n)].astype(np.int32) & 0x3F
        cp = np.where(lead >= 0xF0, ((lead & 0x07) << 18) | (c1 << 12) | (c2 << 6) | c3,
                      np.where(lead >= 0xE0, ((lead & 0x0F) << 12) | (c1 << 6) | c2,
                               ((lead & 0x1F) << 6) | c1))
        del c1, c2, c3, lead
        size = (~high).astype(np.int32)
        astral = cp >= 0x10000
        size[li] = np.where(astral, 12, 6)
        start = np.cumsum(size, dtype=np.int64)
        start -= size
        start += at
        low = np.flatnonzero(~high)
        out[start[low]] = piece[low]
        at = int(start[-1] + size[-1])
        pos = start[li]
        del start, size, low
        cp[astral] -= 0x10000
        units = np.where(astral, 0xD800 + (cp >> 10), cp)
        _put_escapes(out, pos, units)
        _put_escapes(out, pos[astral] + 6, 0xDC00 + (cp[astral] & 0x3FF))
    return out


def _put_escapes(out, pos, units):
    """\\uXXXX for each 16-bit unit, its backslash at out[pos]."""
    out[pos] = 0x5C
    out[pos + 1] = 0x75
    for k, shift in enumerate((12, 8, 4, 0)):
        out[pos + 2 + k] = _HEX[(units >> shift) & 15]


def _check_top_names(value, dups, path, what):
    """The keys of the top-level object are tensor names: name them when they are wrong."""
    if dups and dups[-1] is not None:
        raise BadInput(f"duplicate tensor name in {what}", path, dups[-1])
    for k in value:
        if _bad_string(k) is not None:
            raise BadInput("the tensor name is not valid UTF-8", path, k)


def _first_duplicate(items):
    seen = set()
    for k, _ in items:
        if k in seen:
            return k
        seen.add(k)
    return None


def _no_constant(name):
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text):
    v = float(text)
    if not math.isfinite(v):
        raise ValueError(f"number {text[:20]} is out of range")
    return v


def _bad_string(value):
    """The first string (key or value) in a JSON value that cannot be encoded as UTF-8."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return v
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return None


def _bracket_depth(raw, chunk=1 << 18):
    """The deepest nesting of [ and { in JSON text, strings skipped, counted in numpy.

    Parsing first is no option: under Pyodide, json.loads of a few thousand nested
    brackets overflows the JavaScript stack and kills the whole runtime.
    A string runs from a quote to the next quote not escaped (after an even run of
    backslashes), as json's scanner reads it; the text is walked in chunks, so the
    temporaries are a few MiB whatever its size (stripping the strings with a regex
    held ~10 bytes per byte of Gemma's 32 MB tokenizer.json)."""
    data = np.frombuffer(raw, np.uint8)
    deepest = level = 0
    quotes = 0          # unescaped quotes before the chunk (odd: inside a string)
    run = 0             # backslashes ending the previous chunk
    for at in range(0, len(data), chunk):
        b = data[at: at + chunk]
        n = len(b)
        idx = np.arange(n, dtype=np.int32)
        bs = b == 0x5C
        # the last byte before i that is not a backslash (-1 - run: the carried run)
        last = np.maximum.accumulate(np.where(bs, np.int32(-1 - run), idx))
        before = np.empty(n, np.int32)
        before[0] = -1 - run
        before[1:] = last[:-1]
        q = (b == 0x22) & (((idx - 1 - before) & 1) == 0)
        outside = ((np.cumsum(q, dtype=np.int64) + quotes) & 1) == 0
        step = (((b == 0x5B) | (b == 0x7B)).astype(np.int32) - ((b == 0x5D) | (b == 0x7D))) * outside
        depth = np.cumsum(step, dtype=np.int64) + level
        deepest = max(deepest, int(depth.max()))
        level = int(depth[-1])
        quotes += int(np.count_nonzero(q))
        run = n - 1 - int(last[-1]) if bs[-1] else 0
    return deepest


def model_name(path):
    """'model' from '/x/model-00001-of-00002.safetensors'."""
    base = os.path.basename(path)
    for ext in (".safetensors", ".gguf", ".apr", ".npy", ".npz", ".index.json", ".json"):
        if base.lower().endswith(ext):
            base = base[: -len(ext)]
            break
    base = re.sub(r"-\d{5}-of-\d{5}$", "", base)
    # a file name that is not UTF-8 still gives a name that is
    base = base.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return base or "model"
