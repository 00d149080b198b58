"""Block codecs: APR Q4 (Aprender dtype 128), GGML Q4_0, Q8_0, Q5_0, Q4_K and
Q6_K (the K-quants are also APR codes 12 and 14), plus F16/BF16.

Written in the style of gguf-py's ``gguf/quants.py``: one class per block
format with ``quantize_blocks`` / ``dequantize_blocks`` on ``(n, block_size)``
float32 and ``(n, type_size)`` uint8 arrays, in plain vectorised numpy (stdlib
+ numpy >= 2.0 only, so that it runs under Pyodide too).

The streaming pipeline calls the module-level functions on flat float32
chunks: ``quantize(codec, x)``, ``dequantize(codec, data, n)`` and
``scales_f16(codec, data)``.

Why the code looks the way it does:

* Speed.  numpy's per-row reductions (``a.max(axis=1)`` over rows of 32) and
  ufuncs on ``(n, 16)`` slices pay a call per row, which is where gguf-py
  spends its time.  Here the data is processed in cache-sized chunks, block
  maxima come from five 1-D sliding-window ``maximum`` passes over the f32 bit
  patterns read as int32, the packing is done on wide integer views, and every
  temporary is allocated once per call and reused through ``out=``.  Under
  Pyodide (no SIMD) float ``abs``/``maximum`` and float->uint8 casts are very
  slow while integer ops and float->int8/int16 casts are not, so the kernels
  stick to the latter.
* Exactness.  The fast path is bit-exact only where the arithmetic is tame
  (normal, finite scales).  Blocks outside it (all-zero blocks, ties of
  magnitude with opposite signs, scales in f32's subnormal range, NaN, Inf)
  are rare and are redone by a slow path that mirrors the reference
  arithmetic step by step.
* Non-finite input never raises (all floating point warnings are silenced
  inside the codecs).  NaN or Inf in a block makes that block's scale
  non-finite (NaN or +-Inf), and a finite block whose scale overflows f16
  (max|x| > ~458,000 for APR Q4, ~524,000 for Q4_0) gets an Inf scale: the
  pipeline notices by looking at ``scales_f16``.  The nibbles of such blocks
  are deterministic but meaningless.
"""

from __future__ import annotations

import sys

import numpy as np

__all__ = [
    "AprQ4", "Q4_0", "Q8_0", "Q5_0", "Q4_K", "Q6_K", "CODECS", "get_codec", "nbytes", "n_blocks",
    "quantize", "dequantize", "scales_f16",
    "f32_to_f16", "f16_to_f32", "f32_to_bf16", "bf16_to_f32",
]

_F32 = np.float32
_WASM = sys.platform == "emscripten"                # Pyodide
_MAX32 = float(np.finfo(np.float32).max)
_F16_MIN_NORMAL = 2.0 ** -14

# Blocks per inner chunk: 4096 * 32 * 4 bytes = 512 KiB of f32, so the few
# temporaries stay close to a core's L2 cache.
_CHUNK_BLOCKS = 4096

# Largest f32 below 0.5: trunc(t + copysign(_HALF_DOWN, t)) rounds half away
# from zero exactly for every finite f32 t (t + 0.5 would round 0.49999997 up).
_HALF_DOWN = np.nextafter(_F32(0.5), _F32(0.0))


def _errstate():
    return np.errstate(all="ignore")


