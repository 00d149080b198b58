"""Hostile model folders: a corrupt or contradictory config.json, tokenizer.json,
tokenizer_config.json or modules.json ends in a BadInput that names the file and the
field, never in a crash, a changed input or a partial output (tests/hostile.py's harness,
as for the weight formats in test_malformed.py).

The seed is a real folder written by transformers (tests/fixtures/hf.py: tiny-llama with
SmolLM2's tokenizer; tiny-bert with all-MiniLM's), broken in one way per case.
"""
import json
import os
import re
import shutil

import pytest

import hostile

hf = pytest.importorskip("fixtures.hf", reason="tests/fixtures/hf.py (model folders) missing")

MEMORY_LIMIT = 512 << 20   # tokenizer.json of a 49k vocabulary parses into ~100 MB of objects


def _json_edit(fn):
    """A case body: load the file's JSON, let fn change it, write it back."""
    def apply(raw):
        value = json.loads(raw)
        out = fn(value)
        return json.dumps(value if out is None else out).encode()
    return apply


def _set(path, value):
    def fn(d):
        *head, last = path
        for k in head:
            d = d[k]
        d[last] = value
    return _json_edit(fn)


def _drop(path):
    def fn(d):
        *head, last = path
        for k in head:
            d = d[k]
        del d[last]
    return _json_edit(fn)


def _raw(data):
    return lambda raw: data


# (id, seed, file, edit, field the message must name, or None)
CASES = [
    # config.json
    ("config-not-json", "tiny-llama", "config.json", _raw(b"{'model_type': 'llama'"), None),
    ("config-empty", "tiny-llama", "config.json", _raw(b""), None),
    ("config-list", "tiny-llama", "config.json", _raw(b"[1, 2]"), None),
    ("config-deep", "tiny-llama", "config.json", _raw(b"[" * 5000 + b"]" * 5000), None),
    ("config-dup-key", "tiny-llama", "config.json",
     lambda raw: raw.replace(b"{", b'{"model_type": "llama", ', 1), "model_type"),
    ("config-no-model-type", "tiny-llama", "config.json", _drop(["model_type"]), "model_type"),
    ("config-unknown-type", "tiny-llama", "config.json", _set(["model_type"], "frob"),
     "model_type"),
    ("config-type-number", "tiny-llama", "config.json", _set(["model_type"], 7), "model_type"),
    ("config-hidden-string", "tiny-llama", "config.json", _set(["hidden_size"], "64"),
     "hidden_size"),
    ("config-hidden-float", "tiny-llama", "config.json", _set(["hidden_size"], 64.5),
     "hidden_size"),
    ("config-hidden-huge", "tiny-llama", "config.json", _set(["hidden_size"], 10 ** 30),
     "hidden_size"),
    ("config-hidden-negative", "tiny-llama", "config.json", _set(["hidden_size"], -64),
     "hidden_size"),
    ("config-hidden-zero", "tiny-llama", "config.json", _set(["hidden_size"], 0), "hidden_size"),
    ("config-layers-more", "tiny-llama", "config.json", _set(["num_hidden_layers"], 3),
     "num_hidden_layers"),
    ("config-layers-fewer", "tiny-llama", "config.json", _set(["num_hidden_layers"], 1),
     None),
    ("config-heads-odd", "tiny-llama", "config.json", _set(["num_attention_heads"], 3),
     "num_attention_heads"),
    ("config-kv-heads", "tiny-llama", "config.json", _set(["num_key_value_heads"], 3),
     "num_key_value_heads"),
    ("config-vocab", "tiny-llama", "config.json", _set(["vocab_size"], 1000), "vocab_size"),
    ("config-inter", "tiny-llama", "config.json", _set(["intermediate_size"], 100),
     "intermediate_size"),
    ("config-eps-string", "tiny-llama", "config.json", _set(["rms_norm_eps"], "tiny"),
     "rms_norm_eps"),
    ("config-tied-string", "tiny-llama", "config.json", _set(["tie_word_embeddings"], "yes"),
     "tie_word_embeddings"),
    ("config-untied-no-head", "tiny-llama", "config.json", _set(["tie_word_embeddings"], False),
     None),
    ("config-architectures", "tiny-llama", "config.json", _set(["architectures"], "Llama"),
     "architectures"),
    ("config-bert-as-llama", "tiny-bert", "config.json", _set(["model_type"], "llama"), None),
    # values that go into APR's typed metadata: a wrong type is refused by name, never written
    # as a file whose metadata Aprender's parser would drop whole (integers stay integers)
    ("config-maxpos-float", "tiny-llama", "config.json",
     _set(["max_position_embeddings"], 512.0), "max_position_embeddings"),
    ("config-maxpos-string", "tiny-llama", "config.json",
     _set(["max_position_embeddings"], "512"), "max_position_embeddings"),
    ("config-kv-heads-float", "tiny-llama", "config.json", _set(["num_key_value_heads"], 2.0),
     "num_key_value_heads"),
    ("config-head-dim-float", "tiny-llama", "config.json", _set(["head_dim"], 16.0), "head_dim"),
    ("config-theta-string", "tiny-llama", "config.json",
     _set(["rope_parameters", "rope_theta"], "100000"), "rope_theta"),
    ("config-theta-null", "tiny-llama", "config.json",
     _set(["rope_parameters", "rope_theta"], None), "rope_theta"),
    ("config-eps-bool", "tiny-llama", "config.json", _set(["rms_norm_eps"], True),
     "rms_norm_eps"),
    ("config-architectures-number", "tiny-llama", "config.json", _set(["architectures"], [5]),
     "architectures"),
    ("config-bert-eps-string", "tiny-bert", "config.json", _set(["layer_norm_eps"], "1e-12"),
     "layer_norm_eps"),
    # tokenizer.json
    ("tok-not-json", "tiny-llama", "tokenizer.json", _raw(b'{"model": {"type": "BPE", '), None),
    ("tok-empty", "tiny-llama", "tokenizer.json", _raw(b""), None),
    ("tok-list", "tiny-llama", "tokenizer.json", _raw(b"[]"), None),
    ("tok-no-model", "tiny-llama", "tokenizer.json", _drop(["model"]), "model"),
    ("tok-model-type", "tiny-llama", "tokenizer.json", _set(["model", "type"], "Frob"), "type"),
    ("tok-vocab-list", "tiny-llama", "tokenizer.json", _set(["model", "vocab"], [1, 2]),
     "vocab"),
    ("tok-vocab-id-string", "tiny-llama", "tokenizer.json",
     _json_edit(lambda d: d["model"]["vocab"].update({"hello": "7"})), "vocab"),
    ("tok-vocab-id-huge", "tiny-llama", "tokenizer.json",
     _json_edit(lambda d: d["model"]["vocab"].update({"zzzzq": 10 ** 12})), None),
    ("tok-vocab-id-negative", "tiny-llama", "tokenizer.json",
     _json_edit(lambda d: d["model"]["vocab"].update({"zzzzq": -1})), None),
    ("tok-vocab-empty", "tiny-llama", "tokenizer.json", _set(["model", "vocab"], {}), None),
    ("tok-merges-numbers", "tiny-llama", "tokenizer.json", _set(["model", "merges"], [1, 2]),
     "merges"),
    ("tok-merges-triple", "tiny-llama", "tokenizer.json",
     _set(["model", "merges"], [["a", "b", "c"]]), "merges"),
    ("tok-added-bad-id", "tiny-llama", "tokenizer.json",
     _set(["added_tokens"], [{"id": "x", "content": "<s>", "special": True}]), "added_tokens"),
    ("tok-added-not-list", "tiny-llama", "tokenizer.json", _set(["added_tokens"], {"a": 1}),
     "added_tokens"),
    ("tok-pre-unknown", "tiny-llama", "tokenizer.json",
     _set(["pre_tokenizer"], {"type": "Split", "pattern": {"Regex": "[a-z]+"},
                              "behavior": "Isolated", "invert": False}), "pre_tokenizer"),
    ("tok-pre-number", "tiny-llama", "tokenizer.json", _set(["pre_tokenizer"], 5), None),
    ("tok-normalizer-odd", "tiny-llama", "tokenizer.json",
     _set(["normalizer"], {"type": "Frob"}), None),
    ("tok-deep", "tiny-llama", "tokenizer.json", _raw(b'{"a":' + b"[" * 3000 + b"]" * 3000 + b"}"),
     None),
    ("wordpiece-vocab-list", "tiny-bert", "tokenizer.json", _set(["model", "vocab"], ["a"]),
     "vocab"),
    # tokenizer_config.json
    ("tc-not-json", "tiny-llama", "tokenizer_config.json", _raw(b"{bos}"), None),
    ("tc-bos-number", "tiny-llama", "tokenizer_config.json", _set(["bos_token"], 5), None),
    ("tc-template-number", "tiny-llama", "tokenizer_config.json", _set(["chat_template"], 5),
     None),
    ("tc-add-bos-string", "tiny-llama", "tokenizer_config.json", _set(["add_bos_token"], "yes"),
     None),
    ("tc-list", "tiny-llama", "tokenizer_config.json", _raw(b"[]"), None),
    ("tc-eos-unknown", "tiny-llama", "tokenizer_config.json",
     _set(["eos_token"], "<|no such token|>"), None),
]


