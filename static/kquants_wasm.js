// static/kquants.wasm (static/kquants.ts, built by build.sh) for the page: the K-quants
// behind kquants.js's interface (quantizeQ4K(src, dst, nBlocks), quantizeQ6K; same bytes),
// and Q4_0 / APR Q4 with their round trip (quantizeQ4_0, quantizeAprQ4: see slices32).
// WebAssembly has f32 arithmetic (JavaScript only Math.fround) and SIMD: several times
// faster than kquants.js. The blocks go through the module's own memory in slices of
// capacity() blocks of 256 values (1 MiB of f32), so its memory never grows.
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
  // Q4_0 and APR Q4, 32-value blocks with their round trip: y (a Float32Array, or null)
  // gets the decoded values; stats (a Float32Array of 2 * units + 1, or null; nBlocks a
  // multiple of 8) the statistics of codecs.quantize_measured: the units' sums of squares
  // of x, of the error, then max |error|. Blocks off the kernel's fast path are left
  // undone: their indices go to bad (an Int32Array of nBlocks), their count is returned.
  const WANT_Y = 1, WANT_STATS = 2;   // kquants.ts's modes
  function slices32(name, run) {
    const cap32 = cap * 8, yPtr = ex.yPtr(), badPtr = ex.badPtr(), statsPtr = ex.statsPtr();
    return (src, dst, nBlocks, y, bad, stats = null) => {
      const units = nBlocks / 8;
      if (src.length < nBlocks * 32 || dst.length < nBlocks * 18 || (y && y.length < nBlocks * 32)
          || bad.length < nBlocks || (stats && (nBlocks % 8 || stats.length < 2 * units + 1))) {
        throw new RangeError(`${name}: buffers too short`);
      }
      const mode = (y ? WANT_Y : 0) | (stats ? WANT_STATS : 0);
      let nBad = 0, maxErr = 0;
      for (let b = 0; b < nBlocks; b += cap32) {
        const k = Math.min(cap32, nBlocks - b);
        const mem = ex.memory.buffer;
        new Float32Array(mem, inPtr, k * 32).set(src.subarray(b * 32, (b + k) * 32));
        const kBad = run(k, mode);
        dst.set(new Uint8Array(mem, outPtr, k * 18), b * 18);
        if (y) y.set(new Float32Array(mem, yPtr, k * 32), b * 32);
        if (stats) {
          const ku = k / 8, s = new Float32Array(mem, statsPtr, 2 * ku);
          stats.set(s.subarray(0, ku), b / 8);
          stats.set(s.subarray(ku), units + b / 8);
          maxErr = Math.max(maxErr, ex.maxErr());
        }
        const idx = new Int32Array(mem, badPtr, kBad);
        for (let i = 0; i < kBad; ++i) bad[nBad++] = b + idx[i];
      }
      if (stats) stats[2 * units] = maxErr;
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
