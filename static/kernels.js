// The core's K-quant kernels in JavaScript (kquants.js: ggml's quantize_row_q4_K_ref and
// quantize_row_q6_K_ref, byte for byte), handed to the Python core with codecs.set_kernel:
// numpy's exact transcription runs ~4 MB/s under Pyodide, these many times faster.  The
// kernels read the numpy arrays' memory in the wasm heap and write the blocks in place.

import { quantizeQ4K, quantizeQ6K } from "./kquants.js";

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

// Register the kernels in a Pyodide that has the q4apr core on sys.path.
export function installKernels(py) {
  py.registerJsModule("q4apr_kernels", { Q4_K: onHeap(quantizeQ4K), Q6_K: onHeap(quantizeQ6K) });
  py.runPython([
    "import q4apr_kernels",
    "from q4apr import codecs",
    "codecs.set_kernel('Q4_K', q4apr_kernels.Q4_K)",
    "codecs.set_kernel('Q6_K', q4apr_kernels.Q6_K)",
  ].join("\n"));
}
