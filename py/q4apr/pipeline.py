"""The streaming pipeline: tensors are read, converted and written one after the
other, chunk by chunk, through buffers reused for the whole run.

quantize_steps is a generator that yields after every chunk: the CLI drives it
in a loop, the browser worker awaits between steps so a Cancel is seen at once.
Peak extra memory is a few chunks, whatever the model's size.

With Options(threads=N > 1) the chunks of a tensor are converted by N workers while this
generator writes the finished ones strictly in order, so the output, the report and the
first error are those of threads=1.  Natively on Linux the workers are forked processes
(q4apr.processes: the GIL made threads wait on each other), elsewhere threads (numpy
releases the GIL in its kernels; at most N + 1 chunks in flight, each with its own
buffers).  Pyodide has no threads: there the page hands quantize_steps an `executor`,
which sends chunks to other workers (the same _convert runs there: ChunkConverter) and
converts a chunk here when they are all busy.  While the oldest chunk is still away
(an executor's, the processes' too) the generator yields Wait(future), which the page's
driver awaits and the CLI's blocks on.
"""

import collections
import dataclasses
import os
import sys
import time
import zlib
from dataclasses import dataclass

import numpy as np

from . import codecs, mixtures, nonfinite, policy, runnable
from .dtypes import APR_Q4, BY_NAME, F16, F32, apr_nbytes, numel, padded_row
from .errors import BadInput, Cancelled, Q4Error
from .formats import apr, gguf
from .model import model_name
from .report import Report, TensorReport

FORMATS = ("apr", "gguf")
APRENDER_MIN_SCALE = 2.0 ** -14  # Aprender reads smaller scales as 0
MAX_CHUNK = 256 << 20
MAX_THREADS = 256


@dataclass
class Options:
    format: str = "apr"
    keep_embeddings_f16: bool = False
    keep_output_f16: bool = False
    pure: bool = False
    type: str = "Q4_0"          # llama-quantize's type name: Q4_0 or Q4_K_M (q4apr.mixtures)
    skip: tuple = ()
    chunk_bytes: int = 4 << 20
    allow_non_finite: bool = False   # write NaN/Inf as they are (counted) instead of refusing
    threads: int = 1                 # chunks converted at once (the CLI: every core)

    def __post_init__(self):
        if self.format not in FORMATS:
            raise BadInput(f"unknown output format {self.format!r} (use apr or gguf)")
        if self.type not in mixtures.TYPES:
            raise BadInput(f"unknown type {self.type!r} (use {' or '.join(mixtures.TYPES)})")
        if isinstance(self.skip, str):
            self.skip = (self.skip,)
        if not all(isinstance(p, str) for p in self.skip):
            raise BadInput(f"skip patterns must be strings, got {self.skip!r}")
        self.skip = tuple(p.strip() for p in self.skip if p.strip())
        if not isinstance(self.chunk_bytes, int) or self.chunk_bytes < 128:
            raise BadInput(f"chunk size {self.chunk_bytes!r} is too small (at least 128 bytes)")
        if self.chunk_bytes > MAX_CHUNK:   # buffers are a few chunks: keep them far below 2 GiB
            raise BadInput(f"chunk size {self.chunk_bytes} is too large (at most {MAX_CHUNK} bytes)")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or \
                not 1 <= self.threads <= MAX_THREADS:
            raise BadInput(f"threads must be a whole number from 1 to {MAX_THREADS}, "
                           f"got {self.threads!r}")
        if not isinstance(self.allow_non_finite, bool):
            raise BadInput(f"allow_non_finite must be true or false, got {self.allow_non_finite!r}")

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise BadInput("unknown option(s): " + ", ".join(unknown))
        return cls(**{k: v for k, v in d.items() if v is not None})


@dataclass
class Progress:
    done: int
    total: int
    tensor: str


class Wait:
    """Yielded by quantize_steps while the oldest chunk is converted elsewhere (an executor's
    future that is not done yet): the driver waits for `future` (future.wait() in the page,
    future.block() natively) and steps on."""
    __slots__ = ("future",)

    def __init__(self, future):
        self.future = future


