/**
 * DeLong's test for the difference of two correlated AUROCs (two models scored on the same
 * images), with the fast algorithm of Sun & Xu (2014, IEEE Signal Processing Letters 21(11)):
 * the structural components come from midranks, O(n log n) instead of DeLong's O(m·n). No tfjs.
 * @module
 */

/** 1-based midranks of `values` (tied values share the mean of their ranks). */
export function midranks(values: ArrayLike<number>): Float64Array {
  const n = values.length;
  const order = new Uint32Array(n);
  for (let i = 0; i < n; i++) order[i] = i;
  order.sort((a, b) => values[a] - values[b]);
  const out = new Float64Array(n);
  let i = 0;
  while (i < n) {
    let j = i;
    while (j + 1 < n && values[order[j + 1]] === values[order[i]]) j++;
    const rank = (i + j) / 2 + 1;
    for (let k = i; k <= j; k++) out[order[k]] = rank;
    i = j + 1;
  }
  return out;
}

/** The AUROC of one model and its DeLong structural components V10 (positives), V01 (negatives). */
function components(pos: Float64Array, neg: Float64Array) {
  const m = pos.length, n = neg.length;
  const tx = midranks(pos), ty = midranks(neg);
  const z = new Float64Array(m + n);
  z.set(pos);
  z.set(neg, m);
  const tz = midranks(z);
  let sumPos = 0;
  for (let i = 0; i < m; i++) sumPos += tz[i];
  const auc = (sumPos - m * (m + 1) / 2) / (m * n);
  const v10 = new Float64Array(m), v01 = new Float64Array(n);
  for (let i = 0; i < m; i++) v10[i] = (tz[i] - tx[i]) / n;
  for (let j = 0; j < n; j++) v01[j] = 1 - (tz[m + j] - ty[j]) / m;
  return { auc, v10, v01 };
}

/** Sample covariance (ddof 1, as `np.cov`) of two equal-length vectors. */
function cov(a: Float64Array, b: Float64Array): number {
  const n = a.length;
  let ma = 0, mb = 0;
  for (let i = 0; i < n; i++) {
    ma += a[i];
    mb += b[i];
  }
  ma /= n;
  mb /= n;
  let s = 0;
  for (let i = 0; i < n; i++) s += (a[i] - ma) * (b[i] - mb);
  return s / (n - 1);
}

/** Complementary error function (Numerical Recipes' `erfcc`: relative error below 1.2e-7). */
export function erfc(x: number): number {
  const z = Math.abs(x);
  const t = 1 / (1 + 0.5 * z);
  const r = t * Math.exp(
    -z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806 +
                      t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 +
                                      t * 0.17087277)))))))),
  );
  return x >= 0 ? r : 2 - r;
}

/** Standard normal quantile (Acklam's rational approximation, relative error below 1.2e-9). */
export function normalQuantile(p: number): number {
  if (!(p > 0 && p < 1)) return p === 0 ? -Infinity : p === 1 ? Infinity : NaN;
  const a = [
    -39.69683028665376,
    220.9460984245205,
    -275.9285104469687,
    138.3577518672690,
    -30.66479806614716,
    2.506628277459239,
  ];
  const b = [
    -54.47609879822406,
    161.5858368580409,
    -155.6989798598866,
    66.80131188771972,
    -13.28068155288572,
  ];
  const c = [
    -0.007784894002430293,
    -0.3223964580411365,
    -2.400758277161838,
    -2.549732539343734,
    4.374664141464968,
    2.938163982698783,
  ];
  const d = [0.007784695709041462, 0.3224671290700398, 2.445134137142996, 3.754408661907416];
  const lowTail = 0.02425;
  if (p < lowTail || p > 1 - lowTail) {
    const q = Math.sqrt(-2 * Math.log(p < lowTail ? p : 1 - p));
    const x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
      ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
    return p < lowTail ? x : -x;
  }
  const q = p - 0.5, r = q * q;
  return (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q /
    (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
}

/** DeLong's comparison of two AUROCs on the same images. */
export interface DeLongResult {
  aurocA: number;
  aurocB: number;
  /** A − B. */
  diff: number;
  /** Standard error of the difference. */
  se: number;
  /** Normal interval of the difference at the requested level. */
  ci: [number, number];
  /** Two-sided p-value of "the two AUROCs are equal". */
  pValue: number;
}

/**
 * DeLong's test of AUROC(A) − AUROC(B) for one class: `labels` 0/1 (positive: 1), `scoresA` and
 * `scoresB` the two models' scores on the same images. Everything NaN when the labels hold a
 * single value; the interval and p-value NaN with a single positive or negative image (no
 * variance estimate); a zero variance (identical rankings) gives the interval [diff, diff] and
 * p = 1 when diff is 0.
 */
export function delongTest(
  labels: ArrayLike<number>,
  scoresA: ArrayLike<number>,
  scoresB: ArrayLike<number>,
  ci = 0.95,
): DeLongResult {
  const split = (s: ArrayLike<number>) => {
    const pos: number[] = [], neg: number[] = [];
    for (let i = 0; i < labels.length; i++) (labels[i] === 1 ? pos : neg).push(s[i]);
    return { pos: Float64Array.from(pos), neg: Float64Array.from(neg) };
  };
  const sa = split(scoresA), sb = split(scoresB);
  const m = sa.pos.length, n = sa.neg.length;
  if (m === 0 || n === 0) {
    return { aurocA: NaN, aurocB: NaN, diff: NaN, se: NaN, ci: [NaN, NaN], pValue: NaN };
  }
  const a = components(sa.pos, sa.neg), b = components(sb.pos, sb.neg);
  const diff = a.auc - b.auc;
  if (m < 2 || n < 2) {
    // One positive (or negative) image: its components have no sample covariance, so the
    // variance is unknown; a test would claim certainty it does not have.
    return { aurocA: a.auc, aurocB: b.auc, diff, se: NaN, ci: [NaN, NaN], pValue: NaN };
  }
  // Var(A − B) = (S10_aa + S10_bb − 2 S10_ab)/m + (S01_aa + S01_bb − 2 S01_ab)/n.
  const part = (x: Float64Array, y: Float64Array, k: number) =>
    (cov(x, x) + cov(y, y) - 2 * cov(x, y)) / k;
  const variance = Math.max(0, part(a.v10, b.v10, m) + part(a.v01, b.v01, n));
  const se = Math.sqrt(variance);
  const zq = normalQuantile((1 + ci) / 2);
  let pValue: number;
  if (se === 0) pValue = diff === 0 ? 1 : 0;
  else pValue = erfc(Math.abs(diff / se) / Math.SQRT2);
  return {
    aurocA: a.auc,
    aurocB: b.auc,
    diff,
    se,
    ci: [diff - zq * se, diff + zq * se],
    pValue,
  };
}
