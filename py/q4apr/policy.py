"""Which tensors become Q4, following llama-quantize's practice, each with its reason.

Matrices named like weights are quantized; 1-D tensors, norms, biases and
positional tables stay F32. Options keep the token embedding or the output head
at F16, quantize everything (`pure`), or skip tensors by name pattern.
"""

import fnmatch
import re
from dataclasses import dataclass

from .dtypes import APR_Q4, F16, F32, Q4_0

EMBEDDING = re.compile(r"(^|\.)(token_embd|embed_tokens|tok_embeddings|word_embeddings|wte|"
                       r"embeddings?)\.weight$")
OUTPUT = re.compile(r"(^|\.)(output|lm_head|embed_out)\.weight$")
# tensors llama-quantize never quantizes, whatever their shape
NEVER = re.compile(r"(norm|pos_embd|position_embd|position_embeddings|wpe\.|token_types|"
                   r"ffn_gate_inp|\.router\.|ssm_conv1d|rel_pos|rope_freqs|position_ids)")


@dataclass
class Decision:
    dtype_out: object   # DType
    action: str         # 'quantize' | 'keep' | 'convert' | 'passthrough'
    reason: str


def q4_for(fmt):
    return APR_Q4 if fmt == "apr" else Q4_0


def decide(entry, options, model_format):
    """The output dtype of one tensor and why."""
    name, shape, src = entry.name, entry.shape, entry.dtype
    q4 = q4_for(options.format)
    if src is q4:
        return Decision(q4, "passthrough", "already 4-bit")
    if not src.is_float:
        ok = src.apr is not None if options.format == "apr" else src.gguf is not None
        if not ok:
            return None  # the caller refuses: this dtype has no code in the output format
        return Decision(src, "passthrough", f"{src.name} is kept as stored")
    if entry.keep_f32:
        return _to(F32, src, entry.keep_f32)
    for pattern in options.skip:
        if fnmatch.fnmatchcase(name, pattern):
            return _keep(src, options, f"skipped by pattern {pattern!r}")
    rows_ok = options.format == "apr" or (shape and shape[-1] % 32 == 0)
    if options.keep_embeddings_f16 and EMBEDDING.search(name):
        return _to(F16, src, "token embedding kept at F16 (option)")
    if options.keep_output_f16 and OUTPUT.search(name):
        return _to(F16, src, "output head kept at F16 (option)")
    if options.pure:
        if not rows_ok:
            return _to(F16, src, f"row length {shape[-1] if shape else 0} is not a "
                                 "multiple of 32 (Q4_0 rows are whole blocks)")
        return Decision(q4, "quantize", "pure: every tensor")
    if len(shape) < 2:
        return _to(F32, src, "1-D tensor (norm, bias or scale)")
    if NEVER.search(name):
        return _to(F32, src, "norm or positional tensor")
    weight_like = name.endswith("weight") or model_format in ("npy", "npz")
    if not weight_like:
        return _to(F32, src, "not named like a weight")
    if not rows_ok:
        return _to(F16, src, f"row length {shape[-1]} is not a multiple of 32 "
                             "(Q4_0 rows are whole blocks)")
    return Decision(q4, "quantize", "weight matrix")


def _to(dtype, src, reason):
    return Decision(dtype, "keep" if dtype is src else "convert", reason)


def _keep(src, options, reason):
    """A skipped tensor keeps its type where the output format has it."""
    has = src.apr is not None if options.format == "apr" else src.gguf is not None
    if src.quantized or not has:
        return _to(F32, src, reason)
    return _to(src, src, reason)

