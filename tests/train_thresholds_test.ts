/**
 * train_model.ts --thresholds (issue #23): `val` (the default) takes each class's threshold by
 * Youden's J on the validation predictions of the very model it saves; `train` on the training
 * epoch's, as the original tool. The saved model's validation predictions are recomputed by
 * validate_model.ts --subset val (the same weights, transform and batch size) and handed to
 * scikit-learn's roc_curve (tests/fixtures/intervals/make_intervals.py --youden) when Python
 * is installed, else to metrics.ts's youdenThresholds (itself checked against sklearn in
 * metrics_test.ts).
 */
import assert from "node:assert/strict";
import { LABELS, NUM_CLASSES } from "../config.ts";
import { youdenThresholds } from "../lib/eval/metrics.ts";
import { loadCheckpoint } from "../lib/torch/torch_checkpoint.ts";
import { fixtureDatasetDir, runScript, TINY_TRAIN_ARGS } from "./helpers/scripts.ts";
import { findPythonWithSklearn, runYoudenReference } from "./helpers/python_reference.ts";

const expected = JSON.parse(
  Deno.readTextFileSync(new URL("./fixtures/torch/expected.json", import.meta.url)),
) as { keys: string[]; labels: number[][] };

async function train(dataset: string, save: string, extra: string[]) {
  const r = await runScript("train_model.ts", [
    ...TINY_TRAIN_ARGS,
    "-b",
    "25",
    "-e",
    "2",
    "--backend",
    "wasm",
    "--dataset_dir",
    dataset,
    "--save_dir",
    save,
    ...extra,
  ], [save]);
  assert.equal(r.code, 0, r.stderr);
  const name = [...Deno.readDirSync(save)].map((e) => e.name).find((n) =>
    n.endsWith("_results.json")
  )!;
  const results = JSON.parse(await Deno.readTextFile(`${save}/${name}`));
  const model = `${save}/${name.replace(/_results\.json$/, "_model.pt")}`;
  const thresholds = Array.from((await loadCheckpoint(model)).thresholds!);
  return { r, results, model, thresholds };
}

Deno.test("train_model.ts --thresholds val: Youden's J of the saved model's validation predictions", async () => {
  const dataset = await fixtureDatasetDir(["train", "val"]);
  const save = await Deno.makeTempDir({ prefix: "cxr_thr_" });
  const val = await train(dataset, `${save}/val`, []);
  assert.equal(val.results.flags.thresholds, "val");
  assert.match(val.results.thresholds_from, /validation predictions/);
  assert.match(val.r.stdout, /^Thresholds: +Youden's J on validation predictions \(val\)$/m);
  assert.deepEqual(val.thresholds, val.results.best.thresholds);

  // The saved model's validation predictions, as the training run's validation pass made them.
  const v = await runScript("validate_model.ts", [
    "-s",
    val.model,
    "--subset",
    "val",
    "--dataset_dir",
    dataset,
    "-b",
    "25",
    "--backend",
    "wasm",
    "--bootstrap",
    "0",
    "--predictions",
    `${save}/val.csv`,
  ], [save]);
  assert.equal(v.code, 0, v.stderr);
  const rows = (await Deno.readTextFile(`${save}/val.csv`)).trim().split("\n").slice(1)
    .map((l) => l.split(","));
  const keys = rows.map((r) => r[0].replace(/\.png$/, ""));
  const scores = rows.map((r) => r.slice(1).map(Number));
  const labels = keys.map((k) => expected.labels[expected.keys.indexOf(k)]);
  const python = await findPythonWithSklearn();
  let reference: number[];
  if (python) {
    reference = await runYoudenReference(python, labels, scores);
  } else {
    console.log("no python3 with scikit-learn: Youden reference from metrics.ts instead");
    reference = Array.from(youdenThresholds(
      labels,
      { rows: scores.length, cols: NUM_CLASSES, data: Float32Array.from(scores.flat()) },
      LABELS,
      () => {},
    ));
  }
  // The same weights and batches give the same float32 outputs; a threshold is one of them.
  val.thresholds.forEach((t, c) =>
    assert.ok(Math.abs(t - reference[c]) <= 1e-6, `${LABELS[c]}: ${t} vs ${reference[c]}`)
  );
  // Some classes have both label values in the shard: not all thresholds are the 0.5 fallback.
  assert.ok(val.thresholds.some((t) => t !== 0.5));

  // --thresholds train: the original's way, recorded as such; not fitted on validation data.
  const tr = await train(dataset, `${save}/train`, ["--thresholds", "train"]);
  assert.equal(tr.results.flags.thresholds, "train");
  assert.match(tr.results.thresholds_from, /training epoch/);
  assert.match(tr.r.stdout, /^Thresholds: +Youden's J on training predictions \(train\)$/m);
  assert.notDeepEqual(tr.thresholds, val.thresholds);
  await Deno.remove(dataset, { recursive: true });
  await Deno.remove(save, { recursive: true });
});
