/**
 * Class activation maps as in CheXNet (Rajpurkar et al. 2017, after Zhou et al. 2016): the map
 * of class c is Σ_k w_{k,c} · F_k over the final feature map F (norm5 + ReLU, before global
 * average pooling) and the classifier weights w, upsampled bilinearly to the image and min-max
 * normalised; rendered as a jet heatmap blended over the X-ray with the class and probability
 * burned in, and written as PNGs named `<class>_<rank>_<key>_p<probability>.png`.
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { LABELS } from "../../config.ts";
import { writeFileAtomic } from "../util/atomic_file.ts";
import { decodeImage, decodeImagePath, type RgbImage } from "../data/images.ts";
import { batchToTensor, type BatchTransform } from "./inference.ts";
import { type DenseNet, features } from "../model/densenet.ts";
import { Rng } from "../util/rng.ts";
import { readShards } from "../data/webdataset.ts";

/**
 * Unnormalised CAMs at feature-map resolution, `[N, h, w, classes.length]`:
 * `F · W[:, classes]`. Their spatial mean plus the classifier bias is the class logit.
 */
export function rawClassActivationMaps(
  model: DenseNet,
  x: tf.Tensor4D,
  classes: number[],
): tf.Tensor4D {
  checkClasses(model, classes);
  return tf.tidy(() => {
    const f = features(model, x);
    const [n, h, w, c] = f.shape;
    const weights = tf.gather(model.classifier.weight, classes, 1) as tf.Tensor2D;
    const maps = tf.matMul(tf.reshape(f, [n * h * w, c]) as tf.Tensor2D, weights);
    return tf.reshape(maps, [n, h, w, classes.length]) as tf.Tensor4D;
  });
}

/** Options of `classActivationMaps`. */
export interface CamOptions {
  /** Output `[height, width]` (default: the input's). */
  size?: [number, number];
  /** Min-max normalise each map to [0, 1] (default true); a constant map becomes 0. */
  normalize?: boolean;
}

/**
 * CAMs of `classes` for normalised NHWC images `x`, `[N, H, W, classes.length]`: upsampled
 * bilinearly (half-pixel centres) to the input size and min-max normalised per map.
 */
export function classActivationMaps(
  model: DenseNet,
  x: tf.Tensor4D,
  classes: number[],
  opts: CamOptions = {},
): tf.Tensor4D {
  const size = opts.size ?? [x.shape[1], x.shape[2]];
  return tf.tidy(() => {
    const raw = rawClassActivationMaps(model, x, classes);
    const up = tf.image.resizeBilinear(raw, size, false, true);
    if (opts.normalize === false) return up;
    const lo = tf.min(up, [1, 2], true);
    const range = tf.sub(tf.max(up, [1, 2], true), lo);
    // Constant map: divide by 1 instead of 0, giving zeros.
    const safe = tf.where(tf.greater(range, 0), range, tf.onesLike(range));
    return tf.clipByValue(tf.div(tf.sub(up, lo), safe), 0, 1) as tf.Tensor4D;
  });
}

function checkClasses(model: DenseNet, classes: number[]): void {
  const k = model.config.numClasses;
  if (classes.length === 0 || classes.some((c) => !Number.isInteger(c) || c < 0 || c >= k)) {
    throw new Error(`CAM classes must be integers in [0, ${k}), got [${classes}]`);
  }
}

/** Jet colormap (as matplotlib/OpenCV's): t in [0, 1] → RGB in [0, 1]. */
export function jet(t: number): [number, number, number] {
  const c = (v: number) => Math.min(1, Math.max(0, v));
  return [c(1.5 - Math.abs(4 * t - 3)), c(1.5 - Math.abs(4 * t - 2)), c(1.5 - Math.abs(4 * t - 1))];
}

/** Options of `renderCamOverlay`. */
export interface OverlayOptions {
  /** Heatmap weight in the blend (default 0.4). */
  alpha?: number;
  /** Text burned into the top-left corner (e.g. `Effusion p=0.8123`); none when absent. */
  caption?: string;
}

/**
 * Blends a jet heatmap of `cam` (`height × width` values in [0, 1], row-major) over the X-ray
 * (8-bit RGB, or grey `height × width` bytes) and encodes it as an RGB PNG.
 */
