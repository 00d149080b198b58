// The page's block kernels in AssemblyScript with WebAssembly SIMD, compiled to
// static/kquants.wasm by build.sh; static/kquants_wasm.js loads it, static/kernels.js hands
// it to the core (codecs.set_kernel). K-quants: ggml's reference quantizers
// (quantize_row_q4_K_ref, quantize_row_q6_K_ref, no importance matrix); and the 32-value
// formats Q4_0 and APR Q4 with their round trip, as the core's numpy fast paths.
//
// Why it is exact: C's make_qkx2_quants (Q4_K, one call per sub-block of 32) and
// make_qx_quants (Q6_K, sub-blocks of 16) are run on four sub-blocks at once, one per
// f32x4 lane. WebAssembly's f32 arithmetic, scalar or per lane, is IEEE single with
// round-to-nearest, no fused multiply-add and no excess precision, so each lane performs
// C's f32 operations in C's order and gets C's values; C's `if`s become per-lane
// selects (both sides computed, NaN comparisons false as in C), and every trial is
// evaluated (no shortcuts: unlike kquants.js, nothing needs a proof). The block level
// (scales of scales, fp16, final quants, packing) is scalar f32, as in C. Q4_0 and APR Q4
// take four values of a block per lane, with the numpy codecs' operations and integer
// max/min on the f32 bit patterns. tests/test_kquants_js.py compares every kernel with
// ggml's C functions or the numpy codecs, byte for byte, and kills mutants of this file.
//
// Interface (no imports, no allocation after start): the caller writes up to
// capacity() blocks of 256 f32 at inPtr(), calls quantizeQ4K(n, mode) or
// quantizeQ6K(n, mode) and reads n*144 or n*210 bytes at outPtr(); or writes up to
// 8*capacity() blocks of 32, calls quantizeQ4_0(n, mode) or quantizeAprQ4(n, mode), reads
// n*18 bytes at outPtr(), the decoded values at yPtr() (WANT_Y, 32-value formats) or the
// round trip's statistics at statsPtr() and maxErr() (its f32 bits; WANT_STATS), and
// the indices of the blocks left to numpy at badPtr(). decodeF16(n): F16 input (n halves
// at inPtr()) as f32 at yPtr().

const CAPACITY: i32 = 1024;                       // blocks per call: 1 MiB of f32 in
const IN = new StaticArray<f32>(CAPACITY * 256);
const OUT = new StaticArray<u8>(CAPACITY * 210);

export function capacity(): i32 { return CAPACITY; }
export function inPtr(): usize { return changetype<usize>(IN); }
export function outPtr(): usize { return changetype<usize>(OUT); }

const GROUP_MAX_EPS: f32 = 1e-15;
const P01: f32 = 0.1;
const MAGIC: f32 = 12582912.0;                    // 1.5 * 2**23

// ---------------------------------------------------------------------------- helpers

/** C's nearest_int: the bit trick, including its garbage for |t| >= 2**22, Inf, NaN. */
// @ts-ignore: decorator
@inline function nearestInt(t: f32): i32 {
  return (reinterpret<i32>(t + MAGIC) & 0x007fffff) - 0x00400000;
}

/** ggml_compute_fp32_to_fp16, transcribed. */
function fp32ToFp16(f: f32): u32 {
  let base: f32 = (Mathf.abs(f) * reinterpret<f32>(0x77800000)) * reinterpret<f32>(0x08800000);
  const w = reinterpret<u32>(f);
  const shl1w: u32 = w + w;
  const sign: u32 = w & 0x80000000;
  let bias: u32 = shl1w & 0xFF000000;
  if (bias < 0x71000000) bias = 0x71000000;
  base = reinterpret<f32>((bias >> 1) + 0x07800000) + base;
  const bits = reinterpret<u32>(base);
  const expBits: u32 = (bits >> 13) & 0x7C00;
  const mantBits: u32 = bits & 0x0FFF;
  const nonsign: u32 = expBits + mantBits;
  return ((sign >> 16) | (shl1w > 0xFF000000 ? 0x7E00 : nonsign)) & 0xFFFF;
}

/** GGML_FP16_TO_FP32 (exact; NaN payloads do not matter here). */
function fp16ToFp32(h: u32): f32 {
  const e = (h >> 10) & 0x1F;
  const m = h & 0x3FF;
  if (e == 0) {
    const v: f32 = <f32>m * <f32>5.960464477539063e-8;      // 2**-24, exact
    return h & 0x8000 ? -v : v;
  }
  if (e == 31) return m ? NaN : (h & 0x8000 ? -Infinity : Infinity);
  return reinterpret<f32>(((h & 0x8000) << 16) | ((e + 112) << 23) | (m << 13));
}

// @ts-ignore: decorator
@inline function putU8(o: i32, v: i32): void { unchecked(OUT[o] = <u8>v); }

// @ts-ignore: decorator
@inline function clampX4(l: v128, lo: i32, hi: i32): v128 {
  return i32x4.max_s(i32x4.splat(lo), i32x4.min_s(i32x4.splat(hi), l));
}

// @ts-ignore: decorator
@inline function nearestIntX4(t: v128): v128 {
  return i32x4.sub(v128.and(f32x4.add(t, f32x4.splat(MAGIC)), i32x4.splat(0x007fffff)), i32x4.splat(0x00400000));
}

/** 16 codes (four i32x4 at p, values 0..255) as 16 bytes, one per code; the callers pack
 *  them (Q4_0: q[j] | q[j + 16] << 4; APR Q4: q[2j] | q[2j + 1] << 4; the K-quants). */