class _Overflow(Exception):
    """The planned type cannot hold this tensor (a Q4 scale or a value beyond f16's range):
    the tensor is written again at F32. The exception's text is the report's reason."""


def output_name(inputs, fmt, name=None, qtype="Q4_0"):
    """model.safetensors (or its shards) -> model.apr (APR) or model.Q4_0.gguf (GGUF,
    model.Q4_K_M.gguf for that type); a model folder's output is named after the folder."""
    if isinstance(inputs, str):
        inputs = [inputs]
    files = [p for p in inputs if not p.lower().endswith(".json")] or list(inputs)
    stem = name or model_name(os.path.basename(os.path.normpath(files[0])))
    for suffix in (".Q4_K_M", ".q4_k_m", ".Q4_0", ".q4_0", ".Q4", ".q4"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    return f"{stem}.apr" if fmt == "apr" else f"{stem}.{qtype}.gguf"


def plan(model, options):
    """(entry, Decision) for every tensor, in the order the output file stores them."""
    decisions = []
    entries = runnable.output_entries(model, options.format)
    choices = mixtures.plan(model, entries, options)
    for e in entries:
        try:
            d = policy.decide(e, options, model.format, choices.get(e.name))
        except BadInput as why:
            raise BadInput(why.problem, why.file or model.paths[0], why.tensor) from None
        if d is None:
            raise BadInput(f"{e.dtype.name} tensors cannot be stored in {options.format.upper()}",
                           model.paths[0], e.name)
        if e.dtype.quantized and e.dtype is not d.dtype_out and e.dtype.name not in codecs.CODECS:
            raise BadInput(f"{e.dtype.name} tensors cannot be decoded by q4apr", model.paths[0],
                           e.name)
        decisions.append((e, d))
    if options.format == "apr":
        decisions.sort(key=lambda ed: ed[0].name.encode("utf-8"))
    return decisions


def make_layout(model, options, decisions, params):
    names_shapes = [(e.name, e.shape) for e, _ in decisions]
    if options.format == "gguf":
        for e, _ in decisions:
            if not e.shape:
                raise BadInput("GGUF cannot hold a 0-D tensor", model.paths[0], e.name)
            if len(e.shape) > gguf.MAX_DIMS:
                raise BadInput(f"GGUF holds at most {gguf.MAX_DIMS} dims, this has "
                               f"{len(e.shape)}", model.paths[0], e.name)
        return gguf.Layout(model, names_shapes, mixtures.FILE_TYPES[options.type])
    for e, _ in decisions:
        if len(e.shape) > apr.MAX_NDIM:
            raise BadInput(f"APR holds at most {apr.MAX_NDIM} dims", model.paths[0], e.name)
        if len(e.name.encode("utf-8")) > apr.MAX_NAME:
            raise BadInput(f"APR names are at most {apr.MAX_NAME} bytes", model.paths[0], e.name)
    mixture = options.type + (" --pure" if options.pure else "")
    planned = [(d.dtype_out, apr_nbytes(d.dtype_out, e.shape), numel(e.shape))
               for e, d in decisions if not e.tied_to]
    tied = {e.name for e, _ in decisions if e.tied_to}
    return apr.Layout(apr.output_metadata(model, params, planned, mixture), names_shapes,
                      requantize=lambda records: apr.quantization(
                          [(r[2], r[4], numel(r[1])) for r in records if r[0] not in tied],
                          mixture))


def _out_bytes(n):
    """The most bytes n values quantize to (the widest block type, a partial block)."""
    return n // 32 * 34 + 34


class _Buffers:
    """Scratch space for one chunk in flight, sized by the chunk, reused by every tensor
    (np.empty: pages a run never touches, e.g. F16 output, take no memory)."""

    def __init__(self, chunk_elems, raw_bytes=None):
        self.n = chunk_elems
        self.raw = bytearray(raw_bytes or chunk_elems * 8)  # F64 is the widest input
        self.x = np.empty(chunk_elems, np.float32)          # decoded input
        self.y = np.empty(chunk_elems, np.float32)          # decoded output, for the error
        self.f16 = np.empty(chunk_elems, np.float16)
        self.q = np.empty(_out_bytes(chunk_elems), np.uint8)
        self._p = None

    @property
    def p(self):
        """Rows padded to whole super-blocks (Aprender's K-quants): made on first use."""
        if self._p is None:
            self._p = np.empty(self.n, np.float32)
        return self._p


class _Now:
    """A finished 'future' for threads=1: the chunk is converted when it is read."""

    def __init__(self, fn):
        self._r = self._e = None
        try:
            self._r = fn()
        except Exception as e:   # handed over in order, as a pool's future would
            self._e = e

    def result(self):
        if self._e is not None:
            raise self._e
        return self._r

    def cancel(self):
        return False

    def done(self):
        return True


def quantize_steps(model, sink, options, executor=None):
    """Write model to sink in options.format; yield Progress per chunk; return the Report.

    executor (optional; the page's worker pool): .workers, the number of chunks it converts
    at once, and .submit_chunk(job, raw), offered the chunks _worth_sending -> a future of
    ChunkConverter.convert's result (in the other worker), or None when every worker is
    busy (the chunk is then converted here).  Its futures have done(), result() and
    cancel() (the run abandons it); while the oldest is not done, Wait(future) is yielded.
    Optional: .in_flight (chunks queued at once; default workers + 1), .reads_files
    (a job with "at", "path" and "file" and raw None is read by the worker itself) and
    .spare_cores (its workers have cores of their own: every chunk is offered, and a chunk
    they read themselves waits for a free worker rather than being converted here).
    Without one, threads > 1 natively makes one (processes.ProcessExecutor, Linux)."""
    t0 = time.perf_counter()
    decisions = plan(model, options)
    params = sum(numel(e.shape) for e in model.tensors if not e.tied_to)   # a tied head: once
    layout = make_layout(model, options, decisions, params)
    total = sum(e.nbytes for e, _ in decisions)
    chunk_elems = max(256, options.chunk_bytes // 4 // 256 * 256)   # whole Q4_K/Q6_K blocks, SUM_UNITs
    # a row stored padded (Aprender's K-quant layout) is converted whole: one fits a chunk
    pads = [_row_pad(e, d.dtype_out, options.format) for e, d in decisions]
    chunk_elems = max([chunk_elems] + [max(p) for p in pads if p])
    raw = max([chunk_elems * 4] + [e.dtype.nbytes(chunk_elems) for e, _ in decisions
                                   if not e.dtype.quantized])
    pool = own = None
    if executor is None and options.threads > 1 and sys.platform != "emscripten":
        from . import processes   # natively only (mmap, multiprocessing)
        if processes.available():   # numpy's short calls make threads wait on the GIL
            executor = own = processes.ProcessExecutor(options.threads, raw,
                                                       _out_bytes(chunk_elems))
        else:
            from concurrent.futures import ThreadPoolExecutor   # natively, off Linux
            pool = ThreadPoolExecutor(options.threads, thread_name_prefix="q4apr")
    # in flight: a chunk per thread or pool worker + one; an executor's chunks leave their
    # buffers at once (it converts a copy), so its runs need buffers only for the chunks
    # converted here while every worker is busy: at most 2 of them wait to be written
    slots = options.threads + 1 if pool else min(3, executor.workers + 1) if executor else 1
    bufs = [_Buffers(chunk_elems, raw) for _ in range(slots)]
    described = model.description is not None
    report = Report(model.format, [os.path.basename(p) for p in model.paths],
                    sum(os.path.getsize(p) for p in model.paths), options.format,
                    output_name(model.paths, options.format,
                                model.name if described else None, options.type),
                    params=params, model=model.description.summary() if described else None,
                    runtimes=runnable.runtimes(model, options.format,
                                               [d.dtype_out.name for _, d in decisions]))
    sink.begin(layout.head_len)
    try:
        records, crc, done = [], 0, 0
        for entry, decision in decisions:
            crc = _pad(sink, layout.tensor_start(sink.size), layout, crc)
            start, crc_start = sink.size, crc
            try:
                stats = yield from _write_tensor(entry, decision.dtype_out, sink, bufs,
                                                 done, total, layout, crc,
                                                 options.allow_non_finite, pool, executor)
            except _Overflow as why:
                sink.truncate(start)
                decision = policy.Decision(F32, "convert", f"{why}: kept at F32")
                stats = yield from _write_tensor(entry, F32, sink, bufs, done, total,
                                                 layout, crc_start, options.allow_non_finite,
                                                 pool, executor)
            crc = stats["crc"]
            size = sink.size - start
            crc = _pad(sink, layout.tensor_end(sink.size), layout, crc)
            done += entry.nbytes
            records.append((entry.name, entry.shape, decision.dtype_out, start, size))
            warning = stats.get("warning")
            if options.format == "apr" and decision.dtype_out.name in runnable.APRENDER_UNDECODABLE:
                warning = (f"Aprender's `apr validate` cannot decode {decision.dtype_out.name} "
                           "tensors (it fails the file)")
            report.add_tensor(TensorReport(
                entry.name, list(entry.shape), entry.dtype.name, decision.dtype_out.name,
                entry.nbytes, size, decision.action, decision.reason,
                stats.get("mse"), stats.get("max_abs_err"), warning,
                stats.get("non_finite", 0), source=entry.source),
                stats.get("signal"), stats.get("noise"))
        head = layout.head(records)
        footer = layout.footer(head, crc, sink.size)
        if footer:
            sink.write(footer)
        report.output_bytes = layout.head_len + sink.size
        sink.finish(head)
    except BaseException:
        sink.abort()
        raise
    finally:
        if pool is not None:   # _write_tensor has waited for its chunks already
            pool.shutdown(wait=True, cancel_futures=True)
        if own is not None:
            own.close()
    report.seconds = time.perf_counter() - t0
    return report


def quantize(model, sink, options, progress=None, cancel=None, executor=None):
    """Run quantize_steps to the end; cancel() returning True stops it with Cancelled."""
    steps = quantize_steps(model, sink, options, executor)
    try:
        while True:
            p = next(steps)
            if isinstance(p, Wait):
                p.future.block()
                continue
            if progress is not None:
                progress(p)
            if cancel is not None and cancel():
                raise Cancelled()
    except StopIteration as stop:
        return stop.value
    finally:
        steps.close()   # on error or Ctrl-C: the generator aborts the sink


def _pad(sink, to, layout, crc):
    """Zeros up to data offset `to`; returns the running CRC (APR checksums every byte)."""
    n = to - sink.size
    if n > 0:
        z = bytes(n)
        sink.write(z)
        if layout.format == "apr":
            crc = zlib.crc32(z, crc)
    return crc


def _read_chunk(f, view, path, name, at=None):
    """Fill view from f (short reads happen on zip members and WORKERFS), or fail clearly.
    With `at`, f is a file descriptor read at byte `at` (os.preadv: no shared position, so
    threads read their own chunks at once)."""
    got = 0
    while got < len(view):
        try:
            n = f.readinto(view[got:]) if at is None else os.preadv(f, [view[got:]], at + got)
        except OSError as e:
            raise BadInput(f"cannot read ({e.strerror or e})", path, name) from None
        if not n:
            raise BadInput("the file ends inside this tensor's data (it changed or is truncated)",
                           path, name)
        got += n


def _row_pad(entry, dtype_out, fmt):
    """(cols, padded cols of the input or 0, padded cols of the output or 0) when the
    tensor's input or its APR output is stored row by row with padding (dtypes.padded_row:
    chunks are then whole rows), else None."""
    src = padded_row(entry.dtype, entry.shape)
    out = padded_row(dtype_out, entry.shape) if fmt == "apr" else None
    if src is None and out is None:
        return None
    return entry.shape[1], src[1] if src else 0, out[1] if out else 0


def _in_bytes(src, n, pad):
    """Bytes of n input values (whole rows when the input is row padded)."""
    if pad and pad[1]:
        return n // pad[0] * src.nbytes(pad[1])
    return src.nbytes(n)


def _read_convert(fd, at, args):
    """A thread's job: read its chunk (the view of _convert's args) at byte `at`, then
    convert it."""
    _, view, *_, path, name, _pad = args
    _read_chunk(fd, view, path, name, at)
    return _convert(*args)


def _write_tensor(entry, dtype_out, sink, slots, done, total, layout, crc, allow_nf=False,
                  pool=None, executor=None):
    """Stream one tensor; a generator yielding Progress; returns stats (crc, mse, ...).

    The chunks are converted by _convert (in `pool` or by `executor` when given, at most
    len(slots) at once, each in its own buffers) and their results taken here in order:
    writes, the CRC, the sums and the first error are those of a run without threads.
    They are read here in order, or, with threads and a tensor stored as it is in a plain
    file, each by the thread that converts it (the reading is then parallel too)."""
    with_crc = layout.format == "apr"
    src = entry.dtype
    path = entry.path
    n_total = numel(entry.shape)
    stats = {"non_finite": 0}

    def non_finite(found, i):
        """Refuse the first non-finite value (at flat index i + its place in the chunk), or count."""
        if found:
            count, first, what = found
            if not allow_nf:
                raise BadInput(f"{what} at flat index {i + first} (refused; to write such values "
                               "as they are: --allow-non-finite, or Advanced › Allow non-finite "
                               "weights in the page)", path, entry.name)
            stats["non_finite"] = min(n_total, stats["non_finite"] + count)
    try:
        f = entry.open()
    except OSError as e:
        raise BadInput(f"cannot read ({e.strerror or e})", path, entry.name) from None
    with f:
        bufs = slots[0]
        if dtype_out is src and not entry.transformed:
            # a copy: the bytes as they are, chunk by chunk (whole blocks, to check the scales)
            left, pos = entry.nbytes, 0
            step = bufs.n * 4
            if src.quantized:
                step = max(src.type_size, step // src.type_size * src.type_size)
            scan = nonfinite.scannable(src)
            while left:
                k = min(step, left)
                view = memoryview(bufs.raw)[:k]
                _read_chunk(f, view, path, entry.name)
                if scan:
                    elem = pos // src.type_size * src.block_size if src.quantized else \
                        pos // max(1, src.type_size)
                    non_finite(nonfinite.scan(src, view, bufs.y, pos, n_total), elem)
                sink.write(view)
                if with_crc:
                    crc = zlib.crc32(view, crc)
                left -= k
                pos += k
                yield Progress(done + pos, total, entry.name)
            stats["crc"] = crc
            return stats
        q4 = codecs.CODECS.get(dtype_out.name)
        if q4 is None and dtype_out not in (F16, F32):
            raise Q4Error(f"internal: no conversion {src.name} -> {dtype_out.name}")
        sq, signal, maxerr, low_scales, pos_in, i = 0.0, 0.0, 0.0, 0, 0, 0
        pad = _row_pad(entry, dtype_out, layout.format)
        step_elems = None
        if pad:   # whole rows per chunk, as many as the buffers hold padded
            step_elems = max(1, slots[0].n // max(pad[1], pad[2], pad[0])) * pad[0]
        free, pending = list(slots), collections.deque()
        limit = len(slots) if executor is None else \
            getattr(executor, "in_flight", executor.workers + 1)   # processes queue more
        as_stored = entry.opener is None and entry.row_order is None   # plain file, in place
        reads = as_stored and getattr(executor, "reads_files", False)   # the worker reads it
        send = executor is not None and q4 is not None and _worth_sending(q4, executor)
        waits = send and reads and getattr(executor, "spare_cores", False)   # not convert here
        threads_read = as_stored and pool is not None and hasattr(os, "preadv")
        read_at = entry.offset
        if send and reads:
            identity = _file_id(f.fileno())
        try:
            while i < n_total or pending:
                while i < n_total and free and len(pending) < limit:   # read ahead
                    slot = free.pop()
                    n = min(step_elems or slot.n, n_total - i)
                    k = _in_bytes(src, n, pad)
                    view = memoryview(slot.raw)[:k]
                    args = (slot, view, n, i, src, dtype_out, q4, entry.add, path, entry.name,
                            pad)
                    spec = {"n": n, "i": i, "src": src.name, "out": dtype_out.name,
                            "add": entry.add, "path": path, "name": entry.name,
                            "pad": list(pad) if pad else None}
                    job = None
                    if send and reads:   # None back: every worker busy, it is read here
                        job = executor.submit_chunk(dict(spec, at=read_at, size=k, file=identity), None)
                        if job is None and waits and pending:   # a worker frees up first
                            free.append(slot)
                            break
                        if job is None:
                            f.seek(read_at)
                            _read_chunk(f, view, path, entry.name)
                    elif threads_read:
                        job = pool.submit(_read_convert, f.fileno(), read_at, args)
                    else:
                        _read_chunk(f, view, path, entry.name)
                        if send:   # None back: every worker busy
                            job = executor.submit_chunk(spec, view)
                    read_at += k
                    if job is not None and send:   # converted elsewhere: the buffers are free
                        free.append(slot)
                        slot = None
                    if job is None:
                        job = pool.submit(_convert, *args) if pool else \
                            _Now(lambda: _convert(*args))
                    pending.append((job, slot, i, k))
                    i += n
                job, slot, start, k = pending[0]
                while executor is not None and not job.done():
                    yield Wait(job)   # converted in another worker, not back yet
                r = job.result()
                if isinstance(r, dict):
                    r = _Chunk.from_parts(r)
                pending.popleft()
                if slot is not None:
                    free.append(slot)
                non_finite(r.non_finite, start)
                if r.overflow:
                    raise _Overflow(r.overflow)
                if q4 is not None:
                    signal = _accumulate(signal, r.signal)
                    sq = _accumulate(sq, r.noise)
                    maxerr = max(maxerr, r.maxerr)
                    low_scales += r.low_scales
                mv = memoryview(r.out).cast("B")
                sink.write(mv)
                if with_crc:
                    crc = zlib.crc32(mv, crc)
                pos_in += k
                yield Progress(done + pos_in, total, entry.name)
        finally:   # an error, an overflow or a cancel: no thread may still use the buffers
            for job, *_ in pending:
                job.cancel()
            for job, *_ in pending:
                if pool is None and not job.done():
                    continue   # an executor's: it converts a copy, the buffers are free
                try:
                    job.result()
                except BaseException:
                    pass
    stats["crc"] = crc
    if q4 is not None:
        stats["mse"] = sq / n_total if n_total else 0.0
        stats["signal"], stats["noise"] = signal, sq
        stats["max_abs_err"] = maxerr
        if low_scales:
            stats["warning"] = (f"{low_scales} block(s) have a scale below 2^-14: Aprender "
                                "decodes them as zeros")
    return stats


class _Chunk:
    """What converting one chunk gives: the output bytes, what _write_tensor must check in
    order (the first non-finite value, an overflow), and the chunk's share of the figures."""
    __slots__ = ("out", "non_finite", "overflow", "signal", "noise", "maxerr", "low_scales")

    def __init__(self, out):
        self.out, self.non_finite, self.overflow = out, None, None
        self.signal = self.noise = None
        self.maxerr, self.low_scales = 0.0, 0

    def parts(self):
        """Plain values and bytes, to send from the worker that converted it (ChunkConverter)."""
        def raw(a):
            return None if a is None else memoryview(np.ascontiguousarray(a)).cast("B")
        nf = self.non_finite
        return {"out": raw(self.out), "dtype": self.out.dtype.str, "signal": raw(self.signal),
                "noise": raw(self.noise), "maxerr": float(self.maxerr),
                "low_scales": int(self.low_scales), "overflow": self.overflow,
                "non_finite": None if nf is None else [int(nf[0]), int(nf[1]), str(nf[2])]}

    @classmethod
    def from_parts(cls, d):
        def arr(b, dt):
            return None if b is None else np.frombuffer(b, dt)
        r = cls(arr(d["out"], d["dtype"]))
        r.signal, r.noise = arr(d["signal"], np.float32), arr(d["noise"], np.float32)
        r.maxerr, r.low_scales, r.overflow = d["maxerr"], d["low_scales"], d["overflow"]
        r.non_finite = None if d["non_finite"] is None else tuple(d["non_finite"])
        return r


class ChunkConverter:
    """The other end of an executor (quantize_steps): converts the chunks it is sent, in its
    own buffers, grown to the largest chunk seen.  convert(job, raw) -> _Chunk.parts().
    With raw None the chunk is read here: job["at"] is its byte offset in job["path"], and
    job["file"] the (device, inode) the file had when the run opened it (a file replaced
    since is refused, not read)."""

    def __init__(self):
        self._bufs = None
        self._files = {}   # path -> file descriptor, kept open for the next chunks

    def convert(self, job, raw):
        n = int(job["n"])
        src, dtype_out = BY_NAME[job["src"]], BY_NAME[job["out"]]
        pad = tuple(job["pad"]) if job.get("pad") else None
        size = _in_bytes(src, n, pad) if raw is None else 1
        need = n if not pad else n // pad[0] * max(pad)   # the rows padded
        if self._bufs is None or self._bufs.n < need or len(self._bufs.raw) < size:
            self._bufs = None   # the old buffers go first: one set at a time
            self._bufs = _Buffers(need, size)
        if raw is None:
            view = memoryview(self._bufs.raw)[:size]
            _read_chunk(self._open(job), view, job["path"], job["name"], int(job["at"]))
        else:
            view = memoryview(raw).cast("B")
        r = _convert(self._bufs, view, n, int(job["i"]), src, dtype_out,
                     codecs.CODECS.get(dtype_out.name), job["add"], job["path"], job["name"], pad)
        return r.parts()

    def _open(self, job):
        path = job["path"]
        fd = self._files.get(path)
        if fd is None:   # checked once: the descriptor keeps to the file it opened
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError as e:
                raise BadInput(f"cannot read ({e.strerror or e})", path, job["name"]) from None
            if list(_file_id(fd)) != list(job["file"]):
                os.close(fd)
                raise BadInput("the file was replaced during the run", path, job["name"])
            self._files[path] = fd
        return fd


def _file_id(fd):
    """What identifies an open file: its device and inode."""
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _convert(bufs, view, n, i, src, dtype_out, q4, add, path, name, pad=None):
    """Decode n elements (flat index i on) from view and convert them to dtype_out in bufs;
    no side effect beyond bufs, so chunks may be converted on several threads at once.
    pad (_row_pad): the input's rows, or the output's, are stored padded to whole
    super-blocks (Aprender's K-quant layout); n is then whole rows."""
    if pad and pad[1]:   # decode the padded rows, keep their values
        rows = n // pad[0]
        full = _decode(src, view, rows * pad[1], bufs.y[: rows * pad[1]])
        x = bufs.x[:n]
        x.reshape(rows, pad[0])[:] = full.reshape(rows, pad[1])[:, : pad[0]]
    else:
        x = _decode(src, view, n, bufs.x[:n])
    if src.name == "F64":
        _check_f32_range(view, x, n, i, path, name)
    if add is not None:   # as llama.cpp's converter: in f32, or in f16 for F16
        x = np.add(x, np.float32(add), out=bufs.x[:n])
        if src is F16:
            x[:] = x.astype(np.float16)
    if q4 is not None:
        xq, m = x, n
        if pad and pad[2]:   # each row zero padded to whole super-blocks, quantized so
            rows = n // pad[0]
            m = rows * pad[2]
            xq = bufs.p[:m]
            grid = xq.reshape(rows, pad[2])
            grid[:, : pad[0]] = x.reshape(rows, pad[0])
            grid[:, pad[0]:] = 0
        # the round trip's statistics (y: scratch), fused into the kernel where one is set
        out, signal, noise, maxerr = codecs.quantize_measured(
            q4, xq, bufs.q[: dtype_out.nbytes(m)], bufs.y[:m])
        r = _Chunk(out)
        scales = codecs.scales_f16(q4, out)
        # |scale| on the f16 bits (native numpy's f16 isfinite/abs are slow): 0x7C00 and up
        # is Inf or NaN, below 0x0400 (2^-14) a subnormal or zero
        mag = np.bitwise_and(scales.view(np.uint16), np.uint16(0x7FFF))
        if mag.max(initial=0) >= 0x7C00:
            r.overflow = "non-finite values cannot be quantized" if _find_non_finite(r, x) \
                else "a Q4 scale overflows f16"
            return r
        if dtype_out is APR_Q4:
            r.low_scales = int(np.count_nonzero(mag < np.uint16(0x0400)))   # APRENDER_MIN_SCALE
        r.signal, r.noise, r.maxerr = signal, noise, maxerr
        if not (np.isfinite(r.signal).all() and np.isfinite(r.noise).all()):
            # a NaN/Inf weight whose block kept finite scales (the K-quants' max scans, as
            # ggml's `>`, pass NaN by) shows here; or only huge values whose squares overflow
            if _find_non_finite(r, x):
                r.overflow = "non-finite values cannot be quantized"
                return r
        return r
    if dtype_out is F16:
        out = bufs.f16[:n]
        r = _Chunk(out)
        with np.errstate(over="ignore"):
            np.copyto(out, x, casting="same_kind")
        if not np.isfinite(out).all():
            _find_non_finite(r, x)
            if (np.isfinite(x) & ~np.isfinite(out)).any():
                r.overflow = "a value is beyond F16's range"
        return r
    r = _Chunk(x)   # F32
    r.non_finite = nonfinite.scan(F32, memoryview(x).cast("B"), bufs.y)
    return r


def _worth_sending(q4, executor):
    """Whether to hand a chunk to another worker.  Always where the executor says its
    workers have cores of their own (.spare_cores); else only where converting costs more
    than handing it over: quantizing with numpy or with a codec that searches its scales
    (the K-quants), not a kernel that measures as it quantizes a 32-value format (Q4_0,
    APR Q4 in the page), whose chunks cost about as much to hand over as to convert when
    the browser's reading already keeps most of 2 or 3 cores busy (bench/LOG.md)."""
    return bool(getattr(executor, "spare_cores", False)) or q4.searches \
        or not codecs.kernel_measures(q4)


def _find_non_finite(r, x):
    """Note x's non-finite values in r (count, first index, what) if there are any."""
    bad = np.flatnonzero(~np.isfinite(x))
    if bad.size:
        r.non_finite = (bad.size, bad[0], f"non-finite weight {x[bad[0]]}")
    return bool(bad.size)


def _accumulate(acc, units):
    """acc + the units, added one after the other in f64 (np.add.accumulate is sequential):
    the same figure whatever the chunk size or the thread count."""
    return float(np.add.accumulate(np.concatenate([[acc], units], dtype=np.float64))[-1])


def _decode(src, view, n, out):
    """n elements of `src` bytes as float32 (a view when they already are)."""
    if src is F32:
        return np.frombuffer(view, "<f4", n)
    if src.name == "BF16":
        return codecs.bf16_to_f32(np.frombuffer(view, "<u2", n), out=out)
    if src is F16:
        return codecs.f16_to_f32(np.frombuffer(view, "<u2", n), out)
    if src.name in codecs.CODECS:
        return codecs.dequantize(codecs.CODECS[src.name], np.frombuffer(view, np.uint8), n, out=out)
    with np.errstate(over="ignore"):   # F64 beyond F32's range: _check_f32_range says so
        np.copyto(out, np.frombuffer(view, src.numpy, n), casting="same_kind")
    return out


def _check_f32_range(view, x, n, i, path, name):
    """An F64 weight that is finite but beyond float32's range cannot be converted."""
    if np.isfinite(x).all():
        return
    f64 = np.frombuffer(view, "<f8", n)
    bad = np.flatnonzero(np.isfinite(f64) & ~np.isfinite(x))
    if bad.size:
        raise BadInput(f"F64 weight {f64[bad[0]]:g} at flat index {i + bad[0]} is beyond the "
                       "range of F32", path, name)

