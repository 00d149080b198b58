"""Hostile input: valid seed files written by the real packages, mutators, and the harness
that runs a file set through every reader and asserts it ends in success or BadInput.

Shared by tests/test_malformed.py (corpus + a short derandomized fuzz) and bench/fuzz.py
(the long run). Nothing here needs atheris.
"""

import builtins
import hashlib
import io
import json
import os
import signal
import struct
import tracemalloc
import zlib
from contextlib import contextmanager

import numpy as np

import q4apr
from q4apr.formats import apr

FORMATS = ("safetensors", "index", "gguf", "apr", "npy", "npz")
EXT = {"safetensors": ".safetensors", "index": ".json", "gguf": ".gguf", "apr": ".apr",
       "npy": ".npy", "npz": ".npz"}


class Finding(AssertionError):
    """The harness saw something a reader must never do (crash, huge read, changed input)."""


class HugeRead(Finding):
    pass


class Hang(Finding):
    pass


# ---------------------------------------------------------------- seeds (valid files)

def _rng():
    return np.random.default_rng(7)


def small_tensors():
    rng = _rng()
    return {"model.layers.0.mlp.up_proj.weight": rng.standard_normal((8, 64)).astype(np.float32),
            "model.norm.weight": (1 + 0.1 * rng.standard_normal(64)).astype(np.float16),
            "lm_head.weight": rng.standard_normal((4, 32)).astype(np.float16),
            "model.layers.0.ids": np.arange(6, dtype=np.int32)}


def safetensors_seed():
    from safetensors.numpy import save
    return save(small_tensors(), metadata={"format": "pt"})


def sharded_seed():
    """{filename: bytes}: two shards and their index."""
    from safetensors.numpy import save
    t = small_tensors()
    names = sorted(t)
    shards = {"model-00001-of-00002.safetensors": names[:2],
              "model-00002-of-00002.safetensors": names[2:]}
    files = {f: save({k: t[k] for k in ks}) for f, ks in shards.items()}
    index = {"metadata": {"total_size": 1234},
             "weight_map": {k: f for f, ks in shards.items() for k in ks}}
    files["model.safetensors.index.json"] = json.dumps(index, indent=1).encode()
    return files


