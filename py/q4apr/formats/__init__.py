"""One module per file format: each reads into a Model, the output formats also write.

open_model is the one door in: it tells the formats apart by their first bytes, and a
Hugging Face model folder (or its files listed one by one) apart from a lone weights file.
"""

import os

from ..errors import BadInput


def sniff(path):
    """The format of a file, by its first bytes (then its name)."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise BadInput(f"cannot read ({e.strerror or e})", path) from None
    if not head:
        raise BadInput("the file is empty", path)
    if head[:4] == b"GGUF":
        return "gguf"
    if head[:4] == b"APR\0":
        return "apr"
    if head[:6] == b"\x93NUMPY":
        return "npy"
    if head[:4] == b"PK\x03\x04" or head[:4] == b"PK\x05\x06":
        return "npz"
    low = path.lower()
    if low.endswith(".json"):
        return "index"
    if low.endswith(".safetensors") or (len(head) >= 9 and head[8:9] == b"{"):
        return "safetensors"
    if head[:3] in (b"APR",) or low.endswith(".apr"):
        return "apr"
    raise BadInput("not a model file q4apr knows (safetensors, GGUF, APR, .npy, .npz)", path)


def open_model(paths):
    """Open one model: a Hugging Face folder (or its files), one weights file, or
    safetensors shards with their index."""
    from . import apr, gguf, numpy_files, safetensors
    from .. import folder

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise BadInput("no input file given")
    if folder.is_model_folder(paths):
        return folder.open_folder(paths)
    kinds = [sniff(p) for p in paths]
    if set(kinds) <= {"safetensors", "index"}:
        return safetensors.read(paths, kinds)
    if len(paths) > 1:
        raise BadInput("give one model file (or safetensors shards with their index); got "
                       + ", ".join(os.path.basename(p) for p in paths))
    reader = {"gguf": gguf.read, "apr": apr.read, "npy": numpy_files.read_npy,
              "npz": numpy_files.read_npz}[kinds[0]]
    return reader(paths[0])
