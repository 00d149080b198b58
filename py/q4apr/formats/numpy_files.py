"""numpy's .npy (one array) and .npz (a zip of .npy members, stored or deflated).

The header is parsed here, with limits, instead of by numpy: np.load would
allocate the whole array at once, and a header is a Python literal from a stranger.
"""

import ast
import os
import re
import struct
import zipfile
import zlib

import numpy as np

from ..dtypes import from_numpy, numel
from ..errors import BadInput
from ..model import Model, TensorEntry, check_names, model_name

MAGIC = b"\x93NUMPY"
MAX_HEADER = 1 << 16
PLAIN_DESCR = re.compile(r"[<>|=]?[a-zA-Z][0-9]{0,2}")   # '<f4', '|b1', 'f8', ...
# what zipfile (and zlib under it) raise on a damaged archive
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, IndexError,
              KeyError, struct.error, zlib.error, NotImplementedError, RuntimeError, OverflowError)
ZIP_ENCRYPTED, ZIP_UNSUPPORTED_FLAGS = 0x1, 0x1 | 0x20 | 0x40


def parse_header(f, path, tensor=None):
    """(dtype, shape, header length) of a .npy stream positioned at its start."""
    pre = f.read(8)
    if len(pre) < 8 or pre[:6] != MAGIC:
        raise BadInput("not a .npy array (bad magic)", path, tensor)
    major = pre[6]
    if major == 1:
        raw = f.read(2)
        n = struct.unpack("<H", raw)[0] if len(raw) == 2 else -1
        start = 10
    elif major in (2, 3):
        raw = f.read(4)
        n = struct.unpack("<I", raw)[0] if len(raw) == 4 else -1
        start = 12
    else:
        raise BadInput(f".npy format version {major} is not supported", path, tensor)
    if n < 0 or n > MAX_HEADER:
        raise BadInput(f".npy header length {n} is out of range", path, tensor)
    text = f.read(n)
    if len(text) != n:
        raise BadInput("file ends inside the .npy header", path, tensor)
    try:
        d = ast.literal_eval(text.decode("utf-8" if major == 3 else "latin1"))
    except (ValueError, SyntaxError, TypeError, UnicodeDecodeError, MemoryError, RecursionError):
        raise BadInput("the .npy header is not a valid dictionary", path, tensor) from None
    if not isinstance(d, dict) or not {"descr", "fortran_order", "shape"} <= set(d):
        raise BadInput("the .npy header lacks descr, fortran_order or shape", path, tensor)
    shape = d["shape"]
    if (not isinstance(shape, tuple) or len(shape) > 32
            or not all(type(x) is int and 0 <= x < 1 << 48 for x in shape)):
        raise BadInput(f"bad shape {shape!r:.80}", path, tensor)
    dtype = _dtype(d["descr"])
    if dtype is None:
        raise BadInput(f"array dtype {d['descr']!r:.40} is not supported (use little-endian float "
                       "or integer)", path, tensor)
    if d["fortran_order"] and len(shape) > 1:
        raise BadInput("Fortran-ordered arrays are not supported (save with "
                       "np.ascontiguousarray)", path, tensor)
    return dtype, shape, start + n


def _dtype(descr):
    """Our DType for a .npy descr, or None. Only plain type strings reach np.dtype: it parses
    others with ast (',f4' raises SyntaxError) and would build structured types."""
    if not isinstance(descr, str) or not PLAIN_DESCR.fullmatch(descr):
        return None
    try:
        return from_numpy(np.dtype(descr))
    except (TypeError, ValueError, SyntaxError):
        return None


def read_npy(path):
    size = os.path.getsize(path)
    name = model_name(path)
    with open(path, "rb") as f:
        dtype, shape, off = parse_header(f, path)
    nbytes = numel(shape) * dtype.type_size
    if off + nbytes != size:
        raise BadInput(f"shape {list(shape)} of {dtype.name} needs {nbytes} bytes of data but the "
                       f"file holds {size - off}", path, name)
    return Model("npy", [path], name, [TensorEntry(name, tuple(shape), dtype, nbytes, path, off)])


def read_npz(path):
    try:
        zf = zipfile.ZipFile(path)
        members = zf.infolist()
    except ZIP_ERRORS as e:
        raise BadInput(f"not a readable .npz (zip) file ({str(e)[:80]})", path) from None
    entries = []
    with zf:
        _check_members_apart(path, members)
        for info in members:
            if info.filename.endswith("/"):
                continue
            entries.append(_member_entry(path, zf, info))
    check_names(entries)
    return Model("npz", [path], model_name(path), entries)


def _check_members_apart(path, members):
    """Members may not share compressed bytes: a zip whose entries all point at one deflated
    member would make a small file decompress into terabytes."""
    size = os.path.getsize(path)
    starts = [m.header_offset for m in members]
    if len(set(starts)) != len(starts) or sum(m.compress_size for m in members) > size:
        raise BadInput("zip members overlap (they share compressed data)", path)


def _member_entry(path, zf, info):
    """The TensorEntry of one .npy member, its header read and checked."""
    name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
    if not name:
        raise BadInput("a zip member has an empty name", path)
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise BadInput(f"zip compression method {info.compress_type} is not supported", path, name)
    if info.flag_bits & ZIP_UNSUPPORTED_FLAGS:
        what = "encrypted" if info.flag_bits & ZIP_ENCRYPTED else "patched or strongly encrypted"
        raise BadInput(f"{what} zip members are not supported", path, name)
    try:
        with zf.open(info) as m:
            dtype, shape, hlen = parse_header(m, path, name)
    except ZIP_ERRORS as e:
        raise BadInput(f"damaged zip member ({str(e)[:80]})", path, name) from None
    nbytes = numel(shape) * dtype.type_size
    if hlen + nbytes != info.file_size:
        raise BadInput(f"shape {list(shape)} of {dtype.name} needs {nbytes} bytes of data "
                       f"but the member holds {info.file_size - hlen}", path, name)
    return TensorEntry(name, tuple(shape), dtype, nbytes, path,
                       opener=_member_opener(path, info, hlen, name))


def _member_opener(path, info, skip, name):
    """A function that opens the member and skips its .npy header (works deflated too)."""
    def open_member():
        zf = None
        try:
            zf = zipfile.ZipFile(path)
            m = zf.open(info)
            m.read(skip)
        except ZIP_ERRORS as e:
            if zf is not None:
                zf.close()
            raise BadInput(f"damaged zip member ({str(e)[:80]})", path, name) from None
        return _Member(zf, m, path, name)
    return open_member


class _Member:
    """A zip member reader that closes its archive too, and turns zip errors into BadInput."""

    def __init__(self, zf, m, path, name):
        self.zf, self.m, self.path, self.name = zf, m, path, name

    def readinto(self, buf):
        try:
            return self.m.readinto(buf)
        except ZIP_ERRORS as e:
            raise BadInput(f"damaged zip member ({str(e)[:80]})", self.path, self.name) from None

    def close(self):
        self.m.close()
        self.zf.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
