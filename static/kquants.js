// ggml's reference K-quant quantizers (quantize_row_q4_K_ref, quantize_row_q6_K_ref of
// the pinned llama.cpp, ggml-quants.c, no importance matrix) as plain JavaScript, byte
// for byte: the numpy codecs (py/q4apr/codecs.py) are exact but slow under Pyodide.
//
// Every C float is an f32: each +, -, *, / and sqrtf is followed by Math.fround (a double
// result rounded to f32 equals the f32 operation: 53 >= 2*24 + 2, so double rounding is
// innocuous), constants are f32 (0.1f, 1e-15f), and C's expression order is kept.
// nearest_int is C's bit trick (f32 + 12582912.f, low 23 bits - 0x400000), including its
// garbage for |t| >= 2**22, Inf and NaN. GGML_FP32_TO_FP16 is ggml's software routine.
// Work whose outcome provably cannot change the bytes is skipped (see "Pruning" and
// "Incremental" below: trials that cannot win, l values that cannot move). Tested
// against the C oracle by tests/test_kquants_js.py.
//
// ES module, no DOM, no imports: runs in a Web Worker and in Node. No allocation per
// block: all scratch is module level.
//
//   quantizeQ4K(src, dst, nBlocks)  src Float32Array(nBlocks*256) -> dst Uint8Array(nBlocks*144)
//   quantizeQ6K(src, dst, nBlocks)  src Float32Array(nBlocks*256) -> dst Uint8Array(nBlocks*210)

const fr = Math.fround;
const F1 = new Float32Array(1);
const I1 = new Int32Array(F1.buffer);
const U1 = new Uint32Array(F1.buffer);

const GROUP_MAX_EPS = fr(1e-15);
const P01 = fr(0.1);

// ---------------------------------------------------------------------------- helpers

/** C's nearest_int on an f32 value t (already rounded): RNE(t) while |t| < 2**22. */
function nearestInt(t) {
  const v = fr(t + 12582912);
  if (v >= 8388608 && v < 16777216) return (v - 12582912) | 0;   // exponent 23: low bits are v - 2**23
  F1[0] = v;
  return (I1[0] & 0x007fffff) - 0x00400000;
}

function f32bits(f) { F1[0] = f; return U1[0]; }
function f32from(b) { U1[0] = b >>> 0; return F1[0]; }

const SCALE_TO_INF = f32from(0x77800000);     // 0x1.0p+112f
const SCALE_TO_ZERO = f32from(0x08800000);    // 0x1.0p-110f

/** ggml_compute_fp32_to_fp16, transcribed (round to nearest even, overflow to Inf,
 *  NaN -> 0x7E00 | sign). */
function fp32ToFp16(f) {
  let base = fr(fr(Math.abs(f) * SCALE_TO_INF) * SCALE_TO_ZERO);
  const w = f32bits(f);
  const shl1w = (w + w) >>> 0;
  const sign = (w & 0x80000000) >>> 0;
  let bias = (shl1w & 0xFF000000) >>> 0;
  if (bias < 0x71000000) bias = 0x71000000;
  base = fr(f32from((bias >>> 1) + 0x07800000) + base);
  const bits = f32bits(base);
  const expBits = (bits >>> 13) & 0x7C00;
  const mantBits = bits & 0x0FFF;
  const nonsign = expBits + mantBits;
  return ((sign >>> 16) | (shl1w > 0xFF000000 ? 0x7E00 : nonsign)) & 0xFFFF;
}

/** GGML_FP16_TO_FP32 (exact; NaN payloads do not matter here). */
function fp16ToFp32(h) {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >>> 10) & 0x1F;
  const m = h & 0x3FF;
  if (e === 0) return s * m * 5.960464477539063e-8;             // 2**-24
  if (e === 31) return m ? NaN : s * Infinity;
  return f32from(((h & 0x8000) << 16) | ((e + 112) << 23) | (m << 13));
}

// ---------------------------------------------------------------------------- Q4_K

