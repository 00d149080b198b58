"""An APR is a runnable model: the reference forward pass (tests/apr_forward.py), reading only
the .apr, predicts the next token of an English text as transformers does from the original
Hugging Face folder.

(a) tensors as stored (F32/BF16, `--skip '*'`): the semantics (metadata, names, rope_type,
    tied head) are right, so the logits agree to ~1e-4 relative, top-1 agreement is 100 %
    and the perplexities are equal;
(b) APR Q4 (`--pure`): top-1 agreement and perplexity within measured bounds.

The APR files are what `q4apr quantize FOLDER -o X.apr` writes (make_apr); the rope_type
test builds its deliberately wrong files with q4apr's low-level writer.
"""

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from apr_forward import AprModel, next_token_stats, read_apr  # noqa: E402
from q4apr import codecs  # noqa: E402
from q4apr.dtypes import APR_Q4, F32  # noqa: E402
from q4apr.formats.apr import Layout  # noqa: E402

TEXT = (
    "The history of the bicycle begins in the early nineteenth century, when inventors in "
    "Germany and France built wooden machines that riders pushed along with their feet. "
    "These early designs were heavy and uncomfortable, but they showed that a person could "
    "balance on two wheels while moving forward. Over the following decades, engineers added "
    "pedals, chains and rubber tires, and the bicycle became a practical way to travel. By the "
    "end of the century, cycling clubs had spread across Europe and America, and women in "
    "particular found in the bicycle a new kind of freedom. Today millions of people ride to "
    "work, to school and for pleasure, and cities build lanes to keep them safe."
)

# ---------------------------------------------------------------------------------------------
# The APR files under test: the one place that says how they are made.


def make_apr(folder, out, dtype):
    """FOLDER as q4apr writes it: `q4apr quantize FOLDER -o OUT`, every weight matrix in
    APR Q4 ("APR_Q4": --pure) or as stored ("F32": --skip '*', F32/BF16 decode exactly)."""
    from q4apr import cli
    extra = ["--pure"] if dtype == "APR_Q4" else ["--skip", "*"]
    assert cli.main(["quantize", str(folder), "-o", str(out), "-q", "--force", *extra]) == 0
    return out


def apr_metadata(config):
    """The runtime's keys from a config.json (both rope_theta styles); rope_type 2: the
    weights keep Hugging Face's layout, which rotates split halves."""
    rp = config.get("rope_parameters") or {}
    heads = config["num_attention_heads"]
    return {
        "architecture": config["model_type"],
        "hidden_size": config["hidden_size"],
        "num_layers": config["num_hidden_layers"],
        "num_heads": heads,
        "num_kv_heads": config.get("num_key_value_heads") or heads,
        "intermediate_size": config["intermediate_size"],
        "vocab_size": config["vocab_size"],
        "max_position_embeddings": config["max_position_embeddings"],
        "head_dim": config.get("head_dim") or config["hidden_size"] // heads,
        "rope_theta": float(config.get("rope_theta", rp.get("rope_theta"))),
        "rms_norm_eps": float(config["rms_norm_eps"]),
        "rope_type": 2,
    }


def runnable_tensors(folder):
    """The folder's tensors by Hugging Face name, with lm_head.weight written out for a tied
    model (the runtime has no tied fallback)."""
    tensors = _hf_tensors(folder)
    if "lm_head.weight" not in tensors:
        tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]
    return tensors


def _hf_tensors(folder):
    from safetensors import safe_open
    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for k in st.keys():
                out[k] = st.get_tensor(k).float().numpy()
    return out


def _encode(name, a, dtype):
    """(DType, shape, bytes): weight matrices in `dtype` (q4apr's default policy: 2-D
    `*.weight`, embedding and head included), norms, biases and other 1-D tensors F32."""
    a = np.ascontiguousarray(a, np.float32)
    if dtype == "APR_Q4" and a.ndim == 2 and name.endswith(".weight"):
        return APR_Q4, a.shape, codecs.quantize("APR_Q4", a.reshape(-1)).tobytes()
    return F32, a.shape, a.tobytes()


