"""A Hugging Face tokenizer read as JSON: what llama.cpp's converter and Aprender need.

The files (tokenizer.json, tokenizer_config.json, config.json's ids, chat_template.jinja)
are read as plain JSON, never run through `tokenizers` or transformers. Each vocabulary
routine of llama.cpp's convert_hf_to_gguf.py (conversion/base.py: _set_vocab_gpt2,
get_vocab_base, _set_vocab_llama_hf, BertModel.set_vocab; gguf-py's SpecialVocab) is
re-read here, key for key and in the converter's order, so our tokenizer.* keys are its.

The one thing the converter learns by running the tokenizer is tokenizer.ggml.pre: that
is q4apr.pretokenizer's. tokenizer.model (SentencePiece) is read by q4apr.sentencepiece.
"""

import gc

from .errors import BadInput
from .model import load_json, read_small
from . import sentencepiece
from .ggufvalues import ARRAY, BOOL, FLOAT32, INT32, STRING, UINT32  # noqa: F401
from .pretokenizer import _pre_name
from .sentencepiece import BYTE, CONTROL, NORMAL, UNKNOWN, UNUSED, USER_DEFINED  # noqa: F401

MAX_JSON_BYTES = 16 << 20
MAX_TOKENIZER_JSON_BYTES = 256 << 20      # Gemma 3's is ~33 MB

# SpecialVocab's default special token types, in its order
SPECIAL_TYPES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")
# the special types GGUFWriter has an add_<typ>_token_id for (cls has none: skipped)
_ID_KEYS = {"bos": "tokenizer.ggml.bos_token_id", "eos": "tokenizer.ggml.eos_token_id",
            "unk": "tokenizer.ggml.unknown_token_id", "sep": "tokenizer.ggml.seperator_token_id",
            "pad": "tokenizer.ggml.padding_token_id", "mask": "tokenizer.ggml.mask_token_id",
            "eot": "tokenizer.ggml.eot_token_id", "eom": "tokenizer.ggml.eom_token_id",
            "prefix": "tokenizer.ggml.prefix_token_id", "suffix": "tokenizer.ggml.suffix_token_id",
            "middle": "tokenizer.ggml.middle_token_id"}
_ADD_KEYS = {"bos": "tokenizer.ggml.add_bos_token", "eos": "tokenizer.ggml.add_eos_token",
             "sep": "tokenizer.ggml.add_sep_token"}

# The vocabulary routine of each family (archs' fam.VOCAB), as its converter class picks it
# for a folder: with tokenizer.model (SentencePiece) or with tokenizer.json alone.
ROUTINES = ("llama", "qwen2", "qwen3", "gemma3", "phi3", "bert", "gpt2", "llama_hf",
            "sentencepiece")


class Tokenizer:
    """What one folder's tokenizer becomes: the converter's GGUF lists plus the raw ones."""

    def __init__(self):
        self.kind = None            # tokenizer.json model.type: "BPE" | "WordPiece" | "Unigram"
        self.routine = None         # the converter routine that made the GGUF lists
        self.model = None           # tokenizer.ggml.model
        self.pre = None             # tokenizer.ggml.pre
        self.tokens = []            # tokenizer.ggml.tokens (str)
        self.toktypes = []          # tokenizer.ggml.token_type
        self.scores = None          # tokenizer.ggml.scores (llama/SentencePiece routines)
        self.merges = []            # tokenizer.ggml.merges ("a b")
        self.head_kv = []           # keys the family writes before tokenizer.ggml.model
        self.special_ids = {}       # typ -> id, in SpecialVocab's order
        self.add_special = {}       # typ -> bool, in SpecialVocab's order
        self.chat_template = None   # str, or [{"name", "template"}]
        self.normalizer_lowercase = None
        self.normalizer_strip_accents = None
        self.tail_kv = []           # family quirks after SpecialVocab (may overwrite a key)
        # for Aprender: the tokenizer.json lists as they are
        self.vocabulary = []
        self.apr_merges = []
        self.apr_scores = None

    def summary(self):
        return {"kind": self.kind, "size": len(self.tokens), "pre": self.pre,
                "model": self.model, "routine": self.routine, "merges": len(self.merges),
                "bos_token_id": self.special_ids.get("bos"),
                "eos_token_id": self.special_ids.get("eos"),
                "chat_template": self.chat_template is not None}


