"""The web app end to end in Chromium: the built dist/, served on 127.0.0.1.

Every download is compared byte for byte with the native core's output for the same
input and options.  Screenshots of the main states go to tests/artifacts/ (gitignored).

The page carries a strict CSP (no 'unsafe-eval'), so the tests wait on selectors and
data-* attributes (body[data-boot], body[data-state]) instead of page.wait_for_function.
"""

import json
import struct
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest

import q4apr
from helpers import llama_like

PlaywrightTimeout = pytest.importorskip("playwright.sync_api").TimeoutError

BOOT_MS = 90_000
RUN_MS = 120_000
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


# ---------------------------------------------------------------- helpers

def shot(page, name, full_page=True):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full_page)


def open_app(page, site_url):
    page.set_default_timeout(60_000)
    page.goto(site_url)
    wait_booted(page)


def wait_booted(page):
    page.wait_for_selector('body[data-boot="ready"], body[data-boot="failed"]', state="attached", timeout=BOOT_MS)
    assert page.get_attribute("body", "data-boot") == "ready", page.text_content("#error-panel")


def wait_state(page, *states, timeout=RUN_MS):
    sel = ", ".join(f'body[data-state="{s}"]' for s in states)
    page.wait_for_selector(sel, state="attached", timeout=timeout)
    return page.get_attribute("body", "data-state")


def set_options(page, format="apr", keep_embeddings_f16=False, keep_output_f16=False, pure=False,
                skip=(), chunk_bytes=None, type="Q4_0"):
    page.click(f'label[for="fmt-{format}"]')
    page.click(f'label[for="type-{type.lower()}"]')
    page.set_checked("#opt-emb", keep_embeddings_f16)
    page.set_checked("#opt-out", keep_output_f16)
    page.set_checked("#opt-pure", pure)
    page.fill("#opt-skip", ", ".join(skip))
    if chunk_bytes is not None:
        if page.get_attribute("details.advanced", "open") is None:
            page.click("details.advanced summary")
        page.fill("#opt-chunk", str(chunk_bytes))


def choose(page, *paths):
    page.set_input_files("#file-input", [str(p) for p in paths])


def quantize(page, *paths):
    if paths:
        choose(page, *paths)
    page.click("#quantize-btn")
    state = wait_state(page, "done", "error")
    assert state == "done", page.text_content("#error-panel")


def download(page):
    assert page.get_attribute("#download-link", "aria-disabled") is None
    with page.expect_download() as info:
        page.click("#download-link")
    dl = info.value
    return dl.suggested_filename, Path(dl.path()).read_bytes()


def native(paths, **options):
    with q4apr.open_model([str(p) for p in paths] if isinstance(paths, (list, tuple)) else str(paths)) as model:
        sink = q4apr.MemorySink()
        report = q4apr.quantize(model, sink, q4apr.Options(**options))
    return sink.getvalue(), report.to_dict()


def report_names(page):
    return page.locator("#report-body td.name .tname").all_text_contents()


@pytest.fixture
def sample_path(dist_dir):
    return dist_dir / "static" / "sample" / "model.safetensors"


@pytest.fixture
def st_file(tmp_path):
    from safetensors.numpy import save_file
    rng = np.random.default_rng(11)
    t = llama_like(rng)
    t["model.layers.1.mlp.up_proj.weight"] = t["model.layers.1.mlp.up_proj.weight"].astype(np.float16)
    path = tmp_path / "tiny.safetensors"
    save_file(t, str(path), metadata={"format": "pt", "note": "written by safetensors.numpy"})
    return path


