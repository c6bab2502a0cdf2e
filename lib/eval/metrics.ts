/**
 * Classification metrics of the original tool (`training/metrics.py`), reproducing
 * scikit-learn 1.2 (`roc_auc_score`, `roc_curve`, `f1_score`) and numpy (`np.mean`, pairwise
 * summation, first-maximum `argmax`) to the last bit where practical, plus torch's `BCELoss`.
 *
 * 2-D data (rows = images, columns = the 14 classes) is a {@link Matrix}: a row-major flat
 * array with its `rows` and `cols`. A `Float32Array` keeps float32 semantics (as the original's
 * float32 torch predictions do: ROC thresholds are float32 values); `number[][]` rows are also
 * accepted wherever a {@link Matrix2D} is and are read as float64.
 * @module
 */

import { LABELS, NUM_CLASSES } from "../../config.ts";
import { UserError } from "../util/errors.ts";

/** A row-major 2-D array: `data[r * cols + c]` is row (image) `r`, column (class) `c`. */
export interface Matrix {
  readonly rows: number;
  readonly cols: number;
  readonly data: ArrayLike<number>;
}

/** Anything the per-class helpers accept: a {@link Matrix} or an array of equal-length rows. */
export type Matrix2D = Matrix | ArrayLike<ArrayLike<number>>;

/** An ROC curve as sklearn 1.2's `roc_curve` returns it. */
export interface RocCurve {
  fpr: Float64Array;
  tpr: Float64Array;
  thresholds: Float64Array;
}

/** The Youden-optimal threshold of one class, and whether it fell back to 0.5. */
export interface YoudenResult {
  /** The threshold to use: `thresholds[argmax(tpr − fpr)]`, or 0.5 after a fallback. */
  threshold: number;
  /** True when the threshold was replaced by 0.5 (computed value ≥ 1, or one label value). */
  fellBack: boolean;
  /** The computed threshold before any fallback; NaN when only one label value is present. */
  computed: number;
}

/** Threshold used instead of a useless (≥ 1) or undefined one, as the original tool does. */
export const FALLBACK_THRESHOLD = 0.5;

// ---------------------------------------------------------------------------------------------
// numpy building blocks

/**
 * Sum as numpy's `add.reduce` on a contiguous float64 array (pairwise summation, 8-way unrolled
 * blocks of at most 128), so means and areas round exactly like numpy's.
 */
export function pairwiseSum(a: ArrayLike<number>, start = 0, n = a.length - start): number {
  if (n < 8) {
    let res = -0;
    for (let i = start; i < start + n; i++) res += a[i];
    return res;
  }
  if (n <= 128) {
    let r0 = a[start], r1 = a[start + 1], r2 = a[start + 2], r3 = a[start + 3];
    let r4 = a[start + 4], r5 = a[start + 5], r6 = a[start + 6], r7 = a[start + 7];
    const end8 = n - (n % 8);
    let i = 8;
    for (; i < end8; i += 8) {
      const j = start + i;
      r0 += a[j];
      r1 += a[j + 1];
      r2 += a[j + 2];
      r3 += a[j + 3];
      r4 += a[j + 4];
      r5 += a[j + 5];
      r6 += a[j + 6];
      r7 += a[j + 7];
    }
    let res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7));
    for (; i < n; i++) res += a[start + i];
    return res;
  }
  let n2 = Math.floor(n / 2);
  n2 -= n2 % 8;
  return pairwiseSum(a, start, n2) + pairwiseSum(a, start + n2, n - n2);
}

/** `np.mean`: NaN if any value is NaN or the input is empty. */
export function mean(values: ArrayLike<number>): number {
  if (values.length === 0) return NaN;
  return (0 + pairwiseSum(values)) / values.length;
}

/** `np.nanmean`: the mean over the defined (non-NaN) values; NaN when there are none. */
export function nanMean(values: ArrayLike<number>): number {
  const zeroed = new Float64Array(values.length);
  let count = 0;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (!Number.isNaN(v)) {
      zeroed[i] = v;
      count++;
    }
  }
  return count === 0 ? NaN : (0 + pairwiseSum(zeroed)) / count;
}

// ---------------------------------------------------------------------------------------------
// ROC curve and AUROC (one class)

function checkSameLength(labels: ArrayLike<unknown>, scores: ArrayLike<unknown>): void {
  if (labels.length !== scores.length) {
    throw new RangeError(
      `labels (${labels.length}) and scores (${scores.length}) differ in length`,
    );
  }
}