# ----------------------------------------------------------------------------- reading

def _json(files, name, limit=MAX_JSON_BYTES):
    path = files.get(name)
    if path is None:
        return None
    return load_json(read_small(path, limit, name), path, name)


def _text(files, name):
    path = files.get(name)
    if path is None:
        return None
    raw = read_small(path, MAX_JSON_BYTES, name)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadInput(f"{name} is not UTF-8 text", path) from None


def read(files, config, vocab, vocab_size):
    """The Tokenizer of a folder. files: {basename: path}; config: config.json as a dict;
    vocab: the family's routine (ROUTINES); vocab_size: the config's (the converter pads
    the token list to it)."""
    if vocab not in ROUTINES:
        raise ValueError(f"unknown vocabulary routine {vocab!r}")
    tj_path = files.get("tokenizer.json")
    if tj_path is None:
        raise BadInput("the folder has no tokenizer.json (q4apr reads the tokenizer from it)",
                       files.get("tokenizer_config.json") or "tokenizer.json")
    tj = _json(files, "tokenizer.json", MAX_TOKENIZER_JSON_BYTES)
    tc = _json(files, "tokenizer_config.json")
    src = _Source(files, tj, tj_path, tc, config or {}, vocab_size)
    tok = Tokenizer()
    src.check_model(tok)
    _ROUTINE[vocab](src, tok)
    _apr_lists(src, tok)
    # rows of tokenizer.json's own vocabulary (Gemma 3's converter cuts the embedding to it)
    tok.json_rows = len(src.model.get("vocab") or ()) + len(src.added)
    # the parsed files (Gemma's: ~70 MiB of objects under Pyodide) are garbage now; a
    # full collection hands their free lists and emptied arenas back to the allocator, so
    # the next open of a big tokenizer reuses that memory instead of growing the heap
    del src, tj
    gc.collect()
    return tok


class _Source:
    """The parsed files of one folder, with the few facts every routine needs."""

    def __init__(self, files, tj, tj_path, tc, config, vocab_size):
        self.files, self.tj, self.tj_path, self.tc, self.config = files, tj, tj_path, tc, config
        self.vocab_size = vocab_size
        self.has_spm = "tokenizer.model" in files
        self.merges_joined = False    # model.merges turned into "a b" strings in place
        self.merge_pairs = False      # ... from [a, b] pairs (a space inside became U+0120)

    def fail(self, message, field=None, path=None):
        where = f"{field}: " if field else ""
        raise BadInput(where + message, path or self.tj_path)

    def check_model(self, tok):
        m = self.tj.get("model")
        if not isinstance(m, dict):
            self.fail("has no 'model' object", "model")
        kind = m.get("type")
        if kind is None and "merges" in m:
            kind = "BPE"   # tokenizers writes BPE without a type in old files
        if kind not in ("BPE", "WordPiece", "Unigram"):
            self.fail(f"model type {kind!r} is not BPE, WordPiece or Unigram", "model.type")
        tok.kind = kind
        vocab = m.get("vocab")
        if kind == "Unigram":
            if not isinstance(vocab, list):
                self.fail("is not a list of [piece, score]", "model.vocab")
        elif not isinstance(vocab, dict):
            self.fail("is not an object of token -> id", "model.vocab")
        added = self.tj.get("added_tokens", [])
        if not isinstance(added, list) or not all(
                isinstance(a, dict) and isinstance(a.get("content"), str)
                and type(a.get("id")) is int and a["id"] >= 0 for a in added):
            self.fail("must be a list of {id, content, ...} with non-negative integer ids",
                      "added_tokens")
        self.added = added
        self.model = m

    # ---- the id -> token view transformers gives (model vocab, added tokens over it)
    def vocab_dict(self):
        """token -> id of the model's vocabulary (Unigram: the piece's index)."""
        if self.tok_kind() == "Unigram":
            out = {}
            for i, item in enumerate(self.model["vocab"]):
                if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
                    self.fail(f"entry {i} is not [piece, score]", "model.vocab")
                out.setdefault(item[0], i)
            return out
        v = self.model["vocab"]
        for t, i in v.items():
            if type(i) is not int or i < 0:
                self.fail(f"token {t!r:.40} has the id {i!r}, not a non-negative integer",
                          "model.vocab")
        return v

    def tok_kind(self):
        return self.model.get("type") or "BPE"

    def reverse_vocab(self):
        """id -> token as transformers' get_vocab() gives it: the model's, added over it."""
        rev = {i: t for t, i in self.vocab_dict().items()}
        for a in self.added:
            rev[a["id"]] = a["content"]
        return rev

    def base_size(self):
        """transformers' tokenizer.vocab_size: the model's vocabulary without added tokens."""
        return len(self.model["vocab"])


