"""The CLI's worker processes (q4apr.processes, Linux): what threads=N uses natively.
test_threads.py checks their bytes, reports and first errors against threads=1; here:
the thread pool kept for other platforms, inputs sent through the shared slots, a worker
killed, errors that do not pickle, a replaced input file, and no worker outliving its run.
"""

import multiprocessing
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import run
from test_threads import _st

import q4apr
from q4apr import pipeline, processes

pytestmark = pytest.mark.skipif(not processes.available(), reason="fork: Linux only")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHUNK = 4096


def _model(tmp_path, rows=256):
    rng = np.random.default_rng(5)
    return _st(tmp_path, {f"blk.{i}.ffn_up.weight": rng.standard_normal((rows, 256)).astype(np.float32)
                          for i in range(3)})


def _workers():
    return [p for p in multiprocessing.active_children() if p.name.startswith("q4apr-")]


def test_threads_where_fork_is_not_the_way(tmp_path, monkeypatch):
    """macOS, Windows: Options(threads=N) converts in a thread pool, same bytes."""
    p = _model(tmp_path)
    a, _ = run([p], threads=1, chunk_bytes=CHUNK)
    monkeypatch.setattr(processes, "available", lambda: False)
    started = []
    import concurrent.futures
    real = concurrent.futures.ThreadPoolExecutor
    monkeypatch.setattr(concurrent.futures, "ThreadPoolExecutor",
                        lambda *a, **kw: started.append(1) or real(*a, **kw))
    b, _ = run([p], threads=3, chunk_bytes=CHUNK)
    assert a == b and started == [1]


