"""Options(threads=N) / --threads N: the same bytes, the same report and the same first
error as threads=1, whatever the format, type or input; Ctrl-C leaves nothing behind.

Small chunks (CHUNK bytes), so every tensor is many chunks and several are in flight.
"""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

import hostile
from helpers import llama_like, run, write_gguf_tensors

import q4apr

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHUNK = 4096   # 1024 F32 values: a 256x64 matrix is 16 chunks


def same(paths, **options):
    """Run with 1 and 4 threads; assert equal bytes and reports; return the report."""
    a, ra = run(paths, threads=1, chunk_bytes=CHUNK, **options)
    b, rb = run(paths, threads=4, chunk_bytes=CHUNK, **options)
    ra["totals"].pop("seconds"), rb["totals"].pop("seconds")
    assert a == b
    assert ra == rb
    return ra


def tensors(rng):
    t = llama_like(rng)
    t["odd.weight"] = rng.standard_normal((37, 101)).astype(np.float32)   # short last block
    t["big.weight"] = rng.standard_normal((256, 64 * 8)).astype(np.float32) * 0.02
    return t


@pytest.fixture
def st_path(tmp_path):
    from safetensors.numpy import save_file
    p = tmp_path / "model.safetensors"
    save_file(tensors(np.random.default_rng(3)), str(p))
    return str(p)


@pytest.mark.parametrize("fmt,qtype", [("apr", "Q4_0"), ("gguf", "Q4_0"), ("gguf", "Q4_K_M"),
                                       ("apr", "Q4_K_M")])
def test_safetensors_same_bytes_and_report(st_path, fmt, qtype):
    rep = same([st_path], format=fmt, type=qtype)
    assert any(t["action"] == "quantize" for t in rep["tensors"])


def test_f16_outputs_and_keep(st_path):
    same([st_path], format="gguf", keep_embeddings_f16=True, keep_output_f16=True)
    same([st_path], format="apr", pure=True, skip=("*.odd.*", "big.*"))


def test_gguf_input(tmp_path):
    gguf = pytest.importorskip("gguf")
    rng = np.random.default_rng(5)
    F32, F16 = gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16
    p = tmp_path / "in.gguf"
    w = gguf.GGUFWriter(str(p), "llama")
    write_gguf_tensors(w, {
        "token_embd.weight": (rng.standard_normal((128, 64)) * 0.02, F16),
        "blk.0.attn_q.weight": (rng.standard_normal((64, 64)) * 0.02, F32),
        "blk.0.ffn_up.weight": (rng.standard_normal((96, 64)) * 0.02, F16),
        "blk.0.attn_norm.weight": (np.ones(64), F32),
        "blk.0.q8.weight": (rng.standard_normal((64, 64)), gguf.GGMLQuantizationType.Q8_0),
    })
    for fmt in ("apr", "gguf"):
        same([str(p)], format=fmt)


def test_model_folder_tiny_llama():
    hf = pytest.importorskip("fixtures.hf", reason="tests/fixtures/hf.py missing")
    folder = str(hf.model_dir("tiny-llama"))
    same([folder], format="gguf", type="Q4_K_M")
    same([folder], format="apr")


def test_figures_do_not_depend_on_the_chunk_size(st_path):
    reps = [run([st_path], chunk_bytes=c, threads=t)[1] for c, t in
            ((CHUNK, 1), (1 << 20, 1), (4 << 20, 3), (1024, 2), (5000, 1))]
    for r in reps:
        r["totals"].pop("seconds")
    assert all(r == reps[0] for r in reps)


def _st(tmp_path, arrays, name="m.safetensors"):
    from safetensors.numpy import save_file
    p = tmp_path / name
    save_file(arrays, str(p))
    return str(p)


@pytest.mark.parametrize("fmt", ["apr", "gguf"])
def test_first_non_finite_value_wins(tmp_path, fmt):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((64, 256)).astype(np.float32)
    b = rng.standard_normal((64, 256)).astype(np.float32)
    a[40, 3] = np.inf       # in a late chunk of the first tensor written
    a[60, 0] = np.nan
    b[1, 1] = np.nan
    p = _st(tmp_path, {"blk.a.weight": a, "blk.b.weight": b})
    msgs = []
    for threads in (1, 4):
        with pytest.raises(q4apr.BadInput) as e:
            run([p], format=fmt, threads=threads, chunk_bytes=CHUNK)
        msgs.append((e.value.message, e.value.tensor))
    assert msgs[0] == msgs[1]
    assert msgs[0][1] == "blk.a.weight" and f"flat index {40 * 256 + 3}" in msgs[0][0]
    same([p], format=fmt, allow_non_finite=True)   # counted, the tensors kept at F32