// @ts-ignore: decorator
@inline function narrow(p: usize): v128 {
  return i8x16.narrow_i16x8_u(i16x8.narrow_i32x4_u(v128.load(p), v128.load(p, 16)),
                              i16x8.narrow_i32x4_u(v128.load(p, 32), v128.load(p, 48)));
}

// Scratch, 16-byte aligned. Q4_K: two groups (sub-blocks 0-3, 4-7) of 32 vectors;
// Q6_K: four groups of 16 vectors (the same bytes). Lane j of group g is sub-block 4g + j.
const GX: usize = memory.data(1024, 16);          // x
const GW: usize = memory.data(1024, 16);          // weights
const GWX: usize = memory.data(1024, 16);         // Q6_K: weight * x
const GL: usize = memory.data(1024, 16);          // best L (i32)
const GLA: usize = memory.data(1024, 16);         // the trial's L (i32)
const GSC: usize = memory.data(64, 16);           // scale per sub-block
const GMN: usize = memory.data(64, 16);           // Q4_K: the_min per sub-block
const TR: usize = memory.data(64, 16);            // a transposed 4x4

/** The 4x4 transpose of four rows of four 32-bit lanes at src, src + step, ... (row k,
 *  lane r) into dst, dst + 16, ... (row r, lane k). */
// @ts-ignore: decorator
@inline function transpose4(src: usize, step: usize, dst: usize): void {
  const v0 = v128.load(src), v1 = v128.load(src + step), v2 = v128.load(src + 2 * step), v3 = v128.load(src + 3 * step);
  const t0 = v128.shuffle<i32>(v0, v1, 0, 4, 1, 5), t1 = v128.shuffle<i32>(v2, v3, 0, 4, 1, 5);
  const t2 = v128.shuffle<i32>(v0, v1, 2, 6, 3, 7), t3 = v128.shuffle<i32>(v2, v3, 2, 6, 3, 7);
  v128.store(dst, v128.shuffle<i32>(t0, t1, 0, 1, 4, 5));
  v128.store(dst, v128.shuffle<i32>(t0, t1, 2, 3, 6, 7), 16);
  v128.store(dst, v128.shuffle<i32>(t2, t3, 0, 1, 4, 5), 32);
  v128.store(dst, v128.shuffle<i32>(t2, t3, 2, 3, 6, 7), 48);
}

/** Block xo of IN into lanes: element i of sub-block j (len values each) at
 *  GX + (j >> 2) * len * 16 + i * 16 + (j & 3) * 4, so group g = j >> 2 holds four sub-blocks. */
function toLanes(xo: i32, len: i32): void {
  const src = changetype<usize>(IN) + <usize>xo * 4, step = <usize>len * 4;
  for (let g: usize = 0; g < <usize>(64 / len); ++g) {
    for (let i: usize = 0; i < <usize>len; i += 4) transpose4(src + g * 4 * step + i * 4, step, GX + g * step * 4 + i * 16);
  }
}

/** The codes at GL (toLanes' layout) back into L, sub-block after sub-block. */
function fromLanes(L: StaticArray<i32>, len: i32): void {
  const dst = changetype<usize>(L), step = <usize>len * 4;
  for (let g: usize = 0; g < <usize>(64 / len); ++g) {
    for (let i: usize = 0; i < <usize>len; i += 4) {
      // rows i..i+3 of group g (lane k: sub-block 4g + k) -> sub-blocks' elements i..i+3
      transpose4(GL + g * step * 4 + i * 16, 16, TR);
      for (let k: usize = 0; k < 4; ++k) v128.store(dst + (g * 4 + k) * step + i * 4, v128.load(TR + k * 16));
    }
  }
}

// ---------------------------------------------------------------------------- statistics

// @ts-ignore: decorator
@inline function hmax(v: v128): i32 {
  const a = i32x4.max_s(v, i8x16.shuffle(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7));
  return max(i32x4.extract_lane(a, 0), i32x4.extract_lane(a, 1));
}

// The round trip's statistics for codecs.quantize_measured: per unit of 256 values (8
// blocks of Q4_0 / APR Q4, one K-quant block) the sums of squares of x and of the error
// e = decoded - x, each in f32 by halving (i + 128, then 64 apart, ..., 1: a fixed order,
// where numpy's einsum has its own), and max |e| (integer max on the bits with the sign
// cleared: exact).
const STATS = new StaticArray<f32>(CAPACITY * 2);  // a slice's signal units, then noise units
const SQX: usize = memory.data(1024, 16);         // the current unit's x*x
const SQE: usize = memory.data(1024, 16);         // and e*e
let maxErrBits: i32 = 0;
export function statsPtr(): usize { return changetype<usize>(STATS); }
export function maxErr(): i32 { return maxErrBits; }   // the f32 bits of max |e|

/** The sum of 256 f32 at p by halving: p[i] + p[i + 128], then 64 apart, ..., 1 (p is
 *  overwritten). */
function halve(p: usize): f32 {
  for (let w: usize = 512; w >= 16; w >>= 1) {     // half widths in bytes: 128 .. 4 values
    for (let i: usize = 0; i < w; i += 16) v128.store(p + i, f32x4.add(v128.load(p + i), v128.load(p + w + i)));
  }
  return (load<f32>(p) + load<f32>(p, 8)) + (load<f32>(p, 4) + load<f32>(p, 12));
}

const WANT_Y = 1, WANT_STATS = 2;

const YB = new StaticArray<f32>(256);              // a K-quant block's decoded values