def write_apr(out, meta, items):
    """APR v2 with q4apr's Layout: header+metadata+index, 64-aligned data, CRC footer."""
    layout = Layout(meta, [(n, s) for n, (_, s, _) in items.items()])
    records, data, off = [], bytearray(), 0
    for name in layout.order:
        dt, shape, raw = items[name]
        off = layout.tensor_start(len(data))
        data += bytes(off - len(data)) + raw
        records.append((name, shape, dt, off, len(raw)))
        data += bytes(layout.tensor_end(len(data)) - len(data))
    head = layout.head(records)
    body = head + bytes(data)
    Path(out).write_bytes(body + struct.pack("<I", zlib.crc32(body)))


# ---------------------------------------------------------------------------------------------
# Model folders: tests/fixtures/hf.py (tiny random models with real tokenizers, SmolLM2-135M).


@pytest.fixture(scope="session")
def model_folder():
    from fixtures import hf
    return hf.model_dir


# ---------------------------------------------------------------------------------------------


def hf_model(folder):
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return model.eval()


def hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].double().numpy()


def load_q4_roundtrip(model, folder):
    """Give the transformers model the weights an APR Q4 file decodes to (q4apr's codec with
    Aprender's reading of tiny scales), so that its forward pass is the Q4 file's semantics."""
    sd = {}
    for n, a in _hf_tensors(folder).items():
        if a.ndim == 2 and n.endswith(".weight"):
            q = codecs.quantize("APR_Q4", a.reshape(-1))
            a = codecs.dequantize("APR_Q4", q, a.size, aprender=True).reshape(a.shape)
        sd[n] = torch.from_numpy(np.ascontiguousarray(a))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    if "lm_head.weight" in missing:                     # tied: the head is the embedding
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def token_ids(folder):
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    return tok(TEXT)["input_ids"]