export async function renderCamOverlay(
  xray: RgbImage,
  cam: Float32Array,
  opts: OverlayOptions = {},
): Promise<Uint8Array> {
  const { width, height } = xray;
  const n = width * height;
  const channels = xray.data.length / n;
  if ((channels !== 1 && channels !== 3) || cam.length !== n) {
    throw new Error(
      `renderCamOverlay: ${width}×${height} image with ${xray.data.length} bytes and a CAM of ` +
        `${cam.length} values do not match`,
    );
  }
  const alpha = opts.alpha ?? 0.4;
  const out = new Uint8Array(n * 3);
  for (let i = 0; i < n; i++) {
    const [r, g, b] = jet(cam[i]);
    const heat = [r, g, b];
    for (let ch = 0; ch < 3; ch++) {
      const v = xray.data[channels === 3 ? i * 3 + ch : i];
      out[i * 3 + ch] = Math.round((1 - alpha) * v + alpha * 255 * heat[ch]);
    }
  }
  if (opts.caption) burnCaption(out, width, height, opts.caption);
  const { default: sharp } = await import("sharp");
  const png = await sharp(out, { raw: { width, height, channels: 3 } }).png().toBuffer();
  return new Uint8Array(png.buffer, png.byteOffset, png.byteLength);
}

// 5×7 bitmap font, one byte per column, bit 0 = top row (the classic glcdfont glyphs): no font
// files or text renderer needed, so captions look the same everywhere, compiled or not.
const GLYPHS: Record<string, number[]> = {
  A: [0x7c, 0x12, 0x11, 0x12, 0x7c],
  B: [0x7f, 0x49, 0x49, 0x49, 0x36],
  C: [0x3e, 0x41, 0x41, 0x41, 0x22],
  D: [0x7f, 0x41, 0x41, 0x22, 0x1c],
  E: [0x7f, 0x49, 0x49, 0x49, 0x41],
  F: [0x7f, 0x09, 0x09, 0x09, 0x01],
  G: [0x3e, 0x41, 0x49, 0x49, 0x7a],
  H: [0x7f, 0x08, 0x08, 0x08, 0x7f],
  I: [0x00, 0x41, 0x7f, 0x41, 0x00],
  J: [0x20, 0x40, 0x41, 0x3f, 0x01],
  K: [0x7f, 0x08, 0x14, 0x22, 0x41],
  L: [0x7f, 0x40, 0x40, 0x40, 0x40],
  M: [0x7f, 0x02, 0x0c, 0x02, 0x7f],
  N: [0x7f, 0x04, 0x08, 0x10, 0x7f],
  O: [0x3e, 0x41, 0x41, 0x41, 0x3e],
  P: [0x7f, 0x09, 0x09, 0x09, 0x06],
  Q: [0x3e, 0x41, 0x51, 0x21, 0x5e],
  R: [0x7f, 0x09, 0x19, 0x29, 0x46],
  S: [0x46, 0x49, 0x49, 0x49, 0x31],
  T: [0x01, 0x01, 0x7f, 0x01, 0x01],
  U: [0x3f, 0x40, 0x40, 0x40, 0x3f],
  V: [0x1f, 0x20, 0x40, 0x20, 0x1f],
  W: [0x3f, 0x40, 0x38, 0x40, 0x3f],
  X: [0x63, 0x14, 0x08, 0x14, 0x63],
  Y: [0x07, 0x08, 0x70, 0x08, 0x07],
  Z: [0x61, 0x51, 0x49, 0x45, 0x43],
  "0": [0x3e, 0x51, 0x49, 0x45, 0x3e],
  "1": [0x00, 0x42, 0x7f, 0x40, 0x00],
  "2": [0x42, 0x61, 0x51, 0x49, 0x46],
  "3": [0x21, 0x41, 0x45, 0x4b, 0x31],
  "4": [0x18, 0x14, 0x12, 0x7f, 0x10],
  "5": [0x27, 0x45, 0x45, 0x45, 0x39],
  "6": [0x3c, 0x4a, 0x49, 0x49, 0x30],
  "7": [0x01, 0x71, 0x09, 0x05, 0x03],
  "8": [0x36, 0x49, 0x49, 0x49, 0x36],
  "9": [0x06, 0x49, 0x49, 0x29, 0x1e],
  ".": [0x00, 0x60, 0x60, 0x00, 0x00],
  "=": [0x14, 0x14, 0x14, 0x14, 0x14],
  "_": [0x40, 0x40, 0x40, 0x40, 0x40],
  "-": [0x08, 0x08, 0x08, 0x08, 0x08],
  ":": [0x00, 0x36, 0x36, 0x00, 0x00],
  " ": [0x00, 0x00, 0x00, 0x00, 0x00],
};