@pytest.fixture
def gguf_file(tmp_path):
    gguf = pytest.importorskip("gguf")
    rng = np.random.default_rng(5)
    path = tmp_path / "tiny.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny llama")
    w.add_context_length(128)
    w.add_array("tokenizer.ggml.tokens", [f"tok{i}" for i in range(96)])
    w.add_tensor("token_embd.weight", rng.standard_normal((96, 64)).astype(np.float32))
    w.add_tensor("blk.0.attn_q.weight", (0.05 * rng.standard_normal((64, 64))).astype(np.float16))
    w.add_tensor("blk.0.ffn_up.weight", (0.05 * rng.standard_normal((128, 64))).astype(np.float32))
    w.add_tensor("blk.0.attn_norm.weight", np.ones(64, np.float32))
    w.add_tensor("output.weight", rng.standard_normal((96, 64)).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(autouse=True)
def _no_page_errors(request):
    """Every test that uses the page ends with no uncaught script error and no CSP violation."""
    page = request.getfixturevalue("page") if "page" in request.fixturenames else None
    yield
    if page is None:
        return
    assert page.page_errors == [], page.page_errors
    csp = [t for _, t in page.console_messages if "Content Security Policy" in t]
    assert csp == [], csp


# ---------------------------------------------------------------- boot

def test_boots_to_ready(page, site_url):
    page.set_default_timeout(60_000)
    page.goto(site_url)
    shot(page, "01-booting", full_page=False)
    assert page.get_attribute("body", "data-boot") in ("booting", "ready")
    wait_booted(page)
    assert page.text_content("#boot-text") == "Ready"
    assert "numpy 2.0.2" in page.text_content("#versions")
    assert page.is_enabled("#sample-btn")
    assert not page.is_enabled("#quantize-btn")          # nothing chosen yet
    shot(page, "02-ready")


# ---------------------------------------------------------------- quantize and compare with native

def test_sample_matches_native(page, site_url, sample_path):
    open_app(page, site_url)
    page.click("#sample-btn")
    assert wait_state(page, "done", "error") == "done", page.text_content("#error-panel")
    shot(page, "04-done")
    name, data = download(page)
    want, report = native(sample_path)
    assert name == "model.apr" == report["output"]["name"]
    assert data == want
    # the report table and totals
    assert len(report_names(page)) == len(report["tensors"])
    assert page.text_content("#download-name") == "model.apr"
    totals = page.text_content("#totals")
    assert "Compression" in totals and "×" in totals
    assert page.locator("#chart-rows .chart-row").count() == 2
    assert page.locator("#chart-rows .seg").count() >= 2


def test_works_under_a_sub_path(page, dist_dir, sample_path, tmp_path):
    """A static host that serves the site under /some/where/: every URL is relative."""
    from serve import start_server
    (tmp_path / "some").mkdir()
    (tmp_path / "some" / "where").symlink_to(dist_dir, target_is_directory=True)
    server, root = start_server(str(tmp_path))
    try:
        open_app(page, root + "some/where/")
        page.click("#sample-btn")
        assert wait_state(page, "done", "error") == "done", page.text_content("#error-panel")
        assert download(page)[1] == native(sample_path)[0]
        scope = page.evaluate("navigator.serviceWorker.ready.then(r => r.scope)")
        assert scope == root + "some/where/"
        assert all(u.startswith(root + "some/where/") for u in page.request_urls
                   if u.startswith("http")), page.request_urls
    finally:
        server.shutdown()


def test_drop_a_file_on_the_drop_zone(page, site_url, sample_path, tmp_path):
    open_app(page, site_url)
    dt = page.evaluate_handle("""async () => {
        const r = await fetch("static/sample/model.safetensors");
        const f = new File([await r.blob()], "dropped.safetensors");
        const dt = new DataTransfer();
        dt.items.add(f);
        return dt;
    }""")
    page.dispatch_event("#dropzone", "dragenter", {"dataTransfer": dt})
    assert "dragging" in page.get_attribute("body", "class")
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": dt})
    assert "dragging" not in (page.get_attribute("body", "class") or "")
    assert page.locator("#file-list li .fname").all_text_contents() == ["dropped.safetensors"]
    quantize(page)
    name, data = download(page)
    assert name == "dropped.apr"
    same = tmp_path / "dropped.safetensors"          # the output's metadata names the input
    same.write_bytes(sample_path.read_bytes())
    assert data == native(same)[0]


def test_keyboard_only(page, site_url, st_file):
    """The file picker and every control are reachable with Tab; Enter/Space act."""
    open_app(page, site_url)
    order = []
    for _ in range(14):
        page.keyboard.press("Tab")
        order.append(page.evaluate("document.activeElement.id || document.activeElement.tagName"))
    assert "file-input" in order and "sample-btn" in order and "opt-skip" in order
    assert order.index("file-input") < order.index("sample-btn") < order.index("opt-skip")
    for attempt in range(3):   # under heavy load Chromium sometimes drops the first key press
        page.focus("#file-input")
        try:
            with page.expect_file_chooser(timeout=10_000) as fc:
                page.keyboard.press("Space")
            break
        except PlaywrightTimeout:
            if attempt == 2:
                raise
    fc.value.set_files(str(st_file))
    page.focus("#file-input")
    shot(page, "10-focus-file-input", full_page=False)
    page.focus("#fmt-apr")
    page.keyboard.press("ArrowRight")                 # radio group: to GGUF
    assert page.is_checked("#fmt-gguf")
    page.focus("#quantize-btn")
    page.keyboard.press("Enter")
    assert wait_state(page, "done", "error") == "done", page.text_content("#error-panel")
    page.focus("#download-link")
    with page.expect_download() as info:
        page.keyboard.press("Enter")
    assert info.value.suggested_filename == "tiny.Q4_0.gguf"
    assert Path(info.value.path()).read_bytes() == native(st_file, format="gguf")[0]


def test_safetensors_file_small_chunks_with_options(page, site_url, st_file):
    opts = dict(keep_embeddings_f16=True, skip=("*.v_proj.*",), chunk_bytes=1000)
    open_app(page, site_url)
    set_options(page, **opts)
    quantize(page, st_file)
    name, data = download(page)
    want, report = native(st_file, **opts)
    assert name == "tiny.apr"
    assert data == want
    assert sorted(report_names(page)) == sorted(t["name"] for t in report["tensors"])
    # the options did something: embeddings kept at F16, v_proj copied as is
    rows = {r["name"]: r for r in report["tensors"]}
    assert rows["model.embed_tokens.weight"]["dtype_out"] == "F16"
    assert rows["model.layers.0.self_attn.v_proj.weight"]["dtype_out"] == "F32"


def test_sharded_safetensors_with_index(page, site_url, tmp_path):
    from safetensors.numpy import save_file
    t = llama_like(np.random.default_rng(3), layers=2)
    names = sorted(t)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    paths, weight_map = [], {}
    for fn, keys in shards.items():
        save_file({k: t[k] for k in keys}, str(tmp_path / fn))
        paths.append(tmp_path / fn)
        weight_map.update({k: fn for k in keys})
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": sum(v.nbytes for v in t.values())},
                                 "weight_map": weight_map}))
    paths.append(index)
    open_app(page, site_url)
    set_options(page, chunk_bytes=2048)
    quantize(page, *paths)
    name, data = download(page)
    want, report = native(paths, chunk_bytes=2048)
    assert name == report["output"]["name"]
    assert data == want
    assert len(report_names(page)) == len(t)


