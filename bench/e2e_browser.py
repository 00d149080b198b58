"""The web app end to end in headless Chromium: cold start, drop -> download, wasm heap.

    python bench/e2e_browser.py [--dir /tmp/q4bench] [--reps 1] [--cold 5] [--only f32|f16]
                                [--no-verify] [--no-e2e] [--no-cold] [--json FILE]

Serves the built dist/ (./build.sh build) on 127.0.0.1 with tests/serve.py and drives it
with Playwright, Chromium as the tests launch it (tests/conftest.py).

* Inputs (generated with bench/make_model.py when missing, same bytes every time):
    f32: DIR/f32-1gib.safetensors  --gb 1.073741824 --dtype F32          (1 GiB)
    f16: DIR/f16-3gb.safetensors   --gb 3 --dtype F16 --big-tensor-gb 1  (3 GB, one 1 GB tensor)
* Read ceiling: the same file read in a module worker of a bare page (no Pyodide), in
  4 MiB slices, with FileReaderSync (what WORKERFS does) and with Blob.arrayBuffer().
* Drop -> download: a fresh page of the app; page.set_input_files (Playwright hands
  Chromium the path; nothing is copied); click Quantize; time until the Download button
  is ready (body[data-state=done]).  MB/s = input file bytes / that time.  Then the
  worker's wasm heap size (it never shrinks: final = peak), and the download is saved
  as a stream to DIR (download.save_as) and checked with `python -m q4apr verify`.
* Cold start: page load -> body[data-boot=ready] (the runtime, numpy and the core
  loaded), in a new browser context (empty HTTP cache, no service worker), then, once the
  service worker has precached the site, again in a new page of the same context (served
  from the service worker's cache).  performance.now() at ready, median of --cold runs.
This is a benchmark: it prints figures and ratios; nothing asserts a time.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import wasm   # noqa: E402

INPUTS = {
    "f32": ("f32-1gib.safetensors", ["--gb", "1.073741824", "--dtype", "F32"]),
    "f16": ("f16-3gb.safetensors", ["--gb", "3", "--dtype", "F16", "--big-tensor-gb", "1"]),
}

READ_PAGE = """<!doctype html><meta charset="utf-8"><title>read</title>
<input type="file" id="f">
<script type="module">
const w = new Worker("./read-worker.mjs", { type: "module" });
let resolve;
w.onmessage = (e) => resolve(e.data);
window.readRate = (method, chunk) => new Promise((r) => {
  resolve = r;
  w.postMessage({ file: document.getElementById("f").files[0], method, chunk });
});
</script>"""

# Reads the whole file in slices, touching every byte once (a running sum of one byte in
# 4096, so the engine cannot skip the read), as a reader feeding a wasm heap would.
READ_WORKER = """
onmessage = async (e) => {
  const { file, method, chunk } = e.data;
  const heap = new Uint8Array(chunk);
  const rs = method === "sync" ? new FileReaderSync() : null;
  let sum = 0;
  const t0 = performance.now();
  for (let pos = 0; pos < file.size; pos += chunk) {
    const part = file.slice(pos, Math.min(file.size, pos + chunk));
    const ab = rs ? rs.readAsArrayBuffer(part) : await part.arrayBuffer();
    const u8 = new Uint8Array(ab);
    heap.set(u8);
    for (let i = 0; i < u8.length; i += 4096) sum += u8[i];
  }
  postMessage({ seconds: (performance.now() - t0) / 1000, bytes: file.size, sum });
};
"""


def ensure_input(d, key):
    name, args = INPUTS[key]
    path = Path(d) / name
    if not path.exists():
        print(f"generating {path} ...", flush=True)
        subprocess.run([sys.executable, str(HERE / "make_model.py"), str(path), *args], check=True)
    return path


def launch(pw):
    exe, args = wasm.chromium_launch_args()
    return pw.chromium.launch(executable_path=exe, args=args, headless=True)


def serve(root):
    sys.path.insert(0, str(REPO / "tests"))
    from serve import start_server   # noqa: E402
    return start_server(root)


def read_rates(browser, path, chunk=4 << 20):
    """{method: MB/s} reading `path` in a worker of a bare page."""
    with tempfile.TemporaryDirectory(prefix="q4bench-read-") as tmp:
        (Path(tmp) / "read.html").write_text(READ_PAGE)
        (Path(tmp) / "read-worker.mjs").write_text(READ_WORKER)
        server, url = serve(tmp)
        ctx = browser.new_context()
        try:
            page = ctx.new_page()
            page.set_default_timeout(600_000)
            page.goto(url + "read.html")
            page.set_input_files("#f", str(path))
            out = {}
            for method in ("sync", "async"):
                r = page.evaluate(f"window.readRate({json.dumps(method)}, {chunk})")
                out[method] = r["bytes"] / r["seconds"] / 1e6
            return out
        finally:
            ctx.close()
            server.shutdown()
            server.server_close()


def wait_ready(page, timeout=120_000):
    page.wait_for_selector('body[data-boot="ready"], body[data-boot="failed"]', state="attached",
                           timeout=timeout)
    if page.get_attribute("body", "data-boot") != "ready":
        raise RuntimeError("the app did not boot: " + (page.text_content("#error-panel") or ""))
    # the moment the page turned ready, noted in the page (BOOT_MARKS); asking for
    # performance.now() afterwards would add Playwright's polling and round trips
    marked = page.evaluate("window.__q4ready || null")
    return marked if marked is not None else page.evaluate("performance.now()") / 1000


def worker_heap(page):
    for w in page.workers:
        try:
            v = w.evaluate("self.q4aprHeapBytes ? self.q4aprHeapBytes() : null")
        except Exception:
            continue
        if v:
            return int(v)
    return None


# Injected before the page's scripts (CDP, not subject to the page's CSP): notes when each
# boot stage of the page's list becomes active, i.e. when the worker reported it.
BOOT_MARKS = """
window.__q4marks = {};
new MutationObserver(() => {
  const li = document.querySelector("#boot-stages li.active");
  if (li && !(li.dataset.stage in window.__q4marks)) window.__q4marks[li.dataset.stage] = performance.now() / 1000;
  if (!window.__q4ready && document.body && document.body.dataset.boot === "ready") {
    window.__q4ready = performance.now() / 1000;
  }
}).observe(document, { subtree: true, attributes: true, attributeFilter: ["class", "data-boot"] });
"""


def boot_phases(page):
    """Seconds from navigation start to: worker created (runtime), runtime loaded (numpy),
    numpy imported (core); and ready."""
    m = page.evaluate("window.__q4marks || {}")
    return {"worker": m.get("runtime"), "pyodide": m.get("numpy"), "numpy": m.get("core")}


def cold_starts(browser, url, n):
    """([empty-cache seconds], [service-worker-cache seconds], phases), interleaved."""
    empty, cached, phases = [], [], {"empty": [], "cached": []}
    for _ in range(n):
        ctx = browser.new_context()
        ctx.add_init_script(BOOT_MARKS)
        try:
            page = ctx.new_page()
            page.goto(url)
            empty.append(wait_ready(page))
            phases["empty"].append({**boot_phases(page), "ready": empty[-1]})
            page.wait_for_selector('body[data-offline="ready"]', state="attached", timeout=120_000)
            page.close()
            page = ctx.new_page()
            page.goto(url)
            cached.append(wait_ready(page))
            phases["cached"].append({**boot_phases(page), "ready": cached[-1]})
            controlled = page.evaluate("!!navigator.serviceWorker.controller")
            if not controlled:
                print("  warning: the second page was not controlled by the service worker")
        finally:
            ctx.close()
    return empty, cached, phases


def run_e2e(browser, url, path, out_dir, fmt="apr", timeout_s=3600):
    ctx = browser.new_context(accept_downloads=True)
    try:
        page = ctx.new_page()
        page.set_default_timeout(timeout_s * 1000)
        page.goto(url)
        wait_ready(page)
        heap_boot = worker_heap(page)
        page.click(f'label[for="fmt-{fmt}"]')
        page.set_input_files("#file-input", str(path))
        page.wait_for_selector("#quantize-btn:not([disabled])", state="attached")
        t0 = time.perf_counter()
        page.click("#quantize-btn")
        page.wait_for_selector('body[data-state="done"], body[data-state="error"]', state="attached",
                               timeout=timeout_s * 1000)
        seconds = time.perf_counter() - t0
        if page.get_attribute("body", "data-state") != "done":
            raise RuntimeError("the run failed: " + (page.text_content("#error-panel") or ""))
        heap = worker_heap(page)
        with page.expect_download(timeout=timeout_s * 1000) as info:
            page.click("#download-link")
        dl = info.value
        out = Path(out_dir) / ("browser-" + dl.suggested_filename)
        t1 = time.perf_counter()
        dl.save_as(str(out))
        save_s = time.perf_counter() - t1
    finally:
        ctx.close()
    return {"seconds": seconds, "heap": heap, "heap_boot": heap_boot, "out": str(out),
            "out_bytes": out.stat().st_size, "save_seconds": save_s}


def native_output(path, key, out_dir, fmt):
    """The native CLI's output for the same input and options (made once, then reused)."""
    out = Path(out_dir) / f"native-{key}{'.apr' if fmt == 'apr' else '.Q4_0.gguf'}"
    if not out.exists() or out.stat().st_mtime < Path(path).stat().st_mtime:
        env = dict(os.environ, PYTHONPATH=str(REPO / "py"))
        subprocess.run([sys.executable, "-m", "q4apr", "quantize", str(path), "-o", str(out),
                        "--format", fmt, "--force", "-q"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
    return out


def same_bytes(a, b):
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 24), fb.read(1 << 24)
            if x != y:
                return False
            if not x:
                return True


def verify(path):
    env = dict(os.environ, PYTHONPATH=str(REPO / "py"))
    r = subprocess.run([sys.executable, "-m", "q4apr", "verify", str(path)], env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return r.returncode == 0, r.stdout.strip().splitlines()[-1:] or [""]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "q4bench"))
    ap.add_argument("--reps", type=int, default=1, help="end-to-end runs per file (median)")
    ap.add_argument("--cold", type=int, default=5, help="cold starts of each kind (median)")
    ap.add_argument("--only", choices=sorted(INPUTS), action="append", help="just these inputs")
    ap.add_argument("--format", choices=("apr", "gguf"), default="apr")
    ap.add_argument("--no-e2e", action="store_true")
    ap.add_argument("--no-cold", action="store_true")
    ap.add_argument("--no-verify", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the downloaded outputs")
    ap.add_argument("--compare", action="store_true",
                    help="also compare each download byte for byte with the native CLI's output")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    dist = wasm.ensure_dist()
    from playwright.sync_api import sync_playwright

    results = {"inputs": {}, "cold": {}}
    server, url = serve(dist)
    try:
        with sync_playwright() as pw:
            browser = launch(pw)
            try:
                if not args.no_cold:
                    print(f"cold start x{args.cold} ...", flush=True)
                    empty, cached, phases = cold_starts(browser, url, args.cold)
                    results["cold"] = {"empty": empty, "cached": cached, "phases": phases}
                    for kind, xs in (("empty cache", empty), ("sw cache", cached)):
                        ph = phases["empty" if kind == "empty cache" else "cached"]
                        med = {k: statistics.median(p[k] for p in ph if p[k] is not None) for k in ph[0]}
                        print(f"  {kind:<12} median {statistics.median(xs):.2f} s  {_fmt(xs)};  median phases:"
                              f" worker created {med['worker']:.2f}, runtime {med['pyodide']:.2f},"
                              f" numpy {med['numpy']:.2f}, ready {med['ready']:.2f} s", flush=True)
                if not args.no_e2e:
                    for key in args.only or list(INPUTS):
                        path = ensure_input(args.dir, key)
                        size = path.stat().st_size
                        print(f"{path.name} ({size / 1e9:.2f} GB) ...", flush=True)
                        rates = read_rates(browser, path)
                        print("  read ceiling: " + ", ".join(f"{k} {v:.0f} MB/s" for k, v in rates.items()))
                        runs = []
                        for _ in range(args.reps):
                            r = run_e2e(browser, url, path, args.dir, args.format)
                            runs.append(r)
                            ok, last = (True, ["not checked"]) if args.no_verify else verify(r["out"])
                            r["verify_ok"], r["verify"] = ok, last[0]
                            if args.compare:
                                ref = native_output(path, key, args.dir, args.format)
                                r["same_as_native"] = same_bytes(r["out"], ref)
                                last[0] += ", same bytes as the native CLI: " + ("yes" if r["same_as_native"] else "NO")
                            print(f"  drop -> download ready: {r['seconds']:.1f} s = {size / r['seconds'] / 1e6:.0f} MB/s,"
                                  f" wasm heap {r['heap'] / 2**20:.0f} MiB (after boot {r['heap_boot'] / 2**20:.0f} MiB),"
                                  f" output {r['out_bytes'] / 1e6:.0f} MB saved in {r['save_seconds']:.1f} s,"
                                  f" verify: {'ok' if ok else 'FAILED'} ({last[0]})", flush=True)
                            if not args.keep:
                                os.unlink(r["out"])
                        secs = statistics.median(r["seconds"] for r in runs)
                        mbps = size / secs / 1e6
                        results["inputs"][key] = {"file": path.name, "bytes": size, "read_mbps": rates,
                                                  "runs": runs, "mbps": mbps,
                                                  "heap_peak": max(r["heap"] for r in runs)}
                        print(f"  median {mbps:.0f} MB/s = {mbps / max(rates.values()):.2f} of the read ceiling")
            finally:
                browser.close()
    finally:
        server.shutdown()
        server.server_close()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


def _fmt(xs):
    return "[" + ", ".join(f"{x:.2f}" for x in xs) + "]"


if __name__ == "__main__":
    main()
