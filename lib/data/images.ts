/**
 * Image decoding and resizing with sharp (libvips): any PNG (gray, gray+alpha, RGB, RGBA, 8- or
 * 16-bit) or JPEG becomes 8-bit RGB the way OpenCV's `imread(..., IMREAD_COLOR)` reads it
 * (16-bit keeps the high byte, alpha is dropped, gray is replicated); DICOM files (recognised by
 * content, see `dicom.ts`) become the 8-bit grey a PNG of them would hold, then the same RGB.
 * X-rays are resized to small 8-bit grayscale PNGs for the shards. Also a bounded,
 * order-preserving concurrent map.
 * @module
 */
import type sharpType from "sharp";
import { UserError } from "../util/errors.ts";
import { decodeStored, displayGrey, isDicom, nativeRgb, readDicom } from "./dicom.ts";
import { checkImageFileSize, checkImageSize, MAX_IMAGE_PIXELS } from "./image_size.ts";
import { checkInputFile, readInputFile } from "../util/input_files.ts";
import { shown } from "../util/shown.ts";

/** A decoded image: 8-bit RGB, row-major, `height * width * 3` bytes. */
export interface RgbImage {
  data: Uint8Array;
  width: number;
  height: number;
}

type Sharp = typeof sharpType;
let sharpModule: Promise<Sharp> | null = null;

/** Loads sharp on first use, so that importing this module (e.g. for `--help`) needs no
 * native-addon permissions. Batch work decodes each image once: the cache only costs memory. */
function loadSharp(): Promise<Sharp> {
  sharpModule ??= import("sharp").then((m) => {
    m.default.cache(false);
    return m.default;
  });
  return sharpModule;
}

async function sharpFor(input: Uint8Array, opts?: Record<string, unknown>) {
  const sharp = await loadSharp();
  // autoOrient: OpenCV's imread applies the EXIF orientation too. libvips checks
  // limitInputPixels from the header, before decoding.
  return sharp(input, {
    failOn: "error",
    limitInputPixels: MAX_IMAGE_PIXELS,
    autoOrient: true,
    ...opts,
  });
}

/** Width and height from the file's header (no pixel is decoded), or null when unreadable. */
async function headerSize(bytes: Uint8Array): Promise<{ width: number; height: number } | null> {
  try {
    const m = await (await loadSharp())(bytes, { limitInputPixels: false }).metadata();
    return m.width && m.height ? { width: m.width, height: m.height } : null;
  } catch {
    return null;
  }
}

function reason(e: unknown): string {
  const msg = e instanceof Error ? e.message : String(e);
  return msg.split("\n")[0].replace(/^Input buffer /, "");
}

/** Decodes a PNG, JPEG or DICOM file to 8-bit RGB. `source` names the image in errors. */
export async function decodeImage(bytes: Uint8Array, source = "<image>"): Promise<RgbImage> {
  if (isDicom(bytes)) return await decodeDicom(bytes, source);
  try {
    const { data, info } = await (await sharpFor(bytes))
      .removeAlpha()
      .toColourspace("srgb")
      .raw({ depth: "uchar" })
      .toBuffer({ resolveWithObject: true });
    if (info.channels !== 3) throw new Error(`unexpected ${info.channels} channels`);
    return {
      data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength),
      width: info.width,
      height: info.height,
    };
  } catch (e) {
    throw await decodeError(e, bytes, source);
  }
}

/** The one-line error of a failed decode; an image over the size bound says its size. */
async function decodeError(e: unknown, bytes: Uint8Array, source: string): Promise<UserError> {
  if (e instanceof UserError) return e;
  if (/pixel limit/i.test(reason(e))) {
    const size = await headerSize(bytes);
    if (size) {
      try {
        checkImageSize(size.width, size.height, source);
      } catch (err) {
        return err as UserError;
      }
    }
  }
  return new UserError(`${source}: cannot decode image (${reason(e)})`);
}

function greyToRgb(grey: Uint8Array): Uint8Array {
  const out = new Uint8Array(grey.length * 3);
  for (let i = 0; i < grey.length; i++) out[3 * i] = out[3 * i + 1] = out[3 * i + 2] = grey[i];
  return out;
}

/** A DICOM file's first frame as 8-bit RGB (grey replicated, as a grey PNG decodes). */
async function decodeDicom(bytes: Uint8Array, source: string): Promise<RgbImage> {
  const dcm = readDicom(bytes, source);
  const { width, height } = dcm;
  if (dcm.frames > 1) {
    console.warn(`note: ${shown(source)}: ${dcm.frames} frames, using the first`);
  }
  if (dcm.pixels) {
    const data = dcm.samplesPerPixel === 3 ? nativeRgb(dcm) : greyToRgb(displayGrey(dcm));
    return { data, width, height };
  }
  if (dcm.encoded) {
    const stored = await decodeStored(dcm, source);
    const data = dcm.samplesPerPixel === 3
      ? Uint8Array.from(stored)
      : greyToRgb(displayGrey(dcm, stored));
    return { data, width, height };
  }
  let decoded;
  try {
    const pipeline = await sharpFor(dcm.jpeg!, { autoOrient: false });
    const m = await pipeline.metadata();
    if (m.width !== width || m.height !== height || m.channels !== dcm.samplesPerPixel) {
      throw new UserError(
        `${source}: the DICOM JPEG frame is ${m.width}×${m.height}×${m.channels}, ` +
          `the header says ${width}×${height}×${dcm.samplesPerPixel}`,
      );
    }
    decoded = await pipeline
      .toColourspace(dcm.samplesPerPixel === 1 ? "b-w" : "srgb")
      .raw({ depth: "uchar" })
      .toBuffer({ resolveWithObject: true });
  } catch (e) {
    if (e instanceof UserError) throw e;
    throw new UserError(`${source}: cannot decode the DICOM JPEG frame (${reason(e)})`);
  }
  const { data } = decoded;
  const px = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  return { data: dcm.samplesPerPixel === 3 ? px : greyToRgb(displayGrey(dcm, px)), width, height };
}