def test_gguf_input_small_chunks(page, site_url, gguf_file):
    open_app(page, site_url)
    set_options(page, chunk_bytes=512)
    quantize(page, gguf_file)
    name, data = download(page)
    want, report = native(gguf_file, chunk_bytes=512)
    assert name == "tiny.apr"
    assert data == want


def test_gguf_output_format(page, site_url, sample_path):
    open_app(page, site_url)
    set_options(page, format="gguf", keep_output_f16=True, chunk_bytes=4096)
    page.click("#sample-btn")
    assert wait_state(page, "done", "error") == "done", page.text_content("#error-panel")
    name, data = download(page)
    want, report = native(sample_path, format="gguf", keep_output_f16=True, chunk_bytes=4096)
    assert name == "model.Q4_0.gguf" == report["output"]["name"]
    assert data[:4] == b"GGUF"
    assert data == want


def test_npy_input(page, site_url, tmp_path):
    path = tmp_path / "weights.npy"
    np.save(path, np.random.default_rng(2).standard_normal((64, 96)).astype(np.float32))
    open_app(page, site_url)
    set_options(page, chunk_bytes=1024)
    quantize(page, path)
    name, data = download(page)
    want, report = native(path, chunk_bytes=1024)
    assert name == report["output"]["name"] == "weights.apr"
    assert data == want


def test_scale_overflow_rewinds_the_tensor_to_f32(page, site_url, tmp_path):
    """A Q4 scale that overflows f16 late in a tensor: the page drops what it had of it."""
    a = np.random.default_rng(3).standard_normal((64, 64)).astype(np.float32)
    a[60, 7] = 1e6
    path = tmp_path / "huge.npz"
    np.savez(path, **{"big.weight": a, "small.weight": a[:8] / 1e6})
    open_app(page, site_url)
    set_options(page, chunk_bytes=1024)
    quantize(page, path)
    _, data = download(page)
    want, report = native(path, chunk_bytes=1024)
    assert {t["name"]: t["dtype_out"] for t in report["tensors"]} == {"big.weight": "F32",
                                                                     "small.weight": "APR_Q4"}
    assert data == want


def test_non_finite_refused_then_allowed_in_advanced(page, site_url, tmp_path):
    """A NaN in a kept norm is refused, naming tensor and index; with Advanced › Allow
    non-finite weights the download is the native run's and the report counts it.  The
    checkbox is remembered like the other options; the footer shows the core's version."""
    from safetensors.numpy import save_file
    t = llama_like(np.random.default_rng(4))
    t["model.norm.weight"][37] = np.nan
    path = tmp_path / "nan.safetensors"
    save_file(t, str(path))
    open_app(page, site_url)
    assert f"q4apr {q4apr.__version__}" in page.text_content("#versions")
    set_options(page, chunk_bytes=1024)
    page.set_checked("#opt-nonfinite", False)
    choose(page, path)
    page.click("#quantize-btn")
    assert wait_state(page, "error", "done") == "error"
    text = page.text_content("#error-title") + page.text_content("#error-message")
    assert "model.norm.weight" in text and "non-finite weight nan at flat index 37" in text

    page.set_checked("#opt-nonfinite", True)
    quantize(page)
    _, data = download(page)
    want, report = native(path, chunk_bytes=1024, allow_non_finite=True)
    assert data == want
    assert report["totals"]["non_finite"] == 1
    row = page.locator("#report-body tr", has_text="model.norm.weight")
    assert "1 non-finite value (NaN/Inf) written as they are" in row.text_content()
    assert "Non-finite" in page.text_content("#totals")
    shot(page, "non-finite-allowed")

    page.reload()
    wait_booted(page)
    assert page.is_checked("#opt-nonfinite")


# ---------------------------------------------------------------- inspect