def _seed_files(seed):
    folder = hf.model_dir(seed)
    return {p: os.path.join(folder, p) for p in sorted(os.listdir(folder))
            if os.path.isfile(os.path.join(folder, p))}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_folder_corpus(case, tmp_path):
    cid, seed, name, edit, field = case
    folder = tmp_path / "m"
    folder.mkdir()
    files = _seed_files(seed)
    if name not in files:
        pytest.skip(f"{seed} has no {name}")
    for base, path in files.items():
        if base == name:
            with open(path, "rb") as f:
                (folder / base).write_bytes(edit(f.read()))
        else:
            shutil.copyfile(path, folder / base)
    paths = [str(folder / b) for b in files]
    before = sorted(os.listdir(tmp_path))
    err = hostile.exercise(paths, chunk_bytes=1 << 16, timeout=60, memory_limit=MEMORY_LIMIT)
    assert sorted(os.listdir(tmp_path)) == before
    if field is not None or cid in BAD_WITHOUT_FIELD:
        assert err is not None, f"{cid}: accepted"
    if err is not None:
        assert name in err.message or "config.json" in err.message, err.message
        if field is not None:
            assert re.search(re.escape(field), err.message), err.message


# cases that must be refused though no single field is named
BAD_WITHOUT_FIELD = {"config-not-json", "config-empty", "config-list", "config-deep",
                     "config-layers-fewer", "config-untied-no-head", "config-bert-as-llama",
                     "tok-not-json", "tok-empty", "tok-list", "tok-deep", "tc-not-json",
                     "tc-list", "tok-vocab-empty"}


def test_missing_files_are_named(tmp_path):
    files = _seed_files("tiny-llama")
    for missing, says in (("tokenizer.json", "tokenizer.json"), ("config.json", None)):
        folder = tmp_path / missing
        folder.mkdir()
        for base, path in files.items():
            if base != missing:
                shutil.copyfile(path, folder / base)
        paths = [str(folder / b) for b in files if b != missing]
        err = hostile.exercise(paths, chunk_bytes=1 << 16, timeout=60)
        if says:
            assert err is not None and says in err.message, err
