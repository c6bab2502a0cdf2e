/**
 * Image transforms for training, validation, test and dataset creation: a port of the original
 * tool's `augmented_transforms.py` (Albumentations 1.x pipelines), run on whole batches with tfjs
 * ops on the active backend.
 *
 * Every pipeline takes a batch `[N, H, W, 3]` float32 in [0, 1] (RGB8 divided by 255, as the
 * original feeds Albumentations) and an {@link Rng}, and returns `[N, 224, 224, 3]` normalised with
 * the ImageNet mean/std. The geometric augmentations (ShiftScaleRotate, then Perspective) are
 * composed into one 3×3 projective matrix per image and applied with a single bilinear
 * `tf.image.transform` (constant border); resize, random crop, flip and brightness/contrast follow
 * as batched ops (for inputs already at the pre-crop size, crop and flip join the same matrix).
 * All resizes use half-pixel-centre bilinear sampling, which is what OpenCV's `INTER_LINEAR` does
 * (no antialiasing), so predictions match the original's.
 *
 * Differences from Albumentations, all below what training can notice: Perspective interpolates
 * once instead of twice (warp to an intermediate size, then resize back), so it is slightly
 * sharper; OpenCV quantises warp coordinates to 1/32 px, tfjs does not; the random draws come
 * from the seeded {@link Rng}, not Python's `random`/numpy.
 *
 * Data augmentation parameters live in {@link AUGMENTATION_PARAMS}; edit them there, or pass a
 * partial override to the functions that take `params`.
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import { DATASET_IMAGE_SIZE, FINAL_IMAGE_SIZE, NORM_MEAN, NORM_STD } from "../config.ts";
import { UserError } from "../lib/util/errors.ts";
import type { Rng } from "../lib/util/rng.ts";

// ---------------------------------------------------------------------------------------------
// Data augmentation parameters
// ---------------------------------------------------------------------------------------------

/**
 * Data augmentation parameters, named after the original's block of the same title
 * (`pre_crop_size`, `p_train`, `p_hflip`, `shift_limit`, `scale_limit`, `rotate_limit`,
 * `scale`, `brightness_limit`, `contrast_limit`, `pad_val`).
 */
export interface AugmentationParams {
  /** Side of the square the image is resized to before the random 224×224 crop. */
  readonly preCropSize: number;
  /** Side of the network input (224; smaller for quick runs, with preCropSize scaled alike). */
  readonly finalSize: number;
  /** Probability of each of ShiftScaleRotate, Perspective and RandomBrightnessContrast. */
  readonly pTrain: number;
  /** Probability of the horizontal flip. */
  readonly pHflip: number;
  /** Shift as a fraction of width (x) and height (y), drawn in ±shiftLimit. */
  readonly shiftLimit: number;
  /** Zoom: the scale factor is 1 + U(scaleLimit). */
  readonly scaleLimit: readonly [number, number];
  /** Rotation in degrees about the image centre, drawn in ±rotateLimit. */
  readonly rotateLimit: number;
  /** Perspective: corner jitter std is U(0, perspectiveScale) of the width/height. */
  readonly perspectiveScale: number;
  /** Brightness offset b in brightnessLimit (times the maximum value 1.0). */
  readonly brightnessLimit: readonly [number, number];
  /** Contrast: the gain is 1 + U(contrastLimit). */
  readonly contrastLimit: readonly [number, number];
  /** Constant border value of the geometric transforms, on [0, 1] images. */
  readonly fillValue: number;
}

/** The original tool's defaults. Edit here to change the augmentation for every run. */
export const AUGMENTATION_PARAMS: AugmentationParams = Object.freeze({
  preCropSize: 256,
  finalSize: FINAL_IMAGE_SIZE,
  pTrain: 0.5,
  pHflip: 0.5,
  shiftLimit: 0.0625,
  scaleLimit: [-0.2, 0.1] as const,
  rotateLimit: 10,
  perspectiveScale: 0.1,
  brightnessLimit: [-0.2, 0.2] as const,
  contrastLimit: [-0.2, 0.2] as const,
  fillValue: 105 / 256,
});

/** Side of the images the network sees (DenseNet-121 input); not a tunable parameter. */
export const FINAL_SIZE = FINAL_IMAGE_SIZE;

