"""Which tensors become 4-bit (or the mixture's other types), following llama-quantize,
each with its reason.

The default is llama-quantize's default for the chosen --type (Q4_0 or Q4_K_M): the
per-tensor types of q4apr.mixtures (the output head or tied embedding at Q6_K, attn_v /
ffn_down bumps for Q4_K_M, fallbacks for short rows). `pure` is `llama-quantize --pure`:
every quantizable matrix at the type's base type (Q4_0 or Q4_K). 1-D tensors, norms,
routers and positional tables stay F32. APR gets the same choice, mapped to its codes
(mixtures.apr_type); an APR --pure run also quantizes 1-D tensors (APR flattens tensors:
this is how the shared vectors are made). Options keep the token embedding or the output
head at F16, or skip tensors by name pattern.
"""

import fnmatch
import re
from dataclasses import dataclass

from . import mixtures
from .dtypes import APR_Q4, BY_NAME, F16, F32, Q4_0
from .errors import BadInput

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


def base_for(options):
    """The type every quantized tensor gets under --pure."""
    base = mixtures.BASE[options.type]
    return APR_Q4 if options.format == "apr" and base == "Q4_0" else BY_NAME[base]


def decide(entry, options, model_format, choice=False):
    """The output dtype of one tensor and why. choice: the mixture's Choice for it (from
    mixtures.plan over the whole model, None: llama-quantize keeps it); when not given it
    is worked out for this tensor alone (a model of one tensor: an embedding counts as tied)."""
    name, shape, src = entry.name, entry.shape, entry.dtype
    q4 = q4_for(options.format)
    if entry.tied_to:
        return Decision(src, "passthrough", f"tied to {entry.tied_to}: 0 data bytes, its full "
                        "shape (as Aprender's exporter writes a tied head; its runtime reads "
                        "the embedding)")
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
    if options.keep_embeddings_f16 and EMBEDDING.search(name):
        return _to(F16, src, "token embedding kept at F16 (option)")
    if options.keep_output_f16 and OUTPUT.search(name):
        return _to(F16, src, "output head kept at F16 (option)")
    apr = options.format == "apr"
    if options.pure and apr:
        # today's APR --pure: every tensor, 1-D ones too, at the base type
        base = base_for(options)
        if base.block_size == 256:
            t, note = mixtures.apr_k_type(base.name, shape)
            if t == "F16":
                return _to(F16, src, f"pure: {note}")
            return Decision(base, "quantize", "pure: every tensor" + (f"; {note}" if note else ""))
        return Decision(base, "quantize", "pure: every tensor")
    if len(shape) < 2:
        return _to(F32, src, "1-D tensor (norm, bias or scale)")
    if NEVER.search(name):
        return _to(F32, src, "norm or positional tensor")
    if choice is False:
        weight_like = True if model_format in ("npy", "npz") else None
        gname = mixtures.gguf_like_name(name)
        choice = mixtures.choose([(gname, shape)], options.type, pure=options.pure,
                                 weight_like=weight_like, ggml_dims=not apr)[gname]
    if choice is None:
        if not (name.endswith("weight") or model_format in ("npy", "npz")):
            return _to(F32, src, "not named like a weight")
        return _to(F32, src, "llama-quantize keeps it unquantized")
    if apr:
        t, note = mixtures.apr_type(choice, shape)
        reason = choice.reason + (f"; {note}" if note else "")
    else:
        t, reason = choice.type, choice.reason
    dtype = BY_NAME.get(t)
    if dtype is None:
        raise BadInput(f"llama-quantize {options.type} writes {t} here ({reason}); q4apr has no "
                       f"{t} codec", tensor=name)
    if dtype is F16 or dtype is F32:
        return _to(dtype, src, reason)
    if dtype is src:    # as llama-quantize: a tensor already of its type is copied
        return Decision(src, "passthrough", reason + " (already)")
    return Decision(dtype, "quantize", reason)


def _to(dtype, src, reason):
    return Decision(dtype, "keep" if dtype is src else "convert", reason)


def _keep(src, options, reason):
    """A skipped tensor keeps its type where the output format has it."""
    has = src.apr is not None if options.format == "apr" else src.gguf is not None
    if src.quantized or not has:
        return _to(F32, src, reason)
    return _to(src, src, reason)

