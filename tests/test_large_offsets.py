"""Tensors stored beyond 2 GiB into a file (models over 2 GB), natively and under Pyodide.

Pyodide's CPython (wasm32) is built without large-file support: seek() past 2**31 raises
OverflowError.  The file here is sparse: 2 GiB + 64 bytes of a U8 tensor that are never
written, then a small F32 tensor, so it takes a few KiB of disk.
"""

import json
import struct

import numpy as np
import pytest

import q4apr
from conftest import run_in_pyodide

PAD = 2**31 + 64


@pytest.fixture(scope="module")
def big_sparse(tmp_path_factory):
    path = tmp_path_factory.mktemp("sparse") / "big.safetensors"
    w = (np.arange(4 * 64, dtype=np.float32).reshape(4, 64) - 100) / 37
    header = {
        "pad": {"dtype": "U8", "shape": [PAD], "data_offsets": [0, PAD]},
        "w.weight": {"dtype": "F32", "shape": [4, 64], "data_offsets": [PAD, PAD + w.nbytes]},
    }
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        f.seek(8 + len(h) + PAD)
        f.write(w.tobytes())
    return path, w


def test_tensor_past_2gib_reads_natively(big_sparse):
    path, w = big_sparse
    with q4apr.open_model([str(path)]) as m:
        entry = next(e for e in m.tensors if e.name == "w.weight")
        assert entry.offset > 2**31
        with entry.open() as f:
            assert f.read(w.nbytes) == w.tobytes()


def test_tensor_past_2gib_reads_under_pyodide(big_sparse):
    path, w = big_sparse
    script = """
import sys, hashlib, q4apr
with q4apr.open_model([sys.argv[1]]) as m:
    entry = next(e for e in m.tensors if e.name == "w.weight")
    with entry.open() as f:
        data = bytearray(entry.nbytes)
        got = 0
        while got < len(data):
            n = f.readinto(memoryview(data)[got:])
            assert n, "short read"
            got += n
print(hashlib.sha256(bytes(data)).hexdigest())
"""
    import hashlib
    out = run_in_pyodide(script, path)
    assert out.strip() == hashlib.sha256(w.tobytes()).hexdigest()
