// The page's K-quant kernels from the command line, for tests/test_kquants_js.py and timing:
// static/kquants.js (plain JavaScript) or kquants.wasm (static/kquants.ts, WebAssembly SIMD)
// through static/kquants_wasm.js.
//
//   node tests/node/kquants_cli.mjs q4k|q6k N [stats]  < N little-endian f32  > the blocks
//                                               (with "stats", wasm only: then the
//                                               statistics, N/128 + 1 f32)
//   node tests/node/kquants_cli.mjs q4_0|aprq4 N [stats]  (wasm only) > the blocks, the
//                                               decoded values (N f32; with "stats": the
//                                               statistics, N/128 + 1 f32), then the indices
//                                               (int32) of the blocks left to numpy
//   node tests/node/kquants_cli.mjs f16 N       < N halves (u16)  > N f32 (wasm only)
//   node tests/node/kquants_cli.mjs bench [MB]  MB/s of f32 input, both kernels, on
//                                               gaussian data (default 64 MB)
// KQUANTS_IMPL=js (default) | wasm chooses the kernel; KQUANTS_JS=path runs another copy of
// kquants.js, KQUANTS_WASM=path another module than dist/static/kquants.wasm (the tests'
// mutants). Exit 0 ok, 1 short input, 2 usage.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, "..", "..");
const impl = process.env.KQUANTS_IMPL || "js";
let quantizeQ4K, quantizeQ6K, quantizeQ4_0, quantizeAprQ4, decodeF16;
if (impl === "wasm") {
  const wasm = process.env.KQUANTS_WASM || path.join(process.env.Q4APR_DIST || path.join(repo, "dist"), "static", "kquants.wasm");
  const { loadKquantsWasm } = await import(pathToFileURL(path.join(repo, "static", "kquants_wasm.js")).href);
  ({ quantizeQ4K, quantizeQ6K, quantizeQ4_0, quantizeAprQ4, decodeF16 } = await loadKquantsWasm(fs.readFileSync(wasm)));
} else if (impl === "js") {
  const kernel = process.env.KQUANTS_JS || path.join(repo, "static", "kquants.js");
  ({ quantizeQ4K, quantizeQ6K } = await import(pathToFileURL(path.resolve(kernel)).href));
} else {
  process.stderr.write(`kquants_cli.mjs: KQUANTS_IMPL must be js or wasm, not ${impl}\n`);
  process.exit(2);
}

const KERNELS = { q4k: [quantizeQ4K, 144], q6k: [quantizeQ6K, 210] };
const KERNELS32 = { q4_0: quantizeQ4_0, aprq4: quantizeAprQ4 };

function usage(msg) {
  process.stderr.write(`kquants_cli.mjs: ${msg}\nusage: node kquants_cli.mjs q4k|q6k N <f32 >blocks | bench [MB]\n`);
  process.exit(2);
}

function readStdin(n) {
  const buf = Buffer.alloc(n);
  let got = 0;
  while (got < n) {
    let r;
    try {
      r = fs.readSync(0, buf, got, n - got, null);
    } catch (e) {
      if (e.code === "EAGAIN") continue;
      if (e.code === "EOF") break;
      throw e;
    }
    if (r === 0) break;
    got += r;
  }
  return got === n ? buf : null;
}

function writeStdout(u8) {
  let off = 0;
  while (off < u8.length) {
    try {
      off += fs.writeSync(1, u8, off, u8.length - off);
    } catch (e) {
      if (e.code !== "EAGAIN") throw e;
    }
  }
}

function gaussian(n, seed) {
  const x = new Float32Array(n);
  let s = seed >>> 0;
  const rnd = () => {                    // xorshift32, (0, 1)
    s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
    return (s + 0.5) / 4294967296;
  };
  for (let i = 0; i < n; i += 2) {
    const r = Math.sqrt(-2 * Math.log(rnd())), t = 2 * Math.PI * rnd();
    x[i] = r * Math.cos(t);
    if (i + 1 < n) x[i + 1] = r * Math.sin(t);
  }
  return x;
}