/** Draws `text` (upper-cased) white on a dark box in the top-left corner of an RGB buffer. */
function burnCaption(rgb: Uint8Array, width: number, height: number, text: string): void {
  const chars = [...text.toUpperCase()].map((ch) => GLYPHS[ch] ?? GLYPHS[" "]);
  // ~1/40 of the width per glyph row: 1 px at 256, 4 px at 1024.
  const scale = Math.max(1, Math.round(width / 256));
  const pad = scale;
  const boxW = Math.min(width, chars.length * 6 * scale + 2 * pad - scale);
  const boxH = Math.min(height, 7 * scale + 2 * pad);
  const set = (x: number, y: number, v: number) => {
    if (x >= width || y >= height) return;
    const i = (y * width + x) * 3;
    rgb[i] = rgb[i + 1] = rgb[i + 2] = v;
  };
  for (let y = 0; y < boxH; y++) {
    for (let x = 0; x < boxW; x++) {
      const i = (y * width + x) * 3;
      for (let ch = 0; ch < 3; ch++) rgb[i + ch] = Math.round(rgb[i + ch] * 0.25);
    }
  }
  chars.forEach((cols, k) => {
    cols.forEach((bits, col) => {
      for (let row = 0; row < 7; row++) {
        if (!(bits & (1 << row))) continue;
        const x0 = pad + (k * 6 + col) * scale, y0 = pad + row * scale;
        for (let dy = 0; dy < scale; dy++) {
          for (let dx = 0; dx < scale; dx++) set(x0 + dx, y0 + dy, 255);
        }
      }
    });
  });
}

/** One class of one image to map: the rank among its selection and the evaluation's probability. */
export interface CamEntry {
  classIndex: number;
  rank: number;
  probability: number;
}

/** An image and the classes to map on it. */
export interface CamRequest {
  /** Sample key or file stem, used in the file name. */
  key: string;
  image: RgbImage;
  entries: CamEntry[];
}

/** How the network input was made from the image, so the map lands on the right pixels. */
export interface CamWriteOptions {
  dir: string;
  /** The test transform of the evaluation (resize, or resize + centre crop). */
  transform: BatchTransform;
  /** With a centre-crop transform: its `preCropSize` and `finalSize`; the overlay shows the crop. */
  centerCrop?: { preCropSize: number; finalSize: number };
  alpha?: number;
}

/** `<class>_<rank>_<key>_p<probability, 4 decimals>.png`. */
export function camFileName(classIndex: number, rank: number, key: string, p: number): string {
  const safeKey = key.replace(/[^A-Za-z0-9._-]/g, "_");
  return `${LABELS[classIndex]}_${rank}_${safeKey}_p${p.toFixed(4)}.png`;
}

/** The region of `image` a centre crop of `finalSize` from a `preCropSize` resize covers. */
function cropRegion(image: RgbImage, crop: { preCropSize: number; finalSize: number }): RgbImage {
  const { preCropSize: p, finalSize: f } = crop;
  const off = Math.floor((p - f) / 2);
  const x0 = Math.round((off * image.width) / p), y0 = Math.round((off * image.height) / p);
  const w = Math.max(1, Math.round((f * image.width) / p));
  const h = Math.max(1, Math.round((f * image.height) / p));
  const data = new Uint8Array(w * h * 3);
  for (let y = 0; y < h; y++) {
    const src = ((y0 + y) * image.width + x0) * 3;
    data.set(image.data.subarray(src, src + w * 3), y * w * 3);
  }
  return { data, width: w, height: h };
}

/**
 * Writes one overlay PNG per (image, class) entry into `opts.dir` (atomically), re-running the
 * model on each image once; returns the paths written.
 */
