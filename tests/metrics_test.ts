/**
 * Tests for lib/eval/metrics.ts against scikit-learn 1.2.1 / numpy 1.24 / torch 1.13 reference vectors
 * (tests/fixtures/metrics/make_metrics.py → metrics.json) and the original tool's recorded
 * AUROC/F1 of the seed model (tests/fixtures/torch/expected.json).
 */
import assert from "node:assert/strict";
import { LABELS, NUM_CLASSES } from "../config.ts";
import { UserError } from "../lib/util/errors.ts";
import {
  auroc,
  aurocPerClass,
  bceLoss,
  checkInput,
  f1,
  f1AtThreshold,
  f1PerClass,
  matrix,
  mean,
  nanMean,
  rocCurve,
  youdenThreshold,
  youdenThresholds,
} from "../lib/eval/metrics.ts";

type Num = number | null;
interface Curve {
  name: string;
  dtype: "float32" | "float64";
  labels: number[];
  scores: number[];
  auroc: Num;
  roc: { fpr: Num[]; tpr: Num[]; thresholds: number[] };
  rocFull?: { fpr: Num[]; tpr: Num[]; thresholds: number[] };
  youden: { computed: number; threshold: number; fellBack: boolean };
  f1: { threshold: number; f1: number }[];
}
interface Fixture {
  curves: Curve[];
  f1: { name: string; labels: number[]; predicted: number[]; f1: number }[];
  bce: {
    name: string;
    labels: number[];
    probs: number[];
    probs32: number[];
    loss64: number;
    loss32: number;
  }[];
  means: { values: Num[]; mean: Num; nanmean: number }[];
}

const fixture: Fixture = JSON.parse(
  Deno.readTextFileSync(new URL("./fixtures/metrics/metrics.json", import.meta.url)),
);

const nan = (v: Num): number => v ?? NaN;
const scoresOf = (c: Curve) =>
  c.dtype === "float32" ? new Float32Array(c.scores) : new Float64Array(c.scores);

/** Equal within `tol`, NaN only where the reference is NaN (null). */
function assertClose(actual: number, expected: Num, tol: number, what: string): void {
  if (expected === null) {
    assert.ok(Number.isNaN(actual), `${what}: expected NaN, got ${actual}`);
  } else {
    assert.ok(
      Math.abs(actual - expected) <= tol,
      `${what}: expected ${expected}, got ${actual} (diff ${actual - expected})`,
    );
  }
}

function assertArrayClose(actual: ArrayLike<number>, expected: Num[], tol: number, what: string) {
  assert.equal(actual.length, expected.length, `${what}: length`);
  for (let i = 0; i < expected.length; i++) {
    assertClose(actual[i], expected[i], tol, `${what}[${i}]`);
  }
}

Deno.test("auroc equals sklearn roc_auc_score bit for bit (ties, single class, float32)", () => {
  for (const c of fixture.curves) {
    const got = auroc(c.labels, scoresOf(c));
    if (c.auroc === null) assert.ok(Number.isNaN(got), `${c.name}: expected NaN, got ${got}`);
    else assert.equal(got, c.auroc, c.name);
  }
});

Deno.test("rocCurve equals sklearn 1.2 roc_curve (drop_intermediate on and off)", () => {
  for (const c of fixture.curves) {
    const s = scoresOf(c);
    const r = rocCurve(c.labels, s);
    assertArrayClose(r.fpr, c.roc.fpr, 1e-12, `${c.name} fpr`);
    assertArrayClose(r.tpr, c.roc.tpr, 1e-12, `${c.name} tpr`);
    assertArrayClose(r.thresholds, c.roc.thresholds, 0, `${c.name} thresholds`);
    if (c.rocFull) {
      const full = rocCurve(c.labels, s, { dropIntermediate: false });
      assertArrayClose(full.fpr, c.rocFull.fpr, 1e-12, `${c.name} full fpr`);
      assertArrayClose(full.tpr, c.rocFull.tpr, 1e-12, `${c.name} full tpr`);
      assertArrayClose(full.thresholds, c.rocFull.thresholds, 0, `${c.name} full thresholds`);
    }
  }
});