const QX = new Float64Array(32);      // the sub-block's x (f32 values)
const QW = new Float64Array(32);      // its weights
const QXM = new Float64Array(32);     // fr(x - min) for the current min
const LAUX = new Int32Array(32);
const LPREV = new Int32Array(32);
const L4 = new Uint8Array(256);
const SC4 = new Float64Array(8);
const MN4 = new Float64Array(8);
const LS4 = new Int32Array(8);
const LM4 = new Int32Array(8);
// rmin + rdelta*is + nmax with rmin -1.f, rdelta 0.1f, nmax 15, in f32
const QKX2_C = new Float64Array(21);
for (let is = 0; is <= 20; ++is) QKX2_C[is] = fr(fr(-1 + fr(P01 * is)) + 15);

let theMin = 0;

// Pruning (a trial that provably cannot update best_error is not evaluated in f32).
//
// For a trial's Laux = l, C evaluates (if D > 0) cur_error at its f32 (s, m). Without
// overflow (which makes cur_error Inf/NaN: no update either), every f32 op rounds as
// |fl(p) - p| <= u|p| + eta (u = 2^-24, eta = 2^-150 only for products; sums are exact
// when subnormal). Then, with t_i = s l_i + m - x_i exact, the computed
// d_i = fl(fl(fl(s l_i) + m) - x_i) has |d_i| >= (1-u)(|t_i| - delta_i)+ where
// delta_i = u'(2|s| l_i + |m|) + 2 eta, u' = u(1+u); d^2, w*d^2 and the sequential sum
// of non-negative terms lose at most a factor (1-u) each, and an eta per product, so
//   cur_error >= (1-u)^36 [ (1-e) E(s,m) - (1/e) sum w delta^2 ] - eta (32 + Sw)
// for any 0 < e < 1, using (|t| - d)+^2 >= (1-e) t^2 - (1/e - 1) d^2, where
// E(s,m) = sum w (s l + m - x)^2 is exact. With (a+b)^2 <= 2a^2 + 2b^2,
// (1/e) sum w delta^2 <= 4K s^2 Sl2 + K m^2 Sw + 8 eta^2 Sw / e, K >= 4 u'^2 / e, so the
// bracket is >= Q(s,m) = (1-e)E(s,m) - 4K s^2 Sl2 - K m^2 Sw - tiny, a quadratic in
// (s, m) whose minimum over all of R^2 (so whatever s, m C computes, clamped or not)
// is (1-e) G - (1-e)^2 P / det with G = sum w x^2, det = A B Sl2 Sw - (1-e)^2 Sl^2,
// P = B Sw Sxl^2 - 2(1-e) Sl Sxl Sx + A Sl2 Sx^2, A = 1-e-4K, B = 1-e-K (det > 0).
// These are evaluated in f64 from f64 sums. Each of Sl, Sl2, Sxl, Axl adds exact terms
// (w l, w l^2, w x l, w |x| l; when kept incrementally, see QKX2_THR, also the changes
// w dl, w d(l^2), w x dl, w |x| dl with dl > 0 as l only grows), at most
// 32 + 32*15 = 512 of them, whose absolute values sum to the sum for the final l (resp.
// to Axl for Sxl); so each computed sum is within 511 * 2^-53 < 2^-44 of the sum of the
// absolute terms (Sw, Sx, G, Ax: 32 terms, 2^-47). With det >= 2^-8 A B Sl2 Sw (checked
// on the computed det; then det's relative error is below 2^-34) the computed value is
// within 2^-28 T of the exact one, T = (1-e) G + (1-e)^2 Pabs / det, Pabs being P with
// |x| sums (Ax = sum w|x|, Axl = sum w l |x|) and + signs; 2^-24 T is subtracted.
// No f64 overflow or underflow is possible from f32 data (degree <= 5, |x| <= 2^128,
// 2^-149 <= |x| when nonzero) except through Inf/NaN, which fail the finite test (a
// NaN comparison is false). The trial is skipped only when the resulting bound is
// >= best_error: then cur_error >= best_error and C's `cur_error < best_error` fails.
const PR_E = 2 ** -16;
const PR_K = 2 ** -29;                         // >= 4 u'^2 / e = 2^-30 (1+u)^2
const PR_A = 1 - PR_E - 4 * PR_K;
const PR_B = 1 - PR_E - PR_K;
const PR_C1 = 1 - PR_E;
const PR_C2 = PR_C1 * PR_C1;
const PR_AB = PR_A * PR_B;
const PR_DETMIN = 2 ** -8 * PR_AB;
const PR_MARGIN = 2 ** -24;
const PR_SHRINK = 1 - 2 ** -17;                // <= (1-u)^36, with room for f64 rounding
const PR_ETA = 2 ** -140;                      // >= eta, generously
const QAX = new Float64Array(32);              // |x|
const QWX = new Float64Array(32);              // w x, exact
const QWAX = new Float64Array(32);             // w |x|, exact
const QTHR = new Float64Array(32);             // iscale below which Laux[i] cannot change
// Incremental Laux (exact). While `min` is unchanged and range > 0, iscale = fr(C/range)
// does not decrease from trial to trial (QKX2_C grows). incrementalOk checks
// fr(fr(CMAX/range) S) < 2^21 with S = the f64 sum of |xm_i| (>= each |xm_i|; NaN and
// Inf fail), so |t_i| = |fr(iscale xm_i)| < 2^21 in every trial, where C's nearest_int
// is fr(t + 12582912) - 12582912 (the sum lies in [2^23, 2^24), f32 spacing 1). Then
// l_i = clamp(nearest_int(t_i)) never decreases from trial to trial (fr and rounding are
// monotone; xm_i <= 0 gives t_i <= 0, l_i = 0) and stays at 15 once there. It cannot
// change either while iscale < thr_i = fl(fl((l + 1/2) / xm_i) (1 - 2^-20)) (two f64
// roundings of 2^-53 each): then iscale xm_i < (l + 1/2)(1 - 2^-21), so
// t_i < l + 1/2 (f32 rounding moves it by at most 2^-24 relative; l + 1/2 >= 1/2) and
// nearest_int(t_i) <= l. Only elements with iscale >= thr_i are recomputed (exactly);
// the f64 sums for the pruning bound are updated by the changes (exact terms, see above).
const QKX2_THR = 1 - 2 ** -20;
let QKX2_CMAX = 0;
for (let is = 0; is <= 20; ++is) {
  if (QKX2_C[is] < QKX2_CMAX || !(QKX2_C[is] > 0)) throw new Error("kquants: QKX2_C must grow");
  QKX2_CMAX = QKX2_C[is];
}
/** The preconditions of the incremental Laux for the current QXM and range. */
function incrementalOk(range) {
  if (!(range > 0)) return false;
  let sa = 0;                         // >= max |xm| (a rounded sum is >= each term), NaN, Inf
  for (let i = 0; i < 32; ++i) sa += Math.abs(QXM[i]);
  return fr(fr(QKX2_CMAX / range) * sa) < 2097152;
}
let prunedTrials = 0, evaluatedTrials = 0;
/** [trials pruned, trials evaluated in f32] by quantizeQ4K so far (for tests/benchmarks). */
export function pruneStats() { return [prunedTrials, evaluatedTrials]; }