# ----------------------------------------------------------------------------- routines

def _looks_special(text):
    """TextModel.does_token_look_special."""
    return (text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (text.startswith("<|") and text.endswith("|>"))
            or (text.startswith("<\uff5c") and text.endswith("\uff5c>"))
            or (text.startswith("<unused") and text.endswith(">")))


def _vocab_base(src, tok):
    """TextModel.get_vocab_base: tokens padded to vocab_size, types, pre-tokenizer name."""
    rev = src.reverse_vocab()
    n = src.vocab_size if src.vocab_size is not None else len(rev)
    top = max(rev) if rev else -1
    if top >= n:
        src.fail(f"holds token id {top}, but config.json's vocab_size is {n}", "model.vocab")
    tok.pre = _pre_name(src)
    added = {a["content"]: a for a in src.added}   # get_added_vocab(): last one wins
    by_id = {a["id"]: a for a in src.added}
    tokens, types = [None] * n, [NORMAL] * n
    get = rev.get
    for i in range(n):
        t = get(i)
        if t is None:
            tokens[i], types[i] = f"[PAD{i}]", UNUSED
        elif t in added:
            a = by_id.get(i, added[t])
            if a.get("special") or _looks_special(t):
                types[i] = CONTROL
            else:
                t = t.replace("\u2581", " ")
                types[i] = USER_DEFINED
            tokens[i] = t
        else:
            tokens[i] = t
    tok.tokens, tok.toktypes = tokens, types


