/**
 * Tests for transforms/augmented_transforms.ts on the cpu backend (plus one run on wasm).
 * OpenCV references come from tests/fixtures/transforms/make_transforms_reference.py.
 */
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-cpu";
import "@tensorflow/tfjs-backend-wasm";
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import sharp from "sharp";
import { NORM_MEAN, NORM_STD } from "../config.ts";
import { Rng } from "../lib/util/rng.ts";
import { writeAugmentationPreview } from "../transforms/preview.ts";
import {
  applyAugmentation,
  applyMat3,
  AUGMENTATION_PARAMS,
  type AugmentationDraw,
  brightnessContrastBatch,
  centerCrop,
  cropAndFlip,
  drawAugmentation,
  flipBatch,
  IDENTITY,
  invert3,
  type Mat3,
  matMul3,
  perspectiveGeometry,
  perspectiveMatrix,
  type Quad,
  resizeBatch,
  shiftScaleRotateMatrix,
  TEN_CROP_ORDER,
  tenCrop,
  transformsDatasetCreation,
  transformsTest,
  transformsTestCentercrop,
  transformsTestTenCrop,
  transformsTrain,
  transformsTrainAugmented,
  warpBatch,
} from "../transforms/augmented_transforms.ts";

await tf.setBackend("cpu");

const FIXTURES = new URL("./fixtures/", import.meta.url);
const REF = JSON.parse(
  await Deno.readTextFile(new URL("transforms/opencv_reference.json", FIXTURES)),
);
const FILL = 105 / 256;

function f32(b64: string): Float32Array {
  const bytes = Uint8Array.from(atob(b64), (ch) => ch.charCodeAt(0));
  return new Float32Array(bytes.buffer);
}

/** The 48×48 crop of the fixture X-ray used by the OpenCV reference, as [1, 48, 48, 3] in [0, 1]. */
function refCrop(): tf.Tensor4D {
  const n = REF.crop.size;
  const bytes = Uint8Array.from(atob(REF.crop.rgb8), (ch) => ch.charCodeAt(0));
  return tf.tidy(() => tf.div(tf.tensor4d(bytes, [1, n, n, 3], "int32"), 255));
}

/** Channel 0 of image 0 as a flat array. */
function channel0(t: tf.Tensor4D): Float32Array {
  const c = tf.slice(t, [0, 0, 0, 0], [1, -1, -1, 1]);
  const v = c.dataSync() as Float32Array;
  c.dispose();
  return v;
}

/** The values of a tensor made by `make`, which is disposed. */
function values(make: () => tf.Tensor): Float32Array {
  const t = make();
  const v = t.dataSync() as Float32Array;
  t.dispose();
  return v;
}

/** Max and mean |a - b| over the pixels at least `margin` from every edge of a size×size image. */
function interiorDiff(a: ArrayLike<number>, b: ArrayLike<number>, size: number, margin: number) {
  let max = 0, sum = 0, count = 0;
  for (let y = margin; y < size - margin; y++) {
    for (let x = margin; x < size - margin; x++) {
      const d = Math.abs(a[y * size + x] - b[y * size + x]);
      max = Math.max(max, d);
      sum += d;
      count++;
    }
  }
  return { max, mean: sum / count };
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let k = 0; k < a.length; k++) m = Math.max(m, Math.abs(a[k] - b[k]));
  return m;
}

/** A batch whose pixel (i, y, x, c) holds a value that identifies it. */
function codedBatch(n: number, h: number, w: number): tf.Tensor4D {
  const v = new Float32Array(n * h * w * 3);
  for (let k = 0; k < v.length; k++) v[k] = k / v.length;
  return tf.tensor4d(v, [n, h, w, 3]);
}

function at(data: ArrayLike<number>, shape: number[], i: number, y: number, x: number, c: number) {
  const [, h, w, ch] = shape;
  return data[((i * h + y) * w + x) * ch + c];
}

function assertMatClose(a: Mat3, b: Mat3, tol: number) {
  for (let k = 0; k < 9; k++) {
    assert.ok(Math.abs(a[k] - b[k]) <= tol, `entry ${k}: ${a[k]} vs ${b[k]}`);
  }
}

