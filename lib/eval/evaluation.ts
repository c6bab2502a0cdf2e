/**
 * Evaluating predictions over a dataset: per-class AUROC and F1 (at the decision thresholds)
 * and their means, as the original prints them. Used by validation during training and by
 * validate_model.ts.
 * @module
 */
import { NUM_CLASSES } from "../../config.ts";
import type { Predictions } from "./inference.ts";
import { aurocPerClass, f1PerClass, mean, nanMean } from "./metrics.ts";

/** Per-class metrics and their means. */
export interface Evaluation {
  auroc: Float64Array;
  f1: Float64Array;
  /** `np.mean` over the 14 classes, as the original: NaN when any class is undefined. */
  meanAuroc: number;
  /** Mean over the classes whose AUROC is defined. */
  meanAurocDefined: number;
  /** How many classes have a defined AUROC (both label values present). */
  definedClasses: number;
  meanF1: number;
}

/** Metrics of predictions against their labels, F1 at `thresholds`. */
export function evaluate(p: Predictions, thresholds: ArrayLike<number>): Evaluation {
  const labels = { rows: p.n, cols: NUM_CLASSES, data: p.labels };
  const probs = { rows: p.n, cols: NUM_CLASSES, data: p.probs };
  const auroc = aurocPerClass(labels, probs);
  const f1 = f1PerClass(labels, probs, thresholds);
  return {
    auroc,
    f1,
    meanAuroc: mean(auroc),
    meanAurocDefined: nanMean(auroc),
    definedClasses: auroc.filter((v) => !Number.isNaN(v)).length,
    meanF1: mean(f1),
  };
}

/** A number for a JSON file: NaN and ±Infinity become null (JSON has no NaN). */
export function jsonNumber(v: number): number | null {
  return Number.isFinite(v) ? v : null;
}
