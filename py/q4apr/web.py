"""The page's side of the core: what static/worker.js, converter.js and kernels.js call.

The JavaScript workers only boot Pyodide, mount the dropped files and pass messages; every
decision is made here, with the same functions the CLI calls. run_quantize drives
pipeline.quantize_steps, yielding to the browser's event loop between steps so that a
Cancel is seen at once, and hands the output over chunk by chunk through callbacks (never
as one buffer). Importable natively too (the tests drive it with Python callbacks): the
JavaScript conversions are looked up only under Pyodide.
"""

import asyncio
import contextlib
import json
import time

from . import codecs, pipeline, sinks
from .errors import BadInput, Cancelled, Q4Error
from .formats import open_model
from .inspection import inspect_model
from .pipeline import ChunkConverter, Options, Wait, quantize_steps

PROGRESS_EVERY_S = 0.1   # how often the page hears of the run's progress

# (paths JSON, Model): the model run_describe opened last. The page keeps that selection
# mounted, so quantizing it reuses the model and its tokenizer: the folder is read once.
_described = None


def _forget_described():
    global _described
    if _described is not None:
        _described[1].close()
        _described = None


def _open(paths_json):
    """The model at paths: the described one when it is the same selection, else opened."""
    if _described is not None and _described[0] == paths_json:
        return _described[1]
    return open_model(json.loads(paths_json))


try:   # under Pyodide: Python values become JavaScript ones on their way to the page
    import js
    from pyodide.ffi import to_js as _to_js
except ImportError:   # natively (the tests): they stay Python values
    js = _to_js = None


def to_page(obj):
    """A dict as a JavaScript object (under Pyodide), else as it is."""
    return obj if _to_js is None else _to_js(obj, dict_converter=js.Object.fromEntries)


def message_of(e):
    """What the page shows for an error: the core's own message, or a bug's type and text."""
    if isinstance(e, Q4Error):
        return getattr(e, "message", None) or str(e) or type(e).__name__
    text = str(e)
    return "internal error: " + type(e).__name__ + (": " + text if text else "")


def _status(status, message=None):
    d = {"status": status}
    if message is not None:
        d["message"] = message
    return json.dumps(d)


# ------------------------------------------------------------------ the pool (pool.js)

class PageFuture:
    """A chunk converted by a worker of the pool (static/pool.js): quantize_steps yields
    Wait(this) until done(), run_quantize awaits wait()."""
    __slots__ = ("pool", "t")

    def __init__(self, pool, t):
        self.pool, self.t = pool, t

    def done(self):
        return bool(self.pool.done(self.t))

    def wait(self):
        return self.pool.wait(self.t)

    def cancel(self):
        self.pool.drop(self.t)
        return False

    def result(self):
        r = self.pool.take(self.t)
        bad = getattr(r, "bad", None)
        if bad is not None:
            problem, file, tensor = bad.to_py()
            raise BadInput(problem, file, tensor)
        parts = getattr(r, "parts", None)
        if parts is None:
            raise Q4Error(f"{getattr(r, 'fail', None) or 'a conversion worker failed'}; "
                          "nothing was written (with Advanced › Workers set to 1 the page "
                          "uses no conversion workers)")
        return parts.to_py()   # its ArrayBuffers come as memoryviews of bytes


class PageExecutor:
    """quantize_steps' executor: chunks go to idle pool workers, else are converted here
    (with cores to spare, the run waits for a pool worker instead). A chunk stored as it
    is in a dropped file goes as its byte range: the worker reads it."""

    reads_files = True

    def __init__(self, pool, workers):
        self.pool, self.workers = pool, workers
        self.spare_cores = bool(pool.spareCores)

    def submit_chunk(self, job, raw):
        t = self.pool.submit(json.dumps(job), raw)
        return PageFuture(self.pool, t) if t else None


# ------------------------------------------------------------------ the main worker

def _timed(prof, key, awaitable):
    """awaitable, its wait timed under key when profiling."""
    return awaitable if prof is None else prof.awaited(key, awaitable)


async def run_quantize(paths_json, opts_json, on_chunk, on_truncate, on_progress, on_done,
                       is_cancelled, read_hint=None, read_pending=None, pool=None,
                       profile=False):
    """Quantize the files at paths (JSON list) with options (JSON object): output bytes to
    on_chunk/on_truncate as they come, progress to on_progress(done, total, tensor), the
    report and the file's head to on_done(report, head). Returns a JSON status:
    done | cancelled | error (with its message). read_hint(ranges JSON) tells the page's
    read-ahead what will be read; read_pending() is an awaitable while the next bytes are
    on their way; pool is static/pool.js's Pool; profile times the run's parts (for
    bench/e2e_browser.py --profile)."""
    from .profiling import Timers
    prof = Timers() if profile else None
    t_start = time.perf_counter()
    with prof.patched((pipeline, "_read_chunk", "read"), (codecs, "quantize_measured", "kernel"),
                      (sinks.CallbackSink, "write", "handoff")) if prof is not None \
            else contextlib.nullcontext():
        status = await _run_quantize(paths_json, opts_json, on_chunk, on_truncate, on_progress,
                                     on_done, is_cancelled, read_hint, read_pending, pool, prof)
    if prof is not None:
        prof["total"] = time.perf_counter() - t_start
        d = json.loads(status)
        d["profile"] = dict(prof)
        status = json.dumps(d)
    return status


