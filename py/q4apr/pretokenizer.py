"""tokenizer.ggml.pre, named as llama.cpp's converter names it, without a tokenizer library.

The converter encodes a fixed test string (CHKTXT) and looks the sha256 of the ids up in its
table (get_vocab_base_pre). Here the pre-tokenizer (and normalizer) found in tokenizer.json
picks, from a table made with `tokenizers` (tokenizer_tables.SPLITS), how CHKTXT splits into
words; the file's own BPE merges (or WordPiece vocabulary) and post-processor applied to
those few words give the ids, hence the converter's hash and name. The plain shapes
transformers writes for SentencePiece-style BPE (Gemma: Replace " " -> "\u2581" and Split
" "; Phi-3: Prepend + Replace) are run here instead, after cutting the test string at the
added tokens ("\n", "\n\n", ... in Gemma's vocabulary) as `tokenizers` does. An unknown
pre-tokenizer, or a vocabulary whose hash the converter does not know, is refused, as the
converter refuses it. `src` is tokenizer._Source: the parsed files of one folder.
"""

import hashlib
import json

from . import tokenizer_tables as tables

_IGNORED_KEYS = ("trim_offsets",)


def _canon(node):
    if isinstance(node, dict):
        out = {k: _canon(v) for k, v in node.items() if k not in _IGNORED_KEYS}
        if out.get("type") == "ByteLevel":
            out.setdefault("use_regex", True)
            out.setdefault("add_prefix_space", True)
        return out
    if isinstance(node, list):
        return [_canon(x) for x in node]
    return node


def signature(tj):
    """The canonical text of tokenizer.json's normalizer and pre_tokenizer (table key)."""
    return json.dumps({"normalizer": _canon(tj.get("normalizer")),
                       "pre_tokenizer": _canon(tj.get("pre_tokenizer"))},
                      sort_keys=True, ensure_ascii=True, separators=(",", ":"))


def chktxt_ids(src):
    """The ids transformers' tokenizer.encode(CHKTXT) gives, from the file alone; None
    with a reason when the table does not know the pre-tokenizer."""
    sig = signature(src.tj)
    entry = tables.SPLITS.get(sig)
    simple = _simple_split(src.tj)
    kind = src.tok_kind()
    if kind == "BPE":
        model_ids = _bpe_ids
    elif kind == "WordPiece":
        model_ids = _wordpiece_ids
    else:
        return None, "a Unigram model"
    intrudes = next((a["content"] for a in src.added if a["content"] and (
        a["content"] in tables.CHKTXT or (entry and a["content"] in entry))), None)
    if entry is not None and intrudes is None:
        return _post_process(src, model_ids(src, entry.split("\x00") if entry else [])), None
    if simple is None:
        if entry is None:
            return None, "unknown"
        return None, (f"the added token {intrudes!r} occurs in the converter's test string "
                      "(q4apr splits on added tokens only under a Replace/Prepend normalizer "
                      "and a Split-on-a-string pre-tokenizer)")
    # Gemma-style files (Replace " " -> "▁", Split " "): cut out the added tokens
    # as `tokenizers` does, then normalize, pre-tokenize and apply the model to the rest
    pieces = [(tid, [] if tid is not None else simple[1](text))
              for text, tid in _split_added(src, simple[0])]
    per_word = iter(model_ids(src, [w for _, words in pieces for w in words], per_word=True))
    ids = []
    for tid, words in pieces:
        if tid is not None:
            ids.append(tid)
        for _ in words:
            ids.extend(next(per_word))
    return _post_process(src, ids), None


def _simple_split(tj):
    """(normalize, pre_tokenize) for the normalizers and pre-tokenizers plain enough to run
    here (what transformers writes for Gemma and Phi-3: Replace of a string, Prepend,
    Split on a string), else None."""
    norm, pre = tj.get("normalizer"), tj.get("pre_tokenizer")
    norms = (norm.get("normalizers") if isinstance(norm, dict) and norm.get("type") == "Sequence"
             else [norm] if norm is not None else [])
    if not isinstance(norms, list):
        return None
    steps = []
    for n in norms:
        if not isinstance(n, dict):
            return None
        t = n.get("type")
        pat = _string_pattern(n) if t == "Replace" else None
        if t == "Replace" and isinstance(pat, str) and pat and isinstance(n.get("content"), str):
            steps.append(lambda s, a=pat, b=n["content"]: s.replace(a, b))
        elif t == "Prepend" and isinstance(n.get("prepend"), str):
            steps.append(lambda s, a=n["prepend"]: a + s if s else s)
        else:
            return None

    def normalize(s):
        for f in steps:
            s = f(s)
        return s

    if pre is None:
        return normalize, lambda s: [s] if s else []
    if not isinstance(pre, dict) or pre.get("type") != "Split" or pre.get("invert"):
        return None
    pat, how = _string_pattern(pre), pre.get("behavior")
    if not (isinstance(pat, str) and pat) or how not in (
            "Removed", "Isolated", "MergedWithPrevious", "MergedWithNext"):
        return None
    return normalize, lambda s: _split_string(s, pat, how)


