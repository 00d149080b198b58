"""Qwen2 and Qwen3: conversion/qwen.py (Qwen2Model, Qwen3Model).

GGUF: TextModel's keys only (no vocab_size, no rope.dimension_count), names as LLaMA's,
no permutation (llama.cpp rotates Qwen's Q/K as split halves, NEOX). Qwen2 always has Q/K/V
biases; Qwen3 has per-head q_norm/k_norm and biases only with attention_bias.
"""

from .base import check_rope_type, Entry, Family, KV, register, text_model_kv
from ..ggufvalues import UINT32
from .llama import DECODER

E = Entry
Q, KVD = "num_heads*head_dim", "num_kv_heads*head_dim"
L = "model.layers.{bid}."
B = "blk.{bid}."

_QKV_BIASES = ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias")
QWEN2_TABLE = tuple(E(e.hf, e.gguf, e.dims, "always", "") if e.hf.endswith(_QKV_BIASES) else
                    E(e.hf, e.gguf, e.dims, e.when, "" if e.kind in ("q", "k") else e.kind)
                    for e in DECODER if not e.hf.endswith(("o_proj.bias", "mlp.gate_proj.bias",
                                                           "mlp.up_proj.bias",
                                                           "mlp.down_proj.bias")))
QWEN3_TABLE = tuple(E(e.hf, e.gguf, e.dims, e.when, "" if e.kind in ("q", "k") else e.kind)
                    for e in DECODER if not e.hf.startswith(L + "mlp.") or
                    not e.hf.endswith(".bias")) + (
    E(L + "self_attn.q_norm.weight", B + "attn_q_norm.weight", ("head_dim",), kind="norm"),
    E(L + "self_attn.k_norm.weight", B + "attn_k_norm.weight", ("head_dim",), kind="norm"),
)


@register
class Qwen2(Family):
    GGUF_ARCH = "qwen2"
    # Qwen2Model.set_vocab: tokenizer.model -> sentencepiece, else _set_vocab_gpt2
    VOCAB = "qwen2"
    MODEL_TYPES = ("qwen2",)
    ARCHITECTURES = ("Qwen2ForCausalLM",)
    # transformers 5.24 Qwen2Config (note num_key_value_heads defaults to 32, not heads)
    DEFAULTS = {"qwen2": {"num_key_value_heads": 32, "max_position_embeddings": 32768,
                          "rms_norm_eps": 1e-6, "tie_word_embeddings": False}}
    TABLE = QWEN2_TABLE

    def more_hparams(self, hp, v, rp, path):
        check_rope_type(rp, path)

    def gguf_kv(self, hp, config):
        v = self.view(config, None)
        kv = KV(self.GGUF_ARCH)
        text_model_kv(kv, v, self.rope(v, None))
        if hp.get("pooling_type") is not None:        # _try_set_pooling_type (modules.json)
            kv.add("{arch}.pooling_type", UINT32, hp["pooling_type"])
        return kv.items()


@register
class Qwen3(Qwen2):
    GGUF_ARCH = "qwen3"
    MODEL_TYPES = ("qwen3",)
    ARCHITECTURES = ("Qwen3ForCausalLM",)
    DEFAULTS = {"qwen3": {"num_key_value_heads": 32, "head_dim": 128,
                          "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
                          "tie_word_embeddings": False, "attention_bias": False}}
    TABLE = QWEN3_TABLE
