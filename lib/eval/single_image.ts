/**
 * Single-image use ("how do I run it on one X-ray?"): any PNG/JPEG of any size, grey or colour,
 * 8 or 16 bit, goes through the test transform; prints the 14 probabilities and the findings
 * above the checkpoint's thresholds; validate_model.ts writes them with --json / --predictions.
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { LABELS, NUM_CLASSES } from "../../config.ts";
import { UserError } from "../util/errors.ts";
import { decodeImagePath, isImageFile } from "../data/images.ts";
import { batchToTensor, type BatchTransform } from "./inference.ts";
import { type DenseNet, predict } from "../model/densenet.ts";
import { Rng } from "../util/rng.ts";
import { readValues } from "../backends/device_faults.ts";

/** Expands directories into their PNG/JPEG/DICOM files (sorted); files are kept as given. */
export async function expandImagePaths(paths: string[]): Promise<string[]> {
  const out: string[] = [];
  for (const path of paths) {
    let info: Deno.FileInfo;
    try {
      info = await Deno.stat(path);
    } catch {
      throw new UserError(`image not found: ${path}`);
    }
    if (!info.isDirectory) {
      out.push(path);
      continue;
    }
    const names: string[] = [];
    for await (const e of Deno.readDir(path)) {
      if (e.isFile && await isImageFile(`${path}/${e.name}`)) names.push(e.name);
    }
    if (names.length === 0) throw new UserError(`no PNG, JPEG or DICOM files in ${path}`);
    out.push(...names.sort().map((n) => `${path}/${n}`));
  }
  return out;
}

/** The prediction for one image. */
export interface ImagePrediction {
  image: string;
  probabilities: Record<string, number>;
  findings: string[];
}

/** Predicts each image with `transform` (a test transform) and prints its findings. */
export async function predictImages(
  model: DenseNet,
  paths: string[],
  opts: { thresholds: ArrayLike<number>; transform: BatchTransform },
): Promise<ImagePrediction[]> {
  const files = await expandImagePaths(paths);
  const rng = new Rng(0);
  const results: ImagePrediction[] = [];
  for (const file of files) {
    const img = await decodeImagePath(file);
    const out = tf.tidy(() =>
      predict(model, opts.transform(batchToTensor({ ...img, images: img.data, n: 1 }), rng))
    );
    const probs = await readValues(out);
    out.dispose();
    const probabilities: Record<string, number> = {};
    const findings: string[] = [];
    for (let c = 0; c < NUM_CLASSES; c++) {
      probabilities[LABELS[c]] = probs[c];
      if (probs[c] > opts.thresholds[c]) findings.push(LABELS[c]);
    }
    results.push({ image: file, probabilities, findings });
    console.log(`${file}: ${findings.length ? findings.join(", ") : "no finding above threshold"}`);
    for (let c = 0; c < NUM_CLASSES; c++) {
      const mark = probs[c] > opts.thresholds[c] ? " *" : "";
      console.log(
        `  ${LABELS[c].padEnd(20)}${probs[c].toFixed(4)}  (threshold ${
          Number(opts.thresholds[c]).toFixed(4)
        })${mark}`,
      );
    }
  }
  return results;
}