/** make_qkx2_quants(32, 15, QX, QW, L4 + off, &theMin, Laux, -1.f, 0.1f, 20, false). */
function makeQkx2(off) {
  const x = QX, w = QW, xm = QXM, laux = LAUX, lprev = LPREV, ax = QAX, wx = QWX, wax = QWAX, thr = QTHR;
  let min = x[0];
  let max = x[0];
  let sumW = w[0];
  let sumX = fr(sumW * x[0]);
  for (let i = 1; i < 32; ++i) {
    const xi = x[i];
    if (xi < min) min = xi;
    if (xi > max) max = xi;
    const wi = w[i];
    sumW = fr(sumW + wi);
    sumX = fr(sumX + fr(wi * xi));
  }
  if (min > 0) min = 0;
  if (max === min) {
    for (let i = 0; i < 32; ++i) L4[off + i] = 0;
    theMin = -min;
    return 0;
  }
  let range = fr(max - min);
  let iscale = fr(15 / range);
  let scale = fr(1 / iscale);
  let bestError = 0;
  let sw64 = 0, sx64 = 0, g64 = 0, ax64 = 0;   // f64 sums for the pruning bound
  for (let i = 0; i < 32; ++i) {
    const xi = x[i], wi = w[i];
    const xmi = fr(xi - min);
    xm[i] = xmi;
    let l = nearestInt(fr(iscale * xmi));
    l = l > 15 ? 15 : l < 0 ? 0 : l;
    L4[off + i] = l;
    let diff = fr(fr(fr(scale * l) + min) - xi);
    diff = fr(diff * diff);
    bestError = fr(bestError + fr(wi * diff));
    const axi = Math.abs(xi);
    ax[i] = axi;
    wx[i] = wi * xi;                     // exact in f64 (24 + 24 bits)
    wax[i] = wi * axi;
    sw64 += wi;
    sx64 += wi * xi;
    g64 += wi * xi * xi;
    ax64 += wi * axi;
  }
  const g1 = PR_C1 * g64;
  const eta = PR_ETA * (32 + sw64);
  // A trial whose Laux equals the previous trial's, with `min` unchanged since (the
  // previous trial did not update), computes the very same sums, D, scale, min and
  // cur_error as that trial, which then did not update: it cannot update either.
  let prevValid = false;
  // Incremental Laux (see the comment above QKX2_THR): valid for the current `min` when
  // `incr`; `fresh` until the first trial with this `min` has computed Laux in full.
  let incr = incrementalOk(range), fresh = true;
  let sl = 0, sl2 = 0, sxl = 0, axl = 0;
  for (let is = 0; is <= 20; ++is) {
    iscale = fr(QKX2_C[is] / range);
    let same;
    if (incr && !fresh) {
      same = true;
      for (let i = 0; i < 32; ++i) {
        if (iscale < thr[i]) continue;
        const xmi = xm[i];
        let l = fr(fr(iscale * xmi) + 12582912) - 12582912;    // nearest_int: |t| < 2**21
        if (l > 15) l = 15;
        const lo = laux[i];
        thr[i] = l >= 15 ? Infinity : (l + 0.5) / xmi * QKX2_THR;
        if (l !== lo) {
          same = false;
          laux[i] = l;
          const d = l - lo, wi = w[i];
          sl += wi * d;
          sl2 += wi * (l * l - lo * lo);
          sxl += wx[i] * d;
          axl += wax[i] * d;
        }
      }
      if (same) continue;
    } else {
      same = prevValid;
      sl = 0; sl2 = 0; sxl = 0; axl = 0;
      for (let i = 0; i < 32; ++i) {
        let l = nearestInt(fr(iscale * xm[i]));
        l = l > 15 ? 15 : l < 0 ? 0 : l;
        if (l !== lprev[i]) same = false;
        laux[i] = l;
        const wl = w[i] * l;
        sl += wl;
        sl2 += wl * l;
        sxl += wx[i] * l;
        axl += wax[i] * l;
      }
      if (same) continue;
      for (let i = 0; i < 32; ++i) lprev[i] = laux[i];
      prevValid = true;
      if (incr) {
        fresh = false;
        for (let i = 0; i < 32; ++i) {
          const l = laux[i], xmi = xm[i];
          thr[i] = l >= 15 || !(xmi > 0) ? Infinity : (l + 0.5) / xmi * QKX2_THR;
        }
      }
    }
    const det = PR_AB * sl2 * sw64 - PR_C2 * sl * sl;
    if (det >= PR_DETMIN * sl2 * sw64) {
      const p = PR_B * sw64 * sxl * sxl - 2 * PR_C1 * sl * sxl * sx64 + PR_A * sl2 * sx64 * sx64;
      const pabs = PR_B * sw64 * axl * axl + 2 * PR_C1 * sl * axl * ax64 + PR_A * sl2 * ax64 * ax64;
      const c2det = PR_C2 / det;
      const lb = (g1 - c2det * p - PR_MARGIN * (g1 + c2det * pabs)) * PR_SHRINK - eta;
      if (lb >= bestError) { ++prunedTrials; continue; }
    }
    ++evaluatedTrials;
    let sumL = 0, sumL2 = 0, sumXL = 0;
    for (let i = 0; i < 32; ++i) {
      const l = laux[i];
      const wl = fr(w[i] * l);
      sumL = fr(sumL + wl);
      sumL2 = fr(sumL2 + fr(wl * l));
      sumXL = fr(sumXL + fr(wl * x[i]));
    }
    const D = fr(fr(sumW * sumL2) - fr(sumL * sumL));
    if (D > 0) {
      let thisScale = fr(fr(fr(sumW * sumXL) - fr(sumX * sumL)) / D);
      let thisMin = fr(fr(fr(sumL2 * sumX) - fr(sumL * sumXL)) / D);
      if (thisMin > 0) {
        thisMin = 0;
        thisScale = fr(sumXL / sumL2);
      }
      // The terms w diff^2 are >= 0 or NaN, so the running f32 sum never decreases (or
      // stays NaN): once it is not < best_error, the final one is not either.
      let curError = 0;
      for (let i = 0; i < 32; ++i) {
        let diff = fr(fr(fr(thisScale * laux[i]) + thisMin) - x[i]);
        diff = fr(diff * diff);
        curError = fr(curError + fr(w[i] * diff));
        if (!(curError < bestError)) break;
      }
      if (curError < bestError) {
        for (let i = 0; i < 32; ++i) L4[off + i] = laux[i];
        bestError = curError;
        scale = thisScale;
        min = thisMin;
        // C reuses `min`: later trials measure from the new one
        range = fr(max - min);
        for (let i = 0; i < 32; ++i) xm[i] = fr(x[i] - min);
        prevValid = false;
        incr = incrementalOk(range);
        fresh = true;
      }
    }
  }
  theMin = -min;
  return scale;
}