function noLeak(name: string, fn: () => void) {
  const before = tf.memory().numTensors;
  fn();
  assert.equal(tf.memory().numTensors, before, `${name} leaked tensors`);
}

/** The first `count` PNG members of the fixture shard. */
async function pngsOfShard(count: number): Promise<Uint8Array[]> {
  const tar = await Deno.readFile(new URL("nih_subset/ChestXray14_val_002.tar", FIXTURES));
  const pngs: Uint8Array[] = [];
  for (let off = 0; off + 512 <= tar.length && pngs.length < count;) {
    const name = new TextDecoder().decode(tar.subarray(off, off + 100)).replace(/\0.*$/s, "");
    const size = parseInt(new TextDecoder().decode(tar.subarray(off + 124, off + 136)).trim(), 8);
    if (!name) break;
    if (name.endsWith(".png")) pngs.push(tar.subarray(off + 512, off + 512 + size));
    off += 512 + Math.ceil(size / 512) * 512;
  }
  assert.equal(pngs.length, count, "PNGs in the fixture shard");
  return pngs;
}

/** Decodes a PNG to 8-bit RGB. */
async function decodeRgb8(png: Uint8Array) {
  const { data, info } = await sharp(png).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  return { data: new Uint8Array(data), width: info.width, height: info.height };
}

Deno.test("parameter block holds the original tool's defaults", () => {
  assert.equal(AUGMENTATION_PARAMS.preCropSize, 256);
  assert.equal(AUGMENTATION_PARAMS.pTrain, 0.5);
  assert.equal(AUGMENTATION_PARAMS.pHflip, 0.5);
  assert.equal(AUGMENTATION_PARAMS.shiftLimit, 0.0625);
  assert.deepEqual([...AUGMENTATION_PARAMS.scaleLimit], [-0.2, 0.1]);
  assert.equal(AUGMENTATION_PARAMS.rotateLimit, 10);
  assert.equal(AUGMENTATION_PARAMS.perspectiveScale, 0.1);
  assert.deepEqual([...AUGMENTATION_PARAMS.brightnessLimit], [-0.2, 0.2]);
  assert.deepEqual([...AUGMENTATION_PARAMS.contrastLimit], [-0.2, 0.2]);
  assert.equal(AUGMENTATION_PARAMS.fillValue, 105 / 256);
  assert.throws(() => drawAugmentation(new Rng(1), { preCropSize: 200 }, 256, 256), /preCropSize/);
});

Deno.test("ShiftScaleRotate and Perspective matrices equal OpenCV's", () => {
  const n = REF.crop.size;
  const s = REF.shift_scale_rotate;
  const m = shiftScaleRotateMatrix(s, n, n);
  assertMatClose(m, [...s.matrix, 0, 0, 1], 1e-9);
  const g = perspectiveGeometry(REF.perspective.jitter as Quad, n, n);
  assert.equal(g.maxWidth, REF.perspective.max_width);
  assert.equal(g.maxHeight, REF.perspective.max_height);
  assertMatClose(g.warp, REF.perspective.matrix, 1e-6);
});

Deno.test("resize matches OpenCV INTER_LINEAR on a fixture crop", () => {
  noLeak("resize", () => {
    const crop = refCrop();
    for (const size of [42, 60, 29]) {
      const out = resizeBatch(crop, size);
      assert.deepEqual(out.shape, [1, size, size, 3]);
      assert.ok(maxAbsDiff(channel0(out), f32(REF.resize[size])) < 1e-5, `size ${size}`);
      out.dispose();
    }
    crop.dispose();
  });
});

Deno.test("resize 256 -> 224 of a whole fixture image matches OpenCV", async () => {
  const { data, width, height } = await decodeRgb8((await pngsOfShard(1))[0]);
  assert.deepEqual([width, height], [256, 256]);
  // The decoded pixels are the ones OpenCV saw.
  const n = REF.crop.size;
  const crop8 = Uint8Array.from(atob(REF.crop.rgb8), (ch) => ch.charCodeAt(0));
  for (let y = 0; y < n; y++) {
    const row = data.subarray(
      ((REF.crop.y + y) * 256 + REF.crop.x) * 3,
      (REF.crop.y + y) * 768 + (REF.crop.x + n) * 3,
    );
    assert.deepEqual(Buffer.from(row), Buffer.from(crop8.subarray(y * n * 3, (y + 1) * n * 3)));
  }
  const rows: number[] = REF.full_resize_224.rows;
  const expected = f32(REF.full_resize_224.values);
  const got = tf.tidy(() => {
    const img = tf.div(tf.tensor4d(new Uint8Array(data), [1, 256, 256, 3], "int32"), 255);
    const out = channel0(resizeBatch(img as tf.Tensor4D, 224));
    return rows.flatMap((r) => Array.from(out.subarray(r * 224, (r + 1) * 224)));
  });
  assert.ok(maxAbsDiff(got, expected) < 1e-5);
});

