/**
 * Tests for lib/eval/bootstrap.ts, delong.ts and calibration.ts against independent references
 * (tests/fixtures/intervals/make_intervals.py → intervals.json): scikit-learn 1.2.1
 * `roc_auc_score` / `f1_score` on each resample's index list, numpy percentiles, a numpy fast
 * DeLong and a numpy ECE. The resample draws are in the fixture, so both sides score the very
 * same resamples; with Python and scikit-learn installed, draws made by our seeded generator are
 * also handed to the script and checked the same way.
 */
import assert from "node:assert/strict";
import { NUM_CLASSES } from "../config.ts";
import {
  bootstrap,
  drawResamples,
  imageWeights,
  percentile,
  ResampledAuroc,
  resampleUnits,
} from "../lib/eval/bootstrap.ts";
import { delongTest, midranks } from "../lib/eval/delong.ts";
import { reliability } from "../lib/eval/calibration.ts";
import { type Matrix, matrix } from "../lib/eval/metrics.ts";
import { Rng } from "../lib/util/rng.ts";
import { findPythonWithSklearn, runIntervalReference } from "./helpers/python_reference.ts";

type Num = number | null;
type Pair = [Num, Num];
interface Reference {
  bootstrap: {
    resample_auroc: Num[][];
    auroc_ci: Pair[];
    skipped: number[];
    mean_auroc_defined_ci: Pair;
    mean_auroc_ci: Pair;
    skipped_mean: number;
    f1_ci?: Pair[];
    mean_f1_ci?: Pair;
    mean_diff_ci?: Pair;
  };
  ece: { count: number[]; mean_predicted: Num[]; observed: Num[]; ece: number }[];
  delong?: ({
    auroc_a: number;
    auroc_b: number;
    diff: number;
    se: Num;
    ci: [Num, Num];
    p_value: Num;
    sklearn_a: number;
    sklearn_b: number;
  } | null)[];
}
interface Case {
  name: string;
  keys: string[];
  labels: number[][];
  scores_a: number[][];
  scores_b: number[][];
  thresholds: number[];
  unit_of: number[];
  draws: number[][];
  ci: number;
  expected: Reference;
}

const fixture: { cases: Case[] } = JSON.parse(
  Deno.readTextFileSync(new URL("./fixtures/intervals/intervals.json", import.meta.url)),
);

const flat = (rows: number[][]): Matrix => matrix(Float64Array.from(rows.flat()), rows[0].length);

/** Equal within `tol` (absolute), NaN exactly where the reference is null. */
function close(actual: number, expected: Num, tol: number, what: string): void {
  if (expected === null) {
    assert.ok(Number.isNaN(actual), `${what}: expected NaN (null), got ${actual}`);
    return;
  }
  assert.ok(Math.abs(actual - expected) <= tol, `${what}: ${actual} vs ${expected}`);
}

function checkBootstrap(c: Case, got: ReturnType<typeof bootstrap>, ref: Reference["bootstrap"]) {
  const C = c.labels[0].length;
  assert.equal(got.resamples, c.draws.length);
  assert.deepEqual(got.skipped, ref.skipped, `${c.name}: skipped`);
  assert.equal(got.skippedMean, ref.skipped_mean, `${c.name}: skipped for the mean`);
  for (let k = 0; k < C; k++) {
    close(got.auroc[k][0], ref.auroc_ci[k][0], 1e-12, `${c.name} class ${k} AUROC low`);
    close(got.auroc[k][1], ref.auroc_ci[k][1], 1e-12, `${c.name} class ${k} AUROC high`);
    close(got.f1![k][0], ref.f1_ci![k][0], 1e-12, `${c.name} class ${k} F1 low`);
    close(got.f1![k][1], ref.f1_ci![k][1], 1e-12, `${c.name} class ${k} F1 high`);
  }
  for (
    const [mine, theirs, what] of [
      [got.meanAurocDefined, ref.mean_auroc_defined_ci, "mean AUROC (defined)"],
      [got.meanAuroc, ref.mean_auroc_ci, "mean AUROC"],
      [got.meanF1!, ref.mean_f1_ci!, "mean F1"],
      [got.meanDiff!, ref.mean_diff_ci!, "mean difference"],
    ] as const
  ) {
    close(mine[0], theirs[0], 1e-12, `${c.name}: ${what} low`);
    close(mine[1], theirs[1], 1e-12, `${c.name}: ${what} high`);
  }
}

Deno.test("patients are the key prefix before '_'; keys without one are their own unit", () => {
  for (const c of fixture.cases) {
    const u = resampleUnits(c.keys);
    assert.equal(u.unit, "patient");
    assert.deepEqual(Array.from(u.unitOf), c.unit_of, c.name);
  }
  const fixtureUnits = resampleUnits(fixture.cases[0].keys);
  assert.ok(fixtureUnits.count < 50 && fixtureUnits.count > 10, `${fixtureUnits.count} patients`);
  const mixed = resampleUnits(["00000001_000", "00000001_001", "scan", "00000002_000", "x"]);
  assert.deepEqual(Array.from(mixed.unitOf), [0, 0, 1, 2, 3]);
  const images = resampleUnits(["a", "b", "a2"]);
  assert.equal(images.unit, "image");
  assert.equal(images.count, 3);
});

