"""Model folders become files that run: the GGUF is what llama.cpp's own converter
followed by `llama-quantize --pure … Q4_0` writes (tensor for tensor, key for key), and
llama.cpp generates the same text from both; the APR carries what Aprender's runtime needs.

The folders are real files written by real tools (tests/fixtures/hf.py: tiny random
models of each architecture made by transformers with real tokenizers, SmolLM2-135M and
all-MiniLM-L6-v2); the references are the converter's outputs, cached.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import q4apr

hf = pytest.importorskip("fixtures.hf", reason="tests/fixtures/hf.py (model folders) missing")
gguf = pytest.importorskip("gguf")

REPO = Path(__file__).resolve().parent.parent
TINY = ["tiny-llama", "tiny-mistral", "tiny-qwen2", "tiny-qwen3", "tiny-gemma3", "tiny-phi3",
        "tiny-bert"]
# tokenizer.json-only folders (as transformers saves them without tokenizer.model)
JSON_ONLY = ["tiny-gemma3-json"]
REAL = ["smollm2-135m", "minilm"]
ENCODERS = {"tiny-bert", "minilm"}


def cli(*args):
    r = subprocess.run([sys.executable, "-m", "q4apr", *map(str, args)], capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": str(REPO / "py")}, timeout=600)
    return r.returncode, r.stdout, r.stderr


def quantize_folder(folder, out, *extra):
    code, stdout, stderr = cli("quantize", folder, "-o", out, "-q", *extra)
    assert code == 0, stderr
    return stdout


def gguf_tensors(path):
    r = gguf.GGUFReader(str(path))
    return {t.name: (tuple(int(d) for d in t.shape), int(t.tensor_type), bytes(t.data.tobytes()))
            for t in r.tensors}


def gguf_kv(path):
    """{key: (value types, contents)} of every key/value but the file's own bookkeeping."""
    r = gguf.GGUFReader(str(path))
    out = {}
    for name, field in r.fields.items():
        if name.startswith("GGUF."):
            continue
        value = field.contents()
        if isinstance(value, list) and value and isinstance(value[0], float):
            value = np.asarray(value, np.float32).tobytes()
        elif isinstance(value, float):
            value = np.float32(value).tobytes()
        out[name] = (list(field.types), value)
    return out


@pytest.fixture(scope="module", params=TINY + JSON_ONLY + REAL)
def converted(request, tmp_path_factory):
    name = request.param
    folder = hf.model_dir(name)
    out = tmp_path_factory.mktemp(name) / f"{name}.Q4_0.gguf"
    quantize_folder(folder, out, "--pure")   # the reference is llama-quantize --pure
    return name, folder, out, hf.reference_gguf(name, "q4_0_pure")


def test_gguf_tensors_equal_the_converter_then_llama_quantize(converted):
    name, _, ours, ref = converted
    a, b = gguf_tensors(ours), gguf_tensors(ref)
    assert sorted(a) == sorted(b), name
    for t in b:
        assert a[t][:2] == b[t][:2], (name, t)
        assert a[t][2] == b[t][2], (name, t, "data bytes differ")


def test_gguf_keys_equal_the_converter(converted):
    """The architecture's and the tokenizer's keys are the converter's, type and value;
    only general.* (names, size labels, licences) may differ."""
    name, _, ours, ref = converted
    a, b = gguf_kv(ours), gguf_kv(ref)
    keys = sorted(k for k in set(a) | set(b) if not k.startswith("general."))
    for k in keys:
        assert k in a, (name, k, "missing in ours")
        assert k in b, (name, k, "ours has a key the converter does not write")
        assert a[k] == b[k], (name, k)
    assert a["general.architecture"] == b["general.architecture"]


def test_llama_cpp_runs_ours_as_the_reference(converted):
    """llama.cpp loads our file and gives the same greedy text (for encoders: embedding)."""
    name, _, ours, ref = converted
    if name in ENCODERS:
        assert hf.llama_embed(ours, "The quick brown fox") == hf.llama_embed(ref, "The quick brown fox")
        return
    prompt = "Once upon a time"
    got = hf.llama_generate(ours, prompt, 16)
    assert got == hf.llama_generate(ref, prompt, 16)
    assert got.strip(), "llama.cpp generated nothing"


# ---------------------------------------------------------------- APR

def linked_copy(src, folder, but):
    """folder/ with links to src's files, all but the one named `but`."""
    folder.mkdir()
    for f in src.iterdir():
        if f.is_file() and f.name != but:
            (folder / f.name).symlink_to(f)
    return folder