async def _run_quantize(paths_json, opts_json, on_chunk, on_truncate, on_progress, on_done,
                        is_cancelled, read_hint, read_pending, pool, prof):
    gen = None
    try:
        options = Options.from_dict(json.loads(opts_json))
        await asyncio.sleep(0)
        if is_cancelled():
            return _status("cancelled")
        model = _open(paths_json)
        if read_hint is not None:   # the byte ranges the run will read, for the read-ahead
            read_hint(json.dumps([[e.path, e.offset, e.nbytes] for e in model.tensors
                                  if e.opener is None]))
        sink = sinks.CallbackSink(on_chunk, on_truncate)
        executor = PageExecutor(pool, int(pool.size)) if pool is not None and pool.size else None
        gen = quantize_steps(model, sink, options, executor)
        last = 0.0
        while True:
            pending = read_pending() if read_pending is not None else None
            if pending is not None:
                await _timed(prof, "wait_read", pending)   # the next chunk's bytes are coming
            await _timed(prof, "yield", asyncio.sleep(0))
            if is_cancelled():
                g, gen = gen, None
                g.close()   # aborts the sink: no partial output
                return _status("cancelled")
            try:
                p = next(gen)
            except StopIteration as stop:
                report = stop.value
                gen = None
                break
            if isinstance(p, Wait):   # the oldest chunk is still in a pool worker
                await _timed(prof, "wait_pool", p.future.wait())
                continue
            now = time.monotonic()
            if now - last >= PROGRESS_EVERY_S:
                last = now
                on_progress(p.done, p.total, p.tensor)
        if is_cancelled():
            return _status("cancelled")
        on_done(to_page(report.to_dict()), bytes(sink.head))
        return _status("done")
    except BaseException as e:
        if isinstance(e, (KeyboardInterrupt, SystemExit, GeneratorExit)):
            raise
        if isinstance(e, Cancelled):
            return _status("cancelled")
        return _status("error", message_of(e))
    finally:
        if gen is not None:
            try:
                gen.close()   # aborts the sink (the model holds no open files between reads)
            except BaseException:
                pass


def run_inspect(paths_json, on_done):
    """A file's header, metadata and tensor table, to on_done(info)."""
    try:
        with open_model(json.loads(paths_json)) as model:
            on_done(to_page(inspect_model(model)))
        return _status("inspected")
    except Exception as e:
        return _status("error", message_of(e))


def run_describe(paths_json, on_done):
    """A model folder's summary (architecture, sizes, tokenizer, ignored files) as JSON to
    on_done; "null" for a lone weights file. The model is kept for run_quantize."""
    global _described
    _forget_described()
    try:
        model = open_model(json.loads(paths_json))
        d = model.description
        on_done(json.dumps(d.summary() if d is not None else None))
        _described = (paths_json, model)
        return _status("described")
    except Exception as e:
        return _status("error", message_of(e))


def versions():
    """JSON: the versions the page's footer shows."""
    import platform

    import numpy

    from ._version import __version__
    return json.dumps({"python": platform.python_version(), "numpy": numpy.__version__,
                       "q4apr": __version__})


# ------------------------------------------------------------------ a conversion worker

_converter = None


def convert(job_json, raw):
    """A chunk for a conversion worker (static/converter.js): raw, a JavaScript Uint8Array
    (copied in) or bytes; returns {"parts": ...} with the bytes as JavaScript arrays
    (copied out), or {"bad": [problem, file, tensor]} when the core refuses the chunk."""
    global _converter
    if _converter is None:
        _converter = ChunkConverter()
    data = raw.to_py() if hasattr(raw, "to_py") else raw
    try:
        parts = _converter.convert(json.loads(job_json), data)
    except BadInput as e:
        return to_page({"bad": [e.problem, e.file, e.tensor]})
    copy = bytes if _to_js is None else _to_js
    out = {k: (copy(v) if isinstance(v, memoryview) else v) for k, v in parts.items()}
    return to_page({"parts": out})


# ------------------------------------------------------------------ the page's kernels

def install_kernels(module):
    """Quantize with the page's block kernels (static/kernels.js's module: WebAssembly SIMD,
    or its plain JavaScript fallback) where it has them; numpy does the rest."""
    for name in ("Q4_K", "Q6_K", "Q4_0", "APR_Q4"):
        if hasattr(module, name):
            codecs.set_kernel(name, getattr(module, name), measures=module.measures)
    if hasattr(module, "F16"):
        codecs.set_f16_kernel(module.F16)