function allFinite(scores: ArrayLike<number>): boolean {
  for (let i = 0; i < scores.length; i++) if (!Number.isFinite(scores[i])) return false;
  return true;
}

/**
 * sklearn's `_binary_clf_curve` plus `roc_curve`'s intermediate-point dropping: false and true
 * positive counts at each distinct score, highest score first.
 */
function countsAtThresholds(
  positive: (i: number) => boolean,
  scores: ArrayLike<number>,
  dropIntermediate: boolean,
): { fps: Float64Array; tps: Float64Array; thr: Float64Array } {
  const n = scores.length;
  // Ties need no stable order: counts are read only at the last index of each distinct score.
  const order = new Uint32Array(n);
  for (let i = 0; i < n; i++) order[i] = i;
  order.sort((a, b) => scores[b] - scores[a]);

  let fps = new Float64Array(n);
  let tps = new Float64Array(n);
  let thr = new Float64Array(n);
  let m = 0;
  let tp = 0;
  for (let k = 0; k < n; k++) {
    const i = order[k];
    if (positive(i)) tp++;
    const s = scores[i];
    if (k === n - 1 || scores[order[k + 1]] !== s) {
      tps[m] = tp;
      fps[m] = k + 1 - tp;
      thr[m] = s;
      m++;
    }
  }
  fps = fps.subarray(0, m);
  tps = tps.subarray(0, m);
  thr = thr.subarray(0, m);

  if (dropIntermediate && m > 2) {
    // Keep the ends and every corner (non-zero second difference of fps or tps).
    let w = 1;
    for (let j = 1; j < m - 1; j++) {
      const corner = fps[j + 1] - 2 * fps[j] + fps[j - 1] !== 0 ||
        tps[j + 1] - 2 * tps[j] + tps[j - 1] !== 0;
      if (corner) {
        fps[w] = fps[j];
        tps[w] = tps[j];
        thr[w] = thr[j];
        w++;
      }
    }
    fps[w] = fps[m - 1];
    tps[w] = tps[m - 1];
    thr[w] = thr[m - 1];
    w++;
    fps = fps.subarray(0, w);
    tps = tps.subarray(0, w);
    thr = thr.subarray(0, w);
  }
  return { fps, tps, thr };
}

function rocFromCounts(
  c: { fps: Float64Array; tps: Float64Array; thr: Float64Array },
  float32: boolean,
): RocCurve {
  const m = c.fps.length + 1;
  const fpr = new Float64Array(m);
  const tpr = new Float64Array(m);
  const thresholds = new Float64Array(m);
  // The extra leading point makes the curve start at (0, 0); sklearn 1.2 gives it the
  // threshold max + 1, computed in the scores' precision (float32 for float32 scores).
  const first = c.thr[0] + 1;
  thresholds[0] = float32 ? Math.fround(first) : first;
  thresholds.set(c.thr, 1);
  const fpsLast = c.fps[c.fps.length - 1];
  const tpsLast = c.tps[c.tps.length - 1];
  for (let j = 0; j < m; j++) {
    const fp = j === 0 ? 0 : c.fps[j - 1];
    const tp = j === 0 ? 0 : c.tps[j - 1];
    // No negatives (or no positives): sklearn warns and returns an all-NaN rate.
    fpr[j] = fpsLast > 0 ? fp / fpsLast : NaN;
    tpr[j] = tpsLast > 0 ? tp / tpsLast : NaN;
  }
  return { fpr, tpr, thresholds };
}

/**
 * The ROC curve exactly as scikit-learn **1.2**'s `roc_curve(labels, scores, pos_label=1,
 * drop_intermediate=True)`: one point per distinct score (collinear points dropped), highest
 * threshold first, preceded by the point (0, 0) whose threshold is `max(scores) + 1` — the 1.2
 * convention; sklearn ≥ 1.3 uses `+inf` there. With a `Float32Array` of scores that first
 * threshold is rounded to float32, like numpy does. A rate is all NaN when its class is absent.
 * Positive means `label === 1`. Throws a `UserError` on NaN/infinite scores, a `RangeError` on
 * empty input or mismatched lengths.
 */
