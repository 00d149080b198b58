// static/kquants.wasm (static/kquants.ts, built by build.sh) for the page: the K-quants
// behind kquants.js's interface (quantizeQ4K(src, dst, nBlocks), quantizeQ6K; same bytes)
// and Q4_0 / APR Q4, each with its round trip's statistics on request (see slices), and
// F16 input's decoding (decodeF16).
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

  // A kernel over blocks of blockSize values (typeSize bytes each), in slices of the
  // module's capacity: (src, dst, nBlocks, y, bad, stats) -> the number of blocks left.
  // y (a Float32Array, or null; the 32-value formats only) gets the decoded values; stats
  // (a Float32Array of 2 * units + 1, or null; whole units of 256 values) the statistics of
  // codecs.quantize_measured: the units' sums of squares of x, of the error, then
  // max |error|. Blocks off the kernel's fast path (Q4_0, APR Q4) are left undone: their
  // indices go to bad (an Int32Array of nBlocks), their count is returned.
  const WANT_Y = 1, WANT_STATS = 2;   // kquants.ts's modes
  const yPtr = ex.yPtr(), badPtr = ex.badPtr(), statsPtr = ex.statsPtr();
  function slices(name, run, blockSize, typeSize) {
    const capBlocks = cap * 256 / blockSize, perUnit = 256 / blockSize;
    return (src, dst, nBlocks, y = null, bad = null, stats = null) => {
      const units = nBlocks / perUnit;
      if (src.length < nBlocks * blockSize || dst.length < nBlocks * typeSize
          || (y && (blockSize !== 32 || y.length < nBlocks * 32)) || (bad && bad.length < nBlocks)
          || (stats && (nBlocks % perUnit || stats.length < 2 * units + 1))) {
        throw new RangeError(`${name}: buffers too short`);
      }
      const mode = (y ? WANT_Y : 0) | (stats ? WANT_STATS : 0);
      let nBad = 0, maxErrBits = 0;   // max |error|'s f32 bits: they order like the values, NaN last
      for (let b = 0; b < nBlocks; b += capBlocks) {
        const k = Math.min(capBlocks, nBlocks - b);
        const mem = ex.memory.buffer;
        new Float32Array(mem, inPtr, k * blockSize).set(src.subarray(b * blockSize, (b + k) * blockSize));
        const kBad = run(k, mode);
        dst.set(new Uint8Array(mem, outPtr, k * typeSize), b * typeSize);
        if (y) y.set(new Float32Array(mem, yPtr, k * 32), b * 32);
        if (stats) {
          const ku = k / perUnit, s = new Float32Array(mem, statsPtr, 2 * ku);
          stats.set(s.subarray(0, ku), b / perUnit);
          stats.set(s.subarray(ku), units + b / perUnit);
          maxErrBits = Math.max(maxErrBits, ex.maxErr());
        }
        if (kBad && !bad) throw new Error(`${name}: ${kBad} blocks left and no list for them`);
        const idx = new Int32Array(mem, badPtr, kBad);
        for (let i = 0; i < kBad; ++i) bad[nBad++] = b + idx[i];
      }
      if (stats) new Int32Array(stats.buffer, stats.byteOffset + 8 * units, 1)[0] = maxErrBits;
      return nBad;
    };
  }
  // F16 input: n halves (a Uint16Array) as float32 into dst (a Float32Array).
  function decodeF16(src, dst, n) {
    if (src.length < n || dst.length < n) throw new RangeError("decodeF16: buffers too short");
    const step = cap * 256;
    for (let i = 0; i < n; i += step) {
      const k = Math.min(step, n - i);
      const mem = ex.memory.buffer;
      new Uint16Array(mem, inPtr, k).set(src.subarray(i, i + k));
      ex.decodeF16(k);
      dst.set(new Float32Array(mem, yPtr, k), i);
    }
  }
  return {
    quantizeQ4K: slices("quantizeQ4K", ex.quantizeQ4K, 256, 144),
    quantizeQ6K: slices("quantizeQ6K", ex.quantizeQ6K, 256, 210),
    quantizeQ4_0: slices("quantizeQ4_0", ex.quantizeQ4_0, 32, 18),
    quantizeAprQ4: slices("quantizeAprQ4", ex.quantizeAprQ4, 32, 18),
    decodeF16,
  };
}
