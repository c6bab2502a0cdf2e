/**
 * Class activation maps as in CheXNet (Rajpurkar et al. 2017, after Zhou et al. 2016): the map
 * of class c is Σ_k w_{k,c} · F_k over the final feature map F (norm5 + ReLU, before global
 * average pooling) and the classifier weights w, upsampled bilinearly to the image and min-max
 * normalised; rendered as a jet heatmap blended over the X-ray with the class, probability and
 * ground truth burned in and a colour bar, and written as PNGs named
 * `<class>_<rank>_<key>_p<probability>.png`.
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { LABELS } from "../../config.ts";
import { writeFileAtomic } from "../util/atomic_file.ts";
import { decodeImage, type RgbImage } from "../data/images.ts";
import { decodeAsPreprocessed } from "../data/preprocessed_image.ts";
import { UserError } from "../util/errors.ts";
import { batchToTensor, type BatchTransform } from "./inference.ts";
import { type DenseNet, features } from "../model/densenet.ts";
import { Rng } from "../util/rng.ts";
import { readShards } from "../data/webdataset.ts";
import { Progress } from "../util/progress.ts";
import { darken, drawText, textScale } from "../util/bitmap_text.ts";
import { readValues } from "../backends/device_faults.ts";

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
  /** A second caption line, e.g. the ground truth `truth: Effusion, Mass`. */
  subcaption?: string;
  /** The jet colour bar (low → high) in the bottom-left corner (default true). */
  colourBar?: boolean;
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
  const lines = [opts.caption, opts.subcaption].filter((l): l is string => !!l);
  if (lines.length > 0) burnCaption(out, width, height, lines);
  if (opts.colourBar ?? true) burnColourBar(out, width, height);
  const { default: sharp } = await import("sharp");
  const png = await sharp(out, { raw: { width, height, channels: 3 } }).png().toBuffer();
  return new Uint8Array(png.buffer, png.byteOffset, png.byteLength);
}

/** Draws `lines` (upper-cased) white on a dark box in the top-left corner of an RGB buffer. */
function burnCaption(rgb: Uint8Array, width: number, height: number, lines: string[]): void {
  const scale = textScale(width);
  const pad = scale, lineH = 8 * scale;
  const longest = Math.max(...lines.map((l) => [...l].length));
  darken(
    rgb,
    width,
    height,
    0,
    0,
    longest * 6 * scale + 2 * pad - scale,
    lines.length * lineH + 2 * pad - scale,
  );
  lines.forEach((line, i) => drawText(rgb, width, height, line, pad, pad + i * lineH, scale));
}

/**
 * The colour scale of the heatmap, bottom-left: `LOW`, the jet gradient from 0 to 1 (the map
 * is min-max normalised per image), `HIGH`, on a dark box.
 */
function burnColourBar(rgb: Uint8Array, width: number, height: number): void {
  const scale = textScale(width);
  const pad = scale, textH = 7 * scale;
  const barW = Math.max(16, Math.round(width / 4));
  const lowW = 3 * 6 * scale, highW = 4 * 6 * scale - scale;
  const boxW = Math.min(width, lowW + barW + 2 * scale + highW + 2 * pad);
  const boxH = Math.min(height, textH + 2 * pad);
  const y0 = height - boxH;
  darken(rgb, width, height, 0, y0, boxW, boxH);
  drawText(rgb, width, height, "LOW", pad, y0 + pad, scale);
  const bx = pad + lowW + scale;
  for (let x = 0; x < barW && bx + x < width; x++) {
    const [r, g, b] = jet(barW > 1 ? x / (barW - 1) : 0);
    for (let y = y0 + pad; y < y0 + pad + textH; y++) {
      const i = (y * width + bx + x) * 3;
      rgb[i] = Math.round(255 * r);
      rgb[i + 1] = Math.round(255 * g);
      rgb[i + 2] = Math.round(255 * b);
    }
  }
  drawText(rgb, width, height, "HIGH", bx + barW + scale, y0 + pad, scale);
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
  /** The image's ground-truth findings (empty: No Finding); absent when unknown (--images). */
  truth?: string[];
}

/** One overlay written, for the CAM directory's index.html. */
export interface CamWritten {
  path: string;
  /** The file name inside the CAM directory. */
  file: string;
  key: string;
  className: string;
  rank: number;
  probability: number;
  truth?: string[];
}

