/**
 * validate_model.ts's intervals, calibration and `--compare` (issue #23), run as a subprocess on
 * the fixture shard: the table, the JSON contract and the report. With Python and scikit-learn
 * installed, every number is checked against tests/fixtures/intervals/make_intervals.py run on
 * the script's own predictions and on the resamples `--seed` draws; the committed-fixture checks
 * of the same code are in intervals_test.ts.
 */
import assert from "node:assert/strict";
import { LABELS } from "../config.ts";
import { drawResamples, resampleUnits } from "../lib/eval/bootstrap.ts";
import { loadCheckpoint, writeCheckpoint } from "../lib/torch/torch_checkpoint.ts";
import { Rng } from "../lib/util/rng.ts";
import { fixtureDatasetDir, runScript } from "./helpers/scripts.ts";
import { findPythonWithSklearn, runIntervalReference } from "./helpers/python_reference.ts";
import { allText, findAll, hasClass, parseXml, type XmlElement } from "./xml_check.ts";

const fixtures = new URL("./fixtures/torch/", import.meta.url).pathname;
const expected = JSON.parse(await Deno.readTextFileSync(`${fixtures}expected.json`)) as {
  keys: string[];
  labels: number[][];
};

type Pair = [number | null, number | null];

function readPredictionsCsv(text: string): { keys: string[]; rows: number[][] } {
  const rows = text.trim().split("\n").slice(1).map((l) => l.split(","));
  return {
    keys: rows.map((r) => r[0].replace(/\.png$/, "")),
    rows: rows.map((r) => r.slice(1).map(Number)),
  };
}

const f4 = (v: number | null) => (v === null ? "NaN" : v.toFixed(4));
const cellsOf = (row: XmlElement) => row.children.filter((c) => c.name === "td").map((c) => c.text);

function close(actual: number | null, ref: number | null, tol: number, what: string) {
  if (ref === null) return assert.equal(actual, null, `${what}: expected null`);
  assert.ok(actual !== null && Math.abs(actual - ref) <= tol, `${what}: ${actual} vs ${ref}`);
}