/** Reads and decodes an image file; missing or undecodable files give a `UserError`. */
export async function decodeImagePath(path: string): Promise<RgbImage> {
  return decodeImage(await readImageFile(path), path);
}

/**
 * Reads an image file: stat'ed first, only a regular file (after links) is read, so a device or
 * a FIFO is one `UserError` line instead of a read that never ends; a missing file names it; a
 * file larger than any image within the decoded-size bound is refused before it is read.
 */
export async function readImageFile(path: string): Promise<Uint8Array> {
  const hint = "give a PNG, JPEG or DICOM file";
  const info = await checkInputFile(path, "image", hint);
  checkImageFileSize(info.size, path);
  return await readInputFile(path, "image", hint);
}

const IMAGE_EXTENSION = /\.(png|jpe?g|dcm|dicom)$/i;

/**
 * Whether the file at `path` is one `decodeImage` reads: a PNG/JPEG/DICOM extension, or any
 * name whose content starts as DICOM (PACS exports are often named without an extension, or by
 * a UID full of dots).
 */
export async function isImageFile(path: string): Promise<boolean> {
  if (IMAGE_EXTENSION.test(path)) return true;
  let file: Deno.FsFile | undefined;
  try {
    // Never open a FIFO or a device to sniff it: the open or the read would block.
    if (!(await Deno.stat(path)).isFile) return false;
    file = await Deno.open(path);
    const head = new Uint8Array(132);
    let n = 0;
    while (n < head.length) {
      const r = await file.read(head.subarray(n));
      if (r === null) break;
      n += r;
    }
    return isDicom(head.subarray(0, n));
  } catch {
    return false;
  } finally {
    file?.close();
  }
}

/** PNG bit depth from the IHDR chunk, or 0 when `bytes` is not a PNG. */
export function pngBitDepth(bytes: Uint8Array): number {
  const sig = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
  if (bytes.length < 29 || sig.some((b, i) => bytes[i] !== b)) return 0;
  return bytes[24];
}

/** Options of `resizeGrayPng`. */
export interface ResizeOptions {
  /** zlib level of the output PNG (default 6, as PIL and libpng). */
  compressionLevel?: number;
}

/**
 * Resizes an image (PNG or JPEG, any depth) to `size`×`size` (aspect ratio not kept, as the
 * original's `Resize`) and encodes it as an 8-bit single-channel grayscale PNG.
 * Lanczos3 downscaling: of sharp's kernels it is the closest to OpenCV's INTER_LINEAR output.
 */
export async function resizeGrayPng(
  bytes: Uint8Array,
  size: number,
  source = "<image>",
  opts: ResizeOptions = {},
): Promise<Uint8Array> {
  try {
    let pipeline;
    if (pngBitDepth(bytes) === 16 || isDicom(bytes)) {
      // libvips rounds 16→8 bit when converting; OpenCV keeps the high byte. Decode first
      // (and DICOM, which libvips does not read).
      const img = await decodeImage(bytes, source);
      pipeline = await sharpFor(img.data, {
        raw: { width: img.width, height: img.height, channels: 3 },
      });
    } else {
      pipeline = (await sharpFor(bytes)).removeAlpha();
    }
    const out = await pipeline
      .resize(size, size, { fit: "fill", kernel: "lanczos3" })
      .toColourspace("b-w")
      .png({ compressionLevel: opts.compressionLevel ?? 6, adaptiveFiltering: false })
      .toBuffer();
    return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
  } catch (e) {
    throw await decodeError(e, bytes, source);
  }
}

/**
 * Maps `fn` over `items` with at most `workers` calls running, yielding results in input
 * order. Up to `2 * workers` results are held, so one slow item does not idle the others, and
 * the source is pulled lazily, so memory stays bounded. The first failure is thrown (in order);
 * later failures of calls already started are ignored.
 */
export async function* mapConcurrent<T, U>(
  items: Iterable<T> | AsyncIterable<T>,
  workers: number,
  fn: (item: T, index: number) => Promise<U>,
): AsyncGenerator<U> {
  const limit = Math.max(1, Math.floor(workers));
  const it = Symbol.asyncIterator in items
    ? (items as AsyncIterable<T>)[Symbol.asyncIterator]()
    : (items as Iterable<T>)[Symbol.iterator]();
  let running = 0;
  const waiting: (() => void)[] = [];
  const run = async (item: T, i: number): Promise<U> => {
    if (running < limit) running++;
    else await new Promise<void>((resolve) => waiting.push(resolve));
    try {
      return await fn(item, i);
    } finally {
      const next = waiting.shift();
      if (next) next(); // hand the slot over
      else running--;
    }
  };
  const queue: Promise<U>[] = [];
  let index = 0;
  let done = false;
  try {
    while (true) {
      while (!done && queue.length < 2 * limit) {
        const r = await it.next();
        if (r.done) {
          done = true;
          break;
        }
        const p = run(r.value, index++);
        p.catch(() => {}); // a failure is reported when its turn comes
        queue.push(p);
      }
      const head = queue.shift();
      if (head === undefined) return;
      yield await head;
    }
  } finally {
    if (!done) await it.return?.();
  }
}
