"""inspect (what a file holds) and verify (is it intact), as data for the CLI and page."""

import os

import numpy as np

from . import codecs
from .dtypes import numel
from .errors import BadInput, Q4Error
from .formats import open_model


def inspect_model(model):
    """Header facts, metadata and the tensor table of an opened model."""
    info = {
        "format": model.format,
        "files": [os.path.basename(p) for p in model.paths],
        "bytes": sum(os.path.getsize(p) for p in model.paths),
        "name": model.name,
        "metadata": model.metadata,
        "params": sum(numel(t.shape) for t in model.tensors if not t.tied_to),   # once
        "tensors": [dict({"name": t.name, "shape": list(t.shape), "dtype": t.dtype.name,
                          "nbytes": t.nbytes, "offset": t.offset},
                         **({"tied_to": t.tied_to} if t.tied_to else {}))
                    for t in model.tensors],
    }
    if model.description is not None:
        info["model"] = model.description.summary()
    if model.format == "apr":
        info["flags"] = model.extra.get("flags")
    if model.format == "gguf":
        info["version"] = model.extra.get("version")
        info["alignment"] = model.extra.get("alignment")
    return info


def verify_file(paths, chunk_bytes=4 << 20):
    """Open (structure, checksums), then read every tensor and check its block scales."""
    checks = []

    def check(name, ok, detail=""):
        checks.append({"name": name, "ok": bool(ok), "detail": detail})

    try:
        model = open_model(paths)
    except Q4Error as e:
        check("structure", False, e.message)
        return {"ok": False, "checks": checks}
    check("structure", True, f"{model.format}, {len(model.tensors)} tensors")
    if model.format == "apr":
        check("header and footer checksums", True, "CRC32 match")
    buf = bytearray(max(chunk_bytes, 36) // 36 * 36)
    for t in model.tensors:
        try:
            bad = _check_tensor(t, buf)
        except Q4Error as e:
            check(f"tensor {t.name}", False, e.message)
            continue
        check(f"tensor {t.name}", not bad, bad or f"{t.dtype.name} {list(t.shape)}, "
                                                  f"{t.nbytes} bytes readable")
    return {"ok": all(c["ok"] for c in checks), "checks": checks}


def _check_tensor(t, buf):
    """'' if the tensor's bytes read back and its Q4 scales are finite, else what is wrong."""
    codec = codecs.CODECS.get(t.dtype.name)
    block = t.dtype.type_size if codec else 1
    step = len(buf) // block * block
    nonfinite = 0
    with t.open() as f:
        left = t.nbytes
        while left:
            k = min(step, left)
            view = memoryview(buf)[:k]
            got = f.readinto(view)
            if got != k:
                raise BadInput("data is truncated", t.path, t.name)
            if codec:
                nonfinite += int(np.count_nonzero(~np.isfinite(codecs.scales_f16(codec, view))))
            left -= k
    return f"{nonfinite} block scale(s) are NaN or infinite" if nonfinite else ""
