// Starting Pyodide + numpy + the q4apr core in a worker: shared by the main worker
// (worker.js) and the conversion workers of its pool (converter.js).

import { loadPyodide, version as pyodideVersion } from "./pyodide/pyodide.mjs";
import { installKernels, loadKernels } from "./kernels.js";
import { fetchWheel, installWheel, readFiles, writeFiles } from "./wheel.js";

// build.sh fills these in from dist's pyodide-lock.json (unbuilt: numpy by loadPackage).
const NUMPY_WHEEL = "__NUMPY_WHEEL__";
const NUMPY_INTEGRITY = "__NUMPY_INTEGRITY__";

export function describe(err) {
  if (!err) return "unknown error";
  if (typeof err === "string") return err;
  return err.message || String(err);
}

// Boot and run `driver` (Python source) in fresh globals.  stage(name, progress) reports
// the steps ("runtime", "numpy", "core").  makeSnapshot: whether this worker may take the
// runtime snapshot when it has none to start from (the main worker does).  kit: a promise
// of what the main worker hands its pool's workers, {snapshot, numpy} (the runtime
// snapshot to start from, or null: afresh; numpy's files as wheel.js's readFiles gives
// them, or null: fetch the wheel); by default the snapshot stored in IndexedDB and numpy's
// wheel fetched.
// Returns {py, ns, kit, taken}: the Pyodide instance, the driver's globals (a PyProxy of a
// dict), kit() -> the kit for the pool's workers (the snapshot this worker started from or
// took, numpy's files), and the snapshot it took now (or null): the caller stores it
// (storeSnapshot) once it is ready, as storing 21 MB in IndexedDB takes CPU a 2-core start
// needs for numpy.
export async function bootPython(driver, { stage = () => {}, makeSnapshot = true, kit = null } = {}) {
  stage("runtime", 0.02);
  // the core's zip comes while the runtime starts
  const core = fetch(new URL("./q4apr.zip", import.meta.url)).then((res) => {
    if (!res.ok) throw new Error(`the q4apr core could not be fetched (HTTP ${res.status})`);
    return res.arrayBuffer();
  });
  core.catch(() => {});   // reported where it is awaited
  const kernels = loadKernels();   // wasm, else JavaScript
  kernels.catch(() => {});   // reported where it is awaited
  const given = kit ? await kit : {};
  // numpy's wheel too (loadPackage would only ask for it once the runtime has started)
  const numpy = given.numpy ? Promise.resolve({ files: given.numpy })
    : !NUMPY_WHEEL.startsWith("__")
      ? fetchWheel(new URL(`./pyodide/${NUMPY_WHEEL}`, import.meta.url), NUMPY_INTEGRITY).then((wheel) => ({ wheel }))
      : null;
  numpy?.catch(() => {});   // reported where it is awaited
  const start = usable(kit ? given.snapshot : await snapshotGet());
  let booted = null;
  let from = null;    // the snapshot this worker started from or took
  let taken = null;   // ... if it took it now
  if (start) {
    let givenUp = false;   // an attempt that outlives its time says nothing more
    let timer;
    const late = new Promise((_, no) => {
      timer = setTimeout(() => no(new Error("it did not start in time")), SNAPSHOT_BOOT_MS);
    });
    try {
      booted = await Promise.race([
        bootRuntime(start, core, kernels, numpy, driver, (...a) => { if (!givenUp) stage(...a); }, false), late]);
      from = start;
      self.q4aprBootedFrom = "snapshot";   // tests
    } catch (err) {
      givenUp = true;
      console.warn(`starting from the runtime snapshot failed, starting afresh: ${describe(err)}`);
      if (makeSnapshot) await snapshotDrop();
    } finally {
      clearTimeout(timer);
    }
  }
  if (!booted) {
    booted = await bootRuntime(null, core, kernels, numpy, driver, stage, makeSnapshot);
    from = taken = booted.took;
    self.q4aprBootedFrom = "fresh";   // tests
  }
  const { py, ns, numpyFiles } = booted;
  let handed = null;
  const kitOf = () => (handed ??= { snapshot: from, numpy: numpyFiles && readFiles(py, numpyFiles) });
  return { py, ns, kit: kitOf, taken };
}

async function bootRuntime(snapshot, core, kernels, numpy, driver, stage, makeSnapshot) {
  const options = {
    indexURL: new URL("./pyodide/", import.meta.url).href,
    stdout: (s) => console.log("[py]", s),
    stderr: (s) => console.warn("[py]", s),
  };
  if (snapshot) options._loadSnapshot = snapshot;
  else if (makeSnapshot && typeof indexedDB !== "undefined") options._makeSnapshot = true;
  const py = await loadPyodide(options);
  let took = null;
  if (options._makeSnapshot) {
    try {
      took = py.makeMemorySnapshot();   // now, before any shared library is loaded
    } catch (err) {
      console.warn(`no runtime snapshot: ${describe(err)}`);
    }
  }

  stage("numpy", 0.6);
  const numpyFiles = await loadNumpy(py, numpy);

  stage("core", 0.85);
  py.unpackArchive(await core, "zip", { extractDir: "/lib/q4apr" });
  py.runPython('import sys\nif "/lib/q4apr" not in sys.path: sys.path.insert(0, "/lib/q4apr")');
  const chosen = await kernels;
  installKernels(py, chosen);   // the drivers below find the core on sys.path from here
  self.q4aprKernels = chosen.name;   // "wasm" or "js" (tests, benchmarks)

  const ns = py.toPy({});   // fresh globals
  try {
    py.runPython(driver, { globals: ns });
  } catch (e) {
    throw new Error(`the q4apr core could not be imported (${describe(e).split("\n").filter(Boolean).pop()})`);
  }
  return { py, ns, took, numpyFiles };
}

