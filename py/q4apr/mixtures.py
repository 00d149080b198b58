"""llama-quantize's per-tensor types for `--type Q4_0` and `--type Q4_K_M` (no imatrix).

A transcription of llama.cpp's src/llama-quant.cpp (vendored in llama-cpp-python 0.3.36):
tensor_allows_quantization, tensor_get_category, llama_tensor_get_type(_impl) and
tensor_type_fallback, restricted to the two file types q4apr writes and to the options
llama-quantize has by default (no imatrix, no --tensor-type overrides, no
--output-tensor-type / --token-embedding-type, quantize_output_tensor on). The rules are
keyed on GGUF tensor names; the counters (the n-th attn_v, the layer of an ffn_down) run
over the tensors in the order llama.cpp's loader sorts them: tensors outside blk.N first,
then by layer, then by name.

What the two mixtures come to for the architectures q4apr converts (no MoE, < 80 layers):
- Q4_0: every quantizable matrix Q4_0, except output.weight (or token_embd.weight when
  there is no output.weight: tied) at Q6_K; Q8_0 when its rows are not whole 256-blocks.
- Q4_K_M: Q4_K, with Q6_K for output/tied embedding, and for attn_v / attn_qkv and
  ffn_down in the layers use_more_bits picks (the first and last eighth, and every third
  one between); rows that are not whole 256-blocks fall back Q4_K -> Q5_0, Q6_K -> Q8_0.
- In both, a row length that even the fallback's 32-block cannot divide gives F16.
(llama.cpp's branch that would put Phi-3's fused attn_qkv at Q5_K is dead code: attn_qkv
is caught by the attn_v branch first, so it gets Q4_K/Q6_K like attn_v.)
"""

import re
from dataclasses import dataclass

from .dtypes import BY_NAME, ROW_PADDED
from .errors import BadInput

TYPES = ("Q4_0", "Q4_K_M")
FILE_TYPES = {"Q4_0": 2, "Q4_K_M": 15}        # llama_ftype: LLAMA_FTYPE_MOSTLY_*
BASE = {"Q4_0": "Q4_0", "Q4_K_M": "Q4_K"}     # llama_ftype_get_default_type
BLOCK = {"Q4_0": 32, "Q4_1": 32, "Q5_0": 32, "Q5_1": 32, "Q8_0": 32, "Q2_K": 256,
         "Q3_K": 256, "Q4_K": 256, "Q5_K": 256, "Q6_K": 256, "F16": 1, "F32": 1}
_FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}

# llm_type LLM_TYPE_70B by architecture and layer count (models/<arch>.cpp load_hparams);
# llama only when grouped-query (n_head != n_head_kv) and not 8 experts
_70B_LAYERS = {"llama": 80, "qwen2": 80, "deci": 80, "olmo": 80, "jais2": 68}

_LAYER = re.compile(r"blk\.\s*([+-]?\d+)")


@dataclass(frozen=True)
class Choice:
    """llama-quantize's type for one tensor: `type` after the row-length fallback, `wanted`
    before it (APR, which flattens tensors, starts from `wanted`), and why."""
    type: str
    wanted: str
    reason: str
    apr_wanted: str = None   # what APR wants where llama.cpp's pick was for the row length only


# ---------------------------------------------------------------- names

def layer_of(name):
    """sscanf(name, "blk.%d.") as llama.cpp's loader sorts and layer_info parses; None if none."""
    m = _LAYER.match(name)
    return int(m.group(1)) if m else None


def loader_order(names):
    """llama_model_loader's weights_map order (weight_name_comparer)."""
    def key(n):
        layer = layer_of(n)
        return (-1 if layer is None else layer, n.encode("utf-8"))
    return sorted(names, key=key)


