/**
 * Augmentation preview: a PNG grid showing, for each of a few images, the original next to
 * several augmented draws, so a user can see what the data augmentation parameters do.
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import sharp from "sharp";
import { writeFileAtomic } from "../lib/util/atomic_file.ts";
import { drawText } from "../lib/util/bitmap_text.ts";
import type { Rng } from "../lib/util/rng.ts";
import {
  type AugmentationParams,
  denormalizeBatch,
  FINAL_SIZE,
  transformsTest,
  transformsTrainAugmented,
} from "./augmented_transforms.ts";

/** An 8-bit RGB image, rows top to bottom, `width · height · 3` bytes. */
export interface Rgb8Image {
  data: Uint8Array;
  width: number;
  height: number;
}

/** Options of {@link writeAugmentationPreview}. */
export interface PreviewOptions {
  /** Augmented versions per image (columns after the original). */
  draws?: number;
  /** Random source of the draws. */
  rng: Rng;
  /** Override of the data augmentation parameters. */
  params?: Partial<AugmentationParams>;
}

/** Gap between cells, in pixels. */
const GAP = 4;
/** Background of the gaps. */
const BACKGROUND = 255;
/** Scale of the column labels' 5×7 font (14 px tall letters). */
const LABEL_SCALE = 2;
/** Height of the label row above the grid. */
const HEADER = 7 * LABEL_SCALE + 2 * GAP;
/** The frame (in the gaps) and label colour that mark the original column. */
const ORIGINAL_COLOUR = [31, 119, 180] as const;
const LABEL_COLOUR = [60, 60, 60] as const;

/** Normalised `[N, 224, 224, 3]` images back to 8-bit RGB. */
async function toRgb8(normalised: tf.Tensor4D): Promise<Uint8Array> {
  const bytes = tf.tidy(() =>
    tf.cast(tf.round(tf.mul(tf.clipByValue(denormalizeBatch(normalised), 0, 1), 255)), "int32")
  );
  const data = Uint8Array.from(await bytes.data());
  bytes.dispose();
  return data;
}

/**
 * Writes a PNG grid to `path`: one row per image, its original (resized to 224) first, framed
 * in blue, then `draws` augmented versions from `transformsTrainAugmented`, de-normalised for
 * display; a label row above says which column is which. Returns the grid's size.
 */
export async function writeAugmentationPreview(
  images: readonly Rgb8Image[],
  path: string,
  { draws = 5, rng, params = {} }: PreviewOptions,
): Promise<{ width: number; height: number }> {
  if (images.length === 0) throw new Error("writeAugmentationPreview: no images");
  const cols = 1 + draws, cell = FINAL_SIZE;
  const width = cols * cell + (cols + 1) * GAP;
  const height = HEADER + images.length * cell + (images.length + 1) * GAP;
  const grid = new Uint8Array(width * height * 3).fill(BACKGROUND);
  const cellX = (col: number) => GAP + col * (cell + GAP);
  // The original column: a frame filling the gaps around it, and the labels above the grid.
  for (let y = HEADER; y < height; y++) {
    for (let x = 0; x < cellX(1); x++) grid.set(ORIGINAL_COLOUR, (y * width + x) * 3);
  }
  drawText(grid, width, height, "ORIGINAL", cellX(0), GAP, LABEL_SCALE, ORIGINAL_COLOUR);
  for (let k = 1; k <= draws; k++) {
    drawText(grid, width, height, `AUGMENTED ${k}`, cellX(k), GAP, LABEL_SCALE, LABEL_COLOUR);
  }
  const put = (pixels: Uint8Array, row: number, col: number) => {
    const x0 = cellX(col), y0 = HEADER + GAP + row * (cell + GAP);
    for (let y = 0; y < cell; y++) {
      const src = pixels.subarray(y * cell * 3, (y + 1) * cell * 3);
      grid.set(src, ((y0 + y) * width + x0) * 3);
    }
  };
  for (const [row, img] of images.entries()) {
    if (img.data.length !== img.width * img.height * 3) {
      throw new Error(
        `writeAugmentationPreview: image ${row} is not ${img.width}×${img.height} RGB`,
      );
    }
    const input = tf.tidy(() =>
      tf.div(tf.tensor4d(img.data, [1, img.height, img.width, 3], "int32"), 255) as tf.Tensor4D
    );
    // One batch holds `draws` copies, so all augmented versions are made in one pass.
    const copies = tf.tidy(() => tf.tile(input, [draws, 1, 1, 1]) as tf.Tensor4D);
    const original = transformsTest(input);
    const augmented = draws > 0 ? transformsTrainAugmented(copies, rng, params) : null;
    put(await toRgb8(original), row, 0);
    if (augmented) {
      const all = await toRgb8(augmented);
      for (let k = 0; k < draws; k++) {
        put(all.subarray(k * cell * cell * 3, (k + 1) * cell * cell * 3), row, 1 + k);
      }
    }
    tf.dispose([input, copies, original, ...(augmented ? [augmented] : [])]);
  }
  const png = await sharp(grid, { raw: { width, height, channels: 3 } }).png().toBuffer();
  await writeFileAtomic(path, new Uint8Array(png));
  return { width, height };
}
