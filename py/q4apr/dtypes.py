"""The element types q4apr knows, with their codes in each file format.

One table, so that each format module maps its own codes through it and the
pipeline can ask sizes and float-ness without knowing where a tensor came from.
"""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DType:
    name: str
    block_size: int          # elements per block (1 for plain types)
    type_size: int           # bytes per block
    numpy: str | None        # numpy dtype of one element, for plain types
    is_float: bool           # can be decoded to float32 and quantized
    apr: int | None          # APR v2 code
    gguf: int | None         # GGML type code
    safetensors: str | None  # safetensors dtype string

    def nbytes(self, n_elements):
        """Bytes of n elements; a short last block counts whole."""
        return -(-n_elements // self.block_size) * self.type_size

    @property
    def quantized(self):
        return self.block_size > 1


_TABLE = [
    DType("F32", 1, 4, "<f4", True, 0, 0, "F32"),
    DType("F16", 1, 2, "<f2", True, 1, 1, "F16"),
    DType("BF16", 1, 2, "<u2", True, 30, 30, "BF16"),
    DType("F64", 1, 8, "<f8", True, 3, 28, "F64"),
    DType("I8", 1, 1, "i1", False, 6, 24, "I8"),
    DType("U8", 1, 1, "u1", False, 7, None, "U8"),
    DType("I16", 1, 2, "<i2", False, None, 25, "I16"),
    DType("I32", 1, 4, "<i4", False, 4, 26, "I32"),
    DType("I64", 1, 8, "<i8", False, 5, 27, "I64"),
    DType("BOOL", 1, 1, "u1", False, None, None, "BOOL"),
    DType("APR_Q4", 32, 18, None, True, 128, None, None),
    DType("APR_Q8", 0, 0, None, False, 129, None, None),  # whole-tensor scale: size is 4 + n
    DType("Q4_0", 32, 18, None, True, None, 2, None),
    DType("Q8_0", 32, 34, None, True, None, 8, None),
    DType("Q5_0", 32, 22, None, True, None, 6, None),
    DType("Q4_K", 256, 144, None, True, 12, 12, None),    # APR: raw GGML super-blocks, flattened
    DType("Q6_K", 256, 210, None, True, 14, 14, None),
]

BY_NAME = {d.name: d for d in _TABLE}
BY_APR = {d.apr: d for d in _TABLE if d.apr is not None}
BY_APR[8] = BY_NAME["APR_Q4"]   # the older code for APR Q4
BY_APR[9] = BY_NAME["APR_Q8"]
BY_GGUF = {d.gguf: d for d in _TABLE if d.gguf is not None}
BY_SAFETENSORS = {d.safetensors: d for d in _TABLE if d.safetensors}

F32, F16, BF16 = BY_NAME["F32"], BY_NAME["F16"], BY_NAME["BF16"]
APR_Q4, Q4_0, Q8_0 = BY_NAME["APR_Q4"], BY_NAME["Q4_0"], BY_NAME["Q8_0"]


def tensor_nbytes(dtype, shape):
    """Byte size of a tensor of this dtype and shape (APR Q4 flattens: blocks span rows)."""
    n = 1
    for d in shape:
        n *= d
    if dtype.name == "APR_Q8":
        return 4 + n
    if dtype.quantized and dtype.name not in ("APR_Q4",):
        # GGML block types quantize rows: each row is a whole number of blocks.
        rows = n // shape[-1] if shape and shape[-1] else 0
        return rows * dtype.nbytes(shape[-1]) if shape else dtype.nbytes(n)
    return dtype.nbytes(n)


# Aprender's 2-D K-quant layout: its writer (quantize_q4_k_matrix / quantize_q6_k_matrix)
# stores each row on its own, zero padded to whole 256-value super-blocks, and its runtime's
# matmul reads them so. Rows that are whole super-blocks are the flat (GGML) layout anyway.
ROW_PADDED = ("Q4_K", "Q6_K")


def padded_row(dtype, shape):
    """(cols, padded cols) when an APR tensor of this dtype and shape is stored row by row
    with zero padding (a 2-D Q4_K / Q6_K whose rows are not whole super-blocks), else None."""
    if dtype.name not in ROW_PADDED or len(shape) != 2 or not shape[1] or shape[1] % dtype.block_size == 0:
        return None
    cols = int(shape[1])
    return cols, -(-cols // dtype.block_size) * dtype.block_size


def apr_nbytes(dtype, shape):
    """Byte size of an APR tensor: flat blocks (APR flattens), except Aprender's row layout of
    2-D K-quants (padded_row) and APR Q8's whole-tensor scale."""
    if dtype.name == "APR_Q8":
        return tensor_nbytes(dtype, shape)
    pad = padded_row(dtype, shape)
    if pad is not None:
        return int(shape[0]) * dtype.nbytes(pad[1])
    return dtype.nbytes(numel(shape))


def numel(shape):
    n = 1
    for d in shape:
        n *= int(d)
    return n


def from_numpy(dt):
    """Our DType for a numpy dtype (little-endian or byte-order free), or None."""
    dt = np.dtype(dt)
    if dt.byteorder == ">":
        return None
    return {
        "f4": F32, "f2": F16, "f8": BY_NAME["F64"], "i1": BY_NAME["I8"], "u1": BY_NAME["U8"],
        "i2": BY_NAME["I16"], "i4": BY_NAME["I32"], "i8": BY_NAME["I64"], "b1": BY_NAME["BOOL"],
    }.get(f"{dt.kind}{dt.itemsize}")