def _special_vocab(src, tok, load_merges, n_vocab, types=SPECIAL_TYPES):
    """gguf.SpecialVocab: merges, special ids, add_* flags, chat template, normalizer."""
    tj = src.tj
    special_types = tuple(types)
    if load_merges:
        tok.merges = _gguf_merges(src)
    if (norm := tj.get("normalizer")):
        _parse_normalizer(tok, norm)
    tc = dict(src.tc) if src.tc else src.tc
    added = src.added
    add = tok.add_special
    ids = tok.special_ids

    def set_id(typ, tid):
        if not isinstance(tid, int):      # as the converter: a list of ids is skipped
            return
        if tid < 0:
            src.fail(f"gives the {typ} token the id {tid}", f"{typ}_token")
        if n_vocab is None or tid < n_vocab:
            ids.setdefault(typ, tid)

    def sid(entry, key):
        return entry.get(key, {}).get("id") if isinstance(entry, dict) else None

    get = (tc or {}).get
    special_bos, special_cls = get("bos_token"), get("cls_token")
    special_eos, special_sep = get("eos_token"), get("sep_token")
    if not special_bos and special_cls and tc:
        tc["bos_token"] = special_bos = special_cls
    if not special_eos and special_sep and tc:
        tc["eos_token"] = special_eos = special_sep
    post = tj.get("post_processor")
    if post:
        procs = post.get("processors", [post]) if isinstance(post, dict) else []
        for proc in procs if isinstance(procs, list) else []:
            if not isinstance(proc, dict):
                continue
            ptype = proc.get("type")
            if ptype == "ByteLevel":
                add.setdefault("bos", False)
                add.setdefault("eos", False)
            elif ptype == "RobertaProcessing":
                add["bos"] = add["eos"] = add["sep"] = True
                if not special_cls and tc:
                    special_cls = proc.get("cls", [special_bos])[0]
                    tc["cls_token"] = special_cls
                if not special_sep and tc:
                    special_sep = proc.get("sep", [special_eos])[0]
                    tc["sep_token"] = special_sep
            elif ptype == "TemplateProcessing":
                single, pair = proc.get("single", []), proc.get("pair", [])
                first = last = None
                if len(single) > 1:
                    if (first := sid(single[0], "SpecialToken")):
                        if not tc:
                            special_bos = first
                        elif first not in (special_bos, special_cls):
                            if not special_bos:
                                tc["bos_token"] = special_bos = first
                            if not special_cls:
                                tc["cls_token"] = special_cls = first
                        add["bos"] = first in (special_bos, special_cls)
                    if (last := sid(single[-1], "SpecialToken")):
                        if not tc:
                            special_eos = last
                        elif last != special_eos:
                            if "eot" not in special_types:
                                special_types += ("eot",)
                                tc["eot_token"] = special_eos
                            elif "eom" not in special_types:
                                special_types += ("eom",)
                                tc["eom_token"] = special_eos
                            tc["eos_token"] = special_eos = last
                        add["eos"] = last == special_eos
                if pair:
                    start = 1 if first and sid(pair[0], "SpecialToken") == first else 0
                    stop = -1 if last and sid(pair[-1], "SpecialToken") == last else None
                    if (pair := pair[slice(start, stop)]):
                        a, b = sid(pair[0], "Sequence"), sid(pair[-1], "Sequence")
                        if a == "A" and b == "B" and (pair := pair[1:-1]):
                            add_sep = False
                            if (entry := sid(pair[0], "SpecialToken")):
                                if entry in (special_sep, special_eos) and not last:
                                    add_sep = True
                            if len(pair) == 2:
                                if (entry := sid(pair[1], "SpecialToken")):
                                    if entry in (special_sep, special_eos):
                                        add_sep = True
                            add["sep"] = add_sep
                            if add_sep and not special_sep and tc:
                                tc["sep_token"] = special_eos
    if tc:
        tok.chat_template = _chat_template(src, tc)
        for typ in special_types:
            entry = tc.get(f"add_{typ}_token")
            if isinstance(entry, bool) and typ not in add:
                add[typ] = entry
            entry = tc.get(f"{typ}_token")
            if isinstance(entry, dict):
                entry = entry.get("content")
            if not isinstance(entry, str):
                continue
            tid = next((a.get("id") for a in added if a.get("content") == entry), None)
            set_id(typ, tid)
    # _try_load_from_config_json
    cfg = src.config
    for typ in special_types:
        tid = cfg.get(f"{typ}_token_id")
        if tid is None and isinstance(cfg.get("text_config"), dict):
            tid = cfg["text_config"].get(f"{typ}_token_id")
        set_id(typ, tid)


def _chat_template(src, tc):
    alt = _text(src.files, "chat_template.jinja")
    if alt is None and "chat_template.json" in src.files:
        ct = _json(src.files, "chat_template.json")
        alt = ct.get("chat_template")
    value = tc.get("chat_template", alt)
    if value is None or isinstance(value, (str, list)):
        return value
    return None


def _parse_normalizer(tok, norm):
    if not isinstance(norm, dict):
        return
    t = norm.get("type")
    if t == "Lowercase":
        tok.normalizer_lowercase = True
    elif t == "StripAccents":
        tok.normalizer_strip_accents = True
    elif t == "BertNormalizer":
        if "lowercase" in norm:
            tok.normalizer_lowercase = norm["lowercase"]
        if "strip_accents" in norm:
            tok.normalizer_strip_accents = norm["strip_accents"]
    elif t == "Sequence":
        for n in norm.get("normalizers", []):
            _parse_normalizer(tok, n)


