// The core's K-quant kernels for Pyodide, handed to the Python core with
// codecs.set_kernel: numpy's exact transcription runs ~4 MB/s under Pyodide. First
// choice: kquants.wasm (WebAssembly SIMD, static/kquants.ts); where it cannot load (no
// SIMD, a build without it), kquants.js (plain JavaScript, several times slower). Both
// give ggml's bytes. The kernels read the numpy arrays' memory in the wasm heap and write
// the blocks in place.

import * as plainJs from "./kquants.js";
import { loadKquantsWasm } from "./kquants_wasm.js";

export const JS_KERNELS = { name: "js", quantizeQ4K: plainJs.quantizeQ4K, quantizeQ6K: plainJs.quantizeQ6K };

// Start fetching and compiling early (workers call this before booting Pyodide).
// source: kquants.wasm's URL or bytes. Resolves to {name: "wasm" | "js", quantizeQ4K,
// quantizeQ6K}; never rejects.
export function loadKernels(source = new URL("./kquants.wasm", import.meta.url)) {
  return loadKquantsWasm(source).then(
    (k) => ({ name: "wasm", quantizeQ4K: k.quantizeQ4K, quantizeQ6K: k.quantizeQ6K }),
    (err) => {
      console.warn(`kquants.wasm unavailable, K-quants run in JavaScript: ${err && err.message || err}`);
      return JS_KERNELS;
    });
}

function onHeap(fn) {
  return (flat, out2d) => {
    const src = flat.getBuffer("f32");
    const dst = out2d.getBuffer("u8");
    try {
      if (!src.c_contiguous || !dst.c_contiguous) throw new Error("kernel arrays must be contiguous");
      fn(src.data, dst.data, dst.shape[0]);
    } finally {
      src.release();
      dst.release();
    }
  };
}

// A module for Pyodide's registerJsModule: {name, Q4_K, Q6_K}, kernels on numpy arrays.
export function kernelModule(kernels) {
  return { name: kernels.name, Q4_K: onHeap(kernels.quantizeQ4K), Q6_K: onHeap(kernels.quantizeQ6K) };
}

// Register `kernels` (from loadKernels) in a Pyodide that has the q4apr core on sys.path.
export function installKernels(py, kernels) {
  py.registerJsModule("q4apr_kernels", kernelModule(kernels));
  py.runPython([
    "import q4apr_kernels",
    "from q4apr import codecs",
    "codecs.set_kernel('Q4_K', q4apr_kernels.Q4_K)",
    "codecs.set_kernel('Q6_K', q4apr_kernels.Q6_K)",
  ].join("\n"));
}