def gguf_seed(tmpdir):
    import gguf
    from gguf.quants import quantize
    Q = gguf.GGMLQuantizationType
    rng = _rng()
    path = os.path.join(tmpdir, "seed.gguf")
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("tiny")
    w.add_context_length(128)
    w.add_float32("test.f32", 0.5)
    w.add_array("test.strings", ["a", "bé", "<s>"])
    w.add_array("test.ints", list(range(20)))
    w.add_tensor("token_embd.weight", rng.standard_normal((4, 64)).astype(np.float32))
    w.add_tensor("blk.0.attn_q.weight", rng.standard_normal((2, 64)).astype(np.float16))
    w.add_tensor("blk.0.ffn_up.weight",
                 quantize(rng.standard_normal((2, 64)).astype(np.float32), Q.Q8_0), raw_dtype=Q.Q8_0)
    w.add_tensor("blk.0.ffn_down.weight",
                 quantize(rng.standard_normal((2, 64)).astype(np.float32), Q.Q4_0), raw_dtype=Q.Q4_0)
    w.add_tensor("blk.0.attn_norm.weight", np.ones(64, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with open(path, "rb") as f:
        data = f.read()
    os.unlink(path)
    return data


def apr_seed(tmpdir):
    """Our own APR writer's output (through the pipeline) for the safetensors seed."""
    path = os.path.join(tmpdir, "seed.safetensors")
    with open(path, "wb") as f:
        f.write(safetensors_seed())
    with q4apr.open_model(path) as m:
        sink = q4apr.MemorySink()
        q4apr.quantize(m, sink, q4apr.Options(format="apr"))
    os.unlink(path)
    return sink.getvalue()


def npy_seed():
    b = io.BytesIO()
    np.save(b, _rng().standard_normal((4, 64)).astype(np.float32))
    return b.getvalue()


def npz_seed(compressed=False):
    b = io.BytesIO()
    t = small_tensors()
    (np.savez_compressed if compressed else np.savez)(
        b, w=t["model.layers.0.mlp.up_proj.weight"], n=t["model.norm.weight"],
        i=t["model.layers.0.ids"])
    return b.getvalue()


def seeds(tmpdir):
    """{format: [file set]}, a file set being {filename: bytes}; the fuzz mutates one file."""
    return {
        "safetensors": [{"m.safetensors": safetensors_seed()}],
        "index": [sharded_seed()],
        "gguf": [{"m.gguf": gguf_seed(tmpdir)}],
        "apr": [{"m.apr": apr_seed(tmpdir)}],
        "npy": [{"m.npy": npy_seed()}],
        "npz": [{"m.npz": npz_seed()}, {"c.npz": npz_seed(True)}],
    }


# ---------------------------------------------------------------- helpers to break files

def fix_apr_crcs(data):
    """Recompute an APR file's header and footer CRCs, so that a test breaks one rule only."""
    b = bytearray(data)
    if len(b) >= 64:
        struct.pack_into("<I", b, 40, apr.header_crc(bytes(b[:64])))
    if len(b) >= 68:
        struct.pack_into("<I", b, len(b) - 4, zlib.crc32(bytes(b[:-4])))
    return bytes(b)


def write_set(folder, files):
    """Write {filename: bytes} into folder; the paths, shards and files before index."""
    paths = []
    for name, data in files.items():
        p = os.path.join(folder, name)
        with open(p, "wb") as f:
            f.write(data)
        paths.append(p)
    return paths


# ---------------------------------------------------------------- the harness

def _digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class _Guarded:
    """A file object whose reads may not ask for more than the file could ever give."""

    def __init__(self, f, limit, path):
        self._f, self._limit, self._path = f, limit, path

    def _check(self, n):
        if n is not None and n > self._limit:
            raise HugeRead(f"read({n}) on {os.path.basename(self._path)} of "
                           f"{self._limit} bytes: a size from the file was not checked")

    def read(self, n=-1):
        self._check(n)
        return self._f.read(n)

    def read1(self, n=-1):
        self._check(n)
        return self._f.read1(n)

    def readinto(self, b):
        self._check(len(memoryview(b).cast("B")))
        return self._f.readinto(b)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __iter__(self):
        return iter(self._f)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


@contextmanager
def guarded_reads(paths):
    """While inside: every binary open() of one of `paths` gets a _Guarded file."""
    real = builtins.open
    watch = {os.path.abspath(p) for p in paths}

    def guarded_open(file, mode="r", *args, **kwargs):
        f = real(file, mode, *args, **kwargs)
        if isinstance(file, (str, bytes, os.PathLike)) and "b" in mode and "r" in mode:
            p = os.path.abspath(os.fsdecode(file))
            if p in watch:
                return _Guarded(f, max(os.path.getsize(p), 1 << 16), p)
        return f

    builtins.open = io.open = guarded_open
    try:
        yield
    finally:
        builtins.open = io.open = real


@contextmanager
def time_limit(seconds):
    """Raise Hang if the body runs longer than `seconds` (main thread, Unix; else no limit)."""
    def on_alarm(*_):
        raise Hang(f"no answer after {seconds} s")
    try:
        old = signal.signal(signal.SIGALRM, on_alarm)
    except (ValueError, AttributeError):   # not the main thread, or no SIGALRM
        yield
        return
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def exercise(paths, chunk_bytes=256, timeout=None, memory_limit=None):
    """open_model + quantize to APR and to GGUF; None on success, else the BadInput.

    Anything else escapes (the caller calls it a finding), and so do: a read sized beyond
    the file, an input file that changed, a run over `timeout` seconds, or (when
    memory_limit is given) a traced peak allocation over it.
    """
    before = {p: _digest(p) for p in paths}
    if memory_limit:
        tracemalloc.start()
    try:
        with guarded_reads(paths):
            if timeout:
                with time_limit(timeout):
                    err = _run_all(paths, chunk_bytes)
            else:
                err = _run_all(paths, chunk_bytes)
        if memory_limit:
            peak = tracemalloc.get_traced_memory()[1]
            if peak > memory_limit:
                raise Finding(f"peak allocation {peak} bytes is over {memory_limit}")
    finally:
        if memory_limit:
            tracemalloc.stop()
    for p, d in before.items():
        if _digest(p) != d:
            raise Finding(f"{p} was changed by reading it")
    if err is not None:
        check_message(err, paths)
    return err


def _run_all(paths, chunk_bytes):
    q4apr.verify_file(paths, chunk_bytes=chunk_bytes)   # reports, never raises
    try:
        model = q4apr.open_model(paths)
    except q4apr.BadInput as e:
        return e
    first = None
    with model:
        q4apr.inspect_model(model)
        for fmt in ("apr", "gguf"):
            try:
                q4apr.quantize(model, q4apr.MemorySink(),
                               q4apr.Options(format=fmt, chunk_bytes=chunk_bytes))
            except q4apr.BadInput as e:
                first = first or e
    return first


def check_message(err, paths):
    """A BadInput must say which file (or name every file involved) and what is wrong."""
    msg = err.message
    names = [os.path.basename(p) for p in paths]
    if not any(n in msg for n in names) and "shards" not in msg:
        raise Finding(f"the message does not name the file: {msg!r}")
    if len(err.problem or "") < 8:
        raise Finding(f"the message does not say what is wrong: {msg!r}")


# ---------------------------------------------------------------- mutations

BOUNDARY = [0, 1, 2, 7, 8, 31, 32, 63, 64, 127, 128, 255, 256, 0x7FFF, 0x8000, 0xFFFF, 0x10000,
            0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 32, 1 << 40, (1 << 62), (1 << 63) - 1,
            1 << 63, (1 << 64) - 1]


def mutate_once(data, kind, a, b, value, other=b""):
    """One mutation of bytes `data`; a, b in [0, 1) choose places, value an int."""
    n = len(data)
    at = int(a * (n + 1))
    if kind == "flip" and n:
        at = min(at, n - 1)
        return data[:at] + bytes([data[at] ^ (1 << (value % 8))]) + data[at + 1:]
    if kind == "insert":
        return data[:at] + value.to_bytes(8, "little")[: 1 + value % 8] + data[at:]
    if kind == "delete":
        return data[:at] + data[at + 1 + int(b * 16):]
    if kind == "truncate":
        return data[:at]
    if kind == "splice":
        j = int(b * (len(other) + 1))
        return data[:at] + other[j:]
    if kind == "int":
        width = (1, 2, 4, 8)[value % 4]
        v = BOUNDARY[(value >> 2) % len(BOUNDARY)] % (1 << (8 * width))
        if n >= width:
            at = min(at, n - width)
            return data[:at] + v.to_bytes(width, "little") + data[at + width:]
    if kind == "dup" and n:
        j = int(b * n)
        return data[:at] + data[j: j + 1 + value % 64] + data[at:]
    return data


KINDS = ("flip", "insert", "delete", "truncate", "splice", "int", "dup")


def mutate(data, ops, other=b"", fix_crc=False):
    for kind, a, b, value in ops:
        data = mutate_once(data, kind, a, b, value, other)
    if fix_crc:
        data = fix_apr_crcs(data)
    return data


def random_ops(r, max_ops=4):
    return [(r.choice(KINDS), r.random(), r.random(), r.getrandbits(16))
            for _ in range(r.randint(1, max_ops))]


JSON_VALUES = [-1, 0, 1, 31, 32, 2 ** 31, 2 ** 63, 2 ** 64, 2 ** 70, 1.5, 1e308, -0.0, None, True,
               "", "F32", "BF16", "F8_E4M3", "Q4_0", "x" * 300, [], [0], [1, 2, 3], [2 ** 40] * 3,
               [0] * 17, {}, {"a": "b"}, "\ud800", "\u00e9"]


def json_mutate(r, value):
    """A copy of a parsed JSON value with one node replaced (or a key renamed/duplicated)."""
    import copy
    value = copy.deepcopy(value)
    nodes = [(None, None, value)]
    stack = [value]
    while stack:
        v = stack.pop()
        items = v.items() if isinstance(v, dict) else enumerate(v) if isinstance(v, list) else ()
        for k, child in items:
            nodes.append((v, k, child))
            stack.append(child)
    parent, key, _ = r.choice(nodes)
    if parent is None:
        return value
    if isinstance(parent, dict) and r.random() < 0.3:
        parent[r.choice(JSON_VALUES[16:18] + ["lm_head.weight", "__metadata__"]) + ""] = \
            parent.pop(key)
    else:
        parent[key] = r.choice(JSON_VALUES)
    return value


def structured_mutation(r, name, data):
    """Mutate the JSON of a safetensors header or an index, keeping the framing valid."""
    try:
        if name.endswith(".json"):
            return json.dumps(json_mutate(r, json.loads(data))).encode("utf-8", "surrogatepass")
        if name.endswith(".safetensors"):
            (n,) = struct.unpack_from("<Q", data)
            head = json.dumps(json_mutate(r, json.loads(data[8:8 + n]))).encode(
                "utf-8", "surrogatepass")
            return struct.pack("<Q", len(head)) + head + data[8 + n:]
    except (ValueError, struct.error):
        pass
    return data


def random_case(r, fileset, splice_pool):
    """A mutated copy of a file set (one file changed) from random.Random r."""
    files = dict(fileset)
    target = r.choice(sorted(files))
    data = files[target]
    if target.endswith((".json", ".safetensors")) and r.random() < 0.5:
        data = structured_mutation(r, target, data)
        if r.random() < 0.5:
            files[target] = data
            return files
    other = r.choice(splice_pool)
    fix = target.endswith(".apr") and r.random() < 0.7
    files[target] = mutate(data, random_ops(r), other, fix)
    return files


def classify(exc):
    """A short, stable label for a finding (type and innermost frame)."""
    import traceback
    tb = traceback.extract_tb(exc.__traceback__)
    where = f"{os.path.basename(tb[-1].filename)}:{tb[-1].lineno}" if tb else "?"
    return f"{type(exc).__name__} at {where}"


# ---------------------------------------------------------------- the CLI under Ctrl-C

def interrupt_cli(tmp_path, *extra):
    """Run `q4apr quantize` on a 64 MB model (about a second of work in 0.125 MB chunks),
    send SIGINT once its temporary output exists; check exit 130, nothing left behind and
    the input unchanged."""
    import subprocess
    import sys
    import time
    from safetensors.numpy import save_file
    rng = np.random.default_rng(0)
    tensors = {f"model.layers.{i}.mlp.up_proj.weight":
               rng.standard_normal((1024, 1024), dtype=np.float32) for i in range(16)}
    src = tmp_path / "big.safetensors"
    save_file(tensors, str(src))
    before = _digest(str(src))
    out = tmp_path / "out.apr"
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.path.join(repo, "py"), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "q4apr", "quantize", str(src), "--chunk-mb",
                             "0.125", *extra, "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            # a shell's background job starts with SIGINT ignored, and Python
                            # then never turns it into KeyboardInterrupt: restore the default
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        # wait until the temporary output exists (the run is under way), then interrupt
        deadline = time.monotonic() + 60
        part = []
        while time.monotonic() < deadline and proc.poll() is None and not part:
            part = [n for n in os.listdir(tmp_path) if n.endswith(".part")]
            time.sleep(0.002)
        assert proc.poll() is None and part, "the run ended before it could be interrupted"
        assert not out.exists()   # written through the temporary file only
        time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err.decode()
    assert b"interrupted" in err and b"Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == ["big.safetensors"]
    assert _digest(str(src)) == before