def read_apr(path):
    m = q4apr.open_model(str(path))
    return m.metadata, {e.name: e for e in m.tensors}


@pytest.mark.parametrize("name", TINY + JSON_ONLY + REAL)
def test_apr_has_what_aprender_needs(name, tmp_path):
    folder = hf.model_dir(name)
    out = tmp_path / f"{name}.apr"
    quantize_folder(folder, out)
    meta, tensors = read_apr(out)
    config = json.loads((Path(folder) / "config.json").read_text())
    for key in ("architecture", "hidden_size", "num_layers", "num_heads", "intermediate_size"):
        assert key in meta, key
    for key in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size",
                "vocab_size", "max_position_embeddings", "head_dim"):
        assert type(meta[key]) is int, key   # Aprender refuses 4.0
    assert meta["hidden_size"] % meta["num_heads"] == 0 or "head_dim" in meta
    assert meta["num_kv_heads"] <= meta["num_heads"]
    assert isinstance(meta["model_type"], str) and meta["model_type"] == config["model_type"]
    vocab = meta["tokenizer.vocabulary"]
    assert isinstance(vocab, list) and all(isinstance(t, str) for t in vocab)
    assert meta["tokenizer.vocab_size"] == len(vocab)
    assert meta["tokenizer.model_type"] in ("bpe", "unigram", "wordpiece")
    if meta["tokenizer.model_type"] == "bpe":
        assert all(isinstance(m, str) and m.count(" ") >= 1 for m in meta["tokenizer.merges"])
    tok = json.loads((Path(folder) / "tokenizer.json").read_text())
    for added in tok.get("added_tokens", []):
        assert vocab[added["id"]] == added["content"]
    if name in ENCODERS:
        return
    assert isinstance(meta["rope_type"], int) and meta["rope_type"] == 2   # HF layout kept
    assert isinstance(meta["rope_theta"], float) and isinstance(meta["rms_norm_eps"], float)
    emb = tensors["model.embed_tokens.weight"]
    assert (meta["vocab_size"], meta["hidden_size"]) == tuple(emb.shape)
    assert "lm_head.weight" in tensors
    if config.get("tie_word_embeddings"):   # as Aprender's exporter: full shape, 0 bytes
        assert meta.get("tied_embeddings") is True
        head = tensors["lm_head.weight"]
        assert head.nbytes == 0 and head.shape == emb.shape and head.tied_to
    else:
        assert tensors["lm_head.weight"].nbytes > 0 and "tied_embeddings" not in meta
    for n, e in tensors.items():
        if "norm" in n:
            assert e.dtype.name == "F32", n


def test_folder_and_listed_files_give_the_same_bytes(tmp_path):
    folder = Path(hf.model_dir("tiny-llama"))
    a, b = tmp_path / "a.apr", tmp_path / "b.apr"
    quantize_folder(folder, a)
    files = sorted(p for p in folder.iterdir() if p.is_file())
    code, _, err = cli("quantize", *files, "-o", b, "-q")
    assert code == 0, err
    assert a.read_bytes() == b.read_bytes()


def test_unrelated_files_are_ignored_and_named(tmp_path):
    src = Path(hf.model_dir("tiny-qwen2"))
    folder = tmp_path / "MyModel"
    folder.mkdir()
    for p in src.iterdir():
        if p.is_file():
            (folder / p.name).symlink_to(p)
    (folder / "README.md").write_text("# hi")
    (folder / "pytorch_model.bin").write_bytes(b"\0" * 10)
    (folder / "onnx").mkdir()
    (folder / "onnx" / "model.onnx").write_bytes(b"x")
    code, stdout, err = cli("quantize", folder)
    assert code == 0, err
    assert (tmp_path / "MyModel.apr").exists()       # named after the folder, beside it
    assert "README.md" in stdout and "onnx/model.onnx" in stdout and "pytorch_model.bin" in stdout
    with q4apr.open_model(str(folder)) as m:
        assert {"README.md", "pytorch_model.bin", "onnx/model.onnx"} <= set(m.description.ignored)