def _string_pattern(node):
    pat = node.get("pattern")
    return pat.get("String") if isinstance(pat, dict) else None


def _split_string(s, pat, how):
    """tokenizers' Split pre-tokenizer on a string pattern (NormalizedString::split)."""
    parts, i = [], 0        # (text, is_match)
    while True:
        j = s.find(pat, i)
        if j < 0:
            break
        if j > i:
            parts.append((s[i:j], False))
        parts.append((pat, True))
        i = j + len(pat)
    if i < len(s):
        parts.append((s[i:], False))
    if how == "Removed":
        out = [t for t, m in parts if not m]
    elif how == "Isolated":
        out = [t for t, _ in parts]
    else:
        seq = parts if how == "MergedWithPrevious" else parts[::-1]
        out, prev = [], False
        for t, m in seq:
            if m and not prev and out:
                out[-1] = out[-1] + t if how == "MergedWithPrevious" else t + out[-1]
            else:
                out.append(t)
            prev = m
        if how == "MergedWithNext":
            out.reverse()
    return [t for t in out if t]


def _split_added(src, normalize):
    """[(text, None) | (token, id)]: CHKTXT cut at its added tokens as tokenizers'
    AddedVocabulary does (leftmost-longest; normalized=false tokens matched in the raw
    text, normalized ones in the normalized rest), the rest normalized."""
    raw, norm = {}, {}
    for a in src.added:          # the last entry of a content wins, as in the vocabulary
        c = a["content"]
        if not c:
            continue
        if a.get("lstrip") or a.get("rstrip") or a.get("single_word"):
            if c in tables.CHKTXT or normalize(c) in normalize(tables.CHKTXT):
                src.fail(f"the added token {c!r} (lstrip/rstrip/single_word) occurs in the "
                         "converter's test string: q4apr cannot name the pre-tokenizer",
                         "added_tokens")
            continue
        if a.get("normalized", not a.get("special", False)):
            norm[normalize(c)] = a["id"]
        else:
            raw[c] = a["id"]
    out = []
    for text, tid in _match(tables.CHKTXT, raw):
        if tid is not None:
            out.append((text, tid))
        else:
            out.extend(_match(normalize(text), norm))
    return out


def _match(text, tokens):
    """text cut at the leftmost-longest occurrences of tokens ({content: id})."""
    if not tokens or not text:
        return [(text, None)] if text else []
    lengths = sorted({len(t) for t in tokens}, reverse=True)
    out, start, i, n = [], 0, 0, len(text)
    while i < n:
        hit = next((text[i:i + L] for L in lengths if text[i:i + L] in tokens), None)
        if hit is None:
            i += 1
            continue
        if i > start:
            out.append((text[start:i], None))
        out.append((hit, tokens[hit]))
        i = start = i + len(hit)
    if start < n:
        out.append((text[start:], None))
    return out