def _block_max(src: np.ndarray, t1: np.ndarray, t2: np.ndarray, fn) -> np.ndarray:
    """Per-block ``fn``-reduction (np.maximum or np.minimum) of a flat int32
    array of whole 32-blocks: (n/32,), under Pyodide a view into ``t1``.

    Natively ``fn.reduceat`` at every 32nd index: one pass, ~2.5x faster than
    ``src.reshape(-1, 32).max(axis=1)`` (a call per row) and 1.3x the five
    sliding-window passes used before.  Under Pyodide (no SIMD) the work counts,
    not the calls: there five halving passes over even/odd strided views (n/2 +
    n/4 + ... = n elements in all) beat the row-wise reduce (~1.35x).  Integer
    max/min are exact, so all give the same values.  ``src`` is only read before
    t2 is written (it may be ``t2``).
    """
    if _WASM:
        m = src.size
        fn(src[0::2], src[1::2], out=t1[: m // 2])
        fn(t1[0:m // 2:2], t1[1:m // 2:2], out=t2[: m // 4])
        fn(t2[0:m // 4:2], t2[1:m // 4:2], out=t1[: m // 8])
        fn(t1[0:m // 8:2], t1[1:m // 8:2], out=t2[: m // 16])
        fn(t2[0:m // 16:2], t2[1:m // 16:2], out=t1[: m // 32])
        return t1[: m // 32]
    return fn.reduceat(src, _block_starts(src.size))


def _block_starts(m: int) -> np.ndarray:
    """0, 32, 64, ... below m (reduceat's indices), kept for the next chunk of that size."""
    starts = _STARTS.get(m)
    if starts is None:
        if len(_STARTS) > 8:
            _STARTS.clear()
        starts = _STARTS[m] = np.arange(0, m, 32, dtype=np.intp)
    return starts


_STARTS: dict = {}


# The reductions run on the f32 bit patterns as int32, not on floats: integer
# max/min are as fast as float ones natively and 5-50x faster under Pyodide
# (whose float maximum/abs take a slow NaN-aware path), and the order is exact.
_ABS_MASK = np.int32(0x7FFFFFFF)


def _block_absmax(x: np.ndarray, t1: np.ndarray, t2: np.ndarray) -> np.ndarray:
    """max|x| of every block as float32 (n/32,).  With the sign bit cleared, f32
    bit patterns order like their values, and every NaN pattern sorts above
    +Inf, so a NaN in the block gives a NaN."""
    a, b = t1.view(np.int32), t2.view(np.int32)
    np.bitwise_and(x.view(np.int32), _ABS_MASK, out=b)
    return _block_max(b, a, b, np.maximum).copy().view(np.float32)


def _order_keys(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """int32 keys ordered like the f32 values (-0.0 just below +0.0; a NaN sorts
    beyond the Inf of its sign): negative floats get their magnitude bits
    flipped.  The map is its own inverse."""
    s = x.view(np.int32)
    k = out.view(np.int32)
    np.right_shift(s, np.int32(31), out=k)
    np.bitwise_and(k, _ABS_MASK, out=k)
    np.bitwise_xor(k, s, out=k)
    return k


def _void_rows(arr: np.ndarray, offset: int, size: int, stride: int, n: int) -> np.ndarray:
    """n opaque items of ``size`` bytes at ``offset + i*stride`` in contiguous arr.

    Copying between such 1-D views is one strided memcpy loop, where the
    equivalent (n, size) uint8 slices would pay a call per row.
    """
    return np.ndarray((n,), dtype=np.dtype((np.void, size)), buffer=arr, offset=offset, strides=(stride,))


def _write_blocks(out2d: np.ndarray, d16: np.ndarray, payload: np.ndarray) -> None:
    """Store f16 scales (n,) and payload (n,) V<body> items into (n, 2+body) blocks."""
    n, ts = out2d.shape
    np.ndarray((n,), dtype="<u2", buffer=out2d, offset=0, strides=(ts,))[...] = d16.view("<u2")
    _void_rows(out2d, 2, ts - 2, ts, n)[...] = payload


def _to_f16(d: np.ndarray, all_ok: bool) -> np.ndarray:
    """f32 scales -> f16 (round to nearest even, overflow -> Inf).  A NaN scale
    is written as the canonical quiet NaN 0x7E00: NaN bits out of arithmetic
    differ between platforms (x86 vs WebAssembly), the output bytes must not."""
    d16 = d.astype(np.float16)
    if not all_ok:
        d16.view(np.uint16)[np.isnan(d16)] = 0x7E00
    return d16


def _scales_f32(blocks: np.ndarray) -> np.ndarray:
    """The f16 scales (first two bytes of each block) of contiguous (n, ts)
    blocks as a float32 (n,) array."""
    n, ts = blocks.shape
    return np.ndarray((n,), dtype="<f2", buffer=blocks, offset=0, strides=(ts,)).astype(np.float32)


def _payload(blocks: np.ndarray) -> np.ndarray:
    """Bytes 2.. of every block of contiguous (n, ts) blocks, gathered into a
    contiguous uint8 array (one strided memcpy loop)."""
    n, ts = blocks.shape
    out = np.empty(n * (ts - 2), np.uint8)
    _void_rows(out, 0, ts - 2, ts - 2, n)[...] = _void_rows(blocks, 2, ts - 2, ts, n)
    return out


def _decode_into(y: np.ndarray, q: np.ndarray, d16: np.ndarray, tmp8: np.ndarray) -> None:
    """y = (q - 8) * d16 per 32-block, the values of the _dequantize_chunk kernels (q - 8 is
    exact in int8 as in f32): the round trip taken from the codes before they are packed.
    q: the codes 0..15 (int8 or uint8); tmp8: int8 scratch of q's size."""
    np.subtract(q.view(np.int8), np.int8(8), out=tmp8)
    np.copyto(y, tmp8, casting="unsafe")
    y *= np.repeat(d16.astype(np.float32), 32)


# name -> codec class, filled as each class is defined (_Codec.__init_subclass__)
CODECS: dict[str, type["_Codec"]] = {}


class _Codec:
    """Common block bookkeeping; subclasses implement the per-chunk kernels. A subclass with
    a name registers itself in CODECS (as gguf-py's quants.py registers its classes)."""

    name: str = ""
    block_size: int = 32
    type_size: int = 0
    allows_partial_block: bool = False
    f16_scales: tuple = (0, 1)           # (byte offset, count) of the f16 scales in a block
    fuses_dequantize: bool = False       # _quantize_chunk fills work["y"] (the decoded values)
    # A faster implementation of the same bytes, if one is set (set_kernel): the page sets
    # WebAssembly ones (static/kquants.ts), tested byte for byte as these numpy kernels are.
    kernel = None
    kernel_stats = False                 # the kernel measures the round trip too
    searches = False                     # tries many scales a block: ~10x the others' cost

    def __init__(self):
        raise TypeError("codec classes are used through their classmethods")

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.name:
            CODECS[cls.name] = cls

    # -- to be provided by each format -------------------------------------------
    @classmethod
    def _quantize_chunk(cls, x: np.ndarray, out2d: np.ndarray, work: dict) -> None:
        raise NotImplementedError

    @classmethod
    def _dequantize_chunk(cls, blocks: np.ndarray, out2d: np.ndarray, **kw) -> None:
        raise NotImplementedError

    # -- the gguf-py shaped API -----------------------------------------------------
    @classmethod
    def quantize_blocks(cls, blocks: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """(n, block_size) float -> (n, type_size) uint8."""
        blocks = np.asarray(blocks, dtype=np.float32)
        if blocks.ndim != 2 or blocks.shape[1] != cls.block_size:
            raise ValueError(f"{cls.name}: expected shape (n, {cls.block_size}), got {blocks.shape}")
        n = blocks.shape[0]
        if out is None:
            out = np.empty((n, cls.type_size), dtype=np.uint8)
        elif out.shape != (n, cls.type_size) or out.dtype != np.uint8 or not out.flags.c_contiguous:
            raise ValueError(f"{cls.name}: out must be contiguous uint8 of shape {(n, cls.type_size)}")
        cls._quantize_rows(np.ascontiguousarray(blocks).reshape(-1), out)
        return out

    @classmethod
    def dequantize_blocks(cls, blocks: np.ndarray, out: np.ndarray | None = None, **kw) -> np.ndarray:
        """(n, type_size) uint8 -> (n, block_size) float32."""
        blocks = np.asarray(blocks)
        if blocks.dtype != np.uint8:
            blocks = blocks.view(np.uint8)
        blocks = np.ascontiguousarray(blocks.reshape(-1, cls.type_size))
        n = blocks.shape[0]
        if out is None:
            out = np.empty((n, cls.block_size), dtype=np.float32)
        elif out.shape != (n, cls.block_size) or out.dtype != np.float32 or not out.flags.c_contiguous:
            raise ValueError(f"{cls.name}: out must be contiguous float32 of shape {(n, cls.block_size)}")
        with _errstate():
            for s in range(0, n, _CHUNK_BLOCKS):
                e = min(n, s + _CHUNK_BLOCKS)
                cls._dequantize_chunk(blocks[s:e], out[s:e], **kw)
        return out

    # -- helpers ----------------------------------------------------------------------
    @classmethod
    def _quantize_rows(cls, flat: np.ndarray, out2d: np.ndarray, y: np.ndarray | None = None) -> None:
        """Whole blocks: flat f32 (contiguous, len n*32) -> out2d (n, type_size); y (n*32 f32,
        codecs with fuses_dequantize only) receives what dequantize would give back."""
        n = out2d.shape[0]
        if n == 0:
            return
        if cls.kernel is not None:
            bad = np.empty(n, np.int32)
            k = cls.kernel(flat[: n * 32], out2d, y, bad)
            if k:           # the blocks the kernel left: numpy does them, gathered
                idx = bad[:k]
                xs = np.ascontiguousarray(flat[: n * 32].reshape(n, 32)[idx]).reshape(-1)
                outs = np.empty((k, cls.type_size), np.uint8)
                ys = None if y is None else np.empty(k * 32, np.float32)
                cls._numpy_rows(xs, outs, ys)
                out2d[idx] = outs
                if y is not None:
                    y.reshape(n, 32)[idx] = ys.reshape(k, 32)
            return
        cls._numpy_rows(flat, out2d, y)

    @classmethod
    def _numpy_rows(cls, flat: np.ndarray, out2d: np.ndarray, y: np.ndarray | None) -> None:
        n = out2d.shape[0]
        cb = min(n, _CHUNK_BLOCKS)
        work = {                                         # reused by every chunk
            "a": np.empty(cb * 32, np.float32),
            "b": np.empty(cb * 32, np.float32),
            "c": np.empty(cb * 32, np.float32),
            "u": np.empty(cb * 64, np.uint8),
            "v": np.empty(cb * 64, np.uint8),
        }
        with _errstate():
            for s in range(0, n, cb):
                e = min(n, s + cb)
                if y is not None:
                    work["y"] = y[s * 32:e * 32]
                cls._quantize_chunk(flat[s * 32:e * 32], out2d[s:e], work)


class AprQ4(_Codec):
    """APR Q4, Aprender's tensor dtype 128 (spec: shared/docs/apr-v2.md).

    d = max|x| / 7 in f32 (1.0 for an all-zero block), stored as f16 (round to
    nearest even); q = clamp(round_half_away(x / d), -8, 7) with the f32 d;
    nibble = q + 8; element i -> byte 2 + i//2, low nibble for even i.  A short
    last block is padded with nibble 0.  Decoding: (nibble - 8) * d16.

    Deliberate difference from Aprender's writer, for non-finite input only: its
    max ignores NaN, here NaN gives a NaN scale so the pipeline can see it.
    """

    name = "APR_Q4"
    dtype_code = 128
    block_size = 32
    type_size = 18
    allows_partial_block = True
    fuses_dequantize = True

    # Fast-path window for the f32 scale: d/2 must be exact (normal f32) and finite.
    _D_MIN = 2.0 ** -125

    @classmethod
    def _quantize_chunk(cls, x, out2d, work):
        n = out2d.shape[0]
        m = n * 32
        a, b, c = work["a"][:m], work["b"][:m], work["c"][:m]
        nib = work["u"][:m].view(np.int8)
        tmp8 = work["v"][:m].view(np.int8)

        amax = _block_absmax(x, a, b)
        d = amax / _F32(7)                              # f32 division, as Aprender
        np.copyto(d, _F32(1.0), where=(amax == 0))

        # Fast path: t2 = x / (d/2) == 2*(x/d) exactly while d/2 is a normal f32.
        ok = (d >= cls._D_MIN) & (d <= _MAX32)
        all_ok = bool(ok.all())
        d16 = _to_f16(d, all_ok)
        h = d * _F32(0.5)
        if not all_ok:
            bad = np.flatnonzero(~ok)
            h[bad] = _F32(1.0)
        np.divide(x, np.repeat(h, 32), out=c)
        if not all_ok:
            c.reshape(n, 32)[bad] = 0                   # keep every float->int cast in range
        # m2 = trunc(2t) lies in [-14, 14] here (|t| <= 7 * (1 + 2**-23)), so the
        # int8 cast is exact and no clamp is needed.  round_half_away(t) is
        # ceil(m2/2) for m2 >= 0 and floor(m2/2) for m2 < 0, i.e.
        # (m2 + 1 + (m2 >> 7)) >> 1; the +8 bias goes in as +16 before the shift.
        np.copyto(nib, c, casting="unsafe")
        np.right_shift(nib, np.int8(7), out=tmp8)
        np.add(nib, tmp8, out=nib)
        np.add(nib, np.int8(17), out=nib)
        np.right_shift(nib, np.int8(1), out=nib)
        if not all_ok:
            nib.reshape(n, 32)[bad] = cls._slow_nibbles(x.reshape(n, 32)[bad], d[bad])
        if "y" in work:                                 # the round trip, as _dequantize_chunk
            _decode_into(work["y"], nib, d16, tmp8)

        # Neighbours share a byte: read the nibbles as little-endian uint16
        # (lo | hi << 8); lo | hi << 4 is then the low byte of v | v >> 4.
        v = nib.view(np.uint16)
        w = tmp8.view(np.uint16)
        np.right_shift(v, 4, out=w)
        np.bitwise_or(v, w, out=w)
        packed = a.view(np.uint8)[: m // 2]
        np.copyto(packed, w, casting="unsafe")          # uint16 -> uint8 keeps the low byte
        _write_blocks(out2d, d16, _void_rows(packed, 0, 16, 16, n))

    @staticmethod
    def _slow_nibbles(x: np.ndarray, d: np.ndarray) -> np.ndarray:
        """Aprender's arithmetic step by step, for blocks whose f32 d is zero
        (max|x| <= 3 * 2**-149 underflows), subnormal-ish, NaN or Inf:
        ``((x / d).round().clamp(-8, 7) as i8) + 8`` where NaN as i8 is 0."""
        t = x / d[:, None]
        q = np.trunc(t + np.copysign(_HALF_DOWN, t))
        np.clip(q, -8, 7, out=q)
        q[np.isnan(q)] = 0
        return (q + 8).astype(np.int8)

    @classmethod
    def _dequantize_chunk(cls, blocks, out2d, aprender=False):
        d = _scales_f32(blocks)
        if aprender:
            # Aprender's reader: NaN, Inf and |d| < 2**-14 (f16 subnormals) read as 0.
            d[~((np.abs(d) >= _F16_MIN_NORMAL) & (np.abs(d) <= _MAX32))] = 0.0
        # Widen each byte to uint16 and move the high nibble to the high byte:
        # the uint16's bytes are then elements 2j, 2j+1 in order.
        w = _payload(blocks).astype(np.uint16)
        hi = w & np.uint16(0xF0)
        hi <<= np.uint16(4)
        w &= np.uint16(0x0F)
        w |= hi
        o = out2d.reshape(-1)
        np.copyto(o, w.view(np.uint8))
        o -= _F32(8)
        o *= np.repeat(d, 32)


class Q4_0(_Codec):
    """GGML Q4_0 (llama.cpp), byte-identical to ``gguf.quants`` on finite input.

    d = (the element of largest |x|, first one on ties, with its sign) / -8;
    id = 1/d (0 if d == 0); q = min(15, trunc(x*id + 8.5)), all in f32; byte j
    holds element j (low nibble) and element j + 16 (high nibble).

    Where gguf-py and ggml's C reference (quantize_row_q4_0_ref) disagree on
    finite input, C wins: in a block of zeros C keeps its initial max = +0.0,
    so d = -0.0 (bytes 00 80) even when the first element is -0.0; gguf-py takes
    max = x[0] and stores +0.0 (00 00) then.  The nibbles (all 8) agree.

    Non-finite values: a NaN anywhere makes d NaN (numpy's argmax treats NaN as
    the largest, as in gguf-py; C would skip it), stored as 0x7E00 whatever the
    sign and payload of the NaN (gguf-py keeps those).  Elements whose x*id + 8.5 is
    not finite (NaN/Inf blocks, or d in f32's subnormal range where 1/d = Inf)
    get nibble 0, as gguf-py and C do on x86; here it does not depend on the
    platform's float-to-int cast.
    """

    name = "Q4_0"
    ggml_type = 2
    block_size = 32
    type_size = 18
    fuses_dequantize = True

    # |max| >= 2**-123 keeps d = max/-8 a normal f32, so 1/d is finite.
    _M_MIN = 2.0 ** -123

    @classmethod
    def _quantize_chunk(cls, x, out2d, work):
        n = out2d.shape[0]
        m = n * 32
        a, b, c = work["a"][:m], work["b"][:m], work["c"][:m]
        q = work["u"][:m]

        k = _order_keys(x, c)
        ai, bi = a.view(np.int32), b.view(np.int32)
        mx = _order_keys(_block_max(k, ai, bi, np.maximum).copy(), np.empty(n, np.int32)).view(np.float32)
        mn = _order_keys(_block_max(k, ai, bi, np.minimum).copy(), np.empty(n, np.int32)).view(np.float32)
        neg_mn = np.negative(mn)
        # The element of largest magnitude is mx or mn unless they tie (|mx| == |mn|,
        # zero blocks included) or a NaN is about: those go to the slow path.
        pos = mx > neg_mn
        ok = pos | (neg_mn > mx)
        smax = np.where(pos, mx, mn)
        mag = np.abs(smax)
        ok &= (mag >= cls._M_MIN) & (mag <= _MAX32)
        all_ok = bool(ok.all())
        if not all_ok:
            bad = np.flatnonzero(~ok)
            smax[bad] = _F32(-8.0)                      # d = 1 for the fast pass, redone below
        d = smax / _F32(-8)
        idd = _F32(1.0) / d

        np.multiply(x, np.repeat(idd, 32), out=c)
        np.add(c, _F32(8.5), out=c)
        if not all_ok:
            c.reshape(n, 32)[bad] = 0                   # keep every float->int cast in range
        # trunc: c is in [0.49, 16.51]; casting to int8 (not uint8) because that
        # is the fast float->int cast under Pyodide.
        np.copyto(q.view(np.int8), c, casting="unsafe")
        w8 = work["v"][:m]
        np.right_shift(q, np.uint8(4), out=w8)          # min(q, 15) for q <= 16, and
        np.subtract(q, w8, out=q)                       # much faster than np.minimum(q, 15)
        if not all_ok:
            qb, db = cls._slow(x.reshape(n, 32)[bad])
            q.reshape(n, 32)[bad] = qb
            d[bad] = db
        d16 = _to_f16(d, all_ok)
        if "y" in work:                                 # the round trip, as _dequantize_chunk
            _decode_into(work["y"], q, d16, work["v"][:m].view(np.int8))

        # byte j = q[j] | q[j+16] << 4.  On uint64 lanes, lanes 4b, 4b+1 hold
        # q[0:16] of block b and lanes 4b+2, 4b+3 hold q[16:32]: one 1-D shift by
        # two lanes lines them up (values < 16, so no bit crosses a byte).
        v = q.view(np.uint64)
        w = work["v"][:m].view(np.uint64)
        np.left_shift(v[2:], 4, out=w[:-2])
        np.bitwise_or(w[:-2], v[:-2], out=w[:-2])
        _write_blocks(out2d, d16, _void_rows(w, 0, 16, 32, n))

    @staticmethod
    def _slow(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """gguf-py's arithmetic for the odd blocks (C's -0.0 for zero blocks)."""
        imax = np.abs(x).argmax(axis=-1, keepdims=True)
        mx = np.take_along_axis(x, imax, axis=-1)
        d = mx / _F32(-8)
        d[mx == 0] = _F32(-0.0)
        idd = np.where(d == 0, _F32(0), _F32(1) / d).astype(np.float32)
        t = x * idd + _F32(8.5)
        t[~np.isfinite(t)] = 0
        qb = np.minimum(np.trunc(t).astype(np.uint8), 15)
        return qb, d[:, 0]

    @classmethod
    def _dequantize_chunk(cls, blocks, out2d):
        n = blocks.shape[0]
        d = _scales_f32(blocks)
        qs = _payload(blocks)
        lo = qs & np.uint8(0x0F)
        np.right_shift(qs, np.uint8(4), out=qs)
        nib = np.empty(n * 32, np.uint8)               # block: 16 low nibbles, then 16 high
        _void_rows(nib, 0, 16, 32, n)[...] = _void_rows(lo, 0, 16, 16, n)
        _void_rows(nib, 16, 16, 32, n)[...] = _void_rows(qs, 0, 16, 16, n)
        o = out2d.reshape(-1)
        np.copyto(o, nib)
        o -= _F32(8)
        o *= np.repeat(d, 32)


class Q8_0(_Codec):
    """GGML Q8_0: f16 d = max|x| / 127, then 32 int8 round_half_away(x * (1/d)).

    Byte-identical to gguf-py (which is bit-exact with ggml's C reference) on
    finite input.  Elements whose x*id is not finite (NaN/Inf input, or d in
    f32's subnormal range so that 1/d = Inf) get 0, as gguf-py on x86.
    """

    name = "Q8_0"
    ggml_type = 8
    block_size = 32
    type_size = 34

    # max|x| >= 127 * 2**-125 keeps d normal, 1/d finite and 2*id exact.
    _A_MIN = 127.0 * 2.0 ** -125

    @classmethod
    def _quantize_chunk(cls, x, out2d, work):
        n = out2d.shape[0]
        m = n * 32
        a, b, c = work["a"][:m], work["b"][:m], work["c"][:m]
        q16 = work["u"][: 2 * m].view(np.int16)
        s16 = work["v"][: 2 * m].view(np.int16)

        amax = _block_absmax(x, a, b)
        d = amax / _F32(127)
        ok = (amax >= cls._A_MIN) & (amax <= _MAX32)
        all_ok = bool(ok.all())
        if not all_ok:
            bad = np.flatnonzero(~ok)
            d[bad] = _F32(1.0)                          # for the fast pass, redone below
        idd = _F32(1.0) / d
        # t2 = x * (2*id) == 2*(x*id) exactly; |t2| <= 254.0001, so the int16
        # cast is exact, and round_half_away(t) = (m2 + 1 + (m2 >> 15)) >> 1.
        idd *= _F32(2)
        np.multiply(x, np.repeat(idd, 32), out=c)
        if not all_ok:
            c.reshape(n, 32)[bad] = 0                   # keep every float->int cast in range
        np.copyto(q16, c, casting="unsafe")
        np.right_shift(q16, np.int16(15), out=s16)
        np.add(q16, s16, out=q16)
        np.add(q16, np.int16(1), out=q16)
        np.right_shift(q16, np.int16(1), out=q16)
        q8 = a.view(np.int8)[:m]
        np.copyto(q8, q16, casting="unsafe")
        if not all_ok:
            db = amax[bad] / _F32(127)
            q8.reshape(n, 32)[bad] = cls._slow(x.reshape(n, 32)[bad], db)
            d[bad] = db
        _write_blocks(out2d, _to_f16(d, all_ok), _void_rows(q8, 0, 32, 32, n))

    @staticmethod
    def _slow(x: np.ndarray, d: np.ndarray) -> np.ndarray:
        idd = np.where(d == 0, _F32(0), _F32(1) / d).astype(np.float32)
        t = x * idd[:, None]
        q = np.trunc(t + np.copysign(_HALF_DOWN, t))
        q[~np.isfinite(q)] = 0
        return q.astype(np.int8)

    @classmethod
    def _dequantize_chunk(cls, blocks, out2d):
        d = _scales_f32(blocks)
        o = out2d.reshape(-1)
        np.copyto(o, _payload(blocks).view(np.int8))
        o *= np.repeat(d, 32)




def set_kernel(codec, fn, measures: bool = False) -> None:
    """Quantize `codec` with fn instead of numpy; None restores numpy.  fn must write
    exactly the bytes (and values) numpy would:
    fn(flat float32 (n*block_size,), out uint8 (n, type_size), y=None, bad=None, stats=None)
    -> k.  y (APR_Q4, Q4_0 only): float32 (n*32,) for the decoded values, or None.  The
    k blocks it leaves (off its fast path: the 32-value formats only) are listed in bad
    (int32 (n,)) and done by numpy.  measures: fn takes stats (float32 (2*units + 1,),
    whole units only): each unit's sum of squares of x, then of decoded - x (in the
    kernel's order, see unit_squares), then max |decoded - x| (quantize_measured); all
    or nothing: if k, numpy redoes it all."""
    c = get_codec(codec)
    if c not in (Q4_K, Q6_K, AprQ4, Q4_0):
        raise ValueError(f"{c.name} takes no kernel")
    c.kernel = fn
    c.kernel_stats = bool(measures) and fn is not None


_f16_kernel = None


def set_f16_kernel(fn) -> None:
    """f16_to_f32 (F16 input) with fn(uint16 (n,), float32 out (n,)) instead of numpy
    (None: numpy again); it must give numpy's values, bit for bit."""
    global _f16_kernel
    _f16_kernel = fn


def get_codec(codec) -> type[_Codec]:
    """A codec class from itself or its name ('APR_Q4', 'Q4_0', 'Q8_0', 'Q5_0', 'Q4_K', 'Q6_K')."""
    if isinstance(codec, type) and issubclass(codec, _Codec):
        return codec
    try:
        return CODECS[str(codec).upper()]
    except KeyError:
        raise ValueError(f"unknown codec {codec!r}; known: {', '.join(CODECS)}") from None


def n_blocks(codec, n_elements: int) -> int:
    c = get_codec(codec)
    return -(-int(n_elements) // c.block_size)


def nbytes(codec, n_elements: int) -> int:
    """Encoded size of n_elements: type_size * ceil(n / block_size)."""
    c = get_codec(codec)
    return n_blocks(c, n_elements) * c.type_size


def quantize(codec, x_flat, out: np.ndarray | None = None,
             dequantized: np.ndarray | None = None) -> np.ndarray:
    """Flat float32 values -> 1-D uint8 blocks.

    APR Q4 takes any length (the short last block is zero padded, padding
    nibbles 0), so do Q4_K and Q6_K (zero padded: APR flattens tensors); Q4_0,
    Q8_0 and Q5_0 need a multiple of 32.  Blocks are independent,
    so a long tensor can be fed chunk by chunk as long as every chunk but the
    last holds whole blocks.

    dequantized (contiguous float32, as many values as x) receives
    dequantize(codec, result, n): APR Q4 and Q4_0 take it from the codes before
    they are packed (much cheaper than unpacking them again), the others decode.
    """
    c = get_codec(codec)
    x = np.ascontiguousarray(x_flat, dtype=np.float32).reshape(-1)
    n = x.size
    full, rest = divmod(n, c.block_size)
    if rest and not c.allows_partial_block:
        raise ValueError(f"{c.name}: {n} elements is not a multiple of {c.block_size}")
    size = nbytes(c, n)
    if out is None:
        out = np.empty(size, dtype=np.uint8)
    elif out.dtype != np.uint8 or out.ndim != 1 or out.size != size or not out.flags.c_contiguous:
        raise ValueError(f"{c.name}: out must be contiguous 1-D uint8 of {size} bytes")
    out2d = out.reshape(-1, c.type_size)
    fused = dequantized is not None and c.fuses_dequantize
    if dequantized is not None and (dequantized.dtype != np.float32 or dequantized.shape != (n,)
                                    or not dequantized.flags.c_contiguous):
        raise ValueError(f"{c.name}: dequantized must be contiguous 1-D float32 of {n} values")
    if fused:
        c._quantize_rows(x[: full * c.block_size], out2d[:full], dequantized[: full * c.block_size])
    else:
        c._quantize_rows(x[: full * c.block_size], out2d[:full])
    if rest:
        pad = np.zeros(c.block_size, dtype=np.float32)
        pad[:rest] = x[full * c.block_size:]
        last = out2d[full:]
        if fused:
            y_pad = np.empty(c.block_size, np.float32)
            c._quantize_rows(pad, last, y_pad)
        else:
            c._quantize_rows(pad, last)
        if fused:   # the padding's nibbles, zeroed below, are past the values kept
            dequantized[full * c.block_size:] = y_pad[:rest]
        if c is AprQ4:
            # Aprender leaves the padding nibbles at 0 (not 8).
            qs = last[0, 2:]
            if rest % 2:
                qs[rest // 2] &= 0x0F
            qs[(rest + 1) // 2:] = 0
    if dequantized is not None and not fused:
        dequantize(c, out, n, out=dequantized)
    return out


# The report's error statistics come in units of SUM_UNIT values from a tensor's start
# (chunks start at a multiple of it), so they do not depend on the chunking.
SUM_UNIT = 256


def unit_squares(v: np.ndarray) -> np.ndarray:
    """The sums of squares of v's SUM_UNIT-value units (f32 dot products: einsum row by
    row, ~2.5x one np.dot and no temporary; a short last unit on its own).  The order of
    each unit's sum is numpy's own (its SIMD width): the page's kernel (static/kquants.ts)
    sums by halving instead, so the page's figures may differ from the CLI's in the last
    digits, as numpy's under Pyodide already do."""
    n = v.size
    k = n - n % SUM_UNIT
    rows = v[:k].reshape(-1, SUM_UNIT)
    units = np.einsum("ij,ij->i", rows, rows)
    if k < n:
        units = np.concatenate([units, np.einsum("i,i->", v[k:], v[k:]).reshape(1)])
    return units


def kernel_measures(codec) -> bool:
    """Whether quantize_measured runs in the codec's kernel, blocks and statistics in one
    pass (the page's WebAssembly kernels; not kquants.js's)."""
    c = get_codec(codec)
    return c.kernel is not None and c.kernel_stats


def quantize_measured(codec, x: np.ndarray, out: np.ndarray, y: np.ndarray):
    """quantize(codec, x, out) and the error statistics of the round trip:
    (out, unit_squares(x), unit_squares(dequantized - x), max |dequantized - x|).
    y: float32 scratch of x's size (left holding dequantized - x when numpy did the
    work).  A kernel set with measures=True does it all at once (x of whole units; its
    sums of squares are summed by halving, see unit_squares)."""
    c = get_codec(codec)
    n = x.size
    if kernel_measures(c) and n and n % SUM_UNIT == 0:
        units = n // SUM_UNIT
        stats = np.empty(2 * units + 1, np.float32)
        bad = np.empty(n // c.block_size, np.int32)
        if c.kernel(x, out.reshape(-1, c.type_size), None, bad, stats) == 0:
            return out, stats[:units], stats[units:2 * units], float(stats[-1])
    quantize(c, x, out=out, dequantized=y)
    with _errstate():   # NaN/Inf weights: the pipeline refuses or counts them, numpy is quiet
        signal = unit_squares(x)
        np.subtract(y, x, out=y)
        noise = unit_squares(y)
    # max|y - x| on the f32 bits with the sign cleared: they order like the values (a NaN
    # sorts above them all).  Under Pyodide np.abs on mixed signs costs ~10x this.
    yi = y.view(np.int32)
    np.bitwise_and(yi, np.int32(0x7FFFFFFF), out=yi)
    maxerr = float(yi.max().view(np.float32)) if n else 0.0
    return out, signal, noise, maxerr


def dequantize(codec, data, n_elements: int, out: np.ndarray | None = None, aprender: bool = False) -> np.ndarray:
    """1-D uint8 blocks (bytes-like or array, exactly nbytes(codec, n)) ->
    float32 (n_elements,).  aprender=True (APR Q4 only) reads a scale that is
    NaN, Inf or below 2**-14 in magnitude as 0, like Aprender's decoder."""
    c = get_codec(codec)
    raw = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1).view(np.uint8)
    n = int(n_elements)
    size = nbytes(c, n)
    if raw.size != size:
        raise ValueError(f"{c.name}: {n} elements need {size} bytes, got {raw.size}")
    if n % c.block_size and not c.allows_partial_block:
        raise ValueError(f"{c.name}: {n} elements is not a multiple of {c.block_size}")
    if out is None:
        out = np.empty(n, dtype=np.float32)
    elif out.dtype != np.float32 or out.ndim != 1 or out.size != n or not out.flags.c_contiguous:
        raise ValueError(f"{c.name}: out must be contiguous 1-D float32 of {n} values")
    kw = {"aprender": True} if aprender else {}
    if aprender and c is not AprQ4:
        raise ValueError("aprender=True applies to APR_Q4 only")
    blocks = raw.reshape(-1, c.type_size)
    full = n // c.block_size
    c.dequantize_blocks(blocks[:full], out=out[: full * c.block_size].reshape(full, c.block_size), **kw)
    if n % c.block_size:
        last = c.dequantize_blocks(blocks[full:], **kw)
        out[full * c.block_size:] = last[0, : n - full * c.block_size]
    return out


def scales_f16(codec, data_bytes) -> np.ndarray:
    """The f16 scale d of every block, as a float16 view (no copy) of the data:
    (n_blocks,), or (n_blocks, 2) for Q4_K (d and dmin).

    ``~np.isfinite(s)`` finds NaN/Inf/overflowed blocks; for APR Q4 a scale
    with 0 < |d| < 2**-14 is one that Aprender's decoder reads as 0.
    """
    c = get_codec(codec)
    raw = np.frombuffer(data_bytes, dtype=np.uint8) if not isinstance(data_bytes, np.ndarray) \
        else data_bytes.reshape(-1).view(np.uint8)
    if raw.size % c.type_size:
        raise ValueError(f"{c.name}: {raw.size} bytes is not a whole number of {c.type_size}-byte blocks")
    o, k = c.f16_scales
    return raw.reshape(-1, c.type_size)[:, o:o + 2 * k].view("<f2")[:, 0] if k == 1 else \
        raw.reshape(-1, c.type_size)[:, o:o + 2 * k].view("<f2")


# --- F16 / BF16 ------------------------------------------------------------------------

def f32_to_f16(x, out: np.ndarray | None = None) -> np.ndarray:
    """float32 -> float16, round to nearest even; overflow -> Inf, NaN kept."""
    x = np.asarray(x, dtype=np.float32)
    with _errstate():
        if out is None:
            return x.astype(np.float16)
        np.copyto(out, x, casting="same_kind")
    return out


def f16_to_f32(h, out: np.ndarray | None = None) -> np.ndarray:
    """float16 (or its raw little-endian bytes / uint16 bits) -> float32, exact (NaN
    payloads kept); through the kernel set_f16_kernel set, if any."""
    h = _as_16bit(h, "<f2")
    if out is None:
        out = np.empty(h.shape, np.float32)
    if _f16_kernel is not None and h.size:
        _f16_kernel(h.reshape(-1).view(np.uint16), out.reshape(-1))
    else:
        np.copyto(out, h)
    return out


def f32_to_bf16(x, out: np.ndarray | None = None) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), as ggml / gguf-py / torch do: round to
    nearest even on the bits; a NaN stays NaN with its sign and gets the quiet
    bit (gguf-py's ``BF16.quantize_blocks``)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    u = x.view(np.uint32).copy()
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    if nan.any():
        u[nan] = (u[nan] & np.uint32(0xFFFF0000)) | np.uint32(0x00400000)
    r = u >> np.uint32(16)
    r &= np.uint32(1)
    r += np.uint32(0x7FFF)
    u += r                                              # no wrap: NaNs were masked
    u >>= np.uint32(16)
    if out is None:
        return u.astype(np.uint16)
    np.copyto(out, u, casting="unsafe")
    return out


def bf16_to_f32(b, out: np.ndarray | None = None) -> np.ndarray:
    """bfloat16 bits (uint16, or raw little-endian bytes) -> float32, exact:
    the 16 bits become the upper half of a uint32."""
    b = _as_16bit(b, "<u2")
    if out is None:
        out = np.empty(b.shape, dtype=np.float32)
    u = out.view(np.uint32)
    np.copyto(u, b)                                     # widen first: uint16 << 16 would be 0
    u <<= np.uint32(16)
    return out


def _as_16bit(v, dt: str) -> np.ndarray:
    if not isinstance(v, np.ndarray):
        return np.frombuffer(v, dtype=dt)
    if v.dtype.itemsize == 2:
        return v.view(dt)
    return v.reshape(-1).view(np.uint8).view(dt)


# --- Q5_0 and the K-quants (Q4_K, Q6_K) ----------------------------------------------
#
# Byte-identical to ggml's C reference quantizers without an importance matrix
# (quantize_row_{q5_0,q4_K,q6_K}_ref in ggml-quants.c, which llama-quantize calls
# then): the same float32 operations in the same order, vectorised across blocks.
# Per-block sums that C accumulates left to right are np.add.reduce over axis 0 of a
# (k, n_sub) array, which numpy also adds row after row (pairwise summation only
# applies along the contiguous axis); nearest_int is C's magic-number trick on the
# bits, so even its out-of-range and NaN results match.  No slow paths: the same
# arithmetic runs for every block, zeros, subnormals and overflow included.

_MAGIC = _F32(12582912.0)                           # 1.5 * 2**23


def _nearest_int(t: np.ndarray) -> np.ndarray:
    """ggml's nearest_int on float32 t, as int32: round half to even while
    |t| < 2**22; beyond that (and for Inf/NaN) the same garbage as C."""
    i = (t + _MAGIC).view(np.int32)
    i &= np.int32(0x007FFFFF)
    i -= np.int32(0x00400000)
    return i


def _round_clip(t: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """clamp(nearest_int(t), lo, hi) as floats, in place, for |t| < 2**21 (the
    fast paths check that).  Natively rint + clip on floats; under Pyodide float
    clip is 10-50x slower than the integer route (magic number, int32 clip,
    cast back), which is C's own arithmetic and so gives the same values."""
    if not _WASM:
        np.rint(t, out=t)
        return np.clip(t, lo, hi, out=t)
    t += _MAGIC
    i = t.view(np.int32)
    i &= np.int32(0x007FFFFF)
    i -= np.int32(0x00400000)
    np.clip(i, lo, hi, out=i)
    np.copyto(t, i, casting="unsafe")
    return t


def _f16_bits(d: np.ndarray) -> np.ndarray:
    """GGML_FP32_TO_FP16 as uint16 bits: round to nearest even, overflow to Inf,
    NaN -> 0x7E00 with the sign kept (ggml's software conversion)."""
    h = d.astype(np.float16).view(np.uint16)
    nan = np.isnan(d)
    if nan.any():
        h[nan] = np.uint16(0x7E00) | (d[nan].view(np.uint32) >> np.uint32(16)).astype(np.uint16) & np.uint16(0x8000)
    return h


class _SuperBlock(_Codec):
    """Shared chunking for the codecs whose kernels work on (n, block_size)
    float32 blocks at once (not on flat 32-blocks like AprQ4/Q4_0/Q8_0)."""

    # Blocks per inner chunk: 64K values, so each (32, n_sub) temporary is 256 KiB
    # and the half dozen of them stay near the core's L2 (measured best, 256-512).
    _chunk = 256
    @classmethod
    def _quantize_rows(cls, flat, out2d):
        n = out2d.shape[0]
        bs = cls.block_size
        if cls.kernel is not None and n:
            cls.kernel(flat[: n * bs], out2d)
            return
        with _errstate():
            for s in range(0, n, cls._chunk):
                e = min(n, s + cls._chunk)
                cls._quantize_chunk(flat[s * bs:e * bs].reshape(e - s, bs), out2d[s:e], None)


class Q5_0(_SuperBlock):
    """GGML Q5_0 (type 6): f16 d, 32-bit qh (fifth bits), 16 bytes of nibbles.

    d = (the element of largest |x|, first one on ties) / -16; id = 1/d (0 if
    d == 0); q = min(31, (int8)(x*id + 16.5)); byte j holds the low nibbles of
    elements j and j+16, bit j of qh the fifth bit of element j.  As in C, a
    block of zeros has d = -0.0, and an x*id + 16.5 that is not finite gives 0
    (x86's float->int cast, made explicit).
    """

    name = "Q5_0"
    ggml_type = 6
    block_size = 32
    type_size = 22
    _chunk = 8192

    @classmethod
    def _quantize_chunk(cls, x, out2d, work):
        n = x.shape[0]
        a = np.abs(x)
        imax = a.argmax(axis=1)
        mx = x[np.arange(n), imax]
        mx[a[np.arange(n), imax] == 0] = 0.0            # C keeps its initial +0.0
        d = mx / _F32(-16)
        idd = np.zeros_like(d)
        np.divide(_F32(1.0), d, out=idd, where=(d != 0))
        t = x * idd[:, None]
        t += _F32(16.5)
        bad = ~np.isfinite(t) | (t >= _F32(128))        # (int8)(t) would not be exact
        q = np.empty(t.shape, np.int8)
        np.copyto(q, np.where(bad, _F32(0), t), casting="unsafe")
        if bad.any():
            big = bad & np.isfinite(t)                   # cvttss2si, then the low byte
            q[big] = (t[big].astype(np.int64) & 0xFF).astype(np.uint8).view(np.int8)
        q = np.minimum(q.astype(np.int16), 31).astype(np.uint8)
        out2d[:, 0:2] = _f16_bits(d).view(np.uint8).reshape(n, 2)
        hi = (q >> 4).astype(np.uint32) << np.arange(32, dtype=np.uint32)
        out2d[:, 2:6] = np.bitwise_or.reduce(hi, axis=1).astype("<u4").view(np.uint8).reshape(n, 4)
        out2d[:, 6:22] = (q[:, :16] & 0x0F) | ((q[:, 16:] & 0x0F) << 4)

    @classmethod
    def _dequantize_chunk(cls, blocks, out2d):
        d = _scales_f32(blocks)
        qh = np.ascontiguousarray(blocks[:, 2:6]).view("<u4")          # (n, 1)
        h = ((qh >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8) << 4
        qs = blocks[:, 6:22]
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=1) | h
        np.subtract(q, 16, out=out2d, dtype=np.float32, casting="unsafe")
        out2d *= d[:, None]


def _seq_sum(a: np.ndarray) -> np.ndarray:
    """Sum over axis 0 of (k, n) in C's left-to-right order (see above)."""
    return np.add.reduce(a, axis=0)


class Q4_K(_SuperBlock):
    """GGML Q4_K (type 12; APR code 12): 256 values, 8 sub-blocks of 32 with a
    6-bit scale and min each, x ~ d*sc*q - dmin*m with 4-bit q.

    Block: f16 d, f16 dmin, 12 bytes of packed 6-bit scales/mins, 128 bytes of
    nibbles (byte l of group g: sub-block 2g element l low, 2g+1 high).
    quantize_row_q4_K_ref: per sub-block make_qkx2_quants (weights av_x + |x|,
    21 trial scales), then scales/mins quantized against their maxima, then
    every value requantized against the f16-rounded scales.
    """

    name = "Q4_K"
    ggml_type = 12
    apr_code = 12
    block_size = 256
    type_size = 144
    allows_partial_block = True          # APR flattens: the last block zero padded
    f16_scales = (0, 2)
    searches = True                      # 21 trial scales a sub-block

    @classmethod
    def _quantize_chunk(cls, x, out2d, work):
        n = x.shape[0]
        S = 8 * n
        X = np.ascontiguousarray(x.reshape(S, 32).T)     # (32, S): column = sub-block
        av_x = np.sqrt(_seq_sum(X * X) / _F32(32))
        W = np.abs(X)
        W += av_x
        scale, the_min, L = cls._make_qkx2(X, W)

        # Scales and mins of the 8 sub-blocks against their maxima.
        sc = scale.reshape(n, 8)
        mn = the_min.reshape(n, 8)
        max_scale = np.fmax(np.fmax.reduce(sc, axis=1), _F32(0))   # C's `>` scan from 0
        max_min = np.fmax(np.fmax.reduce(mn, axis=1), _F32(0))
        inv_scale = np.zeros(n, np.float32)
        np.divide(_F32(63), max_scale, out=inv_scale, where=max_scale > 0)
        inv_min = np.zeros(n, np.float32)
        np.divide(_F32(63), max_min, out=inv_min, where=max_min > 0)
        ls = np.minimum(_nearest_int(inv_scale[:, None] * sc) & 0xFF, 63).astype(np.uint8)
        lm = np.minimum(_nearest_int(inv_min[:, None] * mn) & 0xFF, 63).astype(np.uint8)
        d16 = _f16_bits(max_scale / _F32(63))
        dmin16 = _f16_bits(max_min / _F32(63))

        # Requantize against the stored scales; a sub-block whose d is 0 keeps L.
        d = d16.view(np.float16).astype(np.float32)[:, None] * ls.astype(np.float32)    # (n, 8)
        dm = dmin16.view(np.float16).astype(np.float32)[:, None] * lm.astype(np.float32)
        d = d.reshape(S)
        dm = dm.reshape(S)
        t = X + dm
        t /= d
        l = np.clip(_nearest_int(t), 0, 15)
        L = np.where(d == 0, L, l).astype(np.uint8)      # (32, S)

        out2d[:, 0:2] = d16.view(np.uint8).reshape(n, 2)
        out2d[:, 2:4] = dmin16.view(np.uint8).reshape(n, 2)
        s = out2d[:, 4:16]
        s[:, 0:4] = ls[:, 0:4] | ((ls[:, 4:8] >> 4) << 6)
        s[:, 4:8] = lm[:, 0:4] | ((lm[:, 4:8] >> 4) << 6)
        s[:, 8:12] = (ls[:, 4:8] & 0x0F) | ((lm[:, 4:8] & 0x0F) << 4)
        Lb = L.T.reshape(n, 4, 2, 32)
        out2d[:, 16:144] = (Lb[:, :, 0] | (Lb[:, :, 1] << 4)).reshape(n, 128)

    @classmethod
    def _make_qkx2(cls, X, W):
        """make_qkx2_quants(32, 15, x, w, L, &min, Laux, -1.f, 0.1f, 20, false) for
        every column of X: (scale, the_min, L (32, S) integers)."""
        r = cls._make_qkx2_fast(X, W)
        return r if r is not None else cls._make_qkx2_exact(X, W)

    @staticmethod
    def _make_qkx2_fast(X, W):
        """The same, about 3x faster, or None when a column leaves the tame range.

        nearest_int(t) is np.rint(t) while |t| < 2**22, and the clamp to [0, 15]
        then works on floats (clip; np.minimum/np.where are slow paths in numpy),
        so every trial is ~17 passes over the data.  |t| is bounded per column
        from the extremes of x (rounding is monotonic), so the range is checked
        on (S,) arrays; the first trial that could leave it sends the whole
        chunk to _make_qkx2_exact.  L is not kept per trial: the winning trial's
        (iscale, min) is, and L is recomputed from it once at the end.
        """
        nmax = _F32(15)
        lim = _F32(2 ** 21)
        xmin = X.min(axis=0)
        mx = X.max(axis=0)
        sum_w = _seq_sum(W)
        wx = W * X
        sum_x = _seq_sum(wx)
        mn = np.minimum(xmin, _F32(0))
        flat = mx == mn
        rng = mx - mn
        rng[flat] = 1                                    # their result is fixed below
        iscale = nmax / rng
        scale = _F32(1) / iscale
        Xm = X - mn

        def tame(isc, m):
            hi = isc * (mx - m)
            lo = isc * (xmin - m)
            return bool(((hi < lim) & (lo > -lim)).all())    # False on NaN too

        if not tame(iscale, mn):
            return None
        t = Xm * iscale
        _round_clip(t, 0, 15)
        diff = t * scale
        diff += mn
        diff -= X
        diff *= diff
        diff *= W
        best = _seq_sum(diff)
        best_is, best_mn = iscale, mn                    # the trial whose L is kept
        wl = np.empty_like(X)
        tmp = np.empty_like(X)
        for step in range(21):
            c = _F32(_F32(_F32(-1.0) + _F32(0.1) * _F32(step)) + nmax)
            iscale = c / rng
            if not tame(iscale, mn):
                return None
            np.multiply(Xm, iscale, out=t)
            _round_clip(t, 0, 15)                        # Laux, as floats
            np.multiply(W, t, out=wl)
            sum_l = _seq_sum(wl)
            np.multiply(wl, t, out=tmp)
            sum_l2 = _seq_sum(tmp)
            np.multiply(wl, X, out=tmp)
            sum_xl = _seq_sum(tmp)
            D = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            pos = this_min > 0
            if pos.any():
                this_min[pos] = 0
                this_scale[pos] = (sum_xl / sum_l2)[pos]
            np.multiply(t, this_scale, out=tmp)
            tmp += this_min
            tmp -= X
            tmp *= tmp
            tmp *= W
            cur = _seq_sum(tmp)
            upd = (D > 0) & (cur < best)
            if upd.any():
                best = np.where(upd, cur, best)
                scale = np.where(upd, this_scale, scale)
                best_is = np.where(upd, iscale, best_is)
                best_mn = np.where(upd, mn, best_mn)     # the min this trial measured from
                mn = np.where(upd, this_min, mn)         # C reuses `min` from here on
                rng = mx - mn
                rng[flat] = 1
                np.subtract(X, mn, out=Xm)
        np.subtract(X, best_mn, out=t)
        t *= best_is
        _round_clip(t, 0, 15)
        L = t.astype(np.int32)
        scale[flat] = 0
        L[:, flat] = 0
        mn[flat] = np.minimum(xmin, _F32(0))[flat]
        return scale, -mn, L

    @staticmethod
    def _make_qkx2_exact(X, W):
        """make_qkx2_quants step by step with C's integer nearest_int: any input."""
        nmax = _F32(15)
        mn = X.min(axis=0)
        mx = X.max(axis=0)
        sum_w = _seq_sum(W)
        sum_x = _seq_sum(W * X)
        np.minimum(mn, _F32(0), out=mn)
        flat = mx == mn
        rng = mx - mn
        iscale = nmax / rng
        scale = _F32(1) / iscale
        Xm = X - mn
        L = np.clip(_nearest_int(iscale * Xm), 0, 15)
        Lf = L.astype(np.float32)
        diff = scale * Lf
        diff += mn
        diff -= X
        diff *= diff
        diff *= W
        best = _seq_sum(diff)
        for step in range(21):
            c = _F32(_F32(_F32(-1.0) + _F32(0.1) * _F32(step)) + nmax)
            iscale = c / rng
            la = np.clip(_nearest_int(iscale * Xm), 0, 15)
            laf = la.astype(np.float32)
            wl = W * laf
            sum_l = _seq_sum(wl)
            sum_l2 = _seq_sum(wl * laf)
            sum_xl = _seq_sum(wl * X)
            D = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            pos = this_min > 0
            if pos.any():
                this_min[pos] = 0
                this_scale[pos] = (sum_xl / sum_l2)[pos]
            diff = this_scale * laf
            diff += this_min
            diff -= X
            diff *= diff
            diff *= W
            cur = _seq_sum(diff)
            upd = (D > 0) & (cur < best)
            if upd.any():
                L = np.where(upd, la, L)
                best = np.where(upd, cur, best)
                scale = np.where(upd, this_scale, scale)
                # C reuses `min`: later trials measure from the new min.
                mn = np.where(upd, this_min, mn)
                rng = mx - mn
                np.subtract(X, mn, out=Xm)
        scale[flat] = 0
        L[:, flat] = 0
        return scale, -mn, L

    @classmethod
    def _dequantize_chunk(cls, blocks, out2d):
        n = blocks.shape[0]
        d = _scales_f32(blocks)
        dmin = np.ascontiguousarray(blocks[:, 2:4]).view("<f2")[:, 0].astype(np.float32)
        s = blocks[:, 4:16]
        sc = np.empty((n, 8), np.uint8)
        m = np.empty((n, 8), np.uint8)
        sc[:, 0:4] = s[:, 0:4] & 63
        m[:, 0:4] = s[:, 4:8] & 63
        sc[:, 4:8] = (s[:, 8:12] & 0x0F) | ((s[:, 0:4] >> 6) << 4)
        m[:, 4:8] = (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)
        d1 = d[:, None] * sc.astype(np.float32)          # (n, 8)
        m1 = dmin[:, None] * m.astype(np.float32)
        qs = blocks[:, 16:144].reshape(n, 4, 32)
        q = np.empty((n, 4, 2, 32), np.uint8)
        q[:, :, 0] = qs & 0x0F
        q[:, :, 1] = qs >> 4
        o = out2d.reshape(n, 8, 32)
        np.multiply(d1[:, :, None], q.reshape(n, 8, 32), out=o, dtype=np.float32, casting="unsafe")
        o -= m1[:, :, None]


class Q6_K(_SuperBlock):
    """GGML Q6_K (type 14; APR code 14): 256 values, 16 sub-blocks of 16 with an
    int8 scale each, x ~ d*sc*(q - 32) with 6-bit q.

    Block: 128 bytes ql (low nibbles), 64 bytes qh (high 2 bits), 16 int8 scales,
    f16 d last.  quantize_row_q6_K_ref: per sub-block make_qx_quants (nmax 32,
    weights x*x, 19 trial scales), scales quantized against the largest |scale|
    (d = max_scale / -128), then every value requantized.
    """

    name = "Q6_K"
    ggml_type = 14
    apr_code = 14
    block_size = 256
    type_size = 210
    allows_partial_block = True          # APR flattens: the last block zero padded
    f16_scales = (208, 1)
    searches = True                      # 19 trial scales a sub-block

    @classmethod
    def _quantize_chunk(cls, x, out2d, work):
        n = x.shape[0]
        S = 16 * n
        X = np.ascontiguousarray(x.reshape(S, 16).T)     # (16, S)
        scales, L = cls._make_qx(X)

        sc = scales.reshape(n, 16)
        asc = np.abs(sc)
        asc[np.isnan(asc)] = -1                          # C's `>` scan skips NaN
        ib = asc.argmax(axis=1)
        max_abs = np.maximum(asc[np.arange(n), ib], _F32(0))
        max_scale = sc[np.arange(n), ib]
        zero = max_abs < _F32(1e-15)
        max_scale[zero] = 1                              # redone below
        iscale = _F32(-128) / max_scale
        d16 = _f16_bits(_F32(1) / iscale)
        q8 = np.minimum(_nearest_int(iscale[:, None] * sc), 127).astype(np.int8)     # (n, 16)
        d = d16.view(np.float16).astype(np.float32)[:, None] * q8.astype(np.float32)
        d = d.reshape(S)
        l = np.clip(_nearest_int(X / d), -32, 31)
        l += 32
        L = np.where(d == 0, L, l).astype(np.uint8)      # (16, S)

        Lb = L.T.reshape(n, 2, 4, 32)
        A, B, C, Dd = Lb[:, :, 0], Lb[:, :, 1], Lb[:, :, 2], Lb[:, :, 3]
        ql = out2d[:, 0:128].reshape(n, 2, 2, 32)
        ql[:, :, 0] = (A & 0x0F) | ((C & 0x0F) << 4)
        ql[:, :, 1] = (B & 0x0F) | ((Dd & 0x0F) << 4)
        out2d[:, 128:192] = ((A >> 4) | ((B >> 4) << 2) | ((C >> 4) << 4) | ((Dd >> 4) << 6)).reshape(n, 64)
        out2d[:, 192:208] = q8.view(np.uint8)
        out2d[:, 208:210] = d16.view(np.uint8).reshape(n, 2)
        if zero.any():
            out2d[zero] = 0

    @classmethod
    def _make_qx(cls, X):
        """make_qx_quants(16, 32, x, L, 1, NULL) for every column of X:
        (scale, L + 32 (16, S) integers)."""
        r = cls._make_qx_fast(X)
        return r if r is not None else cls._make_qx_exact(X)

    @staticmethod
    def _make_qx_fast(X):
        """The same on float lanes (rint + clip, 8 passes a trial), for chunks whose
        values are all finite: then |iscale * x| <= 33 in every trial, where
        np.rint is nearest_int.  The winning trial's iscale is kept, and L is
        recomputed from it at the end.  None when a value is Inf/NaN."""
        S = X.shape[1]
        A = np.abs(X)
        i = A.argmax(axis=0)
        amax = A[i, np.arange(S)]
        if not np.isfinite(amax).all():
            return None
        mx = X[i, np.arange(S)]
        zero = amax < _F32(1e-15)
        mx[zero] = 1                                     # their result is fixed below
        W = X * X
        WX = W * X
        t = np.empty_like(X)
        tmp = np.empty_like(X)

        def trial(iscale):
            np.multiply(X, iscale, out=t)
            _round_clip(t, -32, 31)
            np.multiply(WX, t, out=tmp)
            sumlx = _seq_sum(tmp)
            np.multiply(W, t, out=tmp)
            np.multiply(tmp, t, out=tmp)
            return sumlx, _seq_sum(tmp)

        best_is = _F32(-32) / mx
        sumlx, suml2 = trial(best_is)
        scale = np.zeros(S, np.float32)
        np.divide(sumlx, suml2, out=scale, where=(suml2 != 0))
        best = scale * sumlx
        for step in range(-9, 10):
            if step == 0:
                continue
            iscale = -_F32(_F32(32) + _F32(0.1) * _F32(step)) / mx
            sumlx, suml2 = trial(iscale)
            upd = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            if upd.any():
                scale = np.where(upd, sumlx / suml2, scale)
                best = np.where(upd, scale * sumlx, best)
                best_is = np.where(upd, iscale, best_is)
        np.multiply(X, best_is, out=t)
        _round_clip(t, -32, 31)
        t += 32
        L = t.astype(np.int32)
        scale[zero] = 0
        L[:, zero] = 0
        return scale, L

    @staticmethod
    def _make_qx_exact(X):
        """make_qx_quants step by step with C's integer nearest_int: any input."""
        S = X.shape[1]
        A = np.abs(X)
        i = A.argmax(axis=0)
        amax = A[i, np.arange(S)]
        mx = X[i, np.arange(S)]
        zero = amax < _F32(1e-15)
        W = X * X
        WX = W * X

        def trial(iscale):
            l = np.clip(_nearest_int(iscale * X), -32, 31)
            lf = l.astype(np.float32)
            sumlx = _seq_sum(WX * lf)
            wl = W * lf
            wl *= lf
            return l, sumlx, _seq_sum(wl)

        L, sumlx, suml2 = trial(_F32(-32) / mx)
        scale = np.zeros(S, np.float32)
        np.divide(sumlx, suml2, out=scale, where=(suml2 != 0))
        best = scale * sumlx
        for step in range(-9, 10):
            if step == 0:
                continue
            c = -_F32(_F32(32) + _F32(0.1) * _F32(step))
            l, sumlx, suml2 = trial(c / mx)
            upd = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            if upd.any():
                L = np.where(upd, l, L)
                scale = np.where(upd, sumlx / suml2, scale)
                best = np.where(upd, scale * sumlx, best)
        L += 32
        scale[zero] = 0
        L[:, zero] = 0
        return scale, L

    @classmethod
    def _dequantize_chunk(cls, blocks, out2d):
        n = blocks.shape[0]
        d = np.ascontiguousarray(blocks[:, 208:210]).view("<f2")[:, 0].astype(np.float32)
        sc = blocks[:, 192:208].view(np.int8).astype(np.float32)        # (n, 16)
        ql = blocks[:, 0:128].reshape(n, 2, 2, 32)
        qh = blocks[:, 128:192].reshape(n, 2, 32)
        q = np.empty((n, 2, 4, 32), np.uint8)
        q[:, :, 0] = (ql[:, :, 0] & 0x0F) | ((qh & 3) << 4)
        q[:, :, 1] = (ql[:, :, 1] & 0x0F) | (((qh >> 2) & 3) << 4)
        q[:, :, 2] = (ql[:, :, 0] >> 4) | (((qh >> 4) & 3) << 4)
        q[:, :, 3] = (ql[:, :, 1] >> 4) | (((qh >> 6) & 3) << 4)
        ds = (d[:, None] * sc).reshape(n, 16, 1)         # C: d * sc, then * q
        o = out2d.reshape(n, 16, 16)
        np.subtract(q.reshape(n, 16, 16), 32, out=o, dtype=np.float32, casting="unsafe")
        o *= ds

