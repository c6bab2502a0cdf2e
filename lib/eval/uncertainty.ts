/**
 * What validate_model.ts adds to the point estimates (issue #23): bootstrap intervals by
 * patient, calibration (ECE and reliability tables), and the comparison of two models on the
 * same images (DeLong per class, the paired bootstrap interval of the mean difference), with
 * their JSON form (the contract other programs read). No tfjs.
 * @module
 */
import { LABELS, NUM_CLASSES } from "../../config.ts";
import { bootstrap, type BootstrapResult, drawResamples, resampleUnits } from "./bootstrap.ts";
import { type Reliability, reliability } from "./calibration.ts";
import { type DeLongResult, delongTest } from "./delong.ts";
import { auroc, column, type Matrix, matrix } from "./metrics.ts";
import { UserError } from "../util/errors.ts";
import { Rng } from "../util/rng.ts";

/** One model's predictions on the labelled images: keys, labels and probabilities, row-major. */
export interface LabelledPredictions {
  keys: readonly string[];
  labels: ArrayLike<number>;
  probs: ArrayLike<number>;
  n: number;
}

/** Model B against model A on the same images. */
export interface Comparison {
  /** Model B's path, as given. */
  modelB: string;
  /** Per class: DeLong's test of AUROC(A) − AUROC(B) (NaN where the class is undefined). */
  classes: DeLongResult[];
  /** The classes defined on these images (both label values present). */
  definedClasses: number;
  /** Mean over the defined classes of AUROC(A), AUROC(B), and of A − B. */
  meanA: number;
  meanB: number;
  meanDiff: number;
  /** Paired bootstrap interval of `meanDiff` (NaN with the bootstrap off). */
  meanDiffCi: [number, number];
}

/** Intervals, calibration and (with a model B) the comparison. */
export interface Uncertainty {
  /** Null with `--bootstrap 0`. */
  bootstrap: BootstrapResult | null;
  /** Per class reliability table and ECE of model A. */
  reliability: Reliability[];
  compare: Comparison | null;
  /** The seed the resamples were drawn with. */
  seed: number;
  /** The level of the intervals (bootstrap and DeLong). */
  ci: number;
}

/** Options of {@link assessUncertainty}. */
export interface UncertaintyOptions {
  /** Model A's decision thresholds (F1 intervals when `withF1`). */
  thresholds: ArrayLike<number>;
  withF1: boolean;
  /** Bootstrap resamples (0: none). */
  resamples: number;
  /** Interval level, e.g. 0.95. */
  ci: number;
  seed: number;
  /** Model B on the same images, for `--compare`. */
  b?: { path: string; predictions: LabelledPredictions };
}

/** The bootstrap intervals, ECE and comparison of model A's predictions `a`. */
export function assessUncertainty(a: LabelledPredictions, opts: UncertaintyOptions): Uncertainty {
  const labels = matrix(a.labels, NUM_CLASSES), probs = matrix(a.probs, NUM_CLASSES);
  let probsB: Matrix | undefined;
  if (opts.b) {
    const b = opts.b.predictions;
    if (b.n !== a.n || b.keys.some((k, i) => k !== a.keys[i])) {
      throw new UserError(
        `--compare ${opts.b.path}: its ${b.n} test images differ from model A's ${a.n}; ` +
          `both models must run on the same shards`,
      );
    }
    probsB = matrix(b.probs, NUM_CLASSES);
  }
  const units = resampleUnits(a.keys);
  const result = opts.resamples > 0
    ? bootstrap({
      labels,
      scores: probs,
      scoresB: probsB,
      thresholds: opts.withF1 ? opts.thresholds : undefined,
      units,
      draws: drawResamples(units.count, opts.resamples, new Rng(opts.seed)),
      ci: opts.ci,
    })
    : null;
  const rel = LABELS.map((_, c) => reliability(column(labels, c), column(probs, c)));
  let compare: Comparison | null = null;
  if (opts.b && probsB) {
    const classes = LABELS.map((_, c) =>
      delongTest(column(labels, c), column(probs, c), column(probsB!, c), opts.ci)
    );
    // The mean is over the defined classes, as the paired bootstrap's difference is.
    const defined = classes.filter((d) => !Number.isNaN(d.diff));
    const avg = (f: (d: DeLongResult) => number) =>
      defined.length ? defined.reduce((s, d) => s + f(d), 0) / defined.length : NaN;
    compare = {
      modelB: opts.b.path,
      classes,
      definedClasses: defined.length,
      meanA: avg((d) => d.aurocA),
      meanB: avg((d) => d.aurocB),
      meanDiff: avg((d) => d.diff),
      meanDiffCi: result?.meanDiff ?? [NaN, NaN],
    };
    // DeLong's AUROC is the Mann–Whitney form; keep the one printed elsewhere (sklearn's).
    classes.forEach((d, c) => {
      if (Number.isNaN(d.diff)) return;
      d.aurocA = auroc(column(labels, c), column(probs, c));
      d.aurocB = auroc(column(labels, c), column(probsB!, c));
    });
  }
  return { bootstrap: result, reliability: rel, compare, seed: opts.seed, ci: opts.ci };
}