def _bpe_ids(src, words, per_word=False):
    m = src.model
    if m.get("continuing_subword_prefix") or m.get("end_of_word_suffix") or m.get("dropout"):
        src.fail("continuing_subword_prefix / end_of_word_suffix / dropout are not supported",
                 "model")
    vocab = m["vocab"]
    # only merges of two strings that occur in the test words matter: rank just those
    subs = set()
    for w in words:
        n = len(w)
        for i in range(n):
            for j in range(i + 1, n + 1):
                subs.add(w[i:j])
    merges = m.get("merges") or []
    ranks = {}
    try:
        if merges and isinstance(merges[0], str):
            for r, mg in enumerate(merges):
                a, _, b = mg.partition(" ")
                if a in subs and b in subs and (a, b) not in ranks:
                    ranks[(a, b)] = r
        else:
            for r, (a, b) in enumerate(merges):
                if a in subs and b in subs and (a, b) not in ranks:
                    ranks[(a, b)] = r
    except (TypeError, ValueError, AttributeError):
        src.fail("holds an entry that is neither \"a b\" nor a pair of strings",
                 "model.merges")
    ignore_merges = m.get("ignore_merges", False)
    byte_fallback = m.get("byte_fallback", False)
    unk = m.get("unk_token")
    fuse_unk = m.get("fuse_unk", False)
    ids = []
    for w in words:
        if ignore_merges and w in vocab:
            ids.append([vocab[w]])
            continue
        syms = []       # (text, mergeable)
        for ch in w:
            if ch in vocab:
                syms.append([ch, True])
            elif byte_fallback and all(f"<0x{b:02X}>" in vocab for b in ch.encode("utf-8")):
                syms.extend([f"<0x{b:02X}>", False] for b in ch.encode("utf-8"))
            elif unk is not None and unk in vocab:
                if fuse_unk and syms and syms[-1][0] == unk and not syms[-1][1]:
                    continue
                syms.append([unk, False])
        while len(syms) > 1:
            best, at = None, -1
            for i in range(len(syms) - 1):
                if syms[i][1] and syms[i + 1][1]:
                    r = ranks.get((syms[i][0], syms[i + 1][0]))
                    if r is not None and (best is None or r < best):
                        best, at = r, i
            if best is None:
                break
            merged = syms[at][0] + syms[at + 1][0]
            if merged not in vocab:
                break
            syms[at:at + 2] = [[merged, True]]
        ids.append([vocab[s] for s, _ in syms])
    return ids if per_word else [i for w in ids for i in w]


def _wordpiece_ids(src, words, per_word=False):
    m = src.model
    vocab = m["vocab"]
    prefix = m.get("continuing_subword_prefix", "##")
    limit = m.get("max_input_chars_per_word", 100)
    unk = m.get("unk_token", "[UNK]")
    ids = []
    for w in words:
        if len(w) > limit:
            ids.append([vocab[unk]])
            continue
        out, start, bad = [], 0, False
        while start < len(w):
            end, cur = len(w), None
            while start < end:
                s = w[start:end]
                if start > 0:
                    s = prefix + s
                if s in vocab:
                    cur = vocab[s]
                    break
                end -= 1
            if cur is None:
                bad = True
                break
            out.append(cur)
            start = end
        ids.append([vocab[unk]] if bad else out)
    return ids if per_word else [i for w in ids for i in w]


def _post_process(src, ids):
    post = src.tj.get("post_processor")
    procs = []
    if isinstance(post, dict):
        procs = post.get("processors", [post]) if post.get("type") == "Sequence" else [post]
    for p in procs:
        t = p.get("type") if isinstance(p, dict) else None
        if t == "TemplateProcessing":
            specials = p.get("special_tokens", {})
            out = []
            for piece in p.get("single", []):
                if "Sequence" in piece:
                    out.extend(ids)
                elif "SpecialToken" in piece:
                    out.extend(specials.get(piece["SpecialToken"].get("id"), {}).get("ids", []))
            ids = out
        elif t in ("RobertaProcessing", "BertProcessing"):
            ids = [p["cls"][1]] + ids + [p["sep"][1]]
    return ids


def _pre_name(src):
    """tokenizer.ggml.pre as get_vocab_base_pre names it, or BadInput as it refuses."""
    ids, why = chktxt_ids(src)
    if ids is None:
        if why == "unknown":
            tj = src.tj
            what = json.dumps({"normalizer": tj.get("normalizer"),
                               "pre_tokenizer": tj.get("pre_tokenizer")})
            src.fail("this pre-tokenizer and normalizer are not in q4apr's table of the "
                     "tokenizers llama.cpp's converter knows: " + what[:300],
                     "pre_tokenizer")
        src.fail(f"cannot name the pre-tokenizer as llama.cpp's converter does: {why}",
                 "added_tokens")
    h = hashlib.sha256(str(ids).encode()).hexdigest()
    name = tables.PRE_HASHES.get(h)
    if name is None:
        src.fail("llama.cpp's converter does not know this tokenizer (its pre-tokenizer is "
                 f"known, but with this vocabulary the test string hashes to {h[:16]}…, "
                 "which is not in the converter's table)", "pre_tokenizer")
    return name
