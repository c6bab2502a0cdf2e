/**
 * DICOM Part 10 files (how chest X-rays leave hospitals) read into the 8-bit grey or RGB pixels
 * the rest of the data path takes, following DICOM's greyscale pipeline (PS3.4 N.2): stored
 * values (Bits Allocated/Stored, High Bit, Pixel Representation), the modality LUT (Rescale
 * Slope/Intercept), the VOI LUT (the first VOI LUT Sequence item, else the first Window
 * Center/Width with its VOI LUT Function, else the whole rescaled range of Bits Stored), then
 * MONOCHROME1's inversion. Native little- and big-endian and deflated syntaxes are read here;
 * a JPEG Baseline frame is handed back still encoded (`images.ts` decodes it with sharp and
 * finishes with {@link displayGrey}); other compressed syntaxes are refused by name. The dataset
 * parser is cornerstone's `dicom-parser` (MIT).
 * @module
 */
import dicomParserModule from "dicom-parser";
import type * as DicomParserTypes from "dicom-parser";
import { inflateRawSync } from "node:zlib";
import { UserError } from "../util/errors.ts";
import { checkImageSize } from "./image_size.ts";

// dicom-parser is a CommonJS bundle: its functions are on the default export.
const dicomParser = dicomParserModule as unknown as typeof DicomParserTypes;
type DataSet = DicomParserTypes.DataSet;

/** Whether `bytes` is a DICOM Part 10 file: a 128-byte preamble, then `DICM`. */
export function isDicom(bytes: Uint8Array): boolean {
  return bytes.length >= 132 && bytes[128] === 0x44 && bytes[129] === 0x49 &&
    bytes[130] === 0x43 && bytes[131] === 0x4d;
}

const IMPLICIT_LE = "1.2.840.10008.1.2";
const EXPLICIT_LE = "1.2.840.10008.1.2.1";
const DEFLATED_LE = "1.2.840.10008.1.2.1.99";
const EXPLICIT_BE = "1.2.840.10008.1.2.2";
const JPEG_BASELINE = "1.2.840.10008.1.2.4.50";
const NATIVE = new Set([IMPLICIT_LE, EXPLICIT_LE, DEFLATED_LE, EXPLICIT_BE]);

/** Names of the transfer syntaxes that are refused, for the error line (PS3.6 Annex A). */
const REFUSED_SYNTAXES: Record<string, string> = {
  "1.2.840.10008.1.2.1.98": "Encapsulated Uncompressed Explicit VR Little Endian",
  "1.2.840.10008.1.2.4.51": "JPEG Extended (Process 2 & 4)",
  "1.2.840.10008.1.2.4.57": "JPEG Lossless, Non-Hierarchical (Process 14)",
  "1.2.840.10008.1.2.4.70": "JPEG Lossless, Non-Hierarchical, First-Order Prediction",
  "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless",
  "1.2.840.10008.1.2.4.81": "JPEG-LS Near-Lossless",
  "1.2.840.10008.1.2.4.90": "JPEG 2000 Lossless Only",
  "1.2.840.10008.1.2.4.91": "JPEG 2000",
  "1.2.840.10008.1.2.4.92": "JPEG 2000 Part 2 Multi-component Lossless Only",
  "1.2.840.10008.1.2.4.93": "JPEG 2000 Part 2 Multi-component",
  "1.2.840.10008.1.2.4.94": "JPIP Referenced",
  "1.2.840.10008.1.2.4.95": "JPIP Referenced Deflate",
  "1.2.840.10008.1.2.4.100": "MPEG2 Main Profile / Main Level",
  "1.2.840.10008.1.2.4.101": "MPEG2 Main Profile / High Level",
  "1.2.840.10008.1.2.4.102": "MPEG-4 AVC/H.264 High Profile / Level 4.1",
  "1.2.840.10008.1.2.4.103": "MPEG-4 AVC/H.264 BD-compatible High Profile / Level 4.1",
  "1.2.840.10008.1.2.4.201": "High-Throughput JPEG 2000 Lossless Only",
  "1.2.840.10008.1.2.4.202": "High-Throughput JPEG 2000 with RPCL Options Lossless Only",
  "1.2.840.10008.1.2.4.203": "High-Throughput JPEG 2000",
  "1.2.840.10008.1.2.5": "RLE Lossless",
};