def category(name):
    """tensor_get_category."""
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for part, cat in (("attn_qkv.weight", "attn_qkv"), ("attn_kv_b.weight", "attn_kv_b"),
                      ("attn_v.weight", "attn_v"), ("attn_k.weight", "attn_k"),
                      ("attn_q.weight", "attn_q"), ("attn_output.weight", "attn_output"),
                      ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"), ("ffn_down", "ffn_down")):
        if part in name:
            return cat
    return "other"


def is_attn_v(cat):
    return cat in ("attn_v", "attn_qkv", "attn_kv_b")


def n_dims(shape):
    """ggml_n_dims: dims up to the last one above 1 (ne order is the reverse of numpy's)."""
    ne = list(reversed(shape))
    for i in range(len(ne) - 1, 0, -1):
        if ne[i] > 1:
            return i + 1
    return 1


_NOT = ("_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel",
        "per_layer_model_proj", "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight",
        "indexer.q_proj.weight", "time_mix_first.weight", "time_mix_w0.weight",
        "time_mix_w1.weight", "time_mix_w2.weight", "time_mix_v0.weight", "time_mix_v1.weight",
        "time_mix_v2.weight", "time_mix_a0.weight", "time_mix_a1.weight", "time_mix_a2.weight",
        "time_mix_g1.weight", "time_mix_g2.weight", "time_mix_decay_w1.weight",
        "time_mix_decay_w2.weight", "time_mix_lerp_fused.weight", "attn_rel_b.weight",
        ".position_embd", "sam.pos_embd", "sam.neck.", "sam.net_", ".rel_pos", ".patch_embd",
        ".patch_merger", "a.rvq.codebook", "mm.a.code_embd")
_NOT_GLM5_NEXT = ("hc_", "indexer.attn_q_b", "indexer.attn_k", "indexer.proj",
                  "indexer_compressor_gate", "indexer_compressor_ape", "ssm_f_a.weight",
                  "ssm_f_b.weight", "ssm_g_a.weight", "ssm_g_b.weight", "ssm_beta.weight",
                  "attn_kv_a_mqa.weight", "attn_k_b.weight", "attn_v_b.weight")


def allows_quantization(name, shape, arch="", weight_like=None, ggml_dims=True):
    """tensor_allows_quantization: 2-D and 3-D weights, not norms, routers, positions,
    token types and the small tensors llama.cpp lists. weight_like overrides the
    'name ends with weight' test (q4apr treats every .npy/.npz array as a weight);
    ggml_dims=False counts numpy's dims (APR: a (1, n) matrix is still a matrix)."""
    if (n_dims(shape) if ggml_dims else len(shape)) < 2:
        return False
    ok = name.endswith("weight") if weight_like is None else weight_like
    if any(p in name for p in _NOT):
        return False
    if name in ("position_embd.weight", "token_types.weight"):
        return False
    if arch == "glm5-next" and any(p in name for p in _NOT_GLM5_NEXT):
        return False
    return ok


def fallback(ncols, target):
    """tensor_type_fallback: the type a row of ncols can hold, and a note when it changed."""
    bs = BLOCK[target]
    if ncols % bs == 0:
        return target, None
    ret = _FALLBACK.get(target)
    if ret is None:
        if bs > 32:
            raise BadInput(f"llama.cpp defines no fallback for {target}")
        ret = target
    if ncols % BLOCK[ret]:
        ret = "F16"
    return ret, f"row length {ncols} is not a multiple of {bs} (whole {target} blocks): {ret}"


def use_more_bits(i_layer, n_layers):
    return (i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8
            or _cmod(i_layer - n_layers // 8, 3) == 2)


def _cmod(a, b):
    """C's % (truncates toward zero)."""
    r = abs(a) % abs(b)
    return -r if a < 0 else r


# ---------------------------------------------------------------- the mixture

@dataclass
class Context:
    """What llama-quantize reads from the model besides the tensors (hparams, arch)."""
    arch: str = ""
    n_layer: int = 0
    n_expert: int = 0
    n_head: int = 0
    n_head_kv: int = 0

    @property
    def is_70b(self):
        want = _70B_LAYERS.get(self.arch)
        if want is None or self.n_layer != want:
            return False
        if self.arch == "llama":
            return self.n_expert != 8 and self.n_head != self.n_head_kv
        return True


def choose(tensors, qtype="Q4_0", ctx=None, pure=False, weight_like=None, ggml_dims=True):
    """{name: Choice, or None when llama-quantize keeps the tensor as stored} for
    tensors = [(gguf name, numpy shape)], as `llama-quantize [--pure] IN OUT <qtype>`."""
    if qtype not in FILE_TYPES:
        raise BadInput(f"unknown --type {qtype!r} (use {' or '.join(TYPES)})")
    ctx = ctx or Context()
    shapes = dict(tensors)
    names = loader_order(shapes)
    cats = {n: category(n) for n in names}
    st = {"n_wv": sum(1 for c in cats.values() if is_attn_v(c)), "i_wv": 0,
          "n_layer": ctx.n_layer or _count_layers(names), "i_down": 0, "i_gate": 0, "i_up": 0,
          "tied": not any(c == "output" for c in cats.values())}
    base = BASE[qtype]
    out = {}
    for name in names:
        shape = shapes[name]
        if not allows_quantization(name, shape, ctx.arch, weight_like, ggml_dims):
            out[name] = None
            continue
        wanted, why, apr_wanted = base, f"{qtype}: {base}", None
        if not pure:
            wanted, why, *rest = _impl(name, shape, cats[name], wanted, qtype, ctx, st)
            apr_wanted = rest[0] if rest else None
        else:
            why = f"{qtype} --pure: {base}"
        final, note = fallback(shape[-1] if shape else 1, wanted)
        out[name] = Choice(final, wanted, why + (f"; {note}" if note else ""), apr_wanted)
    return out


def _count_layers(names):
    layers = [layer_of(n) for n in names]
    layers = [x for x in layers if x is not None]
    return max(layers) + 1 if layers else 0


def _impl(name, shape, cat, new, qtype, ctx, st):
    """llama_tensor_get_type_impl for LLAMA_FTYPE_MOSTLY_Q4_0 / Q4_K_M without imatrix."""
    km = qtype == "Q4_K_M"
    falcon = ctx.arch == "falcon"
    n_expert = max(1, ctx.n_expert)
    if cat == "output" or (st["tied"] and cat == "token_embd"):
        what = "output head" if cat == "output" else "token embedding (tied: also the output)"
        if falcon:
            return "Q8_0", f"{qtype}: {what} at Q8_0"
        if shape[-1] % BLOCK[new]:   # for the row length only: APR's row layout takes Q6_K
            return "Q8_0", (f"{qtype}: {what} at Q8_0 (rows of {shape[-1]} are not whole "
                            f"{new} blocks)"), "Q6_K"
        if new != "Q8_0":
            return "Q6_K", f"{qtype}: {what} at Q6_K"
        return new, f"{qtype}: {what}"
    if cat == "token_embd":
        return new, f"{qtype}: {new}"
    if is_attn_v(cat):
        i, n = st["i_wv"], st["n_wv"]
        why = f"{qtype}: {new}"
        if km and use_more_bits(i, n):
            new, why = "Q6_K", f"{qtype}: {cat} #{i} of {n} gets more bits: Q6_K"
        if ctx.is_70b and new in ("Q3_K", "Q4_K"):
            new, why = "Q5_K", f"{qtype}: {cat} of a 70B model: Q5_K"
        if ctx.n_expert == 8:
            new, why = "Q8_0", f"{qtype}: {cat} of an 8-expert model: Q8_0"
        st["i_wv"] += 1
        return new, why
    if cat == "attn_k":
        if ctx.n_expert == 8:
            return "Q8_0", f"{qtype}: attn_k of an 8-expert model: Q8_0"
        return new, f"{qtype}: {new}"
    if cat == "ffn_down":
        i_layer, n_layer = _layer_info(st["i_down"], st["n_layer"], name, n_expert)
        why = f"{qtype}: {new}"
        if km:
            if falcon:
                new = ("Q6_K" if i_layer < n_layer // 16 else
                       "Q5_K" if use_more_bits(i_layer, n_layer) else "Q4_K")
                why = f"{qtype}: falcon ffn_down, layer {i_layer} of {n_layer}: {new}"
            elif use_more_bits(i_layer, n_layer):
                new, why = "Q6_K", f"{qtype}: ffn_down, layer {i_layer} of {n_layer} gets more bits: Q6_K"
        st["i_down"] += 1
        return new, why
    if cat == "attn_output":
        if km and not falcon and ctx.n_expert == 8:
            return "Q5_K", f"{qtype}: attn_output of an 8-expert model: Q5_K"
        return new, f"{qtype}: {new}"
    if cat in ("ffn_gate", "ffn_up"):
        _layer_info(st["i_" + cat[4:]], st["n_layer"], name, n_expert)
        st["i_" + cat[4:]] += 1
    return new, f"{qtype}: {new}"


def _layer_info(i_layer, n_layer, name, n_expert):
    if n_expert > 1:
        i_layer = layer_of(name)
        if i_layer is None:
            raise BadInput(f"llama.cpp cannot determine the layer of {name}", tensor=name)
        if not 0 <= i_layer < n_layer:
            raise BadInput(f"layer {i_layer} is outside [0, {n_layer})", tensor=name)
    return i_layer, n_layer


# ---------------------------------------------------------------- APR

_K_BYTES = {k: BY_NAME[k].type_size for k in ROW_PADDED}   # bytes of a 256-value super-block


def apr_type(choice, shape):
    """The APR dtype name for llama.cpp's choice, and a note on the layout (or None).

    From the choice's `wanted` type, before llama.cpp's row-length fallback: APR flattens
    APR Q4, so 32-blocks need no fallback (Q4_0 -> APR Q4, code 128), and a K-quant goes
    through apr_k_type. llama.cpp's own Q8_0 choices go to F16 (APR has no Q8_0)."""
    w = choice.apr_wanted or choice.wanted
    if w == "Q4_0":
        return "APR_Q4", "Q4_0 -> APR Q4"
    if w in _K_BYTES:
        return apr_k_type(w, shape, f"llama.cpp: {choice.type}")
    return "F16", f"llama.cpp writes {choice.type}, which APR lacks: F16"


def apr_k_type(w, shape, why=""):
    """Q4_K / Q6_K in APR: rows of whole 256-blocks are GGML's layout (llama-quantize's bytes);
    a 2-D tensor with other rows is stored as Aprender's writer stores it, each row zero
    padded to whole super-blocks (dtypes.padded_row), where llama.cpp falls back to Q5_0 /
    Q8_0, which APR lacks; unless the padding makes the rows larger than F16 (rows narrower
    than ~72 / ~105 values), and other shapes (3-D and up) of such rows: F16."""
    cols = shape[-1] if shape else 1
    if len(shape) < 2 or cols % 256 == 0:
        return w, None
    why = f"; {why}" if why else ""
    if len(shape) > 2:
        return "F16", (f"rows of {cols} are not whole 256-blocks in a {len(shape)}-D tensor "
                       f"(Aprender pads 2-D rows only{why}): F16")
    padded = -(-cols // 256)
    bits = 8 * padded * _K_BYTES[w] / cols
    if bits >= 16:
        return "F16", (f"rows of {cols} padded to whole 256-blocks would take {bits:.1f} bits "
                       f"per weight in {w}, more than F16's 16{why}: F16")
    return w, (f"Aprender's row layout: each row of {cols} zero padded to {padded * 256} "
               f"(whole 256-blocks, {bits:.2f} bits per weight{why})")


# ---------------------------------------------------------------- a model's context

_HF = [
    (re.compile(r"^(?:model\.)?embed_tokens\.weight$"), "token_embd.weight"),
    (re.compile(r"^lm_head\.weight$"), "output.weight"),
    (re.compile(r"^(?:model\.)?layers\.(\d+)\.self_attn\.q_proj\.weight$"), "blk.{}.attn_q.weight"),
    (re.compile(r"^(?:model\.)?layers\.(\d+)\.self_attn\.k_proj\.weight$"), "blk.{}.attn_k.weight"),
    (re.compile(r"^(?:model\.)?layers\.(\d+)\.self_attn\.v_proj\.weight$"), "blk.{}.attn_v.weight"),
    (re.compile(r"^(?:model\.)?layers\.(\d+)\.self_attn\.qkv_proj\.weight$"), "blk.{}.attn_qkv.weight"),
    (re.compile(r"^(?:model\.)?layers\.(\d+)\.self_attn\.o_proj\.weight$"), "blk.{}.attn_output.weight"),
    (re.compile(r"^(?:model\.)?layers\.(\d+)\.mlp\.gate_proj\.weight$"), "blk.{}.ffn_gate.weight"),
    (re.compile(r"^(?:model\.)?layers\.(\d+)\.mlp\.(?:up|gate_up)_proj\.weight$"), "blk.{}.ffn_up.weight"),
    (re.compile(r"^(?:model\.)?layers\.(\d+)\.mlp\.down_proj\.weight$"), "blk.{}.ffn_down.weight"),
]


def gguf_like_name(name):
    """A Hugging Face llama-style name as llama.cpp would call it (for lone weight files,
    which have no architecture to map them exactly); other names are kept."""
    for pat, fmt in _HF:
        m = pat.match(name)
        if m:
            return fmt.format(*m.groups())
    m = re.match(r"^(?:model\.)?layers\.(\d+)\.(.*)$", name)
    return f"blk.{m.group(1)}.{m.group(2)}" if m else name


def context(model):
    """hparams llama-quantize reads: from a folder's description or a GGUF's key/values."""
    d = model.description
    if d is not None:
        hp = d.hparams
        return Context(d.family.GGUF_ARCH, int(hp.get("num_layers") or 0),
                       int(hp.get("num_experts") or 0), int(hp.get("num_heads") or 0),
                       int(hp.get("num_kv_heads") or 0))
    kv = {k: v for k, _, v in model.extra.get("gguf_kv", [])}
    arch = kv.get("general.architecture", b"")
    arch = arch.decode("utf-8", "replace") if isinstance(arch, bytes) else str(arch)

    def num(key):
        v = kv.get(f"{arch}.{key}")
        if isinstance(v, tuple):          # an array (per-layer values): llama.cpp's n_head()
            v = v[1][0] if len(v[1]) else 0
        try:
            return int(v or 0)
        except (TypeError, ValueError):
            return 0
    n_expert = num("expert_count")
    return Context(arch, num("block_count"), n_expert if n_expert > 1 else 0,
                   num("attention.head_count"), num("attention.head_count_kv"))


def plan(model, entries, options):
    """{output entry name: Choice or None} for every entry of one run (see choose)."""
    ctx = context(model)
    weight_like = True if model.format in ("npy", "npz") else None
    d = model.description
    if d is not None and options.format == "apr":
        # the same decisions as the GGUF of this folder, matched through the HF source name
        from .runnable import output_entries
        g = output_entries(model, "gguf")
        chosen = choose([(e.name, e.shape) for e in g], options.type, ctx, options.pure)
        by_src = {(e.source or e.name): chosen[e.name] for e in g}
        return {e.name: by_src.get(e.source or e.name) for e in entries}
    names = {e.name: (e.name if d is not None else gguf_like_name(e.name)) for e in entries}
    if len(set(names.values())) < len(names):        # two names met: keep the originals
        names = {n: n for n in names}
    chosen = choose([(names[e.name], e.shape) for e in entries], options.type, ctx,
                    options.pure, weight_like, options.format == "gguf")
    return {e.name: chosen[names[e.name]] for e in entries}
