"""APR v2: our writer against the files Aprender's own writer made (shared/vectors/apr)."""

import os
import zlib

import numpy as np
import pytest

from helpers import parse_apr, run, write_bytes

import q4apr
from q4apr.dtypes import APR_Q4, F32
from q4apr.formats import apr

VECTORS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..",
                       "shared", "vectors", "apr")
CASES = sorted(f[:-4] for f in os.listdir(VECTORS) if f.endswith(".npy")) if os.path.isdir(VECTORS) else []
needs_vectors = pytest.mark.skipif(not CASES, reason="shared/vectors/apr is not beside the repo")
VECTOR_META = {"model_type": "test", "license": None, "data_source": None, "data_license": None,
               "total_size": 0, "param_count": 0}


def write_apr(metadata, tensors, flags=None):
    """Our layout, with data placed as the pipeline places it: [(name, dtype, shape, bytes)]."""
    layout = apr.Layout(metadata, [(n, s) for n, _, s, _ in tensors], flags=flags)
    data, records = bytearray(), []
    for name, dtype, shape, raw in sorted(tensors, key=lambda t: t[0].encode()):
        data += bytes(apr.align64(len(data)) - len(data))
        records.append((name, shape, dtype, len(data), len(raw)))
        data += raw
    data += bytes(apr.align64(len(data)) - len(data))
    head = layout.head(records)
    return head + bytes(data) + layout.footer(head, zlib.crc32(data), len(data))


def vector(name):
    with open(os.path.join(VECTORS, name + ".apr"), "rb") as f:
        return f.read(), np.load(os.path.join(VECTORS, name + ".npy"))


@needs_vectors
def test_tiny_q4_file_is_reproduced_byte_for_byte():
    with open(os.path.join(VECTORS, "tiny_q4.apr"), "rb") as f:
        expected = f.read()
    meta = {"model_type": "test", "name": "tiny", "license": None, "data_source": None,
            "data_license": None, "total_size": 0, "param_count": 0}
    bias = np.array([0.5, -1, 2, 0.25], np.float32)
    weight = ((np.arange(32) % 15) - 7).astype(np.float32) * 0.5
    q = q4apr.codecs.quantize(q4apr.codecs.AprQ4, weight).tobytes()
    ours = write_apr(meta, [("layer0.weight", APR_Q4, (32,), q), ("layer0.bias", F32, (4,), bias.tobytes())])
    assert ours == expected


@needs_vectors
@pytest.mark.parametrize("case", CASES)
def test_vector_files_are_reproduced_byte_for_byte(case):
    expected, w = vector(case)
    q = q4apr.codecs.quantize(q4apr.codecs.AprQ4, w.astype(np.float32)).tobytes()
    assert write_apr(VECTOR_META, [("w", APR_Q4, w.shape, q)], flags=0x0400) == expected


@needs_vectors
@pytest.mark.parametrize("case", CASES)
def test_pipeline_tensor_bytes_match_vectors(case, tmp_path):
    """The CLI path: .npy in, APR out (pure, since the vectors are 1-D)."""
    expected, w = vector(case)
    out, report = run([os.path.join(VECTORS, case + ".npy")], pure=True, chunk_bytes=128)
    _, _, theirs = parse_apr(expected)
    _, meta, ours = parse_apr(out)
    assert ours[case][2] == theirs["w"][2]
    assert ours[case][:2] == (128, w.shape)
    assert meta["param_count"] == w.size and meta["quantization"]["bits"] == 4


@needs_vectors
@pytest.mark.parametrize("case", CASES + ["tiny_q4"])
def test_reader_opens_aprender_files(case):
    m = q4apr.open_model(os.path.join(VECTORS, case + ".apr"))
    assert m.format == "apr"
    assert {t.dtype.name for t in m.tensors} <= {"APR_Q4", "F32"}


def test_written_file_reads_back_and_checksums_hold(tmp_path):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((70, 33)).astype(np.float32)
    p = str(tmp_path / "m.npz")
    np.savez(p, **{"b.weight": a, "a.bias": a[0].copy()})
    out, _ = run([p])
    path = write_bytes(tmp_path / "m.apr", out)
    m = q4apr.open_model(path)
    assert [t.name for t in m.tensors] == ["a.bias", "b.weight"]       # sorted by bytes
    assert [t.dtype.name for t in m.tensors] == ["F32", "APR_Q4"]
    head, meta, tensors = parse_apr(out)
    assert head["flags"] == 0x0420
    assert all(off % 64 == 0 for off in [head["data_offset"]])
    assert zlib.crc32(out[:-4]) == int.from_bytes(out[-4:], "little")
    assert meta["original_format"] == "npz" and meta["param_count"] == a.size + 33
    assert "created_at" not in meta
    assert len(out) % 64 == 4


@pytest.mark.parametrize("where,what", [(100, "footer checksum"), (5, "header checksum"),
                                        (20, "header checksum"), (0, "magic")])
def test_damage_is_reported(tmp_path, where, what):
    p = str(tmp_path / "m.npy")
    np.save(p, np.ones((4, 32), np.float32))
    out = bytearray(run([p])[0])
    out[where] ^= 0xFF
    path = write_bytes(tmp_path / "bad.apr", bytes(out))
    with pytest.raises(q4apr.BadInput) as e:
        q4apr.open_model(path)
    assert "bad.apr" in e.value.message and what.split()[0] in e.value.message
    assert q4apr.verify_file(path)["ok"] is False
