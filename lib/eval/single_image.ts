/**
 * Single-image use ("how do I run it on one X-ray?"): any PNG/JPEG/DICOM of any size, grey or
 * colour, 8 or 16 bit, goes the test shards' way (a file larger than the dataset's images is
 * first resized as preprocessing resizes it, see `preprocessed_image.ts`), then through the test
 * transform; prints the 14 probabilities and the findings above the checkpoint's thresholds;
 * validate_model.ts writes them with --json / --predictions.
 *
 * A folder is predicted image by image: one file that cannot be read or decoded is named on one
 * `failed:` line and the others are predicted; the run then ends non-zero (`imageFailures`).
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { LABELS, NUM_CLASSES } from "../../config.ts";
import { UserError } from "../util/errors.ts";
import { isImageFile } from "../data/images.ts";
import { decodeAsPreprocessed } from "../data/preprocessed_image.ts";
import { batchToTensor, type BatchTransform } from "./inference.ts";
import { type DenseNet, predict } from "../model/densenet.ts";
import { Rng } from "../util/rng.ts";
import { readValues } from "../backends/device_faults.ts";
import { checkInputFile } from "../util/input_files.ts";
import { shown } from "../util/shown.ts";
import { plural } from "../util/format.ts";

/** An image that could not be predicted, and why (one line). */
export interface ImageFailure {
  image: string;
  error: string;
}

/** The files `--images` names: directories expanded; what in them cannot be read. */
export interface ImageFiles {
  files: string[];
  /** Entries of a directory that are images by name but cannot be read (dangling links, …). */
  failures: ImageFailure[];
}

const CHECK_HINT = "give a PNG, JPEG or DICOM file";

/**
 * Expands directories into their PNG/JPEG/DICOM files (sorted); files are kept as given. Every
 * path is stat'ed before anything is opened: a named file that is missing, a dangling link, a
 * device or a FIFO stops the run with one line, before any compute. In a directory, links to
 * files count as files; an image-named entry that is a dangling link, a loop of links or a
 * special file is a failure, reported and recorded, while the others are predicted.
 */
export async function listImageFiles(paths: string[]): Promise<ImageFiles> {
  const files: string[] = [];
  const failures: ImageFailure[] = [];
  for (const path of paths) {
    let info: Deno.FileInfo | null = null;
    try {
      info = await Deno.stat(path);
    } catch { /* checkInputFile names what is wrong */ }
    if (!info?.isDirectory) {
      await checkInputFile(path, "image", CHECK_HINT);
      files.push(path);
      continue;
    }
    const names: string[] = [];
    const bad: ImageFailure[] = [];
    for await (const e of Deno.readDir(path)) {
      const full = `${path}/${e.name}`;
      if (e.isDirectory) continue;
      if (e.isFile || e.isSymlink) {
        try {
          await checkInputFile(full, "image", CHECK_HINT);
        } catch (err) {
          // A link to a directory is a folder: not recursed into, as folders are not.
          if (await Deno.stat(full).then((i) => i.isDirectory, () => false)) continue;
          if (!(err instanceof UserError) || !looksLikeImage(full)) continue;
          bad.push({ image: full, error: err.message });
          continue;
        }
        if (await isImageFile(full)) names.push(e.name);
      } else if (looksLikeImage(full)) {
        // A FIFO, socket or device with an image's name: never opened.
        try {
          await checkInputFile(full, "image", CHECK_HINT);
        } catch (err) {
          if (err instanceof UserError) bad.push({ image: full, error: err.message });
        }
      }
    }
    if (names.length === 0 && bad.length === 0) {
      throw new UserError(`no PNG, JPEG or DICOM files in ${shown(path)}`);
    }
    files.push(...names.sort().map((n) => `${path}/${n}`));
    failures.push(...bad.sort((a, b) => (a.image < b.image ? -1 : a.image > b.image ? 1 : 0)));
  }
  return { files, failures };
}

/** The image files of `paths` (see `listImageFiles`), without the failures. */
export async function expandImagePaths(paths: string[]): Promise<string[]> {
  return (await listImageFiles(paths)).files;
}

/** An image by its name alone (a special file or a broken link cannot be sniffed). */
function looksLikeImage(path: string): boolean {
  return /\.(png|jpe?g|dcm|dicom)$/i.test(path);
}

/** The prediction for one image. */
export interface ImagePrediction {
  image: string;
  probabilities: Record<string, number>;
  findings: string[];
  /** Set when the file was larger than the dataset's images and resized as preprocessing does. */
  resized_from?: [number, number];
}

/** What `predictImages` returns: the predictions and the images that failed. */
export interface ImageResults {
  predictions: ImagePrediction[];
  failures: ImageFailure[];
}

/** Prints a failure as its one `failed:` line (the name escaped). */
function reportFailure(f: ImageFailure): void {
  console.error(`failed: ${shown(f.error)}`);
}

/**
 * Predicts each image with `transform` (a test transform) and prints its findings. Images larger
 * than `datasetSize` are first resized as preprocessing does. An image that cannot be read or
 * decoded is reported on one line and recorded in `failures`; the others are predicted.
 */
export async function predictImages(
  model: DenseNet,
  images: ImageFiles,
  opts: { thresholds: ArrayLike<number>; transform: BatchTransform; datasetSize: number },
): Promise<ImageResults> {
  const rng = new Rng(0);
  const predictions: ImagePrediction[] = [];
  const failures: ImageFailure[] = [...images.failures];
  // A lone image's failure is the run's error line itself (`imageFailures`).
  const report = images.files.length + images.failures.length > 1 ? reportFailure : () => {};
  images.failures.forEach(report);
  let resizedNoted = false;
  for (const file of images.files) {
    let decoded;
    try {
      decoded = await decodeAsPreprocessed(file, opts.datasetSize);
    } catch (e) {
      if (!(e instanceof UserError)) throw e;
      const failure = { image: file, error: e.message };
      failures.push(failure);
      report(failure);
      continue;
    }
    const img = decoded.image;
    if (decoded.resizedFrom && !resizedNoted) {
      resizedNoted = true;
      console.error(
        `note: images larger than ${opts.datasetSize} px are first resized to ` +
          `${opts.datasetSize} as preprocess_data.ts resizes the test shards' images`,
      );
    }
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
    predictions.push({
      image: file,
      probabilities,
      findings,
      ...(decoded.resizedFrom
        ? { resized_from: [decoded.resizedFrom.width, decoded.resizedFrom.height] }
        : {}),
    });
    console.log(
      `${shown(file)}: ${findings.length ? findings.join(", ") : "no finding above threshold"}`,
    );
    for (let c = 0; c < NUM_CLASSES; c++) {
      const mark = probs[c] > opts.thresholds[c] ? " *" : "";
      console.log(
        `  ${LABELS[c].padEnd(20)}${probs[c].toFixed(4)}  (threshold ${
          Number(opts.thresholds[c]).toFixed(4)
        })${mark}`,
      );
    }
  }
  return { predictions, failures };
}

/**
 * The error that ends a run whose images partly failed, after its outputs are written: the one
 * failure's own line when a single image was asked for, else a count.
 */
export function imageFailures(results: ImageResults): UserError | null {
  const { predictions, failures } = results;
  if (failures.length === 0) return null;
  if (failures.length === 1 && predictions.length === 0) return new UserError(failures[0].error);
  const total = predictions.length + failures.length;
  return new UserError(
    `${failures.length} of ${plural(total, "image")} could not be predicted (each named on a ` +
      `'failed:' line above); the other ${predictions.length} were predicted` +
      (predictions.length > 0 ? " and written" : ""),
  );
}
