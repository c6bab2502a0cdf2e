/**
 * Class activation maps: the CheXNet formula against a hand computation from `features` and the
 * classifier weights of tests/fixtures/torch/tiny_zip.pt, maps that differ between classes,
 * overlays, and validate_model.ts --cam end to end (test set and --images).
 */
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-cpu";
import assert from "node:assert/strict";
import sharp from "sharp";
import { LABELS, NUM_CLASSES } from "../config.ts";
import {
  camFileName,
  classActivationMaps,
  jet,
  rawClassActivationMaps,
  renderCamOverlay,
  selectTopImages,
  topClassEntries,
  writeCams,
} from "../lib/eval/cam.ts";
import { decodeImage, type RgbImage } from "../lib/data/images.ts";
import { batchToTensor } from "../lib/eval/inference.ts";
import { disposeModel, features, forward } from "../lib/model/densenet.ts";
import { loadModel } from "../lib/model/model_loading.ts";
import { readShard } from "../lib/data/webdataset.ts";
import {
  paramsForImageSize,
  resolveParams,
  transformsTest,
  transformsTestCentercrop,
} from "../transforms/augmented_transforms.ts";
import { FIXTURE_SHARD } from "./helpers/original_data.ts";
import { fixtureDatasetDir, runScript } from "./helpers/scripts.ts";

await tf.setBackend("cpu");

const TINY = new URL("./fixtures/torch/tiny_zip.pt", import.meta.url).pathname;
const SIZE = 64;
const params = paramsForImageSize(SIZE);

/** The first `n` fixture samples, decoded. */
async function fixtureImages(n: number): Promise<{ key: string; image: RgbImage }[]> {
  const out: { key: string; image: RgbImage }[] = [];
  for await (const s of readShard(FIXTURE_SHARD)) {
    out.push({ key: s.key, image: await decodeImage(s.png, s.key) });
    if (out.length === n) break;
  }
  return out;
}

function inputOf(image: RgbImage): tf.Tensor4D {
  return tf.tidy(() =>
    transformsTest(
      batchToTensor({ images: image.data, n: 1, height: image.height, width: image.width }),
      undefined,
      params,
    )
  );
}

async function pngSize(bytes: Uint8Array): Promise<{ width: number; height: number }> {
  const meta = await sharp(bytes).metadata();
  assert.equal(meta.format, "png");
  return { width: meta.width!, height: meta.height! };
}

const [sample] = await fixtureImages(1);

Deno.test("raw CAM equals Σ_k w_kc·F_k computed by hand, and its mean + bias is the logit", async () => {
  const { model } = await loadModel(TINY);
  const x = inputOf(sample.image);
  try {
    const classes = [1, 4, 13];
    const f = features(model, x);
    const [, h, w, c] = f.shape;
    const fv = await f.data();
    const weights = await model.classifier.weight.data(); // [C, 14]
    const bias = await model.classifier.bias.data();
    const logits = forward(model, x, { training: false });
    const lv = await logits.data();
    const raw = rawClassActivationMaps(model, x, classes);
    assert.deepEqual(raw.shape, [1, h, w, classes.length]);
    const rv = await raw.data();
    tf.dispose([f, logits, raw]);
    let maxErr = 0;
    classes.forEach((cls, k) => {
      let sum = 0;
      for (let p = 0; p < h * w; p++) {
        let hand = 0;
        for (let ch = 0; ch < c; ch++) hand += weights[ch * NUM_CLASSES + cls] * fv[p * c + ch];
        maxErr = Math.max(maxErr, Math.abs(hand - rv[p * classes.length + k]));
        sum += hand;
      }
      // Global average pooling commutes with the linear layer: mean(CAM) + b = logit.
      assert.ok(Math.abs(sum / (h * w) + bias[cls] - lv[cls]) < 1e-4, `class ${cls} logit`);
    });
    assert.ok(maxErr < 1e-4, `max |CAM - hand| = ${maxErr}`);
  } finally {
    x.dispose();
    disposeModel(model);
  }
});

