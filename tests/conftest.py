"""Shared test fixtures.

- `<repo>/py` is on sys.path, so tests `import q4apr` (the native core).
- repo_root, shared_dir (<repo>/../shared; skipped if absent)
- dist_dir: the built site (runs `./build.sh build` once per session unless
  ./build.sh test just built it), site_url: dist/ served on 127.0.0.1.
- browser: Debian's Chromium via Playwright (skipped if absent, except under CI=true,
  where that is a failure); page: a fresh context per test, with
  page.request_urls (every request URL of the context, workers and service worker
  included), page.console_messages ([(type, text)]) and page.page_errors ([str]).
- run_in_pyodide(script_text, *files, args=(), mounts=()) -> stdout (str): the script
  under Pyodide in Node (tests/node/run_core.mjs) with the built runtime, numpy
  and q4apr.zip; also as the fixture `pyodide_run`.
"""
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "py"))
sys.path.insert(0, str(REPO / "tests"))   # tests/helpers.py, for tests in sub-folders

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]
RUN_CORE = REPO / "tests" / "node" / "run_core.mjs"

_built = False


def ensure_dist():
    """Build dist/ once per session (a cached build takes about a second).

    ./build.sh test sets Q4APR_DIST_BUILT=1 after building, so it is not built twice.
    """
    global _built
    dist = REPO / "dist"
    if not _built:
        fresh = os.environ.get("Q4APR_DIST_BUILT") == "1" and (dist / "static" / "q4apr.zip").exists()
        if not fresh:
            r = subprocess.run(["bash", str(REPO / "build.sh"), "build"], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if r.returncode != 0:
                pytest.fail("./build.sh build failed:\n" + r.stdout[-4000:], pytrace=False)
        _built = True
    return dist


def run_in_pyodide(script_text, *files, args=(), mounts=(), timeout=600, check=True, kernels="numpy"):
    """Run `script_text` under Pyodide (Node) and return its stdout (str).

    The script sees sys.argv[1:] = [*files, *args]; each file's folder is mounted at the
    same path, so the script opens them by the paths given (writing beside them works
    too); each folder in `mounts` is mounted at its own path as well; kernels="wasm" or "js"
    installs the page's K-quant kernels (kquants.wasm, kquants.js). On a non-zero exit (an exception: traceback on stderr) this fails the test,
    unless check=False, which returns the CompletedProcess instead.
    """
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed (./build.sh test installs it)", pytrace=False)
    dist = ensure_dist()
    with tempfile.TemporaryDirectory(prefix="q4pyodide-") as tmp:
        script = Path(tmp) / "script.py"
        script.write_text(script_text)
        cmd = [node, str(RUN_CORE), "--dist", str(dist), "--kernels", kernels]
        for f in files:
            cmd += ["--mount", str(Path(f).resolve().parent)]
        for d in mounts:
            cmd += ["--mount", str(Path(d).resolve())]
        cmd += [str(script), *[str(Path(f).resolve()) for f in files], *map(str, args)]
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    if not check:
        return r
    if r.returncode != 0:
        pytest.fail(f"Python under Pyodide exited {r.returncode}:\n"
                    + r.stderr.decode(errors="replace")[-6000:], pytrace=False)
    return r.stdout.decode()


@pytest.fixture(scope="session")
def repo_root():
    return REPO


@pytest.fixture(scope="session")
def shared_dir():
    d = REPO.parent / "shared"
    if not d.is_dir():
        pytest.skip(f"no shared/ beside the repo ({d})")
    return d


@pytest.fixture(scope="session")
def dist_dir():
    return ensure_dist()


@pytest.fixture(scope="session")
def pyodide_run():
    return run_in_pyodide


@pytest.fixture(scope="session")
def site_url(dist_dir):
    from serve import start_server
    server, url = start_server(dist_dir)
    yield url
    server.shutdown()
    server.server_close()


from helpers import need as _missing  # noqa: E402  (fails under CI=true, else skips)

# What a test needs, as markers set by where it lives (pytest -m "not slow and not browser
# and not oracle and not node" is the fast subset: the core natively, ~2 minutes)
MARKERS = {
    "browser": "drives Debian's Chromium with Playwright (tests/browser/)",
    "node": "runs the core under Pyodide in Node.js",
    "oracle": "checks against llama.cpp's tools, converter or ggml's C code",
    "slow": "real models (SmolLM2-135M, MiniLM, Gemma 3's vocabulary): minutes",
}
NODE = ("test_pyodide_node.py", "test_kquants_js.py", "test_codecs.py::test_same_bytes_under_pyodide",
        "test_large_offsets.py::test_tensor_past_2gib_reads_under_pyodide")
ORACLE = ("test_llama_cpp.py", "test_mixtures.py", "test_runnable.py", "test_archs.py",
          "test_kquants.py", "test_tokenizer.py", "test_fixtures_smoke.py", "test_apr_rows.py",
          "test_apr_forward.py")
SLOW = ("smollm2", "minilm", "gemma-3", "gemma3-json", "test_apr_forward.py")


def pytest_configure(config):
    for name, what in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {what}")


def pytest_collection_modifyitems(items):
    for item in items:
        nodeid = item.nodeid
        if "tests/browser/" in nodeid or nodeid.startswith("browser/"):
            item.add_marker(pytest.mark.browser)
        if any(k in nodeid for k in NODE):
            item.add_marker(pytest.mark.node)
        if any(k in nodeid for k in ORACLE):
            item.add_marker(pytest.mark.oracle)
        if any(k in nodeid.lower() for k in SLOW):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("Playwright is not installed (pip install playwright)")
    if not os.path.exists(CHROMIUM):
        _missing(f"{CHROMIUM} is missing (apt-get install chromium)")
    pw = sync_playwright().start()
    try:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    except Exception as e:
        pw.stop()
        _missing(f"Chromium did not start: {e}")
    yield b
    b.close()
    pw.stop()


@pytest.fixture
def page(browser):
    context = browser.new_context()
    urls, console, errors = [], [], []
    context.on("request", lambda req: urls.append(req.url))
    p = context.new_page()
    p.on("console", lambda msg: console.append((msg.type, msg.text)))
    p.on("pageerror", lambda err: errors.append(str(err)))
    context.request_urls = urls
    p.request_urls = urls
    p.console_messages = console
    p.page_errors = errors
    yield p
    context.close()