/** The largest inflated dataset of a deflated file: a bound against deflate bombs, well above
 * any single radiograph (36 Mpx × 16 bits is 72 MB). */
const MAX_INFLATED_BYTES = 256 << 20;

/** The VOI transformation that applies, per PS3.3 C.11.2 (the first of each). */
export type Voi =
  | { kind: "lut"; firstMapped: number; data: Uint16Array; bits: number }
  | { kind: "window"; center: number; width: number; fn: "LINEAR" | "LINEAR_EXACT" | "SIGMOID" }
  | { kind: "none" };

/** A DICOM image's header and its first frame, not yet decoded. */
export interface DicomImage {
  width: number;
  height: number;
  frames: number;
  /** Transfer syntax UID. */
  transferSyntax: string;
  /** `MONOCHROME1`, `MONOCHROME2`, `RGB`, or for JPEG also `YBR_FULL_422`/`YBR_FULL`. */
  photometric: string;
  samplesPerPixel: 1 | 3;
  /** Native RGB stored plane by plane (Planar Configuration 1). */
  planar: boolean;
  bitsAllocated: number;
  bitsStored: number;
  highBit: number;
  signed: boolean;
  slope: number;
  intercept: number;
  voi: Voi;
  /** Native: the first frame's pixel bytes, little-endian; JPEG: null. */
  pixels: Uint8Array | null;
  /** JPEG Baseline: the first frame's bitstream; native: null. */
  jpeg: Uint8Array | null;
}

function fail(source: string, what: string): never {
  throw new UserError(`${source}: ${what}`);
}

function parserMessage(e: unknown): string {
  // dicom-parser throws strings, or { exception, dataSet } for a partly parsed file.
  const raw = typeof e === "string"
    ? e
    : e instanceof Error
    ? e.message
    : typeof e === "object" && e !== null && "exception" in e
    ? String((e as { exception: unknown }).exception)
    : String(e);
  return raw.split("\n")[0].replace(/^[\w.:]*parser[\w.:]*: /i, "");
}

function inflater(bytes: Uint8Array, position: number): Uint8Array {
  let inflated: Uint8Array;
  try {
    inflated = inflateRawSync(bytes.subarray(position), { maxOutputLength: MAX_INFLATED_BYTES });
  } catch (e) {
    if (e instanceof RangeError) {
      throw new Error(`the deflated dataset inflates past ${MAX_INFLATED_BYTES >> 20} MiB`);
    }
    throw e;
  }
  const out = new Uint8Array(position + inflated.length);
  out.set(bytes.subarray(0, position));
  out.set(inflated, position);
  return out;
}

function required(ds: DataSet, tag: string, name: string, source: string): number {
  const v = ds.uint16(tag);
  if (v === undefined) fail(source, `not an image: the DICOM file has no ${name} ${tagName(tag)}`);
  return v;
}

function tagName(tag: string): string {
  return `(${tag.slice(1, 5)},${tag.slice(5)})`.toUpperCase();
}

function floatAt(ds: DataSet, tag: string, index = 0): number | undefined {
  const v = ds.floatString(tag, index);
  return v === undefined || Number.isNaN(v) ? undefined : v;
}