def test_inspect_apr_and_gguf(page, site_url, sample_path, gguf_file, tmp_path):
    apr = tmp_path / "model.apr"
    apr.write_bytes(native(sample_path)[0])
    open_app(page, site_url)

    choose(page, apr)
    page.click("#inspect-btn")
    assert wait_state(page, "inspected", "error") == "inspected", page.text_content("#error-panel")
    with q4apr.open_model(str(apr)) as m:
        info = q4apr.inspect_model(m)
    assert page.locator("#inspect-body tr").count() == len(info["tensors"])
    assert "APR" in page.text_content("#inspect-sub")
    assert "APR_Q4" in page.text_content("#inspect-body")
    assert page.get_attribute("#download-link", "href") is None   # inspecting offers no file
    shot(page, "06-inspect")

    choose(page, gguf_file)
    page.click("#inspect-btn")
    assert wait_state(page, "inspected", "error") == "inspected", page.text_content("#error-panel")
    meta = page.text_content("#meta-body")
    assert "general.name" in meta and "tiny llama" in meta
    assert "tokenizer.ggml.tokens" in meta and "llama.context_length" in meta
    assert page.locator("#inspect-body tr").count() == 5


# ---------------------------------------------------------------- cancel

def test_cancel_then_next_run_works(page, site_url, tmp_path, sample_path):
    from safetensors.numpy import save_file
    rng = np.random.default_rng(0)
    big = tmp_path / "big.safetensors"
    save_file({f"layer.{i}.weight": rng.standard_normal((1024, 1024)).astype(np.float32) for i in range(6)},
              str(big))                                           # 24 MiB
    open_app(page, site_url)
    set_options(page, chunk_bytes=4096)                           # thousands of steps
    choose(page, big)
    page.click("#quantize-btn")
    page.wait_for_selector("#work-panel:not([hidden])")
    # wait until it is visibly under way
    page.wait_for_selector('#work-tensor:text-matches("layer")', timeout=30_000)
    assert page.get_attribute("body", "data-state") == "working"
    shot(page, "03-working")
    t0 = time.monotonic()
    page.click("#cancel-btn")
    assert wait_state(page, "cancelled", "done", "error", timeout=5_000) == "cancelled"
    assert time.monotonic() - t0 < 2.5
    # The worker answered by itself, so within the page's 1 s grace (else the page would
    # have replaced it and be booting again), and nothing is offered.
    assert page.get_attribute("body", "data-boot") == "ready"
    assert page.get_attribute("#download-link", "href") is None
    assert page.is_hidden("#result-panel")
    assert "Cancelled" in page.text_content("#error-title")
    shot(page, "07-cancelled")

    # the page is usable: the next run works and is right
    page.fill("#opt-chunk", "")
    page.click("#sample-btn")
    assert wait_state(page, "done", "error") == "done", page.text_content("#error-panel")
    name, data = download(page)
    assert data == native(sample_path)[0]


def test_cancel_replaces_a_stuck_worker(page, site_url, tmp_path, sample_path):
    # 300,000 one-element tensors: a 23 MB header whose parsing is one long step that
    # cannot see the cancel message, so the page must replace the worker after ~1 s.
    n = 300_000
    header = {f"t{i}": {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]} for i in range(n)}
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    many = tmp_path / "many.safetensors"
    many.write_bytes(struct.pack("<Q", len(h)) + h + bytes(4 * n))
    open_app(page, site_url)
    choose(page, many)
    page.click("#quantize-btn")
    page.wait_for_timeout(300)
    assert page.get_attribute("body", "data-state") == "working"
    t0 = time.monotonic()
    page.click("#cancel-btn")
    assert wait_state(page, "cancelled", "done", "error", timeout=5_000) == "cancelled"
    assert time.monotonic() - t0 < 3.0           # the page's grace is 1 s
    assert page.get_attribute("#download-link", "href") is None
    # a fresh worker boots and the next run works
    wait_booted(page)
    page.click("#sample-btn")
    assert wait_state(page, "done", "error") == "done", page.text_content("#error-panel")
    assert download(page)[1] == native(sample_path)[0]


# ---------------------------------------------------------------- errors

def test_corrupt_file_error_then_next_file_works(page, site_url, tmp_path, st_file):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(struct.pack("<Q", 40) + b'{"w": {"dtype": "F32", "shape": [4, 4], ' + b"\x00" * 30)
    open_app(page, site_url)
    choose(page, bad)
    page.click("#quantize-btn")
    assert wait_state(page, "error", "done") == "error"
    title = page.text_content("#error-title")
    message = page.text_content("#error-message")
    assert "broken.safetensors" in title + message
    assert "internal error" not in message and "Traceback" not in message
    assert "/in/" not in message                                  # no mount paths
    assert page.get_attribute("#download-link", "href") is None
    assert page.is_hidden("#result-panel")
    assert page.get_attribute("body", "data-boot") == "ready"     # the worker survived
    shot(page, "05-error")

    quantize(page, st_file)
    name, data = download(page)
    assert name == "tiny.apr"
    assert data == native(st_file)[0]


def test_truncated_tensor_data_names_file_and_tensor(page, site_url, tmp_path, st_file):
    cut = tmp_path / "cut.safetensors"
    raw = st_file.read_bytes()
    cut.write_bytes(raw[: len(raw) - 3000])
    open_app(page, site_url)
    choose(page, cut)
    page.click("#quantize-btn")
    assert wait_state(page, "error", "done") == "error"
    text = page.text_content("#error-title") + page.text_content("#error-message")
    assert "cut.safetensors" in text