/** One vector of x and its decoded values y into the current unit's squares (byte o of
 *  SQX, SQE); returns the running max of |y - x|'s bits, m, updated. */
// @ts-ignore: decorator
@inline function measure4(xv: v128, y: v128, o: usize, m: v128): v128 {
  const e = f32x4.sub(y, xv);
  v128.store(SQX + o, f32x4.mul(xv, xv));
  v128.store(SQE + o, f32x4.mul(e, e));
  return i32x4.max_s(m, v128.and(e, i32x4.splat(0x7FFFFFFF)));
}

/** The current unit's sums (SQX, SQE by halving) as unit u of nUnits in STATS. */
// @ts-ignore: decorator
@inline function endUnit(u: i32, nUnits: i32): void {
  unchecked(STATS[u] = halve(SQX));
  unchecked(STATS[nUnits + u] = halve(SQE));
}

/** K-quant block b's statistics (x in IN, the decoded values in YB), as a unit. */
function measureBlock(b: i32, nBlocks: i32): void {
  const px = changetype<usize>(IN) + <usize>b * 1024, py = changetype<usize>(YB);
  let m = i32x4.splat(0);
  for (let i: usize = 0; i < 1024; i += 16) m = measure4(v128.load(px + i), v128.load(py + i), i, m);
  maxErrBits = max(maxErrBits, hmax(m));
  endUnit(b, nBlocks);
}

// ---------------------------------------------------------------------------- Q4_K

const L4 = new StaticArray<i32>(256);
const SC4 = new StaticArray<f32>(8);
const MN4 = new StaticArray<f32>(8);
const LS4 = new StaticArray<i32>(8);
const LM4 = new StaticArray<i32>(8);
const QKX2_C = new StaticArray<f32>(21);  // rmin + rdelta*is + nmax (-1.f, 0.1f, 15), in f32
for (let is = 0; is <= 20; ++is) unchecked(QKX2_C[is] = (<f32>-1 + P01 * <f32>is) + <f32>15);

/** The block's scales, mins and quants from SC4, MN4, L4 (quantize_row_q4_K_ref's tail;
 *  L4, LS4 and LM4 left holding the codes, scales and mins written); with WANT_STATS its
 *  round trip into the statistics. */
function packQ4K(b: i32, maxScale: f32, maxMin: f32, mode: i32, nBlocks: i32): void {
  const xo = b * 256, yo = b * 144;
  const invScale: f32 = maxScale > 0 ? <f32>63 / maxScale : 0;
  const invMin: f32 = maxMin > 0 ? <f32>63 / maxMin : 0;
  for (let j = 0; j < 8; ++j) {
    const ls = nearestInt(invScale * unchecked(SC4[j])) & 0xFF;    // uint8_t
    const lm = nearestInt(invMin * unchecked(MN4[j])) & 0xFF;
    unchecked(LS4[j] = ls < 63 ? ls : 63);
    unchecked(LM4[j] = lm < 63 ? lm : 63);
  }
  const d16 = fp32ToFp16(maxScale / <f32>63);
  const dmin16 = fp32ToFp16(maxMin / <f32>63);
  putU8(yo, d16 & 0xFF); putU8(yo + 1, d16 >> 8);
  putU8(yo + 2, dmin16 & 0xFF); putU8(yo + 3, dmin16 >> 8);
  for (let j = 0; j < 4; ++j) {
    const s = unchecked(LS4[j]), m = unchecked(LM4[j]), s4 = unchecked(LS4[j + 4]), m4 = unchecked(LM4[j + 4]);
    putU8(yo + 4 + j, s | ((s4 >> 4) << 6));
    putU8(yo + 8 + j, m | ((m4 >> 4) << 6));
    putU8(yo + 12 + j, (s4 & 0xF) | ((m4 & 0xF) << 4));
  }
  const dh = fp16ToFp32(d16), dmh = fp16ToFp32(dmin16);
  for (let j = 0; j < 8; ++j) {
    const d: f32 = dh * <f32>unchecked(LS4[j]);
    if (d == 0) continue;                                        // C's `!d` (NaN goes on)
    // nearest_int((x + dm) / d) clamped: four values at a time (the same f32 operations)
    const dmv = f32x4.splat(dmh * <f32>unchecked(LM4[j])), dv = f32x4.splat(d);
    const px = changetype<usize>(IN) + <usize>(xo + 32 * j) * 4, pl = changetype<usize>(L4) + <usize>j * 128;
    for (let i: usize = 0; i < 128; i += 16) {
      v128.store(pl + i, clampX4(nearestIntX4(f32x4.div(f32x4.add(v128.load(px + i), dmv), dv)), 0, 15));
    }
  }
  const l4 = changetype<usize>(L4), o4 = changetype<usize>(OUT) + <usize>yo + 16;
  for (let j: usize = 0; j < 4; ++j) {          // byte l of group j: L[64j + l] | L[64j + l + 32] << 4
    for (let l: usize = 0; l < 32; l += 16) {
      const p = l4 + (j * 64 + l) * 4;
      v128.store(o4 + j * 32 + l, v128.or(narrow(p), i8x16.shl(narrow(p + 128), 4)));
    }
  }
  if (mode & WANT_STATS) {
    // dequantize_row_q4_K: y = d1 * q - m1, d1 = d * sc, m1 = dmin * m
    for (let j = 0; j < 8; ++j) {
      const d1 = f32x4.splat(dh * <f32>unchecked(LS4[j])), m1 = f32x4.splat(dmh * <f32>unchecked(LM4[j]));
      const pl = l4 + <usize>j * 128, py = changetype<usize>(YB) + <usize>j * 128;
      for (let i: usize = 0; i < 128; i += 16) {
        v128.store(py + i, f32x4.sub(f32x4.mul(d1, f32x4.convert_i32x4_s(v128.load(pl + i))), m1));
      }
    }
    measureBlock(b, nBlocks);
  }
}