Deno.test("warps match OpenCV: ShiftScaleRotate, Perspective, and both in one matrix", () => {
  const n = REF.crop.size;
  noLeak("warps", () => {
    const crop = refCrop();
    const ssr = shiftScaleRotateMatrix(REF.shift_scale_rotate, n, n);
    const persp = perspectiveMatrix(REF.perspective.jitter as Quad, n, n);
    const cases: [string, Mat3, string, number][] = [
      // OpenCV quantises coordinates to 1/32 px, hence a few 1e-3 of difference.
      ["ssr", ssr, REF.shift_scale_rotate.image, 0.02],
      // OpenCV interpolates twice (warp, then resize back); one composed warp once.
      ["perspective", persp, REF.perspective.image, 0.08],
      ["sequential", matMul3(persp, ssr), REF.sequential.image, 0.08],
    ];
    for (const [name, m, ref, tol] of cases) {
      const out = warpBatch(crop, [m], FILL);
      const d = interiorDiff(channel0(out), f32(ref), n, 3);
      assert.ok(d.max < tol && d.mean < 0.01, `${name}: max ${d.max} mean ${d.mean}`);
      out.dispose();
    }
    // Emulating OpenCV's two steps (warp to maxWidth × maxHeight, resize back) with tf ops
    // reproduces it closely, so the Perspective geometry itself is exact.
    const g = perspectiveGeometry(REF.perspective.jitter as Quad, n, n);
    const inv = invert3(g.warp);
    const twoStep = tf.tidy(() => {
      const rows = tf.tensor2d([inv.slice(0, 8).map((v) => v / inv[8])]);
      const size: [number, number] = [g.maxHeight, g.maxWidth];
      const w = tf.image.transform(crop, rows, "bilinear", "constant", FILL, size);
      return channel0(tf.image.resizeBilinear(w, [n, n], false, true));
    });
    assert.ok(maxAbsDiff(twoStep, f32(REF.perspective.image)) < 3e-3);
    crop.dispose();
  });
});

Deno.test("fill value appears in the border after a shift", () => {
  noLeak("fill", () => {
    const img = tf.fill([2, 16, 16, 3], 0.9) as tf.Tensor4D;
    const m = shiftScaleRotateMatrix({ angle: 0, scale: 1, dx: 0.25, dy: 0 }, 16, 16);
    assert.deepEqual(applyMat3(m, [0, 0]), [4, 0]);
    const out = warpBatch(img, [m, IDENTITY], FILL);
    const v = out.dataSync();
    for (let y = 0; y < 16; y++) {
      for (let x = 0; x < 16; x++) {
        const want = x < 4 ? FILL : 0.9;
        assert.ok(Math.abs(at(v, out.shape, 0, y, x, 1) - want) < 1e-6, `(${y}, ${x})`);
        assert.ok(Math.abs(at(v, out.shape, 1, y, x, 1) - 0.9) < 1e-6, "identity image");
      }
    }
    tf.dispose([img, out]);
  });
});

