// Compile Python to .pyc at build time with the Python that will run it: Pyodide's own
// CPython 3.12, loaded in Node from the runtime files build.sh unpacked.
//
//   node static/build/pyc_compile.mjs INDEX_DIR JOB...
//     JOB = numpy:IN.whl:OUT.whl | core:IN.zip:OUT.zip | stdlib:IN.zip:OUT.zip
//           (see static/build/pyc_compile.py)
//
// Host paths are mounted (NODEFS) at the same absolute path inside Pyodide.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const [indexDir, ...jobs] = process.argv.slice(2);
if (!indexDir || !jobs.length) {
  process.stderr.write("usage: node pyc_compile.mjs INDEX_DIR numpy|core|stdlib:IN:OUT...\n");
  process.exit(2);
}
const { loadPyodide } = await import(pathToFileURL(path.join(path.resolve(indexDir), "pyodide.mjs")).href);
const py = await loadPyodide({ indexURL: path.resolve(indexDir) + path.sep });
const write = (fd) => ({ write: (buf) => { fs.writeSync(fd, buf); return buf.length; } });
py.setStdout(write(1));
py.setStderr(write(2));
const dirs = new Set([here]);
for (const job of jobs) for (const p of job.split(":").slice(1)) dirs.add(path.dirname(path.resolve(p)));
const mounted = [];
for (const d of [...dirs].sort()) {
  if (mounted.some((m) => d === m || d.startsWith(m + path.sep))) continue;
  py.FS.mkdirTree(d);
  py.FS.mount(py.FS.filesystems.NODEFS, { root: d }, d);
  mounted.push(d);
}
py.globals.set("_argv", py.toPy([path.join(here, "pyc_compile.py"),
  ...jobs.map((j) => { const [k, ...ps] = j.split(":"); return [k, ...ps.map((p) => path.resolve(p))].join(":"); })]));
const rc = py.runPython(`
import runpy, sys, traceback
sys.argv = list(_argv)
rc = 0
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as e:
    rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
except BaseException:
    traceback.print_exc()
    rc = 1
sys.stdout.flush(); sys.stderr.flush()
rc
`);
process.exit(rc);
