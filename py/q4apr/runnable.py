"""What each output format writes from a model folder's description, so that the file runs.

GGUF gets llama.cpp's names, weight transforms and key/values (what its converter
writes); APR keeps Hugging Face's names and gets Aprender's metadata and embedded
tokenizer. A lone weights file has no description: its tensors go out as they are.
"""

import dataclasses
import io

import numpy as np

from .dtypes import F32
from .errors import BadInput
from .ggufvalues import STRING
from .model import TensorEntry


def output_entries(model, fmt):
    """The TensorEntry of every output tensor, renamed and transformed for `fmt`."""
    d = model.description
    if d is None:   # a tied head of 0 bytes (an APR's) has no place in a GGUF: llama.cpp ties
        return [t for t in model.tensors if not (fmt == "gguf" and t.tied_to)]
    by_name = {e.name: e for e in model.tensors}
    shapes = {e.name: e.shape for e in model.tensors}
    maps = (d.family.gguf_tensors(d.hparams, shapes, d.config) if fmt == "gguf"
            else d.family.apr_tensors(d.hparams, shapes))
    out = []
    for m in maps:
        if m.src is None:   # made from config.json values (e.g. Phi-3's rope factors)
            out.append(_made_entry(m, d.files.get("config.json", model.paths[0])))
            continue
        src = by_name.get(m.src)
        if m.tied and src is not None:
            out.append(TensorEntry(m.name, tuple(m.shape), F32, 0, src.path,
                                   opener=lambda: io.BytesIO(b""), tied_to=m.src))
            continue
        if src is None:
            raise BadInput(f"the {d.family.GGUF_ARCH} layout needs this tensor but the weights "
                           "lack it", model.paths[0], m.src)
        shape, nbytes, order = src.shape, src.nbytes, None
        if m.row_order is not None:
            order = np.asarray(m.row_order(src.shape), dtype=np.int64)
            row_bytes = src.nbytes // src.shape[0] if src.shape[0] else 0
            shape, nbytes = (len(order),) + tuple(src.shape[1:]), len(order) * row_bytes
        out.append(dataclasses.replace(src, name=m.name, shape=shape, nbytes=nbytes,
                                       row_order=order, add=m.add,
                                       source=src.name if m.name != src.name else None,
                                       keep_f32=_keep_f32(m, src)))
    return out


def _made_entry(m, path):
    """An F32 tensor whose values come from the config, served from memory."""
    data = np.asarray(m.value, dtype="<f4").reshape(m.shape).tobytes()
    return TensorEntry(m.name, tuple(m.shape), F32, len(data), path,
                       opener=lambda: io.BytesIO(data), source="config.json",
                       keep_f32="made from config.json values")


def _keep_f32(m, src):
    """Norms and other 1-D tensors stay F32 in a runnable file, even with --pure:
    the runtimes read norms as raw f32, and llama-quantize never quantizes 1-D tensors."""
    if not src.dtype.is_float:
        return None
    if getattr(m, "norm", False):
        return "norm weight (runtimes read it as F32)"
    if len(src.shape) < 2:
        return "1-D tensor (runtimes read it as F32)"
    return None


def gguf_kv(model, general):
    """Key/values of a GGUF from a folder: general.*, the architecture's, the tokenizer's."""
    from . import tokenizer

    d = model.description
    kv = [("general.architecture", STRING, d.family.GGUF_ARCH)]
    kv += general
    kv += [item for item in d.family.gguf_kv(d.hparams, d.config)
           if item[0] != "general.architecture"]
    return kv + tokenizer.gguf_kv(d.tokenizer)   # with the family's quirks (tokenizer.read)


def apr_metadata(model):
    """Aprender's metadata of a folder: architecture, hyper-parameters, tokenizer, each key
    once and of the type its typed parser wants (one wrong field drops all of it)."""
    from . import tokenizer

    d = model.description
    hp = d.hparams
    meta = {"name": d.name, "model_type": hp["model_type"],
            "original_format": "safetensors"}
    meta.update(d.family.apr_metadata(hp, d.config))
    if hp.get("architecture") is not None:   # what Aprender's importer writes from config.json
        meta["hf_architecture"] = hp["architecture"]
    meta["hf_model_type"] = hp["model_type"]
    for key in ("license", "data_source", "data_license"):   # null: not known here
        meta.setdefault(key, None)
    meta.update(tokenizer.apr_metadata(d.tokenizer))
    return meta