export function rocCurve(
  labels: ArrayLike<number>,
  scores: ArrayLike<number>,
  { dropIntermediate = true }: { dropIntermediate?: boolean } = {},
): RocCurve {
  checkSameLength(labels, scores);
  if (scores.length === 0) throw new RangeError("cannot compute an ROC curve of no samples");
  if (!allFinite(scores)) {
    throw new UserError(
      "cannot compute an ROC curve: the predictions contain NaN or infinite values " +
        "(did training diverge?)",
    );
  }
  const counts = countsAtThresholds((i) => labels[i] === 1, scores, dropIntermediate);
  return rocFromCounts(counts, scores instanceof Float32Array);
}

/**
 * Area under the ROC curve, exactly as scikit-learn 1.2's `roc_auc_score` for binary labels:
 * the trapezoidal area (numpy `trapz`, pairwise-summed) of the `drop_intermediate` ROC curve,
 * so tied scores count half. The positive class is the larger of the two label values. NaN
 * where sklearn raises and the original tool stores NaN: fewer or more than two distinct label
 * values, or NaN/infinite scores. O(n log n).
 */
export function auroc(labels: ArrayLike<number>, scores: ArrayLike<number>): number {
  checkSameLength(labels, scores);
  let a = NaN, b = NaN;
  for (let i = 0; i < labels.length; i++) {
    const v = labels[i];
    if (Number.isNaN(a) || v === a) a = v;
    else if (Number.isNaN(b) || v === b) b = v;
    else return NaN; // a third value: sklearn sees a multiclass target
  }
  if (Number.isNaN(a) || Number.isNaN(b) || !allFinite(scores)) return NaN;
  const pos = Math.max(a, b);
  const { fps, tps } = countsAtThresholds((i) => labels[i] === pos, scores, true);
  const m = fps.length + 1;
  const fpsLast = fps[fps.length - 1];
  const tpsLast = tps[tps.length - 1];
  // trapz: d * (y[1:] + y[:-1]) / 2.0, evaluated left to right, then add.reduce.
  const terms = new Float64Array(m - 1);
  let prevX = 0, prevY = 0;
  for (let j = 1; j < m; j++) {
    const x = fps[j - 1] / fpsLast;
    const y = tps[j - 1] / tpsLast;
    terms[j - 1] = (x - prevX) * (y + prevY) / 2.0;
    prevX = x;
    prevY = y;
  }
  return 0 + pairwiseSum(terms);
}

// ---------------------------------------------------------------------------------------------
// Thresholds and F1 (one class)

/**
 * The original tool's per-class threshold: `thresholds[argmax(tpr − fpr)]` of the sklearn 1.2
 * ROC curve (Youden's J, first maximum as numpy's `argmax`). A threshold ≥ 1 — which means no
 * score beats chance, since it lies above every prediction — falls back to 0.5, as the original
 * does. With one label value only (no positives or no negatives) J is undefined: the threshold
 * is 0.5, a fallback (the original reaches 0.5 too for scores in [0, 1], through NaN → index 0
 * → max + 1 ≥ 1). Empty input is treated the same way. NaN/infinite scores throw a
 * `UserError` (the original crashes there).
 */
export function youdenThreshold(
  labels: ArrayLike<number>,
  scores: ArrayLike<number>,
): YoudenResult {
  checkSameLength(labels, scores);
  let hasPos = false, hasNeg = false;
  for (let i = 0; i < labels.length; i++) {
    if (labels[i] === 1) hasPos = true;
    else hasNeg = true;
  }
  if (!hasPos || !hasNeg) return { threshold: FALLBACK_THRESHOLD, fellBack: true, computed: NaN };
  const { fpr, tpr, thresholds } = rocCurve(labels, scores);
  let best = 0;
  let bestJ = tpr[0] - fpr[0];
  for (let j = 1; j < fpr.length; j++) {
    const jj = tpr[j] - fpr[j];
    if (jj > bestJ) {
      best = j;
      bestJ = jj;
    }
  }
  const computed = thresholds[best];
  return computed >= 1
    ? { threshold: FALLBACK_THRESHOLD, fellBack: true, computed }
    : { threshold: computed, fellBack: false, computed };
}

/**
 * F1 of the positive class (label 1) as scikit-learn 1.2's
 * `f1_score(labels, predicted, labels=[1, 0], zero_division=0)` (binary average): 0 when there
 * are no true positives, including when nothing is predicted or nothing is positive.
 * `predictedPositive[i]` is a decision: `true` or `1` means positive.
 */