export function quantizeQ4K(src, dst, nBlocks) {
  if (src.length < nBlocks * 256 || dst.length < nBlocks * 144) throw new RangeError("quantizeQ4K: buffers too short");
  const x = QX, w = QW;
  for (let b = 0; b < nBlocks; ++b) {
    const xo = b * 256, yo = b * 144;
    let maxScale = 0, maxMin = 0;
    for (let j = 0; j < 8; ++j) {
      const o = xo + 32 * j;
      let sumX2 = 0;
      for (let l = 0; l < 32; ++l) {
        const v = src[o + l];
        x[l] = v;
        sumX2 = fr(sumX2 + fr(v * v));
      }
      const avX = fr(Math.sqrt(fr(sumX2 / 32)));
      for (let l = 0; l < 32; ++l) w[l] = fr(avX + Math.abs(x[l]));
      const scale = makeQkx2(32 * j);
      SC4[j] = scale;
      MN4[j] = theMin;
      if (scale > maxScale) maxScale = scale;
      if (theMin > maxMin) maxMin = theMin;
    }
    const invScale = maxScale > 0 ? fr(63 / maxScale) : 0;
    const invMin = maxMin > 0 ? fr(63 / maxMin) : 0;
    for (let j = 0; j < 8; ++j) {
      let ls = nearestInt(fr(invScale * SC4[j])) & 0xFF;      // uint8_t
      let lm = nearestInt(fr(invMin * MN4[j])) & 0xFF;
      LS4[j] = ls < 63 ? ls : 63;
      LM4[j] = lm < 63 ? lm : 63;
    }
    const d16 = fp32ToFp16(fr(maxScale / 63));
    const dmin16 = fp32ToFp16(fr(maxMin / 63));
    dst[yo] = d16 & 0xFF; dst[yo + 1] = d16 >>> 8;
    dst[yo + 2] = dmin16 & 0xFF; dst[yo + 3] = dmin16 >>> 8;
    for (let j = 0; j < 4; ++j) {
      dst[yo + 4 + j] = LS4[j] | ((LS4[j + 4] >> 4) << 6);
      dst[yo + 8 + j] = LM4[j] | ((LM4[j + 4] >> 4) << 6);
      dst[yo + 12 + j] = (LS4[j + 4] & 0xF) | ((LM4[j + 4] & 0xF) << 4);
    }
    const dh = fp16ToFp32(d16), dmh = fp16ToFp32(dmin16);
    for (let j = 0; j < 8; ++j) {
      const d = fr(dh * LS4[j]);
      if (d === 0) continue;                                    // C's `!d` (NaN goes on)
      const dm = fr(dmh * LM4[j]);
      const o = xo + 32 * j;
      for (let ii = 0; ii < 32; ++ii) {
        let l = nearestInt(fr(fr(src[o + ii] + dm) / d));
        L4[32 * j + ii] = l > 15 ? 15 : l < 0 ? 0 : l;
      }
    }
    let q = yo + 16;
    for (let j = 0; j < 256; j += 64) {
      for (let l = 0; l < 32; ++l) dst[q + l] = L4[j + l] | (L4[j + l + 32] << 4);
      q += 32;
    }
  }
}