def test_a_file_cut_short_during_the_run_gives_the_same_error(tmp_path):
    """With threads, a tensor stored as it is in a plain file is read by the threads that
    convert it (os.preadv at its own offsets); a file that shrinks under the run fails
    with the error of threads=1, naming the file and the tensor, and leaves no output."""
    rng = np.random.default_rng(4)
    t = {"blk.a.weight": rng.standard_normal((64, 256)).astype(np.float32),
         "blk.b.weight": rng.standard_normal((64, 256)).astype(np.float32)}
    p = _st(tmp_path, t)
    full = open(p, "rb").read()
    out = tmp_path / "out" / "m.apr"
    out.parent.mkdir()
    errors = []
    for threads in (1, 4):
        with q4apr.open_model(p) as model:
            last = max(model.tensors, key=lambda e: e.offset).name
            with open(p, "r+b") as f:   # after the header was read: 1000 bytes cut off
                f.truncate(len(full) - 1000)
            with pytest.raises(q4apr.BadInput) as e:
                q4apr.quantize(model, q4apr.FileSink(str(out)),
                               q4apr.Options(threads=threads, chunk_bytes=CHUNK))
        errors.append((e.value.message, e.value.tensor, e.value.file))
        assert os.listdir(out.parent) == []
        with open(p, "wb") as f:
            f.write(full)
    assert errors[0] == errors[1]
    assert "ends inside this tensor" in errors[0][0] and errors[0][1:] == (last, p)


def test_overflow_rewind_is_the_same(tmp_path):
    rng = np.random.default_rng(2)
    a = rng.standard_normal((64, 256)).astype(np.float32)
    a[50, 7] = 1e9            # a Q4 scale beyond f16: the tensor is written again at F32
    c = rng.standard_normal((64, 256)).astype(np.float32)
    c[63, 255] = 1e6
    p = _st(tmp_path, {"blk.a.weight": a, "blk.c.weight": c,
                       "blk.d.weight": rng.standard_normal((64, 256)).astype(np.float32)})
    for fmt in ("apr", "gguf"):
        rep = same([p], format=fmt)
        assert [t["dtype_out"] for t in rep["tensors"] if t["name"] == "blk.a.weight"] == ["F32"]


def test_f64_beyond_f32_names_the_same_index(tmp_path):
    a = np.zeros((64, 64), np.float64)
    a[30, 5] = 1e300
    a[60, 1] = -1e300
    p = tmp_path / "m.npy"
    np.save(p, a)
    msgs = []
    for threads in (1, 3):
        with pytest.raises(q4apr.BadInput) as e:
            run([str(p)], threads=threads, chunk_bytes=1024)
        msgs.append(e.value.message)
    assert msgs[0] == msgs[1] and f"flat index {30 * 64 + 5}" in msgs[0]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2", 10_000])
def test_bad_thread_counts(bad):
    with pytest.raises(q4apr.BadInput):
        q4apr.Options(threads=bad)