Deno.test("youdenThreshold follows the original get_thresholds, incl. the >= 1 fallback", () => {
  let fallbacks = 0;
  for (const c of fixture.curves) {
    const r = youdenThreshold(c.labels, scoresOf(c));
    assert.equal(r.threshold, c.youden.threshold, `${c.name} threshold`);
    assert.equal(r.fellBack, c.youden.fellBack, `${c.name} fellBack`);
    if (!Number.isNaN(r.computed)) assert.equal(r.computed, c.youden.computed, c.name);
    if (r.fellBack) fallbacks++;
  }
  assert.ok(fallbacks >= 3, "fixture exercises the fallback (inverted, logits, single class)");
});

Deno.test("youdenThreshold: a class with one label value falls back to 0.5", () => {
  const r = youdenThreshold([0, 0, 0], [0.2, 0.9, 0.1]);
  assert.deepEqual(r.threshold, 0.5);
  assert.ok(r.fellBack && Number.isNaN(r.computed));
  assert.equal(youdenThreshold([], []).threshold, 0.5);
});

Deno.test("f1AtThreshold equals sklearn f1_score(y, s > t, labels=[1,0], zero_division=0)", () => {
  for (const c of fixture.curves) {
    for (const { threshold, f1: expected } of c.f1) {
      assert.equal(f1AtThreshold(c.labels, scoresOf(c), threshold), expected, c.name);
    }
  }
});

Deno.test("f1 on decisions, zero_division cases", () => {
  for (const c of fixture.f1) {
    assert.equal(f1(c.labels, c.predicted), c.f1, c.name);
    assert.equal(f1(c.labels, c.predicted.map((p) => p === 1)), c.f1, `${c.name} (boolean)`);
  }
});

Deno.test("bceLoss matches torch.nn.BCELoss (float64 and float32)", () => {
  for (const c of fixture.bce) {
    assertClose(bceLoss(c.labels, c.probs), c.loss64, 1e-12 * Math.max(1, c.loss64), c.name);
    // torch computed in float32: agree to float32 precision.
    assertClose(bceLoss(c.labels, new Float32Array(c.probs32)), c.loss32, 1e-5, `${c.name} f32`);
  }
  assert.throws(() => bceLoss([1], [1.5]), RangeError);
});

Deno.test("mean and nanMean equal numpy (pairwise summation, NaN propagation)", () => {
  for (const m of fixture.means) {
    const v = m.values.map(nan);
    const got = mean(v);
    if (m.mean === null) assert.ok(Number.isNaN(got));
    else assert.equal(got, m.mean, `mean of ${v.length}`);
    assert.equal(nanMean(v), m.nanmean, `nanmean of ${v.length}`);
  }
  assert.ok(Number.isNaN(mean([])) && Number.isNaN(nanMean([NaN, NaN])));
});

Deno.test("checkInput: the original's three checks, as one-line UserErrors", () => {
  const ok = matrix(new Float32Array(3 * NUM_CLASSES), NUM_CLASSES);
  const { labels, predictions } = checkInput(
    ok,
    Array.from({ length: 3 }, () => Array(14).fill(0)),
  );
  assert.equal(labels.rows, 3);
  assert.equal(predictions.cols, NUM_CLASSES);
  const cases: [unknown, unknown, RegExp][] = [
    [new Float64Array(14), ok, /2-D arrays .*got 1 and 2 dimensions/],
    [ok, matrix(new Float64Array(3 * 13), 13), /14 classes each, got 14 and 13/],
    [ok, matrix(new Float64Array(4 * 14), 14), /same number of images, got 3 and 4/],
    [ok, [[0, 1], [0]], /row 1 has 1 values/],
    [ok, { rows: 2, cols: 14, data: new Float64Array(3) }, /holds 3 values/],
  ];
  for (const [a, b, re] of cases) {
    assert.throws(
      // deno-lint-ignore no-explicit-any
      () => checkInput(a as any, b as any),
      (e: unknown) => e instanceof UserError && re.test(e.message) && !e.message.includes("\n"),
    );
  }
});