/** make_qkx2_quants(32, 15, x, w, L, &the_min, Laux, -1.f, 0.1f, 20, false) for the
 *  four sub-blocks of group g: L in GL, scale in GSC, the_min in GMN. The trials' L are
 *  kept as f32 (as the sums take them). A trial whose |t| = |iscale * (x - min)| stays
 *  below 2**22 rounds with f32x4.nearest and clamps in f32 (C's nearest_int is t + 1.5 *
 *  2**23 rounded to nearest even there); the bound is exact: rounding is monotone, so
 *  |fl(x - min)| <= max(|fl(xmin - min)|, |fl(xmax - min)|) = m and |t| <= fl(|iscale| *
 *  m). Other trials use C's bit trick in i32 (its values for huge t). A NaN or Inf x
 *  (skipped by the min/max scan) makes every weight av_x + |x| NaN or Inf, so D is NaN
 *  and no trial's L is ever taken: how they are rounded does not matter there. */
function makeQkx2X4(g: i32): void {
  const px = GX + g * 512, pw = GW + g * 512, pl = GL + g * 512, pla = GLA + g * 512;
  const zero = f32x4.splat(0);
  let min = v128.load(px);
  let max = min;
  let sumW = v128.load(pw);
  let sumX = f32x4.mul(sumW, min);
  for (let i = 16; i < 512; i += 16) {
    const xi = v128.load(px + i), wi = v128.load(pw + i);
    min = v128.bitselect(xi, min, f32x4.lt(xi, min));
    max = v128.bitselect(xi, max, f32x4.gt(xi, max));
    sumW = f32x4.add(sumW, wi);
    sumX = f32x4.add(sumX, f32x4.mul(wi, xi));
  }
  const xmin = min;
  min = v128.bitselect(zero, min, f32x4.gt(min, zero));
  const flat = f32x4.eq(max, min);                // C returns at once: L = 0, the_min = -min, 0
  const flatMin = min;
  let range = f32x4.sub(max, min);
  let iscale = f32x4.div(f32x4.splat(15), range);
  let scale = f32x4.div(f32x4.splat(1), iscale);
  let best = zero;
  for (let i = 0; i < 512; i += 16) {
    const xi = v128.load(px + i);
    const lf = f32x4.convert_i32x4_s(clampX4(nearestIntX4(f32x4.mul(iscale, f32x4.sub(xi, min))), 0, 15));
    v128.store(pl + i, lf);
    let diff = f32x4.sub(f32x4.add(f32x4.mul(scale, lf), min), xi);
    diff = f32x4.mul(diff, diff);
    best = f32x4.add(best, f32x4.mul(v128.load(pw + i), diff));
  }
  const hi = f32x4.splat(15), limit = f32x4.splat(4194304);   // 2**22
  for (let is = 0; is <= 20; ++is) {
    iscale = f32x4.div(f32x4.splat(unchecked(QKX2_C[is])), range);
    let sl = zero, sl2 = zero, sxl = zero;
    const m = f32x4.max(f32x4.abs(f32x4.sub(xmin, min)), f32x4.abs(f32x4.sub(max, min)));
    if (i32x4.all_true(f32x4.lt(f32x4.mul(f32x4.abs(iscale), m), limit))) {
      for (let i = 0; i < 512; i += 16) {
        const xi = v128.load(px + i);
        const lf = f32x4.pmax(zero, f32x4.pmin(hi, f32x4.nearest(f32x4.mul(iscale, f32x4.sub(xi, min)))));
        v128.store(pla + i, lf);
        const wl = f32x4.mul(v128.load(pw + i), lf);
        sl = f32x4.add(sl, wl);
        sl2 = f32x4.add(sl2, f32x4.mul(wl, lf));
        sxl = f32x4.add(sxl, f32x4.mul(wl, xi));
      }
    } else {
      for (let i = 0; i < 512; i += 16) {
        const xi = v128.load(px + i);
        const lf = f32x4.convert_i32x4_s(clampX4(nearestIntX4(f32x4.mul(iscale, f32x4.sub(xi, min))), 0, 15));
        v128.store(pla + i, lf);
        const wl = f32x4.mul(v128.load(pw + i), lf);
        sl = f32x4.add(sl, wl);
        sl2 = f32x4.add(sl2, f32x4.mul(wl, lf));
        sxl = f32x4.add(sxl, f32x4.mul(wl, xi));
      }
    }
    const D = f32x4.sub(f32x4.mul(sumW, sl2), f32x4.mul(sl, sl));
    const dPos = f32x4.gt(D, zero);
    if (!v128.any_true(dPos)) continue;
    let thisScale = f32x4.div(f32x4.sub(f32x4.mul(sumW, sxl), f32x4.mul(sumX, sl)), D);
    let thisMin = f32x4.div(f32x4.sub(f32x4.mul(sl2, sumX), f32x4.mul(sl, sxl)), D);
    const minPos = f32x4.gt(thisMin, zero);
    thisMin = v128.bitselect(zero, thisMin, minPos);
    thisScale = v128.bitselect(f32x4.div(sxl, sl2), thisScale, minPos);
    let cur = zero;
    for (let i = 0; i < 512; i += 16) {
      let diff = f32x4.sub(f32x4.add(f32x4.mul(thisScale, v128.load(pla + i)), thisMin), v128.load(px + i));
      diff = f32x4.mul(diff, diff);
      cur = f32x4.add(cur, f32x4.mul(v128.load(pw + i), diff));
    }
    const upd = v128.and(dPos, f32x4.lt(cur, best));
    if (!v128.any_true(upd)) continue;
    for (let i = 0; i < 512; i += 16) v128.store(pl + i, v128.bitselect(v128.load(pla + i), v128.load(pl + i), upd));
    best = v128.bitselect(cur, best, upd);
    scale = v128.bitselect(thisScale, scale, upd);
    min = v128.bitselect(thisMin, min, upd);
    range = f32x4.sub(max, min);
  }
  for (let i = 0; i < 512; i += 16) {       // back to i32 (0 where C returned at once)
    v128.store(pl + i, v128.bitselect(zero, i32x4.trunc_sat_f32x4_s(v128.load(pl + i)), flat));
  }
  scale = v128.bitselect(zero, scale, flat);
  min = v128.bitselect(flatMin, min, flat);
  v128.store(GSC + g * 16, scale);
  v128.store(GMN + g * 16, f32x4.neg(min));
}

