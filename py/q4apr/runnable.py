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
from .model import TensorEntry


def output_entries(model, fmt):
    """The TensorEntry of every output tensor, renamed and transformed for `fmt`."""
    d = model.description
    if d is None:
        return list(model.tensors)
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
    kv = [("general.architecture", 8, d.family.GGUF_ARCH)]
    kv += general
    kv += [item for item in d.family.gguf_kv(d.hparams, d.config)
           if item[0] != "general.architecture"]
    return kv + tokenizer.gguf_kv(d.tokenizer)   # with the family's quirks (tokenizer.read)


def apr_metadata(model):
    """Aprender's metadata of a folder: architecture, hyper-parameters, tokenizer."""
    from . import tokenizer

    d = model.description
    meta = {"name": d.name, "model_type": d.hparams["model_type"],
            "original_format": "safetensors"}
    meta.update(d.family.apr_metadata(d.hparams, d.config))
    if d.hparams.get("tied"):
        meta["tied_embeddings"] = True
    meta.update(tokenizer.apr_metadata(d.tokenizer))
    return meta


def runtimes(model, fmt):
    """Which runtime can load the output, and why not where one cannot."""
    d = model.description
    if d is None:
        why = ("a container of tensors: no architecture, hyper-parameters or tokenizer "
               "(give the model's folder, with config.json and tokenizer.json, for a file "
               "that runs)")
        return [{"runtime": "llama.cpp" if fmt == "gguf" else "Aprender", "loads": False,
                 "why": why}]
    if fmt == "gguf":
        return [{"runtime": "llama.cpp", "loads": True,
                 "why": f"architecture {d.family.GGUF_ARCH}, llama.cpp's tensor names and "
                        "key/values, embedded tokenizer"}]
    if not d.hparams.get("causal", True):
        return [{"runtime": "Aprender", "loads": False,
                 "why": f"{d.hparams['model_type']} is an encoder: Aprender's runtime has no "
                        "path for it (the file is a valid container with its metadata)"}]
    return [{"runtime": "Aprender", "loads": True,
             "why": f"architecture {d.hparams['model_type']}, hyper-parameters, rope_type, "
                    "embedded tokenizer, LM head present, norms F32"}]