/** A batch transform: `[N, H, W, 3]` float32 in [0, 1] to a normalised `[N, 224, 224, 3]`. */
export type BatchTransform = (images: tf.Tensor4D, rng: Rng) => tf.Tensor4D;

/** Merges an override into the defaults and checks that the result is usable. */
export function resolveParams(params: Partial<AugmentationParams> = {}): AugmentationParams {
  const p = { ...AUGMENTATION_PARAMS, ...params };
  const bad = (what: string) =>
    new UserError(
      `Invalid data augmentation parameter: ${what}. ` +
        "Fix AUGMENTATION_PARAMS in transforms/augmented_transforms.ts.",
    );
  if (!Number.isInteger(p.finalSize) || p.finalSize < 1) {
    throw bad(`finalSize must be a positive integer, got ${p.finalSize}`);
  }
  if (!Number.isInteger(p.preCropSize) || p.preCropSize < p.finalSize) {
    throw bad(`preCropSize must be an integer >= ${p.finalSize}, got ${p.preCropSize}`);
  }
  for (const k of ["pTrain", "pHflip"] as const) {
    if (!(p[k] >= 0 && p[k] <= 1)) throw bad(`${k} must be in [0, 1], got ${p[k]}`);
  }
  for (const k of ["scaleLimit", "brightnessLimit", "contrastLimit"] as const) {
    if (!(p[k].length === 2 && p[k][0] <= p[k][1])) {
      throw bad(`${k} must be [low, high] with low <= high, got [${p[k]}]`);
    }
  }
  for (const k of ["shiftLimit", "rotateLimit", "perspectiveScale"] as const) {
    if (!(p[k] >= 0)) throw bad(`${k} must be >= 0, got ${p[k]}`);
  }
  return p;
}

// ---------------------------------------------------------------------------------------------
// Geometry: 3×3 matrices in pixel coordinates (pixel centres at integers, as OpenCV and
// tf.image.transform use), mapping source points to destination points.
// ---------------------------------------------------------------------------------------------

/** A 3×3 matrix, row-major. */
export type Mat3 = readonly number[];
/** A point `[x, y]` in pixels. */
export type Point = readonly [number, number];
/** Four points: top-left, top-right, bottom-right, bottom-left. */
export type Quad = readonly [Point, Point, Point, Point];

/** The identity matrix. */
export const IDENTITY: Mat3 = Object.freeze([1, 0, 0, 0, 1, 0, 0, 0, 1]);

/** Matrix product `a · b` (apply `b` first, then `a`). */
export function matMul3(a: Mat3, b: Mat3): Mat3 {
  const out: number[] = new Array(9);
  for (let r = 0; r < 3; r++) {
    for (let c = 0; c < 3; c++) {
      out[r * 3 + c] = a[r * 3] * b[c] + a[r * 3 + 1] * b[3 + c] + a[r * 3 + 2] * b[6 + c];
    }
  }
  return out;
}

/** Inverse of a 3×3 matrix (adjugate over determinant). */
export function invert3(m: Mat3): Mat3 {
  const [a, b, c, d, e, f, g, h, i] = m;
  const A = e * i - f * h, B = -(d * i - f * g), C = d * h - e * g;
  const det = a * A + b * B + c * C;
  if (det === 0 || !Number.isFinite(det)) throw new Error("Singular transform matrix");
  return [
    A / det,
    -(b * i - c * h) / det,
    (b * f - c * e) / det,
    B / det,
    (a * i - c * g) / det,
    -(a * f - c * d) / det,
    C / det,
    -(a * h - b * g) / det,
    (a * e - b * d) / det,
  ];
}

/** Applies `m` to a point (with the projective division). */
export function applyMat3(m: Mat3, [x, y]: Point): Point {
  const k = m[6] * x + m[7] * y + m[8];
  return [(m[0] * x + m[1] * y + m[2]) / k, (m[3] * x + m[4] * y + m[5]) / k];
}

/** True when `m` is exactly the identity. */
export function isIdentity(m: Mat3): boolean {
  return m.every((v, k) => v === IDENTITY[k]);
}

/** ShiftScaleRotate's drawn values: degrees (counter-clockwise), factor, fractions of w/h. */
export interface ShiftScaleRotateParams {
  angle: number;
  scale: number;
  dx: number;
  dy: number;
}