Deno.test("each resample's AUROC equals sklearn's roc_auc_score on its index list", () => {
  for (const c of fixture.cases) {
    const labels = flat(c.labels), scores = flat(c.scores_a);
    const units = resampleUnits(c.keys);
    const r = new ResampledAuroc(labels, scores);
    const w = new Float64Array(labels.rows), out = new Float64Array(labels.cols);
    c.draws.forEach((draw, k) => {
      imageWeights(Int32Array.from(draw), units, w);
      r.aurocs(w, out);
      out.forEach((v, cls) =>
        close(v, c.expected.bootstrap.resample_auroc[k][cls], 1e-12, `${c.name} #${k} ${cls}`)
      );
    });
  }
});

Deno.test("bootstrap intervals, skips, F1 and paired differences equal the numpy reference", () => {
  for (const c of fixture.cases) {
    const got = bootstrap({
      labels: flat(c.labels),
      scores: flat(c.scores_a),
      scoresB: flat(c.scores_b),
      thresholds: c.thresholds,
      units: resampleUnits(c.keys),
      draws: c.draws.map((d) => Int32Array.from(d)),
      ci: c.ci,
    });
    assert.equal(got.unit, "patient");
    checkBootstrap(c, got, c.expected.bootstrap);
  }
  // The seed model's case has classes with a single label value in every resample.
  assert.ok(fixture.cases[0].expected.bootstrap.skipped.includes(300));
});

Deno.test("percentile is np.percentile's linear interpolation", () => {
  assert.equal(percentile([3, 1, 2, 4], 0.5), 2.5);
  assert.equal(percentile([1, NaN, 2], 1), 2);
  assert.ok(Number.isNaN(percentile([NaN], 0.5)));
  assert.equal(percentile([0, 10], 0.025), 0.25);
});

Deno.test("fast DeLong equals the numpy fast DeLong of the fixture script", () => {
  for (const c of fixture.cases) {
    const C = c.labels[0].length;
    for (let k = 0; k < C; k++) {
      const y = c.labels.map((r) => r[k]);
      const ref = c.expected.delong![k];
      const got = delongTest(y, c.scores_a.map((r) => r[k]), c.scores_b.map((r) => r[k]), c.ci);
      const what = `${c.name} class ${k}`;
      if (ref === null) {
        assert.ok(Number.isNaN(got.diff) && Number.isNaN(got.pValue), what);
        continue;
      }
      close(got.aurocA, ref.sklearn_a, 1e-12, `${what}: AUROC A vs sklearn`);
      close(got.aurocB, ref.sklearn_b, 1e-12, `${what}: AUROC B vs sklearn`);
      close(got.diff, ref.diff, 1e-12, `${what}: diff`);
      close(got.se, ref.se, 1e-12, `${what}: se`);
      close(got.ci[0], ref.ci[0], 1e-8, `${what}: CI low`);
      close(got.ci[1], ref.ci[1], 1e-8, `${what}: CI high`);
      // erfc to ~1e-7 relative; no p-value with a single positive or negative image
      close(got.pValue, ref.p_value, 2e-7 * (ref.p_value ?? 0) + 1e-300, `${what}: p`);
    }
  }
  assert.deepEqual(Array.from(midranks([3, 1, 3, 2])), [3.5, 1, 3.5, 2]);
});

Deno.test("ECE and reliability bins equal the numpy reference (15 equal-width bins)", () => {
  for (const c of fixture.cases) {
    c.expected.ece.forEach((ref, k) => {
      const r = reliability(c.labels.map((row) => row[k]), c.scores_a.map((row) => row[k]));
      close(r.ece, ref.ece, 1e-12, `${c.name} class ${k} ECE`);
      assert.deepEqual(Array.from(r.count), ref.count);
      r.meanPredicted.forEach((v, b) => close(v, ref.mean_predicted[b], 1e-12, `bin ${b}`));
      r.observed.forEach((v, b) => close(v, ref.observed[b], 1e-12, `bin ${b}`));
    });
  }
});

Deno.test("resamples drawn by our seeded generator: sklearn agrees (needs python3-sklearn)", async () => {
  const python = await findPythonWithSklearn();
  if (python === null) {
    console.log("skipping the live sklearn check: no python3 with scikit-learn 1.2");
    return;
  }
  const c = fixture.cases[0];
  const units = resampleUnits(c.keys);
  const draws = [...drawResamples(units.count, 120, new Rng(5))];
  // Same seed, same draws: the generator is the only source of randomness.
  assert.deepEqual([...drawResamples(units.count, 120, new Rng(5))], draws);
  const ref = await runIntervalReference(python, {
    labels: c.labels,
    scores_a: c.scores_a,
    scores_b: c.scores_b,
    thresholds: c.thresholds,
    unit_of: Array.from(units.unitOf),
    draws: draws.map((d) => Array.from(d)),
    ci: 0.9,
  });
  const got = bootstrap({
    labels: flat(c.labels),
    scores: flat(c.scores_a),
    scoresB: flat(c.scores_b),
    thresholds: c.thresholds,
    units,
    draws,
    ci: 0.9,
  });
  checkBootstrap({ ...c, draws: draws.map((d) => Array.from(d)) }, got, ref.bootstrap);
  assert.equal(NUM_CLASSES, c.labels[0].length);
});
