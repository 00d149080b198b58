"""The web app end to end in headless Chromium: cold start, drop -> download, wasm heap.

    python bench/e2e_browser.py [--dir /tmp/q4bench] [--reps 1] [--cold 5] [--only f32|f16]
                                [--no-verify] [--no-e2e] [--no-cold] [--compare] [--json FILE]
    python bench/e2e_browser.py --folders [--folder-case smollm2|big-vocab] [--reps 2] [--compare]

Serves the built dist/ (./build.sh build) on 127.0.0.1 with tests/serve.py and drives it
with Playwright, Chromium as the tests launch it (tests/conftest.py).

* Inputs (generated with bench/make_model.py when missing, same bytes every time):
    f32: DIR/f32-1gib.safetensors  --gb 1.073741824 --dtype F32          (1 GiB)
    f16: DIR/f16-3gb.safetensors   --gb 3 --dtype F16 --big-tensor-gb 1  (3 GB, one 1 GB tensor)
* Read ceiling: the same file read in a module worker of a bare page (no Pyodide), in
  4 MiB slices, with FileReaderSync (what WORKERFS does) and with Blob.arrayBuffer();
  measured before each repetition's runs (the faster method), the ratios against the
  median of those.
* Drop -> download: a fresh page of the app; page.set_input_files (Playwright hands
  Chromium the path; nothing is copied); click Quantize; time until the Download button
  is ready (body[data-state=done]).  MB/s = input file bytes / that time.  Then the
  worker's wasm heap size (it never shrinks: final = peak), and the download is saved
  as a stream to DIR (download.save_as) and checked with `python -m q4apr verify`.
* Cold start: page load -> body[data-boot=ready] (the runtime, numpy and the core
  loaded), in a new browser context (empty HTTP cache, no service worker), then, once the
  service worker has precached the site, again in a new page of the same context (served
  from the service worker's cache).  performance.now() at ready, median of --cold runs.
  Beside it, the reference: a bare page whose module worker boots the same Pyodide and
  imports numpy (BARE_PAGE), empty cache then HTTP cache, and the ratio of the medians.
* --workers 1,2,4: each input run with Advanced › Workers set to each count (the
  conversion workers given time to boot first), interleaved; every Pyodide worker's heap;
  --type Q4_0,Q4_K_M runs both mixtures, interleaved, with the ratio of each to Q4_0.
* --folders (instead of the above): model folders.
    smollm2: tests/fixtures' SmolLM2-135M-Instruct folder (BF16, 269 MB of weights), hard-linked
      to DIR/folders/SmolLM2-135M-Instruct, chosen with the folder picker (#folder-input), vs
      its model.safetensors alone (#file-input); APR and GGUF, interleaved, a fresh page each.
      Per run: the describe step (folder chosen -> body[data-describe=ready]), quantize ->
      download ready, MB/s = model.safetensors bytes / that time, wasm heap after boot, after
      describe and after the run.
    big-vocab: a model folder with a 262,144-token vocabulary, made once under DIR/folders/
      (MAKE_BIG_VOCAB: a 1-layer llama, hidden 64, with tests/fixtures' gemma-4 tokenizer);
      one page: describe, then APR then GGUF (and a second page GGUF then APR), the heap after
      each step (it never shrinks, so the last figure is the page's peak).
This is a benchmark: it prints figures and ratios; nothing asserts a time.
"""

import argparse
import contextlib
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


def worker_heaps(page):
    """The wasm heap of every Pyodide worker of the page (the main one first)."""
    heaps = []   # (not the main worker, bytes)
    for w in page.workers:
        try:
            v = w.evaluate("self.q4aprHeapBytes ? [self.q4aprHeapBytes(), !!self.q4aprPoolReady] : null")
        except Exception:
            continue
        if v and v[0]:
            heaps.append((not v[1], int(v[0])))
    return [b for _, b in sorted(heaps, key=lambda h: h[0])]