@pytest.mark.parametrize("chunk", [5, 1 << 30])
def test_invalid_chunk_size_is_refused_in_page(page, site_url, st_file, chunk):
    open_app(page, site_url)
    set_options(page, chunk_bytes=chunk)
    choose(page, st_file)
    page.click("#quantize-btn")
    assert page.get_attribute("#opt-chunk", "aria-invalid") == "true"
    assert page.get_attribute("body", "data-state") == "idle"
    assert "128" in page.text_content("#error-message")


# ---------------------------------------------------------------- safety

def test_markup_in_names_and_metadata_is_text(page, site_url, tmp_path):
    from safetensors.numpy import save_file
    evil_name = '<img src=x onerror="window.__pwned=1">'
    evil_key = "<script>window.__pwned=2</script>"
    evil_val = '<b id="injected" onmouseover="window.__pwned=3">bold</b>'
    path = tmp_path / "evil.safetensors"
    rng = np.random.default_rng(9)
    save_file({evil_name: rng.standard_normal((64, 64)).astype(np.float32),
               "ok.weight": rng.standard_normal((64, 64)).astype(np.float32)},
              str(path), metadata={evil_key: evil_val})
    open_app(page, site_url)
    choose(page, path)
    page.click("#inspect-btn")
    assert wait_state(page, "inspected", "error") == "inspected", page.text_content("#error-panel")
    assert evil_name in page.locator("#inspect-body td.name").all_text_contents()
    meta = page.text_content("#meta-body")
    assert evil_key in meta and evil_val in meta

    quantize(page)
    assert evil_name in report_names(page)
    assert page.locator("main img, main script, #injected").count() == 0
    assert page.evaluate("window.__pwned") is None
    name, data = download(page)
    assert data == native(path)[0]

    # a file whose very name is markup, and whose content is broken
    bad = tmp_path / "<b>x<i>.npy"
    bad.write_bytes(b"\x93NUMPY garbage")
    choose(page, bad)
    page.click("#quantize-btn")
    assert wait_state(page, "error", "done") == "error"
    assert "<b>x<i>.npy" in page.text_content("#error-title")
    assert page.locator("#error-panel b, #error-panel i").count() == 0
    assert page.evaluate("window.__pwned") is None


def test_all_requests_stay_on_origin(page, site_url):
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(site_url))
    open_app(page, site_url)
    page.click("#sample-btn")
    assert wait_state(page, "done", "error") == "done"
    download(page)
    page.wait_for_selector('body[data-offline="ready"]', state="attached", timeout=60_000)
    urls = list(page.request_urls)
    assert any("pyodide.asm.wasm" in u for u in urls)              # the worker's requests are seen too
    assert any("numpy-2.0.2" in u for u in urls)
    foreign = []
    for u in urls:
        if u.startswith("blob:"):
            u = u[len("blob:"):]
        if u.startswith("data:"):
            continue
        if "{0.scheme}://{0.netloc}".format(urlsplit(u)) != origin:
            foreign.append(u)
    assert foreign == []


def test_csp_meta_is_in_place(page, site_url):
    open_app(page, site_url)
    csp = page.get_attribute('meta[http-equiv="Content-Security-Policy"]', "content")
    for part in ("default-src 'self'", "script-src 'self' 'wasm-unsafe-eval'", "connect-src 'self'",
                 "object-src 'none'", "style-src 'self'"):
        assert part in csp
    html = page.content()
    assert " onclick=" not in html and " onload=" not in html
    # an inline script is refused by the page's policy
    page.evaluate("""() => { const s = document.createElement("script");
                             s.textContent = "window.__inline = 1"; document.body.append(s); }""")
    assert page.evaluate("window.__inline") is None
    page.console_messages.clear()     # the refusal above is the expected CSP report


# ---------------------------------------------------------------- offline

def test_works_offline_after_first_visit(page, site_url, sample_path):
    page.set_default_timeout(60_000)
    page.goto(site_url)
    # a cache left by an older version, to be deleted when the new service worker activates
    page.evaluate("async () => { await (await caches.open('q4apr:/:old')).put('x', new Response('old')); await (await caches.open('q4apr:/elsewhere/:v1')).put('x', new Response('theirs')); }")
    wait_booted(page)
    page.wait_for_selector('body[data-offline="ready"]', state="attached", timeout=60_000)
    keys = page.evaluate("async () => await caches.keys()")
    ours = [k for k in keys if k.startswith("q4apr:/:")]
    assert len(ours) == 1 and ours[0] != "q4apr:/:old", keys
    assert "q4apr:/elsewhere/:v1" in keys, keys    # another deployment's cache is left alone
    cached = page.evaluate("async () => (await (await caches.open(%r)).keys()).map(r => r.url)" % ours[0])
    assert any(u.endswith("/static/pyodide/pyodide.asm.wasm") for u in cached)
    assert any(u.endswith("/static/sample/model.safetensors") for u in cached)
    # wait until this page is controlled (clients.claim) as well
    for _ in range(100):
        if page.evaluate("!!navigator.serviceWorker.controller"):
            break
        page.wait_for_timeout(100)
    page.context.set_offline(True)
    try:
        page.reload()
        wait_booted(page)
        page.click("#sample-btn")
        assert wait_state(page, "done", "error") == "done", page.text_content("#error-panel")
        name, data = download(page)
        assert data == native(sample_path)[0]
    finally:
        page.context.set_offline(False)


