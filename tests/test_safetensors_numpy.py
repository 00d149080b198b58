"""safetensors (single and sharded) and numpy inputs, written by the real packages."""

import json

import numpy as np
import pytest

from helpers import bf16_bytes, llama_like, parse_apr, run, safetensors_bytes, write_bytes

import q4apr
from q4apr import codecs

st = pytest.importorskip("safetensors.numpy")


def apr_q4(x):
    return codecs.quantize(codecs.AprQ4, np.ascontiguousarray(x, np.float32).ravel()).tobytes()


def test_safetensors_f32_f16_from_the_package(tmp_path):
    rng = np.random.default_rng(0)
    t = llama_like(rng)
    t["model.layers.0.mlp.up_proj.weight"] = t["model.layers.0.mlp.up_proj.weight"].astype(np.float16)
    p = str(tmp_path / "model.safetensors")
    st.save_file(t, p, metadata={"format": "pt"})
    out, rep = run([p])
    _, meta, tensors = parse_apr(out)
    assert meta["source_metadata"] == {"format": "pt"}
    out_types = {r["name"]: r["dtype_out"] for r in rep["tensors"]}
    for name, arr in t.items():
        dt, shape, raw = tensors[name]
        assert shape == arr.shape
        if arr.ndim == 1:
            assert (dt, raw) == (0, arr.astype(np.float32).tobytes())
        elif "lm_head" in name:
            # llama-quantize's Q4_0 mixture: the head at Q6_K, or (rows not 256-blocks) Q8_0,
            # which APR stores as F16
            assert out_types[name] in ("Q6_K", "F16"), (name, out_types[name])
        else:
            assert (dt, raw) == (128, apr_q4(arr.astype(np.float32)))
    assert rep["output"]["name"] == "model.apr"


def test_bf16_is_decoded_exactly(tmp_path):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((16, 64)).astype(np.float32)
    raw = bf16_bytes(a)
    as_f32 = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
    p = write_bytes(tmp_path / "b.safetensors",
                    safetensors_bytes({"w.weight": ("BF16", a.shape, raw),
                                       "n.weight": ("BF16", (64,), raw[:128])}))
    out, _ = run([p], chunk_bytes=256)
    _, _, tensors = parse_apr(out)
    assert tensors["w.weight"][2] == apr_q4(as_f32)
    assert tensors["n.weight"][2] == as_f32[:64].tobytes()


def test_sharded_model_is_one_model(tmp_path):
    t = llama_like(np.random.default_rng(3))
    names = sorted(t)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half],
              "model-00002-of-00002.safetensors": names[half:]}
    paths = []
    for fname, keys in shards.items():
        paths.append(str(tmp_path / fname))
        st.save_file({k: t[k] for k in keys}, paths[-1])
    index = {"metadata": {"total_size": 1}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}
    paths.append(write_bytes(tmp_path / "model.safetensors.index.json", json.dumps(index).encode()))
    single = str(tmp_path / "single.safetensors")
    st.save_file(t, single)
    sharded_out, rep = run(paths)
    single_out, _ = run([single])
    assert parse_apr(sharded_out)[2] == parse_apr(single_out)[2]
    assert rep["output"]["name"] == "model.apr"
    # a missing shard is named
    with pytest.raises(q4apr.BadInput, match="model-00002-of-00002.safetensors"):
        q4apr.open_model([paths[0], paths[2]])


def test_npy_and_npz_written_by_numpy(tmp_path):
    rng = np.random.default_rng(4)
    a = rng.standard_normal((32, 40)).astype(np.float32)
    b = rng.standard_normal((64,)).astype(np.float64)
    np.save(tmp_path / "emb.npy", a)
    out, rep = run([str(tmp_path / "emb.npy")])
    assert parse_apr(out)[2]["emb"] == (128, (32, 40), apr_q4(a))
    for save in (np.savez, np.savez_compressed):
        p = str(tmp_path / f"{save.__name__}.npz")
        save(p, w=a, b=b, i=np.arange(5, dtype=np.int32))
        out, rep = run([p], chunk_bytes=128)
        t = parse_apr(out)[2]
        assert t["w"] == (128, (32, 40), apr_q4(a))
        assert t["b"] == (0, (64,), b.astype(np.float32).tobytes())
        assert t["i"] == (4, (5,), np.arange(5, dtype=np.int32).tobytes())


def test_fortran_and_big_endian_npy_are_refused_clearly(tmp_path):
    np.save(tmp_path / "f.npy", np.asfortranarray(np.ones((4, 32), np.float32)))
    np.save(tmp_path / "be.npy", np.ones((4, 32), ">f4"))
    with pytest.raises(q4apr.BadInput, match="Fortran"):
        q4apr.open_model(str(tmp_path / "f.npy"))
    with pytest.raises(q4apr.BadInput, match="be.npy.*dtype"):
        q4apr.open_model(str(tmp_path / "be.npy"))