export async function writeCams(
  model: DenseNet,
  requests: Iterable<CamRequest> | AsyncIterable<CamRequest>,
  opts: CamWriteOptions,
): Promise<string[]> {
  await Deno.mkdir(opts.dir, { recursive: true });
  const rng = new Rng(0);
  const written: string[] = [];
  for await (const req of requests) {
    if (req.entries.length === 0) continue;
    const shown = opts.centerCrop ? cropRegion(req.image, opts.centerCrop) : req.image;
    const classes = req.entries.map((e) => e.classIndex);
    const maps = tf.tidy(() => {
      const x = opts.transform(
        batchToTensor({
          images: req.image.data,
          n: 1,
          height: req.image.height,
          width: req.image.width,
        }),
        rng,
      );
      // [1, H, W, K] → [K, H, W]: one contiguous map per class.
      const cams = classActivationMaps(model, x, classes, { size: [shown.height, shown.width] });
      return tf.transpose(tf.squeeze(cams, [0]), [2, 0, 1]);
    });
    const data = (await maps.data()) as Float32Array;
    maps.dispose();
    const n = shown.width * shown.height;
    for (const [k, e] of req.entries.entries()) {
      const png = await renderCamOverlay(shown, data.subarray(k * n, (k + 1) * n), {
        alpha: opts.alpha,
        caption: `${LABELS[e.classIndex]} p=${e.probability.toFixed(4)}`,
      });
      const path = `${opts.dir}/${camFileName(e.classIndex, e.rank, req.key, e.probability)}`;
      await writeFileAtomic(path, png);
      written.push(path);
    }
  }
  return written;
}

/** Indices of the `count` largest values of `values` (ties: lower index first). */
export function topIndices(values: ArrayLike<number>, count: number): number[] {
  return Array.from({ length: values.length }, (_, i) => i)
    .sort((a, b) => values[b] - values[a] || a - b)
    .slice(0, Math.max(0, count));
}

/**
 * Per class, the `perClass` highest-scoring images of row-major `[n, numClasses]` probabilities,
 * grouped by image index: image → its entries (rank 1 = highest).
 */
export function selectTopImages(
  probs: ArrayLike<number>,
  n: number,
  numClasses: number,
  perClass: number,
): Map<number, CamEntry[]> {
  const byImage = new Map<number, CamEntry[]>();
  for (let c = 0; c < numClasses; c++) {
    const column = Array.from({ length: n }, (_, i) => probs[i * numClasses + c]);
    topIndices(column, perClass).forEach((i, r) => {
      const list = byImage.get(i) ?? [];
      list.push({ classIndex: c, rank: r + 1, probability: column[i] });
      byImage.set(i, list);
    });
  }
  return byImage;
}

/**
 * CAMs of the `perClass` highest-scoring images per class of an evaluated test set: selects
 * them from the evaluation's probabilities, reads only those samples back from `shards`, and
 * re-runs the model on them alone.
 */
export async function writeTopCams(
  model: DenseNet,
  shards: string[],
  evaluated: { keys: string[]; probs: ArrayLike<number>; n: number },
  perClass: number,
  opts: CamWriteOptions,
): Promise<string[]> {
  const numClasses = model.config.numClasses;
  const selected = selectTopImages(evaluated.probs, evaluated.n, numClasses, perClass);
  const wanted = new Map<string, CamEntry[]>();
  for (const [i, entries] of selected) wanted.set(evaluated.keys[i], entries);
  async function* requests(): AsyncGenerator<CamRequest> {
    for await (const s of readShards(shards)) {
      const entries = wanted.get(s.key);
      if (!entries) continue;
      wanted.delete(s.key);
      yield { key: s.key, image: await decodeImage(s.png, s.source ?? s.key), entries };
      if (wanted.size === 0) return;
    }
  }
  return await writeCams(model, requests(), opts);
}

/** CAMs of each image's `topClasses` most probable classes (`--images` mode). */
export function topClassEntries(probabilities: ArrayLike<number>, topClasses: number): CamEntry[] {
  return topIndices(probabilities, topClasses).map((c, r) => ({
    classIndex: c,
    rank: r + 1,
    probability: probabilities[c],
  }));
}

/**
 * CAMs for single images (`--images` mode): each image's `topClasses` most probable classes,
 * probabilities as predicted, named by the file's stem.
 */
export async function writeImageCams(
  model: DenseNet,
  predictions: { image: string; probabilities: Record<string, number> }[],
  topClasses: number,
  opts: CamWriteOptions,
): Promise<string[]> {
  async function* requests(): AsyncGenerator<CamRequest> {
    for (const p of predictions) {
      const probs = LABELS.map((l) => p.probabilities[l]);
      const key = (p.image.split("/").pop() ?? p.image).replace(/\.[^.]*$/, "");
      yield {
        key,
        image: await decodeImagePath(p.image),
        entries: topClassEntries(probs, topClasses),
      };
    }
  }
  return await writeCams(model, requests(), opts);
}
