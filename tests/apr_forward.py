"""A test-only reference forward pass of the llama-family decoder that reads nothing but an .apr.

Aprender's runtime cannot be built here, so this stands in for it to prove that an APR file
carries what a runtime needs: it parses the APR v2 container itself (not through q4apr's
reader, so a shared mistake cannot hide), dequantizes as Aprender does, takes every
hyper-parameter from the JSON metadata and `rope_type` literally, and looks tensors up by
their Hugging Face names. It is the semantics, not a fast runtime: plain numpy, float64
arithmetic (the weights are decoded exactly to float32 first), no KV cache.

Families: llama (mistral, smollm, granite-less), qwen2 (q/k/v biases), qwen3 (q_norm, k_norm).
Hooks for gemma3 / phi3 are marked; their metadata is not fixed yet.

    from apr_forward import AprModel
    m = AprModel("model.apr")
    logits = m.forward([1, 504, 3])      # (T, vocab) float64
"""

import json
import struct
import zlib

import numpy as np

# --- the container ---------------------------------------------------------------------------


def read_apr(path):
    """(metadata dict, {name: (dtype code, shape, uint8 array)}) of an APR v2 file.

    Layout per shared/docs/apr-v2.md: 64-byte header, JSON metadata at metadata_offset,
    index entries packed back to back at tensor_index_offset, data relative to data_offset,
    CRC32 footer. Everything is checked that a reader could trip on.
    """
    buf = np.fromfile(path, dtype=np.uint8)
    raw = buf.tobytes()
    if len(raw) < 68 or raw[:4] != b"APR\0" or raw[4] != 2:
        raise ValueError(f"{path}: not an APR v2 file")
    flags, count, meta_off, meta_size, index_off, data_off = struct.unpack_from("<HIQIQQ", raw, 6)
    (hcrc,) = struct.unpack_from("<I", raw, 40)
    if hcrc != zlib.crc32(raw[:40] + raw[44:64]):
        raise ValueError(f"{path}: header checksum")
    if struct.unpack_from("<I", raw, len(raw) - 4)[0] != zlib.crc32(raw[:-4]):
        raise ValueError(f"{path}: footer checksum")
    if flags & 0x0800 or flags & 0x7:
        raise ValueError(f"{path}: flags {flags:#x} (column-major / compressed / encrypted)")
    meta = json.loads(raw[meta_off: meta_off + meta_size].decode("utf-8"))
    tensors, pos, prev = {}, index_off, b""
    for _ in range(count):
        (n,) = struct.unpack_from("<H", raw, pos)
        name = raw[pos + 2: pos + 2 + n]
        if name <= prev:
            raise ValueError(f"{path}: index not sorted by name bytes at {name!r}")
        prev = name
        code, ndim = raw[pos + 2 + n], raw[pos + 3 + n]
        shape = struct.unpack_from(f"<{ndim}Q", raw, pos + 4 + n)
        offset, size = struct.unpack_from("<QQ", raw, pos + 4 + n + 8 * ndim)
        pos += 4 + n + 8 * ndim + 16
        if offset % 64:
            raise ValueError(f"{path}: {name!r} data not 64-aligned")
        start = data_off + offset
        if start + size > len(raw) - 4:
            raise ValueError(f"{path}: {name!r} runs past the end")
        tensors[name.decode("utf-8")] = (code, tuple(shape), buf[start: start + size])
    if pos > data_off:
        raise ValueError(f"{path}: index overruns the data")
    return meta, tensors


# --- dequantization, as Aprender's decoders do it ---------------------------------------------

F16_MIN_NORMAL = 2.0 ** -14


