/**
 * Bootstrap confidence intervals of per-class AUROC (and F1) over a test set, resampled by
 * patient: NIH has many images per patient, and images of one patient are not independent, so
 * a resample draws patients with replacement and takes all of each drawn patient's images.
 *
 * Speed: each class is sorted once; a resample is then scored from per-image multiplicities in
 * one O(n) pass per class (the Mann–Whitney form of the AUROC, ties counted half, which is the
 * trapezoidal area scikit-learn computes). No tfjs here, like metrics.ts.
 * @module
 */
import type { Matrix } from "./metrics.ts";
import type { Rng } from "../util/rng.ts";

/** How images are grouped into resampling units. */
export interface ResampleUnits {
  /** "patient" when keys carry a patient prefix (`00000001_000` → `00000001`), else "image". */
  unit: "patient" | "image";
  /** Number of units (patients, or images). */
  count: number;
  /** Unit index of each image. */
  unitOf: Int32Array;
}

/**
 * Groups images by patient: the key's prefix before its first `_`. A key without `_` is a unit
 * of its own (resampled by image); when no key has one, the unit is "image".
 */
export function resampleUnits(keys: readonly string[]): ResampleUnits {
  const ids = new Map<string, number>();
  const unitOf = new Int32Array(keys.length);
  let prefixed = false;
  keys.forEach((key, i) => {
    const cut = key.indexOf("_");
    if (cut > 0) prefixed = true;
    // The NUL cannot occur in a key, so an image-unit never meets a patient-unit.
    const id = cut > 0 ? key.slice(0, cut) : `\0${i}`;
    let u = ids.get(id);
    if (u === undefined) ids.set(id, u = ids.size);
    unitOf[i] = u;
  });
  return { unit: prefixed ? "patient" : "image", count: ids.size, unitOf };
}

/**
 * `resamples` draws of `units` unit indices with replacement, from `rng` (so `--seed`
 * reproduces them). Each draw is one bootstrap resample.
 */
export function* drawResamples(units: number, resamples: number, rng: Rng): Generator<Int32Array> {
  for (let r = 0; r < resamples; r++) {
    const draw = new Int32Array(units);
    for (let k = 0; k < units; k++) draw[k] = rng.int(units);
    yield draw;
  }
}

/** How often each image occurs in a resample: the draw count of its unit. */
export function imageWeights(draw: Int32Array, units: ResampleUnits, out: Float64Array): void {
  const perUnit = new Float64Array(units.count);
  for (let k = 0; k < draw.length; k++) perUnit[draw[k]]++;
  for (let i = 0; i < out.length; i++) out[i] = perUnit[units.unitOf[i]];
}

/**
 * One class sorted once by score (ascending), with the ends of tie blocks and the labels in
 * that order, so that any resample's AUROC is one pass over per-image weights.
 */
class SortedClass {
  readonly order: Uint32Array;
  readonly positive: Uint8Array;
  readonly blockEnd: Uint8Array;

  constructor(labels: Matrix, scores: Matrix, c: number) {
    const n = scores.rows;
    const s = new Float64Array(n);
    for (let i = 0; i < n; i++) s[i] = scores.data[i * scores.cols + c];
    this.order = new Uint32Array(n);
    for (let i = 0; i < n; i++) this.order[i] = i;
    this.order.sort((a, b) => s[a] - s[b]);
    this.positive = new Uint8Array(n);
    this.blockEnd = new Uint8Array(n);
    for (let k = 0; k < n; k++) {
      const i = this.order[k];
      this.positive[k] = labels.data[i * labels.cols + c] === 1 ? 1 : 0;
      this.blockEnd[k] = k === n - 1 || s[this.order[k + 1]] !== s[i] ? 1 : 0;
    }
  }

  /**
   * AUROC of the resample whose image `i` occurs `w[i]` times: Σ over positives of the
   * negatives scored below plus half those tied, over P·N. NaN when the resample has no
   * positive or no negative image (a skipped resample for this class).
   */
  auroc(w: Float64Array): number {
    const { order, positive, blockEnd } = this;
    let area = 0, negBelow = 0, pos = 0, blockPos = 0, blockNeg = 0;
    for (let k = 0; k < order.length; k++) {
      const wi = w[order[k]];
      const pi = positive[k] * wi;
      blockPos += pi;
      blockNeg += wi - pi;
      if (blockEnd[k]) {
        area += blockPos * (negBelow + 0.5 * blockNeg);
        negBelow += blockNeg;
        pos += blockPos;
        blockPos = 0;
        blockNeg = 0;
      }
    }
    return pos === 0 || negBelow === 0 ? NaN : area / (pos * negBelow);
  }
}