def test_manifest_and_service_worker_files(dist_dir):
    manifest = json.loads((dist_dir / "manifest.webmanifest").read_text())
    assert manifest["start_url"] == "." and manifest["display"] == "standalone"
    assert manifest["name"] and any(i["src"].endswith(".svg") for i in manifest["icons"])
    sw = (dist_dir / "sw.js").read_text()
    assert "__PRECACHE__" not in sw and "__BUILD_VERSION__" not in sw
    start = sw.index("typeof [") + len("typeof ")
    urls = json.loads(sw[start: sw.index("]", start) + 1])
    for u in urls:
        if u != "./":
            assert (dist_dir / u).is_file(), u
    assert "static/q4apr.zip" in urls and "index.html" in urls


# ---------------------------------------------------------------- narrow screens

def test_narrow_layout(browser, site_url, sample_path):
    context = browser.new_context(viewport={"width": 375, "height": 800}, device_scale_factor=2)
    page = context.new_page()
    try:
        page.set_default_timeout(60_000)
        page.goto(site_url)
        wait_booted(page)
        shot(page, "08-narrow-ready")
        page.click("#sample-btn")
        assert wait_state(page, "done", "error") == "done"
        # nothing overflows the viewport horizontally (tables scroll inside their box)
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        shot(page, "09-narrow-done")
    finally:
        context.close()


# ---------------------------------------------------------------- model folders (issue 8)

def hf_model(name):
    """A Hugging Face model folder of the test fixtures (tests/fixtures/hf.py)."""
    try:
        from fixtures import hf
    except ImportError:
        pytest.skip("the model-folder fixtures (tests/fixtures/hf.py) are not there")
    return Path(hf.model_dir(name))


def model_folder(tmp_path, name, src, extras=True, config=None):
    """A folder `name` holding the files of the fixture folder `src` (hard links where the
    file system allows, else copies: Playwright's directory upload skips symlinks), plus
    files that play no part: a README, a .bin, an image and an onnx/ subfolder."""
    import os
    import shutil
    d = tmp_path / name
    d.mkdir()
    for f in sorted(src.iterdir()):
        if f.is_file():
            try:
                os.link(f.resolve(), d / f.name)
            except OSError:
                shutil.copyfile(f, d / f.name)
    if config is not None:
        (d / "config.json").unlink()
        (d / "config.json").write_text(json.dumps(config, indent=2))
    if extras:
        (d / "README.md").write_text("# a model card\n")
        (d / "pytorch_model.bin").write_bytes(b"\x80\x02not really a pickle")
        (d / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n")
        (d / "onnx").mkdir()
        (d / "onnx" / "model.onnx").write_bytes(b"onnx")
        (d / "onnx" / "model_q4.onnx").write_bytes(b"onnx")
    return d


def cli(folder, out):
    """The native CLI's output for a model folder: `python -m q4apr quantize DIR -o OUT`."""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "q4apr", "quantize", str(folder), "-o", str(out)],
                       cwd=Path(q4apr.__file__).parent.parent, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    return Path(out).read_bytes()


def wait_described(page, timeout=RUN_MS):
    page.wait_for_selector('body[data-describe="ready"], body[data-describe="failed"]', state="attached",
                           timeout=timeout)
    assert page.get_attribute("body", "data-describe") == "ready", page.text_content("#model-card")


def facts(page):
    """{key: shown value} of the folder summary."""
    out = {}
    for div in page.locator("#model-facts > div").all():
        out[div.get_attribute("data-fact")] = div.locator(".big").text_content()
    return out


def ignored_shown(page):
    return page.locator("#ignored-list li").all_text_contents()


def listed_files(page):
    return page.locator("#file-list li .fname").all_text_contents()


def test_folder_picker_summary_ignored_and_download(page, site_url, tmp_path):
    folder = model_folder(tmp_path, "Tiny-Llama-Demo", hf_model("tiny-llama"))
    open_app(page, site_url)
    set_options(page, format="apr")
    page.set_input_files("#folder-input", str(folder))
    wait_described(page)
    summary = native_summary(folder)
    f = facts(page)
    assert page.text_content("#model-name") == "Tiny-Llama-Demo"
    assert f["architecture"] == summary["architecture"]
    assert f["layers"] == str(summary["layers"])
    assert f["hidden_size"] == f"{summary['hidden_size']:,}"
    assert f["vocab_size"] == f"{summary['vocab_size']:,}"
    assert f["tokenizer"] == summary["tokenizer"]["kind"]
    # files that play no part are listed as ignored, not refused
    assert sorted(ignored_shown(page)) == sorted(["README.md", "logo.png", "pytorch_model.bin",
                                                  "onnx/model.onnx", "onnx/model_q4.onnx"])
    assert "README.md" not in listed_files(page) and "config.json" in listed_files(page)
    assert page.is_hidden("#selection-note")
    assert "Tiny-Llama-Demo.apr" in page.text_content("#action-hint")
    page.evaluate("document.activeElement && document.activeElement.blur()")
    shot(page, "20-folder-summary")
    quantize(page)
    name, data = download(page)
    assert name == "Tiny-Llama-Demo.apr"
    assert data == cli(folder, tmp_path / "cli.apr")
    # the report: which runtime loads it, per-tensor and model-level SNR
    runtimes = page.locator("#runtimes li")
    assert runtimes.count() == 1 and "ok" in runtimes.first.get_attribute("class")
    assert "Aprender" in runtimes.first.text_content()
    # the default type's APR Q4 is dequantized when Aprender loads it; the page says so, and
    # beside the type choice which type its fused kernels run
    assert "loads it slowly" in runtimes.first.text_content()
    assert "Q4_K_M runs in its fused kernels" in page.text_content("#type-runtime-hint")
    assert "dB" in page.text_content("#totals")
    snrs = page.locator("#report-body td.snr").all_text_contents()
    assert any(s.endswith(" dB") for s in snrs)
    assert "layers" in page.text_content("#result-sub")
    shot(page, "21-folder-report")