Deno.test("CAMs are upsampled, min-max normalised, and differ between classes; no leak", async () => {
  const { model } = await loadModel(TINY);
  const x = inputOf(sample.image);
  try {
    const before = tf.memory().numTensors;
    const cams = classActivationMaps(model, x, [0, 2]);
    const unnorm = classActivationMaps(model, x, [0, 2], { normalize: false });
    assert.equal(tf.memory().numTensors, before + 2, "only the two results stay alive");
    assert.deepEqual(cams.shape, [1, SIZE, SIZE, 2]);
    const v = await cams.data();
    const u = await unnorm.data();
    tf.dispose([cams, unnorm]);
    const map = (arr: ArrayLike<number>, k: number) =>
      Array.from({ length: SIZE * SIZE }, (_, p) => arr[p * 2 + k]);
    const [a, b] = [map(v, 0), map(v, 1)];
    for (const [k, m] of [a, b].entries()) {
      assert.equal(Math.min(...m), 0);
      assert.ok(Math.abs(Math.max(...m) - 1) < 1e-6);
      // Normalised = (unnormalised - min) / (max - min).
      const raw = map(u, k);
      const lo = Math.min(...raw), hi = Math.max(...raw);
      const err = Math.max(...raw.map((r, p) => Math.abs((r - lo) / (hi - lo) - m[p])));
      assert.ok(err < 1e-5, `class ${k}: normalisation error ${err}`);
    }
    const meanAbsDiff = a.reduce((s, ai, p) => s + Math.abs(ai - b[p]), 0) / a.length;
    assert.ok(meanAbsDiff > 0.05, `maps of two classes differ by only ${meanAbsDiff}`);
    assert.throws(() => classActivationMaps(model, x, [14]), /CAM classes/);
  } finally {
    x.dispose();
    disposeModel(model);
  }
});

Deno.test("renderCamOverlay blends jet at alpha 0.4 and burns the caption in", async () => {
  assert.deepEqual(jet(0), [0, 0, 0.5]);
  assert.deepEqual(jet(1), [0.5, 0, 0]);
  assert.deepEqual(jet(0.5), [0, 1, 1].map((_, i) => [0.5, 1, 0.5][i]));
  const { width, height } = sample.image;
  const cam = new Float32Array(width * height); // all 0: deep blue
  const png = await renderCamOverlay(sample.image, cam, { caption: "Effusion p=0.8123" });
  const { data, info } = await sharp(png).raw().toBuffer({ resolveWithObject: true });
  assert.deepEqual([info.width, info.height, info.channels], [width, height, 3]);
  const at = (
    x: number,
    y: number,
  ) => [...data.subarray((y * width + x) * 3, (y * width + x) * 3 + 3)];
  const i = (200 * width + 100) * 3;
  const grey = sample.image.data[i];
  assert.deepEqual(
    at(100, 200),
    [0.6 * grey, 0.6 * grey, 0.6 * grey + 0.4 * 127.5].map(Math.round),
  );
  // Caption: white glyph pixels on a darkened box in the top-left corner.
  const box = Array.from({ length: 9 * 100 }, (_, k) => at(k % 100, Math.floor(k / 100)));
  assert.ok(box.some((p) => p.every((c) => c === 255)), "white caption pixels");
  // Grey input (1 byte per pixel) works too.
  const g: RgbImage = { data: new Uint8Array(16).fill(100), width: 4, height: 4 };
  assert.deepEqual(await pngSize(await renderCamOverlay(g, new Float32Array(16))), {
    width: 4,
    height: 4,
  });
  await assert.rejects(() => renderCamOverlay(g, new Float32Array(3)), /do not match/);
});

Deno.test("selection: top images per class and top classes per image", () => {
  // 3 images × 14 classes; class c of image i = (i + 1) * (c % 2 ? 1 : -1) / 10.
  const probs = Float32Array.from(
    { length: 3 * NUM_CLASSES },
    (_, j) => (Math.floor(j / NUM_CLASSES) + 1) * (j % 2 ? 1 : -1) / 10,
  );
  const sel = selectTopImages(probs, 3, NUM_CLASSES, 2);
  const ranks = (i: number) => (sel.get(i) ?? []).map((e) => [e.classIndex, e.rank]);
  assert.deepEqual(ranks(2).filter(([c]) => c === 1), [[1, 1]]);
  assert.deepEqual(ranks(1).filter(([c]) => c === 1), [[1, 2]]);
  assert.deepEqual(ranks(0).filter(([c]) => c === 0), [[0, 1]]);
  assert.equal([...sel.values()].flat().length, 2 * NUM_CLASSES);
  assert.deepEqual(topClassEntries([0.1, 0.9, 0.5], 2), [
    { classIndex: 1, rank: 1, probability: 0.9 },
    { classIndex: 2, rank: 2, probability: 0.5 },
  ]);
  assert.equal(
    camFileName(12, 2, "00001_000", 0.123456),
    "Pleural_Thickening_2_00001_000_p0.1235.png",
  );
});