/**
 * Albumentations' ShiftScaleRotate matrix: OpenCV `getRotationMatrix2D` about the pixel-grid
 * centre `(w/2 - 0.5, h/2 - 0.5)` with `angle` and `scale`, then a shift of `dx·w`, `dy·h`.
 */
export function shiftScaleRotateMatrix(
  { angle, scale, dx, dy }: ShiftScaleRotateParams,
  width: number,
  height: number,
): Mat3 {
  const cx = width / 2 - 0.5, cy = height / 2 - 0.5;
  const rad = angle * Math.PI / 180;
  const a = scale * Math.cos(rad), b = scale * Math.sin(rad);
  return [
    a,
    b,
    (1 - a) * cx - b * cy + dx * width,
    -b,
    a,
    b * cx + (1 - a) * cy + dy * height,
    0,
    0,
    1,
  ];
}

/** The projective matrix mapping the four `src` points onto `dst` (OpenCV getPerspectiveTransform). */
export function quadToQuadMatrix(src: Quad, dst: Quad): Mat3 {
  // Eight equations in the eight unknowns (m22 = 1), solved by Gaussian elimination.
  const rows: number[][] = [];
  for (let k = 0; k < 4; k++) {
    const [x, y] = src[k], [u, v] = dst[k];
    rows.push([x, y, 1, 0, 0, 0, -x * u, -y * u, u]);
    rows.push([0, 0, 0, x, y, 1, -x * v, -y * v, v]);
  }
  for (let col = 0; col < 8; col++) {
    let pivot = col;
    for (let r = col + 1; r < 8; r++) {
      if (Math.abs(rows[r][col]) > Math.abs(rows[pivot][col])) pivot = r;
    }
    if (Math.abs(rows[pivot][col]) < 1e-12) throw new Error("Degenerate perspective corners");
    [rows[col], rows[pivot]] = [rows[pivot], rows[col]];
    for (let r = 0; r < 8; r++) {
      if (r === col) continue;
      const f = rows[r][col] / rows[col][col];
      for (let c = col; c < 9; c++) rows[r][c] -= f * rows[col][c];
    }
  }
  const sol = rows.map((r, k) => r[8] / r[k]);
  return [...sol, 1];
}

/** What Albumentations' Perspective derives from the corner jitters (before `keep_size`). */
export interface PerspectiveGeometry {
  /** Source corners (tl, tr, br, bl) in pixels, as float32 like Albumentations keeps them. */
  corners: Quad;
  /** Size of the intermediate warped image. */
  maxWidth: number;
  maxHeight: number;
  /** Maps `corners` onto the `maxWidth × maxHeight` rectangle. */
  warp: Mat3;
}

/**
 * Albumentations (1.x) Perspective geometry from the raw normal draws `jitter` (4 × [x, y], in
 * units of the image size): `|jitter| mod 1` insets each corner of the image, the points are
 * put in tl/tr/br/bl order, kept at least 2 px apart, and mapped onto a
 * `maxWidth × maxHeight` rectangle.
 */
export function perspectiveGeometry(
  jitter: Quad,
  width: number,
  height: number,
): PerspectiveGeometry {
  const f = Math.fround;
  const j = jitter.map(([x, y]) => [Math.abs(x) % 1, Math.abs(y) % 1]);
  const pts: [number, number][] = [
    [j[0][0], j[0][1]],
    [1 - j[1][0], j[1][1]],
    [1 - j[2][0], 1 - j[2][1]],
    [j[3][0], 1 - j[3][1]],
  ].map(([x, y]) => [x * width, y * height]);
  // _order_points: the two leftmost are tl/bl by y, the two rightmost tr/br (stable sort on x).
  const sorted = pts.map((p, k) => ({ p, k })).sort((a, b) => a.p[0] - b.p[0] || a.k - b.k)
    .map((e) => e.p);
  const [l0, l1, r0, r1] = sorted;
  const [tl, bl] = l0[1] < l1[1] ? [l0, l1] : [l1, l0];
  const [tr, br] = r0[1] < r1[1] ? [r0, r1] : [r1, r0];
  const q = [tl, tr, br, bl].map(([x, y]) => [f(x), f(y)]);
  const dist = (a: number[], b: number[]) => Math.hypot(a[0] - b[0], a[1] - b[1]);
  let maxWidth = 0, maxHeight = 0;
  for (;;) {
    const top = dist(q[1], q[0]), bottom = dist(q[2], q[3]);
    maxWidth = Math.trunc(Math.max(top, bottom));
    const minWidth = Math.trunc(Math.min(top, bottom));
    if (minWidth >= 2) break;
    const step = (2 - minWidth) / 2;
    q[0][0] = f(q[0][0] - step), q[1][0] = f(q[1][0] + step);
    q[3][0] = f(q[3][0] - step), q[2][0] = f(q[2][0] + step);
  }
  for (;;) {
    const right = dist(q[1], q[2]), left = dist(q[0], q[3]);
    maxHeight = Math.trunc(Math.max(right, left));
    const minHeight = Math.trunc(Math.min(right, left));
    if (minHeight >= 2) break;
    const step = (2 - minHeight) / 2;
    q[0][1] = f(q[0][1] - step), q[1][1] = f(q[1][1] - step);
    q[3][1] = f(q[3][1] + step), q[2][1] = f(q[2][1] + step);
  }
  const corners = q.map(([x, y]) => [x, y] as Point) as unknown as Quad;
  const rect: Quad = [[0, 0], [maxWidth, 0], [maxWidth, maxHeight], [0, maxHeight]];
  return { corners, maxWidth, maxHeight, warp: quadToQuadMatrix(corners, rect) };
}