def native_summary(folder):
    with q4apr.open_model(str(folder)) as model:
        return model.description.summary()


DROP_FAKE_FOLDER = """([name, batch]) => {
    // A dropped folder as Chromium hands it over: directory entries, read in batches
    // (readEntries must be called until it answers none).  The files come from a
    // test-only <input> that Playwright filled.
    const files = Array.from(document.getElementById("t-input").files);
    const fileEntry = (f) => ({ isFile: true, isDirectory: false, name: f.name,
                                file: (ok) => setTimeout(() => ok(f), 0) });
    const dirEntry = (n, children) => ({ isFile: false, isDirectory: true, name: n,
        createReader() {
            let at = 0;
            return { readEntries(ok) { setTimeout(() => { ok(children.slice(at, at + batch)); at += batch; }, 0); } };
        } });
    const onnx = dirEntry("onnx", [fileEntry(new File(["x"], "model.onnx")),
                                   dirEntry("deeper", [fileEntry(new File(["y"], "weights.pb"))])]);
    const root = dirEntry(name, [...files.map(fileEntry), onnx]);
    const ev = new DragEvent("drop", { bubbles: true, cancelable: true });
    Object.defineProperty(ev, "dataTransfer", { value: {
        types: ["Files"], files: [],
        items: [{ kind: "file", webkitGetAsEntry: () => root }] } });
    document.getElementById("dropzone").dispatchEvent(ev);
}"""


def stage_files(page, paths):
    """File objects in the page, in a test-only input (the app never sees it)."""
    page.evaluate("""() => { const i = document.createElement("input"); i.type = "file"; i.multiple = true;
                             i.id = "t-input"; i.hidden = true; document.body.append(i); }""")
    page.set_input_files("#t-input", [str(p) for p in paths])


def test_drop_a_folder_walks_its_entries(page, site_url, tmp_path):
    folder = model_folder(tmp_path, "Tiny-Drop", hf_model("tiny-llama"), extras=False)
    (folder / "README.md").write_text("hello")
    open_app(page, site_url)
    set_options(page, format="gguf")
    stage_files(page, sorted(folder.iterdir()))
    page.evaluate(DROP_FAKE_FOLDER, ["Tiny-Drop", 2])
    wait_described(page)
    assert page.text_content("#model-name") == "Tiny-Drop"
    assert sorted(ignored_shown(page)) == ["README.md", "onnx/deeper/weights.pb", "onnx/model.onnx"]
    assert "config.json" in listed_files(page) and "model.safetensors" in listed_files(page)
    quantize(page)
    name, data = download(page)
    assert name == "Tiny-Drop.Q4_0.gguf"
    assert data == cli(folder, tmp_path / "cli.gguf")
    assert "llama.cpp" in page.text_content("#runtimes")


def test_drop_several_files_of_a_folder(page, site_url, tmp_path):
    """Files dropped (or picked) one by one that hold a config.json are a model folder,
    without a name of its own: the model is called "model"."""
    folder = model_folder(tmp_path, "model", hf_model("tiny-llama"), extras=False)
    open_app(page, site_url)
    set_options(page, format="apr")
    stage_files(page, sorted(folder.iterdir()))
    dt = page.evaluate_handle("""() => {
        const dt = new DataTransfer();
        for (const f of document.getElementById("t-input").files) dt.items.add(f);
        return dt;
    }""")
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": dt})
    wait_described(page)
    assert page.text_content("#model-name") == "model"
    assert "name it" in page.text_content("#selection-note")
    quantize(page)
    name, data = download(page)
    assert name == "model.apr"
    assert data == cli(folder, tmp_path / "cli.apr")