/**
 * Per-class AUROC of any resample, for one model: built once (one sort per class), then
 * {@link aurocs} is O(n) per class.
 */
export class ResampledAuroc {
  readonly #classes: SortedClass[];

  constructor(labels: Matrix, scores: Matrix) {
    if (labels.rows !== scores.rows || labels.cols !== scores.cols) {
      throw new RangeError(
        `labels (${labels.rows}×${labels.cols}) and scores (${scores.rows}×${scores.cols}) differ`,
      );
    }
    this.#classes = Array.from(
      { length: scores.cols },
      (_, c) => new SortedClass(labels, scores, c),
    );
  }

  /** Writes each class's AUROC of the resample with image weights `w` to `out` (NaN: skipped). */
  aurocs(w: Float64Array, out: Float64Array): void {
    this.#classes.forEach((k, c) => out[c] = k.auroc(w));
  }
}

/**
 * F1 of the decisions `score > threshold` in any resample, per class, as metrics.ts's
 * `f1AtThreshold` on the resample (0 when there is no true positive). Per class, the images
 * predicted positive, labelled positive, and both are listed once; a resample then sums its
 * weights over those (short) lists.
 */
export class ResampledF1 {
  readonly #lists: { predicted: Uint32Array; positive: Uint32Array; both: Uint32Array }[];

  constructor(labels: Matrix, scores: Matrix, thresholds: ArrayLike<number>) {
    const { rows, cols } = scores;
    this.#lists = Array.from({ length: cols }, (_, c) => {
      const predicted: number[] = [], positive: number[] = [], both: number[] = [];
      for (let i = 0; i < rows; i++) {
        const p = scores.data[i * cols + c] > thresholds[c];
        const t = labels.data[i * cols + c] === 1;
        if (p) predicted.push(i);
        if (t) positive.push(i);
        if (p && t) both.push(i);
      }
      return {
        predicted: Uint32Array.from(predicted),
        positive: Uint32Array.from(positive),
        both: Uint32Array.from(both),
      };
    });
  }

  /** Writes each class's F1 of the resample with image weights `w` to `out`. */
  f1s(w: Float64Array, out: Float64Array): void {
    const sum = (idx: Uint32Array) => {
      let s = 0;
      for (let k = 0; k < idx.length; k++) s += w[idx[k]];
      return s;
    };
    this.#lists.forEach((l, c) => {
      const tp = sum(l.both), predSum = sum(l.predicted), trueSum = sum(l.positive);
      const precision = predSum === 0 ? 0 : tp / predSum;
      const recall = trueSum === 0 ? 0 : tp / trueSum;
      const denom = precision + recall;
      out[c] = (2 * precision) * recall / (denom === 0 ? 1 : denom);
    });
  }
}

/**
 * `np.percentile(values, q * 100)` (linear interpolation, numpy's two-sided lerp) of the
 * non-NaN values; NaN when there are none.
 */
export function percentile(values: ArrayLike<number>, q: number): number {
  const v = Float64Array.from(Array.prototype.filter.call(values, (x: number) => !Number.isNaN(x)))
    .sort();
  if (v.length === 0) return NaN;
  const h = (v.length - 1) * q;
  const lo = Math.floor(h);
  const t = h - lo;
  if (lo + 1 >= v.length) return v[v.length - 1];
  const a = v[lo], b = v[lo + 1], d = b - a;
  return t >= 0.5 ? b - d * (1 - t) : a + d * t;
}

/** The percentile interval `[low, high]` of level `ci` (0.95: the 2.5th and 97.5th). */
export function percentileInterval(values: ArrayLike<number>, ci: number): [number, number] {
  return [percentile(values, (1 - ci) / 2), percentile(values, (1 + ci) / 2)];
}

/**
 * The mean of `values` over the classes marked in `classes`; NaN when one of them is NaN in
 * this resample (the resample is then skipped for the mean), or when none is marked.
 */
export function meanOver(values: Float64Array, classes: readonly boolean[]): number {
  let sum = 0, n = 0;
  for (let c = 0; c < values.length; c++) {
    if (!classes[c]) continue;
    if (Number.isNaN(values[c])) return NaN;
    sum += values[c];
    n++;
  }
  return n === 0 ? NaN : sum / n;
}

