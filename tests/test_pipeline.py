"""The streaming pipeline: determinism, idempotency, chunk boundaries, sinks, errors."""

import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as hs

from helpers import llama_like, parse_apr, run, write_bytes

import q4apr


@pytest.fixture
def model_path(tmp_path):
    p = str(tmp_path / "model.npz")
    np.savez(p, **llama_like(np.random.default_rng(7)))
    return p


@pytest.mark.parametrize("fmt", ["apr", "gguf"])
def test_deterministic_and_chunk_size_free(model_path, fmt):
    a, _ = run([model_path], format=fmt)
    b, _ = run([model_path], format=fmt)
    c, _ = run([model_path], format=fmt, chunk_bytes=128)
    d, _ = run([model_path], format=fmt, chunk_bytes=1000)   # not a multiple of a block
    assert a == b == c == d


@pytest.mark.parametrize("fmt", ["apr", "gguf"])
def test_quantizing_the_output_again_gives_the_same_file(model_path, tmp_path, fmt):
    once, _ = run([model_path], format=fmt)
    p = write_bytes(tmp_path / ("once." + fmt), once)
    twice, rep = run([p], format=fmt)
    assert twice == once
    assert {t["action"] for t in rep["tensors"]} <= {"passthrough", "keep"}


def test_callback_sink_head_plus_chunks_is_the_file(model_path):
    whole, _ = run([model_path])
    chunks = []
    with q4apr.open_model(model_path) as m:
        sink = q4apr.CallbackSink(chunks.append)
        steps = list_steps(m, sink, q4apr.Options(chunk_bytes=512))
    assert sink.head + b"".join(chunks) == whole
    assert steps[-1].done == steps[-1].total
    assert all(a.done <= b.done for a, b in zip(steps, steps[1:]))


def list_steps(model, sink, options):
    out, gen = [], q4apr.quantize_steps(model, sink, options)
    try:
        while True:
            out.append(next(gen))
    except StopIteration:
        return out


def test_nonfinite_weight_is_refused_with_tensor_and_index(tmp_path):
    a = np.ones((4, 64), np.float32)
    a[2, 5] = np.nan
    np.savez(tmp_path / "m.npz", good=np.ones((2, 32), np.float32), bad=a)
    out = tmp_path / "m.apr"
    with q4apr.open_model(str(tmp_path / "m.npz")) as m:
        with pytest.raises(q4apr.BadInput) as e:
            q4apr.quantize(m, q4apr.FileSink(str(out)), q4apr.Options(chunk_bytes=128))
    assert "'bad'" in e.value.message and "133" in e.value.message and "m.npz" in e.value.message
    assert os.listdir(tmp_path) == ["m.npz"]   # nothing half-written left behind


def test_scale_overflow_keeps_the_tensor_f32(tmp_path):
    a = np.ones((4, 64), np.float32)
    a[3, 7] = 1e6          # max/7 overflows f16: that block cannot be APR Q4
    np.save(tmp_path / "big.npy", a)
    out, rep = run([str(tmp_path / "big.npy")], chunk_bytes=128)
    t = rep["tensors"][0]
    assert t["dtype_out"] == "F32" and "overflow" in t["reason"]
    assert parse_apr(out)[2]["big"] == (0, (4, 64), a.tobytes())
    assert q4apr.verify_file(write_bytes(tmp_path / "big.apr", out))["ok"]


def test_cancel_leaves_no_file(model_path, tmp_path):
    out = tmp_path / "x.apr"
    calls = []
    with q4apr.open_model(model_path) as m:
        with pytest.raises(q4apr.Cancelled):
            q4apr.quantize(m, q4apr.FileSink(str(out)), q4apr.Options(chunk_bytes=256),
                           cancel=lambda: calls.append(1) or len(calls) > 3)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".x.apr") or f == "x.apr"]


def test_file_sink_never_overwrites_an_input(model_path):
    with pytest.raises(q4apr.BadInput, match="overwrite"):
        q4apr.FileSink(model_path, inputs=[model_path])


def test_report_totals(model_path):
    _, rep = run([model_path])
    tot = rep["totals"]
    assert tot["params"] == sum(int(np.prod(t["shape"])) for t in rep["tensors"])
    assert tot["bytes_in"] == sum(t["bytes_in"] for t in rep["tensors"])
    assert tot["quantized"] == sum(t["action"] == "quantize" for t in rep["tensors"])
    assert rep["output"]["bytes"] > 0 and tot["ratio"] > 4
    for t in rep["tensors"]:
        assert (t["mse"] is not None) == (t["action"] == "quantize")


@settings(max_examples=30, deadline=None)
@given(rows=hs.integers(1, 5), cols=hs.integers(1, 100), chunk=hs.integers(128, 2000),
       seed=hs.integers(0, 2**32 - 1))
def test_any_shape_any_chunk_round_trips(tmp_path_factory, rows, cols, chunk, seed):
    d = tmp_path_factory.mktemp("p")
    a = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)
    np.save(d / "w.npy", a)
    ref, _ = run([str(d / "w.npy")])
    out, rep = run([str(d / "w.npy")], chunk_bytes=chunk)
    assert out == ref
    m = q4apr.open_model(write_bytes(d / "w.apr", out))
    with m.tensors[0].open() as f:
        data = np.frombuffer(f.read(m.tensors[0].nbytes), np.uint8)
    back = q4apr.codecs.dequantize(q4apr.codecs.AprQ4, data, a.size).reshape(a.shape)
    assert np.mean((back - a) ** 2) == pytest.approx(rep["tensors"][0]["mse"], rel=1e-4, abs=1e-12)


def test_f16_overflow_keeps_the_tensor_f32(tmp_path):
    a = np.ones((96, 64), np.float32)
    a[90, 1] = 70000.0     # beyond F16's 65504: keeping the embedding at F16 would make it inf
    np.savez(tmp_path / "m.npz", **{"model.embed_tokens.weight": a})
    out, rep = run([str(tmp_path / "m.npz")], keep_embeddings_f16=True, chunk_bytes=1024)
    t = rep["tensors"][0]
    assert (t["dtype_out"], t["action"]) == ("F32", "convert") and "F16" in t["reason"]
    assert parse_apr(out)[2]["model.embed_tokens.weight"][2] == a.tobytes()
