"""LLaMA and what llama.cpp's converter treats as LLaMA (Mistral, SmolLM): conversion/llama.py.

GGUF: TextModel's keys + llama.vocab_size + llama.rope.dimension_count; Q and K rows (and
biases) permuted so that llama.cpp's adjacent-pairs rotation applies (LlamaModel.permute).
"""

from .base import check_rope_type, Entry, Family, KV, register, text_model_kv
from ..ggufvalues import UINT32
from .transforms import permute_rows

E = Entry
H, V, I, Q, KVD = "hidden_size", "vocab_size", "intermediate_size", "num_heads*head_dim", \
    "num_kv_heads*head_dim"
L = "model.layers.{bid}."
B = "blk.{bid}."

# Hugging Face name -> GGUF name (gguf-py tensor_mapping.py, MODEL_ARCH.LLAMA), shapes
DECODER = (
    E("model.embed_tokens.weight", "token_embd.weight", (V, H)),
    E("model.norm.weight", "output_norm.weight", (H,), kind="norm"),
    E("lm_head.weight", "output.weight", (V, H), when="untied"),
    E(L + "input_layernorm.weight", B + "attn_norm.weight", (H,), kind="norm"),
    E(L + "self_attn.q_proj.weight", B + "attn_q.weight", (Q, H), kind="q"),
    E(L + "self_attn.k_proj.weight", B + "attn_k.weight", (KVD, H), kind="k"),
    E(L + "self_attn.v_proj.weight", B + "attn_v.weight", (KVD, H)),
    E(L + "self_attn.o_proj.weight", B + "attn_output.weight", (H, Q)),
    E(L + "self_attn.q_proj.bias", B + "attn_q.bias", (Q,), when="attention_bias", kind="q"),
    E(L + "self_attn.k_proj.bias", B + "attn_k.bias", (KVD,), when="attention_bias", kind="k"),
    E(L + "self_attn.v_proj.bias", B + "attn_v.bias", (KVD,), when="attention_bias"),
    E(L + "self_attn.o_proj.bias", B + "attn_output.bias", (H,), when="attention_bias"),
    E(L + "post_attention_layernorm.weight", B + "ffn_norm.weight", (H,), kind="norm"),
    E(L + "mlp.gate_proj.weight", B + "ffn_gate.weight", (I, H)),
    E(L + "mlp.up_proj.weight", B + "ffn_up.weight", (I, H)),
    E(L + "mlp.down_proj.weight", B + "ffn_down.weight", (H, I)),
    E(L + "mlp.gate_proj.bias", B + "ffn_gate.bias", (I,), when="mlp_bias"),
    E(L + "mlp.up_proj.bias", B + "ffn_up.bias", (I,), when="mlp_bias"),
    E(L + "mlp.down_proj.bias", B + "ffn_down.bias", (H,), when="mlp_bias"),
)


@register
class Llama(Family):
    GGUF_ARCH = "llama"
    # LlamaModel.set_vocab for a folder without tokenizer.model: gguf.LlamaHfVocab when
    # tokenizer.json is a SentencePiece-style BPE (byte_fallback, Sequence decoder, not
    # ignore_merges), else _set_vocab_gpt2 (SmolLM2, Llama 3)
    VOCAB = "llama"
    MODEL_TYPES = ("llama", "mistral")
    ARCHITECTURES = ("LlamaForCausalLM", "LLaMAForCausalLM", "MistralForCausalLM")
    # transformers 5.24 LlamaConfig / MistralConfig defaults for what the converter reads
    DEFAULTS = {
        "llama": {"max_position_embeddings": 2048, "rms_norm_eps": 1e-6,
                  "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False},
        "mistral": {"num_key_value_heads": 8, "max_position_embeddings": 131072,
                    "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "sliding_window": 4096},
    }
    TABLE = DECODER

    def view(self, config, path):
        v = super().view(config, path)
        if v.get("head_dim") is None:          # LlamaConfig/MistralConfig.__post_init__
            v["head_dim"] = v["hidden_size"] // v["num_attention_heads"]
        return v

    def more_hparams(self, hp, v, rp, path):
        # llama3 rope needs rope_freqs (a tensor computed in torch float32): not done yet
        check_rope_type(rp, path)

    def transform(self, hp, e, shape):
        if e.kind == "q":
            return permute_rows(hp["num_heads"]), None
        if e.kind == "k":
            return permute_rows(hp["num_kv_heads"]), None
        return None, None

    def gguf_kv(self, hp, config):
        v = self.view(config, None)
        kv = KV(self.GGUF_ARCH)
        text_model_kv(kv, v, self.rope(v, None))
        kv.add("{arch}.vocab_size", UINT32, v["vocab_size"])
        rope_dim = v.get("head_dim")
        if rope_dim is None:
            rope_dim = v["hidden_size"] // v["num_attention_heads"]
        kv.add("{arch}.rope.dimension_count", UINT32, rope_dim)
        return kv.items()
