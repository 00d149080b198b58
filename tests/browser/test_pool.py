"""The page's worker pool (static/pool.js, converter.js): Advanced › Workers.

Whatever the number of workers, the download is the native CLI's bytes; chunks really go
to the pool (the page records how many); Cancel and a crashed worker stop the run cleanly
and the next run works; the setting survives a reload.
"""

import time

import numpy as np
import pytest

from test_app import (RUN_MS, choose, download, native, open_app, set_options, wait_booted,
                      wait_state)

CHUNK = 64 << 10


def set_workers(page, value):
    if page.get_attribute("details.advanced", "open") is None:
        page.click("details.advanced summary")
    page.select_option("#opt-workers", str(value))


def run_page(page):
    page.click("#quantize-btn")
    assert wait_state(page, "done", "error") == "done", page.text_content("#error-panel")
    return (int(page.get_attribute("#result-panel", "data-workers")),
            int(page.get_attribute("#result-panel", "data-pooled-chunks")))


def wait_pool_ready(page, workers):
    """Conversion workers boot after the main one: give them time (a run before they are
    ready is still right, only converted by fewer workers)."""
    page.wait_for_timeout(500 if workers <= 1 else 4000)


@pytest.fixture
def lopsided(tmp_path):
    """Two shards: one tensor much larger than the rest (many chunks), small ones around."""
    from safetensors.numpy import save_file
    rng = np.random.default_rng(11)
    a = {"model.embed_tokens.weight": rng.standard_normal((1024, 512)).astype(np.float32),
         "model.layers.0.input_layernorm.weight": np.ones(512, np.float32)}
    b = {"model.layers.0.self_attn.q_proj.weight": rng.standard_normal((64, 512)).astype(np.float32),
         "model.layers.0.mlp.up_proj.weight": rng.standard_normal((96, 512)).astype(np.float16),
         "lm_head.weight": rng.standard_normal((256, 512)).astype(np.float32)}
    p1, p2 = tmp_path / "model-00001-of-00002.safetensors", tmp_path / "model-00002-of-00002.safetensors"
    save_file(a, str(p1))
    save_file(b, str(p2))
    idx = tmp_path / "model.safetensors.index.json"
    import json
    idx.write_text(json.dumps({"metadata": {}, "weight_map": {
        **{k: p1.name for k in a}, **{k: p2.name for k in b}}}))
    return [p1, p2, idx]


def site_with(dist_dir, tmp_path, name, text=None):
    """A copy of dist/ (symlinks) whose static/<name> says `text`, or is missing (None)."""
    site = tmp_path / "site"
    (site / "static").mkdir(parents=True)
    for p in dist_dir.iterdir():
        if p.name != "static":
            (site / p.name).symlink_to(p, target_is_directory=p.is_dir())
    for p in (dist_dir / "static").iterdir():
        if p.name != name:
            (site / "static" / p.name).symlink_to(p, target_is_directory=p.is_dir())
    if text is not None:
        (site / "static" / name).write_text(text)
    return site


@pytest.mark.parametrize("fmt,qtype", [("apr", "Q4_0"), ("gguf", "Q4_K_M")])
def test_one_two_three_workers_same_bytes_as_the_cli(page, site_url, lopsided, fmt, qtype):
    want, _ = native(lopsided, format=fmt, type=qtype, chunk_bytes=CHUNK)
    open_app(page, site_url)
    set_options(page, format=fmt, type=qtype, chunk_bytes=CHUNK)
    choose(page, *lopsided)
    for workers in (1, 2, 3):
        set_workers(page, workers)
        wait_pool_ready(page, workers)
        total, pooled = run_page(page)
        assert download(page)[1] == want, f"{workers} workers"
        assert total == workers
        assert (pooled > 0) == (workers > 1), (workers, pooled)
        # every booted worker (a resized pool's old ones may still be listed) runs kquants.wasm
        kernels = [w.evaluate("self.q4aprKernels") for w in page.workers]
        assert "wasm" in kernels and set(kernels) <= {"wasm", None}, kernels