def worker_heap(page):
    heaps = worker_heaps(page)
    return heaps[0] if heaps else None


def set_workers(page, n, timeout_s=120):
    """Advanced › Workers = n, then wait until the n - 1 conversion workers are ready."""
    if page.get_attribute("details.advanced", "open") is None:
        page.click("details.advanced summary")
    page.select_option("#opt-workers", str(n))
    t0 = time.perf_counter()
    main = main_worker(page)
    while time.perf_counter() - t0 < timeout_s:
        if main.evaluate("self.q4aprPoolReady()") >= n - 1:
            return time.perf_counter() - t0
        time.sleep(0.1)
    raise RuntimeError(f"{n - 1} conversion workers were not ready after {timeout_s} s")


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


# The reference for the cold start: a bare page whose module worker boots the same Pyodide
# (dist/static/pyodide) and imports numpy, nothing else; ready = the worker's message back.
BARE_PAGE = """<!doctype html><meta charset="utf-8"><title>bare</title>
<script type="module">
const w = new Worker("./bare-worker.mjs", { type: "module" });
w.onmessage = (e) => { window.__q4ready = performance.now() / 1000; document.body.dataset.boot = e.data; };
</script><body></body>"""
BARE_WORKER = """
import { loadPyodide } from "./pyodide/pyodide.mjs";
const py = await loadPyodide({ indexURL: new URL("./pyodide/", import.meta.url).href });
await py.loadPackage("numpy", { messageCallback: () => {} });
py.runPython("import numpy");
postMessage("ready");
"""


@contextlib.contextmanager
def bare_site(dist):
    """The bare page (BARE_PAGE) served on its own: yields its URL."""
    with tempfile.TemporaryDirectory(prefix="q4bench-bare-") as tmp:
        (Path(tmp) / "index.html").write_text(BARE_PAGE)
        (Path(tmp) / "bare-worker.mjs").write_text(BARE_WORKER)
        os.symlink(Path(dist) / "static" / "pyodide", Path(tmp) / "pyodide")
        server, url = serve(tmp)
        try:
            yield url
        finally:
            server.shutdown()
            server.server_close()


def bare_start(browser, url):
    """(empty-cache seconds, HTTP-cache seconds) of the bare page at url: one round."""
    ctx = browser.new_context()
    try:
        times = []
        for _ in range(2):
            page = ctx.new_page()
            page.goto(url)
            times.append(wait_ready(page))
            page.close()
        return tuple(times)
    finally:
        ctx.close()


def cold_start(browser, url):
    """One round of the app: (empty-cache seconds, service-worker-cache seconds,
    {"empty": phases, "cached": phases, "extra": an extra worker's boot steps})."""
    ctx = browser.new_context()
    ctx.add_init_script(BOOT_MARKS)
    try:
        page = ctx.new_page()
        page.goto(url)
        empty = wait_ready(page)
        phases = {"empty": {**boot_phases(page), "ready": empty}}
        page.wait_for_selector('body[data-offline="ready"]', state="attached", timeout=120_000)
        page.close()
        page = ctx.new_page()
        page.goto(url)
        cached = wait_ready(page)
        phases["cached"] = {**boot_phases(page), "ready": cached}
        if not page.evaluate("!!navigator.serviceWorker.controller"):
            print("  warning: the second page was not controlled by the service worker")
        phases["extra"] = extra_worker_start(page)
        return empty, cached, phases
    finally:
        ctx.close()


def extra_worker_start(page):
    """Advanced › Workers = 2 on a page that is ready (the first worker idle; on 2 cores
    "Auto" is 2 already, and the conversion worker was created as the page became ready):
    when the conversion worker, from its creation, began each boot step and was ready
    (seconds; converter.js's boot marks, on its own clock, which starts when the pool
    creates it)."""
    set_workers(page, 2)
    for w in page.workers:
        marks = w.evaluate("self.q4aprPoolReady ? null : self.q4aprBootMarks || null")
        if marks and "ready" in marks:
            return {k: v / 1000 for k, v in marks.items()}
    raise RuntimeError("no conversion worker's boot marks")