def _apr_q4(data, n):
    """APR Q4 (128, old code 8): 18-byte blocks over the flattened tensor, f16 scale then 16
    bytes, element 2j in the low nibble of byte j and 2j+1 in the high one; x = (nib - 8) * d.
    Aprender reads a scale that is NaN, infinite or below 2**-14 as 0."""
    nb = -(-n // 32)
    if data.size != 18 * nb:
        raise ValueError(f"APR Q4: {data.size} bytes for {n} elements")
    b = data.reshape(nb, 18)
    d = b[:, :2].copy().view("<f2")[:, 0].astype(np.float32)
    d[~np.isfinite(d) | (np.abs(d) < F16_MIN_NORMAL)] = 0.0
    qs = b[:, 2:]
    nib = np.empty((nb, 32), np.float32)
    nib[:, 0::2] = qs & 0x0F
    nib[:, 1::2] = qs >> 4
    return ((nib - 8.0) * d[:, None]).reshape(-1)[:n]   # exact in f32: 4-bit int x 11-bit d


def _apr_q8(data, n):
    """APR Q8 (129, old code 9): one f32 scale for the whole tensor, then n int8."""
    if data.size != 4 + n:
        raise ValueError(f"APR Q8: {data.size} bytes for {n} elements")
    s = data[:4].copy().view("<f4")[0]
    return data[4:].view(np.int8).astype(np.float32) * s


def _ggml_k(data, n, shape, kind):
    """Q4_K (12) / Q6_K (14): raw GGML super-blocks, decoded with gguf-py's reference (a test
    dependency). A 2-D tensor is stored as Aprender's writer stores it, row by row, each row
    zero padded to whole 256-value super-blocks (its runtime's matmul reads them so); a 1-D
    one is flat, its last super-block zero padded."""
    from gguf import GGMLQuantizationType, quants
    t = {"Q4_K": GGMLQuantizationType.Q4_K, "Q6_K": GGMLQuantizationType.Q6_K}[kind]
    size = {"Q4_K": 144, "Q6_K": 210}[kind]
    if len(shape) == 2:
        rows, cols = shape
        per_row = -(-cols // 256)
        if data.size != rows * per_row * size:
            raise ValueError(f"{kind} {shape}: {data.size} bytes, Aprender's row layout has "
                             f"{rows * per_row * size}")
        x = quants.dequantize(data.reshape(rows, per_row * size), t)
        return x[:, :cols].astype(np.float32).reshape(-1)
    if data.size != -(-n // 256) * size:
        raise ValueError(f"{kind} {shape}: {data.size} bytes for {n} values")
    return quants.dequantize(data.reshape(1, -1), t).astype(np.float32).reshape(-1)[:n]


def dequantize(code, shape, data):
    """float32 array of `shape` from the stored bytes of one tensor."""
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if code == 0:
        x = data.view("<f4")
    elif code == 1:
        x = data.view("<f2").astype(np.float32)
    elif code == 30:
        x = (data.view("<u2").astype(np.uint32) << 16).view(np.float32)
    elif code == 3:
        x = data.view("<f8").astype(np.float32)
    elif code in (128, 8):
        x = _apr_q4(data, n)
    elif code in (129, 9):
        x = _apr_q8(data, n)
    elif code == 12:
        x = _ggml_k(data, n, shape, "Q4_K")
    elif code == 14:
        x = _ggml_k(data, n, shape, "Q6_K")
    else:
        raise ValueError(f"dtype code {code} is not a weight type")
    if x.size != n:
        raise ValueError(f"{x.size} values for shape {shape}")
    return np.asarray(x, np.float32).reshape(shape)


# --- the model ---------------------------------------------------------------------------------

REQUIRED = ("architecture", "hidden_size", "num_layers", "num_heads", "intermediate_size")
INTS = ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size",
        "vocab_size", "head_dim", "rope_type")
FAMILIES = {"llama": "llama", "mistral": "llama", "smollm": "llama", "granite": "llama",
            "qwen2": "qwen2", "qwen3": "qwen3"}


class AprModel:
    """Weights and hyper-parameters of a decoder APR, and its forward pass."""

    def __init__(self, path):
        self.path = str(path)
        meta, self._raw = read_apr(path)
        self.meta = meta
        for k in REQUIRED:
            if k not in meta:
                raise ValueError(f"{path}: missing {k!r} metadata (Aprender refuses the file)")
        for k in INTS:
            if k in meta and (not isinstance(meta[k], int) or isinstance(meta[k], bool)):
                raise ValueError(f"{path}: metadata {k!r} = {meta[k]!r} is not a JSON integer")
        arch = meta["architecture"]
        if arch not in FAMILIES:
            raise NotImplementedError(f"no reference forward pass for architecture {arch!r}")
        self.family = FAMILIES[arch]
        self.dim = meta["hidden_size"]
        self.n_layers = meta["num_layers"]
        self.n_heads = meta["num_heads"]
        self.n_kv = meta.get("num_kv_heads", self.n_heads)
        self.head_dim = meta.get("head_dim") or self.dim // self.n_heads
        self.ff = meta["intermediate_size"]
        self.eps = float(meta["rms_norm_eps"])
        self.theta = float(meta["rope_theta"])
        if "rope_type" not in meta:
            raise ValueError(f"{path}: no rope_type (the runtime's default depends on the "
                             "architecture; a runnable file says it)")
        self.rope_type = meta["rope_type"]
        if self.rope_type not in (0, 2):
            raise ValueError(f"{path}: rope_type {self.rope_type} (0 or 2 expected)")
        if self.dim % self.n_heads or self.n_heads % self.n_kv:
            raise ValueError(f"{path}: heads {self.n_heads}/{self.n_kv} do not divide")
        emb = self._raw.get("model.embed_tokens.weight")
        if emb is None or emb[1] != (meta.get("vocab_size", emb[1][0]), self.dim):
            raise ValueError(f"{path}: embedding shape {emb and emb[1]} does not match "
                             f"vocab_size/hidden_size")
        self.vocab = emb[1][0]
        self._cache = {}
        # Aprender's runtime ties a missing lm_head.weight, or one of its full shape and 0
        # data bytes (what its exporters write), to the embedding
        head = self._raw.get("lm_head.weight")
        if head is None or head[2].size == 0:
            if head is not None and head[1] != emb[1]:
                raise ValueError(f"{path}: empty lm_head.weight of shape {head[1]}, the "
                                 f"embedding's is {emb[1]}")
            if meta.get("tied_embeddings") is not True:
                raise ValueError(f"{path}: no lm_head.weight data and no tied_embeddings")
            self._raw["lm_head.weight"] = emb

    def has(self, name):
        return name in self._raw

    def w(self, name, shape=None, norm=False):
        """The float32 weight; `shape` checked; norms must be stored F32 (Aprender reads
        their bytes as raw f32 whatever the dtype says)."""
        if name not in self._cache:
            if name not in self._raw:
                raise KeyError(f"{self.path}: tensor {name} missing")
            code, shp, data = self._raw[name]
            if norm and code != 0:
                raise ValueError(f"{self.path}: norm {name} has dtype {code}, must be F32 (0)")
            if shape is not None and shp != tuple(shape):
                raise ValueError(f"{self.path}: {name} has shape {shp}, expected {tuple(shape)}")
            self._cache[name] = dequantize(code, shp, data)
        return self._cache[name]

    # -- pieces ---------------------------------------------------------------------------------

    def rms(self, x, name, size):
        g = self.w(name, (size,), norm=True).astype(np.float64)
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * g

    def linear(self, x, name, rows, cols, bias=False):
        y = x @ self.w(name, (rows, cols)).astype(np.float64).T
        if bias:
            b = name[: -len("weight")] + "bias"
            y = y + self.w(b, (rows,)).astype(np.float64)
        return y

    def rope(self, x, pos):
        """x: (T, heads, head_dim). rope_type 0 rotates (x[2i], x[2i+1]); 2 (NEOX) rotates
        (x[i], x[i + d/2]); both with angle pos * theta**(-2i/d)."""
        d = self.head_dim
        inv = self.theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)       # (d/2,)
        ang = pos[:, None].astype(np.float64) * inv[None, :]                  # (T, d/2)
        c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        if self.rope_type == 2:
            a, b = x[..., : d // 2], x[..., d // 2:]
            return np.concatenate([a * c - b * s, b * c + a * s], axis=-1)
        a, b = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = a * c - b * s
        out[..., 1::2] = b * c + a * s
        return out

    def attention(self, x, i, pos):
        p = f"model.layers.{i}.self_attn."
        T, hd, H, K = x.shape[0], self.head_dim, self.n_heads, self.n_kv
        bias = self.family == "qwen2" or self.has(p + "q_proj.bias")   # qwen2 must have them
        q = self.linear(x, p + "q_proj.weight", H * hd, self.dim, bias).reshape(T, H, hd)
        k = self.linear(x, p + "k_proj.weight", K * hd, self.dim, bias).reshape(T, K, hd)
        v = self.linear(x, p + "v_proj.weight", K * hd, self.dim, bias).reshape(T, K, hd)
        if self.family == "qwen3":
            q = self.rms(q, p + "q_norm.weight", hd)
            k = self.rms(k, p + "k_norm.weight", hd)
        q, k = self.rope(q, pos), self.rope(k, pos)
        k = np.repeat(k, H // K, axis=1)                  # q head h reads kv head h // (H/K)
        v = np.repeat(v, H // K, axis=1)
        s = np.einsum("thd,uhd->htu", q, k) / np.sqrt(hd)
        s = s + np.triu(np.full((T, T), -np.inf), 1)[None]
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        s /= s.sum(axis=-1, keepdims=True)
        o = np.einsum("htu,uhd->thd", s, v).reshape(T, H * hd)
        return self.linear(o, p + "o_proj.weight", self.dim, H * hd, self.has(p + "o_proj.bias"))

    def mlp(self, x, i):
        p = f"model.layers.{i}.mlp."
        g = self.linear(x, p + "gate_proj.weight", self.ff, self.dim)
        u = self.linear(x, p + "up_proj.weight", self.ff, self.dim)
        return self.linear(g / (1.0 + np.exp(-g)) * u, p + "down_proj.weight", self.dim, self.ff)

    def forward(self, ids):
        """Logits (T, vocab) in float64 for token ids at positions 0..T-1."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.min() < 0 or ids.max() >= self.vocab:
            raise ValueError("token id out of range")
        pos = np.arange(ids.size)
        x = self.w("model.embed_tokens.weight")[ids].astype(np.float64)
        for i in range(self.n_layers):
            p = f"model.layers.{i}."
            x = x + self.attention(self.rms(x, p + "input_layernorm.weight", self.dim), i, pos)
            x = x + self.mlp(self.rms(x, p + "post_attention_layernorm.weight", self.dim), i)
        x = self.rms(x, "model.norm.weight", self.dim)
        return self.linear(x, "lm_head.weight", self.vocab, self.dim)


def next_token_stats(logits, ids):
    """(argmax of each position's next-token logits, perplexity of ids[1:]) from (T, V) logits."""
    lg = np.asarray(logits, np.float64)[:-1]
    m = lg.max(axis=-1, keepdims=True)
    logp = lg - m - np.log(np.exp(lg - m).sum(axis=-1, keepdims=True))
    nll = -logp[np.arange(len(ids) - 1), np.asarray(ids[1:])]
    return lg.argmax(axis=-1), float(np.exp(nll.mean()))