/** Half-pixel-centre resize from `fromW × fromH` to `toW × toH`, as a matrix. */
export function resizeMatrix(fromW: number, fromH: number, toW: number, toH: number): Mat3 {
  const sx = toW / fromW, sy = toH / fromH;
  return [sx, 0, 0.5 * sx - 0.5, 0, sy, 0.5 * sy - 0.5, 0, 0, 1];
}

/**
 * The whole Perspective op (`keep_size=True`, `fit_output=False`) as one matrix: the
 * {@link perspectiveGeometry} warp followed by the resize back to `width × height`.
 */
export function perspectiveMatrix(jitter: Quad, width: number, height: number): Mat3 {
  const g = perspectiveGeometry(jitter, width, height);
  return matMul3(resizeMatrix(g.maxWidth, g.maxHeight, width, height), g.warp);
}

// ---------------------------------------------------------------------------------------------
// Random draws
// ---------------------------------------------------------------------------------------------

/** Everything one augmented draw decides for one image. */
export interface AugmentationDraw {
  /** ShiftScaleRotate values, or null when it was not applied. */
  shiftScaleRotate: ShiftScaleRotateParams | null;
  /** Perspective: the std drawn and the 4 × [x, y] normal draws, or null when not applied. */
  perspective: { sigma: number; jitter: Quad } | null;
  /** Composed forward matrix of the geometric ops (Perspective · ShiftScaleRotate). */
  matrix: Mat3;
  /** Top-left corner of the random crop in the pre-crop image. */
  crop: { x: number; y: number };
  /** Horizontal flip. */
  hflip: boolean;
  /** Contrast gain `alpha` and brightness offset `beta`, or null when not applied. */
  brightnessContrast: { alpha: number; beta: number } | null;
}

/**
 * Draws the random parameters of `transformsTrainAugmented` for one `width × height` image, in
 * the order Albumentations draws them (each op first tests its probability).
 */
export function drawAugmentation(
  rng: Rng,
  params: Partial<AugmentationParams>,
  width: number,
  height: number,
): AugmentationDraw {
  const p = resolveParams(params);
  let shiftScaleRotate: ShiftScaleRotateParams | null = null;
  if (rng.next() < p.pTrain) {
    shiftScaleRotate = {
      angle: rng.uniform(-p.rotateLimit, p.rotateLimit),
      scale: 1 + rng.uniform(p.scaleLimit[0], p.scaleLimit[1]),
      dx: rng.uniform(-p.shiftLimit, p.shiftLimit),
      dy: rng.uniform(-p.shiftLimit, p.shiftLimit),
    };
  }
  let perspective: AugmentationDraw["perspective"] = null;
  if (rng.next() < p.pTrain) {
    const sigma = rng.uniform(0, p.perspectiveScale);
    const pt = (): Point => [rng.normal(0, sigma), rng.normal(0, sigma)];
    perspective = { sigma, jitter: [pt(), pt(), pt(), pt()] };
  }
  let matrix: Mat3 = IDENTITY;
  if (shiftScaleRotate) matrix = shiftScaleRotateMatrix(shiftScaleRotate, width, height);
  if (perspective) matrix = matMul3(perspectiveMatrix(perspective.jitter, width, height), matrix);
  // RandomCrop draws h_start then w_start; offsets are int((size - crop + 1) * start).
  const span = p.preCropSize - p.finalSize + 1;
  const y = Math.floor(span * rng.next());
  const x = Math.floor(span * rng.next());
  const hflip = rng.next() < p.pHflip;
  let brightnessContrast: AugmentationDraw["brightnessContrast"] = null;
  if (rng.next() < p.pTrain) {
    brightnessContrast = {
      alpha: 1 + rng.uniform(p.contrastLimit[0], p.contrastLimit[1]),
      beta: rng.uniform(p.brightnessLimit[0], p.brightnessLimit[1]),
    };
  }
  return { shiftScaleRotate, perspective, matrix, crop: { x, y }, hflip, brightnessContrast };
}