const [mode, arg] = process.argv.slice(2);
if (mode === "bench") {
  const mb = arg ? Number(arg) : 64;
  const nb = Math.max(1, Math.floor(mb * 1048576 / 1024));
  const x = gaussian(nb * 256, 12345);
  for (const [name, [fn, ts]] of Object.entries(KERNELS)) {
    const out = new Uint8Array(nb * ts);
    fn(x.subarray(0, 256 * 64), out, 64);          // warm up
    const c0 = process.cpuUsage();
    const t0 = process.hrtime.bigint();
    fn(x, out, nb);
    const s = Number(process.hrtime.bigint() - t0) / 1e9;
    const c = process.cpuUsage(c0);
    const cpu = (c.user + c.system) / 1e6;
    const mb = nb * 1024 / 1048576;
    console.log(`${name} ${impl}: ${(mb / s).toFixed(1)} MB/s of f32 input (${nb} blocks, ${s.toFixed(2)} s; ` +
                `${(mb / cpu).toFixed(1)} MB/s of CPU time)`);
  }
} else if (KERNELS[mode]) {
  const n = Number(arg);
  if (!Number.isInteger(n) || n <= 0 || n % 256) usage("N must be a positive multiple of 256");
  const buf = readStdin(4 * n);
  if (!buf) { process.stderr.write("kquants_cli.mjs: short input\n"); process.exit(1); }
  const x = new Float32Array(buf.buffer, buf.byteOffset, n);   // Buffer.alloc: aligned, little-endian host
  const [fn, ts] = KERNELS[mode];
  const out = new Uint8Array((n / 256) * ts);
  if (process.argv[4] === "stats") {
    if (impl !== "wasm") usage("stats: wasm only");
    const stats = new Float32Array(n / 128 + 1);
    fn(x, out, n / 256, null, null, stats);
    writeStdout(out);
    writeStdout(new Uint8Array(stats.buffer));
  } else {
    fn(x, out, n / 256);
    writeStdout(out);
  }
} else if (mode in KERNELS32 && KERNELS32[mode]) {
  const n = Number(arg);
  if (!Number.isInteger(n) || n <= 0 || n % 32) usage("N must be a positive multiple of 32");
  const buf = readStdin(4 * n);
  if (!buf) { process.stderr.write("kquants_cli.mjs: short input\n"); process.exit(1); }
  const x = new Float32Array(buf.buffer, buf.byteOffset, n);
  const withStats = process.argv[4] === "stats";
  if (withStats && n % 256) usage("with stats, N must be a multiple of 256");
  const blocks = new Uint8Array((n / 32) * 18), bad = new Int32Array(n / 32);
  const y = new Float32Array(withStats ? n / 128 + 1 : n);
  const nBad = withStats ? KERNELS32[mode](x, blocks, n / 32, null, bad, y) : KERNELS32[mode](x, blocks, n / 32, y, bad);
  const out = new Uint8Array(blocks.length + 4 * y.length + 4 * nBad);
  out.set(blocks);
  out.set(new Uint8Array(y.buffer), blocks.length);
  out.set(new Uint8Array(bad.buffer, 0, 4 * nBad), blocks.length + 4 * y.length);
  writeStdout(out);
} else if (mode === "f16" && decodeF16) {
  const n = Number(arg);
  if (!Number.isInteger(n) || n <= 0) usage("N must be a positive whole number");
  const buf = readStdin(2 * n);
  if (!buf) { process.stderr.write("kquants_cli.mjs: short input\n"); process.exit(1); }
  const out = new Float32Array(n);
  decodeF16(new Uint16Array(buf.buffer, buf.byteOffset, n), out, n);
  writeStdout(new Uint8Array(out.buffer));
} else {
  usage(`unknown mode ${mode}`);
}