Deno.test("with p = 0 every augmented op is the identity", () => {
  const params = { pTrain: 0, pHflip: 0 };
  const rng = new Rng(7);
  const draws = Array.from({ length: 3 }, () => drawAugmentation(rng, params, 256, 256));
  for (const d of draws) {
    assert.equal(d.shiftScaleRotate, null);
    assert.equal(d.perspective, null);
    assert.equal(d.brightnessContrast, null);
    assert.equal(d.hflip, false);
    assert.deepEqual([...d.matrix], [...IDENTITY]);
  }
  noLeak("p=0", () => {
    const x = codedBatch(3, 256, 256);
    // Each op on its own: a batch mixing identity and non-identity warps keeps the identity
    // images as they were; unadjusted colour and unflipped crops are plain copies.
    const shift = shiftScaleRotateMatrix({ angle: 3, scale: 1, dx: 0, dy: 0 }, 256, 256);
    const warped = warpBatch(x, [IDENTITY, shift, IDENTITY], FILL);
    const keep = (t: tf.Tensor4D, i: number) => tf.slice(t, [i, 0, 0, 0], [1, -1, -1, -1]);
    for (const i of [0, 2]) {
      const got = values(() => keep(warped, i)), want = values(() => keep(x, i));
      assert.ok(maxAbsDiff(got, want) < 1e-5);
    }
    const colour = brightnessContrastBatch(x, [null, null, null]);
    assert.ok(maxAbsDiff(colour.dataSync(), x.dataSync()) < 1e-5);
    const out = applyAugmentation(x, draws, params);
    const expected = tf.tidy(() => {
      const crops = draws.map((d, i) => tf.slice(x, [i, d.crop.y, d.crop.x, 0], [1, 224, 224, 3]));
      const c = tf.concat(crops, 0);
      return tf.div(tf.sub(c, tf.tensor1d([...NORM_MEAN])), tf.tensor1d([...NORM_STD]));
    });
    assert.ok(maxAbsDiff(out.dataSync(), expected.dataSync()) < 1e-5);
    tf.dispose([x, warped, colour, out, expected]);
    tf.disposeVariables();
  });
});

Deno.test("with p = 1 the composed matrix is the product of the individual ones", () => {
  const params = { pTrain: 1, pHflip: 1 };
  const rng = new Rng(2024);
  const d = drawAugmentation(rng, params, 256, 256);
  assert.ok(d.shiftScaleRotate && d.perspective && d.brightnessContrast && d.hflip);
  const ssr = shiftScaleRotateMatrix(d.shiftScaleRotate, 256, 256);
  const persp = perspectiveMatrix(d.perspective.jitter, 256, 256);
  assertMatClose(d.matrix, matMul3(persp, ssr), 1e-12);
  // One warp with the composed matrix ≈ the two warps one after the other (interior).
  noLeak("composition", () => {
    tf.tidy(() => {
      const img = tf.image.resizeBilinear(refCrop(), [256, 256], false, true) as tf.Tensor4D;
      const once = channel0(warpBatch(img, [d.matrix], FILL));
      const twice = channel0(warpBatch(warpBatch(img, [ssr], FILL), [persp], FILL));
      const diff = interiorDiff(once, twice, 256, 40);
      assert.ok(diff.max < 0.05 && diff.mean < 0.005, `max ${diff.max} mean ${diff.mean}`);
    });
  });
});

Deno.test("folding crop and flip into the warp gives the step-by-step result", () => {
  noLeak("folded", () => {
    tf.tidy(() => {
      const img = tf.image.resizeBilinear(refCrop(), [256, 256], false, true) as tf.Tensor4D;
      const x = tf.concat([img, tf.sub(1, img)], 0) as tf.Tensor4D;
      const rng = new Rng(31);
      const draws = [0, 1].map(() => drawAugmentation(rng, { pTrain: 1 }, 256, 256));
      draws[1].hflip = !draws[0].hflip; // one mirrored, one not
      const folded = applyAugmentation(x, draws);
      const warped = warpBatch(x, draws.map((d) => d.matrix), FILL);
      const crops = cropAndFlip(warped, draws.map((d) => d.crop), draws.map((d) => d.hflip), 224);
      const stepwise = tf.div(
        tf.sub(
          brightnessContrastBatch(crops, draws.map((d) => d.brightnessContrast)),
          tf.tensor1d([...NORM_MEAN]),
        ),
        tf.tensor1d([...NORM_STD]),
      );
      assert.ok(maxAbsDiff(folded.dataSync(), stepwise.dataSync()) < 1e-4);
      // Inputs of another size take the step-by-step path (warp, resize, crop).
      const other = tf.image.resizeBilinear(x, [300, 280], false, true) as tf.Tensor4D;
      assert.deepEqual(applyAugmentation(other, draws).shape, [2, 224, 224, 3]);
    });
  });
});

