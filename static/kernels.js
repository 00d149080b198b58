// Block kernels for the core under Pyodide, handed to it with codecs.set_kernel (numpy's
// exact K-quant transcription runs ~4 MB/s under Pyodide, its Q4_0 ~450 MB/s). First
// choice: kquants.wasm (WebAssembly SIMD, static/kquants.ts): Q4_K, Q6_K, Q4_0, APR Q4.
// Where it cannot load (no SIMD, a build without it): kquants.js (plain JavaScript, the
// K-quants only, several times slower); numpy keeps the rest. All give numpy's bytes. The
// kernels read the numpy arrays' memory in the wasm heap and write the results in place.

import { loadKquantsWasm } from "./kquants_wasm.js";

// The plain JavaScript K-quants, imported only when asked for (the fallback).
export async function jsKernels() {
  const { quantizeQ4K, quantizeQ6K } = await import("./kquants.js");
  return { name: "js", quantizeQ4K, quantizeQ6K };
}

// Start fetching and compiling early (workers call this before booting Pyodide).
// source: kquants.wasm's URL or bytes. Resolves to {name: "wasm" | "js", quantizeQ4K,
// quantizeQ6K, and with wasm quantizeQ4_0, quantizeAprQ4}; rejects only if neither loads.
export function loadKernels(source = new URL("./kquants.wasm", import.meta.url)) {
  return loadKquantsWasm(source).then(
    (k) => ({ name: "wasm", ...k }),
    (err) => {
      console.warn(`kquants.wasm unavailable, K-quants run in JavaScript: ${err && err.message || err}`);
      return jsKernels();
    });
}

// Call body with the getBuffer views of numpy arrays ([array or None, type] pairs; null
// for None), checked contiguous, and release them after.
function withBuffers(specs, body) {
  const bufs = specs.map(([a, type]) => (a ? a.getBuffer(type) : null));
  try {
    if (!bufs.every((b) => !b || b.c_contiguous)) throw new Error("kernel arrays must be contiguous");
    return body(...bufs);
  } finally {
    for (const b of bufs) if (b) b.release();
  }
}

// The K-quant kernels on numpy arrays: flat f32, out2d (n, type_size) u8.
function onHeap(fn) {
  return (flat, out2d) => withBuffers([[flat, "f32"], [out2d, "u8"]],
    (src, dst) => fn(src.data, dst.data, dst.shape[0]));
}

// The 32-value formats', which also give the round trip (decoded values into y, statistics
// into stats: None or float32 arrays) and list the blocks they leave to numpy in bad
// (int32): their count is returned.
function onHeap32(fn) {
  return (flat, out2d, y, bad, stats) => withBuffers(
    [[flat, "f32"], [out2d, "u8"], [bad, "i32"], [y, "f32"], [stats, "f32"]],
    (src, dst, badb, yb, sb) => fn(src.data, dst.data, dst.shape[0], yb && yb.data, badb.data, sb && sb.data));
}

// A module for Pyodide's registerJsModule: {name, Q4_K, Q6_K[, Q4_0, APR_Q4]}, kernels on
// numpy arrays, named as the core's codecs.
export function kernelModule(kernels) {
  const m = { name: kernels.name, Q4_K: onHeap(kernels.quantizeQ4K), Q6_K: onHeap(kernels.quantizeQ6K) };
  if (kernels.quantizeQ4_0) m.Q4_0 = onHeap32(kernels.quantizeQ4_0);
  if (kernels.quantizeAprQ4) m.APR_Q4 = onHeap32(kernels.quantizeAprQ4);
  return m;
}

// Register `kernels` (from loadKernels) in a Pyodide that has the q4apr core on sys.path.
export function installKernels(py, kernels) {
  py.registerJsModule("q4apr_kernels", kernelModule(kernels));
  py.runPython([
    "import q4apr_kernels",
    "from q4apr import codecs",
    "for _name in ('Q4_K', 'Q6_K', 'Q4_0', 'APR_Q4'):",
    "    if hasattr(q4apr_kernels, _name):",
    "        codecs.set_kernel(_name, getattr(q4apr_kernels, _name))",
  ].join("\n"));
}