/** quantize_row_q4_K_ref over n blocks of IN into OUT (144 bytes a block), with the
 *  statistics as quantizeQ6K. Returns 0. */
export function quantizeQ4K(nBlocks: i32, mode: i32): i32 {
  maxErrBits = 0;
  for (let b = 0; b < nBlocks; ++b) {
    toLanes(b * 256, 32);
    for (let g = 0; g < 2; ++g) {
      const px = GX + g * 512, pw = GW + g * 512;
      let sumX2 = f32x4.splat(0);
      for (let i = 0; i < 512; i += 16) {
        const xi = v128.load(px + i);
        sumX2 = f32x4.add(sumX2, f32x4.mul(xi, xi));
      }
      const avX = f32x4.sqrt(f32x4.div(sumX2, f32x4.splat(32)));
      for (let i = 0; i < 512; i += 16) v128.store(pw + i, f32x4.add(avX, f32x4.abs(v128.load(px + i))));
      makeQkx2X4(g);
    }
    let maxScale: f32 = 0, maxMin: f32 = 0;
    for (let j = 0; j < 8; ++j) {
      const scale = load<f32>(GSC + j * 4), mn = load<f32>(GMN + j * 4);
      unchecked(SC4[j] = scale);
      unchecked(MN4[j] = mn);
      if (scale > maxScale) maxScale = scale;
      if (mn > maxMin) maxMin = mn;
    }
    fromLanes(L4, 32);
    packQ4K(b, maxScale, maxMin, mode, nBlocks);
  }
  return 0;
}

// ---------------------------------------------------------------------------- Q6_K

const L6 = new StaticArray<i32>(256);     // L + 32
const SC6 = new StaticArray<f32>(16);
const Q8 = new StaticArray<i32>(16);
const QX_C = new StaticArray<f32>(19);    // -(nmax + 0.1f*is), is = -9..9, nmax 32, in f32
for (let is = -9; is <= 9; ++is) unchecked(QX_C[is + 9] = -(<f32>32 + P01 * <f32>is));

/** quantize_row_q6_K_ref's tail: the block's scales and quants from SC6 and L6 (L6 and
 *  Q8 left holding the codes and scales written, unless d is 0); returns d's f32 value. */
function packQ6K(b: i32): f32 {
  const xo = b * 256, yo = b * 210;
  let maxScale: f32 = 0, maxAbsScale: f32 = 0;
  for (let ib = 0; ib < 16; ++ib) {
    const scale = unchecked(SC6[ib]);
    const a = Mathf.abs(scale);
    if (a > maxAbsScale) { maxAbsScale = a; maxScale = scale; }
  }
  if (maxAbsScale < GROUP_MAX_EPS) {
    for (let i = 0; i < 210; ++i) putU8(yo + i, 0);              // fp16(0.f) is 0 too
    return 0;                                                    // d = 0: every value 0
  }
  const iscale: f32 = <f32>-128 / maxScale;
  const d16 = fp32ToFp16(<f32>1 / iscale);
  for (let ib = 0; ib < 16; ++ib) {
    const q = nearestInt(iscale * unchecked(SC6[ib]));
    const q8 = ((q < 127 ? q : 127) << 24) >> 24;                // int8_t
    unchecked(Q8[ib] = q8);
    putU8(yo + 192 + ib, q8 & 0xFF);
  }
  putU8(yo + 208, d16 & 0xFF); putU8(yo + 209, d16 >> 8);
  const dh = fp16ToFp32(d16);
  for (let j = 0; j < 16; ++j) {
    const d: f32 = dh * <f32>unchecked(Q8[j]);
    if (d == 0) continue;
    // nearest_int(x / d) clamped, + 32: four values at a time (the same f32 division)
    const px = changetype<usize>(IN) + <usize>(xo + 16 * j) * 4, pl = changetype<usize>(L6) + <usize>j * 64;
    const dv = f32x4.splat(d), off = i32x4.splat(32);
    for (let i: usize = 0; i < 64; i += 16) {
      v128.store(pl + i, i32x4.add(clampX4(nearestIntX4(f32x4.div(v128.load(px + i), dv)), -32, 31), off));
    }
  }
  // ql: low nibbles of L[j + l] | L[j + l + 64] << 4 (and + 32, + 96), qh: their top two
  // bits, four to a byte; sixteen l at a time
  const l6 = changetype<usize>(L6), o6 = changetype<usize>(OUT) + <usize>yo;
  const low = i8x16.splat(0xF);
  for (let j: usize = 0, ql = o6, qh = o6 + 128; j < 256; j += 128, ql += 64, qh += 32) {
    for (let l: usize = 0; l < 32; l += 16) {
      const p = l6 + (j + l) * 4;
      const a = narrow(p), bb = narrow(p + 128), c = narrow(p + 256), e = narrow(p + 384);
      v128.store(ql + l, v128.or(v128.and(a, low), i8x16.shl(v128.and(c, low), 4)));
      v128.store(ql + l + 32, v128.or(v128.and(bb, low), i8x16.shl(v128.and(e, low), 4)));
      v128.store(qh + l, v128.or(v128.or(i8x16.shr_u(a, 4), i8x16.shl(i8x16.shr_u(bb, 4), 2)),
                                 v128.or(i8x16.shl(i8x16.shr_u(c, 4), 4), i8x16.shl(i8x16.shr_u(e, 4), 6))));
    }
  }
  return dh;
}

