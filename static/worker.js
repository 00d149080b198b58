// The worker: a thin adapter between the page's message protocol (protocol.js)
// and the q4apr Python core running in Pyodide.  Module worker.

import { MSG } from "./protocol.js";
import { bootPython, describe, storeSnapshot } from "./runtime.js";
import { Pool } from "./pool.js";
// runtime.js's own imports, named here too so that they are all requested at once: a
// module's imports are only asked for once it has arrived, and runtime.js -> kernels.js ->
// kquants_wasm.js were round trips in a row before Pyodide could start.
import "./pyodide/pyodide.mjs";
import "./kernels.js";
import "./kquants_wasm.js";
import "./wheel.js";

const MAX_WORKERS = 64;

// Python side: the core's page module (q4apr.web) drives the run; results go back
// through callbacks and a small JSON status string.
const DRIVER_PY = "from q4apr.web import run_quantize, run_inspect, run_describe, versions";

let py = null;          // the Pyodide instance
let ns = null;          // the driver's Python globals (a PyProxy of a dict)
let api = null;         // {quantize, inspect, describe}: PyProxies of the driver's functions
const cancelled = new Set();
let queue = Promise.resolve();

// Conversion workers (pool.js), started once this worker is ready: `workers` is the total
// the page asks for (this worker converts too), kept until it asks for another.
const pool = new Pool(new URL("./converter.js", import.meta.url));
let workersWanted = 1;

function sizePool(total, cores) {
  if (Number.isSafeInteger(total) && total >= 1 && total <= MAX_WORKERS) workersWanted = total;
  if (Number.isSafeInteger(cores) && cores >= 1) pool.cores = cores;
  pool.resize(workersWanted - 1);
}

function post(msg, transfer) {
  self.postMessage(msg, transfer || []);
}

async function boot() {
  const stage = (name, progress) => post({ type: MSG.BOOT, stage: name, progress });
  const booted = await bootPython(DRIVER_PY, { stage });
  py = booted.py;
  ns = booted.ns;
  api = { quantize: ns.get("run_quantize"), inspect: ns.get("run_inspect"), describe: ns.get("run_describe") };
  const vfn = ns.get("versions");
  const versions = JSON.parse(vfn());
  vfn.destroy();
  versions.pyodide = py.version;
  stage("core", 1);
  post({ type: MSG.READY, versions });
  // its workers start from this worker's snapshot and numpy's files (kept here: 21 + 13 MB)
  pool.kit = booted.kit;
  if (booted.taken) storeSnapshot(booted.taken);
}

// For the benchmarks (bench/e2e_browser.py, through Playwright): the size of the wasm
// heap in bytes.  It never shrinks, so after a run it is that run's peak.
self.q4aprHeapBytes = () => (py ? py._module.HEAPU8.length : 0);
// ... and how many conversion workers are ready (they boot after this one).
self.q4aprPoolReady = () => pool.readyCount;
self.q4aprPoolState = () => ({ members: pool.size, gaveUp: pool.spawnFailed });   // tests
// tests: a conversion worker reads the byte range [at, at + size) of `bytes` as a File
self.q4aprReadInPool = async (job, bytes) => {
  const file = new File([new Uint8Array(bytes)], "m.safetensors");
  pool.fileOf = () => file;
  try {
    const t = pool.submit(JSON.stringify(job), null);
    if (!t) return null;
    await pool.wait(t);
    const r = pool.take(t);
    return r.bad ? { bad: r.bad } : { out: Array.from(new Uint8Array(r.parts.out)) };
  } finally {
    pool.fileOf = null;
  }
};

const booted = boot().then(
  () => true,
  (err) => {
    console.error(err);
    post({ type: MSG.ERROR, id: null, message: `The Python runtime failed to start: ${describe(err)}` });
    return false;
  },
);

// ---- mounting the page's File objects (read lazily, never copied whole) ----

// WORKERFS answers each read with FileReaderSync, which stalls this thread while the
// browser reads the file, and copies Uint8 into the Int8 heap byte by byte.  The core
// reads each tensor in order, chunk by chunk, and yields between chunks: so after each
// read the bytes that follow in the same tensor (driver's hint) are requested from
// helper threads (reader.js: FileReaderSync there, the buffer transferred back), which
// read them while Python computes; the driver awaits them between chunks (readPending),
// and a read they cover is a memcpy.  Two of them take the 4 MiB windows in turn, so a
// read is in flight while the other's bytes arrive (1 GiB file: 268 -> 296-348 MB/s).
// A read nothing covers falls back to FileReaderSync here; headers (read before the
// hint) are read as before.  Read-ahead lives in JS memory, not the wasm heap: at most
// READ_AHEAD bytes per file.
const READ_WINDOW = 4 << 20;
const READ_AHEAD = 12 << 20;
let lastRead = null;    // {reader, pos}: the reader read last and where it stopped

