/**
 * Calibration of predicted probabilities: the reliability table (equal-width bins of the
 * predicted probability, each with its mean prediction and observed frequency of positives) and
 * the expected calibration error (ECE) derived from it. No tfjs.
 * @module
 */

/** Number of equal-width bins of [0, 1] the ECE and reliability diagram use. */
export const CALIBRATION_BINS = 15;

/** One class's reliability table: per bin its image count, mean prediction and positive rate. */
export interface Reliability {
  /** Images per bin. */
  count: Float64Array;
  /** Mean predicted probability per bin (NaN for an empty bin). */
  meanPredicted: Float64Array;
  /** Fraction of positive images per bin (NaN for an empty bin). */
  observed: Float64Array;
  /** Σ over bins of (count/n)·|meanPredicted − observed|. NaN for no images. */
  ece: number;
}

/**
 * The reliability table and ECE of one class: bin `b` holds probabilities in
 * `[b/bins, (b+1)/bins)` (the last bin includes 1), i.e. `min(floor(p · bins), bins − 1)`.
 */
export function reliability(
  labels: ArrayLike<number>,
  probs: ArrayLike<number>,
  bins = CALIBRATION_BINS,
): Reliability {
  if (labels.length !== probs.length) {
    throw new RangeError(`labels (${labels.length}) and probabilities (${probs.length}) differ`);
  }
  const count = new Float64Array(bins);
  const sumP = new Float64Array(bins);
  const sumY = new Float64Array(bins);
  for (let i = 0; i < probs.length; i++) {
    const p = probs[i];
    const b = Math.min(Math.max(Math.floor(p * bins), 0), bins - 1);
    count[b]++;
    sumP[b] += p;
    if (labels[i] === 1) sumY[b]++;
  }
  const meanPredicted = new Float64Array(bins), observed = new Float64Array(bins);
  let ece = 0;
  for (let b = 0; b < bins; b++) {
    meanPredicted[b] = count[b] > 0 ? sumP[b] / count[b] : NaN;
    observed[b] = count[b] > 0 ? sumY[b] / count[b] : NaN;
    if (count[b] > 0) ece += count[b] / probs.length * Math.abs(meanPredicted[b] - observed[b]);
  }
  return { count, meanPredicted, observed, ece: probs.length > 0 ? ece : NaN };
}