Deno.test("flips, random crops and centre crop pick the hand-computed pixels", () => {
  noLeak("crops", () => {
    const x = codedBatch(2, 10, 12);
    const xs = x.dataSync();
    const out = cropAndFlip(x, [{ x: 3, y: 2 }, { x: 0, y: 4 }], [false, true], 5);
    const o = out.dataSync();
    for (let y = 0; y < 5; y++) {
      for (let c = 0; c < 5; c++) {
        assert.equal(at(o, out.shape, 0, y, c, 2), at(xs, x.shape, 0, y + 2, c + 3, 2));
        assert.equal(at(o, out.shape, 1, y, c, 0), at(xs, x.shape, 1, y + 4, 4 - c, 0));
      }
    }
    const cc = centerCrop(x, 4);
    assert.deepEqual(cc.shape, [2, 4, 4, 3]);
    // (10 - 4) // 2 = 3 rows down, (12 - 4) // 2 = 4 columns in.
    assert.equal(at(cc.dataSync(), cc.shape, 1, 0, 0, 1), at(xs, x.shape, 1, 3, 4, 1));
    assert.equal(at(cc.dataSync(), cc.shape, 0, 3, 3, 2), at(xs, x.shape, 0, 6, 7, 2));
    const mirrored = flipBatch(x);
    assert.equal(at(mirrored.dataSync(), x.shape, 1, 2, 0, 1), at(xs, x.shape, 1, 2, 11, 1));
    tf.dispose([x, out, cc, mirrored]);
  });
});

Deno.test("brightness/contrast follows clip(img * alpha + beta, 0, 1)", () => {
  noLeak("colour", () => {
    const rng = new Rng(3);
    const vals = Array.from({ length: 2 * 4 * 4 * 3 }, () => rng.next());
    const x = tf.tensor4d(vals, [2, 4, 4, 3]);
    const adjust = [{ alpha: 1.18, beta: 0.15 }, { alpha: 0.85, beta: -0.19 }];
    const out = values(() => brightnessContrastBatch(x, adjust));
    let clipped = 0;
    vals.forEach((v, k) => {
      const { alpha, beta } = adjust[Math.floor(k / 48)];
      const want = Math.min(1, Math.max(0, v * alpha + beta));
      if (want === 0 || want === 1) clipped++;
      assert.ok(Math.abs(out[k] - want) < 1e-6, `${k}: ${out[k]} vs ${want}`);
    });
    assert.ok(clipped > 0, "the sample exercises the clipping");
    x.dispose();
  });
});

Deno.test("draws stay within the documented ranges", () => {
  const rng = new Rng(99);
  const n = 4000;
  let ssrCount = 0, perspCount = 0, flipCount = 0, bcCount = 0;
  const crops = new Set<number>();
  for (let k = 0; k < n; k++) {
    const d = drawAugmentation(rng, {}, 256, 256);
    if (d.shiftScaleRotate) {
      ssrCount++;
      const { angle, scale, dx, dy } = d.shiftScaleRotate;
      assert.ok(Math.abs(angle) <= 10, `angle ${angle}`);
      assert.ok(scale >= 0.8 && scale <= 1.1, `scale ${scale}`);
      assert.ok(Math.abs(dx) <= 0.0625 && Math.abs(dy) <= 0.0625);
    }
    if (d.perspective) {
      perspCount++;
      assert.ok(d.perspective.sigma >= 0 && d.perspective.sigma <= 0.1);
      for (const [x, y] of perspectiveGeometry(d.perspective.jitter, 256, 256).corners) {
        assert.ok(x >= -1 && x <= 257 && y >= -1 && y <= 257, `corner ${x}, ${y}`);
      }
    }
    if (d.brightnessContrast) {
      bcCount++;
      const { alpha, beta } = d.brightnessContrast;
      assert.ok(alpha >= 0.8 && alpha <= 1.2 && Math.abs(beta) <= 0.2);
    }
    if (d.hflip) flipCount++;
    assert.ok(Number.isInteger(d.crop.x) && d.crop.x >= 0 && d.crop.x <= 32);
    assert.ok(Number.isInteger(d.crop.y) && d.crop.y >= 0 && d.crop.y <= 32);
    crops.add(d.crop.x);
  }
  for (const count of [ssrCount, perspCount, flipCount, bcCount]) {
    assert.ok(Math.abs(count / n - 0.5) < 0.03, `rate ${count / n}`);
  }
  assert.equal(crops.size, 33, "every crop offset 0..32 occurs");
});

