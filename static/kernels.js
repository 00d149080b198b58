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

// The plain JavaScript K-quant kernels on numpy arrays: flat f32, out2d (n, type_size) u8;
// no round trip (the core measures it with numpy), no block left.
function onHeap(fn) {
  return (flat, out2d) => withBuffers([[flat, "f32"], [out2d, "u8"]],
    (src, dst) => { fn(src.data, dst.data, dst.shape[0]); return 0; });
}

// The wasm kernels, which also give the round trip (decoded values into y, statistics into
// stats: None or float32 arrays) and list the blocks they leave to numpy in bad (None or
// int32): their count is returned.
function onHeapMeasured(fn) {
  return (flat, out2d, y = null, bad = null, stats = null) => withBuffers(
    [[flat, "f32"], [out2d, "u8"], [y, "f32"], [bad, "i32"], [stats, "f32"]],
    (src, dst, yb, badb, sb) => fn(src.data, dst.data, dst.shape[0], yb && yb.data, badb && badb.data,
                                   sb && sb.data));
}

// A module for Pyodide's registerJsModule: {name, measures, Q4_K, Q6_K[, Q4_0, APR_Q4,
// F16]}, kernels on numpy arrays named as the core's codecs (F16: the input decoder);
// measures: whether they give the round trip's statistics too (the wasm ones all do).
export function kernelModule(kernels) {
  if (kernels.name !== "wasm") {
    return { name: kernels.name, measures: false, Q4_K: onHeap(kernels.quantizeQ4K), Q6_K: onHeap(kernels.quantizeQ6K) };
  }
  return {
    name: kernels.name,
    measures: true,
    Q4_K: onHeapMeasured(kernels.quantizeQ4K),
    Q6_K: onHeapMeasured(kernels.quantizeQ6K),
    Q4_0: onHeapMeasured(kernels.quantizeQ4_0),
    APR_Q4: onHeapMeasured(kernels.quantizeAprQ4),
    F16: (h, out) => withBuffers([[h, "u16"], [out, "f32"]],
      (src, dst) => kernels.decodeF16(src.data, dst.data, src.data.length)),
  };
}

// Register `kernels` (from loadKernels) in a Pyodide that has the q4apr core on sys.path.
export function installKernels(py, kernels) {
  py.registerJsModule("q4apr_kernels", kernelModule(kernels));
  py.runPython("import q4apr_kernels; from q4apr.web import install_kernels; install_kernels(q4apr_kernels)");
}