def browser_cpu_seconds():
    """User + system CPU seconds of every Chromium process so far (Linux /proc; None
    elsewhere): around a run, how many cores the browser kept busy."""
    try:
        tick = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/stat") as f:
                    st = f.read()
            except OSError:
                continue
            name = st[st.index("(") + 1: st.rindex(")")]
            if "chrom" in name.lower():
                fields = st[st.rindex(")") + 2:].split()
                total += int(fields[11]) + int(fields[12])   # utime, stime
        return total / tick
    except (OSError, ValueError, AttributeError):
        return None


def main_worker(page):
    for w in page.workers:
        try:
            if w.evaluate("!!self.q4aprPoolReady"):
                return w
        except Exception:
            continue
    return None


def run_e2e(browser, url, path, out_dir, fmt="apr", timeout_s=3600, selector="#file-input",
            formats=None, workers=None, qtype="Q4_0", profile=False, cores=None):
    """One fresh page: boot, choose `path` (a file, or a folder with selector="#folder-input"),
    wait for the folder's description (if any), then quantize to each of `formats` (default
    [fmt]) in turn, saving each download. Returns the first run's dict; with several
    formats, "runs" holds one dict per format (heap read after each)."""
    ctx = browser.new_context(accept_downloads=True)
    if cores:   # what the page is told of the machine (Auto workers, spare cores)
        ctx.add_init_script("Object.defineProperty(Navigator.prototype, 'hardwareConcurrency', "
                            f"{{get: () => {int(cores)}}});")
    runs = []
    try:
        page = ctx.new_page()
        page.set_default_timeout(timeout_s * 1000)
        page.goto(url)
        wait_ready(page)
        heap_boot = worker_heap(page)
        pool_boot = set_workers(page, workers) if workers else None
        page.click(f'label[for="type-{qtype.lower()}"]')
        if profile:
            main_worker(page).evaluate("self.q4aprProfile = true")
        t0 = time.perf_counter()
        cpu0 = browser_cpu_seconds()
        page.set_input_files(selector, str(path))
        page.wait_for_selector('body[data-describe="ready"], body[data-describe="failed"], '
                               'body[data-describe="none"]', state="attached",
                               timeout=timeout_s * 1000)
        described = page.get_attribute("body", "data-describe")
        if described == "failed":
            raise RuntimeError("the folder was refused: " + (page.text_content("#model-card") or ""))
        describe_s = time.perf_counter() - t0 if described == "ready" else None
        heap_described = worker_heap(page)
        for f in formats or [fmt]:
            page.click(f'label[for="fmt-{f}"]')
            page.wait_for_selector("#quantize-btn:not([disabled])", state="attached")
            t0 = time.perf_counter()
            page.click("#quantize-btn")
            page.wait_for_selector('body[data-state="done"], body[data-state="error"]', state="attached",
                                   timeout=timeout_s * 1000)
            seconds = time.perf_counter() - t0
            cpu1 = browser_cpu_seconds()
            cpu = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None
            cpu0 = cpu1
            if page.get_attribute("body", "data-state") != "done":
                raise RuntimeError("the run failed: " + (page.text_content("#error-panel") or ""))
            heaps = worker_heaps(page)
            heap = heaps[0] if heaps else None
            pooled = page.get_attribute("#result-panel", "data-pooled-chunks")
            prof = main_worker(page).evaluate("self.q4aprLastProfile || null") if profile else None
            with page.expect_download(timeout=timeout_s * 1000) as info:
                page.click("#download-link")
            dl = info.value
            out = Path(out_dir) / ("browser-" + dl.suggested_filename)
            t1 = time.perf_counter()
            dl.save_as(str(out))
            save_s = time.perf_counter() - t1
            runs.append({"format": f, "seconds": seconds, "heap": heap, "heap_boot": heap_boot,
                         "heap_described": heap_described, "describe_seconds": describe_s,
                         "out": str(out), "name": dl.suggested_filename,
                         "out_bytes": out.stat().st_size, "save_seconds": save_s,
                         "heaps": heaps, "pooled_chunks": int(pooled or 0),
                         "pool_boot_seconds": pool_boot, "profile": prof, "cpu_seconds": cpu})
    finally:
        ctx.close()
    return dict(runs[0], runs=runs) if formats else runs[0]


