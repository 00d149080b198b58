"""q4apr.web, the page's side of the core, driven natively with Python callbacks: the same
bytes as the CLI, cancel and errors as statuses, inspect/describe, a conversion worker's
chunk, the kernels' installation. (In the page: tests/browser/, under Node:
tests/test_pyodide_node.py.)"""

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from helpers import llama_like, run

import q4apr
from q4apr import codecs, web


@pytest.fixture
def st_path(tmp_path):
    from safetensors.numpy import save_file
    p = tmp_path / "model.safetensors"
    save_file(llama_like(np.random.default_rng(5)), str(p))
    return str(p)


def drive(paths, options, cancel_after=None):
    """run_quantize with Python callbacks: (status dict, output bytes, report, progress calls)."""
    out, got, progress = bytearray(), {}, []

    def on_truncate(size):
        del out[size:]

    def on_progress(done, total, tensor):
        progress.append((done, total, tensor))

    def on_done(report, head):
        got["report"], got["head"] = report, head

    def is_cancelled():
        return cancel_after is not None and len(out) > cancel_after

    coro = web.run_quantize(json.dumps(paths), json.dumps(options), lambda b: out.extend(bytes(b)),
                            on_truncate, on_progress, on_done, is_cancelled)
    with ThreadPoolExecutor(1) as pool:   # its own event loop (Playwright's may run in this thread)
        status = pool.submit(asyncio.run, coro).result()
    data = got["head"] + bytes(out) if "head" in got else bytes(out)   # the head goes first
    return json.loads(status), data, got.get("report"), progress


@pytest.mark.parametrize("options", [{"format": "apr"}, {"format": "gguf", "type": "Q4_K_M"}])
def test_run_quantize_gives_the_clis_bytes(st_path, options):
    status, data, report, progress = drive([st_path], dict(options, chunk_bytes=4096))
    assert status == {"status": "done"}
    want, want_report = run([st_path], chunk_bytes=4096, **options)
    assert data == want
    assert report["totals"]["bytes_out"] == want_report["totals"]["bytes_out"]
    assert progress and progress[-1][1] == progress[0][1]


def test_cancel_and_errors_are_statuses(st_path, tmp_path):
    status, _, report, _ = drive([st_path], {"format": "apr", "chunk_bytes": 4096}, cancel_after=1)
    assert status == {"status": "cancelled"} and report is None
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    status, _, _, _ = drive([str(bad)], {"format": "apr"})
    assert status["status"] == "error" and "bad.safetensors" in status["message"]
    status, _, _, _ = drive([st_path], {"format": "apr", "frob": 1})
    assert status["status"] == "error" and "frob" in status["message"]


def test_inspect_describe_versions(st_path):
    got = []
    assert json.loads(web.run_inspect(json.dumps([st_path]), got.append)) == {"status": "inspected"}
    assert got[0]["format"] == "safetensors" and got[0]["tensors"]
    got.clear()
    assert json.loads(web.run_describe(json.dumps([st_path]), got.append))["status"] == "described"
    assert json.loads(got[0]) is None     # a lone weights file: no model description
    v = json.loads(web.versions())
    assert v["q4apr"] == q4apr.__version__ and v["numpy"] == np.__version__


def test_a_conversion_workers_chunk(st_path):
    x = (np.random.default_rng(1).standard_normal(1024) * 0.1).astype(np.float32)
    job = {"n": 1024, "i": 0, "src": "F32", "out": "Q4_K", "add": None, "path": st_path,
           "name": "w", "pad": None}
    r = web.convert(json.dumps(job), x.tobytes())
    assert bytes(r["parts"]["out"]) == codecs.quantize("Q4_K", x).tobytes()
    # a chunk the core refuses comes back as "bad", naming the file and the tensor
    r = web.convert(json.dumps(dict(job, out="F16")), np.full(1024, 1e6, np.float32).tobytes())
    assert r["parts"]["overflow"]       # beyond F16: the pipeline writes the tensor at F32


def test_install_kernels_sets_only_what_the_module_has():
    calls = []

    class Module:
        measures = False

        @staticmethod
        def Q4_K(*a):
            calls.append(a)
            return 0

    try:
        web.install_kernels(Module)
        assert codecs.Q4_K.kernel is Module.Q4_K and codecs.Q6_K.kernel is None
    finally:
        codecs.set_kernel("Q4_K", None)
    assert codecs.Q4_K.kernel is None


def test_messages_name_the_problem():
    assert web.message_of(q4apr.BadInput("broken", "f.gguf", "w")).startswith("f.gguf")
    assert web.message_of(ValueError("x")) == "internal error: ValueError: x"


def test_a_described_selection_is_read_once(st_path, monkeypatch):
    """describe then quantize of the same selection (the page keeps it mounted): the model
    (for a folder: its config and tokenizer) is opened once; another selection anew."""
    opened = []
    real = web.open_model
    monkeypatch.setattr(web, "open_model", lambda paths: opened.append(paths) or real(paths))
    got = []
    assert json.loads(web.run_describe(json.dumps([st_path]), got.append))["status"] == "described"
    for _ in range(2):   # the same selection twice, with other options: still the one model
        status, data, _, _ = drive([st_path], {"format": "apr"})
        assert status == {"status": "done"} and data == run([st_path], format="apr")[0]
    assert len(opened) == 1
    status, _, _, _ = drive([st_path, st_path + ".json"], {"format": "apr"})
    assert len(opened) == 2                 # another selection: opened anew (and refused)
    web._forget_described()