function readVoi(ds: DataSet, signed: boolean, source: string): Voi {
  const item = ds.elements.x00283010?.items?.[0]?.dataSet;
  const descriptor = item?.elements.x00283002;
  const lutData = item?.elements.x00283006;
  if (item && descriptor && lutData) {
    const entries = item.uint16("x00283002", 0) || 65536;
    // The first mapped value is US or SS as the pixels are (PS3.3 C.11.2.1.1).
    const firstMapped = (signed ? item.int16("x00283002", 1) : item.uint16("x00283002", 1)) ?? 0;
    const bits = item.uint16("x00283002", 2) ?? 16;
    if (bits < 8 || bits > 16) fail(source, `VOI LUT with ${bits}-bit entries is not supported`);
    if (lutData.length < entries * 2) fail(source, "VOI LUT Data is shorter than its descriptor");
    const data = new Uint16Array(entries);
    for (let i = 0; i < entries; i++) data[i] = item.uint16("x00283006", i)!;
    return { kind: "lut", firstMapped, data, bits };
  }
  const center = floatAt(ds, "x00281050");
  const width = floatAt(ds, "x00281051");
  if (center === undefined || width === undefined) return { kind: "none" };
  const fn = (ds.string("x00281056") ?? "LINEAR").toUpperCase();
  if (fn !== "LINEAR" && fn !== "LINEAR_EXACT" && fn !== "SIGMOID") {
    fail(source, `VOI LUT Function ${fn} is not supported (LINEAR, LINEAR_EXACT, SIGMOID)`);
  }
  if (fn === "LINEAR" ? width < 1 : width <= 0) {
    fail(source, `Window Width ${width} is invalid for a ${fn} window`);
  }
  return { kind: "window", center, width, fn };
}

/**
 * Parses a DICOM file and checks that its first frame can be shown, without decoding pixels:
 * unsupported files give one `UserError` line naming `source` and the reason.
 */
export function readDicom(bytes: Uint8Array, source = "<dicom>"): DicomImage {
  let ds: DataSet;
  try {
    ds = dicomParser.parseDicom(bytes, { inflater });
  } catch (e) {
    fail(source, `cannot read DICOM file, truncated or damaged (${parserMessage(e)})`);
  }
  const transferSyntax = (ds.string("x00020010") ?? "").replace(/\0/g, "").trim();
  if (!NATIVE.has(transferSyntax) && transferSyntax !== JPEG_BASELINE) {
    const name = REFUSED_SYNTAXES[transferSyntax] ?? "an unknown transfer syntax";
    fail(
      source,
      `DICOM transfer syntax ${name} (${transferSyntax}) is not supported (only uncompressed ` +
        `and JPEG Baseline): convert it, e.g. with gdcmconv --raw or dcmtk's dcmdjpeg/dcmdjpls/dcmdrle`,
    );
  }
  const height = required(ds, "x00280010", "Rows", source);
  const width = required(ds, "x00280011", "Columns", source);
  if (width === 0 || height === 0) fail(source, `DICOM image is ${width}×${height} pixels`);
  checkImageSize(width, height, source);
  const samples = ds.uint16("x00280002") ?? 1;
  const photometric = (ds.string("x00280004") ?? "MONOCHROME2").trim().toUpperCase();
  const bitsAllocated = required(ds, "x00280100", "Bits Allocated", source);
  const bitsStored = ds.uint16("x00280101") ?? bitsAllocated;
  const highBit = ds.uint16("x00280102") ?? bitsStored - 1;
  const signed = ds.uint16("x00280103") === 1;
  const frames = Math.max(1, ds.intString("x00280008") ?? 1);
  const jpeg = transferSyntax === JPEG_BASELINE;
  const grey = photometric === "MONOCHROME1" || photometric === "MONOCHROME2";
  const colour = jpeg
    ? ["RGB", "YBR_FULL", "YBR_FULL_422"].includes(photometric)
    : photometric === "RGB";
  if (!(samples === 1 && grey) && !(samples === 3 && colour)) {
    fail(
      source,
      `DICOM ${photometric} with ${samples} sample(s) per pixel is not supported ` +
        `(MONOCHROME1/MONOCHROME2, or RGB)`,
    );
  }
  if (bitsAllocated !== 8 && bitsAllocated !== 16) {
    fail(source, `DICOM Bits Allocated ${bitsAllocated} is not supported (8 or 16)`);
  }
  if (
    bitsStored < 1 || bitsStored > bitsAllocated || highBit >= bitsAllocated ||
    highBit + 1 < bitsStored
  ) {
    fail(source, `inconsistent DICOM Bits Stored ${bitsStored} / High Bit ${highBit}`);
  }
  if (samples === 3 && bitsAllocated !== 8) fail(source, "16-bit DICOM RGB is not supported");
  if (jpeg && bitsStored > 8) {
    fail(source, `DICOM JPEG Baseline with Bits Stored ${bitsStored} is invalid (8 at most)`);
  }
  if (ds.elements.x00283000?.items?.length) {
    fail(source, "DICOM Modality LUT Sequence is not supported (only Rescale Slope/Intercept)");
  }
  const slope = floatAt(ds, "x00281053") ?? 1;
  const intercept = floatAt(ds, "x00281052") ?? 0;
  const voi = grey ? readVoi(ds, signed, source) : { kind: "none" as const };
  const el = ds.elements.x7fe00010;
  if (!el) {
    const float = ds.elements.x7fe00008 || ds.elements.x7fe00009;
    fail(
      source,
      float ? "DICOM float pixel data is not supported" : "DICOM file has no Pixel Data",
    );
  }
  const header = {
    width,
    height,
    frames,
    transferSyntax,
    photometric,
    samplesPerPixel: samples as 1 | 3,
    planar: ds.uint16("x00280006") === 1,
    bitsAllocated,
    bitsStored,
    highBit,
    signed,
    slope,
    intercept,
    voi,
  };
  if (jpeg) {
    return { ...header, pixels: null, jpeg: jpegFrame(ds, el, frames, source) };
  }
  const frameBytes = width * height * samples * (bitsAllocated / 8);
  if (el.encapsulatedPixelData) fail(source, "DICOM Pixel Data is encapsulated in a native syntax");
  const data = ds.byteArray; // the inflated dataset for the deflated syntax
  if (el.length < frameBytes || el.dataOffset + frameBytes > data.length) {
    fail(source, "DICOM Pixel Data is truncated (shorter than one frame)");
  }
  let pixels = new Uint8Array(data.buffer, data.byteOffset + el.dataOffset, frameBytes);
  if (transferSyntax === EXPLICIT_BE && bitsAllocated === 16) {
    pixels = pixels.slice();
    for (let i = 0; i < pixels.length; i += 2) {
      const t = pixels[i];
      pixels[i] = pixels[i + 1];
      pixels[i + 1] = t;
    }
  }
  return { ...header, pixels, jpeg: null };
}

