/**
 * A single image as the test shards hold it: a file larger than the dataset's stored size goes
 * through preprocessing's own resize first (`resizeGrayPng`, the function `preprocess_data.ts`
 * writes the shards with: Lanczos3 to a square 8-bit grey PNG), and is then decoded as a shard's
 * PNG is. The model was trained and tested on such images; resizing a 1024 px radiograph
 * straight to the network input changes its probabilities by up to 0.1 and its findings.
 * @module
 */
import { DATASET_IMAGE_SIZE, FINAL_IMAGE_SIZE } from "../../config.ts";
import { decodeImage, readImageFile, resizeGrayPng, type RgbImage } from "./images.ts";

/**
 * The side preprocessing stores images at for a network input of `imageSize`: the default
 * dataset's 256 px, or, for inputs above 224, the same 256/224 margin (the test transform's
 * resize-then-crop size).
 */
export function datasetImageSize(imageSize: number): number {
  return Math.max(
    DATASET_IMAGE_SIZE,
    Math.round((imageSize * DATASET_IMAGE_SIZE) / FINAL_IMAGE_SIZE),
  );
}

/** A decoded image and, when preprocessing's resize was applied, the size it had. */
export interface PreprocessedImage {
  image: RgbImage;
  resizedFrom: { width: number; height: number } | null;
}

/**
 * Reads and decodes `path`; when it is wider or taller than `datasetSize`, it is first resized
 * exactly as preprocessing resizes it (then decoded from that PNG, as a shard sample is).
 */
export async function decodeAsPreprocessed(
  path: string,
  datasetSize: number,
): Promise<PreprocessedImage> {
  const bytes = await readImageFile(path);
  const image = await decodeImage(bytes, path);
  if (image.width <= datasetSize && image.height <= datasetSize) {
    return { image, resizedFrom: null };
  }
  const png = await resizeGrayPng(bytes, datasetSize, path);
  return {
    image: await decodeImage(png, path),
    resizedFrom: { width: image.width, height: image.height },
  };
}