Deno.test("writeCams writes one PNG per entry, on the centre-crop region with -c; no leak", async () => {
  const { model } = await loadModel(TINY);
  const dir = await Deno.makeTempDir({ prefix: "cxr_cam_" });
  try {
    const before = tf.memory().numTensors;
    const entries = [{ classIndex: 3, rank: 1, probability: 0.25 }, {
      classIndex: 7,
      rank: 2,
      probability: 0.5,
    }];
    const plain = await writeCams(model, [{ key: sample.key, image: sample.image, entries }], {
      dir: `${dir}/plain`,
      transform: (x, r) => transformsTest(x, r, params),
    });
    const crop = await writeCams(model, [{ key: sample.key, image: sample.image, entries }], {
      dir: `${dir}/crop`,
      transform: (x, r) => transformsTestCentercrop(x, r, params),
      centerCrop: resolveParams(params),
    });
    assert.equal(tf.memory().numTensors, before, "writeCams leaks no tensors");
    assert.deepEqual(plain.map((p) => p.file), [
      `Infiltration_1_${sample.key}_p0.2500.png`,
      `Pneumothorax_2_${sample.key}_p0.5000.png`,
    ]);
    assert.deepEqual(await pngSize(await Deno.readFile(plain[0].path)), {
      width: 256,
      height: 256,
    });
    // 64 of 73 (the 224/256 proportion) of a 256 image.
    assert.deepEqual(await pngSize(await Deno.readFile(crop[0].path)), {
      width: 224,
      height: 224,
    });
  } finally {
    disposeModel(model);
    await Deno.remove(dir, { recursive: true });
  }
});

function parseCsv(text: string): { keys: string[]; probs: number[][] } {
  const rows = text.trim().split("\n").slice(1).map((l) => l.split(","));
  return {
    keys: rows.map((r) => r[0].replace(/\.png$/, "")),
    probs: rows.map((r) => r.slice(1).map(Number)),
  };
}

Deno.test("validate_model.ts --cam 2 writes 14×2 overlays of the top-scoring test images", async () => {
  const dataset = await fixtureDatasetDir(["test"]);
  const out = await Deno.makeTempDir({ prefix: "cxr_camrun_" });
  try {
    const r = await runScript("validate_model.ts", [
      "-s",
      TINY,
      "--dataset_dir",
      dataset,
      "--image_size",
      String(SIZE),
      "--predictions",
      `${out}/p.csv`,
      "--cam",
      "2",
      "--cam_dir",
      `${out}/cam`,
    ], [out]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`Class activation maps: 28 PNGs in ${out}/cam`));
    assert.match(r.stderr, /^CAM: .*28\/28 map/m, "a progress bar over the 28 maps");
    // Expected names from the evaluation's own probabilities (the --predictions CSV).
    const { keys, probs } = parseCsv(await Deno.readTextFile(`${out}/p.csv`));
    const expected = LABELS.flatMap((_, c) =>
      keys.map((k, i) => ({ k, p: probs[i][c] }))
        .sort((a, b) => b.p - a.p)
        .slice(0, 2)
        .map(({ k, p }, r) => camFileName(c, r + 1, k, p))
    ).sort();
    const files: string[] = [];
    for await (const e of Deno.readDir(`${out}/cam`)) files.push(e.name);
    assert.ok(files.includes("index.html"));
    files.splice(files.indexOf("index.html"), 1);
    assert.deepEqual(files.sort(), expected);
    for (const f of files) {
      assert.deepEqual(await pngSize(await Deno.readFile(`${out}/cam/${f}`)), {
        width: 256,
        height: 256,
      });
    }
  } finally {
    await Deno.remove(dataset, { recursive: true });
    await Deno.remove(out, { recursive: true });
  }
});

Deno.test("validate_model.ts --images X.png --cam 3 writes the image's top-3 classes", async () => {
  const out = await Deno.makeTempDir({ prefix: "cxr_camimg_" });
  try {
    let png: Uint8Array | null = null;
    for await (const s of readShard(FIXTURE_SHARD)) {
      png = s.png;
      break;
    }
    await Deno.writeFile(`${out}/xray.png`, png!);
    const r = await runScript("validate_model.ts", [
      "-s",
      TINY,
      "--image_size",
      String(SIZE),
      "--json",
      `${out}/p.json`,
      "--save_dir",
      out, // the default --cam_dir is <save_dir>/cam
      "--cam",
      "3",
      "--images",
      `${out}/xray.png`,
    ], [out]);
    assert.equal(r.code, 0, r.stderr);
    const record = JSON.parse(await Deno.readTextFile(`${out}/p.json`)).images[0];
    const probs = LABELS.map((l) => record.probabilities[l] as number);
    const expected = topClassEntries(probs, 3).map((e) =>
      camFileName(e.classIndex, e.rank, "xray", e.probability)
    );
    const files: string[] = [];
    for await (const e of Deno.readDir(`${out}/cam`)) {
      if (e.name.endsWith(".png")) files.push(e.name);
    }
    assert.deepEqual(files.sort(), expected.sort());
    assert.match(r.stdout, /Class activation maps: 3 PNGs in /);
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});