// ---------------------------------------------------------------------------------------------
// Batched ops (each returns a new tensor and leaves its input alone)
// ---------------------------------------------------------------------------------------------

/**
 * Warps each image by its forward matrix (source → destination) with bilinear sampling and a
 * constant border. The output keeps the input size unless `outputSize` ([height, width]) is
 * given; with the input size, identity matrices leave their image unchanged.
 */
export function warpBatch(
  images: tf.Tensor4D,
  matrices: readonly Mat3[],
  fill: number,
  outputSize?: readonly [number, number],
): tf.Tensor4D {
  const [n, h, w] = images.shape;
  if (matrices.length !== n) {
    throw new Error(`warpBatch: ${matrices.length} matrices for ${n} images`);
  }
  const size: [number, number] = outputSize ? [outputSize[0], outputSize[1]] : [h, w];
  const sameSize = size[0] === h && size[1] === w;
  if (sameSize && matrices.every(isIdentity)) return tf.clone(images);
  // tf.image.transform wants the inverse map (output pixel → input pixel), with m22 = 1.
  const rows = matrices.map((m) => {
    if (isIdentity(m)) return [1, 0, 0, 0, 1, 0, 0, 0];
    const inv = invert3(m);
    return inv.slice(0, 8).map((v) => v / inv[8]);
  });
  return tf.tidy(() => {
    // tfjs-backend-cpu 4.22's Transform kernel returns after the first image of a batch (the
    // rest stay at the fill value), so on cpu each image is warped on its own.
    if (tf.getBackend() === "cpu" && n > 1) {
      const parts = tf.split<tf.Tensor4D>(images, n, 0).map((img, k) =>
        sameSize && isIdentity(matrices[k])
          ? img
          : tf.image.transform(img, tf.tensor2d([rows[k]]), "bilinear", "constant", fill, size)
      );
      return tf.concat(parts, 0) as tf.Tensor4D;
    }
    return tf.image.transform(images, tf.tensor2d(rows), "bilinear", "constant", fill, size);
  });
}

/** Bilinear resize to `size × size` with half-pixel centres (OpenCV INTER_LINEAR). */
export function resizeBatch(images: tf.Tensor4D, size: number): tf.Tensor4D {
  if (images.shape[1] === size && images.shape[2] === size) return tf.clone(images);
  return tf.image.resizeBilinear(images, [size, size], false, true);
}

/** One square crop: which image, its top-left corner, and whether to mirror it. */
export interface CropBox {
  image: number;
  x: number;
  y: number;
  flip: boolean;
}

/**
 * Cuts `size × size` crops out of a batch, one output image per box, mirroring the boxes with
 * `flip`.
 */