def test_contradictory_config_is_refused_then_next_folder_works(page, site_url, tmp_path):
    src = hf_model("tiny-llama")
    config = json.loads((src / "config.json").read_text())
    config["num_hidden_layers"] = config["num_hidden_layers"] + 3      # more layers than tensors
    bad = model_folder(tmp_path, "Bad-Config", src, config=config)
    with pytest.raises(q4apr.BadInput) as want:
        q4apr.open_model(str(bad))
    open_app(page, site_url)
    page.set_input_files("#folder-input", str(bad))
    page.wait_for_selector('body[data-describe="failed"]', state="attached", timeout=RUN_MS)
    status = page.text_content("#model-status")
    assert "config.json" in status and "num_hidden_layers" in status, status
    assert want.value.problem in status
    assert "/in/" not in status                       # named as the user knows it, not the mount point
    assert "refused" in page.text_content("#action-hint")
    shot(page, "22-folder-refused")
    # quantizing it anyway reports the same error and offers no file
    page.click("#quantize-btn")
    assert wait_state(page, "done", "error") == "error"
    assert want.value.problem in page.text_content("#error-message")
    assert page.get_attribute("#download-link", "href") is None
    # the next folder works
    good = model_folder(tmp_path, "Good-Config", src, extras=False)
    page.set_input_files("#folder-input", str(good))
    wait_described(page)
    quantize(page)
    name, data = download(page)
    assert name == "Good-Config.apr"


def test_smollm2_folder_both_formats_match_the_cli(page, site_url, tmp_path):
    folder = model_folder(tmp_path, "SmolLM2-135M-Instruct", hf_model("smollm2-135m"))
    open_app(page, site_url)
    page.set_viewport_size({"width": 1280, "height": 900})
    page.set_input_files("#folder-input", str(folder))
    wait_described(page)
    f = facts(page)
    assert (f["architecture"], f["layers"], f["hidden_size"], f["vocab_size"], f["tokenizer"]) == \
        ("llama", "30", "576", "49,152", "BPE")
    shot(page, "23-smollm2-summary")
    for fmt, out in (("apr", "SmolLM2-135M-Instruct.apr"), ("gguf", "SmolLM2-135M-Instruct.Q4_0.gguf")):
        set_options(page, format=fmt)
        quantize(page)
        name, data = download(page)
        assert name == out
        assert data == cli(folder, tmp_path / f"cli-{out}"), fmt
        assert page.locator("#runtimes li.ok").count() == 1
        shot(page, f"24-smollm2-report-{fmt}")


def test_lone_weights_file_says_it_is_a_container(page, site_url, st_file):
    open_app(page, site_url)
    choose(page, st_file)
    assert page.get_attribute("body", "data-describe") == "none"
    assert "container" in page.text_content("#selection-note")
    assert page.is_hidden("#model-card")
    quantize(page)
    report = native(st_file)[1]
    why = report["runtimes"][0]["why"]
    li = page.locator("#runtimes li")
    assert li.count() == 1 and "no" in li.first.get_attribute("class")
    assert why in li.first.text_content()
    assert "container" in why and "architecture" in why and "tokenizer" in why
    assert page.locator("#report-body td.snr").count() == len(report["tensors"])


def test_narrow_folder_summary(browser, site_url, tmp_path):
    folder = model_folder(tmp_path, "SmolLM2-135M-Instruct", hf_model("tiny-llama"))
    context = browser.new_context(viewport={"width": 375, "height": 800}, device_scale_factor=2)
    page = context.new_page()
    try:
        open_app(page, site_url)
        page.set_input_files("#folder-input", str(folder))
        wait_described(page)
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        shot(page, "25-narrow-folder-summary")
        quantize(page)
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        shot(page, "26-narrow-folder-report")
        page.locator("#result-panel").screenshot(path=str(ARTIFACTS / "27-narrow-report-panel.png"))
    finally:
        context.close()


@pytest.mark.parametrize("fmt", ["gguf", "apr"])
def test_q4_k_m_download_matches_native(page, site_url, tmp_path, fmt):
    """--type Q4_K_M in the page: K-quant tensors (rows of whole 256-blocks) and the
    mixture's Q6_K bumps, byte for byte the native CLI's, small chunks included."""
    from safetensors.numpy import save_file
    rng = np.random.default_rng(21)
    t = {"model.embed_tokens.weight": rng.standard_normal((512, 256)).astype(np.float32),
         "model.layers.0.self_attn.q_proj.weight": rng.standard_normal((256, 256)).astype(np.float32),
         "model.layers.0.self_attn.v_proj.weight": rng.standard_normal((256, 256)).astype(np.float32),
         "model.layers.0.mlp.down_proj.weight": rng.standard_normal((256, 512)).astype(np.float32),
         "model.layers.0.input_layernorm.weight": np.ones(256, np.float32),
         "lm_head.weight": rng.standard_normal((512, 256)).astype(np.float32)}
    path = tmp_path / "kq.safetensors"
    save_file(t, str(path))
    open_app(page, site_url)
    set_options(page, format=fmt, type="Q4_K_M", chunk_bytes=64 << 10)
    quantize(page, path)
    name, data = download(page)
    want, report = native(path, format=fmt, type="Q4_K_M", chunk_bytes=64 << 10)
    assert name == ("kq.Q4_K_M.gguf" if fmt == "gguf" else "kq.apr")
    assert data == want
    types = {r["dtype_out"] for r in report["tensors"]}
    assert {"Q4_K", "Q6_K"} <= types, types
    assert "bits" in page.text_content("#totals").lower()

