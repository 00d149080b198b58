"""APR files as Aprender writes them (issue 20): K-quant rows, tied heads, typed metadata.

- A 2-D Q4_K / Q6_K tensor whose rows are not whole 256-value super-blocks is stored row by
  row, each row zero padded to whole super-blocks: its bytes are ggml's reference quantizer
  of the zero-padded rows (tests/llama_cpp/quants_ref.c), and an independent decoder
  (gguf-py's, in tests/apr_forward.py) reads it back row by row; any chunking, threads or
  processes give the same bytes; q4apr reads such files back (inspect, verify, quantize
  again) and refuses a flat K-quant of such rows by name.
- A tied model's LM head is written as Aprender's exporter writes it: its full shape, 0
  data bytes, `tied_embeddings: true`; the report counts each input byte once.
- The metadata is typed as Aprender's parser wants it: each key once, integers as JSON
  integers, hf_architecture / hf_model_type, a `quantization` block that tells the truth.
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from apr_forward import dequantize as apr_dequantize, read_apr
from helpers import run, safetensors_bytes, write_bytes
from test_kquants import ref  # noqa: F401  (the ggml C oracle fixture)

import q4apr
from q4apr import cli, codecs, inspection
from q4apr.dtypes import padded_row, BY_NAME
from q4apr.errors import BadInput
from q4apr.formats import apr as apr_format

REPO = Path(__file__).resolve().parent.parent
ROWS = {"model.layers.0.mlp.up_proj.weight": (40, 576),    # Q4_K in Q4_K_M
        "lm_head.weight": (24, 576),                        # Q6_K (the output head)
        "model.layers.0.mlp.down_proj.weight": (8, 640),    # Gemma 3's width
        "model.layers.0.self_attn.q_proj.weight": (6, 100)}  # not even whole 32-blocks


def matrices(seed=0):
    rng = np.random.default_rng(seed)
    return {n: (rng.standard_normal(s) * 0.05).astype(np.float32) for n, s in ROWS.items()}


def weights_file(tmp_path, tensors=None):
    tensors = tensors or matrices()
    return write_bytes(tmp_path / "w.safetensors", safetensors_bytes(
        {n: ("F32", a.shape, a.tobytes()) for n, a in tensors.items()}))


def apr_tensors(data):
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"q4apr-rows-{os.getpid()}.apr"
    path.write_bytes(data)
    try:
        return read_apr(path)
    finally:
        path.unlink()


def test_row_layout_is_ggml_on_zero_padded_rows(tmp_path, ref):  # noqa: F811
    """Each row zero padded to whole super-blocks, the blocks ggml's reference quantizer's."""
    src = matrices()
    data, report = run([weights_file(tmp_path, src)], format="apr", type="Q4_K_M")
    meta, tensors = apr_tensors(data)
    types = {t["name"]: t for t in report["tensors"]}
    for name, x in src.items():
        code, shape, raw = tensors[name]
        dtype = {12: "Q4_K", 14: "Q6_K"}[code]
        assert types[name]["dtype_out"] == dtype
        assert "Aprender's row layout" in types[name]["reason"]
        rows, cols = shape
        cols_p = -(-cols // 256) * 256
        padded = np.zeros((rows, cols_p), np.float32)
        padded[:, :cols] = x
        assert raw.size == rows * cols_p // 256 * BY_NAME[dtype].type_size
        assert raw.tobytes() == ref.quantize(dtype, padded).tobytes(), name
        # the independent decoder (gguf-py) reads the rows back, padding dropped
        back = apr_dequantize(code, shape, raw)
        want = ref.dequantize(dtype, raw, rows * cols_p).reshape(rows, cols_p)[:, :cols]
        assert np.array_equal(back, want)
        assert np.abs(back - x).max() < 0.1 * np.abs(x).max()
    assert types["lm_head.weight"]["dtype_out"] == "Q6_K"
    assert meta["quantization"]["tensor_types"] == {"Q4_K": 2, "Q6_K": 2}   # ffn_down: more bits


def test_rows_whole_super_blocks_are_unchanged(tmp_path):
    """Rows of whole super-blocks: the flat GGML layout, as before (llama-quantize's bytes)."""
    x = (np.random.default_rng(1).standard_normal((8, 512)) * 0.05).astype(np.float32)
    data, _ = run([weights_file(tmp_path, {"model.layers.0.mlp.up_proj.weight": x})],
                  format="apr", type="Q4_K_M")
    _, tensors = apr_tensors(data)
    assert tensors["model.layers.0.mlp.up_proj.weight"][2].tobytes() == \
        codecs.quantize("Q4_K", x.reshape(-1)).tobytes()


@pytest.mark.parametrize("chunk", [128, 1024, 3000, 1 << 20])
def test_any_chunking_and_threads_give_the_same_bytes(tmp_path, chunk):
    path = weights_file(tmp_path)
    want, _ = run([path], format="apr", type="Q4_K_M")
    got, _ = run([path], format="apr", type="Q4_K_M", chunk_bytes=chunk)
    assert got == want
    got, _ = run([path], format="apr", type="Q4_K_M", chunk_bytes=chunk, threads=2)
    assert got == want


def test_padded_rows_read_back(tmp_path):
    """inspect, verify and quantizing again read the padded rows as rows."""
    src = matrices()
    out = tmp_path / "m.apr"
    out.write_bytes(run([weights_file(tmp_path, src)], format="apr", type="Q4_K_M")[0])
    with q4apr.open_model([str(out)]) as m:
        info = inspection.inspect_model(m)
    sizes = {t["name"]: t["nbytes"] for t in info["tensors"]}
    assert sizes["model.layers.0.self_attn.q_proj.weight"] == 6 * 144
    assert inspection.verify_file([str(out)])["ok"]
    # again to APR: the K-quants are kept as they are (same bytes)
    again, rep = run([str(out)], format="apr", type="Q4_K_M")
    _, a = apr_tensors(again)
    _, b = apr_tensors(out.read_bytes())
    assert all(a[n][2].tobytes() == b[n][2].tobytes() for n in ROWS)
    # to GGUF: decoded row by row (padding dropped), then quantized by llama's rules
    gguf_bytes, rep = run([str(out)], format="gguf", type="Q4_0")
    g = tmp_path / "m.gguf"
    g.write_bytes(gguf_bytes)
    gguf = pytest.importorskip("gguf")
    reader = gguf.GGUFReader(str(g))
    for t in reader.tensors:
        name = {"output.weight": "lm_head.weight"}.get(t.name, t.name)
        code, shape, raw = b[name] if name in b else b[t.name]
        decoded = apr_dequantize(code, shape, raw)
        back = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape)
        scale = np.abs(decoded).max()
        assert np.abs(back - decoded).max() < 0.2 * scale, t.name