def native_output(path, key, out_dir, fmt, qtype="Q4_0"):
    """The native CLI's output for the same input (a file or a model folder) and options
    (made once, then reused)."""
    tag = "" if qtype == "Q4_0" else f"-{qtype}"
    out = Path(out_dir) / f"native-{key}{tag}{'.apr' if fmt == 'apr' else f'.{qtype}.gguf'}"
    p = Path(path)
    newest = max(f.stat().st_mtime for f in p.iterdir()) if p.is_dir() else p.stat().st_mtime
    if not out.exists() or out.stat().st_mtime < newest:
        env = dict(os.environ, PYTHONPATH=str(REPO / "py"))
        subprocess.run([sys.executable, "-m", "q4apr", "quantize", str(path), "-o", str(out),
                        "--format", fmt, "--type", qtype, "--force", "-q"], env=env, check=True,
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


# ---------------------------------------------------------------- --folders

SMOLLM2_NAME = "SmolLM2-135M-Instruct"
BIG_VOCAB_NAME = "Llama-Gemma4Vocab-262k"

# A tiny llama-family model (1 layer, hidden 64, seeded random BF16 weights, tied embedding)
# with a 262,144-token vocabulary: the gemma-4 tokenizer.json/tokenizer_config.json of
# tests/fixtures (transformers' tokenizer.json of llama.cpp's ggml-vocab-gemma-4.gguf:
# SentencePiece-style BPE with byte fallback, 262,144 tokens, 514,906 merges, 32 MB).
# llama's route reads it with the converter's _set_vocab_llama_hf (LlamaHfVocab); the
# converter itself accepts this folder too (same tokenizer.* and llama.* key/values).
MAKE_BIG_VOCAB = r"""
import shutil, sys
from pathlib import Path
import torch
from transformers import LlamaConfig, LlamaForCausalLM
out, tok = Path(sys.argv[1]), Path(sys.argv[2])
torch.manual_seed(0)
torch.set_num_threads(2)
cfg = LlamaConfig(vocab_size=262144, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  rms_norm_eps=1e-6, tie_word_embeddings=True,
                  rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                  bos_token_id=2, eos_token_id=1, pad_token_id=0)
LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(out)
for f in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copyfile(tok / f, out / f)
"""


def _fixtures():
    sys.path.insert(0, str(REPO / "tests"))
    from fixtures import hf   # noqa: E402
    return hf


def _link_folder(src, dst):
    """dst: the files of src, hard-linked where the file system allows, else copied
    (Playwright's directory upload skips symlinks)."""
    import shutil
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(Path(src).iterdir()):
        t = dst / f.name
        if f.is_file() and not (t.exists() and t.stat().st_size == f.stat().st_size):
            if t.exists():
                t.unlink()
            try:
                os.link(f.resolve(), t)
            except OSError:
                shutil.copyfile(f, t)
    return dst


def ensure_folders(d):
    """(SmolLM2 folder, big-vocabulary folder) under d/folders/, made when missing."""
    import hashlib
    import shutil
    hf = _fixtures()
    root = Path(d) / "folders"
    smol = _link_folder(hf.model_dir("smollm2-135m"), root / SMOLLM2_NAME)
    tok = hf.tokenizer_dir("gemma-4")
    key = hashlib.sha256(MAKE_BIG_VOCAB.encode() + str(tok).encode()).hexdigest()[:10]
    big = root / f"big-{key}" / BIG_VOCAB_NAME
    if not (big / "model.safetensors").exists():
        print(f"making {big} ...", flush=True)
        tmp = big.with_name(big.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run([hf._python(), "-c", MAKE_BIG_VOCAB, str(tmp), str(tok)], check=True,
                       stdout=subprocess.DEVNULL)
        os.replace(tmp, big)
    return smol, big


def _mib(b):
    return f"{b / 2**20:.0f} MiB" if b else "?"


def _check(r, path, key, out_dir, compare, verify_outputs):
    notes = []
    if verify_outputs:
        ok, last = verify(r["out"])
        r["verify_ok"] = ok
        notes.append(f"verify {'ok' if ok else 'FAILED: ' + last[0]}")
    if compare:
        ref = native_output(path, key, out_dir, r["format"])
        r["same_as_native"] = same_bytes(r["out"], ref)
        notes.append("same bytes as the native CLI: " + ("yes" if r["same_as_native"] else "NO"))
    return ", ".join(notes)


def run_folders(browser, url, args):
    """SmolLM2 as a folder vs its model.safetensors alone (APR and GGUF, interleaved, a
    fresh page each), then the 262k-vocabulary folder (describe, APR, GGUF in one page)."""
    smol, big = ensure_folders(args.dir)
    cases = args.folder_case or ["smollm2", "big-vocab"]
    out = {"smollm2": {}, "big_vocab": {}}
    if "smollm2" in cases:
        out["smollm2"] = _smollm2_runs(browser, url, args, smol)
    if "big-vocab" in cases:
        out["big_vocab"] = _big_vocab_runs(browser, url, args, big)
    return out


def _smollm2_runs(browser, url, args, smol):
    st = smol / "model.safetensors"
    wbytes = st.stat().st_size
    out = {"smollm2": {"weights_bytes": wbytes, "runs": []}}
    print(f"{SMOLLM2_NAME}: model.safetensors {wbytes / 1e6:.1f} MB (BF16)", flush=True)
    rates = read_rates(browser, st)
    out["smollm2"]["read_mbps"] = rates
    print("  read ceiling: " + ", ".join(f"{k} {v:.0f} MB/s" for k, v in rates.items()), flush=True)
    cases = (("file", st, "#file-input"), ("folder", smol, "#folder-input"))
    for rep in range(args.reps):
        for fmt in ("apr", "gguf"):
            for kind, path, sel in cases:
                r = run_e2e(browser, url, path, args.dir, fmt, selector=sel)
                r.update(kind=kind, rep=rep)
                note = _check(r, path, f"smollm2-{kind}", args.dir, args.compare, not args.no_verify)
                out["smollm2"]["runs"].append(r)
                desc = f"describe {r['describe_seconds']:.2f} s, " if r["describe_seconds"] else ""
                print(f"  [{rep}] {fmt:<4} {kind:<6} {desc}quantize {r['seconds']:.2f} s ="
                      f" {wbytes / r['seconds'] / 1e6:.0f} MB/s of weights; heap boot"
                      f" {_mib(r['heap_boot'])}, described {_mib(r['heap_described'])}, after"
                      f" {_mib(r['heap'])}; {r['name']} {r['out_bytes'] / 1e6:.1f} MB; {note}",
                      flush=True)
                if not args.keep:
                    os.unlink(r["out"])
    summary = {}
    for fmt in ("apr", "gguf"):
        for kind in ("file", "folder"):
            rs = [r for r in out["smollm2"]["runs"] if r["format"] == fmt and r["kind"] == kind]
            secs = statistics.median(r["seconds"] for r in rs)
            d = [r["describe_seconds"] for r in rs if r["describe_seconds"]]
            summary[f"{fmt}-{kind}"] = {
                "seconds": secs, "mbps": wbytes / secs / 1e6,
                "describe_seconds": statistics.median(d) if d else None,
                "heap_peak": max(r["heap"] for r in rs),
                "heap_described": max(r["heap_described"] for r in rs)}
        f_, d_ = summary[f"{fmt}-file"], summary[f"{fmt}-folder"]
        print(f"  {fmt}: median MB/s file {f_['mbps']:.0f}, folder {d_['mbps']:.0f}"
              f" (folder/file {d_['mbps'] / f_['mbps']:.2f}); describe {d_['describe_seconds']:.2f} s;"
              f" heap file {_mib(f_['heap_peak'])}, folder {_mib(d_['heap_peak'])}", flush=True)
    out["smollm2"]["summary"] = summary
    return out["smollm2"]


def _big_vocab_runs(browser, url, args, big):
    out = {}
    tj = big / "tokenizer.json"
    print(f"{BIG_VOCAB_NAME}: tokenizer.json {tj.stat().st_size / 1e6:.1f} MB (262,144 tokens),"
          f" model.safetensors {(big / 'model.safetensors').stat().st_size / 1e6:.1f} MB", flush=True)
    for order in (["apr", "gguf"], ["gguf", "apr"]):
        r = run_e2e(browser, url, big, args.dir, selector="#folder-input", formats=order)
        steps = [f"boot {_mib(r['heap_boot'])}", f"described {_mib(r['heap_described'])}"
                 f" ({r['describe_seconds']:.1f} s)"]
        for x in r["runs"]:
            note = _check(x, big, "big-vocab", args.dir, args.compare, not args.no_verify)
            steps.append(f"after {x['format']} {_mib(x['heap'])} ({x['seconds']:.1f} s; {note})")
            if not args.keep:
                os.unlink(x["out"])
        peak = max(x["heap"] for x in r["runs"])
        out["-".join(order)] = r
        print(f"  {' -> '.join(order)}: heap " + ", ".join(steps)
              + f"; peak {_mib(peak)}: {'under' if peak < 256 << 20 else 'NOT under'} 256 MiB",
              flush=True)
    return out


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
    ap.add_argument("--type", default="Q4_0", dest="qtype",
                    help="Q4_0, Q4_K_M, or both comma-separated (interleaved; ratios against Q4_0)")
    ap.add_argument("--profile", action="store_true",
                    help="split each run's time in the main worker (read, kernel, hand-off, waits)")
    ap.add_argument("--workers", default=None,
                    help="comma-separated worker counts to run each input with (Advanced › "
                         "Workers; e.g. 1,2,4), interleaved; default: the page's Auto")
    ap.add_argument("--cores", type=int, default=None,
                    help="the page is told navigator.hardwareConcurrency = N (with N >= 4 the "
                         "conversion workers take every chunk); on a machine with fewer cores "
                         "this shows the first worker's own share of the work (--profile), "
                         "not the speed N cores would give")
    ap.add_argument("--no-e2e", action="store_true")
    ap.add_argument("--no-cold", action="store_true")
    ap.add_argument("--no-verify", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the downloaded outputs")
    ap.add_argument("--compare", action="store_true",
                    help="also compare each download byte for byte with the native CLI's output")
    ap.add_argument("--folders", action="store_true",
                    help="model folders instead: SmolLM2 as a folder vs its safetensors alone, and a "
                         "262k-token vocabulary folder (wasm heap)")
    ap.add_argument("--folder-case", choices=("smollm2", "big-vocab"), action="append",
                    help="with --folders: just these cases")
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
                if args.folders:
                    results["folders"] = run_folders(browser, url, args)
                if not args.no_cold and not args.folders:
                    print(f"cold start x{args.cold} ...", flush=True)
                    with bare_site(dist) as bare_url:   # interleaved: the machine's speed drifts
                        rounds = [(cold_start(browser, url), bare_start(browser, bare_url))
                                  for _ in range(args.cold)]
                    empty, cached, app_phases = zip(*(app for app, _ in rounds))
                    bare_empty, bare_cached = zip(*(bare for _, bare in rounds))
                    phases = {k: [p[k] for p in app_phases] for k in ("empty", "cached", "extra")}
                    results["cold"] = {"empty": empty, "cached": cached, "phases": phases}
                    results["cold"]["bare"] = {"empty": bare_empty, "cached": bare_cached}
                    for kind, xs, bare in (("empty cache", empty, bare_empty), ("sw cache", cached, bare_cached)):
                        ph = phases["empty" if kind == "empty cache" else "cached"]
                        med = {k: statistics.median(p[k] for p in ph if p[k] is not None) for k in ph[0]}
                        print(f"  {kind:<12} median {statistics.median(xs):.2f} s  {_fmt(xs)};  median phases:"
                              f" worker created {med['worker']:.2f}, runtime {med['pyodide']:.2f},"
                              f" numpy {med['numpy']:.2f}, ready {med['ready']:.2f} s", flush=True)
                        print(f"  {'':<12} bare Pyodide + numpy page ({'HTTP cache' if bare is bare_cached else 'empty cache'}):"
                              f" median {statistics.median(bare):.2f} s {_fmt(bare)};"
                              f" ratio {statistics.median(xs) / statistics.median(bare):.2f}", flush=True)
                    extra = phases["extra"]
                    med = {k: statistics.median(p[k] for p in extra) for k in extra[0]}
                    ready = [p["ready"] for p in extra]
                    print(f"  extra worker (Workers = 2 once ready; runtime snapshot, HTTP/SW cache): created -> ready"
                          f" median {med['ready']:.2f} s {_fmt(ready)}; steps begin: runtime {med['runtime']:.2f},"
                          f" numpy {med['numpy']:.2f}, core {med['core']:.2f} s;"
                          f" vs the bare page with HTTP cache {statistics.median(bare_cached):.2f} s:"
                          f" ratio {med['ready'] / statistics.median(bare_cached):.2f}", flush=True)
                if not args.no_e2e and not args.folders:
                    for key in args.only or list(INPUTS):
                        path = ensure_input(args.dir, key)
                        size = path.stat().st_size
                        print(f"{path.name} ({size / 1e9:.2f} GB)"
                              + (f", the page told of {args.cores} cores" if args.cores else "")
                              + " ...", flush=True)
                        ceilings = []   # measured once per repetition, interleaved with the runs
                        counts = [int(w) for w in args.workers.split(",")] if args.workers else [None]
                        types = args.qtype.split(",")
                        configs = [(t, w) for t in types for w in counts]
                        runs = {c: [] for c in configs}

                        def label(c):
                            return f"{c[0]}, {'workers ' + str(c[1]) if c[1] else 'Auto workers'}"
                        for _ in range(args.reps):
                            rates = read_rates(browser, path)
                            ceilings.append(rates)
                            print("  read ceiling: " + ", ".join(f"{k} {v:.0f} MB/s" for k, v in rates.items()))
                            for c in configs:   # interleaved: the machine's speed drifts
                                qtype, w = c
                                r = run_e2e(browser, url, path, args.dir, args.format, workers=w,
                                            qtype=qtype, profile=args.profile, cores=args.cores)
                                runs[c].append(r)
                                ok, last = (True, ["not checked"]) if args.no_verify else verify(r["out"])
                                r["verify_ok"], r["verify"] = ok, last[0]
                                if args.compare:
                                    ref = native_output(path, key, args.dir, args.format, qtype)
                                    r["same_as_native"] = same_bytes(r["out"], ref)
                                    last[0] += ", same bytes as the native CLI: " + ("yes" if r["same_as_native"] else "NO")
                                heaps = ", ".join(f"{h / 2**20:.0f}" for h in r["heaps"])
                                print(f"  {label(c)}: drop -> download ready:"
                                      f" {r['seconds']:.1f} s = {size / r['seconds'] / 1e6:.0f} MB/s,"
                                      f" wasm heaps [{heaps}] MiB (main after boot {r['heap_boot'] / 2**20:.0f} MiB),"
                                      f" chunks to the pool {r['pooled_chunks']},"
                                      + (f" pool ready {r['pool_boot_seconds']:.2f} s after asking,"
                                         if r.get("pool_boot_seconds") else "")
                                      + (f" browser CPU {r['cpu_seconds']:.1f} s ({r['cpu_seconds'] / r['seconds']:.2f} cores),"
                                         if r.get("cpu_seconds") is not None else "") +
                                      f" output {r['out_bytes'] / 1e6:.0f} MB saved in {r['save_seconds']:.1f} s,"
                                      f" verify: {'ok' if ok else 'FAILED'} ({last[0]})", flush=True)
                                if not args.keep:
                                    os.unlink(r["out"])
                        if args.profile:
                            print_profiles({label(c): rs for c, rs in runs.items()})
                        # the faster method of each measurement, median over the repetitions
                        ceiling = statistics.median(max(r.values()) for r in ceilings)
                        entry = {"file": path.name, "bytes": size, "read_mbps": ceilings, "by_config": {}}
                        mb = {}
                        for c in configs:
                            secs = statistics.median(r["seconds"] for r in runs[c])
                            mb[c] = size / secs / 1e6
                            entry["by_config"][label(c)] = {
                                "runs": runs[c], "mbps": mb[c],
                                "heap_peak": max(max(r["heaps"] or [0]) for r in runs[c])}
                            first = mb[(c[0], counts[0])]
                            q40 = mb.get(("Q4_0", c[1]))
                            print(f"  {label(c)}: median {mb[c]:.0f} MB/s"
                                  f" = {mb[c] / ceiling:.2f} of the read ceiling ({ceiling:.0f} MB/s,"
                                  f" median of {len(ceilings)})"
                                  f", {mb[c]:.0f} / {first:.0f} = {mb[c] / first:.2f}x its first worker count"
                                  + (f", {mb[c]:.0f} / {q40:.0f} = {mb[c] / q40:.2f}x Q4_0 with as many workers"
                                     if q40 and c[0] != "Q4_0" else ""), flush=True)
                        results["inputs"][key] = entry
            finally:
                browser.close()
    finally:
        server.shutdown()
        server.server_close()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


PROFILE_PARTS = [
    ("read", "read (_read_chunk: WORKERFS + read-ahead copies)"),
    ("kernel", "kernel, round trip, statistics (codecs.quantize_measured, this worker)"),
    ("handoff", "output hand-off (CallbackSink.write: copy + postMessage)"),
    ("wait_read", "waiting for read-ahead"),
    ("wait_pool", "waiting for pool workers"),
    ("yield", "event-loop turns (asyncio.sleep(0))"),
    ("rest", "decode, checks, CRC, the rest"),
]


def print_profiles(runs):
    """The main worker's split of each worker count's median run (--profile)."""
    print("  | part | " + " | ".join(f"{name} s (share)" for name in runs) + " |")
    print("  |---|" + "---:|" * len(runs))
    meds = {}
    for w, rs in runs.items():
        profs = [r["profile"] for r in rs if r.get("profile")]
        if not profs:
            continue
        keys = {k for p in profs for k in p}
        med = {k: statistics.median(p.get(k, 0.0) for p in profs) for k in keys}
        med["rest"] = med["total"] - sum(v for k, v in med.items() if k != "total")
        meds[w] = med
    for m in meds.values():   # what bounds the run where the other workers have cores
        m["own"] = m["total"] - sum(m.get(k, 0.0) for k in ("wait_read", "wait_pool", "yield"))
    for key, label in PROFILE_PARTS + [("total", "total (in the worker)"),
                                       ("own", "its own work (total - waiting - turns)")]:
        cells = [f"{m.get(key, 0.0):.2f} ({m.get(key, 0.0) / m['total']:.0%})" for m in meds.values()]
        print(f"  | {label} | " + " | ".join(cells) + " |")


def _fmt(xs):
    return "[" + ", ".join(f"{x:.2f}" for x in xs) + "]"


if __name__ == "__main__":
    main()