/** "truth: Effusion, Mass", "truth: No Finding", or undefined when unknown. */
export function truthText(truth: string[] | undefined): string | undefined {
  if (truth === undefined) return undefined;
  return `truth: ${truth.length > 0 ? truth.join(", ") : "No Finding"}`;
}

/** How the network input was made from the image, so the map lands on the right pixels. */
export interface CamWriteOptions {
  dir: string;
  /** The test transform of the evaluation (resize, or resize + centre crop). */
  transform: BatchTransform;
  /** With a centre-crop transform: its `preCropSize` and `finalSize`; the overlay shows the crop. */
  centerCrop?: { preCropSize: number; finalSize: number };
  alpha?: number;
  /** Show a progress bar on stderr (default true; the caller's count of maps as its total). */
  progress?: boolean;
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
 * model on each image once, with a progress bar over `total` maps; returns what was written.
 */
export async function writeCams(
  model: DenseNet,
  requests: Iterable<CamRequest> | AsyncIterable<CamRequest>,
  opts: CamWriteOptions,
  total = 0,
): Promise<CamWritten[]> {
  await Deno.mkdir(opts.dir, { recursive: true });
  const rng = new Rng(0);
  const written: CamWritten[] = [];
  const progress = new Progress("CAM", total, { unit: "map", silent: opts.progress === false });
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
    const data = (await readValues(maps)) as Float32Array;
    maps.dispose();
    const n = shown.width * shown.height;
    for (const [k, e] of req.entries.entries()) {
      const png = await renderCamOverlay(shown, data.subarray(k * n, (k + 1) * n), {
        alpha: opts.alpha,
        caption: `${LABELS[e.classIndex]} p=${e.probability.toFixed(4)}`,
        subcaption: truthText(req.truth),
      });
      const file = camFileName(e.classIndex, e.rank, req.key, e.probability);
      const path = `${opts.dir}/${file}`;
      await writeFileAtomic(path, png);
      written.push({
        path,
        file,
        key: req.key,
        className: LABELS[e.classIndex],
        rank: e.rank,
        probability: e.probability,
        truth: req.truth,
      });
      progress.tick();
    }
  }
  progress.finish();
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
): Promise<CamWritten[]> {
  const numClasses = model.config.numClasses;
  const selected = selectTopImages(evaluated.probs, evaluated.n, numClasses, perClass);
  // By position in the evaluation's (unshuffled) order, not by key: a key need not be unique
  // (two shards may both hold one), and a map must show its own image's probability and truth.
  const wanted = new Map<number, CamEntry[]>(selected);
  async function* requests(): AsyncGenerator<CamRequest> {
    let position = -1;
    for await (const s of readShards(shards)) {
      const entries = wanted.get(++position);
      if (!entries) continue;
      if (s.key !== evaluated.keys[position]) {
        throw new UserError(
          `${s.source ?? s.key}: the shards changed while being read (expected ` +
            `'${evaluated.keys[position]}' at position ${position + 1}); run again`,
        );
      }
      wanted.delete(position);
      const truth = LABELS.filter((_, c) => s.labels[c] === 1);
      yield { key: s.key, image: await decodeImage(s.png, s.source ?? s.key), entries, truth };
      if (wanted.size === 0) return;
    }
  }
  const total = [...selected.values()].reduce((sum, e) => sum + e.length, 0);
  return await writeCams(model, requests(), opts, total);
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
  opts: CamWriteOptions & { datasetSize: number },
): Promise<CamWritten[]> {
  const stems = predictions.map((p) =>
    (p.image.split("/").pop() ?? p.image).replace(/\.[^.]*$/, "")
  );
  const count = new Map<string, number>();
  for (const s of stems) count.set(s, (count.get(s) ?? 0) + 1);
  async function* requests(): AsyncGenerator<CamRequest> {
    for (const [i, p] of predictions.entries()) {
      const probs = LABELS.map((l) => p.probabilities[l]);
      // Two files of one stem (a/x.png, b/x.png) are told apart by their position.
      const key = count.get(stems[i])! > 1 ? `${stems[i]}_${i + 1}` : stems[i];
      yield {
        key,
        // The image the prediction was made from (resized as preprocessing does if larger).
        image: (await decodeAsPreprocessed(p.image, opts.datasetSize)).image,
        entries: topClassEntries(probs, topClasses),
      };
    }
  }
  const total = predictions.length * Math.min(topClasses, LABELS.length);
  return await writeCams(model, requests(), opts, total);
}