def test_a_flat_k_quant_of_such_rows_is_refused_by_name(tmp_path):
    x = np.zeros((4, 64), np.float32)
    blocks = codecs.quantize("Q4_K", x.reshape(-1))      # flat: 1 super-block for 256 values
    layout = apr_format.Layout({"name": "t"}, [("w", (4, 64))])
    off = 0
    head = layout.head([("w", (4, 64), BY_NAME["Q4_K"], off, blocks.size)])
    body = head + blocks.tobytes() + bytes(-blocks.size % 64)
    import struct
    import zlib
    path = tmp_path / "flat.apr"
    path.write_bytes(body + struct.pack("<I", zlib.crc32(body)))
    with pytest.raises(BadInput) as e:
        q4apr.open_model([str(path)])
    assert "stored flat" in str(e.value) and "w" in str(e.value) and "row" in str(e.value)


def test_padded_row_helper():
    q4k, q6k, apr_q4 = BY_NAME["Q4_K"], BY_NAME["Q6_K"], BY_NAME["APR_Q4"]
    assert padded_row(q4k, (10, 576)) == (576, 768)
    assert padded_row(q6k, (10, 1)) == (1, 256)
    assert padded_row(q4k, (10, 512)) is None          # whole super-blocks: flat
    assert padded_row(q4k, (576,)) is None             # 1-D: flat
    assert padded_row(q4k, (2, 3, 576)) is None        # 3-D: Aprender pads 2-D only
    assert padded_row(apr_q4, (10, 576)) is None       # APR Q4 flattens


# ---------------------------------------------------------------- a model folder