Deno.test("rocCurve refuses NaN scores; auroc is NaN for them (sklearn raises, original stores NaN)", () => {
  assert.throws(() => rocCurve([0, 1], [0.1, NaN]), UserError);
  assert.ok(Number.isNaN(auroc([0, 1], [0.1, NaN])));
  assert.ok(Number.isNaN(auroc([0, 1, 2], [0.1, 0.2, 0.3])), "three label values");
});

// The original tool's recorded metrics of seed_model.pt on the 50-image shard.
const expected = JSON.parse(
  Deno.readTextFileSync(new URL("./fixtures/torch/expected.json", import.meta.url)),
) as {
  labels: number[][];
  thresholds: number[];
  plain: { predictions: number[][]; auroc: Num[]; f1: Num[] };
  center_crop: { predictions: number[][]; auroc: Num[]; f1: Num[] };
};

Deno.test("per-class AUROC/F1 reproduce the original's recorded values (expected.json)", () => {
  for (const variant of ["plain", "center_crop"] as const) {
    const v = expected[variant];
    // The original's predictions were float32 tensors.
    const preds = matrix(new Float32Array(v.predictions.flat()), NUM_CLASSES);
    const a = aurocPerClass(expected.labels, preds);
    const f = f1PerClass(expected.labels, preds, expected.thresholds);
    assertArrayClose(a, v.auroc, 1e-9, `${variant} auroc`);
    assertArrayClose(f, v.f1, 1e-9, `${variant} f1`);
    // The same through number[][] (float64) input.
    assertArrayClose(aurocPerClass(expected.labels, v.predictions), v.auroc, 1e-9, variant);
    const meanAuroc = mean(a);
    assert.ok(Number.isNaN(meanAuroc), "np.mean over classes with NaN is NaN");
    assert.ok(nanMean(a) > 0 && nanMean(a) < 1);
  }
});

Deno.test("youdenThresholds: per class, warns once per fallback with the class name", () => {
  const preds = matrix(new Float32Array(expected.plain.predictions.flat()), NUM_CLASSES);
  const warnings: string[] = [];
  const t = youdenThresholds(expected.labels, preds, LABELS, (m) => warnings.push(m));
  assert.equal(t.length, NUM_CLASSES);
  for (let c = 0; c < NUM_CLASSES; c++) {
    const col = expected.labels.map((row) => row[c]);
    const r = youdenThreshold(
      col,
      new Float32Array(expected.plain.predictions.map((row) => row[c])),
    );
    assert.equal(t[c], r.threshold);
    if (r.fellBack) assert.ok(warnings.some((w) => w.includes(LABELS[c])), LABELS[c]);
    assert.ok(t[c] < 1);
  }
  // Single-valued classes (null AUROC in the reference) all fell back.
  const single = expected.plain.auroc.filter((x) => x === null).length;
  assert.ok(warnings.length >= single && single > 0);
});

Deno.test("auroc on 100k scores runs well under a second", () => {
  const n = 100_000;
  let seed = 12345;
  const rand = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
  const labels = new Float64Array(n);
  const scores = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    labels[i] = rand() < 0.1 ? 1 : 0;
    scores[i] = Math.round((rand() * 0.7 + labels[i] * 0.2) * 1000) / 1000; // many ties
  }
  auroc(labels.subarray(0, 1000), scores.subarray(0, 1000)); // warm up
  const t0 = performance.now();
  const a = auroc(labels, scores);
  const ms = performance.now() - t0;
  console.log(`auroc(100k float32 scores) = ${a.toFixed(6)} in ${ms.toFixed(1)} ms`);
  assert.ok(a > 0.5 && a < 1);
  assert.ok(ms < 500, `took ${ms} ms`);
});