def _gguf_merges(src):
    """SpecialVocab's merges: "a b" strings kept; [a, b] pairs joined, spaces as U+0120.
    Pairs are replaced in place in the parsed list (Gemma's 514k pairs are ~100 MB of
    Python lists: they are freed as the strings are made, not held beside them)."""
    merges = src.model.get("merges")
    if not isinstance(merges, list) or not merges:
        return []
    if src.merges_joined:
        return merges
    if isinstance(merges[0], str):
        if not all(isinstance(m, str) for m in merges):
            src.fail("mixes strings and pairs", "model.merges")
        src.merges_joined = True
        return merges
    if not (isinstance(merges[0], list) and len(merges[0]) == 2 and isinstance(merges[0][0], str)):
        src.fail("is neither \"a b\" strings nor [a, b] pairs", "model.merges")
    src.merge_pairs = True
    try:
        for i, (a, b) in enumerate(merges):
            if " " in a or " " in b:
                a, b = a.replace(" ", "\u0120"), b.replace(" ", "\u0120")
            merges[i] = a + " " + b
    except (TypeError, ValueError):
        src.fail(f"entry {i} is not a pair of strings", "model.merges")
    src.merges_joined = True
    return merges


def _gpt2(src, tok):
    """TextModel._set_vocab_gpt2."""
    tok.routine = "gpt2"
    _vocab_base(src, tok)
    tok.model = "gpt2"
    _special_vocab(src, tok, load_merges=True, n_vocab=None)


def _bert(src, tok):
    """BertModel.set_vocab: WordPiece tokens in llama.cpp's phantom-space form."""
    tok.routine = "bert"
    _vocab_base(src, tok)
    tok.head_kv.append(("tokenizer.ggml.token_type_count", UINT32,
                        _uint(src, src.config.get("type_vocab_size", 1), "type_vocab_size")))
    tokens = tok.tokens
    for i, (t, ty) in enumerate(zip(tokens, tok.toktypes)):
        if ty != CONTROL:
            tokens[i] = t[2:] if t.startswith("##") else "\u2581" + t
    tok.model = "bert"
    _special_vocab(src, tok, load_merges=False, n_vocab=len(tokens))


def _uint(src, v, field):
    if type(v) is not int or not 0 <= v < 2**32:
        raise BadInput(f"{field} must be a non-negative integer, not {v!r}",
                       "config.json")
    return v


def _llama_hf(src, tok):
    """TextModel._set_vocab_llama_hf (gguf.LlamaHfVocab): a SentencePiece-style BPE
    tokenizer.json, scores all -1000, no merges, no padding."""
    tok.routine = "llama_hf"
    rev = src.reverse_vocab()
    base = src.base_size()
    specials = _transformers_special_ids(src)
    added = sorted(((a["content"], a["id"]) for a in src.added), key=lambda x: x[1])
    added = {t: i for t, i in added}
    added_list = [t for t, i in sorted(added.items(), key=lambda x: x[1]) if i >= base]
    added_ids = {added[t] for t in added_list}
    tokens, types = [], []
    for i in range(base):
        if i in added_ids:
            continue
        t = rev.get(i)
        if t is None:
            src.fail(f"has no token with id {i} (ids must run from 0 without gaps)",
                     "model.vocab")
        tokens.append(t)
        types.append(BYTE if _is_byte_token(t) else CONTROL if i in specials else NORMAL)
    for t in added_list:
        tokens.append(t)
        types.append(CONTROL if added[t] in specials else USER_DEFINED)
    tok.tokens, tok.toktypes, tok.scores = tokens, types, [-1000.0] * len(tokens)
    tok.model, tok.pre = "llama", "default"
    _special_vocab(src, tok, load_merges=False, n_vocab=len(tokens))


def _is_byte_token(t):
    return (len(t) == 6 and t.startswith("<0x") and t.endswith(">")
            and all(c in "0123456789abcdefABCDEF" for c in t[3:5]))


def _transformers_special_ids(src):
    """transformers' all_special_ids: the named special tokens and the extra ones of
    tokenizer_config.json (special_tokens_map.json where it has none)."""
    tc = src.tc or {}
    stm = _json(src.files, "special_tokens_map.json") or {}
    names = []
    for typ in SPECIAL_TYPES:
        v = tc.get(f"{typ}_token", stm.get(f"{typ}_token"))
        if isinstance(v, dict):
            v = v.get("content")
        if isinstance(v, str):
            names.append(v)
    for key in ("extra_special_tokens", "additional_special_tokens"):
        v = tc.get(key, stm.get(key))
        if isinstance(v, dict):
            v = list(v.values())
        for x in v if isinstance(v, list) else []:
            if isinstance(x, dict):
                x = x.get("content")
            if isinstance(x, str):
                names.append(x)
    vocab = dict(src.vocab_dict())
    for a in src.added:
        vocab[a["content"]] = a["id"]
    return {vocab[n] for n in names if n in vocab}