@pytest.mark.parametrize("depth", [1, 3])
def test_fewer_queued_jobs_when_the_slots_would_take_more(tmp_path, monkeypatch, depth):
    """The shared slots stay within processes.SHARED_BUDGET (at least one job per worker):
    1 or 3 queued per worker here, same bytes as threads=1."""
    slot = CHUNK + pipeline._out_bytes(CHUNK // 4)   # an F32 chunk in, its APR Q4 out
    budget = 1 if depth == 1 else depth * 2 * slot
    p = _model(tmp_path)
    a, _ = run([p], threads=1, chunk_bytes=CHUNK)
    monkeypatch.setattr(processes, "SHARED_BUDGET", budget)
    depths = []
    real = processes.ProcessExecutor.__init__

    def init(self, *args):
        real(self, *args)
        depths.append(self.in_flight // self.workers)
    monkeypatch.setattr(processes.ProcessExecutor, "__init__", init)
    b, _ = run([p], threads=2, chunk_bytes=CHUNK)
    assert a == b and depths == [depth]


def test_inputs_sent_through_the_shared_slots(tmp_path, monkeypatch):
    """Chunks the workers cannot read themselves (an .npz member, rows reordered) come in
    the shared mapping: same bytes as threads=1; the workers were sent them."""
    rng = np.random.default_rng(6)
    path = tmp_path / "m.npz"
    np.savez(path, **{"blk.0.ffn_up.weight": rng.standard_normal((128, 256)).astype(np.float32),
                      "blk.1.ffn_up.weight": rng.standard_normal((64, 256)).astype(np.float16)})
    a, _ = run([str(path)], threads=1, chunk_bytes=CHUNK)
    sent = []
    real = processes.ProcessExecutor.submit_chunk
    monkeypatch.setattr(processes.ProcessExecutor, "submit_chunk",
                        lambda self, job, raw: sent.append(raw is not None) or real(self, job, raw))
    b, _ = run([str(path)], threads=2, chunk_bytes=CHUNK)
    assert a == b
    assert sent and all(sent)


def test_a_worker_killed_fails_the_run_and_the_next_works(tmp_path):
    p = _model(tmp_path, rows=2048)
    out = tmp_path / "out" / "m.apr"
    out.parent.mkdir()
    with q4apr.open_model([p]) as m:
        steps = q4apr.quantize_steps(m, q4apr.FileSink(str(out)),
                                     q4apr.Options(threads=2, chunk_bytes=CHUNK))
        with pytest.raises(q4apr.Q4Error, match="conversion process stopped"):
            for k, step in enumerate(steps):
                if isinstance(step, pipeline.Wait):
                    step.future.block()
                if k == 5:
                    victim = _workers()[0]
                    os.kill(victim.pid, signal.SIGKILL)
                    victim.join()
        steps.close()
    assert os.listdir(out.parent) == []
    assert _workers() == []
    a, _ = run([p], threads=2, chunk_bytes=CHUNK)
    b, _ = run([p], threads=1, chunk_bytes=CHUNK)
    assert a == b


class _Unpicklable(Exception):
    def __reduce__(self):
        raise TypeError("no pickling")


class _Unrebuildable(Exception):
    """Pickles, but its __init__ wants two arguments: unpickling it fails."""

    def __init__(self, a, b):
        super().__init__(f"{a} {b}")


@pytest.mark.parametrize("error", [_Unpicklable("boom at the second tensor"),
                                   _Unrebuildable("boom at the", "second tensor")])
def test_an_error_that_does_not_pickle_still_fails_the_run(tmp_path, monkeypatch, error):
    """A bug of ours in a worker: its text reaches the parent (forked: the patch is there)."""
    p = _model(tmp_path)
    real = pipeline._convert

    def convert(bufs, view, n, i, *rest):
        if i >= 4096:
            raise error
        return real(bufs, view, n, i, *rest)
    monkeypatch.setattr(pipeline, "_convert", convert)
    with pytest.raises(RuntimeError, match=f"conversion process: {type(error).__name__}: "
                                           "boom at the second tensor"):
        run([p], threads=2, chunk_bytes=CHUNK)
    assert _workers() == []


def test_a_replaced_input_file_is_refused(tmp_path):
    """A worker reads the chunks of the file the run opened, or none: one replaced under
    the same name (an editor's save) is an error naming it, not other bytes."""
    p = _model(tmp_path)
    conv = pipeline.ChunkConverter()
    with q4apr.open_model([p]) as m:
        e = m.tensors[0]
        fd = os.open(p, os.O_RDONLY)
        try:
            job = {"n": 1024, "i": 0, "src": "F32", "out": "APR_Q4", "add": None, "path": p,
                   "name": e.name, "at": e.offset, "file": pipeline._file_id(fd)}
            assert conv.convert(job, None)["out"] is not None
            os.replace(_st(tmp_path, {"x": np.zeros(4, np.float32)}, "other.safetensors"), p)
            with pytest.raises(q4apr.BadInput, match="replaced during the run") as err:
                pipeline.ChunkConverter().convert(job, None)
            assert err.value.tensor == e.name and err.value.file == p
        finally:
            os.close(fd)


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="/proc")
def test_no_worker_outlives_a_killed_cli(tmp_path):
    """kill -9 of the CLI: its workers see their pipe close and exit."""
    rng = np.random.default_rng(0)
    src = _st(tmp_path, {f"model.layers.{i}.mlp.up_proj.weight":
                         rng.standard_normal((1024, 1024), dtype=np.float32) for i in range(16)})
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "py"))
    proc = subprocess.Popen([sys.executable, "-m", "q4apr", "quantize", src, "--chunk-mb", "0.125",
                             "--threads", "2", "-o", str(tmp_path / "o.apr"), "-q"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and proc.poll() is None and len(children) < 2:
            with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
                children = [int(c) for c in f.read().split()]
            time.sleep(0.005)
        assert len(children) == 2, "the run ended before its workers were seen"
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{c}") and
                                              "Z" not in _state(c) for c in children):
        time.sleep(0.02)
    assert not any(os.path.exists(f"/proc/{c}") and "Z" not in _state(c) for c in children)


def _state(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"