export function cropBoxes(
  images: tf.Tensor4D,
  boxes: readonly CropBox[],
  size: number,
): tf.Tensor4D {
  const [n, h, w] = images.shape;
  if (h < 2 || w < 2) throw new Error(`cropBoxes: ${w}×${h} images are too small`);
  for (const { image, x, y } of boxes) {
    if (image < 0 || image >= n || x < 0 || y < 0 || x + size > w || y + size > h) {
      throw new Error(`crop ${size} at (${x}, ${y}) of image ${image} is outside ${n}×${w}×${h}`);
    }
  }
  if (
    boxes.length === n &&
    boxes.every((b, k) => b.image === k && b.x === boxes[0].x && b.y === boxes[0].y)
  ) {
    // One box per image, all at one corner (a plain resize's flips, a centre crop): one slice
    // of the batch and one mirror of it, then each image taken whole from one or the other
    // (a contiguous copy), where a strided slice and a mirror per image cost ~8 ms each on wasm.
    const { x, y } = boxes[0];
    return tf.tidy(() => {
      const whole = x === 0 && y === 0 && size === w && size === h;
      const crop = whole
        ? tf.clone(images)
        : tf.slice(images, [0, y, x, 0], [n, size, size, images.shape[3]]);
      if (!boxes.some((b) => b.flip)) return crop;
      const mirrored = tf.image.flipLeftRight(crop) as tf.Tensor4D;
      if (boxes.every((b) => b.flip)) return mirrored;
      // Image k of the result: image k of the crops or of their mirrors.
      const one = [1, size, size, images.shape[3]];
      const pick = (b: CropBox, k: number) => tf.slice(b.flip ? mirrored : crop, [k, 0, 0, 0], one);
      return tf.concat(boxes.map(pick), 0) as tf.Tensor4D;
    });
  }
  // Plain slices: exact on every backend. (tfjs 4.22's wasm cropAndResize misplaces some
  // boxes, e.g. a 224 box at x = 32, y = 0 of a 256 image, in both sampling modes.)
  return tf.tidy(() =>
    tf.concat(
      boxes.map(({ image, x, y, flip }) => {
        const crop = tf.slice(images, [image, y, x, 0], [1, size, size, images.shape[3]]);
        return flip ? tf.reverse(crop, 2) : crop;
      }),
      0,
    ) as tf.Tensor4D
  );
}

/** Crops `size × size` at each image's top-left `crops[k]`, mirroring those with `flips[k]`. */
export function cropAndFlip(
  images: tf.Tensor4D,
  crops: readonly { x: number; y: number }[],
  flips: readonly boolean[],
  size: number,
): tf.Tensor4D {
  return cropBoxes(images, crops.map(({ x, y }, k) => ({ image: k, x, y, flip: flips[k] })), size);
}

/** Mirrors every image left–right (HorizontalFlip with p = 1). */
export function flipBatch(images: tf.Tensor4D): tf.Tensor4D {
  const [n, h, w] = images.shape;
  if (h !== w) return tf.reverse(images, 2);
  return cropAndFlip(images, new Array(n).fill({ x: 0, y: 0 }), new Array(n).fill(true), w);
}

/** The forward matrix of a crop at `crop` (then a mirror when `flip`) to a `size` square. */
export function cropFlipMatrix(crop: { x: number; y: number }, flip: boolean, size: number): Mat3 {
  return flip
    ? [-1, 0, crop.x + size - 1, 0, 1, -crop.y, 0, 0, 1]
    : [1, 0, -crop.x, 0, 1, -crop.y, 0, 0, 1];
}

/** The centre `size × size` crop, at `(H - size) // 2, (W - size) // 2` like Albumentations. */
export function centerCrop(images: tf.Tensor4D, size: number): tf.Tensor4D {
  const [n, h, w] = images.shape;
  const y = Math.floor((h - size) / 2), x = Math.floor((w - size) / 2);
  return cropBoxes(
    images,
    Array.from({ length: n }, (_, k) => ({ image: k, x, y, flip: false })),
    size,
  );
}

/**
 * RandomBrightnessContrast with `brightness_by_max`: `clip(img · alpha + beta · 1.0, 0, 1)` for
 * float images (Albumentations clips float32 to [0, 1]); null entries get alpha = 1, beta = 0.
 * The clip runs over the whole batch, which leaves unadjusted images unchanged because
 * pipeline images are in [0, 1] (a per-image clip costs ~100× more on wasm).
 */
export function brightnessContrastBatch(
  images: tf.Tensor4D,
  adjust: readonly ({ alpha: number; beta: number } | null)[],
): tf.Tensor4D {
  const n = images.shape[0];
  if (adjust.every((a) => a === null)) return tf.clone(images);
  return tf.tidy(() => {
    const col = (v: number[]) => tf.tensor4d(v, [n, 1, 1, 1]);
    const alpha = col(adjust.map((a) => a?.alpha ?? 1));
    const beta = col(adjust.map((a) => a?.beta ?? 0));
    return tf.clipByValue(tf.add(tf.mul(images, alpha), beta), 0, 1);
  });
}