const READERS = 2;
let helpers;            // the reading threads (reader.js); null: read on this thread
const helperReplies = new Map();
let helperSeq = 0;

function helperFailed() {
  for (const h of helpers || []) h.terminate();
  helpers = null;
  for (const reply of helperReplies.values()) reply({ error: "the reading thread failed" });
  helperReplies.clear();
}

function helperReplied(e) {
  const reply = helperReplies.get(e.data.id);
  helperReplies.delete(e.data.id);
  if (reply) reply(e.data);
}

// [start, end) of `file` as an ArrayBuffer, read off this thread when possible.
function readRange(file, start, end) {
  if (helpers === undefined) {
    helpers = [];
    try {
      for (let i = 0; i < READERS; ++i) {
        const h = new Worker(new URL("./reader.js", import.meta.url), { name: `q4apr-reader-${i}` });
        h.onmessage = helperReplied;
        h.onerror = (e) => { e.preventDefault?.(); helperFailed(); };
        helpers.push(h);
      }
    } catch (_) {
      helperFailed();
    }
  }
  if (!helpers) return file.slice(start, end).arrayBuffer();
  return new Promise((resolve, reject) => {
    const id = ++helperSeq;
    helperReplies.set(id, (d) => (d.buf ? resolve(d.buf) : reject(new Error(d.error))));
    helpers[id % helpers.length].postMessage({ id, file, start, end });
  });
}

class ReadAhead {
  constructor(file) {
    this.file = file;
    this.windows = [];  // {start, end, data: Uint8Array | null, promise}, by start
    this.ranges = [];   // [start, end) byte ranges the run reads in order, sorted
  }

  // How far to read ahead after a read of [pos, end): to the end of the hinted range
  // holding pos, at most READ_AHEAD past end; outside the hinted ranges, not at all.
  limit(pos, end) {
    const r = this.ranges;
    let lo = 0, hi = r.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (r[mid][1] <= pos) lo = mid + 1;
      else if (r[mid][0] > pos) hi = mid - 1;
      else return Math.min(r[mid][1], end + READ_AHEAD, this.file.size);
    }
    return end;
  }

  request(start, end) {
    const w = { start, end, data: null, promise: null };
    w.promise = readRange(this.file, start, end).then(
      (ab) => { w.data = new Uint8Array(ab); },
      () => { w.failed = true; });   // the synchronous read will report the error
    return w;
  }

  // Emscripten stream_ops.read: `length` bytes at `position` into heap[offset..].
  read(heap, offset, length, position) {
    const size = this.file.size;
    if (position >= size) return 0;
    const want = Math.min(length, size - position);
    const dst = new Uint8Array(heap.buffer, heap.byteOffset + offset, want);
    let done = 0;
    while (done < want) {
      const p = position + done;
      const w = this.windows.find((v) => v.data && v.start <= p && p < v.end);
      if (!w) break;
      const n = Math.min(want - done, w.end - p);
      dst.set(w.data.subarray(p - w.start, p - w.start + n), done);
      done += n;
    }
    if (done < want) {
      const part = this.file.slice(position + done, position + want);
      dst.set(new Uint8Array(new FileReaderSync().readAsArrayBuffer(part)), done);
    }
    const end = position + want;
    const limit = this.limit(position, end);
    this.windows = this.windows.filter((v) => v.end > end && v.start < limit);
    let from = end;
    for (const v of this.windows) if (v.start <= from && v.end > from) from = v.end;
    while (from < limit) {
      const to = Math.min(limit, from + READ_WINDOW);
      this.windows.push(this.request(from, to));
      from = to;
    }
    this.windows.sort((a, b) => a.start - b.start);
    lastRead = { reader: this, pos: end };
    return want;
  }

  // The promise of the window the next read (at pos) needs, if it has not arrived.
  pending(pos) {
    const w = this.windows.find((v) => v.start <= pos && pos < v.end);
    return w && !w.data && !w.failed ? w.promise : null;
  }
}

function safeId(id) {
  return String(id).replace(/[^A-Za-z0-9_-]/g, "_") || "job";
}

