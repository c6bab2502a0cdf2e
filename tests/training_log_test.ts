/**
 * What training prints and writes for its users (issue 15 frictions 3, 6, 7): the settings
 * block, the time estimate, one AUROC story (both means, labelled, on the console, in JSON and
 * in the curves), numbers as people write them, the threshold warning once per class, the
 * original's `_results.pt` (read back with torch.load when PyTorch is installed) and the
 * "Best model results" summary.
 */
import assert from "node:assert/strict";
import { fixtureDatasetDir, runScript, TINY_TRAIN_ARGS } from "./helpers/scripts.ts";
import { LABELS } from "../config.ts";
import {
  EstimatingProgress,
  formatEpochLine,
  formatEstimate,
  formatSettings,
  originalResults,
} from "../lib/report/training_log.ts";
import { renderTrainingCurves } from "../lib/report/training_curves.ts";
import { formatDecimal, plural } from "../lib/util/format.ts";
import { OnceWarnings } from "../lib/util/warnings.ts";
import { findAll, parseXml } from "./xml_check.ts";

Deno.test("numbers and counts as people write them", () => {
  assert.equal(formatDecimal(0.001 * 0.3), "0.0003");
  assert.equal(formatDecimal(0.00030000000000000003), "0.0003");
  assert.equal(formatDecimal(3e-4 * 0.1), "0.00003");
  assert.equal(formatDecimal(1e-3 * 0.1 * 0.1 * 0.1 * 0.1), "1e-7");
  assert.equal(formatDecimal(0.1), "0.1");
  assert.equal(plural(1, "image"), "1 image");
  assert.equal(plural(28, "image"), "28 images");
  assert.equal(plural(0, "epoch"), "0 epochs");
});

Deno.test("a warning once per key, then a count", () => {
  const printed: string[] = [];
  const w = new OnceWarnings((m) => printed.push(m));
  for (let epoch = 0; epoch < 3; epoch++) {
    w.warn("Hernia undefined", "Hernia");
    w.warn("Edema undefined", "Edema");
  }
  assert.deepEqual(printed, ["Hernia undefined", "Edema undefined"]);
  assert.equal(w.repeats, 4);
  assert.match(w.summary("threshold")!, /^4 repeated threshold warnings not shown/);
  assert.equal(new OnceWarnings(() => {}).summary("x"), null);
});

Deno.test("epoch line: both AUROC means labelled when a class is undefined, one otherwise", () => {
  const times = { train_loss: 0.2, val_loss: 0.25, train_images_per_s: 12.34, seconds: 65 };
  const metrics = (auroc: number[]) => ({
    auroc: Float64Array.from(auroc),
    f1: new Float64Array(14).fill(0.3),
    meanAuroc: auroc.some(Number.isNaN) ? NaN : auroc.reduce((a, b) => a + b) / 14,
    meanAurocDefined: 0.65432,
    definedClasses: auroc.filter((v) => !Number.isNaN(v)).length,
    meanF1: 0.3,
  });
  const half = [...Array(7).fill(0.65432), ...Array(7).fill(NaN)];
  assert.equal(
    formatEpochLine(times, metrics(half), null),
    "train loss 0.2000 | val loss 0.2500 | val mean AUROC NaN | val mean AUROC over 7 defined " +
      "classes 0.6543 | val mean F1 0.3000 | 12.3 img/s | 1:05",
  );
  const full = formatEpochLine(times, metrics(Array(14).fill(0.81)), "m.pt");
  assert.match(full, /\| val mean AUROC 0\.8100 \| val mean F1 0\.3000 \|.*\| saved m\.pt$/);
  assert.doesNotMatch(full, /defined/);
});

Deno.test("curves: every legend entry has its line; the defined-class mean when one is undefined", () => {
  const epochs = [1, 2, 3].map((e) => ({
    epoch: e,
    train_loss: 0.3 / e,
    val_loss: 0.35 / e,
    val_mean_auroc: null,
    val_mean_auroc_defined: 0.6 + e / 100,
    val_mean_f1: 0.2,
    lr: 1e-3,
  }));
  const root = parseXml(renderTrainingCurves(epochs));
  const legends = findAll(root, (e) => e.name === "g" && e.attrs.class === "legend");
  const names = legends.flatMap((g) => findAll(g, (e) => e.name === "text").map((t) => t.text));
  assert.deepEqual(names, [
    "training loss",
    "validation loss",
    "mean AUROC over defined classes",
    "mean F1",
  ]);
  for (const name of names) {
    const lines = findAll(root, (e) => e.name === "polyline" && e.attrs["data-series"] === name);
    assert.equal(lines.length, 1, name);
    assert.equal(lines[0].attrs.points.trim().split(/\s+/).length, 3, `${name} has 3 points`);
  }
  // All classes defined: one AUROC line, named as on the console.
  const full = parseXml(renderTrainingCurves(epochs.map((e) => ({ ...e, val_mean_auroc: 0.7 }))));
  const fullNames = findAll(full, (e) => e.name === "polyline").map((p) => p.attrs["data-series"]);
  assert.ok(
    fullNames.includes("mean AUROC") && !fullNames.includes("mean AUROC over defined classes"),
  );
});