// ---------------------------------------------------------------------------- Q6_K

const XQ = new Float64Array(16);
const WQ = new Float64Array(16);      // x*x
const WXQ = new Float64Array(16);     // (x*x)*x
const LT = new Int32Array(16);        // the trial's L (l, not l + 32)
const L6 = new Int32Array(256);       // L + 32
const SC6 = new Float64Array(16);
const Q8 = new Int32Array(16);
// -(nmax + 0.1f*is) for is = -9..9, nmax 32, in f32 (index is + 9)
const QX_C = new Float64Array(19);
for (let is = -9; is <= 9; ++is) QX_C[is + 9] = -fr(32 + fr(P01 * is));

// Pruning (exact): a trial updates only if fr(sumlx^2) > fr(best suml2). Every term
// fr(wx l) of sumlx has the sign of iscale or is 0 (wx = fr(fr(x^2) x) has x's sign, l
// has iscale x's), every term of suml2 is >= 0: so, with no overflow and no subnormal,
// the f32 sums are within (1 +- u)^18 (u = 2^-24: one or two product roundings, 15 sums)
// of the exact sums A = sum wx l, B = sum w l^2, and fr(sumlx^2) <= A^2 (1 + 2^-18),
// fr(best suml2) >= best B (1 - 2^-18). A and B are summed in f64 from exact products
// (l is an integer, |l| <= 32) and, incrementally, their changes (see Q6_THR), all of
// one sign, at most 16 + 16*33 of them: within 2^-43 relative. So
// A^2 (1 + 2^-16) < best B (1 - 2^-16) (f64, a few more 2^-53 roundings) implies no
// update. Range (`safe`): sum |x| <= 2^14 bounds every term and product far below
// 2^128; |max| >= 2^-20 makes every nonzero term normal (l != 0 needs
// |x| >= |max| / 66, so w >= 2^-54, wx >= 2^-81), |sumlx| >= |wx_max| 31 and
// best B > 2^-100 keeps fr(best suml2) normal; NaN/Inf fail the range test.
//
// Incremental L (exact), when `safe`: |t| = |fr(iscale x)| <= fr(fr(32.9/|max|) |max|)
// < 2^21, so nearest_int is fr(t + 12582912) - 12582912. From trial k = 0 on, |iscale| =
// fr(|C_k| / |max|) does not decrease (|QX_C| grows; trial 9 is skipped, the initial L
// is not in the sequence), so |l| = min(nearest(|t|), 31 or 32 by the sign of t) does
// not decrease (fr, rounding monotone; l keeps the sign of iscale x), and it cannot
// change while |iscale| < thr = fl(fl((|l| + 1/2) / |x|) (1 - 2^-20)) (then
// |iscale x| < (|l| + 1/2)(1 - 2^-21), |t| < |l| + 1/2). Trial 0 is computed in full;
// later ones recompute (exactly) only the elements with |iscale| >= thr. The changes
// wx dl and w d(l^2) have the signs of A's and B's terms.
const Q6_UP = 1 + 2 ** -16;
const Q6_DN = 1 - 2 ** -16;
const Q6_TINY = 2 ** -100;
const Q6_SAFE_MIN = 2 ** -20;
const Q6_THR = 1 - 2 ** -20;
const THR6 = new Float64Array(16);
for (let k = 1; k < 19; ++k) if (!(QX_C[k] < QX_C[k - 1])) throw new Error("kquants: |QX_C| must grow");