Deno.test("pipelines: shapes, normalisation, ten-crop order, reproducibility, no leaks", () => {
  const x = codedBatch(2, 256, 256);
  noLeak("pipelines", () => {
    const test = transformsTest(x);
    assert.deepEqual(test.shape, [2, 224, 224, 3]);
    const manual = tf.tidy(() => {
      const r = tf.image.resizeBilinear(x, [224, 224], false, true);
      return tf.div(tf.sub(r, tf.tensor1d([...NORM_MEAN])), tf.tensor1d([...NORM_STD]));
    });
    assert.ok(maxAbsDiff(test.dataSync(), manual.dataSync()) < 1e-6);

    const flipped = transformsTrain(x, new Rng(1), { pHflip: 1 });
    const reflipped = tf.reverse(flipped, 2);
    assert.ok(maxAbsDiff(reflipped.dataSync(), test.dataSync()) < 1e-6);

    const cc = transformsTestCentercrop(x);
    const ccWant = tf.tidy(() =>
      tf.div(
        tf.sub(tf.slice(x, [0, 16, 16, 0], [2, 224, 224, 3]), tf.tensor1d([...NORM_MEAN])),
        tf.tensor1d([...NORM_STD]),
      )
    );
    assert.ok(maxAbsDiff(cc.dataSync(), ccWant.dataSync()) < 1e-6);

    const ten = tenCrop(x, 224);
    assert.deepEqual(ten.shape, [20, 224, 224, 3]);
    assert.equal(TEN_CROP_ORDER.length, 10);
    const t = ten.dataSync(), xs = x.dataSync();
    // Image 1's top-right crop is row 1·2 + 1; its mirrored centre crop is row 9·2 + 1.
    assert.equal(at(t, ten.shape, 3, 0, 0, 0), at(xs, x.shape, 1, 0, 32, 0));
    assert.equal(at(t, ten.shape, 19, 5, 0, 2), at(xs, x.shape, 1, 21, 16 + 223, 2));
    assert.equal(at(t, ten.shape, 6, 223, 223, 1), at(xs, x.shape, 0, 255, 255, 1));
    const tenT = transformsTestTenCrop(x);
    assert.deepEqual(tenT.shape, [20, 224, 224, 3]);

    const a = transformsTrainAugmented(x, new Rng(5), { pTrain: 1 });
    const b = transformsTrainAugmented(x, new Rng(5), { pTrain: 1 });
    const c = transformsTrainAugmented(x, new Rng(6), { pTrain: 1 });
    assert.deepEqual(a.shape, [2, 224, 224, 3]);
    assert.equal(maxAbsDiff(a.dataSync(), b.dataSync()), 0);
    assert.ok(maxAbsDiff(a.dataSync(), c.dataSync()) > 0.1);

    const big = tf.zeros([1, 512, 300, 3]) as tf.Tensor4D;
    const ds = transformsDatasetCreation(big);
    assert.deepEqual(ds.shape, [1, 256, 256, 3]);
    tf.dispose([big, test, manual, flipped, reflipped, cc, ccWant, ten, tenT, a, b, c, ds]);
  });
  // The pipeline leaves no intermediate tensors behind.
  noLeak("transformsTrainAugmented", () => {
    tf.dispose(transformsTrainAugmented(x, new Rng(8)));
  });
  x.dispose();
});

