"""The CLI's chunks converted in worker processes (quantize_steps' executor, natively).

Why processes, not threads: numpy releases the GIL inside each call, but converting a
chunk is some thirty calls of 10-300 us, and threads hand the GIL to each other between
every two of them: on 2 cores two threads converted 1.0-1.15x as many chunks as one, two
processes 1.9x (bench/LOG.md, issue 11).

Each worker is forked from the run (numpy already imported: a few ms), ignores SIGINT
(Ctrl-C is the parent's: it stops the run and removes the partial output) and converts
with its own pipeline.ChunkConverter.  A chunk of a tensor stored as it is in a plain file
is read by the worker itself (os.preadv at its offset); other chunks come in its slot of
a shared anonymous mapping, where the worker also leaves the output bytes: only the jobs
and the figures go through the pipes.  A worker takes its jobs in order, so its slots
are reused in turn; a slot is given a new job only when the chunk it held was taken
(result()) or abandoned (cancel()), and the pipeline writes a chunk before it submits
another.  Only where fork is the platform's way (Linux); elsewhere the pipeline keeps
its threads.
"""

import collections
import mmap
import multiprocessing
import pickle
import signal
import sys
import time

from .errors import Q4Error

DEPTH = 4   # jobs queued per worker: it starts the next while the parent writes
SHARED_BUDGET = 256 << 20   # fewer queued per worker where their slots would need more


def available() -> bool:
    """Whether worker processes can be forked here (Linux; not Pyodide, macOS or Windows)."""
    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


class ProcessExecutor:
    """`workers` forked processes converting the chunks submitted; close() stops them.

    raw_bytes / out_bytes: the largest input chunk sent and output chunk made (a slot)."""

    reads_files = True   # a job with "at" (and raw None) is read by the worker

    def __init__(self, workers: int, raw_bytes: int, out_bytes: int):
        self._raw, self._size = raw_bytes, raw_bytes + out_bytes
        self._depth = depth = max(1, min(DEPTH, SHARED_BUDGET // (workers * self._size)))
        self.workers, self.in_flight = workers, workers * depth
        self._shared = mmap.mmap(-1, workers * depth * self._size)   # MAP_SHARED, anonymous
        self._procs, self._conns = [], []
        self._queued = [collections.deque() for _ in range(workers)]   # not back yet
        self._slots = [[None] * depth for _ in range(workers)]         # the last future of each
        self._next = [0] * workers
        ctx = multiprocessing.get_context("fork")
        try:
            for w in range(workers):
                mine, theirs = ctx.Pipe()
                p = ctx.Process(target=self._serve, args=(theirs, mine), daemon=True,
                                name=f"q4apr-{w}")
                p.start()
                theirs.close()
                self._procs.append(p)
                self._conns.append(mine)
        except BaseException:
            self.close()
            raise

    # -- the parent ----------------------------------------------------------------------
    def submit_chunk(self, job, raw):
        """Queue job (raw: its bytes, or None when job["at"] says where the worker reads
        them) with the least busy worker whose next slot is free; None if there is none."""
        free = [w for w in range(self.workers) if _reusable(self._slots[w][self._next[w]])]
        if not free:
            return None
        w = min(free, key=lambda v: len(self._queued[v]))
        s = self._next[w]
        self._next[w] = (s + 1) % self._depth
        base = (w * self._depth + s) * self._size
        if raw is not None:
            self._shared[base:base + len(raw)] = raw
            job = dict(job, raw=len(raw))
        f = _Future(self, w, base + self._raw)
        self._slots[w][s] = f
        self._queued[w].append(f)
        try:
            self._conns[w].send((job, base))
        except OSError:
            self._lost(w)
        return f

    def _receive(self, w, block):
        """Hand worker w's next reply (if one is there, or block) to its oldest future."""
        conn = self._conns[w]
        try:
            if not block and not conn.poll():
                return
            reply = conn.recv()
        except (EOFError, OSError):
            self._lost(w)
            return
        except BaseException:   # Ctrl-C inside a reply: this pipe is out of step now
            self._lost(w)
            raise
        self._queued[w].popleft()._reply = reply

    def _lost(self, w):
        err = Q4Error("a conversion process stopped (killed, or out of memory); nothing was "
                      "written (--threads 1 converts without them)")
        while self._queued[w]:
            self._queued[w].popleft()._reply = (False, err)

    def close(self):
        """Ask every worker to stop after its chunk; kill those that do not within 5 s."""
        for conn in self._conns:
            try:
                conn.send(None)
            except OSError:
                pass
        for p, conn in zip(self._procs, self._conns):
            deadline = time.monotonic() + 5
            while p.is_alive() and time.monotonic() < deadline:
                try:   # replies nobody takes (an error, a cancel): a full pipe would block it
                    while conn.poll(0.01):
                        conn.recv()
                except Exception:   # gone, or out of step after a Ctrl-C
                    p.join(1)
            if p.is_alive():
                p.kill()
            p.join()
            conn.close()
        self._procs, self._conns = [], []
        # the mapping goes with the executor: a future taken may still be a view of it

    # -- a worker ------------------------------------------------------------------------
    def _serve(self, conn, parents):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for c in self._conns + [parents]:   # the parent's ends: a parent gone is then EOF
            c.close()
        from .pipeline import ChunkConverter
        converter, shared = ChunkConverter(), memoryview(self._shared)
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                return   # the parent is gone
            if msg is None:
                return
            job, base = msg
            try:
                raw = shared[base:base + job["raw"]] if "raw" in job else None
                parts = converter.convert(job, raw)
                out = parts.pop("out")
                at = base + self._raw
                shared[at:at + len(out)] = out
                parts["out"] = len(out)
                for k in ("signal", "noise"):
                    if parts[k] is not None:
                        parts[k] = bytes(parts[k])
                reply = (True, parts)
            except Exception as e:   # sent back as it is: the pipeline raises it in order
                reply = (False, _portable(e))
            conn.send(reply)


def _portable(e):
    """e if it survives the pipe (pickled here, unpickled there), else a RuntimeError with
    its text: an exception that does not is a bug of ours, and must still say what it was."""
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:
        return RuntimeError(f"in a conversion process: {type(e).__name__}: {e}")


def _reusable(f):
    return f is None or f._taken or f._cancelled


class _Future:
    """A chunk under way in worker w; its output is left in the shared mapping at `at`."""

    __slots__ = ("_ex", "_w", "_at", "_reply", "_taken", "_cancelled")

    def __init__(self, ex, w, at):
        self._ex, self._w, self._at = ex, w, at
        self._reply, self._taken, self._cancelled = None, False, False

    def done(self):
        if self._reply is None:
            self._ex._receive(self._w, block=False)
        return self._reply is not None

    def block(self):
        while self._reply is None:
            self._ex._receive(self._w, block=True)

    def cancel(self):
        self._cancelled = True
        return False

    def result(self):
        self.block()
        self._taken = True
        ok, value = self._reply
        if not ok:
            raise value
        parts = dict(value)
        parts["out"] = memoryview(self._ex._shared)[self._at:self._at + value["out"]]
        return parts
