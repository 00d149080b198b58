"""The machinery every architecture family shares; each family module is then a table.

llama.cpp's converter does not read config.json itself: it reads
transformers' AutoConfig.from_pretrained(dir).to_dict(), so a key missing from the file
takes the config class's default (e.g. Qwen2's num_key_value_heads = 32, Qwen3's head_dim =
128) and top-level rope_theta moves into rope_parameters. `view()` rebuilds that dict
(transformers 5.24 defaults, per model_type) so that our keys equal the converter's; the
required sizes (hidden_size, layers, heads, intermediate_size, vocab_size) are refused when
missing rather than defaulted, since the tensors could only contradict a guess.
"""

import math
import re
from dataclasses import dataclass

from ..errors import BadInput
from ..ggufvalues import BOOL, FLOAT32, STRING, UINT32
from .transforms import TensorMap

CONFIG = "config.json"

# hp key -> the config.json field(s) it comes from (for messages)
FIELDS = {"hidden_size": "hidden_size", "num_layers": "num_hidden_layers",
          "num_heads": "num_attention_heads", "num_kv_heads": "num_key_value_heads",
          "head_dim": "head_dim", "intermediate_size": "intermediate_size",
          "vocab_size": "vocab_size", "max_position_embeddings": "max_position_embeddings",
          "type_vocab_size": "type_vocab_size"}

# the converter skips these everywhere (ModelBase.prepare_tensors)
SKIPPED_SUFFIXES = (".attention.masked_bias", ".attention.bias", ".rotary_emb.inv_freq")

REQUIRED = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "vocab_size")


def config_path(path):
    """The config.json a message names: `path` itself, or the folder's config.json."""
    p = str(path) if path is not None else CONFIG
    return p if p.endswith(CONFIG) else p.rstrip("/\\") + "/" + CONFIG


def _bad(path, field, problem):
    return BadInput(f"field {field!r}: {problem}", config_path(path))


def get_int(view, key, path, minimum=1):
    v = view.get(key)
    if v is None:
        raise _bad(path, key, "missing")
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad(path, key, f"must be an integer, not {v!r}")
    if v < minimum:
        raise _bad(path, key, f"must be at least {minimum}, not {v}")
    return v


def get_float(view, key, path, positive=True):
    v = view.get(key)
    if v is None:
        raise _bad(path, key, "missing")
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _bad(path, key, f"must be a number, not {v!r}")
    if positive and v <= 0:
        raise _bad(path, key, f"must be positive, not {v!r}")
    return float(v)


def get_bool(view, key, path):
    v = view.get(key)
    if not isinstance(v, bool):
        raise _bad(path, key, f"must be true or false, not {v!r}")
    return v


def rope_view(view, path, default_theta=10000.0):
    """transformers' convert_rope_params_to_dict + standardize_rope_params (not nested)."""
    rp = view.get("rope_scaling") or view.get("rope_parameters")
    if rp is None:
        rp = {}
    if not isinstance(rp, dict):
        raise _bad(path, "rope_parameters", f"must be an object, not {rp!r}")
    rp = dict(rp)
    rp.setdefault("rope_theta", view.get("rope_theta", default_theta))
    if view.get("partial_rotary_factor") is not None:
        rp.setdefault("partial_rotary_factor", view["partial_rotary_factor"])
    rp.setdefault("rope_type", rp.get("type", "default"))
    if rp["rope_type"] in ("llama3", "yarn", "longrope"):
        if "original_max_position_embeddings" in view:
            rp["original_max_position_embeddings"] = view["original_max_position_embeddings"]
        else:
            rp.setdefault("original_max_position_embeddings", view.get("max_position_embeddings"))
    return rp


def view(config, defaults, path):
    """config.json over the config class's defaults (AutoConfig(...).to_dict(), roughly)."""
    if not isinstance(config, dict):
        raise BadInput("must be a JSON object", config_path(path))
    v = dict(defaults)
    v.update(config)
    for key in REQUIRED:
        if config.get(key) is None:
            raise _bad(path, key, "missing")
    return v


class KV:
    """GGUFWriter's key/values: a key added again is overwritten where it first stood."""

    def __init__(self, arch):
        self.arch, self.d = arch, {"general.architecture": (STRING, arch)}

    def add(self, key, vtype, value):
        self.d[key.format(arch=self.arch)] = (vtype, value)

    def items(self):
        return [(k, t, v) for k, (t, v) in self.d.items()]