export function f1(
  labels: ArrayLike<number>,
  predictedPositive: ArrayLike<number | boolean>,
): number {
  checkSameLength(labels, predictedPositive);
  let tp = 0, predSum = 0, trueSum = 0;
  for (let i = 0; i < labels.length; i++) {
    const p = predictedPositive[i] === true || predictedPositive[i] === 1;
    const t = labels[i] === 1;
    if (p) predSum++;
    if (t) trueSum++;
    if (p && t) tp++;
  }
  return f1FromCounts(tp, predSum, trueSum);
}

/** sklearn's arithmetic: precision and recall first (0 on 0/0), then 2·p·r / (p + r). */
function f1FromCounts(tp: number, predSum: number, trueSum: number): number {
  const precision = predSum === 0 ? 0 : tp / predSum;
  const recall = trueSum === 0 ? 0 : tp / trueSum;
  const denom = precision + recall;
  return (2 * precision) * recall / (denom === 0 ? 1 : denom);
}

/** {@link f1} of the decisions `score > threshold` (the original's `predictions > thresholds`). */
export function f1AtThreshold(
  labels: ArrayLike<number>,
  scores: ArrayLike<number>,
  threshold: number,
): number {
  checkSameLength(labels, scores);
  let tp = 0, predSum = 0, trueSum = 0;
  for (let i = 0; i < labels.length; i++) {
    const p = scores[i] > threshold;
    const t = labels[i] === 1;
    if (p) predSum++;
    if (t) trueSum++;
    if (p && t) tp++;
  }
  return f1FromCounts(tp, predSum, trueSum);
}

// ---------------------------------------------------------------------------------------------
// 2-D data, per class

function isMatrix(x: unknown): x is Matrix {
  return typeof x === "object" && x !== null && "rows" in x && "cols" in x && "data" in x;
}

/** Number of dimensions of `x` as numpy would see it (0 for anything not array-like). */
function ndim(x: unknown): number {
  if (isMatrix(x)) return 2;
  if (typeof x !== "object" || x === null || !("length" in x)) return 0;
  const a = x as ArrayLike<unknown>;
  if (a.length === 0 || typeof a[0] === "number") return 1;
  const first = a[0];
  return typeof first === "object" && first !== null && "length" in first ? 2 : 1;
}

/** A row-major {@link Matrix} over `data` (not copied); `rows` is `data.length / cols`. */
export function matrix(data: ArrayLike<number>, cols: number): Matrix {
  if (!Number.isInteger(cols) || cols <= 0 || data.length % cols !== 0) {
    throw new RangeError(`cannot view ${data.length} values as rows of ${cols} columns`);
  }
  return { rows: data.length / cols, cols, data };
}

/** Converts `number[][]` rows to a float64 {@link Matrix}; a Matrix is returned as is. */
export function toMatrix(x: Matrix2D, what = "array"): Matrix {
  if (isMatrix(x)) {
    if (x.data.length !== x.rows * x.cols) {
      throw new UserError(
        `${what}: holds ${x.data.length} values, not rows × cols = ${x.rows} × ${x.cols}`,
      );
    }
    return x;
  }
  const rows = x.length;
  const cols = rows === 0 ? 0 : x[0].length;
  const data = new Float64Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    const row = x[r];
    if (row.length !== cols) {
      throw new UserError(
        `${what}: row ${r} has ${row.length} values, row 0 has ${cols}; expected equal-length rows`,
      );
    }
    for (let c = 0; c < cols; c++) data[r * cols + c] = row[c];
  }
  return { rows, cols, data };
}

/** Column `c` of `m`, copied; float32 data stays float32. */
export function column(m: Matrix, c: number): Float32Array | Float64Array {
  const out = m.data instanceof Float32Array ? new Float32Array(m.rows) : new Float64Array(m.rows);
  for (let r = 0; r < m.rows; r++) out[r] = m.data[r * m.cols + c];
  return out;
}

/**
 * The original's `check_input`: labels and predictions must both be 2-D (images × classes),
 * have `numClasses` columns and the same number of rows. Throws a one-line `UserError`
 * otherwise; returns both as {@link Matrix}.
 */