/** make_qx_quants(16, 32, XQ, L6 + off, 1, NULL). */
function makeQx(off) {
  const x = XQ, w = WQ, wx = WXQ, lt = LT, thr = THR6;
  let max = 0, amax = 0, sa = 0;
  for (let i = 0; i < 16; ++i) {
    const ax = Math.abs(x[i]);
    sa += ax;                                                   // NaN, Inf propagate
    if (ax > amax) { amax = ax; max = x[i]; }
  }
  const safe = sa <= 16384 && amax >= Q6_SAFE_MIN;              // see Q6_UP
  if (amax < GROUP_MAX_EPS) {
    for (let i = 0; i < 16; ++i) L6[off + i] = 0;
    return 0;
  }
  let iscale = fr(-32 / max);
  let sumlx = 0, suml2 = 0;
  for (let i = 0; i < 16; ++i) {
    let l = nearestInt(fr(iscale * x[i]));
    l = l > 31 ? 31 : l < -32 ? -32 : l;
    L6[off + i] = l + 32;
    lt[i] = l;
    sumlx = fr(sumlx + fr(wx[i] * l));
    suml2 = fr(suml2 + fr(fr(w[i] * l) * l));
  }
  let scale = suml2 !== 0 ? fr(sumlx / suml2) : 0;           // C's `suml2 ?` (NaN is true)
  let best = fr(scale * sumlx);
  let a = 0, b = 0;                                             // f64 A, B (see Q6_UP)
  for (let k = 0; k < 19; ++k) {
    if (k === 9) continue;
    iscale = fr(QX_C[k] / max);
    // A trial whose L equals the previous one's has the same sums: it either does not
    // update or rewrites the same L, scale and best, so skipping it changes nothing.
    let same = true;
    if (!safe) {
      for (let i = 0; i < 16; ++i) {
        let l = nearestInt(fr(iscale * x[i]));
        l = l > 31 ? 31 : l < -32 ? -32 : l;
        if (l !== lt[i]) { same = false; lt[i] = l; }
      }
    } else if (k === 0) {
      a = 0; b = 0;
      for (let i = 0; i < 16; ++i) {
        let l = fr(fr(iscale * x[i]) + 12582912) - 12582912;    // nearest_int: |t| < 2^21
        l = l > 31 ? 31 : l < -32 ? -32 : l;
        if (l !== lt[i]) { same = false; lt[i] = l; }
        a += wx[i] * l;
        b += w[i] * l * l;
        const al = l < 0 ? -l : l, axi = Math.abs(x[i]);
        thr[i] = al >= (l < 0 ? 32 : 31) || axi === 0 ? Infinity : (al + 0.5) / axi * Q6_THR;
      }
    } else {
      const g = Math.abs(iscale);
      for (let i = 0; i < 16; ++i) {
        if (g < thr[i]) continue;
        let l = fr(fr(iscale * x[i]) + 12582912) - 12582912;
        l = l > 31 ? 31 : l < -32 ? -32 : l;
        const al = l < 0 ? -l : l;
        thr[i] = al >= (l < 0 ? 32 : 31) ? Infinity : (al + 0.5) / Math.abs(x[i]) * Q6_THR;
        const lo = lt[i];
        if (l !== lo) {
          same = false;
          lt[i] = l;
          a += wx[i] * (l - lo);
          b += w[i] * (l * l - lo * lo);
        }
      }
    }
    if (same) continue;
    if (safe) {
      const bb = best * b;
      if (a * a * Q6_UP < bb * Q6_DN && bb > Q6_TINY) continue;
    }
    sumlx = 0; suml2 = 0;
    for (let i = 0; i < 16; ++i) {
      const l = lt[i];
      sumlx = fr(sumlx + fr(wx[i] * l));
      suml2 = fr(suml2 + fr(fr(w[i] * l) * l));
    }
    if (suml2 > 0 && fr(sumlx * sumlx) > fr(best * suml2)) {
      for (let i = 0; i < 16; ++i) L6[off + i] = lt[i] + 32;
      scale = fr(sumlx / suml2);
      best = fr(scale * sumlx);
    }
  }
  return scale;
}