Deno.test("validate_model.ts -f --bootstrap --ci --compare: table, JSON contract, report; sklearn agrees", async () => {
  const dataset = await fixtureDatasetDir(["test"]);
  const out = await Deno.makeTempDir({ prefix: "cxr_ci_" });
  // Model B: the tiny model with a perturbed classifier, so the two models differ.
  const ckpt = await loadCheckpoint(`${fixtures}tiny_zip.pt`);
  const w = ckpt.stateDict.get("classifier.0.weight")!.data as Float32Array;
  const rng = new Rng(3);
  for (let i = 0; i < w.length; i++) w[i] += 0.3 * rng.normal();
  await writeCheckpoint(`${out}/b_model.pt`, ckpt);
  const common = ["--dataset_dir", dataset, "-b", "25", "--backend", "wasm"];
  const b = await runScript("validate_model.ts", [
    ...common,
    "-s",
    `${out}/b_model.pt`,
    "--bootstrap",
    "0",
    "--json",
    `${out}/b.json`,
    "--predictions",
    `${out}/b.csv`,
  ], [out]);
  assert.equal(b.code, 0, b.stderr);
  const bJson = JSON.parse(await Deno.readTextFile(`${out}/b.json`));
  assert.equal(bJson.auroc_ci, undefined, "--bootstrap 0: no intervals");
  assert.equal(bJson.ece, undefined, "no ECE without -f");
  assert.doesNotMatch(b.stdout, /\[/);

  const a = await runScript("validate_model.ts", [
    ...common,
    "-s",
    `${fixtures}tiny_zip.pt`,
    "-f",
    "--bootstrap",
    "200",
    "--ci",
    "0.9",
    "--seed",
    "7",
    "--compare",
    `${out}/b_model.pt`,
    "--json",
    `${out}/a.json`,
    "--predictions",
    `${out}/a.csv`,
    "--report",
    `${out}/a.html`,
  ], [out]);
  assert.equal(a.code, 0, a.stderr);
  const j = JSON.parse(await Deno.readTextFile(`${out}/a.json`));

  // The JSON contract.
  assert.deepEqual(Object.keys(j.auroc_ci), [...LABELS]);
  assert.deepEqual(Object.keys(j.ece), [...LABELS]);
  assert.equal(j.bootstrap.resamples, 200);
  assert.equal(j.bootstrap.ci, 0.9);
  assert.equal(j.bootstrap.unit, "patient");
  assert.deepEqual(Object.keys(j.bootstrap.skipped), [...LABELS]);
  assert.equal(j.mean_auroc_ci.length, 2);
  assert.equal(j.compare.model_b, `${out}/b_model.pt`);
  assert.deepEqual(Object.keys(j.compare.classes), [...LABELS]);
  for (const l of LABELS) {
    assert.deepEqual(Object.keys(j.compare.classes[l]), [
      "auroc_a",
      "auroc_b",
      "diff",
      "delong_ci",
      "p_value",
    ]);
  }
  assert.equal(j.compare.mean.bootstrap_ci.length, 2);
  // A is -s: its AUROCs are the run's; B's are those of B's own run.
  LABELS.forEach((l, c) => {
    assert.equal(j.compare.classes[l].auroc_a, j.auroc[c]);
    assert.equal(j.compare.classes[l].auroc_b, bJson.auroc[c]);
  });

  // The table: the JSON's numbers, as `0.8312 [0.8201, 0.8420]`.
  LABELS.forEach((l, c) => {
    const [lo, hi] = j.auroc_ci[l] as Pair;
    const auroc = j.auroc[c] === null ? "NaN" : `${f4(j.auroc[c])} \\[${f4(lo)}, ${f4(hi)}\\]`;
    const [flo, fhi] = j.f1_ci[l] as Pair;
    const row = new RegExp(
      `^${l}\\s+${auroc}\\s+${f4(j.f1[c])} \\[${f4(flo)}, ${f4(fhi)}\\]\\s+${f4(j.ece[l])}$`,
      "m",
    );
    assert.match(a.stdout, row);
  });
  assert.match(
    a.stdout,
    new RegExp(
      `^Mean AUROC over \\d+ defined classes: ${f4(j.mean_auroc_defined)} \\[` +
        `${f4(j.mean_auroc_defined_ci[0])}, ${f4(j.mean_auroc_defined_ci[1])}\\]$`,
      "m",
    ),
  );
  assert.match(a.stdout, /^Intervals: 90% percentile bootstrap, 200 resamples by patient/m);
  assert.match(a.stdout, /^Comparison: A = tiny_zip\.pt, B = b_model\.pt/m);
  assert.match(a.stdout, /^Mean \(\d+ classes\)\s+0\.\d{4}\s+0\.\d{4}\s+[+-]\d\.\d{4}\s+paired/m);

  // The report: intervals and ECE in the table, 14 reliability diagrams, the comparison.
  const root = parseXml(await Deno.readTextFile(`${out}/a.html`));
  const table = findAll(root, (e) => e.name === "table" && hasClass(e, "scores"))[0];
  const rows = findAll(table, (e) => e.name === "tr" && e.attrs["data-class"] !== undefined);
  rows.forEach((row, c) => {
    const cells = cellsOf(row);
    const [lo, hi] = j.auroc_ci[LABELS[c]] as Pair;
    assert.equal(cells[4], lo === null ? "n/a" : `[${f4(lo)}, ${f4(hi)}]`, LABELS[c]);
    assert.equal(cells[cells.length - 1], f4(j.ece[LABELS[c]]));
  });
  const panels = findAll(root, (e) => e.name === "svg" && hasClass(e, "reliability-panel"));
  assert.equal(panels.length, 14);
  const compare = findAll(root, (e) => e.name === "table" && hasClass(e, "compare"))[0];
  const compareRows = findAll(
    compare,
    (e) => e.name === "tr" && e.attrs["data-class"] !== undefined,
  );
  assert.equal(compareRows.length, 14);
  compareRows.forEach((row, c) => {
    const d = j.compare.classes[LABELS[c]];
    const cells = cellsOf(row);
    assert.equal(cells[1], d.auroc_a === null ? "n/a" : f4(d.auroc_a));
    assert.equal(
      cells[4],
      d.delong_ci[0] === null ? "n/a" : `[${f4(d.delong_ci[0])}, ${f4(d.delong_ci[1])}]`,
    );
  });
  assert.ok(allText(root).includes("200 resamples drawn by patient"));

  // Every number against scikit-learn / numpy, on the same predictions and resamples.
  const python = await findPythonWithSklearn();
  if (python === null) {
    console.log("skipping the sklearn comparison of validate_model.ts: no python3 with sklearn");
  } else {
    const pa = readPredictionsCsv(await Deno.readTextFile(`${out}/a.csv`));
    const pb = readPredictionsCsv(await Deno.readTextFile(`${out}/b.csv`));
    assert.deepEqual(pa.keys, pb.keys);
    const labels = pa.keys.map((k) => expected.labels[expected.keys.indexOf(k)]);
    const units = resampleUnits(pa.keys);
    const ref = await runIntervalReference(python, {
      labels,
      scores_a: pa.rows,
      scores_b: pb.rows,
      thresholds: j.thresholds,
      unit_of: Array.from(units.unitOf),
      draws: [...drawResamples(units.count, 200, new Rng(7))].map((d) => Array.from(d)),
      ci: 0.9,
    });
    const tol = 1e-9; // CSV probabilities are float32 printed exactly
    LABELS.forEach((l, c) => {
      close(j.auroc_ci[l][0], ref.bootstrap.auroc_ci[c][0], tol, `${l} AUROC low`);
      close(j.auroc_ci[l][1], ref.bootstrap.auroc_ci[c][1], tol, `${l} AUROC high`);
      close(j.f1_ci[l][0], ref.bootstrap.f1_ci[c][0], tol, `${l} F1 low`);
      close(j.f1_ci[l][1], ref.bootstrap.f1_ci[c][1], tol, `${l} F1 high`);
      assert.equal(j.bootstrap.skipped[l], ref.bootstrap.skipped[c], `${l} skipped`);
      close(j.ece[l], ref.ece[c].ece, 1e-9, `${l} ECE`);
      const d = ref.delong[c], k = j.compare.classes[l];
      if (d === null) {
        assert.equal(k.diff, null);
        return;
      }
      close(k.auroc_a, d.sklearn_a, 1e-12, `${l} AUROC A`);
      close(k.auroc_b, d.sklearn_b, 1e-12, `${l} AUROC B`);
      close(k.diff, d.diff, 1e-12, `${l} diff`);
      close(k.delong_ci[0], d.ci[0], 1e-8, `${l} DeLong low`);
      close(k.delong_ci[1], d.ci[1], 1e-8, `${l} DeLong high`);
      close(k.p_value, d.p_value, 2e-7 * d.p_value + 1e-300, `${l} p`);
    });
    for (
      const [mine, theirs, what] of [
        [j.mean_auroc_ci, ref.bootstrap.mean_auroc_ci, "mean AUROC"],
        [j.mean_auroc_defined_ci, ref.bootstrap.mean_auroc_defined_ci, "mean AUROC (defined)"],
        [j.mean_f1_ci, ref.bootstrap.mean_f1_ci, "mean F1"],
        [j.compare.mean.bootstrap_ci, ref.bootstrap.mean_diff_ci, "mean difference"],
      ]
    ) {
      close(mine[0], theirs[0], tol, `${what} low`);
      close(mine[1], theirs[1], tol, `${what} high`);
    }
  }
  await Deno.remove(dataset, { recursive: true });
  await Deno.remove(out, { recursive: true });
});

Deno.test("validate_model.ts: a bad --ci, or --compare with --images, is one line", async () => {
  const cases: [string[], RegExp][] = [
    [["--ci", "1.5"], /--ci 1\.5: give a level between 0 and 1/],
    [["--compare", "x.pt", "--images", "y.png"], /--compare/],
  ];
  for (const [args, pattern] of cases) {
    const r = await runScript("validate_model.ts", [...args, "--backend", "cpu"], []);
    assert.notEqual(r.code, 0);
    const lines = r.stderr.trim().split("\n").filter((l) => l.startsWith("error:"));
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0], pattern);
  }
});