/** ImageNet normalisation `(img - NORM_MEAN) / NORM_STD` per channel (max_pixel_value = 1). */
export function normalizeBatch(images: tf.Tensor4D): tf.Tensor4D {
  // batchNorm does (x - mean) / sqrt(variance) in one pass: the fastest form on wasm.
  return tf.tidy(() =>
    tf.batchNorm(
      images,
      tf.tensor1d([...NORM_MEAN]),
      tf.tensor1d(NORM_STD.map((s) => s * s)),
      undefined,
      undefined,
      0,
    )
  );
}

/** Undoes {@link normalizeBatch} (for display). */
export function denormalizeBatch(images: tf.Tensor4D): tf.Tensor4D {
  return tf.tidy(() =>
    tf.add(tf.mul(images, tf.tensor1d([...NORM_STD])), tf.tensor1d([...NORM_MEAN]))
  );
}

/** Order of the crops in {@link tenCrop}'s output (crop-major). */
export const TEN_CROP_ORDER = [
  "top_left",
  "top_right",
  "bottom_left",
  "bottom_right",
  "center",
  "top_left_flipped",
  "top_right_flipped",
  "bottom_left_flipped",
  "bottom_right_flipped",
  "center_flipped",
] as const;

/**
 * Ten-crop test-time augmentation on already-resized images: the four corner crops and the
 * centre crop (torchvision's five_crop order), then each of those mirrored. The result is
 * `[10·N, size, size, 3]`, crop-major: row `k·N + i` is crop {@link TEN_CROP_ORDER}[k] of image
 * `i`, so predictions reshape to `[10, N, classes]` and average over axis 0.
 */
export function tenCrop(images: tf.Tensor4D, size = FINAL_SIZE): tf.Tensor4D {
  const [n, h, w] = images.shape;
  if (h < size || w < size) throw new Error(`tenCrop: ${w}×${h} images are smaller than ${size}`);
  const corners = [
    [0, 0],
    [w - size, 0],
    [0, h - size],
    [w - size, h - size],
    [Math.floor((w - size) / 2), Math.floor((h - size) / 2)],
  ];
  const boxes: CropBox[] = [];
  for (const flip of [false, true]) {
    for (const [x, y] of corners) {
      for (let image = 0; image < n; image++) boxes.push({ image, x, y, flip });
    }
  }
  return cropBoxes(images, boxes, size);
}

// ---------------------------------------------------------------------------------------------
// Pipelines (same names and order of operations as the original)
// ---------------------------------------------------------------------------------------------

function asFloat(images: tf.Tensor4D): tf.Tensor4D {
  return images.dtype === "float32" ? images : tf.cast(images, "float32");
}

/**
 * Applies drawn augmentations: warp (composed ShiftScaleRotate + Perspective) → Resize
 * preCropSize → RandomCrop 224 → HorizontalFlip → RandomBrightnessContrast → Normalize.
 * When the images already have the pre-crop size (the shards' 256 = the default), the resize is
 * the identity and the crop and flip are folded into the warp matrix, so one `tf.image.transform`
 * writes the 224×224 result directly (the same sample positions, one pass).
 */
export function applyAugmentation(
  images: tf.Tensor4D,
  draws: readonly AugmentationDraw[],
  params: Partial<AugmentationParams> = {},
): tf.Tensor4D {
  const p = resolveParams(params);
  const [n, h, w] = images.shape;
  if (draws.length !== n) {
    throw new Error(`applyAugmentation: ${draws.length} draws for ${n} images`);
  }
  const anyWarp = !draws.every((d) => isIdentity(d.matrix));
  return tf.tidy(() => {
    const x = asFloat(images);
    let cropped: tf.Tensor4D;
    if (anyWarp && h === p.preCropSize && w === p.preCropSize) {
      const matrices = draws.map((d) =>
        matMul3(cropFlipMatrix(d.crop, d.hflip, p.finalSize), d.matrix)
      );
      cropped = warpBatch(x, matrices, p.fillValue, [p.finalSize, p.finalSize]);
    } else {
      const warped = anyWarp ? warpBatch(x, draws.map((d) => d.matrix), p.fillValue) : x;
      const resized = resizeBatch(warped, p.preCropSize);
      cropped = cropAndFlip(
        resized,
        draws.map((d) => d.crop),
        draws.map((d) => d.hflip),
        p.finalSize,
      );
    }
    const coloured = brightnessContrastBatch(cropped, draws.map((d) => d.brightnessContrast));
    return normalizeBatch(coloured);
  });
}