// numpy from its files (wheel.js: the main worker's, or its wheel fetched while the runtime
// started and unpacked here; only the shared libraries `import numpy` needs are loaded),
// else by loadPackage (unbuilt, or the wheel could not be had or unpacked: said in the
// console).  Returns the files' paths under site-packages (for readFiles), or null.
async function loadNumpy(py, source) {
  let paths = null;
  let how = "loadPackage";
  if (source) {
    try {
      const { files, wheel } = await source;
      if (files) {
        paths = writeFiles(py, files);
        how = "kit";
      } else {
        paths = installWheel(py, wheel, NUMPY_WHEEL);
        how = "wheel";
      }
    } catch (err) {
      console.warn(`numpy's wheel could not be unpacked here, loading it with loadPackage: ${describe(err)}`);
    }
  }
  const loadErrors = [];
  if (!paths) {
    await py.loadPackage("numpy", {
      messageCallback: () => {},
      errorCallback: (m) => loadErrors.push(String(m)),
    });
  }
  // loadPackage resolves even when it failed: check that numpy really imports.
  try {
    py.runPython("import numpy");
  } catch (e) {
    const why = loadErrors.length ? loadErrors.join("; ") : describe(e).split("\n").filter(Boolean).pop();
    throw new Error(`numpy could not be loaded (${why})`);
  }
  self.q4aprNumpyFrom = how;   // tests: "wheel", "kit" (the main worker's files) or "loadPackage"
  return paths;
}

// ---- start-up from a snapshot ----
// Most of a cold start is CPython and Pyodide booting inside wasm (about 2.5 s of 3.8 s,
// page load to ready, on a 2-core machine).  So the first boot also takes a snapshot of
// the runtime's memory right after loadPyodide (Pyodide's _makeSnapshot; before numpy,
// as a snapshot cannot hold loaded shared libraries) and keeps it in IndexedDB (21 MB);
// later boots restore it in about 0.5 s, then load numpy and the core as usual.  The
// snapshot API is experimental: Pyodide checks the snapshot's build id on restore, and
// any failure while starting from a snapshot deletes it and starts afresh here.
const SNAPSHOT_DB = "q4apr-runtime";
// Pyodide 0.27's heap starts at 20 MiB (320 pages): a shorter value cannot be a snapshot,
// and loadPyodide never settles on one (the wasm memory is too small to instantiate).
// Anything else wrong with a snapshot makes loadPyodide throw; should it hang instead,
// the start gives up on the snapshot after SNAPSHOT_BOOT_MS (it takes ~0.3 s).
const MIN_SNAPSHOT_BYTES = 320 * 65536;
const SNAPSHOT_BOOT_MS = 30000;
// build.sh fills in the hash of dist's python_stdlib.zip: the snapshot holds zipimport's
// table of that zip's members (offsets), so it is only good with the same zip.
const SNAPSHOT_KEY = `pyodide-${pyodideVersion}-stdlib-__STDLIB_ID__`;

function snapshotStore(mode, op) {
  return new Promise((resolve, reject) => {
    const open = indexedDB.open(SNAPSHOT_DB, 1);
    open.onupgradeneeded = () => open.result.createObjectStore("snapshots");
    open.onerror = () => reject(open.error);
    open.onsuccess = () => {
      const db = open.result;
      const tx = db.transaction("snapshots", mode);
      const req = op(tx.objectStore("snapshots"));
      tx.oncomplete = () => { db.close(); resolve(req.result); };
      tx.onerror = tx.onabort = () => { db.close(); reject(tx.error); };
    };
  });
}

async function snapshotGet() {
  if (typeof indexedDB === "undefined") return null;
  try {
    return await snapshotStore("readonly", (s) => s.get(SNAPSHOT_KEY));
  } catch (_) {
    return null;
  }
}

function usable(v) {
  return v instanceof Uint8Array && v.byteLength > MIN_SNAPSHOT_BYTES ? v : null;
}

// Store a snapshot bootPython took; settles (never rejects) once stored or given up.
export function storeSnapshot(bytes) {   // the only snapshot kept: older versions' go
  return snapshotStore("readwrite", (s) => { s.clear(); return s.put(bytes, SNAPSHOT_KEY); }).catch(() => {});
}

function snapshotDrop() {
  return snapshotStore("readwrite", (s) => s.delete(SNAPSHOT_KEY)).catch(() => {});
}
