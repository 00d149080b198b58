"""What happens to one tensor on its way out: a new name, rows reordered, a constant added.

These mirror llama.cpp's converter (convert_hf_to_gguf.py + conversion/*.py): the LLaMA
Q/K row permutation, Gemma's norm + 1, Gemma 3's embedding cut to the tokenizer's size,
and Phi-3's rope factor tensors made from config.json values.
"""

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np


F16 = "F16"


@dataclass(frozen=True)
class TensorMap:
    """One output tensor.

    src: the Hugging Face tensor read (None for a tensor made from config: see value)
    name: the output name
    row_order: callable(shape) -> np.ndarray of source row indices, one per output row
        (permutes rows, or keeps the first n rows); None keeps the rows as stored
    add: a constant added to every value. The converter adds it in the tensor's own
        torch dtype after widening BF16 to F32: in F32 for F32/BF16 sources, in F16 for
        F16 sources (the sum is rounded to F16); apply() does exactly that
    norm: a norm weight/bias: APR stores it as F32 (Aprender reads norms as raw f32)
    shape: the output shape, numpy order ([out, in])
    value: for src None, the tensor's F32 values (a tuple), e.g. Phi-3 rope factors
    tied: an LM head tied to src (the embedding): 0 data bytes, its full shape (APR)
    """
    src: Optional[str]
    name: str
    row_order: Optional[Callable] = None
    add: Optional[float] = None
    norm: bool = False
    shape: tuple = ()
    value: Optional[tuple] = None
    tied: bool = False


def apply(tm, data, src_dtype=None):
    """The output values of `tm` from its full source array `data` (as float32 or float16),
    as the converter computes them with --outtype f32. src_dtype: "F16", "BF16", "F32"."""
    if tm.src is None:
        return np.asarray(tm.value, dtype=np.float32).reshape(tm.shape)
    x = np.asarray(data)
    if tm.row_order is not None:
        x = x[tm.row_order(x.shape)]
    x = x.astype(np.float32)
    if tm.add is not None:
        x = x + np.float32(tm.add)
        if src_dtype == F16:
            x = x.astype(np.float16).astype(np.float32)
    return x


def permute_rows(n_head):
    """LlamaModel.permute as row indices: within each head, interleave the two halves, so
    that llama.cpp's adjacent-pairs rotation applies to Hugging Face's split-halves Q/K."""
    def order(shape):
        rows = shape[0]
        if rows % (2 * n_head):
            raise ValueError(f"{rows} rows do not split into {n_head} heads of pairs")
        return (np.arange(rows).reshape(n_head, 2, rows // n_head // 2)
                .swapaxes(1, 2).reshape(rows))
    order.n_head = n_head
    return order


def first_rows(n):
    """Keep rows [0, n): Gemma 3's token embedding cut to the tokenizer's real size."""
    def order(shape):
        if n > shape[0]:
            raise ValueError(f"cannot keep {n} rows of {shape[0]}")
        return np.arange(n)
    order.n = n
    return order


def converter_order(parts):
    """Tensor names in the order the converter writes them: parts (safetensors file names)
    sorted, names sorted within each part (gguf-py SafetensorsLocal sorts them), a name
    seen twice keeps its first place. parts: {file name: iterable of tensor names}."""
    seen = {}
    for part in sorted(parts):
        for name in sorted(parts[part]):
            seen.setdefault(name, part)
    return list(seen)