/** What {@link bootstrap} computes. */
export interface BootstrapResult {
  resamples: number;
  ci: number;
  unit: "patient" | "image";
  /** Per class `[low, high]` of the AUROC (NaN when every resample was skipped). */
  auroc: [number, number][];
  /** Resamples skipped per class (a single label value). */
  skipped: number[];
  /** Interval of the mean AUROC over all classes (NaN when one class is undefined overall). */
  meanAuroc: [number, number];
  /** Interval of the mean AUROC over the classes defined on the whole set. */
  meanAurocDefined: [number, number];
  /** Resamples skipped for the means: a class defined overall had a single label value. */
  skippedMean: number;
  /** Per class `[low, high]` of F1 at the thresholds, when thresholds were given. */
  f1?: [number, number][];
  /** Interval of the mean F1 over all classes, when thresholds were given. */
  meanF1?: [number, number];
  /** Model comparison: the interval of the difference of the defined-class mean AUROC, A − B. */
  meanDiff?: [number, number];
}

/** Inputs of {@link bootstrap}. */
export interface BootstrapInput {
  labels: Matrix;
  /** Model A's scores (the one whose intervals are reported). */
  scores: Matrix;
  /** A second model's scores on the same images, for the paired interval of the difference. */
  scoresB?: Matrix;
  /** F1 thresholds of model A; with them F1 intervals are computed too. */
  thresholds?: ArrayLike<number>;
  units: ResampleUnits;
  /** The resamples: unit draws (e.g. {@link drawResamples}). */
  draws: Iterable<Int32Array>;
  ci: number;
}

/**
 * Percentile bootstrap intervals over the given resamples. Per class, a resample with a single
 * label value is skipped (counted in `skipped`); the means use the classes defined on the whole
 * set, and skip a resample where one of them is undefined.
 */
export function bootstrap(input: BootstrapInput): BootstrapResult {
  const { labels, scores, scoresB, thresholds, units, ci } = input;
  const n = scores.rows, C = scores.cols;
  const a = new ResampledAuroc(labels, scores);
  const b = scoresB ? new ResampledAuroc(labels, scoresB) : null;
  const f1 = thresholds ? new ResampledF1(labels, scores, thresholds) : null;
  // A class is defined on the whole set when it has both label values.
  const defined: boolean[] = [];
  for (let c = 0; c < C; c++) {
    let pos = 0;
    for (let i = 0; i < n; i++) if (labels.data[i * C + c] === 1) pos++;
    defined.push(pos > 0 && pos < n);
  }
  const allDefined = defined.every((d) => d);
  const perClass: number[][] = Array.from({ length: C }, () => []);
  const perClassF1: number[][] = Array.from({ length: C }, () => []);
  const means: number[] = [], meansF1: number[] = [], diffs: number[] = [];
  const skipped = new Array<number>(C).fill(0);
  let skippedMean = 0, resamples = 0;
  const w = new Float64Array(n);
  const va = new Float64Array(C), vb = new Float64Array(C), vf = new Float64Array(C);
  const all = new Array<boolean>(C).fill(true);
  for (const draw of input.draws) {
    resamples++;
    imageWeights(draw, units, w);
    a.aurocs(w, va);
    for (let c = 0; c < C; c++) {
      if (Number.isNaN(va[c])) skipped[c]++;
      else perClass[c].push(va[c]);
    }
    const m = meanOver(va, defined);
    if (Number.isNaN(m)) skippedMean++;
    else means.push(m);
    if (b) {
      b.aurocs(w, vb);
      const mb = meanOver(vb, defined);
      if (!Number.isNaN(m) && !Number.isNaN(mb)) diffs.push(m - mb);
    }
    if (f1) {
      f1.f1s(w, vf);
      for (let c = 0; c < C; c++) perClassF1[c].push(vf[c]);
      meansF1.push(meanOver(vf, all));
    }
  }
  const nan: [number, number] = [NaN, NaN];
  const meanInterval = percentileInterval(means, ci);
  return {
    resamples,
    ci,
    unit: units.unit,
    auroc: perClass.map((v) => percentileInterval(v, ci)),
    skipped,
    meanAuroc: allDefined ? meanInterval : nan,
    meanAurocDefined: meanInterval,
    skippedMean,
    ...(thresholds
      ? {
        f1: perClassF1.map((v) => percentileInterval(v, ci)),
        meanF1: percentileInterval(meansF1, ci),
      }
      : {}),
    ...(b ? { meanDiff: percentileInterval(diffs, ci) } : {}),
  };
}