export function quantizeQ6K(src, dst, nBlocks) {
  if (src.length < nBlocks * 256 || dst.length < nBlocks * 210) throw new RangeError("quantizeQ6K: buffers too short");
  const x = XQ, w = WQ, wx = WXQ;
  for (let b = 0; b < nBlocks; ++b) {
    const xo = b * 256, yo = b * 210;
    let maxScale = 0, maxAbsScale = 0;
    for (let ib = 0; ib < 16; ++ib) {
      const o = xo + 16 * ib;
      for (let i = 0; i < 16; ++i) {
        const v = src[o + i];
        x[i] = v;
        const wi = fr(v * v);
        w[i] = wi;
        wx[i] = fr(wi * v);
      }
      const scale = makeQx(16 * ib);
      SC6[ib] = scale;
      const a = Math.abs(scale);
      if (a > maxAbsScale) { maxAbsScale = a; maxScale = scale; }
    }
    if (maxAbsScale < GROUP_MAX_EPS) {
      dst.fill(0, yo, yo + 210);                                // fp16(0.f) is 0 too
      continue;
    }
    const iscale = fr(-128 / maxScale);
    const d16 = fp32ToFp16(fr(1 / iscale));
    for (let ib = 0; ib < 16; ++ib) {
      const q = nearestInt(fr(iscale * SC6[ib]));
      Q8[ib] = ((q < 127 ? q : 127) << 24) >> 24;               // int8_t
      dst[yo + 192 + ib] = Q8[ib] & 0xFF;
    }
    dst[yo + 208] = d16 & 0xFF; dst[yo + 209] = d16 >>> 8;
    const dh = fp16ToFp32(d16);
    for (let j = 0; j < 16; ++j) {
      const d = fr(dh * Q8[j]);
      if (d === 0) continue;
      const o = xo + 16 * j;
      for (let ii = 0; ii < 16; ++ii) {
        let l = nearestInt(fr(src[o + ii] / d));
        l = l > 31 ? 31 : l < -32 ? -32 : l;
        L6[16 * j + ii] = l + 32;
      }
    }
    for (let j = 0, ql = yo, qh = yo + 128; j < 256; j += 128, ql += 64, qh += 32) {
      for (let l = 0; l < 32; ++l) {
        const a = L6[j + l], bb = L6[j + l + 32], c = L6[j + l + 64], e = L6[j + l + 96];
        dst[ql + l] = (a & 0xF) | ((c & 0xF) << 4);
        dst[ql + l + 32] = (bb & 0xF) | ((e & 0xF) << 4);
        dst[qh + l] = (a >> 4) | ((bb >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6);
      }
    }
  }
}
