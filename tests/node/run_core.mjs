// Run a Python file under Pyodide in Node, loaded the same way the browser worker does:
// the runtime and numpy's wheel from dist/static/pyodide/ (numpy unpacked by
// dist/static/wheel.js), the core from dist/static/q4apr.zip.
//
//   node tests/node/run_core.mjs [--dist DIR] [--mount HOSTDIR]... [--kernels wasm|js|numpy] SCRIPT.py [ARGS...]
//
// --kernels wasm | js: the page's K-quant kernels (dist/static/kernels.js: kquants.wasm,
// or the plain JavaScript ones) are installed in the core, as the workers do; the
// default (numpy) leaves numpy's.
// SCRIPT.py sees sys.argv = [SCRIPT.py, ARGS...]. The script's own folder and every
// --mount folder are mounted (NODEFS) at the same absolute path inside Pyodide, so host
// paths work unchanged there. Python's stdout/stderr go to ours byte for byte. Exit code:
// the script's (SystemExit), 1 with the traceback on stderr for an exception, 2 for a
// loading failure. DIST defaults to $Q4APR_DIST or <repo>/dist.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));

function usage(msg) {
  if (msg) process.stderr.write(`run_core.mjs: ${msg}\n`);
  process.stderr.write("usage: node run_core.mjs [--dist DIR] [--mount HOSTDIR]... [--kernels wasm|js|numpy] SCRIPT.py [ARGS...]\n");
  process.exit(2);
}

let dist = process.env.Q4APR_DIST || path.resolve(here, "..", "..", "dist");
const mounts = [];
let kernels = "numpy";
const argv = process.argv.slice(2);
while (argv.length && argv[0].startsWith("--")) {
  const opt = argv.shift();
  if (opt === "--") break;
  const val = argv.shift();
  if (val === undefined) usage(`${opt} needs a value`);
  if (opt === "--dist") dist = path.resolve(val);
  else if (opt === "--mount") mounts.push(path.resolve(val));
  else if (opt === "--kernels" && ["js", "wasm", "numpy"].includes(val)) kernels = val;
  else usage(`unknown option ${opt}`);
}
if (!argv.length) usage("no script given");
const script = path.resolve(argv[0]);
const scriptArgs = argv.slice(1);
mounts.unshift(path.dirname(script));

function fail(msg) {
  process.stderr.write(`run_core.mjs: ${msg}\n`);
  process.exit(2);
}

const indexDir = path.join(dist, "static", "pyodide") + path.sep;
const coreZip = path.join(dist, "static", "q4apr.zip");
for (const f of [path.join(indexDir, "pyodide.mjs"), coreZip, script]) {
  if (!fs.existsSync(f)) fail(`missing ${f} (run ./build.sh build first)`);
}

const { loadPyodide } = await import(pathToFileURL(path.join(indexDir, "pyodide.mjs")).href);
const write = (fd) => ({ write: (buf) => { fs.writeSync(fd, buf); return buf.length; } });
let pyodide;
try {
  pyodide = await loadPyodide({ indexURL: indexDir });
} catch (e) {
  fail(`loadPyodide failed: ${e && e.stack || e}`);
}
pyodide.setStdout(write(1));
pyodide.setStderr(write(2));

// numpy as the workers install it (static/wheel.js: its wheel unpacked into site-packages).
const numpyWheel = JSON.parse(fs.readFileSync(path.join(indexDir, "pyodide-lock.json"), "utf8")).packages.numpy.file_name;
const { installWheel } = await import(pathToFileURL(path.join(dist, "static", "wheel.js")).href);
try {
  installWheel(pyodide, new Uint8Array(fs.readFileSync(path.join(indexDir, numpyWheel))), numpyWheel);
  pyodide.runPython("import numpy");
} catch (e) {
  fail(`numpy did not load from ${path.join(indexDir, numpyWheel)}: ${e.message}`);
}

// The core, as the worker gets it: fetch the zip, unpack, put its folder on sys.path.
pyodide.unpackArchive(new Uint8Array(fs.readFileSync(coreZip)), "zip", { extractDir: "/lib/q4apr" });
if (kernels !== "numpy") {
  pyodide.runPython('import sys\nsys.path.insert(0, "/lib/q4apr")');
  const k = await import(pathToFileURL(path.join(dist, "static", "kernels.js")).href);
  const chosen = kernels === "js" ? await k.jsKernels()
    : await k.loadKernels(fs.readFileSync(path.join(dist, "static", "kquants.wasm")));
  if (chosen.name !== kernels) fail(`--kernels ${kernels}: got ${chosen.name} (see the warning above)`);
  k.installKernels(pyodide, chosen);
  pyodide.registerJsModule("q4apr_kernels_js", k.kernelModule(await k.jsKernels()));   // benches compare
}

// Mount host folders at the same path (outermost first; skip ones inside another mount).
const FS = pyodide.FS;
const done = [];
for (const m of [...new Set(mounts)].sort()) {
  if (done.some((d) => m === d || m.startsWith(d + path.sep))) continue;
  if (!fs.existsSync(m) || !fs.statSync(m).isDirectory()) fail(`--mount ${m}: not a folder`);
  FS.mkdirTree(m);
  FS.mount(FS.filesystems.NODEFS, { root: m }, m);
  done.push(m);
}

pyodide.globals.set("_q4_argv", pyodide.toPy([script, ...scriptArgs]));
const rc = pyodide.runPython(`
def _q4_run(argv):
    import runpy, sys, traceback
    sys.path.insert(0, "/lib/q4apr")
    sys.argv = list(argv)
    rc = 0
    try:
        runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as e:
        if e.code is None:
            rc = 0
        elif isinstance(e.code, int):
            rc = e.code
        else:
            print(e.code, file=sys.stderr)
            rc = 1
    except BaseException:
        traceback.print_exc()
        rc = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return rc
_q4_run(_q4_argv)
`);
process.exit(rc);