# the page's navigator.hardwareConcurrency, as self.testCores says (the machine's without)
CORES_SAID = """
const real = Object.getOwnPropertyDescriptor(Navigator.prototype, "hardwareConcurrency").get;
Object.defineProperty(Navigator.prototype, "hardwareConcurrency",
                      {configurable: true, get() { return self.testCores ?? real.call(this); }});
"""


def test_with_cores_to_spare_the_pool_takes_the_q4_0_chunks_too(page, site_url, lopsided):
    """On 2 cores the Q4_0 chunks stay in the first worker (only the K-quant ones go); with
    cores to spare (8 said here) the conversion workers take every chunk, reading their
    byte ranges, while the first worker hands them out and writes: same bytes."""
    want, _ = native(lopsided, format="apr", type="Q4_0", chunk_bytes=CHUNK)
    page.add_init_script(CORES_SAID)
    open_app(page, site_url)
    set_options(page, format="apr", type="Q4_0", chunk_bytes=CHUNK)
    set_workers(page, 3)
    wait_pool_ready(page, 3)
    pooled = {}
    for cores in (2, 8, 2):
        page.evaluate(f"self.testCores = {cores}")
        choose(page, *lopsided)
        total, pooled[cores] = run_page(page)
        assert download(page)[1] == want, f"{cores} cores"
        assert total == 3
    chunks = sum(-(-a.nbytes // CHUNK) for a in lopsided_arrays(lopsided))
    assert 0 < pooled[2] < chunks // 2 < pooled[8], (pooled, chunks)


def lopsided_arrays(paths):
    from safetensors.numpy import load_file
    return [a for p in paths if p.suffix == ".safetensors" for a in load_file(str(p)).values()]


def test_the_setting_persists_and_auto_is_the_default(page, site_url):
    open_app(page, site_url)
    assert page.input_value("#opt-workers") == "auto"
    assert page.text_content('#opt-workers option[value="auto"]').startswith("Auto (")
    set_workers(page, 3)
    page.reload()
    wait_booted(page)
    assert page.input_value("#opt-workers") == "3"


@pytest.fixture
def big(tmp_path):
    from safetensors.numpy import save_file
    rng = np.random.default_rng(0)
    p = tmp_path / "big.safetensors"
    save_file({f"layer.{i}.weight": rng.standard_normal((1024, 1024)).astype(np.float32)
               for i in range(6)}, str(p))                       # 24 MiB
    return p


def start_big_run(page, site_url, big, workers):
    """A Q4_K_M run of `big` with `workers` workers, visibly under way."""
    open_app(page, site_url)
    set_options(page, chunk_bytes=CHUNK, type="Q4_K_M", format="gguf")
    set_workers(page, workers)
    wait_pool_ready(page, workers)
    choose(page, big)
    page.click("#quantize-btn")
    page.wait_for_selector('#work-tensor:text-matches("layer")', timeout=30_000)


def assert_next_run_right(page, lopsided, workers):
    """The next run uses the pool again and downloads the CLI's bytes."""
    choose(page, *lopsided)
    total, pooled = run_page(page)
    assert total == workers and pooled > 0
    assert download(page)[1] == native(lopsided, format="gguf", type="Q4_K_M", chunk_bytes=CHUNK)[0]


def test_cancel_with_three_workers_then_the_next_run_works(page, site_url, big, lopsided):
    start_big_run(page, site_url, big, 3)
    t0 = time.monotonic()
    page.click("#cancel-btn")
    assert wait_state(page, "cancelled", "done", "error", timeout=5_000) == "cancelled"
    assert time.monotonic() - t0 < 2.5
    assert page.get_attribute("body", "data-boot") == "ready"   # answered without a restart
    assert page.get_attribute("#download-link", "href") is None
    assert_next_run_right(page, lopsided, 3)


def test_a_crashed_worker_fails_the_run_then_the_next_run_works(page, site_url, big, lopsided):
    start_big_run(page, site_url, big, 2)
    page.evaluate("() => window.q4aprWorker.postMessage({type: 'kill-converter'})")
    assert wait_state(page, "error", "done", timeout=RUN_MS) == "error"
    assert "conversion worker stopped" in page.text_content("#error-panel")
    assert page.get_attribute("#download-link", "href") is None
    # the pool is made whole again for the next run, which is right
    wait_pool_ready(page, 2)
    assert_next_run_right(page, lopsided, 2)


def test_one_worker_still_works_where_conversion_workers_cannot_start(page, dist_dir, tmp_path,
                                                                     lopsided):
    """A conversion worker that cannot even load (as where nested module workers are not
    supported): the page converts everything in its one worker and gives up on the pool
    (no endless restarts)."""
    from serve import start_server
    site = site_with(dist_dir, tmp_path, "converter.js", 'throw new Error("no nested module workers here");\n')
    server, root = start_server(str(site))
    try:
        open_app(page, root)
        set_options(page, chunk_bytes=CHUNK)
        set_workers(page, 3)
        wait_pool_ready(page, 3)
        choose(page, *lopsided)
        total, pooled = run_page(page)
        assert pooled == 0 and total == 1
        assert download(page)[1] == native(lopsided, chunk_bytes=CHUNK)[0]
        main = [w for w in page.workers if w.evaluate("!!self.q4aprPoolReady")][0]
        assert main.evaluate("self.q4aprPoolState()") == {"members": 0, "gaveUp": True}
    finally:
        server.shutdown()


def test_k_quants_fall_back_to_javascript_where_the_wasm_kernels_cannot_load(page, dist_dir, tmp_path,
                                                                            lopsided):
    """A site without kquants.wasm (or a browser without WebAssembly SIMD): every worker
    quantizes K-quants with kquants.js instead, same bytes."""
    from serve import start_server
    site = site_with(dist_dir, tmp_path, "kquants.wasm", "not a WebAssembly module")
    server, root = start_server(str(site))
    try:
        open_app(page, root)
        set_options(page, format="gguf", type="Q4_K_M", chunk_bytes=CHUNK)
        set_workers(page, 2)
        wait_pool_ready(page, 2)
        choose(page, *lopsided)
        total, pooled = run_page(page)
        assert total == 2 and pooled > 0
        assert download(page)[1] == native(lopsided, format="gguf", type="Q4_K_M", chunk_bytes=CHUNK)[0]
        kernels = [w.evaluate("self.q4aprKernels") for w in page.workers]
        assert "js" in kernels and set(kernels) <= {"js", None}, kernels
    finally:
        server.shutdown()


def test_a_conversion_worker_reads_its_byte_range_or_says_why_not(page, site_url):
    """Chunks stored as they are go to a conversion worker as a byte range of the File (it
    reads them itself): the bytes at `at` are the ones converted; a File shorter than the
    range is refused as the core refuses a truncated file, naming the file and tensor."""
    import q4apr
    open_app(page, site_url)
    wait_booted(page)
    set_workers(page, 2)
    wait_pool_ready(page, 2)
    main = [w for w in page.workers if w.evaluate("!!self.q4aprReadInPool")][0]
    x = np.random.default_rng(12).standard_normal(256).astype(np.float32)
    data = list(bytes(100) + x.tobytes())
    job = {"n": 256, "i": 0, "src": "F32", "out": "APR_Q4", "add": None,
           "path": "/in/j/m.safetensors", "name": "blk.0.w", "at": 100, "size": 1024}
    got = main.evaluate("([job, data]) => self.q4aprReadInPool(job, data)", [job, data])
    assert bytes(got["out"]) == q4apr.codecs.quantize("APR_Q4", x).tobytes()
    short = main.evaluate("([job, data]) => self.q4aprReadInPool(job, data)", [job, data[:900]])
    assert short == {"bad": ["the file ends inside this tensor's data (it changed or is "
                             "truncated)", "/in/j/m.safetensors", "blk.0.w"]}

