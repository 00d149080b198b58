"""NaN and Inf in the data a run writes, found chunk by chunk on what was read anyway.

np.isfinite into a reused boolean buffer, then .all(): measured on a 4 MiB F32 chunk it
is the cheapest test both natively (0.1 ms) and under Pyodide (1.3 ms; an AND of the
exponent bits plus an integer max takes 2.1 ms there, min+max of the floats 3.3 ms).
Only a chunk that holds a non-finite value pays for the count and the index.  BF16 has
no numpy type, and native numpy has no fast F16 isfinite (4 ms per 1M values, against
0.07 ms for an AND of the exponent bits and an integer max; under Pyodide it is the
other way round, 2.3 ms against 5.4 ms): those are tested on their exponent bits.

Block types passed through as stored (Q4_0, APR Q4, Q8_0, Q4_K, Q6_K, APR Q8) are
judged by their float scales: the codes are integers, always finite, and a NaN or
infinite scale makes every element of its block decode to NaN or ±Inf (0 × Inf is NaN),
so all of the block's elements are counted and its first element is the index named.
"""

import sys

import numpy as np

FLOATS = ("F32", "F16", "BF16", "F64")
# 16-bit types tested on their bits: dtype name -> exponent mask
BY_BITS = {"BF16": 0x7F80} if sys.platform == "emscripten" else {"BF16": 0x7F80, "F16": 0x7C00}
# block dtype name -> byte offsets of the f16 scales in a block (d, and dmin for K-quants)
BLOCK_SCALES = {"Q4_0": (0,), "APR_Q4": (0,), "Q8_0": (0,), "Q4_K": (0, 2), "Q6_K": (208,)}


def scannable(dtype):
    return dtype.name in FLOATS or dtype.name in BLOCK_SCALES or dtype.name == "APR_Q8"


def scan(dtype, data, scratch, start=0, n_total=0):
    """None if the bytes `data` (whole elements or blocks of `dtype`, starting `start` bytes
    into the tensor) hold no non-finite value, else (count, first flat index within the
    chunk, what) with `what` the message's subject, e.g. "non-finite weight nan".

    `scratch`: a contiguous array of at least len(data) bytes (overwritten).
    `n_total`: the tensor's element count (APR Q8 has one scale for the whole tensor).
    """
    name = dtype.name
    if name in FLOATS:
        if name in BY_BITS:
            exp = BY_BITS[name]
            bits = np.frombuffer(data, "<u2")
            tmp = scratch.reshape(-1).view(np.uint16)[: bits.size]
            np.bitwise_and(bits, np.uint16(exp), out=tmp)
            if not bits.size or tmp.max() < exp:
                return None
            ok = tmp != exp
            values = np.frombuffer(data, "<f2") if name == "F16" else \
                (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)
        else:
            values = np.frombuffer(data, dtype.numpy)
            ok = scratch.reshape(-1).view(np.bool_)[: values.size]
            np.isfinite(values, out=ok)
            if ok.all():
                return None
        first = int(np.argmin(ok))
        return values.size - int(np.count_nonzero(ok)), first, \
            f"non-finite weight {values[first]}"
    if name == "APR_Q8":
        if start or len(data) < 4:
            return None
        d = np.frombuffer(data, "<f4", 1)[0]
        return None if np.isfinite(d) else (n_total, 0, f"non-finite tensor scale {d}")
    offsets = BLOCK_SCALES.get(name)
    if offsets is None:
        return None
    blocks = np.frombuffer(data, np.uint8).reshape(-1, dtype.type_size)
    scales = [blocks[:, off:off + 2].view("<f2")[:, 0] for off in offsets]
    ok = np.logical_and.reduce([np.isfinite(s) for s in scales])
    if ok.all():
        return None
    first = int(np.argmin(ok))
    scale = next(s[first] for s in scales if not np.isfinite(s[first]))
    count = (ok.size - int(np.count_nonzero(ok))) * dtype.block_size
    if not ok[-1]:   # APR Q4's last block may be short: its padding is no value
        end = (start // dtype.type_size + ok.size) * dtype.block_size
        count -= max(0, end - n_total)
    return count, first * dtype.block_size, f"non-finite block scale {scale}"
