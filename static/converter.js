// A conversion worker of the main worker's pool (worker.js): converts the chunks it is
// sent with the core's ChunkConverter (the same _convert as the main worker and the CLI)
// and sends back the parts.  Module worker, started by worker.js.
//
// main -> here   {kit: {snapshot, numpy}}   (first: runtime.js's bootPython starts from it)
//                {id, job: JSON string, raw: ArrayBuffer (transferred)}
//                {id, job, file: File, start, end}   (read here: the bytes [start, end))
// here -> main   {ready: true} once booted, or {failed: message}
//                {id, parts: {out, dtype, signal, noise, maxerr, low_scales, overflow,
//                             non_finite}}  (byte fields: ArrayBuffers, transferred)
//                {id, bad: [problem, file, tensor]}   (the core refused the chunk: BadInput)
//                {id, fail: message}                   (anything else)

import { bootPython, describe } from "./runtime.js";
// runtime.js's own imports, named here too so that they are all requested at once: a
// module's imports are only asked for once it has arrived, and runtime.js -> kernels.js ->
// kquants_wasm.js were round trips in a row before Pyodide could start.
import "./pyodide/pyodide.mjs";
import "./kernels.js";
import "./kquants_wasm.js";
import "./wheel.js";

const DRIVER_PY = "from q4apr.web import convert";   // the core converts (ChunkConverter)

let convert = null;
let heap = null;
// For the benchmarks, as worker.js's: this worker's wasm heap in bytes (its peak).
self.q4aprHeapBytes = () => (heap ? heap.HEAPU8.length : 0);
// ... and when each boot step began and when it was ready (ms since this worker started).
self.q4aprBootMarks = {};
const mark = (name) => { self.q4aprBootMarks[name] = performance.now(); };
let gotKit;
const kit = new Promise((resolve) => { gotKit = resolve; });
const booted = bootPython(DRIVER_PY, { makeSnapshot: false, stage: mark, kit }).then(
  ({ py, ns }) => {
    heap = py._module;
    convert = ns.get("convert");
    mark("ready");
    self.postMessage({ ready: true });
  },
  (err) => self.postMessage({ failed: describe(err) }),
);

// [start, end) of file, or the reply that says why it cannot be read (as the core's
// pipeline._read_chunk words it, naming the file and the tensor).
function readRange(job, file, start, end) {
  const { path, name } = JSON.parse(job);
  let buf;
  try {
    buf = new FileReaderSync().readAsArrayBuffer(file.slice(start, end));
  } catch (err) {
    return { bad: [`cannot read (${(err && err.message) || err})`, path, name] };
  }
  if (buf.byteLength < end - start) {
    return { bad: ["the file ends inside this tensor's data (it changed or is truncated)", path, name] };
  }
  return { buf };
}

self.onmessage = async (ev) => {
  if (ev.data && ev.data.kit) return gotKit(ev.data.kit);
  const { id, job, file, start, end } = ev.data || {};
  let { raw } = ev.data || {};
  await booted;
  if (!convert) return self.postMessage({ id, fail: "the conversion worker did not start" });
  if (file) {
    const r = readRange(job, file, start, end);
    if (r.bad) return self.postMessage({ id, bad: r.bad });
    raw = r.buf;
  }
  let reply;
  try {
    reply = convert(job, new Uint8Array(raw));
  } catch (err) {
    return self.postMessage({ id, fail: describe(err).split("\n").filter(Boolean).pop() });
  }
  const transfer = [];
  if (reply.parts) {
    for (const k of ["out", "signal", "noise"]) {
      const v = reply.parts[k];
      if (!v) continue;
      const buf = v.byteLength === v.buffer.byteLength ? v.buffer : v.slice().buffer;
      reply.parts[k] = buf;
      transfer.push(buf);
    }
  }
  self.postMessage({ id, ...reply }, transfer);
};