/** make_qx_quants(16, 32, x, L, 1, NULL) for the four sub-blocks of group g: L + 32 in
 *  GL (0 where C returns early), the scale in GSC. The trials' L are kept as f32 (as the
 *  sums take them). Where the four sub-blocks are finite, |iscale * x| <= 33 (iscale =
 *  -(32 + 0.1 is) / max, |x| <= |max|), so C's nearest_int(t), t + 1.5 * 2**23 rounded to
 *  nearest even, is f32x4.nearest(t), clamped in f32 (20 % faster); otherwise C's bit
 *  trick in i32 (its values for NaN and Inf). */
function makeQxX4(g: i32): void {
  const px = GX + g * 256, pw = GW + g * 256, pwx = GWX + g * 256, pl = GL + g * 256, pla = GLA + g * 256;
  const zero = f32x4.splat(0);
  let max = zero, amax = zero, bits = i32x4.splat(0);
  for (let i = 0; i < 256; i += 16) {
    const xi = v128.load(px + i);
    const ax = f32x4.abs(xi);
    const bigger = f32x4.gt(ax, amax);
    amax = v128.bitselect(ax, amax, bigger);
    max = v128.bitselect(xi, max, bigger);
    bits = i32x4.max_s(bits, ax);
  }
  const finite = hmax(bits) < 0x7F800000;
  const tiny = f32x4.lt(amax, f32x4.splat(GROUP_MAX_EPS));   // C returns at once: L = 0, 0
  const lo = f32x4.splat(-32), hi = f32x4.splat(31);
  let scale = zero, best = zero;
  // k = -1: C's first pass (iscale = -nmax/max, its L kept); then the trials is = -9..9, not 0
  for (let k = -1; k < 19; ++k) {
    if (k == 9) continue;
    const iscale = f32x4.div(f32x4.splat(k < 0 ? <f32>-32 : unchecked(QX_C[k])), max);
    const dst = k < 0 ? pl : pla;
    let sumlx = zero, suml2 = zero;
    if (finite) {
      for (let i = 0; i < 256; i += 16) {
        const t = f32x4.mul(iscale, v128.load(px + i));
        const lf = f32x4.pmax(lo, f32x4.pmin(hi, f32x4.nearest(t)));
        v128.store(dst + i, lf);
        sumlx = f32x4.add(sumlx, f32x4.mul(v128.load(pwx + i), lf));
        suml2 = f32x4.add(suml2, f32x4.mul(f32x4.mul(v128.load(pw + i), lf), lf));
      }
    } else {
      for (let i = 0; i < 256; i += 16) {
        const lf = f32x4.convert_i32x4_s(clampX4(nearestIntX4(f32x4.mul(iscale, v128.load(px + i))), -32, 31));
        v128.store(dst + i, lf);
        sumlx = f32x4.add(sumlx, f32x4.mul(v128.load(pwx + i), lf));
        suml2 = f32x4.add(suml2, f32x4.mul(f32x4.mul(v128.load(pw + i), lf), lf));
      }
    }
    if (k < 0) {
      scale = v128.bitselect(f32x4.div(sumlx, suml2), zero, f32x4.ne(suml2, zero));   // C's `suml2 ?`
      best = f32x4.mul(scale, sumlx);
      continue;
    }
    const upd = v128.and(f32x4.gt(suml2, zero), f32x4.gt(f32x4.mul(sumlx, sumlx), f32x4.mul(best, suml2)));
    if (!v128.any_true(upd)) continue;
    for (let i = 0; i < 256; i += 16) v128.store(pl + i, v128.bitselect(v128.load(pla + i), v128.load(pl + i), upd));
    const newScale = f32x4.div(sumlx, suml2);
    scale = v128.bitselect(newScale, scale, upd);
    best = v128.bitselect(f32x4.mul(newScale, sumlx), best, upd);
  }
  const off = i32x4.splat(32), z = i32x4.splat(0);
  for (let i = 0; i < 256; i += 16) {
    v128.store(pl + i, v128.bitselect(z, i32x4.add(i32x4.trunc_sat_f32x4_s(v128.load(pl + i)), off), tiny));
  }
  v128.store(GSC + g * 16, v128.bitselect(zero, scale, tiny));
}

/** quantize_row_q6_K_ref over n blocks of IN into OUT (210 bytes a block); with
 *  WANT_STATS the round trip's statistics too (a unit is a block). Returns 0 (no block
 *  is left to numpy). */