// A model folder's files go in a directory named after the folder, and the core gets
// that directory, as the CLI does: the folder's name is the model's and the output's.
function mount(id, files, folder) {
  const FS = py.FS;
  const root = `/in/${safeId(id)}`;
  const dir = folder ? `${root}/${folder}` : root;
  try { FS.mkdir("/in"); } catch (_) { /* exists */ }
  try { FS.mkdir(root); } catch (_) { /* exists */ }
  if (folder) {
    try { FS.mkdir(dir); } catch (_) { /* exists */ }
  }
  FS.mount(FS.filesystems.WORKERFS, { files }, dir);
  const readers = new Map();
  for (const f of files) {
    const node = FS.lookupPath(`${dir}/${f.name}`).node;
    const ra = new ReadAhead(f);
    node.stream_ops = { ...node.stream_ops, read: (stream, heap, off, len, pos) => ra.read(heap, off, len, pos) };
    readers.set(f.name, ra);
  }
  // Model files first (by name), the shard index last.
  const names = files.map((f) => f.name);
  names.sort((a, b) => {
    const ja = a.toLowerCase().endsWith(".json"), jb = b.toLowerCase().endsWith(".json");
    if (ja !== jb) return ja ? 1 : -1;
    return a < b ? -1 : a > b ? 1 : 0;
  });
  const paths = folder ? [dir] : names.map((n) => `${dir}/${n}`);
  return { root, dir, paths, readers };
}

function unmount(m) {
  const FS = py.FS;
  lastRead = null;
  try { FS.unmount(m.dir); } catch (_) { /* not mounted */ }
  try { FS.rmdir(m.dir); } catch (_) { /* gone */ }
  if (m.root !== m.dir) {
    try { FS.rmdir(m.root); } catch (_) { /* gone */ }
  }
}

// The selection described last stays mounted, and the core keeps the model it opened
// (q4apr.web), so that quantizing the same files reads the folder once: {key, m}.
let described = null;

// The same files, as the page sends them again: names, sizes, dates and the folder.
function selectionKey(files, folder) {
  return JSON.stringify([folder || null, ...files.map((f) => [f.name, f.size, f.lastModified])]);
}

function forgetDescribed() {
  if (described) unmount(described.m);
  described = null;
}

// Messages name files as the user knows them (folder/config.json), not by their mount point.
function unmountedText(text, m) {
  return String(text).split(`${m.root}/`).join("");
}

function checkFiles(files, folder) {
  if (!Array.isArray(files) || files.length === 0) return "no file was given";
  if (folder != null && (typeof folder !== "string" || folder === "" || folder === "." || folder === ".."
      || /[\/\0]/.test(folder))) return `the folder name ${JSON.stringify(folder)} cannot be used`;
  const seen = new Set();
  for (const f of files) {
    if (!(f instanceof Blob) || typeof f.name !== "string") return "the selection holds something that is not a file";
    if (seen.has(f.name)) return `two files are both named ${f.name}`;
    seen.add(f.name);
  }
  return null;
}

// Copy a Python bytes object (a PyProxy, or already a typed array) into a fresh,
// exactly sized ArrayBuffer that can be transferred.
function toArrayBuffer(b) {
  if (b instanceof ArrayBuffer) return b;
  if (ArrayBuffer.isView(b)) {
    const u8 = new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
    return u8.slice().buffer;
  }
  const pb = b.getBuffer("u8");
  try {
    return pb.data.slice().buffer;
  } finally {
    pb.release();
  }
}

// ---- jobs ----

