/**
 * The bound on decoded image sizes: a small file can declare a huge canvas (a PNG of a few
 * hundred bytes saying 60000×60000), so every decoder checks the size its header declares
 * before it allocates pixels.
 * @module
 */
import { UserError } from "../util/errors.ts";

/**
 * The largest image decoded, in pixels (6000×6000 = 36 Mpx): twice the area of the largest chest
 * radiographs (43 cm detectors at 100 µm, ~4300×4300) and far above NIH's 1024×1024, while its
 * 8-bit RGB decode stays at 108 MB (and a float32 tensor of it at 432 MB).
 */
export const MAX_IMAGE_PIXELS = 6000 * 6000;

/** Refuses a `width`×`height` image over {@link MAX_IMAGE_PIXELS}, with one line naming `source`. */
export function checkImageSize(width: number, height: number, source: string): void {
  if (width * height <= MAX_IMAGE_PIXELS) return;
  throw new UserError(
    `${source}: image is ${width}×${height} pixels, over the bound of ` +
      `${MAX_IMAGE_PIXELS / 1e6} megapixels (6000×6000) that is decoded: downscale it first`,
  );
}

/**
 * The largest encoded image file read (a shard member or a file): 16-bit RGBA at the decoded-size
 * bound, stored without compression, takes under 8 bytes a pixel. A larger file is refused before
 * its bytes are read.
 */
export const MAX_IMAGE_FILE_BYTES = 8 * MAX_IMAGE_PIXELS + (1 << 20);

/** Refuses an encoded image of `bytes` over {@link MAX_IMAGE_FILE_BYTES}, naming `source`. */
export function checkImageFileSize(bytes: number, source: string): void {
  if (bytes <= MAX_IMAGE_FILE_BYTES) return;
  throw new UserError(
    `${source}: ${bytes} bytes is more than an image within the decoded-size bound can take ` +
      `(${MAX_IMAGE_FILE_BYTES}); not an image this tool reads`,
  );
}