def rel_diff(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


# Bounds for APR Q4 against the original model's own predictions, measured on TEXT.
# SmolLM2-135M (real): top-1 0.643, perplexity 17.79 -> 26.12 (x1.47). That is what 4 bits
# cost a 135M model when the embedding and head are 4-bit too, not a decoding error: the same
# forward pass with GGML Q4_0 weights (what `llama-quantize --pure` writes) gives 0.682 and
# x1.43, with Q8_0 0.961 and x1.003, and APR Q4 with the embedding and head left F32 x1.18.
# Random tiny models (fixtures: default init): logits of random weights are near-ties across
# 32k-152k tokens, so top-1 flips easily (measured 0.71-0.98; chance is ~1e-5) while the
# perplexity, about the vocabulary size, barely moves (measured x0.998-x1.002).
Q4_BOUNDS = {
    # name: (minimum top-1 agreement, maximum perplexity ratio Q4 / original)
    "smollm2-135m": (0.60, 1.55),
    "tiny": (0.50, 1.05),
}

CASES = ["tiny-llama", "tiny-mistral", "tiny-qwen2", "tiny-qwen3", "smollm2-135m"]


@pytest.mark.parametrize("name", CASES)
def test_apr_forward_matches_transformers(name, model_folder, tmp_path, record_property):
    """(a) F32 APR == transformers; (b) Q4 APR == transformers on the Q4-decoded weights
    (the decoding is Aprender's), and its quality against the original within bounds."""
    folder = model_folder(name)
    ids = token_ids(folder)
    assert 100 <= len(ids) <= 200, len(ids)
    model = hf_model(folder)
    ref = hf_logits(model, ids)
    ref_top, ref_ppl = next_token_stats(ref, ids)

    f32 = AprModel(make_apr(folder, tmp_path / "f32.apr", "F32")).forward(ids)
    f32_top, f32_ppl = next_token_stats(f32, ids)

    q4 = AprModel(make_apr(folder, tmp_path / "q4.apr", "APR_Q4")).forward(ids)
    q4_top, q4_ppl = next_token_stats(q4, ids)
    load_q4_roundtrip(model, folder)
    q4_ref = hf_logits(model, ids)
    q4_ref_top, _ = next_token_stats(q4_ref, ids)

    report = {
        "tokens": len(ids),
        "f32_max_rel_logit_diff": rel_diff(f32, ref),
        "f32_top1_agreement": float(np.mean(f32_top == ref_top)),
        "q4_top1_agreement": float(np.mean(q4_top == ref_top)),
        "ppl_transformers": ref_ppl, "ppl_apr_f32": f32_ppl, "ppl_apr_q4": q4_ppl,
        "q4_ppl_ratio": q4_ppl / ref_ppl,
        "q4_vs_transformers_q4_weights_rel_diff": rel_diff(q4, q4_ref),
    }
    print(f"\n{name}: " + ", ".join(f"{k}={v:.6g}" for k, v in report.items()))
    for k, v in report.items():
        record_property(k, v)

    assert report["f32_max_rel_logit_diff"] < 1e-4, report
    assert report["f32_top1_agreement"] == 1.0, report
    assert abs(f32_ppl / ref_ppl - 1) < 1e-3, report
    assert report["q4_vs_transformers_q4_weights_rel_diff"] < 1e-4, report
    assert np.array_equal(q4_top, q4_ref_top), report
    agree_min, ppl_max = Q4_BOUNDS.get(name, Q4_BOUNDS["tiny"])
    assert report["q4_top1_agreement"] >= agree_min, report
    assert report["q4_ppl_ratio"] < ppl_max, report


def _permute_qk(w, n_head):
    """llama.cpp's converter's Q/K row permutation (LlamaModel.permute): split halves ->
    adjacent pairs, so that rope_type 0 applies."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def test_rope_type_is_read_literally(model_folder, tmp_path):
    """rope_type decides the rotation: HF layout with 0 is wrong; llama.cpp's permuted Q/K
    rows with 0 are right again (so a writer may choose either, but must say which)."""
    folder = model_folder("tiny-llama")
    ids = token_ids(folder)
    ref = hf_logits(hf_model(folder), ids)
    config = json.loads((Path(folder) / "config.json").read_text())
    meta = apr_metadata(config)
    tensors = runnable_tensors(folder)

    wrong = dict(meta, rope_type=0)
    write_apr(tmp_path / "wrong.apr", wrong, {n: _encode(n, a, "F32") for n, a in tensors.items()})
    bad = AprModel(tmp_path / "wrong.apr").forward(ids)
    # Random weights at their default init make attention nearly uniform, so the wrong
    # rotation moves the logits by only ~7e-3 (relative) here -- but the right ones are at ~3e-7.
    assert rel_diff(bad, ref) > 1e-3

    perm = {}
    for n, a in tensors.items():
        if n.endswith("self_attn.q_proj.weight"):
            a = _permute_qk(a, meta["num_heads"])
        elif n.endswith("self_attn.k_proj.weight"):
            a = _permute_qk(a, meta["num_kv_heads"])
        perm[n] = _encode(n, a, "F32")
    write_apr(tmp_path / "perm.apr", wrong, perm)
    good = AprModel(tmp_path / "perm.apr").forward(ids)
    assert rel_diff(good, ref) < 1e-4
    without = {k: v for k, v in meta.items() if k != "rope_type"}
    write_apr(tmp_path / "none.apr", without, perm)
    with pytest.raises(ValueError, match="rope_type"):
        AprModel(tmp_path / "none.apr")


# ---------------------------------------------------------------------------------------------
# Q4_K_M: the APR (Aprender's row layout, 0-byte tied head) against the GGUF of the same type.

# Hugging Face name of each GGUF tensor (llama.cpp's converter's renaming, for these families)
_GGUF_TO_HF = {"token_embd.weight": "model.embed_tokens.weight", "output.weight": "lm_head.weight",
               "output_norm.weight": "model.norm.weight"}
_BLK = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
        "attn_k_norm": "self_attn.k_norm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
        "ffn_norm": "post_attention_layernorm"}


def _unpermute_qk(w, n_head):
    """The inverse of _permute_qk (llama.cpp's adjacent pairs -> Hugging Face's split halves)."""
    return (w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def load_gguf_weights(model, gguf_path, config):
    """Give the transformers model the weights a GGUF decodes to (gguf-py's decoders, an
    independent reading), Q/K rows un-permuted for the llama family: its forward pass is the
    GGUF's semantics."""
    import gguf
    permuted = config["model_type"] in ("llama", "mistral")
    heads = config["num_attention_heads"]
    kv = config.get("num_key_value_heads") or heads
    sd = {}
    for t in gguf.GGUFReader(str(gguf_path)).tensors:
        shape = tuple(int(d) for d in reversed(t.shape))
        a = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape)
        name = _GGUF_TO_HF.get(t.name)
        if name is None:
            _, i, part, kind = t.name.split(".")
            name = f"model.layers.{i}.{_BLK[part]}.{kind}"
            if permuted and part == "attn_q":
                a = _unpermute_qk(a, heads)
            elif permuted and part == "attn_k":
                a = _unpermute_qk(a, kv)
        sd[name] = torch.from_numpy(np.ascontiguousarray(a))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)