function jpegFrame(
  ds: DataSet,
  el: DicomParserTypes.Element,
  frames: number,
  source: string,
): Uint8Array {
  if (!el.encapsulatedPixelData || !el.fragments?.length) {
    fail(source, "DICOM JPEG Pixel Data has no fragments");
  }
  try {
    const frame = frames === 1
      ? dicomParser.readEncapsulatedPixelDataFromFragments(ds, el, 0, el.fragments.length)
      : dicomParser.readEncapsulatedImageFrame(
        ds,
        el,
        0,
        el.basicOffsetTable?.length
          ? el.basicOffsetTable
          : dicomParser.createJPEGBasicOffsetTable(ds, el),
      );
    return new Uint8Array(frame.buffer, frame.byteOffset, frame.byteLength);
  } catch (e) {
    fail(source, `cannot read the DICOM JPEG frame (${parserMessage(e)})`);
  }
}

/** Reads stored value `i` of the native grey frame: High Bit, Bits Stored and sign applied. */
function storedReader(img: DicomImage): (i: number) => number {
  const px = img.pixels;
  if (!px || img.samplesPerPixel !== 1) throw new Error("not a native grey DICOM image");
  const shift = img.highBit + 1 - img.bitsStored;
  const mask = (1 << img.bitsStored) - 1;
  const sign = 1 << (img.bitsStored - 1);
  const signed = img.signed;
  const wide = img.bitsAllocated === 16;
  return (i) => {
    const raw = wide ? px[2 * i] | (px[2 * i + 1] << 8) : px[i];
    const v = (raw >> shift) & mask;
    return signed && v & sign ? v - 2 * sign : v;
  };
}

/** The first frame's stored values (native greyscale). */
export function storedValues(img: DicomImage): Int32Array {
  const read = storedReader(img);
  const out = new Int32Array(img.width * img.height);
  for (let i = 0; i < out.length; i++) out[i] = read(i);
  return out;
}