def _llama_hf_applies(src):
    """LlamaHfVocab's test: True (use it), False (FileNotFoundError/TypeError: gpt2)."""
    m = src.model
    if m.get("type") == "BPE" and m.get("ignore_merges", False) and not m.get("byte_fallback", True):
        return False      # "Llama 3 must be converted with BpeVocab"
    dec = src.tj.get("decoder")
    if not isinstance(dec, dict):
        return False      # TypeError on None['type'] in the converter
    return m.get("type") == "BPE" and bool(m.get("byte_fallback", False)) \
        and dec.get("type") == "Sequence"


# SentencePiece's piece types as the converter maps them: only these four change the
# NORMAL it starts from (a USER_DEFINED piece stays NORMAL)
_SPM_TYPE = {2: UNKNOWN, 3: CONTROL, 5: UNUSED, 6: BYTE}


def _added_tokens_json(src):
    at = _json(src.files, "added_tokens.json")
    if at is None:
        return {}
    for k, v in at.items():
        if type(v) is not int or v < 0:
            raise BadInput(f"gives {k!r} the id {v!r}, not a non-negative integer",
                           src.files["added_tokens.json"])
    return at


def _added_tokens_decoder(src):
    atd = (src.tc or {}).get("added_tokens_decoder", {})
    out = []
    if not isinstance(atd, dict):
        raise BadInput("added_tokens_decoder is not an object", src.files["tokenizer_config.json"])
    for k, v in atd.items():
        try:
            tid = int(k)
        except ValueError:
            tid = -1
        if tid < 0 or not isinstance(v, dict) or not isinstance(v.get("content"), str):
            raise BadInput(f"added_tokens_decoder entry {k!r} is not id -> {{content, ...}}",
                           src.files["tokenizer_config.json"])
        out.append((tid, v))
    return out


def _sentencepiece(src, tok, add_to_gguf=True):
    """TextModel._set_vocab_sentencepiece (_create_vocab_sentencepiece)."""
    if not src.has_spm:
        raise BadInput("the converter's SentencePiece routine needs tokenizer.model",
                       src.tj_path)
    tok.routine = "sentencepiece"
    pieces, pscores, ptypes = sentencepiece.read_pieces(src.files["tokenizer.model"])
    n = src.vocab_size or len(pieces)
    tokens = [f"[PAD{i}]" for i in range(n)]
    scores = [-10000.0] * n
    types = [UNUSED] * n
    m = min(n, len(pieces))
    tokens[:m], scores[:m] = pieces[:m], pscores[:m]
    get = _SPM_TYPE.get
    types[:m] = [get(t, NORMAL) for t in ptypes[:m]]
    for key, tid in _added_tokens_json(src).items():
        if tid < n:
            tokens[tid], scores[tid], types[tid] = key, -1000.0, USER_DEFINED
    for tid, data in _added_tokens_decoder(src):
        if tid >= n:
            continue
        t = data["content"]
        if data.get("special") or _looks_special(t):
            types[tid] = CONTROL
        else:
            t = t.replace("\u2581", " ")
            types[tid] = USER_DEFINED
        scores[tid], tokens[tid] = -1000.0, t
    tok.tokens, tok.scores, tok.toktypes = tokens, scores, types
    tok.model, tok.pre = "llama", "default"
    _special_vocab(src, tok, load_merges=False, n_vocab=len(tokens))