export function quantizeQ6K(nBlocks: i32, mode: i32): i32 {
  maxErrBits = 0;
  for (let b = 0; b < nBlocks; ++b) {
    toLanes(b * 256, 16);
    for (let i = 0; i < 1024; i += 16) {
      const xi = v128.load(GX + i);
      const wi = f32x4.mul(xi, xi);
      v128.store(GW + i, wi);
      v128.store(GWX + i, f32x4.mul(wi, xi));
    }
    for (let g = 0; g < 4; ++g) makeQxX4(g);
    for (let ib = 0; ib < 16; ++ib) unchecked(SC6[ib] = load<f32>(GSC + ib * 4));
    fromLanes(L6, 16);
    const dh = packQ6K(b);
    if (mode & WANT_STATS) {
      // dequantize_row_q6_K: y = d * sc * q, (d * sc) first, q = L - 32
      const off = i32x4.splat(32);
      for (let j = 0; j < 16; ++j) {
        const d = f32x4.splat(dh * <f32>unchecked(Q8[j]));
        const pl = changetype<usize>(L6) + <usize>j * 64, py = changetype<usize>(YB) + <usize>j * 64;
        for (let i: usize = 0; i < 64; i += 16) {
          v128.store(py + i, f32x4.mul(d, f32x4.convert_i32x4_s(i32x4.sub(v128.load(pl + i), off))));
        }
      }
      measureBlock(b, nBlocks);
    }
  }
  return 0;
}

// ---------------------------------------------------------------------------- Q4_0, APR Q4

// The two 32-value formats with their round trip (the decoded values the report's
// statistics need), as py/q4apr/codecs.py's fast paths compute them, so the same bytes
// and the same f32 values: Q4_0 (ggml's quantize_row_q4_0_ref) and APR Q4 (Aprender's
// dtype 128). Blocks outside those fast paths (NaN, Inf, scales out of range) are listed
// in BAD and left undone: the caller has numpy do them.
const Y = new StaticArray<f32>(CAPACITY * 256);   // the round trip (values)
const BAD = new StaticArray<i32>(CAPACITY * 8);   // indices of the blocks left undone
export function yPtr(): usize { return changetype<usize>(Y); }
export function badPtr(): usize { return changetype<usize>(BAD); }

const MAX32: f32 = 3.4028234663852886e38;

// @ts-ignore: decorator
@inline function orderKeys(s: v128): v128 {         // int32 keys ordered like the f32 values
  return v128.xor(v128.and(i32x4.shr_s(s, 31), i32x4.splat(0x7FFFFFFF)), s);
}

// @ts-ignore: decorator
@inline function hmin(v: v128): i32 {
  const a = i32x4.min_s(v, i8x16.shuffle(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7));
  return min(i32x4.extract_lane(a, 0), i32x4.extract_lane(a, 1));
}

// @ts-ignore: decorator
@inline function keyToF32(k: i32): f32 { return reinterpret<f32>(k ^ ((k >> 31) & 0x7FFFFFFF)); }

/** Block b's decoded values (codes at GL, scale d16): into Y (WANT_Y) and into the
 *  statistics (WANT_STATS; units of nBlocks / 8). */
// @ts-ignore: decorator
@inline function roundTrip(px: usize, b: i32, d16: u32, mode: i32, nUnits: i32): void {
  const d = f32x4.splat(fp16ToFp32(d16));
  const y0 = changetype<usize>(Y) + <usize>b * 128, u = <usize>(b & 7) * 128;
  let m = i32x4.splat(0);
  for (let i: usize = 0; i < 128; i += 16) {
    const y = f32x4.mul(f32x4.convert_i32x4_s(i32x4.sub(v128.load(GL + i), i32x4.splat(8))), d);
    if (mode & WANT_Y) v128.store(y0 + i, y);
    if (mode & WANT_STATS) m = measure4(v128.load(px + i), y, u + i, m);
  }
  if (mode & WANT_STATS) {
    maxErrBits = max(maxErrBits, hmax(m));
    if ((b & 7) == 7) endUnit(b >> 3, nUnits);
  }
}

/** The first of the 32 values at px whose |x| is mag (its bits). */
function firstOfMagnitude(px: usize, mag: f32): f32 {
  const target = i32x4.splat(reinterpret<i32>(mag)), absMask = i32x4.splat(0x7FFFFFFF);
  let mask = 0;
  for (let i = 0; i < 8; ++i) {
    mask |= i32x4.bitmask(i32x4.eq(v128.and(v128.load(px + <usize>i * 16), absMask), target)) << (i * 4);
  }
  return load<f32>(px + <usize>ctz(mask) * 4);
}

/** Q4_0 over n blocks of 32 at IN into OUT (18 bytes a block), with the round trip as
 *  mode asks (WANT_Y: the decoded values into Y; WANT_STATS, n a multiple of 8: STATS and
 *  maxErr). Returns the number of blocks left to numpy, listed in BAD. */