Deno.test("the wasm backend has Transform and gives the cpu result", async () => {
  const x = tf.tidy(() => tf.image.resizeBilinear(refCrop(), [256, 256], false, true));
  const input = x.dataSync().slice();
  x.dispose();
  const rows = [...input, ...input.map((v) => 1 - v)];
  const draws: AugmentationDraw[] = Array.from(
    { length: 2 },
    (_, i) => drawAugmentation(new Rng(11 + i), { pTrain: 1 }, 256, 256),
  );
  const run = () =>
    tf.tidy(() =>
      applyAugmentation(tf.tensor4d(rows, [2, 256, 256, 3]), draws, {}).dataSync().slice()
    );
  const onCpu = run();
  await tf.setBackend("wasm");
  try {
    assert.ok(tf.getKernel("Transform", "wasm"), "wasm registers the Transform kernel");
    const before = tf.memory().numTensors;
    const onWasm = run();
    assert.equal(tf.memory().numTensors, before);
    assert.ok(maxAbsDiff(onCpu, onWasm) < 1e-4, `max ${maxAbsDiff(onCpu, onWasm)}`);
  } finally {
    await tf.setBackend("cpu");
  }
});

Deno.test("preview grid shows each original beside its augmented draws", async () => {
  const images = await Promise.all((await pngsOfShard(2)).map(decodeRgb8));
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/preview.png`;
    const before = tf.memory().numTensors;
    const size = await writeAugmentationPreview(images, path, { draws: 3, rng: new Rng(4) });
    assert.equal(tf.memory().numTensors, before);
    const { data, info } = await sharp(await Deno.readFile(path)).raw().toBuffer({
      resolveWithObject: true,
    });
    assert.deepEqual([info.width, info.height], [size.width, size.height]);
    // A label row (22 px) above the grid.
    assert.deepEqual([size.width, size.height], [4 * 224 + 5 * 4, 22 + 2 * 224 + 3 * 4]);
    // The first cell of row 1 is image 1 resized to 224 (the plain test transform).
    const want = tf.tidy(() => {
      const x = tf.div(tf.tensor4d(images[1].data, [1, 256, 256, 3], "int32"), 255);
      return tf.image.resizeBilinear(x as tf.Tensor4D, [224, 224], false, true).dataSync();
    });
    const y0 = 22 + 4 + 224 + 4, x0 = 4;
    for (const [y, x] of [[0, 0], [100, 57], [223, 223]]) {
      const got = data[((y0 + y) * info.width + x0 + x) * info.channels];
      assert.ok(Math.abs(got - want[(y * 224 + x) * 3] * 255) <= 1, `pixel (${y}, ${x})`);
    }
    // The original column is framed in blue (the gap left of it), the others are not; the
    // label row has text above the original column.
    const px = (x: number, y: number) =>
      Array.from(data.subarray((y * info.width + x) * 3, (y * info.width + x) * 3 + 3));
    assert.deepEqual(px(1, y0 + 100), [31, 119, 180]);
    assert.deepEqual(px(4 + 224 + 4 + 224 + 1, y0 + 100), [255, 255, 255]);
    let labelPixels = 0;
    for (let y = 4; y < 18; y++) {
      for (let x = 4; x < 100; x++) if (px(x, y)[0] === 31) labelPixels++;
    }
    assert.ok(labelPixels > 50, `ORIGINAL label drawn (${labelPixels} px)`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("crops copy pixels exactly on wasm too (its nearest cropAndResize is off by one in x)", async () => {
  const { initBackend } = await import("../lib/backends/backend.ts");
  const before = tf.getBackend();
  await initBackend("wasm");
  try {
    const x = tf.randomUniform([3, 40, 40, 3], 0, 1, "float32", 3) as tf.Tensor4D;
    const crop = centerCrop(x, 32);
    const ref = tf.slice(x, [0, 4, 4, 0], [3, 32, 32, 3]);
    const flipped = cropAndFlip(x, [{ x: 1, y: 2 }, { x: 0, y: 0 }, { x: 8, y: 8 }], [
      true,
      false,
      true,
    ], 32);
    const refFlip = tf.reverse(tf.slice(x, [0, 2, 1, 0], [1, 32, 32, 3]), 2);
    const diff = (a: tf.Tensor, b: tf.Tensor) => tf.max(tf.abs(tf.sub(a, b))).dataSync()[0];
    assert.ok(diff(crop, ref) < 1e-5, "centre crop");
    assert.ok(
      diff(tf.slice(flipped, [0, 0, 0, 0], [1, 32, 32, 3]), refFlip) < 1e-5,
      "flipped crop",
    );
    tf.dispose([x, crop, ref, flipped, refFlip]);
  } finally {
    await tf.setBackend(before);
  }
});
