"""BERT encoders (sentence embeddings such as all-MiniLM): conversion/bert.py BertModel.

GGUF: TextModel's keys + bert.attention.causal = false (+ bert.pooling_type when a
sentence-transformers modules.json names a Pooling module); 'bert.' prefixes, '.gamma'
/'.beta' renamed; the pooler, embeddings.position_ids and the cls.* (MLM / NSP) heads are
dropped; token type and position embeddings are kept (llama.cpp keeps them in F32).
"""

from .base import SKIPPED_SUFFIXES, Entry, Family, KV, _bad, get_float, get_int, register, \
    text_model_kv
from ..ggufvalues import BOOL, UINT32

E = Entry
H, V, I = "hidden_size", "vocab_size", "intermediate_size"
L = "encoder.layer.{bid}."
B = "blk.{bid}."


def _wb(hf, gguf, dims_w, dims_b, kind=""):
    return (E(hf + ".weight", gguf + ".weight", dims_w, kind=kind),
            E(hf + ".bias", gguf + ".bias", dims_b, kind=kind))


BERT_TABLE = (
    E("embeddings.word_embeddings.weight", "token_embd.weight", (V, H)),
    E("embeddings.position_embeddings.weight", "position_embd.weight",
      ("max_position_embeddings", H)),
    E("embeddings.token_type_embeddings.weight", "token_types.weight", ("type_vocab_size", H)),
    *_wb("embeddings.LayerNorm", "token_embd_norm", (H,), (H,), "norm"),
    *_wb(L + "attention.self.query", B + "attn_q", (H, H), (H,)),
    *_wb(L + "attention.self.key", B + "attn_k", (H, H), (H,)),
    *_wb(L + "attention.self.value", B + "attn_v", (H, H), (H,)),
    *_wb(L + "attention.output.dense", B + "attn_output", (H, H), (H,)),
    *_wb(L + "attention.output.LayerNorm", B + "attn_output_norm", (H,), (H,), "norm"),
    *_wb(L + "intermediate.dense", B + "ffn_up", (I, H), (I,)),
    *_wb(L + "output.dense", B + "ffn_down", (H, I), (H,)),
    *_wb(L + "output.LayerNorm", B + "layer_output_norm", (H,), (H,), "norm"),
)

DROPPED = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")
DROPPED_PREFIXES = ("cls.predictions", "cls.seq_relationship")

POOLING = {"mean": 1, "cls": 2, "lasttoken": 3}      # gguf PoolingType


def pooling_type(modules, pooling_config):
    """TextModel._try_set_pooling_type: the GGUF pooling type from sentence-transformers'
    modules.json (a list) and the Pooling module's config.json; None when there is none."""
    if not any(isinstance(m, dict) and str(m.get("type", "")).endswith("Pooling")
               for m in modules or []):
        return None
    p = pooling_config or {}
    if p.get("pooling_mode_mean_tokens"):
        return POOLING["mean"]
    if p.get("pooling_mode_cls_token"):
        return POOLING["cls"]
    if p.get("pooling_mode_lasttoken"):
        return POOLING["lasttoken"]
    if p.get("pooling_mode") in POOLING:
        return POOLING[p["pooling_mode"]]
    raise ValueError("only mean, cls and last-token pooling are supported")


@register
class Bert(Family):
    GGUF_ARCH = "bert"
    # BertModel.set_vocab: get_vocab_base() (WordPiece) turned into "phantom space" tokens
    VOCAB = "bert"
    MODEL_TYPES = ("bert",)
    ARCHITECTURES = ("BertModel", "BertForMaskedLM")
    # transformers 5.24 BertConfig
    DEFAULTS = {"bert": {"max_position_embeddings": 512, "layer_norm_eps": 1e-12,
                         "tie_word_embeddings": True, "type_vocab_size": 2}}
    TABLE = BERT_TABLE
    CAUSAL = False
    EMBEDDING = "embeddings.word_embeddings.weight"
    LM_HEAD = None

    def view(self, config, path):
        from .base import view
        return view(config, self.DEFAULTS["bert"], path)   # BertConfig has no kv heads

    def rope(self, v, path):
        # TextModel.__init__ mirrors a top-level rope_theta, if any, into rope_parameters
        rp = v.get("rope_parameters", v.get("rope_scaling")) or {}
        rp = dict(rp) if isinstance(rp, dict) else {}
        if "rope_theta" not in rp and v.get("rope_theta") is not None:
            rp["rope_theta"] = v["rope_theta"]
        return rp

    def hparams(self, config, path):
        v = self.view(config, path)
        archs = config.get("architectures")
        arch = archs[0] if isinstance(archs, list) and archs else None
        if archs is not None and arch not in self.ARCHITECTURES:
            raise _bad(path, "architectures", f"{arch!r} is not one of "
                       f"{', '.join(self.ARCHITECTURES)}")
        labels = config.get("id2label")
        if labels and not (len(labels) == 2 and set(labels.values()) == {"LABEL_0", "LABEL_1"}):
            raise _bad(path, "id2label", "classifier heads are not supported")
        heads = get_int(v, "num_attention_heads", path)
        hidden = get_int(v, "hidden_size", path)
        if hidden % heads:
            raise _bad(path, "num_attention_heads", f"{heads} does not divide hidden_size "
                       f"{hidden}")
        return {"model_type": "bert", "architecture": arch, "hidden_size": hidden,
                "num_layers": get_int(v, "num_hidden_layers", path), "num_heads": heads,
                "num_kv_heads": heads, "intermediate_size": get_int(v, "intermediate_size", path),
                "vocab_size": get_int(v, "vocab_size", path),
                "max_position_embeddings": get_int(v, "max_position_embeddings", path),
                "type_vocab_size": get_int(v, "type_vocab_size", path),
                "head_dim": hidden // heads, "rope_theta": None,
                "norm_eps": get_float(v, "layer_norm_eps", path),
                "tied": bool(v.get("tie_word_embeddings")), "causal": False}

    def rename(self, hp, name):
        if name.endswith(SKIPPED_SUFFIXES):
            return None
        if name.startswith("bert."):
            name = name[5:]
        if name.endswith(".gamma"):
            name = name[:-6] + ".weight"
        if name.endswith(".beta"):
            name = name[:-5] + ".bias"
        if name in DROPPED or name.startswith(DROPPED_PREFIXES):
            return None
        return name

    def gguf_kv(self, hp, config):
        v = self.view(config, None)
        kv = KV(self.GGUF_ARCH)
        text_model_kv(kv, v, self.rope(v, None))
        kv.add("{arch}.attention.causal", BOOL, False)
        if hp.get("pooling_type") is not None:
            kv.add("{arch}.pooling_type", UINT32, hp["pooling_type"])
        return kv.items()

    def apr_metadata(self, hp, config):
        md = super().apr_metadata(hp, config)
        md["layer_norm_eps"] = md.pop("rms_norm_eps")
        md.pop("tied_embeddings", None)   # an encoder: no LM head to tie
        md["type_vocab_size"] = hp["type_vocab_size"]
        md["causal"] = False
        if hp.get("pooling_type") is not None:
            md["pooling_type"] = hp["pooling_type"]
        return md