def test_cli_threads_same_file(st_path, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "py"))
    outs = []
    for threads in ("1", "4"):
        out = tmp_path / f"t{threads}.gguf"
        r = subprocess.run([sys.executable, "-m", "q4apr", "quantize", st_path, "-o", str(out),
                            "--threads", threads, "--chunk-mb", "0.01", "-q", "--type", "Q4_K_M"],
                           env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    r = subprocess.run([sys.executable, "-m", "q4apr", "quantize", st_path, "-o",
                        str(tmp_path / "x.apr"), "--threads", "0"], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "threads" in r.stderr
    assert not (tmp_path / "x.apr").exists()


@pytest.mark.skipif(not hasattr(signal, "SIGINT") or os.name != "posix", reason="POSIX signals")
def test_ctrl_c_with_threads_leaves_nothing(tmp_path):
    hostile.interrupt_cli(tmp_path, "--threads", "4")


def test_cancel_with_threads_stops_and_the_next_run_works(st_path, tmp_path):
    out = tmp_path / "o.apr"
    calls = []
    with q4apr.open_model([st_path]) as m:
        with pytest.raises(q4apr.Cancelled):
            q4apr.quantize(m, q4apr.FileSink(str(out)),
                           q4apr.Options(threads=4, chunk_bytes=CHUNK),
                           cancel=lambda: calls.append(1) or len(calls) > 5)
    assert os.listdir(tmp_path) == ["model.safetensors"]
    a, _ = run([st_path], threads=4, chunk_bytes=CHUNK)
    b, _ = run([st_path], threads=1)
    assert a == b


def test_no_pool_under_pyodide(st_path, monkeypatch):
    """Pyodide cannot start threads: Options(threads=N) there runs as threads=1."""
    import concurrent.futures
    from q4apr import pipeline

    def refuse(*a, **kw):
        raise RuntimeError("can't start new thread")
    monkeypatch.setattr(pipeline.sys, "platform", "emscripten")
    monkeypatch.setattr(concurrent.futures, "ThreadPoolExecutor", refuse)
    a, _ = run([st_path], threads=4, chunk_bytes=CHUNK)
    monkeypatch.undo()
    b, _ = run([st_path], threads=1, chunk_bytes=CHUNK)
    assert a == b


# ---- an executor: the page's worker pool, played by threads that only see copies ----

class _Remote:
    """A future of Loopback: done once the worker thread has converted its copy."""

    def __init__(self, fn):
        import threading
        self._ev, self._r, self._e = threading.Event(), None, None

        def go():
            try:
                self._r = fn()
            except BaseException as e:
                self._e = e
            self._ev.set()
        threading.Thread(target=go, daemon=True).start()

    def done(self):
        return self._ev.is_set()

    def block(self):
        self._ev.wait()

    def cancel(self):
        return False

    def result(self):
        assert self.done(), "result() before done(): the pipeline must Wait first"
        if self._e is not None:
            raise self._e
        return self._r


class Loopback:
    """What worker.js's pool does, with threads: each 'worker' gets a copy of the chunk's
    bytes and a JSON round trip of the job, converts it with its own ChunkConverter and
    hands back copies of the parts; `busy` says which submissions find every worker busy
    (the pipeline then converts the chunk itself)."""

    def __init__(self, workers=2, busy=lambda k: k % 3 == 2, fail_at=None, reads=False):
        import json
        from q4apr.pipeline import ChunkConverter
        self.workers, self.busy, self.fail_at = workers, busy, fail_at
        self.reads_files = reads   # chunks stored as they are come as byte ranges (raw None)
        self.ranges = 0
        import threading
        self.converters = [(ChunkConverter(), threading.Lock()) for _ in range(workers)]
        self.k = self.remote = self.local = 0
        self._json = json

    def submit_chunk(self, job, raw):
        k, self.k = self.k, self.k + 1
        if self.busy(k):
            self.local += 1
            return None
        self.remote += 1
        job = self._json.loads(self._json.dumps(job))
        if raw is None:
            self.ranges += 1
        else:
            raw = bytes(raw)
        conv, one_at_a_time = self.converters[k % self.workers]

        def convert():
            if self.fail_at == k:
                raise q4apr.Q4Error("a conversion worker stopped (test)")
            with one_at_a_time:   # a worker converts one chunk at a time, in its own buffers
                parts = conv.convert(job, raw)
                return {key: bytes(v) if isinstance(v, memoryview) else v
                        for key, v in parts.items()}
        return _Remote(convert)


def same_with_executor(paths, **options):
    """threads=1 against Loopback executors (all remote, mixed, 1 or 3 workers)."""
    a, ra = run(paths, threads=1, chunk_bytes=CHUNK, **options)
    ra["totals"].pop("seconds")
    for ex in (Loopback(1, busy=lambda k: False), Loopback(2), Loopback(3, busy=lambda k: k % 2)):
        b, rb = run(paths, executor=ex, chunk_bytes=CHUNK, **options)
        rb["totals"].pop("seconds")
        assert a == b and ra == rb
        assert ex.remote > 0
    return ra


@pytest.mark.parametrize("fmt,qtype", [("apr", "Q4_0"), ("gguf", "Q4_K_M")])
def test_executor_same_bytes_and_report(st_path, fmt, qtype):
    same_with_executor([st_path], format=fmt, type=qtype)


def test_executor_gguf_input_folder_overflow_and_non_finite(tmp_path):
    hf = pytest.importorskip("fixtures.hf", reason="tests/fixtures/hf.py missing")
    same_with_executor([str(hf.model_dir("tiny-llama"))], format="gguf", type="Q4_K_M")
    rng = np.random.default_rng(2)
    a = rng.standard_normal((64, 256)).astype(np.float32)
    a[50, 7] = 1e9            # rewritten at F32
    b = rng.standard_normal((64, 256)).astype(np.float32)
    b[40, 3] = np.nan
    p = _st(tmp_path, {"blk.a.weight": a, "blk.b.weight": b,
                       "blk.c.weight": rng.standard_normal((64, 256)).astype(np.float16)})
    same_with_executor([p], format="apr", allow_non_finite=True)
    with pytest.raises(q4apr.BadInput, match=f"flat index {40 * 256 + 3}"):
        run([p], executor=Loopback(2), chunk_bytes=CHUNK)


def test_executor_reading_byte_ranges_same_bytes_and_report(st_path, tmp_path):
    """An executor whose workers read their chunks themselves (the page's pool, the CLI's
    processes): chunks of tensors stored as they are go as byte ranges; those refused by
    a busy pool are read here at their offset; same bytes and report."""
    a, ra = run([st_path], threads=1, chunk_bytes=CHUNK, format="gguf", type="Q4_K_M")
    ra["totals"].pop("seconds")
    ex = Loopback(2, busy=lambda k: k % 3 == 1, reads=True)
    b, rb = run([st_path], executor=ex, chunk_bytes=CHUNK, format="gguf", type="Q4_K_M")
    rb["totals"].pop("seconds")
    assert a == b and ra == rb
    assert ex.ranges > 0 and ex.local > 0


@pytest.mark.parametrize("spare", [True, False])
def test_executor_with_spare_cores_waits_for_a_worker_rather_than_converting_here(
        st_path, monkeypatch, spare):
    """With cores to spare (the page on 4+ cores) a chunk the workers would read is not
    converted here while another is in flight: the run waits for a worker, this one only
    hands out chunks and writes (here at most the first chunk of a tensor, when nothing is
    in flight yet).  Without, a refused chunk is converted here.  Same bytes either way."""
    import threading
    from q4apr import pipeline
    a, ra = run([st_path], threads=1, chunk_bytes=CHUNK, format="apr", type="Q4_0")
    ra["totals"].pop("seconds")
    here, convert = [], pipeline._convert

    def counted(*args):   # (bufs, view, n, i, src, dtype_out, q4, add, path, name)
        if threading.current_thread() is threading.main_thread() and args[6] is not None:
            here.append(args[9])
        return convert(*args)
    monkeypatch.setattr(pipeline, "_convert", counted)
    ex = Loopback(2, busy=lambda k: k % 2 == 1, reads=True)
    ex.spare_cores = spare
    b, rb = run([st_path], executor=ex, chunk_bytes=CHUNK, format="apr", type="Q4_0")
    rb["totals"].pop("seconds")
    assert a == b and ra == rb
    assert ex.local > 0 and ex.ranges > 0
    once = len(here) == len(set(here))   # no tensor had a second chunk converted here
    assert once == spare, here


def test_executor_failure_fails_the_run_and_leaves_nothing(st_path, tmp_path):
    out = tmp_path / "o.apr"
    with q4apr.open_model([st_path]) as m:
        with pytest.raises(q4apr.Q4Error, match="conversion worker stopped"):
            q4apr.quantize(m, q4apr.FileSink(str(out)), q4apr.Options(chunk_bytes=CHUNK),
                           executor=Loopback(2, fail_at=7))
    assert os.listdir(tmp_path) == ["model.safetensors"]


def test_executor_waits_are_yielded_and_cancel_abandons_them(st_path, tmp_path):
    """The page's driver sees Wait (it awaits the future) and may stop at any step."""
    from q4apr.pipeline import Wait
    with q4apr.open_model([st_path]) as m:
        sink = q4apr.FileSink(str(tmp_path / "o.apr"))
        steps = q4apr.quantize_steps(m, sink, q4apr.Options(chunk_bytes=CHUNK),
                                     Loopback(2, busy=lambda k: False))
        waits = 0
        for p in steps:   # (chunks of quantized tensors go to the executor; stop at the
            if isinstance(p, Wait):   # first wait: how many come depends on the threads' pace)
                waits += 1
                assert not p.future.done()
                p.future.block()
                break
        steps.close()
    assert waits > 0
    assert os.listdir(tmp_path) == ["model.safetensors"]