@pytest.mark.parametrize("edit, field", [
    (lambda c: c.update(model_type="frobnicator"), "model_type"),
    (lambda c: c.pop("hidden_size"), "hidden_size"),
    (lambda c: c.update(num_hidden_layers=c["num_hidden_layers"] + 1), "num_hidden_layers"),
    (lambda c: c.update(hidden_size=c["hidden_size"] * 2), "hidden_size"),
    (lambda c: c.update(vocab_size=c["vocab_size"] + 7), "vocab_size"),
    (lambda c: c.update(num_attention_heads="eight"), "num_attention_heads"),
])
def test_contradictory_config_is_refused_naming_the_field(edit, field, tmp_path):
    src = Path(hf.model_dir("tiny-llama"))
    folder = linked_copy(src, tmp_path / "m", but="config.json")
    config = json.loads((src / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))
    before = sorted(os.listdir(tmp_path))
    code, _, err = cli("quantize", folder, "-o", tmp_path / "out.gguf")
    assert code == 2, err
    assert "config.json" in err and field in err, err
    assert sorted(os.listdir(tmp_path)) == before      # no partial output


def test_unidentifiable_tokenizer_is_refused(tmp_path):
    src = Path(hf.model_dir("tiny-llama"))
    folder = tmp_path / "m"
    folder.mkdir()
    for p in src.iterdir():
        if p.is_file() and p.name != "tokenizer.json":
            (folder / p.name).symlink_to(p)
    tok = json.loads((src / "tokenizer.json").read_text())
    tok["pre_tokenizer"] = {"type": "Split", "pattern": {"Regex": "[a-z]+"},
                            "behavior": "Isolated", "invert": False}
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    code, _, err = cli("quantize", folder, "-o", tmp_path / "out.gguf")
    assert code == 2, err
    assert "tokenizer.json" in err, err


def test_lone_weights_file_says_it_is_a_container(tmp_path):
    folder = Path(hf.model_dir("tiny-llama"))
    weights = sorted(folder.glob("*.safetensors"))
    code, stdout, err = cli("quantize", *weights, *folder.glob("*.index.json"),
                            "-o", tmp_path / "x.apr", "--json")
    assert code == 0, err
    report = json.loads(stdout)
    assert report["model"] is None
    assert report["runtimes"] and not report["runtimes"][0]["loads"]
    assert "no architecture" in report["runtimes"][0]["why"]


def test_report_has_snr_and_runtimes(tmp_path):
    folder = hf.model_dir("tiny-qwen3")
    code, stdout, err = cli("quantize", folder, "-o", tmp_path / "x.gguf", "--json", "--pure")
    assert code == 0, err
    report = json.loads(stdout)
    assert report["model"]["architecture"] == "qwen3"
    assert report["runtimes"][0]["runtime"] == "llama.cpp" and report["runtimes"][0]["loads"]
    quantized = [t for t in report["tensors"] if t["action"] == "quantize"]
    assert quantized and all(isinstance(t["snr_db"], float) and 5 < t["snr_db"] < 40
                             for t in quantized)
    assert 5 < report["totals"]["snr_db"] < 40


def test_gemma3_json_only_names_the_converters_pre_tokenizer():
    """Gemma 3 saved without tokenizer.model (issue 20): the converter takes the GPT-2 route
    and names the pre-tokenizer by hash; our file carries the same name and lists."""
    folder = hf.model_dir("tiny-gemma3-json")
    assert not (Path(folder) / "tokenizer.model").exists()
    ref = gguf_kv(hf.reference_gguf("tiny-gemma3-json", "q4_0_pure"))
    assert ref["tokenizer.ggml.pre"][1] == "granite-embed-multi-311m"
    assert ref["tokenizer.ggml.model"][1] == "gpt2"
    assert len(ref["tokenizer.ggml.merges"][1]) > 500000


def test_phi3_json_only_is_refused_as_the_converter_refuses(tmp_path):
    """phi3 without tokenizer.model (and tokenizer_class not GPT2Tokenizer): the converter
    stops ("Missing tokenizer.model"); we stop too, naming the missing file."""
    folder = linked_copy(Path(hf.model_dir("tiny-phi3")), tmp_path / "tiny-phi3-json",
                         but="tokenizer.model")
    r = subprocess.run([hf._python(), str(hf.converter()), str(folder), "--outtype", "f32",
                        "--outfile", str(tmp_path / "ref.gguf")], capture_output=True, text=True,
                       timeout=600, cwd=str(tmp_path))
    assert r.returncode != 0 and "tokenizer.model" in (r.stdout + r.stderr)
    code, _, stderr = cli("quantize", folder, "-o", tmp_path / "ours.gguf", "-q")
    assert code != 0 and "tokenizer.model" in stderr, stderr
    assert not (tmp_path / "ours.gguf").exists()