async function runQuantize(msg) {
  const { id } = msg;
  const problem = checkFiles(msg.files, msg.folder);
  if (problem) return post({ type: MSG.ERROR, id, message: problem });
  const options = { ...(msg.options || {}) };
  if (options.chunk_bytes == null) delete options.chunk_bytes;

  const reuse = described !== null && described.key === selectionKey(msg.files, msg.folder);
  const m = reuse ? described.m : mount(id, msg.files, msg.folder);
  const { paths, readers } = m;
  if (reuse) {   // a fresh run over the described mount: no read-ahead left from before
    lastRead = null;
    for (const ra of readers.values()) { ra.ranges = []; ra.windows = []; }
  }
  let outcome = null;
  try {
    const onChunk = (b) => {
      const data = toArrayBuffer(b);
      post({ type: MSG.CHUNK, id, data }, [data]);
    };
    // the core rewinds a tensor it must write again at F32 (a Q4 scale overflowed f16)
    const onTruncate = (size) => post({ type: MSG.TRUNCATE, id, size: Number(size) });
    const onProgress = (done, total, tensor) => {
      post({ type: MSG.PROGRESS, id, done: Number(done), total: Number(total), tensor: String(tensor) });
    };
    let report = null, head = null;
    const onDone = (r, h) => {
      report = r;
      head = toArrayBuffer(h);
    };
    const isCancelled = () => cancelled.has(id);
    const readerOf = (path) => readers.get(String(path).split("/").pop());   // files lie flat
    const readHint = (json) => {
      for (const [path, start, n] of JSON.parse(json)) {
        const ra = readerOf(path);
        if (ra && n > 0) ra.ranges.push([start, start + n]);
      }
      for (const ra of readers.values()) ra.ranges.sort((a, b) => a[0] - b[0]);
    };
    const readPending = () => (lastRead ? lastRead.reader.pending(lastRead.pos) : null);
    sizePool(msg.workers, msg.cores);
    pool.sent = 0;
    pool.fileOf = (path) => readerOf(path)?.file;
    const coro = api.quantize(JSON.stringify(paths), JSON.stringify(options), onChunk, onTruncate, onProgress, onDone,
      isCancelled, readHint, readPending, pool.size ? pool : null, self.q4aprProfile === true);
    let status;
    try {
      status = JSON.parse(await coro);
    } finally {
      if (coro && typeof coro.destroy === "function") coro.destroy();
    }
    if (status.message) status.message = unmountedText(status.message, m);
    if (status.profile) self.q4aprLastProfile = status.profile;   // bench/e2e_browser.py --profile
    if (status.status === "done") {
      // workers: how many converted (this one included) and the chunks sent to the pool
      outcome = { type: MSG.DONE, id, report, head, workers: { total: pool.size + 1, pooled: pool.sent } };
    } else if (status.status === "cancelled") {
      outcome = { type: MSG.CANCELLED, id };
    } else {
      outcome = { type: MSG.ERROR, id, message: status.message || "unknown error" };
    }
  } catch (err) {
    outcome = { type: MSG.ERROR, id, message: `internal error: ${describe(err)}` };
  } finally {
    pool.fileOf = null;
    if (!reuse) unmount(m);
    cancelled.delete(id);
  }
  if (outcome.type === MSG.DONE) post(outcome, [outcome.head]);
  else post(outcome);
}

// inspect and describe: one synchronous call of the driver, one answer. keep: the
// selection stays mounted after a success (describe: see `described`).
function runOnce(msg, fn, answer, keep = false) {
  const { id } = msg;
  const problem = checkFiles(msg.files, msg.folder);
  if (problem) return post({ type: MSG.ERROR, id, message: problem });
  if (keep) forgetDescribed();
  const m = mount(id, msg.files, msg.folder);
  let kept = false;
  try {
    let result = null;
    const status = JSON.parse(fn(JSON.stringify(m.paths), (r) => { result = r; }));
    if (status.status === "error" || !status.status) {
      post({ type: MSG.ERROR, id, message: unmountedText(status.message || "unknown error", m) });
    } else {
      if (keep) {
        described = { key: selectionKey(msg.files, msg.folder), m };
        kept = true;
      }
      post(answer(id, result));
    }
  } catch (err) {
    post({ type: MSG.ERROR, id, message: `internal error: ${describe(err)}` });
  } finally {
    pool.fileOf = null;
    if (!kept) unmount(m);
    cancelled.delete(id);
  }
}

function runInspect(msg) {
  runOnce(msg, api.inspect, (id, info) => ({ type: MSG.INSPECTED, id, info }));
}

// What a model folder is, before quantizing it (summary null for a lone weights file).
function runDescribe(msg) {
  runOnce(msg, api.describe, (id, json) => ({ type: MSG.DESCRIBED, id, summary: JSON.parse(json) }), true);
}

self.onmessage = (ev) => {
  const msg = ev.data || {};
  if (msg.type === MSG.CANCEL) {
    cancelled.add(msg.id);
    return;
  }
  if (msg.type === MSG.CONFIGURE) {   // the pool boots after this worker (its snapshot first)
    booted.then((ok) => { if (ok) sizePool(msg.workers, msg.cores); });
    return;
  }
  if (msg.type === MSG.KILL_CONVERTER) {   // tests only: a conversion worker crashes
    pool.kill();
    return;
  }
  const run = { [MSG.QUANTIZE]: runQuantize, [MSG.INSPECT]: runInspect, [MSG.DESCRIBE]: runDescribe }[msg.type];
  if (!run) {
    post({ type: MSG.ERROR, id: msg.id ?? null, message: `unknown request ${JSON.stringify(msg.type)}` });
    return;
  }
  // One job at a time, in order of arrival.
  queue = queue.then(async () => {
    if (!(await booted)) {
      post({ type: MSG.ERROR, id: msg.id, message: "the Python runtime is not available" });
      return;
    }
    if (cancelled.has(msg.id)) {
      cancelled.delete(msg.id);
      post({ type: MSG.CANCELLED, id: msg.id });
      return;
    }
    await run(msg);
  }).catch((err) => {
    post({ type: MSG.ERROR, id: msg.id, message: `internal error: ${describe(err)}` });
  });
};