def find(view, keys):
    """ModelBase.find_hparam(optional=True): the first of `keys` present."""
    for k in keys:
        if k in view:
            return view[k]
    return None


def text_model_kv(kv, v, rope):
    """TextModel.set_gguf_parameters (conversion/base.py) for the keys our families reach.
    `rope` is TextModel.rope_parameters (nested dicts for Gemma 3)."""
    kv.add("{arch}.block_count", UINT32, find(v, ["n_layers", "num_hidden_layers", "n_layer",
                                                  "num_layers"]))
    for key, names in (("context_length", ["max_position_embeddings", "n_ctx", "n_positions",
                                           "max_length", "max_sequence_length",
                                           "model_max_length"]),
                       ("embedding_length", ["hidden_size", "n_embd", "dim"]),
                       ("feed_forward_length", ["prefix_dense_intermediate_size",
                                                "dense_intermediate_size", "intermediate_size",
                                                "n_inner", "hidden_dim"]),
                       ("attention.head_count", ["num_attention_heads", "n_head", "n_heads"]),
                       ("attention.head_count_kv", ["num_key_value_heads", "n_kv_heads"])):
        if (val := find(v, names)) is not None:
            kv.add("{arch}." + key, UINT32, val)
    if v.get("is_causal") is False:
        kv.add("{arch}.attention.causal", BOOL, False)
    rp = rope.get("full_attention", rope)
    if (rope_type := rp.get("rope_type")) is not None:
        factor = rp.get("factor")
        if rope_type == "linear" and factor is not None:
            kv.add("{arch}.rope.scaling.type", STRING, "linear")
            kv.add("{arch}.rope.scaling.factor", FLOAT32, factor)
        elif rope_type == "yarn" and factor is not None:
            kv.add("{arch}.rope.scaling.type", STRING, "yarn")
            kv.add("{arch}.rope.scaling.factor", FLOAT32, factor)
            kv.add("{arch}.rope.scaling.original_context_length", UINT32,
                   rp["original_max_position_embeddings"])
            for key, names in (("yarn_ext_factor", ["extrapolation_factor"]),
                               ("yarn_attn_factor", ["attention_factor", "attn_factor"]),
                               ("yarn_beta_fast", ["beta_fast"]),
                               ("yarn_beta_slow", ["beta_slow"])):
                if (val := find(rp, names)) is not None:
                    kv.add("{arch}.rope.scaling." + key, FLOAT32, val)
        elif rope_type in ("su", "longrope"):
            kv.add("{arch}.rope.scaling.type", STRING, "longrope")
    if (theta := rp.get("rope_theta")) is not None:
        kv.add("{arch}.rope.freq_base", FLOAT32, theta)
    if (theta := rope.get("sliding_attention", {}).get("rope_theta")) is not None:
        kv.add("{arch}.rope.freq_base_swa", FLOAT32, theta)
    if (eps := find(v, ["rms_norm_eps", "norm_eps"])) is not None:
        kv.add("{arch}.attention.layer_norm_rms_epsilon", FLOAT32, eps)
    if (eps := find(v, ["layer_norm_eps", "layer_norm_epsilon", "norm_epsilon"])) is not None:
        kv.add("{arch}.attention.layer_norm_epsilon", FLOAT32, eps)
    if (head_dim := v.get("head_dim")) is not None:
        kv.add("{arch}.attention.key_length", UINT32, head_dim)
        kv.add("{arch}.attention.value_length", UINT32, head_dim)


# rope types whose GGUF keys the base converter writes with nothing else needed
SUPPORTED_ROPE = ("default", "linear", "yarn", "dynamic")


def check_rope_type(rp, path, supported=SUPPORTED_ROPE):
    t = rp.get("rope_type")
    if t not in supported:
        raise _bad(path, "rope_parameters", f"rope_type {t!r} is not supported (supported: "
                   f"{', '.join(supported)})")


@dataclass(frozen=True)
class Entry:
    """A row of a family's tensor table.

    hf/gguf: names with {bid} for the layer; dims: the shape, each dim an hp key or a
    product "a*b" of hp keys; when: "always", "untied" (lm_head), or an hp key that
    must be true (e.g. "attention_bias"); a tensor whose `when` is false may still be
    present (the converter maps whatever the file holds) except for "always"."""
    hf: str
    gguf: str
    dims: tuple
    when: str = "always"
    kind: str = ""          # "q"/"k": LLaMA permutation, "norm": a norm weight/bias


