"""Phi-3 (and Phi-4 text): conversion/phi.py Phi3MiniModel.

GGUF: its own key list (not TextModel's); the fused qkv_proj and gate_up_proj are kept
fused (attn_qkv, ffn_up with 2 * intermediate_size rows: llama.cpp splits them); no
permutation (NEOX rotation). A long-context (longrope) config adds two F32 tensors
rope_factors_long/short made from config.json's rope_scaling lists, written first, and
the key rope.scaling.attn_factor.
"""

import math

from .base import _bad, check_rope_type, Entry, Family, find, KV, register, rope_view
from ..ggufvalues import FLOAT32, UINT32
from .transforms import TensorMap

E = Entry
H, V, I, Q = "hidden_size", "vocab_size", "intermediate_size", "num_heads*head_dim"
L = "model.layers.{bid}."
B = "blk.{bid}."

PHI3_TABLE = (
    E("model.embed_tokens.weight", "token_embd.weight", (V, H)),
    E("model.norm.weight", "output_norm.weight", (H,), kind="norm"),
    E("lm_head.weight", "output.weight", (V, H), when="untied"),
    E(L + "input_layernorm.weight", B + "attn_norm.weight", (H,), kind="norm"),
    E(L + "self_attn.qkv_proj.weight", B + "attn_qkv.weight", ("qkv_rows", H)),
    E(L + "self_attn.o_proj.weight", B + "attn_output.weight", (H, Q)),
    E(L + "post_attention_layernorm.weight", B + "ffn_norm.weight", (H,), kind="norm"),
    E(L + "mlp.gate_up_proj.weight", B + "ffn_up.weight", ("ffn_up_rows", H)),
    E(L + "mlp.down_proj.weight", B + "ffn_down.weight", (H, I)),
)


@register
class Phi3(Family):
    GGUF_ARCH = "phi3"
    # Phi3MiniModel.set_vocab: _set_vocab_gpt2 when tokenizer_config.json's tokenizer_class
    # is GPT2Tokenizer (Phi-4); otherwise it needs tokenizer.model (SentencePiece)
    VOCAB = "phi3"
    MODEL_TYPES = ("phi3",)
    ARCHITECTURES = ("Phi3ForCausalLM",)
    # transformers 5.24 Phi3Config
    DEFAULTS = {"phi3": {"max_position_embeddings": 4096,
                         "original_max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
                         "tie_word_embeddings": False, "sliding_window": None}}
    TABLE = PHI3_TABLE

    def rope(self, v, path):
        """Phi3Config.convert_rope_params_to_dict, then TextModel.__init__'s mirroring."""
        w = dict(v)
        w.setdefault("partial_rotary_factor", 1.0)
        rp = rope_view(w, path)
        if rp.get("rope_type") in ("su", "yarn"):
            rp["rope_type"] = "longrope"
        if "original_max_position_embeddings" not in rp and \
                v.get("original_max_position_embeddings") is not None:
            rp["original_max_position_embeddings"] = v["original_max_position_embeddings"]
        return rp

    def more_hparams(self, hp, v, rp, path):
        check_rope_type(rp, path, ("default", "longrope"))
        hp["qkv_rows"] = (hp["num_heads"] + 2 * hp["num_kv_heads"]) * hp["head_dim"]
        hp["ffn_up_rows"] = 2 * hp["intermediate_size"]
        hp["partial_rotary_factor"] = float(rp.get("partial_rotary_factor", 1.0))
        hp["rope_dims"] = int(hp["partial_rotary_factor"] * hp["hidden_size"]) // hp["num_heads"]
        hp["original_max_position_embeddings"] = rp.get("original_max_position_embeddings")
        if rp.get("long_factor"):
            for k in ("long_factor", "short_factor"):
                f = rp.get(k)
                if not isinstance(f, list) or len(f) * 2 != hp["rope_dims"] or not all(
                        isinstance(x, (int, float)) and not isinstance(x, bool) for x in f):
                    raise _bad(path, "rope_parameters", f"{k} must be a list of "
                               f"{hp['rope_dims'] // 2} numbers")
        hp["sliding_window"] = v.get("sliding_window") or 0

    def _rope_factors(self, hp, config):
        rp = self.rope(self.view(config, None), None)
        if not rp.get("long_factor"):
            return None, rp
        return rp, rp

    def extra_tensors(self, hp, config):
        rp, _ = self._rope_factors(hp, config)
        if rp is None:
            return []
        return [TensorMap(None, "rope_factors_long.weight", shape=(len(rp["long_factor"]),),
                          value=tuple(float(x) for x in rp["long_factor"])),
                TensorMap(None, "rope_factors_short.weight", shape=(len(rp["short_factor"]),),
                          value=tuple(float(x) for x in rp["short_factor"]))]

    def gguf_kv(self, hp, config):
        v = self.view(config, None)
        rp = self.rope(v, None)
        kv = KV(self.GGUF_ARCH)
        n_embd = find(v, ["hidden_size", "n_embd"])
        n_head = find(v, ["num_attention_heads", "n_head"])
        max_pos = find(v, ["n_positions", "max_position_embeddings"])
        orig = rp["original_max_position_embeddings"]
        if rp.get("long_factor"):           # generate_extra_tensors, before the keys below
            scale = max_pos / orig
            attn = math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1.0 else 1.0
            kv.add("{arch}.rope.scaling.attn_factor", FLOAT32, attn)
        kv.add("{arch}.context_length", UINT32, max_pos)
        kv.add("{arch}.rope.scaling.original_context_length", UINT32, orig)
        kv.add("{arch}.embedding_length", UINT32, n_embd)
        kv.add("{arch}.feed_forward_length", UINT32, v["intermediate_size"])
        kv.add("{arch}.block_count", UINT32, v["num_hidden_layers"])
        kv.add("{arch}.attention.head_count", UINT32, n_head)
        kv.add("{arch}.attention.head_count_kv", UINT32, find(v, ["num_key_value_heads",
                                                                  "n_head_kv"]))
        kv.add("{arch}.attention.layer_norm_rms_epsilon", FLOAT32, v["rms_norm_eps"])
        kv.add("{arch}.rope.dimension_count", UINT32,
               int(rp.get("partial_rotary_factor", 1.0) * n_embd) // n_head)
        kv.add("{arch}.rope.freq_base", FLOAT32, rp["rope_theta"])
        kv.add("{arch}.attention.sliding_window", UINT32, v.get("sliding_window") or 0)
        return kv.items()

    def apr_metadata(self, hp, config):
        md = super().apr_metadata(hp, config)
        md["partial_rotary_factor"] = hp["partial_rotary_factor"]
        return md