export function quantizeQ4_0(nBlocks: i32, mode: i32): i32 {
  let bad = 0;
  maxErrBits = 0;
  const x0 = changetype<usize>(IN), o0 = changetype<usize>(OUT);
  for (let b = 0; b < nBlocks; ++b) {
    const px = x0 + <usize>b * 128;
    let kmax = orderKeys(v128.load(px)), kmin = kmax;
    for (let i = 16; i < 128; i += 16) {
      const k = orderKeys(v128.load(px + i));
      kmax = i32x4.max_s(kmax, k);
      kmin = i32x4.min_s(kmin, k);
    }
    const mx = keyToF32(hmax(kmax)), mn = keyToF32(hmin(kmin));
    const negMn = -mn;
    let smax = mx > negMn ? mx : mn;
    const mag = Mathf.abs(smax);
    // no NaN (mx, -mn unordered), the scale in range (or an all-zero block: d = -0, id = 0)
    if (!((mx >= negMn || negMn > mx) && (mag >= <f32>9.4039548065783e-38 && mag <= MAX32 || mag == 0))) {  // 2**-123
      unchecked(BAD[bad++] = b);
      continue;
    }
    // C's max: the first element of largest |x|, with its sign (+0 for an all-zero block)
    if (mx == negMn) smax = mag != 0 ? firstOfMagnitude(px, mag) : 0;
    const d: f32 = smax / <f32>-8;
    const id = f32x4.splat(d != 0 ? <f32>1 / d : 0);
    for (let i = 0; i < 128; i += 16) {
      const q = i32x4.trunc_sat_f32x4_s(f32x4.add(f32x4.mul(v128.load(px + i), id), f32x4.splat(8.5)));
      v128.store(GL + i, i32x4.sub(q, i32x4.shr_s(q, 4)));       // min(q, 15) for q <= 16
    }
    const d16 = fp32ToFp16(d);
    const po = o0 + <usize>b * 18;
    store<u16>(po, <u16>d16);
    const lo = narrow(GL), hi = narrow(GL + 64);
    v128.store(po + 2, v128.or(lo, i8x16.shl(hi, 4)));
    if (mode) roundTrip(px, b, d16, mode, nBlocks >> 3);
  }
  return bad;
}

/** APR Q4 as quantizeQ4_0 (the same modes and results). */
export function quantizeAprQ4(nBlocks: i32, mode: i32): i32 {
  let bad = 0;
  maxErrBits = 0;
  const x0 = changetype<usize>(IN), o0 = changetype<usize>(OUT);
  const absMask = i32x4.splat(0x7FFFFFFF);
  for (let b = 0; b < nBlocks; ++b) {
    const px = x0 + <usize>b * 128;
    let m = v128.and(v128.load(px), absMask);
    for (let i = 16; i < 128; i += 16) m = i32x4.max_s(m, v128.and(v128.load(px + i), absMask));
    const amax = reinterpret<f32>(hmax(m));                    // NaN sorts above Inf
    let d: f32 = amax / <f32>7;
    if (amax == 0) d = 1;
    if (!(d >= <f32>2.350988701644575e-38 && d <= MAX32)) { unchecked(BAD[bad++] = b); continue; }   // 2**-125
    const h = f32x4.splat(d * <f32>0.5);
    for (let i = 0; i < 128; i += 16) {
      // m2 = trunc(x / (d/2)) = trunc(2x/d); round_half_away(x/d) + 8 = (m2 + (m2 >> 31) + 17) >> 1
      const m2 = i32x4.trunc_sat_f32x4_s(f32x4.div(v128.load(px + i), h));
      v128.store(GL + i, i32x4.shr_s(i32x4.add(i32x4.add(m2, i32x4.shr_s(m2, 31)), i32x4.splat(17)), 1));
    }
    const d16 = fp32ToFp16(d);
    const po = o0 + <usize>b * 18;
    store<u16>(po, <u16>d16);
    // pairs of codes: the low byte of (w | w >> 4) for w = q[2j] | q[2j + 1] << 8
    const v0 = narrow(GL), v1 = narrow(GL + 64);
    const w0 = v128.and(v128.or(v0, i16x8.shr_u(v0, 4)), i16x8.splat(0xFF));
    const w1 = v128.and(v128.or(v1, i16x8.shr_u(v1, 4)), i16x8.splat(0xFF));
    v128.store(po + 2, i8x16.narrow_i16x8_u(w0, w1));
    if (mode) roundTrip(px, b, d16, mode, nBlocks >> 3);
  }
  return bad;
}

// ---------------------------------------------------------------------------- F16 input

/** n (up to capacity() * 256) IEEE half floats at inPtr() as f32 at yPtr(), eight at a
 *  time (a last partial eight reads and writes within the buffers): exact, NaN payloads and signs kept (numpy's conversion). A normal or subnormal
 *  half's bits shifted into an f32's place read as 2**-112 times its value: times 2**112
 *  (exact, wasm has subnormals); Inf and NaN get the f32 exponent of all ones. */
export function decodeF16(n: i32): void {
  const src = changetype<usize>(IN), dst = changetype<usize>(Y);
  const low = i32x4.splat(0x7FFF), expMask = i32x4.splat(0x7C00), top = i32x4.splat(0x7F800000);
  const scale = f32x4.splat(reinterpret<f32>(0x77800000));          // 2**112
  for (let i = 0; i < n; i += 8) {
    const h = v128.load(src + <usize>i * 2);
    for (let half = 0; half < 2; ++half) {
      const v = half ? i32x4.extend_high_i16x8_u(h) : i32x4.extend_low_i16x8_u(h);
      const em = i32x4.shl(v128.and(v, low), 13);
      const finite = f32x4.mul(em, scale);
      const special = i32x4.eq(v128.and(v, expMask), expMask);
      const r = v128.or(v128.bitselect(v128.or(em, top), finite, special), i32x4.shl(i32x4.shr_u(v, 15), 31));
      v128.store(dst + <usize>i * 4 + <usize>half * 16, r);
    }
  }
}
