/**
 * export_model.ts end to end: the ONNX file runs in onnxruntime and the TF.js directory in
 * tf.loadGraphModel, both reproducing validate_model.ts --images on fixture images (PNG, JPEG,
 * DICOM) within 1e-4 at batch 1 and 16; onnx.checker (Debian's python3-onnx) accepts the file;
 * the metadata and the model card carry the contract's fields; the original's DenseNet-121
 * checkpoint and a tiny model trained here both export; a wrong head gets validate's error.
 */
import * as tf from "@tensorflow/tfjs-core";
import { loadGraphModel } from "@tensorflow/tfjs-converter";
import * as ort from "onnxruntime-node";
import assert from "node:assert/strict";
import { assertClose } from "./assert.ts";
import {
  cliPredictions,
  fixtureDatasetDir,
  runScript,
  seedModelPath,
  TINY_TRAIN_ARGS,
} from "./helpers/scripts.ts";
import { LABELS, NORM_MEAN, NORM_STD } from "../config.ts";
import { initBackend } from "../lib/backends/backend.ts";
import { decodeImagePath } from "../lib/data/images.ts";
import { batchToTensor } from "../lib/eval/inference.ts";
import { loadCheckpoint, writeCheckpoint } from "../lib/torch/torch_checkpoint.ts";
import { loadModel } from "../lib/model/model_loading.ts";
import { rawClassActivationMaps } from "../lib/eval/cam.ts";
import { disposeModel } from "../lib/model/densenet.ts";
import { foldBatchNorm } from "../lib/export/graph.ts";
import {
  paramsForImageSize,
  transformsTest,
  transformsTestCentercrop,
} from "../transforms/augmented_transforms.ts";

const FIX = new URL("./fixtures/", import.meta.url).pathname;
/** 16 fixture images: 8- and 16-bit PNG, grey, alpha, palette, JPEG, EXIF, DICOM. */
export const EXPORT_IMAGES = [
  ...[
    "exif_rotated.jpg",
    "gray.jpg",
    "gray16.png",
    "gray8.png",
    "gray_alpha8.png",
    "palette.png",
    "rgb.jpg",
    "rgb16.png",
    "rgb8.png",
    "rgba16.png",
    "rgba8.png",
  ].map((f) => `${FIX}images/${f}`),
  ...["xray.png", "xray.jpg", "small.png", "mono2_8bit.dcm", "jpeg_baseline.dcm"].map((f) =>
    `${FIX}dicom/${f}`
  ),
];
const TOL = 1e-4;
const BACKEND = "wasm";

await initBackend(BACKEND);

/** The network inputs validate makes of `files` (NHWC, normalised), one per image. */
export async function networkInputs(
  files: string[],
  imageSize: number,
  centerCrop = false,
): Promise<Float32Array[]> {
  const size = paramsForImageSize(imageSize);
  const out: Float32Array[] = [];
  for (const file of files) {
    const img = await decodeImagePath(file);
    const x = tf.tidy(() => {
      const t = batchToTensor({ ...img, images: img.data, n: 1 });
      return centerCrop
        ? transformsTestCentercrop(t, undefined, size)
        : transformsTest(t, undefined, size);
    });
    out.push(await x.data() as Float32Array);
    x.dispose();
  }
  return out;
}

function toNchw(x: Float32Array, s: number): Float32Array {
  const out = new Float32Array(x.length);
  for (let c = 0; c < 3; c++) {
    for (let p = 0; p < s * s; p++) out[c * s * s + p] = x[p * 3 + c];
  }
  return out;
}