def _phi3_spm(src, tok):
    """Phi3MiniModel.set_vocab's own SentencePiece reading."""
    tok.routine = "phi3"
    pieces, pscores, ptypes = sentencepiece.read_pieces(src.files["tokenizer.model"])
    n = src.vocab_size or len(pieces)
    if len(pieces) > n:
        raise BadInput(f"holds {len(pieces)} pieces, more than config.json's vocab_size {n} "
                       "(llama.cpp's converter fails on it)", src.files["tokenizer.model"])
    tokens = [f"[PAD{i}]" for i in range(n)]
    scores = [-10000.0] * n
    types = [UNUSED] * n
    m = len(pieces)
    tokens[:m], scores[:m] = pieces, pscores
    get = _SPM_TYPE.get
    types[:m] = [get(t, NORMAL) for t in ptypes]
    for key, tid in _added_tokens_json(src).items():
        if tid < n:
            tokens[tid], scores[tid], types[tid] = key, -1000.0, USER_DEFINED

    def put(tid, data, where):
        if tid >= n:
            raise BadInput(f"gives {data['content']!r} the id {tid}, beyond vocab_size {n} "
                           "(llama.cpp's converter fails on it)", where)
        tokens[tid], scores[tid] = data["content"], -1000.0
        types[tid] = CONTROL if data.get("special") else USER_DEFINED

    for tid, data in _added_tokens_decoder(src):
        put(tid, data, src.files.get("tokenizer_config.json"))
    for a in src.added:
        put(a["id"], a, src.tj_path)
    tok.tokens, tok.scores, tok.toktypes = tokens, scores, types
    tok.model, tok.pre = "llama", "default"
    _special_vocab(src, tok, load_merges=False, n_vocab=len(tokens))


def _llama(src, tok):
    """LlamaModel.set_vocab (llama, mistral, smollm): SentencePiece if tokenizer.model,
    else LlamaHfVocab, else GPT-2 BPE; then its vocab-size quirks."""
    if src.tc and (aps := src.tc.get("add_prefix_space")) is not None:
        tok.head_kv.append(("tokenizer.ggml.add_space_prefix", BOOL, bool(aps)))
    if src.has_spm:
        _sentencepiece(src, tok)
    elif _llama_hf_applies(src):
        _llama_hf(src, tok)
    else:
        _gpt2(src, tok)
    n = src.vocab_size if src.vocab_size is not None else 32000
    if n == 32016:   # CodeLlama
        for typ, tid in (("prefix", 32007), ("suffix", 32008), ("middle", 32009), ("eot", 32010)):
            tok.tail_kv.append((_ID_KEYS[typ], UINT32, tid))
    if n == 49152:   # "granite small models" (also SmolLM's vocabulary size)
        tok.tail_kv.append(("tokenizer.ggml.add_bos_token", BOOL, False))


def _qwen2(src, tok):
    """Qwen2Model / Qwen3Model.set_vocab."""
    if src.has_spm:
        _sentencepiece(src, tok)
    else:
        _gpt2(src, tok)


def _gemma3(src, tok):
    """Gemma3Model.set_vocab."""
    if src.has_spm:
        _sentencepiece(src, tok)
        tok.tail_kv.append(("tokenizer.ggml.add_space_prefix", BOOL, False))
    else:
        _gpt2(src, tok)


def _phi3(src, tok):
    """Phi3MiniModel.set_vocab: GPT-2 BPE when tokenizer_class says so, else tokenizer.model."""
    tc = src.tc
    if tc is not None:
        if "tokenizer_class" not in tc:
            raise BadInput("has no tokenizer_class (llama.cpp's converter needs it for phi3)",
                           src.files["tokenizer_config.json"])
        if tc["tokenizer_class"] == "GPT2Tokenizer":
            return _gpt2(src, tok)
    if not src.has_spm:
        raise BadInput("phi3: llama.cpp's converter reads a phi3 tokenizer from tokenizer.model "
                       "(SentencePiece), which this folder lacks (tokenizer_class is "
                       f"{(tc or {}).get('tokenizer_class')!r}, not GPT2Tokenizer)",
                       src.files.get("tokenizer_config.json") or src.tj_path)
    _phi3_spm(src, tok)


_ROUTINE = {"llama": _llama, "qwen2": _qwen2, "qwen3": _qwen2, "gemma3": _gemma3,
            "phi3": _phi3, "bert": _bert, "gpt2": _gpt2, "llama_hf": _llama_hf,
            "sentencepiece": _sentencepiece}


