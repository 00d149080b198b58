"""Gemma 3 text models (model_type gemma3_text): conversion/gemma.py Gemma3Model.

GGUF: every '*norm.weight' gets + 1 (Gemma3RMSNorm computes x * (1 + w)); the token
embedding is cut to the tokenizer's real size (len(tokenizer.json model.vocab) +
len(added_tokens)); the embedding scale sqrt(hidden_size) is applied by llama.cpp at run
time, not stored. Sliding-window and local rope base keys come from the config.
"""

from .base import Entry, Family, KV, _bad, check_rope_type, get_float, get_int, register, \
    text_model_kv
from .llama import DECODER
from ..ggufvalues import FLOAT32, UINT32
from .transforms import first_rows

E = Entry
H = "hidden_size"
L = "model.layers.{bid}."
B = "blk.{bid}."

GEMMA3_TABLE = tuple(
    E(e.hf, e.gguf.replace(B + "ffn_norm", B + "post_attention_norm"), e.dims, e.when,
      "" if e.kind in ("q", "k") else e.kind)
    for e in DECODER if not e.hf.endswith(".bias")) + (
    E(L + "pre_feedforward_layernorm.weight", B + "ffn_norm.weight", (H,), kind="norm"),
    E(L + "post_feedforward_layernorm.weight", B + "post_ffw_norm.weight", (H,), kind="norm"),
    E(L + "self_attn.q_norm.weight", B + "attn_q_norm.weight", ("head_dim",), kind="norm"),
    E(L + "self_attn.k_norm.weight", B + "attn_k_norm.weight", ("head_dim",), kind="norm"),
)


@register
class Gemma3(Family):
    GGUF_ARCH = "gemma3"
    # Gemma3Model.set_vocab: tokenizer.model -> sentencepiece (+ add_space_prefix false),
    # else _set_vocab_gpt2
    VOCAB = "gemma3"
    MODEL_TYPES = ("gemma3_text",)
    ARCHITECTURES = ("Gemma3ForCausalLM",)
    # transformers 5.24 Gemma3TextConfig
    DEFAULTS = {"gemma3_text": {"num_key_value_heads": 4, "head_dim": 256,
                                "max_position_embeddings": 131072, "rms_norm_eps": 1e-6,
                                "tie_word_embeddings": True, "sliding_window": 4096,
                                "final_logit_softcapping": None,
                                "attn_logit_softcapping": None}}
    TABLE = GEMMA3_TABLE

    def rope(self, v, path):
        """Gemma3TextConfig.convert_rope_params_to_dict: one dict per attention kind."""
        rp = v.get("rope_parameters")
        if rp is not None and not isinstance(rp, dict):
            raise _bad(path, "rope_parameters", f"must be an object, not {rp!r}")
        rp = {k: (dict(x) if isinstance(x, dict) else x) for k, x in rp.items()} if rp else {
            "sliding_attention": {"rope_type": "default"},
            "full_attention": {"rope_type": "default"}}
        if v.get("rope_scaling") is not None:
            rp.setdefault("full_attention", {"rope_type": "default"})
            rp["full_attention"].update(v["rope_scaling"])
        if rp.get("full_attention") is None:
            rp["full_attention"] = {"rope_type": "default"}
        rp["full_attention"].setdefault("rope_theta", v.get("rope_theta", 1_000_000.0))
        if rp.get("sliding_attention") is None:
            rp["sliding_attention"] = {"rope_type": "default"}
        rp["sliding_attention"].setdefault("rope_theta", v.get("rope_local_base_freq", 10_000.0))
        for k in ("full_attention", "sliding_attention"):
            if not isinstance(rp[k], dict):
                raise _bad(path, "rope_parameters", f"{k} must be an object")
            rp[k].setdefault("rope_type", rp[k].get("type", "default"))
        return rp

    def more_hparams(self, hp, v, rp, path):
        check_rope_type(rp["full_attention"], path)
        if v.get("use_bidirectional_attention"):
            raise _bad(path, "use_bidirectional_attention", "bidirectional Gemma 3 (embedding "
                       "models) is not supported")
        if v.get("attn_logit_softcapping") is not None:
            raise _bad(path, "attn_logit_softcapping", "must be null for Gemma 3 (the converter "
                       "asserts it)")
        if v.get("sliding_window_pattern") != 1:
            hp["sliding_window"] = get_int(v, "sliding_window", path)
        hp["rope_theta_swa"] = get_float(rp["sliding_attention"], "rope_theta", path)
        if v.get("final_logit_softcapping") is not None:
            hp["final_logit_softcapping"] = get_float(v, "final_logit_softcapping", path)

    def transform(self, hp, e, shape):
        if e.hf == "model.embed_tokens.weight":
            rows = hp.get("tokenizer_rows")
            if rows is None:
                raise ValueError("gemma3 needs hp['tokenizer_rows'] = len(tokenizer.json "
                                 "model.vocab) + len(added_tokens)")
            return first_rows(min(rows, shape[0])), None
        if e.hf.endswith("norm.weight"):
            return None, 1.0
        return None, None

    def gguf_kv(self, hp, config):
        v = self.view(config, None)
        rope = self.rope(v, None)
        kv = KV(self.GGUF_ARCH)
        text_model_kv(kv, v, rope)
        kv.add("{arch}.context_length", UINT32, v.get("max_position_embeddings", 131072))
        kv.add("{arch}.attention.head_count", UINT32, v.get("num_attention_heads", 8))
        kv.add("{arch}.attention.layer_norm_rms_epsilon", FLOAT32, v.get("rms_norm_eps", 1e-6))
        kv.add("{arch}.attention.key_length", UINT32, v.get("head_dim", 256))
        kv.add("{arch}.attention.value_length", UINT32, v.get("head_dim", 256))
        kv.add("{arch}.rope.freq_base", FLOAT32,
               rope.get("full_attention", rope).get("rope_theta", 1_000_000.0))
        if v.get("final_logit_softcapping"):
            kv.add("{arch}.final_logit_softcapping", FLOAT32, v["final_logit_softcapping"])
        if v.get("sliding_window_pattern") != 1:
            kv.add("{arch}.attention.sliding_window", UINT32, v["sliding_window"])
        kv.add("{arch}.attention.head_count_kv", UINT32, v.get("num_key_value_heads", 4))
        return kv.items()

    def apr_metadata(self, hp, config):
        md = super().apr_metadata(hp, config)
        if "sliding_window" in hp:
            md["sliding_window"] = hp["sliding_window"]
        md["rope_local_base_freq"] = float(hp["rope_theta_swa"])
        return md
