"""Run a bench script under Pyodide, the way the site's worker loads it.

    run_node(script, args, mounts=())     -> stdout          Node.js, tests/node/run_core.mjs
    run_chromium(script, args, files={})  -> (stdout, info)  Chromium (Playwright), in a module
                                                             worker served beside dist/static/;
                                                             info: wasm heap bytes, user agent

Both use the built dist/ (./build.sh build): Pyodide 0.27.7, its numpy 2.0.2 wheel and
static/q4apr.zip.  In Chromium the script and `files` ({name: host path}) are served
beside dist/static/ and written to /bench/ in Pyodide's file system; the script runs with
sys.argv = ["/bench/<script name>", *args] and /bench on sys.path.  Chromium is Debian's
/usr/bin/chromium with the launch arguments of tests/conftest.py.
"""

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DIST = REPO / "dist"
RUN_CORE = REPO / "tests" / "node" / "run_core.mjs"


def chromium_launch_args():
    """(executable, args) exactly as the tests launch Chromium."""
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import CHROMIUM, CHROMIUM_ARGS   # noqa: E402
    return CHROMIUM, list(CHROMIUM_ARGS)


def ensure_dist():
    if not (DIST / "static" / "q4apr.zip").exists():
        raise SystemExit("dist/ is not built: run ./build.sh build first")
    return DIST


def run_node(script, args=(), mounts=(), timeout=3600):
    ensure_dist()
    node = shutil.which("node")
    if node is None:
        raise SystemExit("node is not installed")
    cmd = [node, str(RUN_CORE), "--dist", str(DIST), "--kernels", "wasm"]
    for m in mounts:
        cmd += ["--mount", str(Path(m).resolve())]
    cmd += [str(Path(script).resolve()), *map(str, args)]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"Pyodide in Node exited {r.returncode}:\n{r.stderr.decode(errors='replace')[-4000:]}")
    return r.stdout.decode()


BENCH_PAGE = """<!doctype html><meta charset="utf-8"><title>q4apr bench</title>
<script type="module">
const w = new Worker("./bench-worker.mjs", { type: "module" });
window.benchResult = new Promise((resolve) => {
  w.onmessage = (e) => resolve(e.data);
  w.onerror = (e) => resolve({ ok: false, error: "worker error: " + e.message });
});
</script>"""

# The worker loads Pyodide exactly as static/worker.js does (same files, same calls).
BENCH_WORKER = """
import { loadPyodide } from "./static/pyodide/pyodide.mjs";
const cfg = await (await fetch("./bench-config.json")).json();
let out = "";
try {
  const py = await loadPyodide({ indexURL: new URL("./static/pyodide/", import.meta.url).href,
                                  stdout: (s) => { out += s + "\\n"; }, stderr: (s) => console.warn(s) });
  await py.loadPackage("numpy", { messageCallback: () => {} });
  const zip = await (await fetch("./static/q4apr.zip")).arrayBuffer();
  py.unpackArchive(zip, "zip", { extractDir: "/lib/q4apr" });
  py.runPython("import sys; sys.path.insert(0, '/lib/q4apr')");
  const k = await import("./static/kernels.js");
  k.installKernels(py, await k.loadKernels());   // as the page does
  py.registerJsModule("q4apr_kernels_js", k.kernelModule(await k.jsKernels()));   // the fallback, to compare
  py.FS.mkdirTree("/bench");
  for (const name of cfg.files) {
    const data = new Uint8Array(await (await fetch("./files/" + name)).arrayBuffer());
    const path = "/bench/" + name;
    py.FS.mkdirTree(path.slice(0, path.lastIndexOf("/")));
    py.FS.writeFile(path, data);
  }
  py.globals.set("_argv", py.toPy(cfg.argv));
  py.runPython(`
import runpy, sys
sys.path[:0] = ["/lib/q4apr", "/bench"]
sys.argv = list(_argv)
runpy.run_path(sys.argv[0], run_name="__main__")
sys.stdout.flush()
`);
  postMessage({ ok: true, stdout: out, heap: py._module.HEAPU8.length, ua: navigator.userAgent });
} catch (e) {
  postMessage({ ok: false, error: String(e && e.stack || e), stdout: out });
}
"""


def _serve(root):
    sys.path.insert(0, str(REPO / "tests"))
    from serve import start_server   # noqa: E402
    return start_server(root)


def run_chromium(script, args=(), files=None, timeout_s=3600):
    """Run `script` under Pyodide in a module worker in headless Chromium; returns
    (stdout, info) where info has the wasm heap size after the run and the user agent."""
    from playwright.sync_api import sync_playwright
    dist = ensure_dist()
    files = dict(files or {})
    script = Path(script).resolve()
    files[script.name] = str(script)
    with tempfile.TemporaryDirectory(prefix="q4bench-site-") as tmp:
        root = Path(tmp)
        (root / "static").symlink_to(dist / "static", target_is_directory=True)
        (root / "bench.html").write_text(BENCH_PAGE)
        (root / "bench-worker.mjs").write_text(BENCH_WORKER)
        for name, path in files.items():
            dst = root / "files" / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dst)
        (root / "bench-config.json").write_text(json.dumps({
            "files": sorted(files), "argv": ["/bench/" + script.name, *map(str, args)]}))
        server, url = _serve(root)
        exe, launch_args = chromium_launch_args()
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=exe, args=launch_args, headless=True)
                try:
                    page = browser.new_page()
                    page.set_default_timeout(timeout_s * 1000)
                    page.goto(url + "bench.html")
                    res = page.evaluate("window.benchResult")
                finally:
                    browser.close()
        finally:
            server.shutdown()
            server.server_close()
    if not res.get("ok"):
        raise RuntimeError("Pyodide in Chromium failed:\n" + str(res.get("error"))[-4000:])
    return res["stdout"], {"heap": res.get("heap"), "ua": res.get("ua")}


def gguf_quants_files():
    """(files, folder): gguf-py's pure-numpy quantizers (constants, lazy, quants) as a
    minimal `gguf` package in a new temporary folder, and {relative name: host path} of
    its files, for running the peer under Pyodide (the full package imports PyYAML,
    which Pyodide's base does not ship).  ({}, None) without gguf-py."""
    try:
        import gguf
    except ImportError:
        return {}, None
    src = Path(gguf.__file__).resolve().parent
    tmp = Path(tempfile.mkdtemp(prefix="q4bench-gguf-"))
    pkg = tmp / "gguf"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .constants import *\nfrom .quants import *\n")
    for name in ("constants.py", "lazy.py", "quants.py"):
        shutil.copyfile(src / name, pkg / name)
    return {f"gguf/{p.name}": str(p) for p in sorted(pkg.iterdir())}, tmp