/** Training with augmentation: ShiftScaleRotate → Perspective → Resize → RandomCrop → flip → colour → Normalize. */
export function transformsTrainAugmented(
  images: tf.Tensor4D,
  rng: Rng,
  params: Partial<AugmentationParams> = {},
): tf.Tensor4D {
  const [n, h, w] = images.shape;
  const draws = Array.from({ length: n }, () => drawAugmentation(rng, params, w, h));
  return applyAugmentation(images, draws, params);
}

/** Training without augmentation: Resize 224 → HorizontalFlip(pHflip) → Normalize. */
export function transformsTrain(
  images: tf.Tensor4D,
  rng: Rng,
  params: Partial<AugmentationParams> = {},
): tf.Tensor4D {
  const p = resolveParams(params);
  const flips = Array.from({ length: images.shape[0] }, () => rng.next() < p.pHflip);
  return tf.tidy(() => {
    const resized = resizeBatch(asFloat(images), p.finalSize);
    if (!flips.includes(true)) return normalizeBatch(resized);
    const crops = flips.map(() => ({ x: 0, y: 0 }));
    return normalizeBatch(cropAndFlip(resized, crops, flips, p.finalSize));
  });
}

/** Validation/test: Resize 224 → Normalize. The rng is unused. */
export function transformsTest(
  images: tf.Tensor4D,
  _rng?: Rng,
  params: Partial<AugmentationParams> = {},
): tf.Tensor4D {
  const p = resolveParams(params);
  return tf.tidy(() => normalizeBatch(resizeBatch(asFloat(images), p.finalSize)));
}

/** Validation/test with centre crop: Resize preCropSize → CenterCrop 224 → Normalize. */
export function transformsTestCentercrop(
  images: tf.Tensor4D,
  _rng?: Rng,
  params: Partial<AugmentationParams> = {},
): tf.Tensor4D {
  const p = resolveParams(params);
  return tf.tidy(() =>
    normalizeBatch(centerCrop(resizeBatch(asFloat(images), p.preCropSize), p.finalSize))
  );
}

/** Ten-crop test: Resize preCropSize → {@link tenCrop} → Normalize; returns `[10·N, 224, 224, 3]`. */
export function transformsTestTenCrop(
  images: tf.Tensor4D,
  _rng?: Rng,
  params: Partial<AugmentationParams> = {},
): tf.Tensor4D {
  const p = resolveParams(params);
  return tf.tidy(() =>
    normalizeBatch(tenCrop(resizeBatch(asFloat(images), p.preCropSize), p.finalSize))
  );
}

/**
 * Dataset creation: Resize to DATASET_IMAGE_SIZE (bilinear, half-pixel centres), keeping the
 * value range; the caller rounds to 8 bits when it stores PNGs.
 */
export function transformsDatasetCreation(images: tf.Tensor4D): tf.Tensor4D {
  return tf.tidy(() => resizeBatch(asFloat(images), DATASET_IMAGE_SIZE));
}

/**
 * Parameters for a network input of `imageSize` (default 224): the pre-crop size scales alike
 * (256/224), so a quick run at 64 px keeps the original's crop proportions.
 */
export function paramsForImageSize(
  imageSize: number,
  params: Partial<AugmentationParams> = {},
): Partial<AugmentationParams> {
  if (imageSize === FINAL_IMAGE_SIZE) return params;
  return {
    preCropSize: Math.round((imageSize * AUGMENTATION_PARAMS.preCropSize) / FINAL_IMAGE_SIZE),
    finalSize: imageSize,
    ...params,
  };
}

/** Returns its input unchanged (the original's `identity`). */
export function identity<T>(x: T): T {
  return x;
}

/** The test transform in words (`resize 224`, `resize 256, center crop 224`), for reports. */
export function testTransformText(imageSize: number, centerCrop: boolean): string {
  const p = resolveParams(paramsForImageSize(imageSize));
  return centerCrop
    ? `resize ${p.preCropSize}, center crop ${p.finalSize}`
    : `resize ${p.finalSize}`;
}