# Aprender's typed-metadata gates (its runtime refuses a model outside them)
APRENDER_GATES = (("hidden_size", 1, 65536), ("num_layers", 1, 256), ("num_heads", 1, 256),
                  ("vocab_size", 1, 1_000_000), ("rope_theta", 1.0, 1e8),
                  ("rms_norm_eps", 1e-10, 0.01))
# dtypes `apr validate` cannot decode (it fails the whole file)
APRENDER_UNDECODABLE = ("F64", "I32", "I64", "I8", "U8")
# Aprender's runtime runs these in fused kernels, straight from the file
APRENDER_FAST = ("Q4_K", "Q6_K")
# ... and dequantizes these to F32 when it loads (legacy codes 128 / 129)
APRENDER_DEQUANTIZED = ("APR_Q4", "APR_Q8")


def runtimes(model, fmt, dtypes=()):
    """Which runtime can load the output, and why not where one cannot. dtypes: the output
    tensors' types (their names), for what Aprender does with them."""
    d = model.description
    names = sorted(set(dtypes))
    if d is None:
        why = ("a container of tensors: no architecture, hyper-parameters or tokenizer "
               "(give the model's folder, with config.json and tokenizer.json, for a file "
               "that runs)")
        bad = [t for t in names if t in APRENDER_UNDECODABLE]
        if fmt == "apr" and bad:
            why += f"; `apr validate` cannot decode its {', '.join(bad)} tensors"
        return [{"runtime": "llama.cpp" if fmt == "gguf" else "Aprender", "loads": False,
                 "verdict": "cannot run it", "why": why}]
    if fmt == "gguf":
        return [{"runtime": "llama.cpp", "loads": True, "verdict": "can load it",
                 "why": f"architecture {d.family.GGUF_ARCH}, llama.cpp's tensor names and "
                        "key/values, embedded tokenizer"}]
    hp = d.hparams
    container = "the file is a valid container with the metadata and tokenizer it reads"
    if not hp.get("causal", True):
        return [{"runtime": "Aprender", "loads": False, "verdict": "valid container",
                 "why": f"{hp['model_type']} is an encoder: Aprender's runtime has no "
                        f"path for it ({container})"}]
    if d.family.GGUF_ARCH == "gemma3":
        return [{"runtime": "Aprender", "loads": False, "verdict": "valid container",
                 "why": "Aprender's runtime has not been shown to run Gemma 3 (it adds no +1 "
                        "to Gemma's norm weights, and its contract gate is reported to refuse "
                        f"gemma3): {container}"}]
    meta = d.family.apr_metadata(hp, d.config)
    for key, lo, hi in APRENDER_GATES:
        v = meta.get(key)
        if v is not None and not lo <= v <= hi:
            return [{"runtime": "Aprender", "loads": False, "verdict": "would refuse it",
                     "why": f"{key} = {v} is outside [{lo:g}, {hi:g}], the range Aprender's "
                            f"runtime accepts ({container})"}]
    head = ("tied head (0 bytes, tied_embeddings)" if hp.get("tied")
            else "LM head present")
    why = (f"architecture {hp['model_type']}, hyper-parameters, rope_type, embedded "
           f"tokenizer, {head}, norms F32")
    slow = [t for t in names if t in APRENDER_DEQUANTIZED]
    fast = [t for t in names if t in APRENDER_FAST]
    verdict = "can load it"
    if slow:
        verdict = "loads it slowly"
        why += (f"; {' / '.join(t.replace('_', ' ') for t in slow)} is dequantized to F32 "
                "when it loads (8x the memory; --type Q4_K_M runs in its fused kernels)")
    elif fast:
        verdict = "runs it fast"
        why += f"; {' / '.join(fast)} run in its fused kernels, straight from the file"
    return [{"runtime": "Aprender", "loads": True, "verdict": verdict, "why": why}]