Deno.test("settings block and time estimate", () => {
  const text = formatSettings({
    batch_size: 16,
    workers: 2,
    learning_rate: 0.00030000000000000003,
    s_factor: 0.1,
    s_patience: 0,
    augmentation: true,
    image_size: 224,
    arch: "densenet121",
    saved_model: null,
    epochs: 8,
  }, { name: "wasm", device: "CPU" });
  for (
    const line of ["Device:", "Batch size:", "Workers:", "Learning rate:", "Data augmentation:"]
  ) {
    assert.match(text, new RegExp(`^${line} +\\S`, "m"));
  }
  assert.match(text, /^Learning rate: +0\.0003$/m);
  assert.match(text, /^Scheduler factor: +0\.1$/m);
  assert.match(text, /^Data augmentation: +yes$/m);
  assert.equal(
    formatEstimate(600, { trainImages: 1000, valImages: 300, epochs: 8 }),
    "Estimated time: 11:00 per epoch (training 10:00), 1:28:00 for 8 epochs.",
  );
  // Said once, after three timed batches (the first, compiling, is not timed).
  const said: string[] = [];
  const bar = new EstimatingProgress("train", 100, (s) => `${Math.round(s)}`, {
    silent: true,
    print: (l) => said.push(l),
  });
  for (let i = 0; i < 9; i++) bar.tick(10);
  assert.equal(said.length, 1);
});

const TRAIN = [
  ...TINY_TRAIN_ARGS,
  "-b",
  "2",
  "-e",
  "2",
  "-l",
  "0.0003",
];

/** python3 with torch (the pyenv one may lack it; Debian's has it), or null. */
async function pythonWithTorch(): Promise<string | null> {
  for (const py of ["python3", "/usr/bin/python3"]) {
    try {
      const r = await new Deno.Command(py, { args: ["-c", "import torch"], stderr: "null" })
        .output();
      if (r.success) return py;
    } catch { /* not installed */ }
  }
  return null;
}

Deno.test("train_model.ts: settings, estimate, one warning per class, results.pt, best results", async () => {
  const dataset = await fixtureDatasetDir(["train", "val"]);
  const save = await Deno.makeTempDir({ prefix: "cxr_log_" });
  const r = await runScript("train_model.ts", [
    ...TRAIN,
    "--dataset_dir",
    dataset,
    "--save_dir",
    save,
  ], [save]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^Device: +\w+ \(/m);
  assert.match(r.stdout, /^Learning rate: +0\.0003$/m);
  assert.match(r.stdout, /^Epoch 1\/2 \(lr 0\.0003\)$/m);
  assert.match(r.stdout, /^Estimated time: \d+:\d\d per epoch .* for 2 epochs\.$/m);
  assert.equal(r.stdout.match(/^Estimated time/gm)?.length, 1);
  // The fixture shard lacks positives for several classes: each class warns once per run.
  for (const label of LABELS) {
    const n = r.stderr.split("\n").filter((l) => l.includes(`threshold for ${label} `)).length;
    assert.ok(n <= 1, `${label} warned ${n} times`);
  }
  assert.match(r.stderr, /^\d+ repeated threshold warnings? not shown/m);
  assert.doesNotMatch(r.stderr, /^note: /m, "no backend notes without --verbose");
  assert.match(r.stdout, /val mean AUROC NaN \| val mean AUROC over \d+ defined classes 0\.\d{4}/);
  assert.match(r.stdout, /^Training complete: 2 epochs\.$/m);
  assert.match(r.stdout, /^Best model results:$/m);
  assert.match(r.stdout, /^ {2}Mean AUROC over defined classes: +0\.\d{4}$/m);

  const name = [...Deno.readDirSync(save)].map((e) => e.name).find((n) => n.endsWith(".json"))!;
  const results = JSON.parse(await Deno.readTextFile(`${save}/${name}`));
  const epochs = results.epochs;
  assert.equal(epochs[0].val_mean_auroc, null);
  assert.ok(Number.isFinite(epochs[0].val_mean_auroc_defined));
  const pt = `${save}/${name.replace(/\.json$/, ".pt")}`;
  const py = await pythonWithTorch();
  if (py === null) {
    console.log("skipping the torch.load check of _results.pt: no python3 with torch");
  } else {
    const script = "import sys, json, torch, numpy as np\n" +
      "r = torch.load(sys.argv[1])\n" +
      "out = {k: (v.tolist() if isinstance(v, np.ndarray) else float(v)) for k, v in r.items()}\n" +
      "out['_types'] = {k: type(v).__name__ + ':' + str(v.dtype) for k, v in r.items()}\n" +
      "print(json.dumps(out).replace('NaN', 'null'))";
    const o = await new Deno.Command(py, { args: ["-c", script, pt], stdout: "piped" }).output();
    assert.ok(o.success, "torch.load");
    const loaded = JSON.parse(new TextDecoder().decode(o.stdout));
    const expected = originalResults(epochs);
    assert.deepEqual(Object.keys(loaded).filter((k) => k !== "_types"), expected.map(([k]) => k));
    for (const [k, v] of expected) {
      const want = typeof v === "number" ? v : Array.from(v);
      assert.deepEqual(loaded[k], JSON.parse(JSON.stringify(want).replace(/NaN/g, "null")), k);
      const type = typeof v === "number" ? "float64:float64" : "ndarray:float64";
      assert.equal(loaded._types[k], type, k);
    }
    assert.deepEqual(
      loaded["training loss"],
      epochs.map((e: { train_loss: number }) => e.train_loss),
    );
  }
  await Deno.remove(dataset, { recursive: true });
  await Deno.remove(save, { recursive: true });
});