function concat(parts: Float32Array[]): Float32Array {
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Runs `fn` on batches of `batch` inputs; the rows of its `[n, 14]` outputs, in order. */
async function batched(
  inputs: Float32Array[],
  batch: number,
  fn: (x: Float32Array, n: number) => Promise<Float32Array>,
): Promise<number[][]> {
  const rows: number[][] = [];
  for (let i = 0; i < inputs.length; i += batch) {
    const part = inputs.slice(i, i + batch);
    const y = await fn(concat(part), part.length);
    for (let k = 0; k < part.length; k++) rows.push(Array.from(y.subarray(k * 14, k * 14 + 14)));
  }
  return rows;
}

async function onnxPredict(path: string, inputs: Float32Array[], s: number, batch: number) {
  const session = await ort.InferenceSession.create(path);
  try {
    return await batched(inputs.map((x) => toNchw(x, s)), batch, async (x, n) => {
      const r = await session.run({ image: new ort.Tensor("float32", x, [n, 3, s, s]) }, [
        "probabilities",
      ]);
      return r.probabilities.data as Float32Array;
    });
  } finally {
    await session.release();
  }
}

async function tfjsPredict(dir: string, inputs: Float32Array[], s: number, batch: number) {
  const model = await loadGraphModel(new URL(`file://${dir}/model.json`).href);
  try {
    return await batched(inputs, batch, async (x, n) => {
      const y = tf.tidy(() =>
        model.execute(tf.tensor4d(x, [n, s, s, 3]), "probabilities") as tf.Tensor
      );
      const data = await y.data() as Float32Array;
      y.dispose();
      return data;
    });
  } finally {
    model.dispose();
  }
}

function assertRowsClose(actual: number[][], expected: number[][], what: string) {
  assert.equal(actual.length, expected.length, what);
  actual.forEach((row, i) => assertClose(row, expected[i], TOL, `${what}, image ${i}`));
}

/** Exports `model` in `format` to `out`; asserts success and returns stdout. */
async function exportTo(model: string, format: string, out: string, extra: string[] = []) {
  const r = await runScript("export_model.ts", [
    "-s",
    model,
    "--format",
    format,
    "-o",
    out,
    ...extra,
  ], [out.endsWith(".onnx") ? out.slice(0, out.lastIndexOf("/")) : out]);
  assert.equal(r.code, 0, r.stderr);
  return r.stdout;
}

const PYTHON = "/usr/bin/python3";
const hasPythonOnnx = await (async () => {
  try {
    const r = await new Deno.Command(PYTHON, { args: ["-c", "import onnx"], stderr: "null" })
      .output();
    return r.success;
  } catch {
    return false;
  }
})();
if (!hasPythonOnnx) {
  console.log(
    "skipping onnx.checker: Debian's python3-onnx is not installed (apt-get install python3-onnx)",
  );
}

/** onnx.checker (full check, shape inference included) and the metadata, read by the onnx package. */
async function onnxChecker(path: string): Promise<Record<string, string> | null> {
  if (!hasPythonOnnx) return null;
  const script = "import onnx, json, sys\n" +
    "m = onnx.load(sys.argv[1])\n" +
    "onnx.checker.check_model(m, full_check=True)\n" +
    "assert m.opset_import[0].version >= 13\n" +
    "print(json.dumps({p.key: p.value for p in m.metadata_props}))\n";
  const r = await new Deno.Command(PYTHON, { args: ["-c", script, path] }).output();
  const dec = new TextDecoder();
  assert.ok(r.success, `onnx.checker: ${dec.decode(r.stderr)}`);
  return JSON.parse(dec.decode(r.stdout));
}

async function sha256(path: string): Promise<string> {
  const d = new Uint8Array(await crypto.subtle.digest("SHA-256", await Deno.readFile(path)));
  return Array.from(d, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Trains the tiny DenseNet for one epoch on the fixture shard; its `_model.pt`. */
export async function trainTinyModel(
  saveDir: string,
  dataset: string,
  extra: string[] = [],
): Promise<string> {
  {
    const r = await runScript("train_model.ts", [
      ...TINY_TRAIN_ARGS,
      "-b",
      "25",
      "-e",
      "1",
      "--dataset_dir",
      dataset,
      "--save_dir",
      saveDir,
      ...extra,
    ], [saveDir]);
    assert.equal(r.code, 0, r.stderr);
  }
  const model = [...Deno.readDirSync(saveDir)].find((e) => e.name.endsWith("_model.pt"));
  if (!model) throw new Error("training wrote no model");
  return `${saveDir}/${model.name}`;
}

Deno.test("foldBatchNorm: conv then BatchNorm equals the folded conv (float64 reference)", () => {
  // A 1×1 conv of 2 input channels into 2 outputs, on one pixel: exact arithmetic by hand.
  const w = Float32Array.from([1, 2, -3, 0.5]);
  const bn = {
    gamma: Float32Array.from([2, 0.5]),
    beta: Float32Array.from([0.1, -1]),
    mean: Float32Array.from([3, -2]),
    variance: Float32Array.from([4 - 1e-5, 0.25 - 1e-5]),
  };
  const f = foldBatchNorm(w, 2, bn);
  const x = [0.7, -1.3];
  for (let o = 0; o < 2; o++) {
    const conv = w[o * 2] * x[0] + w[o * 2 + 1] * x[1];
    const ref = (conv - bn.mean[o]) / Math.sqrt(bn.variance[o] + 1e-5) * bn.gamma[o] + bn.beta[o];
    const folded = f.weight[o * 2] * x[0] + f.weight[o * 2 + 1] * x[1] + f.bias[o];
    assert.ok(Math.abs(folded - ref) < 1e-6, `channel ${o}: ${folded} vs ${ref}`);
  }
});

Deno.test("export: a tiny model trained here, as ONNX and TF.js, predicts as validate (batch 1 and 16)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cxr_export_" });
  const dataset = await fixtureDatasetDir(["train", "val", "test"]);
  try {
    // The split record preprocessing writes beside the shards, for the model card.
    const split = {
      random_seed: 7,
      subset_size: 120,
      official_split: false,
      image_size: 256,
      shard_size: 1000,
      meta_file: { path: "Data_Entry_2017_v2020.csv", bytes: 1, sha256: "ab".repeat(32) },
      lists: null,
    };
    await Deno.writeTextFile(`${dataset}/ChestXray14_split.json`, JSON.stringify(split));
    const model = await trainTinyModel(`${dir}/save`, dataset);
    // Test metrics for the card: validate's --json on the (fixture) test shard.
    const val = await runScript("validate_model.ts", [
      "-s",
      model,
      "--backend",
      BACKEND,
      "--dataset_dir",
      dataset,
      "--json",
      `${dir}/test.json`,
    ], [dir]);
    assert.equal(val.code, 0, val.stderr);
    const test = JSON.parse(await Deno.readTextFile(`${dir}/test.json`));
    const onnxPath = `${dir}/onnx/model.onnx`;
    const out = await exportTo(model, "onnx", onnxPath, ["--metrics", `${dir}/test.json`]);
    assert.match(out, /image size 40/);
    await exportTo(model, "tfjs", `${dir}/tfjs`);
    const expected = await cliPredictions(model, EXPORT_IMAGES);
    const inputs = await networkInputs(EXPORT_IMAGES, 40);
    for (const batch of [1, 16]) {
      assertRowsClose(
        await onnxPredict(onnxPath, inputs, 40, batch),
        expected,
        `ONNX batch ${batch}`,
      );
      assertRowsClose(
        await tfjsPredict(`${dir}/tfjs`, inputs, 40, batch),
        expected,
        `TF.js batch ${batch}`,
      );
    }

    // The contract's metadata, as the onnx package reads it, and the same in model.json.
    const results = JSON.parse(
      await Deno.readTextFile(model.replace(/_model\.pt$/, "_results.json")),
    );
    const thresholds = results.best.thresholds as number[];
    const meta = await onnxChecker(onnxPath);
    const tfjsMeta = JSON.parse(await Deno.readTextFile(`${dir}/tfjs/model.json`))
      .userDefinedMetadata;
    for (const m of [meta, tfjsMeta]) {
      if (m === null) continue;
      const get = (k: string) => (typeof m[k] === "string" && m === meta ? JSON.parse(m[k]) : m[k]);
      assert.deepEqual(get("labels"), [...LABELS]);
      assertClose(get("thresholds"), thresholds, 1e-7, "thresholds");
      assert.deepEqual(get("mean"), [...NORM_MEAN]);
      assert.deepEqual(get("std"), [...NORM_STD]);
      assert.equal(get("image_size"), 40);
      assert.equal(m.transform, "resize 40");
      assert.equal(m.source_sha256, await sha256(model));
      assert.equal(m.cam_output, "class_activation_maps");
      assert.equal(get("training_settings").flags.arch, "densenet_tiny");
      assert.equal(get("training_settings").flags.image_size, 40);
    }
    for (const sub of ["onnx", "tfjs"]) {
      const card = await Deno.readTextFile(`${dir}/${sub}/MODEL_CARD.md`);
      assert.match(card, /Not a medical device/);
      assert.match(card, /50 training and 50 validation images/);
      assert.match(card, /Validation \(epoch 1\): loss \d\.\d{4}/);
      assert.match(card, new RegExp(`Split: seed 7, 20 % of patients for test, a subset of 120`));
      assert.match(card, new RegExp(`metadata file SHA-256 \`${"ab".repeat(32)}\``));
      const json = JSON.parse(await Deno.readTextFile(`${dir}/${sub}/model_card.json`));
      assert.equal(json.not_a_medical_device, true);
      assert.deepEqual(json.training.split, split);
      assert.equal(json.validation.epoch, 1);
      assert.equal(json.training.dataset.train.images, 50);
    }
    // --metrics: the test results in the ONNX export's card, none in the TF.js one.
    const onnxCard = await Deno.readTextFile(`${dir}/onnx/MODEL_CARD.md`);
    assert.match(
      onnxCard,
      new RegExp(
        `Test \\(50 images, resize 40\\): mean AUROC .*mean F1 ${test.mean_f1.toFixed(4)}`,
      ),
    );
    assert.equal(
      JSON.parse(await Deno.readTextFile(`${dir}/onnx/model_card.json`)).test.mean_f1,
      test.mean_f1,
    );
    assert.match(await Deno.readTextFile(`${dir}/tfjs/MODEL_CARD.md`), /Test: not known/);
    // The TF.js shards: 4 MB at most each, as tfjs-converter writes them.
    const manifest = JSON.parse(await Deno.readTextFile(`${dir}/tfjs/model.json`)).weightsManifest;
    for (const p of manifest[0].paths) {
      assert.ok((await Deno.stat(`${dir}/tfjs/${p}`)).size <= 4 * 1024 * 1024);
    }
  } finally {
    await Deno.remove(dataset, { recursive: true });
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("export: a DenseNet-121 trained here (32 px, one epoch) predicts as validate", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cxr_export_121_" });
  const dataset = await fixtureDatasetDir(["train", "val"]);
  try {
    const model = await trainTinyModel(`${dir}/save`, dataset, [
      "--arch",
      "densenet121",
      "--image_size",
      "32",
    ]);
    const onnxPath = `${dir}/onnx/model.onnx`;
    await exportTo(model, "onnx", onnxPath);
    await exportTo(model, "tfjs", `${dir}/tfjs`);
    const meta = await onnxChecker(onnxPath);
    if (meta) {
      assert.equal(meta.architecture, "DenseNet-121");
      assert.equal(JSON.parse(meta.training_settings).flags.arch, "densenet121");
      assert.equal(meta.image_size, "32");
    }
    const expected = await cliPredictions(model, EXPORT_IMAGES);
    const inputs = await networkInputs(EXPORT_IMAGES, 32);
    for (const batch of [1, 16]) {
      assertRowsClose(
        await onnxPredict(onnxPath, inputs, 32, batch),
        expected,
        `ONNX batch ${batch}`,
      );
    }
    assertRowsClose(await tfjsPredict(`${dir}/tfjs`, inputs, 32, 16), expected, "TF.js batch 16");
  } finally {
    await Deno.remove(dataset, { recursive: true });
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("export: the class activation maps output equals validate's CAMs (lib/eval/cam.ts)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cxr_export_cam_" });
  const tiny = `${FIX}torch/tiny_zip.pt`;
  try {
    await exportTo(tiny, "onnx", `${dir}/m.onnx`, ["--image_size", "64"]);
    const [x] = await networkInputs([EXPORT_IMAGES[3]], 64);
    const session = await ort.InferenceSession.create(`${dir}/m.onnx`);
    const r = await session.run({
      image: new ort.Tensor("float32", toNchw(x, 64), [1, 3, 64, 64]),
    });
    await session.release();
    const [, k, h, w] = r.class_activation_maps.dims as number[];
    const cams = r.class_activation_maps.data as Float32Array;
    const { model } = await loadModel(tiny);
    const classes = Array.from({ length: 14 }, (_, c) => c);
    const ref = rawClassActivationMaps(model, tf.tensor4d(x, [1, 64, 64, 3]), classes);
    const refData = await ref.data();
    ref.dispose();
    disposeModel(model);
    // ONNX is [1, 14, h, w]; the reference [1, h, w, 14].
    const nchw = new Float32Array(cams.length);
    for (let c = 0; c < k; c++) {
      for (let p = 0; p < h * w; p++) nchw[c * h * w + p] = refData[p * k + c];
    }
    assertClose(cams, nchw, TOL, "CAMs");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("export: the original's DenseNet-121 checkpoint, ONNX and TF.js, predicts as validate", async () => {
  const seed = seedModelPath();
  if (!seed) return;
  const dir = await Deno.makeTempDir({ prefix: "cxr_export_seed_" });
  try {
    const onnxPath = `${dir}/onnx/model.onnx`;
    await exportTo(seed, "onnx", onnxPath, ["-c"]);
    await exportTo(seed, "tfjs", `${dir}/tfjs`, ["-c"]);
    const meta = await onnxChecker(onnxPath);
    if (meta) {
      assert.equal(meta.transform, "resize 256, center crop 224");
      assert.equal(meta.architecture, "DenseNet-121");
      assert.equal(meta.training_settings, "null");
    }
    const expected = await cliPredictions(seed, EXPORT_IMAGES, ["-c"]);
    const inputs = await networkInputs(EXPORT_IMAGES, 224, true);
    for (const batch of [1, 16]) {
      assertRowsClose(
        await onnxPredict(onnxPath, inputs, 224, batch),
        expected,
        `ONNX batch ${batch}`,
      );
    }
    // TF.js on the wasm backend (slower than onnxruntime): four images, at batch 1 and 4;
    // batch 16 is checked on the tiny model.
    for (const batch of [1, 4]) {
      assertRowsClose(
        await tfjsPredict(`${dir}/tfjs`, inputs.slice(0, 4), 224, batch),
        expected.slice(0, 4),
        `TF.js batch ${batch}`,
      );
    }
    const card = await Deno.readTextFile(`${dir}/tfjs/MODEL_CARD.md`);
    assert.match(card, /DenseNet-121/);
    assert.match(card, /no `_results.json` beside the checkpoint/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("export: a checkpoint with another head gets validate's one-line error", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cxr_export_head_" });
  try {
    const ckpt = await loadCheckpoint(`${FIX}torch/tiny_zip.pt`);
    const w = ckpt.stateDict.get("classifier.0.weight") ?? ckpt.stateDict.get("classifier.weight")!;
    const b = ckpt.stateDict.get("classifier.0.bias") ?? ckpt.stateDict.get("classifier.bias")!;
    const key = ckpt.stateDict.has("classifier.weight") ? "classifier" : "classifier.0";
    ckpt.stateDict.set(`${key}.weight`, {
      ...w,
      shape: [5, w.shape[1]],
      data: w.data.slice(0, 5 * w.shape[1]),
    });
    ckpt.stateDict.set(`${key}.bias`, { ...b, shape: [5], data: b.data.slice(0, 5) });
    const bad = `${dir}/five_model.pt`;
    await writeCheckpoint(bad, ckpt);
    const exp = await runScript("export_model.ts", ["-s", bad, "-o", `${dir}/x.onnx`], [dir]);
    const val = await runScript("validate_model.ts", [
      "-s",
      bad,
      "--backend",
      "cpu",
      "--images",
      EXPORT_IMAGES[3],
    ], [dir]);
    assert.notEqual(exp.code, 0);
    const line = (s: string) => s.trim().split("\n").filter((l) => l.startsWith("error:"));
    assert.equal(line(exp.stderr).length, 1, exp.stderr);
    assert.match(line(exp.stderr)[0], /has the head .*not a 14-class Linear/);
    assert.deepEqual(line(exp.stderr), line(val.stderr));
    assert.equal(exp.stderr.trim().split("\n").length, 1, exp.stderr);
    assert.ok(!(await Deno.stat(`${dir}/x.onnx`).catch(() => null)), "nothing written");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