/** The modality LUT: `stored * slope + intercept` (PS3.3 C.11.1). */
export function modalityValues(stored: ArrayLike<number>, img: DicomImage): Float64Array {
  const out = new Float64Array(stored.length);
  for (let i = 0; i < stored.length; i++) out[i] = stored[i] * img.slope + img.intercept;
  return out;
}

/** The rescaled range of the values Bits Stored can hold, ascending. */
export function rescaledRange(img: DicomImage): [number, number] {
  const lo = img.signed ? -(2 ** (img.bitsStored - 1)) : 0;
  const hi = img.signed ? 2 ** (img.bitsStored - 1) - 1 : 2 ** img.bitsStored - 1;
  const a = lo * img.slope + img.intercept;
  const b = hi * img.slope + img.intercept;
  return a <= b ? [a, b] : [b, a];
}

/**
 * The VOI LUT as a function of a modality value, scaled to [0, 1] (PS3.3 C.11.2): the LUT entry
 * over its full scale, the window function, or with neither the position in
 * {@link rescaledRange}, so that an 8-bit file shows as its PNG would and no file is stretched
 * by its own content.
 */
function voiFunction(img: DicomImage): (x: number) => number {
  const voi = img.voi;
  if (voi.kind === "lut") {
    const { data, firstMapped } = voi;
    const last = data.length - 1;
    const scale = 1 / (2 ** voi.bits - 1);
    // Fractional inputs are truncated, as pydicom's apply_voi.
    return (x) =>
      Math.min(1, data[Math.min(last, Math.max(0, Math.floor(x - firstMapped)))] * scale);
  }
  if (voi.kind === "window") {
    const { center: c, width: w } = voi;
    if (voi.fn === "SIGMOID") return (x) => 1 / (1 + Math.exp((-4 * (x - c)) / w));
    if (voi.fn === "LINEAR_EXACT") {
      return (x) => x <= c - w / 2 ? 0 : x > c + w / 2 ? 1 : (x - c) / w + 0.5;
    }
    const lo = c - 0.5 - (w - 1) / 2, hi = c - 0.5 + (w - 1) / 2;
    return (x) => x <= lo ? 0 : x > hi ? 1 : (x - (c - 0.5)) / (w - 1) + 0.5;
  }
  const [lo, hi] = rescaledRange(img);
  const scale = hi > lo ? 1 / (hi - lo) : 0;
  return (x) => Math.min(1, Math.max(0, (x - lo) * scale));
}

/** {@link voiFunction} over modality values. */
export function voiValues(modality: ArrayLike<number>, img: DicomImage): Float64Array {
  const voi = voiFunction(img);
  return Float64Array.from({ length: modality.length }, (_, i) => voi(modality[i]));
}

/**
 * 8-bit grey for display, as a grey PNG would hold it: modality LUT, VOI LUT, then MONOCHROME1
 * inverted (its 0 is white). Reads the native frame, or `samples` of a decoded JPEG frame; one
 * pass, so a large radiograph costs only its output.
 */
export function displayGrey(img: DicomImage, samples?: ArrayLike<number>): Uint8Array {
  const read = samples ? (i: number) => samples[i] : storedReader(img);
  const voi = voiFunction(img);
  const { slope, intercept } = img;
  const invert = img.photometric === "MONOCHROME1";
  const out = new Uint8Array(img.width * img.height);
  for (let i = 0; i < out.length; i++) {
    const v = Math.round(voi(read(i) * slope + intercept) * 255);
    out[i] = invert ? 255 - v : v;
  }
  return out;
}

/** A native RGB frame as interleaved 8-bit RGB (either Planar Configuration). */
export function nativeRgb(img: DicomImage): Uint8Array {
  const px = img.pixels;
  if (!px || img.samplesPerPixel !== 3) throw new Error("nativeRgb: not a native RGB image");
  if (!img.planar) return px;
  const n = img.width * img.height;
  const out = new Uint8Array(n * 3);
  for (let i = 0; i < n; i++) {
    out[3 * i] = px[i];
    out[3 * i + 1] = px[n + i];
    out[3 * i + 2] = px[2 * n + i];
  }
  return out;
}
