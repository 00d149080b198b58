// static/kquants.wasm (static/kquants.ts, built by build.sh) behind the same interface as
// kquants.js: quantizeQ4K(src, dst, nBlocks), quantizeQ6K(src, dst, nBlocks), same bytes.
// WebAssembly has f32 arithmetic (JavaScript only Math.fround) and SIMD: four sub-blocks
// are quantized at once, several times faster than kquants.js. The blocks go through the module's own memory in
// slices of capacity() blocks (1 MiB of f32), so its memory never grows.
//
//   const k = await loadKquantsWasm(urlOrBytes);   // URL (fetched) or the module's bytes

export async function loadKquantsWasm(source) {
  let bytes = source;
  if (typeof source === "string" || source instanceof URL) {
    const res = await fetch(source);
    if (!res.ok) throw new Error(`kquants.wasm: HTTP ${res.status} for ${source}`);
    bytes = await res.arrayBuffer();
  }
  const { instance } = await WebAssembly.instantiate(bytes, {});
  const ex = instance.exports;
  const cap = ex.capacity();
  const inPtr = ex.inPtr(), outPtr = ex.outPtr();

  function slices(name, run, typeSize) {
    return (src, dst, nBlocks) => {
      if (src.length < nBlocks * 256 || dst.length < nBlocks * typeSize) {
        throw new RangeError(`${name}: buffers too short`);
      }
      for (let b = 0; b < nBlocks; b += cap) {
        const k = Math.min(cap, nBlocks - b);
        const mem = ex.memory.buffer;
        new Float32Array(mem, inPtr, k * 256).set(src.subarray(b * 256, (b + k) * 256));
        run(k);
        dst.set(new Uint8Array(mem, outPtr, k * typeSize), b * typeSize);
      }
    };
  }
  // Q4_0 and APR Q4, 32-value blocks with their round trip y (a Float32Array, or null).
  // Blocks off the kernel's fast path are left undone: their indices go to bad (an
  // Int32Array of nBlocks) and their count is returned.
  function slices32(name, run) {
    const cap32 = cap * 8, yPtr = ex.yPtr(), badPtr = ex.badPtr();
    return (src, dst, nBlocks, y, bad) => {
      if (src.length < nBlocks * 32 || dst.length < nBlocks * 18 || (y && y.length < nBlocks * 32)
          || bad.length < nBlocks) {
        throw new RangeError(`${name}: buffers too short`);
      }
      let nBad = 0;
      for (let b = 0; b < nBlocks; b += cap32) {
        const k = Math.min(cap32, nBlocks - b);
        const mem = ex.memory.buffer;
        new Float32Array(mem, inPtr, k * 32).set(src.subarray(b * 32, (b + k) * 32));
        const kBad = run(k, y ? 1 : 0);
        dst.set(new Uint8Array(mem, outPtr, k * 18), b * 18);
        if (y) y.set(new Float32Array(mem, yPtr, k * 32), b * 32);
        const idx = new Int32Array(mem, badPtr, kBad);
        for (let i = 0; i < kBad; ++i) bad[nBad++] = b + idx[i];
      }
      return nBad;
    };
  }
  return {
    quantizeQ4K: slices("quantizeQ4K", ex.quantizeQ4K, 144),
    quantizeQ6K: slices("quantizeQ6K", ex.quantizeQ6K, 210),
    quantizeQ4_0: slices32("quantizeQ4_0", ex.quantizeQ4_0),
    quantizeAprQ4: slices32("quantizeAprQ4", ex.quantizeAprQ4),
  };
}