const num = (v: number): number | null => (Number.isFinite(v) ? v : null);
const pair = (p: [number, number]): [number | null, number | null] => [num(p[0]), num(p[1])];
const byClass = <T>(f: (c: number) => T): Record<string, T> =>
  Object.fromEntries(LABELS.map((l, c) => [l, f(c)]));

/**
 * The `--json` fields of issue #23's contract: `auroc_ci`, `mean_auroc_ci`, `bootstrap`
 * (with the bootstrap on), `ece` (with `withF1`), `compare` (with a model B). Undefined values
 * are null. Beyond the contract: `mean_auroc_defined_ci`, `f1_ci` and `mean_f1_ci` (with F1),
 * `bootstrap.skipped_mean`, `compare.mean.auroc_a/auroc_b/defined_classes`.
 */
export function uncertaintyJson(u: Uncertainty, withF1: boolean): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const b = u.bootstrap;
  if (b) {
    out.auroc_ci = byClass((c) => pair(b.auroc[c]));
    out.mean_auroc_ci = pair(b.meanAuroc);
    out.mean_auroc_defined_ci = pair(b.meanAurocDefined);
    if (b.f1 && b.meanF1) {
      out.f1_ci = byClass((c) => pair(b.f1![c]));
      out.mean_f1_ci = pair(b.meanF1);
    }
    out.bootstrap = {
      resamples: b.resamples,
      ci: b.ci,
      unit: b.unit,
      skipped: byClass((c) => b.skipped[c]),
      skipped_mean: b.skippedMean,
    };
  }
  if (withF1) out.ece = byClass((c) => num(u.reliability[c].ece));
  if (u.compare) {
    const k = u.compare;
    out.compare = {
      model_b: k.modelB,
      classes: byClass((c) => ({
        auroc_a: num(k.classes[c].aurocA),
        auroc_b: num(k.classes[c].aurocB),
        diff: num(k.classes[c].diff),
        delong_ci: pair(k.classes[c].ci),
        p_value: num(k.classes[c].pValue),
      })),
      mean: {
        diff: num(k.meanDiff),
        bootstrap_ci: pair(k.meanDiffCi),
        auroc_a: num(k.meanA),
        auroc_b: num(k.meanB),
        defined_classes: k.definedClasses,
      },
    };
  }
  return out;
}

/** `0.8312 [0.8201, 0.8420]`, or the value alone without an interval or when it is NaN. */
export function withInterval(v: number, ci?: [number, number], digits = 4): string {
  const f = (x: number) => (Number.isNaN(x) ? "NaN" : x.toFixed(digits));
  return ci && !Number.isNaN(v) ? `${f(v)} [${f(ci[0])}, ${f(ci[1])}]` : f(v);
}

/** A signed difference, `+0.0123` / `-0.0123`. */
export function signed(v: number, digits = 4): string {
  return Number.isNaN(v) ? "NaN" : (v >= 0 ? "+" : "") + v.toFixed(digits);
}

/** The `--compare` table: per class AUROC of A and B, A − B, DeLong interval and p; the mean. */
export function formatComparison(k: Comparison, ci: number, modelA: string): string {
  const level = `${Math.round(ci * 1000) / 10}%`;
  const width = Math.max(...LABELS.map((l) => l.length)) + 2;
  const header = " ".repeat(width) + "AUROC A".padStart(8) + "AUROC B".padStart(9) +
    "A − B".padStart(9) + `   DeLong ${level} CI`.padEnd(23) + "p".padStart(7);
  const f = (v: number) => (Number.isNaN(v) ? "NaN" : v.toFixed(4));
  const pv = (p: number) => (Number.isNaN(p) ? "NaN" : p < 0.0001 ? "<1e-4" : p.toFixed(4));
  const rows = LABELS.map((l, c) => {
    const d = k.classes[c];
    return l.padEnd(width) + f(d.aurocA).padStart(8) + f(d.aurocB).padStart(9) +
      signed(d.diff).padStart(9) + `   [${signed(d.ci[0])}, ${signed(d.ci[1])}]`.padEnd(23) +
      pv(d.pValue).padStart(7);
  });
  const mean = `Mean (${k.definedClasses} classes)`.padEnd(width) +
    f(k.meanA).padStart(8) + f(k.meanB).padStart(9) + signed(k.meanDiff).padStart(9) +
    (Number.isNaN(k.meanDiffCi[0])
      ? ""
      : `   paired bootstrap ${level} CI [${signed(k.meanDiffCi[0])}, ${signed(k.meanDiffCi[1])}]`);
  return [
    `Comparison: A = ${modelA.split("/").pop()}, B = ${
      k.modelB.split("/").pop()
    } (same images; A − B)`,
    header,
    ...rows,
    mean,
  ].join("\n");
}