export function checkInput(
  labels: Matrix2D | ArrayLike<number>,
  predictions: Matrix2D | ArrayLike<number>,
  numClasses: number = NUM_CLASSES,
): { labels: Matrix; predictions: Matrix } {
  const dl = ndim(labels), dp = ndim(predictions);
  if (dl !== 2 || dp !== 2) {
    throw new UserError(
      `expected labels and predictions as 2-D arrays (images × classes), got ${dl} and ${dp} ` +
        `dimensions`,
    );
  }
  const l = toMatrix(labels as Matrix2D, "labels");
  const p = toMatrix(predictions as Matrix2D, "predictions");
  if (l.cols !== numClasses || p.cols !== numClasses) {
    throw new UserError(
      `expected labels and predictions with ${numClasses} classes each, got ${l.cols} and ` +
        `${p.cols}`,
    );
  }
  if (l.rows !== p.rows) {
    throw new UserError(
      `expected labels and predictions for the same number of images, got ${l.rows} and ` +
        `${p.rows}`,
    );
  }
  return { labels: l, predictions: p };
}

/** The original's `calculate_auroc`: {@link auroc} per class, NaN for a single-valued class. */
export function aurocPerClass(
  labels: Matrix2D,
  predictions: Matrix2D,
  numClasses: number = NUM_CLASSES,
): Float64Array {
  const { labels: l, predictions: p } = checkInput(labels, predictions, numClasses);
  const out = new Float64Array(numClasses);
  for (let c = 0; c < numClasses; c++) out[c] = auroc(column(l, c), column(p, c));
  return out;
}

/**
 * The original's `calculate_f1` per class. With `thresholds`, the decision is
 * `prediction > thresholds[c]` (what the original does before calling it); without, the
 * predictions are already decisions (1 = positive).
 */
export function f1PerClass(
  labels: Matrix2D,
  predictions: Matrix2D,
  thresholds?: ArrayLike<number>,
  numClasses: number = NUM_CLASSES,
): Float64Array {
  const { labels: l, predictions: p } = checkInput(labels, predictions, numClasses);
  if (thresholds !== undefined && thresholds.length !== numClasses) {
    throw new UserError(`expected ${numClasses} thresholds, got ${thresholds.length}`);
  }
  const out = new Float64Array(numClasses);
  for (let c = 0; c < numClasses; c++) {
    const lc = column(l, c), pc = column(p, c);
    out[c] = thresholds === undefined ? f1(lc, pc) : f1AtThreshold(lc, pc, thresholds[c]);
  }
  return out;
}

/**
 * The original's `get_thresholds`: {@link youdenThreshold} per class. Each fallback to 0.5 is
 * reported through `warn` (default `console.warn`, i.e. stderr) with the original's wording and
 * the class name (so a caller can say each class's warning once per run).
 */
export function youdenThresholds(
  labels: Matrix2D,
  scores: Matrix2D,
  classNames: readonly string[] = LABELS,
  warn: (message: string, className: string) => void = (m) => console.warn(m),
): Float64Array {
  const numClasses = classNames.length;
  const { labels: l, predictions: p } = checkInput(labels, scores, numClasses);
  const out = new Float64Array(numClasses);
  for (let c = 0; c < numClasses; c++) {
    const r = youdenThreshold(column(l, c), column(p, c));
    out[c] = r.threshold;
    if (!r.fellBack) continue;
    if (Number.isNaN(r.computed)) {
      warn(
        `Warning: Optimal threshold for ${classNames[c]} is undefined (only one label value ` +
          `present). Using ${FALLBACK_THRESHOLD} as threshold instead.`,
        classNames[c],
      );
    } else {
      warn(
        `Warning: Optimal calculated threshold for ${classNames[c]} is ` +
          `${r.computed.toFixed(4)}. Using ${FALLBACK_THRESHOLD} as threshold instead.`,
        classNames[c],
      );
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Loss

/**
 * Mean binary cross-entropy as `torch.nn.BCELoss()` (each log clamped at −100), computed in
 * float64 on host arrays of equal length (flattened 2-D data works as is). Probabilities must
 * lie in [0, 1] (torch raises otherwise; this throws a `RangeError`). NaN for empty input.
 */
export function bceLoss(labels: ArrayLike<number>, probs: ArrayLike<number>): number {
  checkSameLength(labels, probs);
  const terms = new Float64Array(probs.length);
  for (let i = 0; i < probs.length; i++) {
    const x = probs[i], y = labels[i];
    if (!(x >= 0 && x <= 1)) {
      throw new RangeError(`BCE: probability ${x} at index ${i} is outside [0, 1]`);
    }
    terms[i] = (y - 1) * Math.max(Math.log1p(-x), -100) - y * Math.max(Math.log(x), -100);
  }
  return mean(terms);
}