@pytest.fixture(scope="module")
def tiny_llama():
    hf = pytest.importorskip("fixtures.hf")
    return hf.model_dir("tiny-llama")


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_K_M"])
def test_a_tied_head_is_written_as_aprenders_exporter_writes_it(tiny_llama, tmp_path, qtype):
    data, report = run([str(tiny_llama)], format="apr", type=qtype)
    meta, tensors = apr_tensors(data)
    code, shape, raw = tensors["lm_head.weight"]
    assert raw.size == 0 and shape == tensors["model.embed_tokens.weight"][1]
    assert meta["tied_embeddings"] is True
    head = {t["name"]: t for t in report["tensors"]}["lm_head.weight"]
    assert head["bytes_in"] == head["bytes_out"] == 0 and "tied" in head["reason"]
    # each input byte counted once: the tensors' input bytes are the folder's weights
    st = sum(os.path.getsize(p) for p in Path(tiny_llama).glob("*.safetensors"))
    assert report["totals"]["bytes_in"] <= st
    # q4apr reads it back as tied, and a GGUF made from it has no output.weight (llama.cpp ties)
    out = tmp_path / "m.apr"
    out.write_bytes(data)
    with q4apr.open_model([str(out)]) as m:
        e = {t.name: t for t in m.tensors}["lm_head.weight"]
        assert e.tied_to == "model.embed_tokens.weight" and e.nbytes == 0
    assert inspection.verify_file([str(out)])["ok"]
    g, _ = run([str(out)], format="gguf")
    assert b"lm_head.weight" not in g[:1 << 16] and b"output.weight" not in g[:1 << 16]
    again, _ = run([str(out)], format="apr", type=qtype)
    assert apr_tensors(again)[1]["lm_head.weight"][2].size == 0


# Aprender's typed metadata (shared/docs/runnable-models.md): key -> accepted JSON types
TYPED = {"architecture": str, "model_type": str, "hidden_size": int, "num_layers": int,
         "num_heads": int, "num_kv_heads": int, "intermediate_size": int, "vocab_size": int,
         "max_position_embeddings": int, "head_dim": int, "rope_theta": float,
         "rms_norm_eps": float, "rope_type": int, "param_count": int,
         "hf_architecture": str, "hf_model_type": str, "tied_embeddings": bool,
         "license": type(None), "data_source": type(None), "data_license": type(None),
         "chat_template": str}
SPELLINGS = [("num_layers", "num_hidden_layers"), ("rms_norm_eps", "layer_norm_eps"),
             ("num_heads", "num_attention_heads"), ("num_kv_heads", "num_key_value_heads")]


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_K_M"])
def test_metadata_is_typed_as_aprender_parses_it(tiny_llama, qtype):
    data, report = run([str(tiny_llama)], format="apr", type=qtype)
    meta, tensors = apr_tensors(data)
    for key, t in TYPED.items():
        if key in meta:
            v = meta[key]
            assert type(v) is t or (t is float and type(v) is int), (key, v)
    for a, b in SPELLINGS:
        assert not (a in meta and b in meta), (a, b)
    config = json.loads((Path(tiny_llama) / "config.json").read_text())
    assert meta["hf_architecture"] == config["architectures"][0]
    assert meta["hf_model_type"] == config["model_type"]
    q = meta["quantization"]
    assert set(q) >= {"quant_type", "bits", "block_size", "symmetric", "bits_per_weight",
                      "tensor_types"}
    assert isinstance(q["bits"], int) and 0 < q["bits"] < 256
    held = [(c, r.size) for n, (c, s, r) in tensors.items() if r.size]
    names = {0: "F32", 1: "F16", 12: "Q4_K", 14: "Q6_K", 128: "APR_Q4"}
    counts = {}
    for c, _ in held:
        counts[names[c]] = counts.get(names[c], 0) + 1
    assert q["tensor_types"] == counts
    n = sum(int(np.prod(s)) for nm, (c, s, r) in tensors.items() if r.size)
    assert q["bits_per_weight"] == pytest.approx(8 * sum(s for _, s in held) / n, abs=1e-3)
    if qtype == "Q4_K_M":
        assert (q["quant_type"], q["block_size"], q["symmetric"]) == ("Q4_K_M", 256, False)
        # rows padded, except where padding would take more room than F16 (rows of 64)
        for t in report["tensors"]:
            if t["dtype_out"] == "F16":
                assert "more than F16's 16" in t["reason"], t
    else:
        assert (q["quant_type"], q["block_size"], q["symmetric"]) == ("APR_Q4", 32, True)
    rt = report["runtimes"][0]
    assert rt["runtime"] == "Aprender" and rt["loads"]
    assert ("run in its fused kernels, straight" in rt["why"]) == (qtype == "Q4_K_M")
    assert ("dequantized to F32" in rt["why"]) == (qtype == "Q4_0")