# ----------------------------------------------------------------------------- outputs

def gguf_kv(tok):
    """[(key, vtype, value)]: every tokenizer.* key the converter writes, in its order."""
    kv = {}

    def put(key, vtype, value):
        kv[key] = (key, vtype, value)   # a key written twice keeps its first place

    for item in tok.head_kv:
        put(*item)
    put("tokenizer.ggml.model", STRING, tok.model)
    put("tokenizer.ggml.pre", STRING, tok.pre)
    put("tokenizer.ggml.tokens", ARRAY, (STRING, tok.tokens))
    if tok.scores is not None:
        put("tokenizer.ggml.scores", ARRAY, (FLOAT32, tok.scores))
    put("tokenizer.ggml.token_type", ARRAY, (INT32, tok.toktypes))
    if tok.merges:
        put("tokenizer.ggml.merges", ARRAY, (STRING, tok.merges))
    for typ, tid in tok.special_ids.items():
        if typ in _ID_KEYS:
            put(_ID_KEYS[typ], UINT32, tid)
    for typ, value in tok.add_special.items():
        if typ in _ADD_KEYS:
            put(_ADD_KEYS[typ], BOOL, value)
    ct = tok.chat_template
    if isinstance(ct, str):
        put("tokenizer.chat_template", STRING, ct)
    elif isinstance(ct, list):
        default, names = None, []
        for choice in ct:
            if not isinstance(choice, dict):
                continue
            name = "".join(c if c.isascii() and c.isalnum() else "_"
                           for c in choice.get("name", ""))
            template = choice.get("template")
            if name and template is not None:
                if name == "default":
                    default = template
                else:
                    names.append(name)
                    put(f"tokenizer.chat_template.{name}", STRING, template)
        if names:
            put("tokenizer.chat_templates", ARRAY, (STRING, list(dict.fromkeys(names))))
        if default is not None:
            put("tokenizer.chat_template", STRING, default)
    if tok.normalizer_lowercase is not None:
        put("tokenizer.ggml.normalizer.lowercase", BOOL, bool(tok.normalizer_lowercase))
    if tok.normalizer_strip_accents is not None:
        put("tokenizer.ggml.normalizer.strip_accents", BOOL, bool(tok.normalizer_strip_accents))
    for item in tok.tail_kv:
        put(*item)
    return list(kv.values())


def _apr_lists(src, tok):
    """Aprender's lists: tokenizer.json's vocabulary by id (added tokens included, gaps
    named [PADi]), its merges as "a b", Unigram scores."""
    if tok.kind == "Unigram":
        items = src.model["vocab"]
        vocab = [item[0] for item in items]
        scores = [float(item[1]) for item in items]
        for a in src.added:
            i = a["id"]
            while i >= len(vocab):
                vocab.append(f"[PAD{len(vocab)}]")
                scores.append(0.0)
            vocab[i] = a["content"]
        tok.vocabulary, tok.apr_scores = vocab, scores
        return
    rev = src.reverse_vocab()
    n = max(rev) + 1 if rev else 0
    get = rev.get
    tok.vocabulary = [get(i) or f"[PAD{i}]" for i in range(n)]
    if tok.kind == "BPE":
        tok.apr_merges = tok.merges if tok.merges else _gguf_merges(src)


def apr_metadata(tok):
    """The flat tokenizer keys of an APR's JSON metadata (what Aprender's importer writes)."""
    meta = {"tokenizer.model_type": tok.kind.lower(),
            "tokenizer.vocabulary": tok.vocabulary,
            "tokenizer.vocab_size": len(tok.vocabulary)}
    if tok.kind == "BPE":
        meta["tokenizer.merges"] = tok.apr_merges
    if tok.apr_scores is not None:
        meta["tokenizer.scores"] = tok.apr_scores
    for typ in ("bos", "eos"):
        if typ in tok.special_ids:
            meta[f"tokenizer.{typ}_token_id"] = tok.special_ids[typ]
    if isinstance(tok.chat_template, str):
        meta["chat_template"] = tok.chat_template
    return meta