def test_apr_q4_k_m_matches_its_gguf(name, model_folder, tmp_path, record_property):
    """The APR of --type Q4_K_M (K-quant rows padded where llama.cpp falls back to Q5_0 /
    Q8_0; the tied head 0 bytes), read by the reference forward pass, against the GGUF of
    the same type (what llama-quantize writes: tests/test_mixtures.py): top-1 agreement with
    the original model and perplexity within 2 % of the GGUF's on the same tokens."""
    from q4apr import cli
    folder = model_folder(name)
    ids = token_ids(folder)
    model = hf_model(folder)
    ref_top, ref_ppl = next_token_stats(hf_logits(model, ids), ids)
    apr, gg = tmp_path / "m.apr", tmp_path / "m.gguf"
    for out in (apr, gg):
        assert cli.main(["quantize", str(folder), "-o", str(out), "-q", "--force",
                         "--type", "Q4_K_M"]) == 0
    tied = read_apr(apr)[1]["lm_head.weight"]
    assert (tied[2].size == 0) == bool(json.loads((Path(folder) / "config.json").read_text())
                                       .get("tie_word_embeddings"))
    m = AprModel(apr)
    a_top, a_ppl = next_token_stats(m.forward(ids), ids)
    load_gguf_weights(model, gg, json.loads((Path(folder) / "config.json").read_text()))
    g_top, g_ppl = next_token_stats(hf_logits(model, ids), ids)
    report = {"tokens": len(ids), "ppl_original": ref_ppl, "ppl_apr_q4_k_m": a_ppl,
              "ppl_gguf_q4_k_m": g_ppl, "apr_over_gguf_ppl": a_ppl / g_ppl,
              "apr_top1": float(np.mean(a_top == ref_top)),
              "gguf_top1": float(np.mean(g_top == ref_top)),
              "apr_bytes": apr.stat().st_size, "gguf_bytes": gg.stat().st_size}
    print(f"\n{name}: " + ", ".join(f"{k}={v:.6g}" for k, v in report.items()))
    for k, v in report.items():
        record_property(k, v)
    # within 2 % of the GGUF's, or better (SmolLM2: Q4_K / Q6_K in padded rows where llama.cpp
    # has Q5_0 / Q8_0 measure 0.95x here; bench/quality.py on 2,040 scored tokens)
    assert a_ppl / g_ppl < 1.02, report
    assert report["apr_top1"] >= report["gguf_top1"] - 0.02, report


test_apr_q4_k_m_matches_its_gguf = pytest.mark.parametrize("name", CASES)(
    test_apr_q4_k_m_matches_its_gguf)