def _dim(hp, expr):
    n = 1
    for k in expr.split("*"):
        n *= hp[k]
    return n


def _dim_fields(expr):
    return "*".join(FIELDS.get(k, k) for k in expr.split("*"))


_BID = re.compile(r"\.(\d+)\.")


# model_type -> the Family that converts it, filled by @register where each is defined
FAMILIES = {}


def register(cls):
    """Class decorator (as llama.cpp's converter's ModelBase.register): one instance of the
    family, found by each of its config.json model_types."""
    fam = cls()
    for mt in cls.MODEL_TYPES:
        if mt in FAMILIES:
            raise ValueError(f"model_type {mt!r} is registered twice")
        FAMILIES[mt] = fam
    return cls


class Family:
    """One architecture family: tables plus the few rules that are not tables."""
    GGUF_ARCH = None
    VOCAB = None
    MODEL_TYPES = ()          # config.json model_type values
    ARCHITECTURES = ()        # config.json architectures[0] values the converter maps here
    DEFAULTS = {}             # model_type -> transformers 5.24 config defaults
    TABLE = ()                # Entry rows
    CAUSAL = True

    # ---- config -----------------------------------------------------------------------
    def view(self, config, path):
        v = view(config, self.DEFAULTS.get(config.get("model_type"), {}), path)
        if v.get("num_key_value_heads") is None:
            v["num_key_value_heads"] = v["num_attention_heads"]
        return v

    def rope(self, v, path):
        return rope_view(v, path)

    def hparams(self, config, path):
        v = self.view(config, path)
        archs = config.get("architectures")
        arch = None
        if archs is not None:
            if not isinstance(archs, list) or not archs or not isinstance(archs[0], str):
                raise _bad(path, "architectures", f"must be a list of names, not {archs!r}")
            arch = archs[0]
            if self.ARCHITECTURES and arch not in self.ARCHITECTURES:
                raise _bad(path, "architectures", f"{arch!r} is not one of "
                           f"{', '.join(self.ARCHITECTURES)} (what llama.cpp's converter maps "
                           f"to {self.GGUF_ARCH!r})")
        hp = {"model_type": config.get("model_type"), "architecture": arch,
              "hidden_size": get_int(v, "hidden_size", path),
              "num_layers": get_int(v, "num_hidden_layers", path),
              "num_heads": get_int(v, "num_attention_heads", path),
              "num_kv_heads": get_int(v, "num_key_value_heads", path),
              "intermediate_size": get_int(v, "intermediate_size", path),
              "vocab_size": get_int(v, "vocab_size", path),
              "max_position_embeddings": get_int(v, "max_position_embeddings", path),
              "tied": get_bool(v, "tie_word_embeddings", path),
              "causal": self.CAUSAL}
        if hp["num_heads"] % hp["num_kv_heads"]:
            raise _bad(path, "num_key_value_heads", f"{hp['num_kv_heads']} does not divide "
                       f"num_attention_heads {hp['num_heads']}")
        if v.get("head_dim") is not None:
            hp["head_dim"] = get_int(v, "head_dim", path)
        elif hp["hidden_size"] % hp["num_heads"]:
            raise _bad(path, "num_attention_heads", f"{hp['num_heads']} does not divide "
                       f"hidden_size {hp['hidden_size']}")
        else:
            hp["head_dim"] = hp["hidden_size"] // hp["num_heads"]
        rp = self.rope(v, path)
        full = rp.get("full_attention", rp)
        hp["rope_theta"] = get_float(full, "rope_theta", path)
        hp["rope_scaling"] = full.get("rope_type")
        hp["norm_eps"] = get_float(v, "rms_norm_eps", path)
        hp["attention_bias"] = bool(v.get("attention_bias", False))
        hp["mlp_bias"] = bool(v.get("mlp_bias", False))
        self.more_hparams(hp, v, rp, path)
        return hp

    def more_hparams(self, hp, v, rp, path):
        """Family-specific hp entries and refusals."""

    # ---- tensors ----------------------------------------------------------------------
    def rename(self, hp, name):
        """The converter's filter_tensors renames (e.g. BERT's 'bert.' prefix); None drops."""
        if name.endswith(SKIPPED_SUFFIXES):
            return None
        return name

    def table(self, hp):
        """{hf name: Entry with formatted names} for every possible tensor of this model."""
        out = {}
        for e in self.TABLE:
            bids = range(hp["num_layers"]) if "{bid}" in e.hf else [None]
            for b in bids:
                out[e.hf.format(bid=b)] = Entry(e.hf.format(bid=b), e.gguf.format(bid=b),
                                                e.dims, e.when, e.kind)
        return out

    def _required(self, hp, e):
        if e.when == "always":
            return True
        if e.when == "untied":
            return not hp["tied"]
        return bool(hp.get(e.when))

    def _mapped(self, hp, shapes, path):
        """[(hf name, renamed, Entry)] in `shapes` order, checked; dropped names left out."""
        tab = self.table(hp)
        seen, out = set(), []
        for name, shape in shapes.items():
            new = self.rename(hp, name)
            if new is None:
                continue
            e = tab.get(new)
            if e is None:
                m = _BID.search(new)
                if m and int(m.group(1)) >= hp["num_layers"]:
                    raise BadInput(f"layer {m.group(1)} is beyond field 'num_hidden_layers' "
                                   f"= {hp['num_layers']}", config_path(path), name)
                raise BadInput(f"unknown tensor for {self.GGUF_ARCH!r} (llama.cpp's converter "
                               "has no name for it)", config_path(path), name)
            want = tuple(_dim(hp, d) for d in e.dims)
            if tuple(shape) != want:
                raise BadInput(f"shape {tuple(shape)} contradicts config fields "
                               f"[{', '.join(_dim_fields(d) for d in e.dims)}] = {list(want)}",
                               config_path(path), name)
            seen.add(new)
            out.append((name, new, e))
        for new, e in tab.items():
            if new not in seen and self._required(hp, e):
                why = "num_hidden_layers" if "{bid}" not in e.hf and _BID.search(new) else None
                field = f"; config.json field {why!r} = {hp['num_layers']}" if why else ""
                if e.when == "untied":
                    field = "; config.json field 'tie_word_embeddings' is false"
                elif e.when != "always":
                    field = f"; config.json field {e.when!r} is true"
                raise BadInput(f"missing tensor{field}", config_path(path), new)
        return out

    def check_tensors(self, hp, shapes, path):
        self._mapped(hp, shapes, path)

    def transform(self, hp, e, shape):
        """(row_order, add) of the GGUF tensor for Entry e."""
        return None, None

    def extra_tensors(self, hp, config):
        """Tensors made from config, written first (generate_extra_tensors)."""
        return []

    def gguf_tensors(self, hp, shapes, config=None):
        out = list(self.extra_tensors(hp, config or {}))
        for name, new, e in self._mapped(hp, shapes, None):
            order, add = self.transform(hp, e, shapes[name])
            shape = tuple(shapes[name])
            if order is not None and hasattr(order, "n"):
                shape = (order.n,) + shape[1:]
            out.append(TensorMap(name, e.gguf, order, add, e.kind == "norm", shape))
        return out

    def gguf_kv(self, hp, config):
        raise NotImplementedError

    # ---- APR ----------------------------------------------------------------------------
    def apr_metadata(self, hp, config):
        md = {"architecture": hp["model_type"], "hidden_size": hp["hidden_size"],
              "num_layers": hp["num_layers"], "num_heads": hp["num_heads"],
              "num_kv_heads": hp["num_kv_heads"], "intermediate_size": hp["intermediate_size"],
              "vocab_size": hp["vocab_size"],
              "max_position_embeddings": hp["max_position_embeddings"],
              "head_dim": hp["head_dim"], "rms_norm_eps": float(hp["norm_eps"])}
        if hp.get("rope_theta") is not None:
            md["rope_theta"] = float(hp["rope_theta"])
            md["rope_type"] = 2      # Hugging Face layout kept: split-halves (NEOX) rotation
        if hp["tied"]:
            md["tied_embeddings"] = True
        return md

    EMBEDDING = "model.embed_tokens.weight"
    LM_HEAD = "lm_head.weight"

    def apr_tensors(self, hp, shapes):
        out = [TensorMap(name, name, norm=e.kind == "norm", shape=tuple(shapes[name]))
               for name, new, e in self._mapped(hp, shapes, None)]
        if self.LM_HEAD and not any(t.name == self.LM_HEAD for t in out):
            # as Aprender's exporter writes a tied head: its shape, no data (the runtime reads
            # the embedding's bytes; a copy would double a small model's largest tensor)
            out.append(TensorMap(self.EMBEDDING, self.LM_HEAD,
                                 shape=tuple(shapes[self.EMBEDDING]), tied=True))
        return out