def test_the_metadata_is_refit_when_a_tensor_falls_back_to_f32(tmp_path):
    """A Q4 scale that overflows f16 sends its tensor to F32 after the head was sized: the
    quantization block counts what was written."""
    x = np.full((4, 64), 1e6, np.float32)           # max/7 > 65504: APR Q4's scale overflows
    y = np.ones((4, 64), np.float32)
    data, report = run([weights_file(tmp_path, {"a.weight": x, "b.weight": y})], format="apr")
    meta, _ = apr_tensors(data)
    got = {t["name"]: t["dtype_out"] for t in report["tensors"]}
    assert got == {"a.weight": "F32", "b.weight": "APR_Q4"}
    assert meta["quantization"]["tensor_types"] == {"APR_Q4": 1, "F32": 1}


def test_lone_weights_keep_what_aprender_cannot_decode_and_say_so(tmp_path):
    ids = np.arange(8, dtype=np.int64)
    path = write_bytes(tmp_path / "w.safetensors", safetensors_bytes(
        {"embeddings.position_ids": ("I64", (8,), ids.tobytes()),
         "w.weight": ("F32", (4, 32), np.ones((4, 32), np.float32).tobytes())}))
    _, report = run([path], format="apr")
    t = {t["name"]: t for t in report["tensors"]}
    assert t["embeddings.position_ids"]["dtype_out"] == "I64"
    assert "apr validate" in t["embeddings.position_ids"]["warning"]
    assert "I64" in report["runtimes"][0]["why"]


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-gemma3"])
def test_no_runtime_path_says_valid_container(name):
    hf = pytest.importorskip("fixtures.hf")
    data, report = run([str(hf.model_dir(name))], format="apr")
    rt = report["runtimes"][0]
    assert not rt["loads"] and rt["verdict"] == "valid container"
    _, tensors = apr_tensors(data)
    assert all(c not in (3, 4, 5, 6, 7) for c, _, _ in tensors.values())   # apr validate


# ---------------------------------------------------------------- every tensor of real folders

# bytes of n values of each APR code, as shared/docs/apr-v2.md and Aprender's writer define them
def aprender_size(code, shape):
    n = int(np.prod(shape)) if shape else 1
    if code in (12, 14):
        size = {12: 144, 14: 210}[code]
        if len(shape) == 2:                      # row by row, each row padded
            return shape[0] * -(-shape[1] // 256) * size
        return -(-n // 256) * size
    return {0: 4 * n, 1: 2 * n, 30: 2 * n, 128: 18 * -(-n // 32)}[code]


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_K_M"])
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-mistral", "tiny-qwen2", "tiny-qwen3",
                                  "tiny-gemma3", "tiny-phi3", "tiny-bert", "smollm2-135m"])
def test_every_tensor_has_aprenders_size_and_decodes_near_the_original(name, qtype, tmp_path):
    """Each tensor of the folder's APR, parsed and decoded by tests/apr_forward.py (not
    q4apr's reader): its size is Aprender's for its code and shape, and its values are the
    original's within what its type loses (transforms: none, APR keeps HF's layout)."""
    hf = pytest.importorskip("fixtures.hf")
    folder = Path(hf.model_dir(name))
    out = tmp_path / "m.apr"
    assert cli.main(["quantize", str(folder), "-o", str(out), "-q", "--force",
                     "--type", qtype]) == 0
    meta, tensors = read_apr(out)
    original = {}
    for f in sorted(folder.glob("*.safetensors")):
        original.update({k: v for k, v in _load_f32(f).items()})
    # a lossy type's worst relative error (max |err| / max |x| over the tensor)
    worst = {128: 0.10, 12: 0.12, 14: 0.03, 1: 1e-3, 30: 1e-2, 0: 0.0}
    for tname, (code, shape, raw) in tensors.items():
        if raw.size == 0:
            assert tname == "lm_head.weight" and meta["tied_embeddings"] is True
            assert shape == tensors["model.embed_tokens.weight"][1]
            continue
        assert raw.size == aprender_size(code, shape), (tname, code, shape)
        x = original[tname].reshape(shape)
        y = apr_dequantize(code, shape, raw)
        scale = float(np.abs(x).max()) or 1.0
        assert float(np.abs(y - x).max()) <= worst[code] * scale + 1e-6, (tname, code)
    want = set(original) - DROPPED.get(name, set())
    if meta.get("tied_embeddings"):
        want.add("lm_head.weight")
    assert set(tensors) == want


DROPPED = {"tiny-bert": {"embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"}}


def _load_f32(path):
    """A safetensors file's tensors as float32 (BF16 widened), integer buffers as they are."""
    from safetensors import safe_open
    out = {}
    with safe_open(str(path), framework="pt") as st:
        for k in st.keys():
            t = st.get_tensor(k)
            out[k] = t.float().numpy() if t.is_floating_point() else t.numpy()
    return out
