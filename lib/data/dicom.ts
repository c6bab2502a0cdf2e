/**
 * DICOM files (how chest X-rays leave hospitals) read into the 8-bit grey or RGB pixels the rest
 * of the data path takes, following DICOM's greyscale pipeline (PS3.4 N.2): stored values (Bits
 * Allocated/Stored, High Bit, Pixel Representation), the modality transformation (the Modality LUT
 * Sequence, else Rescale Slope/Intercept), the VOI LUT (the first VOI LUT Sequence item, else the
 * first Window Center/Width with its VOI LUT Function, else the whole modality range), then
 * MONOCHROME1's inversion. Part 10 files and datasets without preamble or file meta (ACR-NEMA
 * style) are read; native little- and big-endian and deflated syntaxes here; a JPEG Baseline or
 * 8-bit Extended frame is handed back still encoded (`images.ts` decodes it with sharp and
 * finishes with {@link displayGrey}); JPEG 2000, HTJ2K, JPEG-LS, JPEG Lossless and RLE frames are
 * decoded by `dicom_codecs.ts` ({@link decodeStored}); anything else is refused by name and UID.
 * The dataset parser is cornerstone's `dicom-parser` (MIT). Nothing here reads files: bytes in.
 * @module
 */
import dicomParserModule from "dicom-parser";
import type * as DicomParserTypes from "dicom-parser";
import { inflateRawSync } from "node:zlib";
import { UserError } from "../util/errors.ts";
import { checkImageSize } from "./image_size.ts";
import { CODEC_SYNTAXES, decodeFrame, decodesSyntax } from "./dicom_codecs.ts";

// dicom-parser is a CommonJS bundle: its functions are on the default export.
const dicomParser = dicomParserModule as unknown as typeof DicomParserTypes;
type DataSet = DicomParserTypes.DataSet;

/** Where a DICOM dataset starts and how it is encoded, found from the bytes alone. */
type Layout =
  | { part10: true }
  | { part10: false; offset: number; syntax: typeof IMPLICIT_LE | typeof EXPLICIT_LE };

const VR =
  /^(AE|AS|AT|CS|DA|DS|DT|FD|FL|IS|LO|LT|OB|OD|OF|OL|OV|OW|PN|SH|SL|SQ|SS|ST|SV|TM|UC|UI|UL|UN|UR|US|UT|UV)$/;

/**
 * A dataset without file meta at `offset`, as dcmtk and pydicom (`force=True`) accept it: its
 * first element is in group 0008 (where every ACR-NEMA and DICOM image dataset starts) and is
 * either explicit VR little endian (a VR follows the tag) or implicit (a length that fits).
 */
function rawDataset(bytes: Uint8Array, offset: number): Layout | null {
  if (bytes.length < offset + 8 || bytes[offset] !== 0x08 || bytes[offset + 1] !== 0x00) {
    return null;
  }
  const vr = String.fromCharCode(bytes[offset + 4], bytes[offset + 5]);
  if (VR.test(vr)) return { part10: false, offset, syntax: EXPLICIT_LE };
  const view = new DataView(bytes.buffer, bytes.byteOffset + offset + 4, 4);
  const length = view.getUint32(0, true);
  // A head read (132 bytes, by isImageFile) cannot hold the element: only small lengths count.
  return length === 0xffffffff || (length % 2 === 0 && length <= 0x10000)
    ? { part10: false, offset, syntax: IMPLICIT_LE }
    : null;
}

function layoutOf(bytes: Uint8Array): Layout | null {
  const dicm = bytes.length >= 132 && bytes[128] === 0x44 && bytes[129] === 0x49 &&
    bytes[130] === 0x43 && bytes[131] === 0x4d;
  if (dicm) {
    // A preamble and DICM but no file meta group: the dataset starts right after DICM.
    if (bytes.length < 134 || bytes[132] === 0x02 && bytes[133] === 0x00) return { part10: true };
    return rawDataset(bytes, 132) ?? { part10: true };
  }
  return rawDataset(bytes, 0);
}

/**
 * Whether `bytes` (the whole file, or at least its first 132 bytes) is DICOM: a Part 10 file
 * (128-byte preamble, then `DICM`), or a dataset without preamble or file meta (ACR-NEMA style
 * exports), recognised by its first element.
 */
export function isDicom(bytes: Uint8Array): boolean {
  return layoutOf(bytes) !== null;
}

const IMPLICIT_LE = "1.2.840.10008.1.2";
const EXPLICIT_LE = "1.2.840.10008.1.2.1";
const DEFLATED_LE = "1.2.840.10008.1.2.1.99";
const EXPLICIT_BE = "1.2.840.10008.1.2.2";
const JPEG_BASELINE = "1.2.840.10008.1.2.4.50";
const JPEG_EXTENDED = "1.2.840.10008.1.2.4.51";
const NATIVE = new Set([IMPLICIT_LE, EXPLICIT_LE, DEFLATED_LE, EXPLICIT_BE]);

/** Names of the transfer syntaxes that are refused, for the error line (PS3.6 Annex A). */
const REFUSED_SYNTAXES: Record<string, string> = {
  "1.2.840.10008.1.2.1.98": "Encapsulated Uncompressed Explicit VR Little Endian",
  "1.2.840.10008.1.2.4.52": "JPEG Extended (Process 3 & 5, retired)",
  "1.2.840.10008.1.2.4.53": "JPEG Spectral Selection, Non-Hierarchical (Process 6 & 8, retired)",
  "1.2.840.10008.1.2.4.55": "JPEG Full Progression, Non-Hierarchical (Process 10 & 12, retired)",
  "1.2.840.10008.1.2.4.92": "JPEG 2000 Part 2 Multi-component Lossless Only",
  "1.2.840.10008.1.2.4.93": "JPEG 2000 Part 2 Multi-component",
  "1.2.840.10008.1.2.4.94": "JPIP Referenced",
  "1.2.840.10008.1.2.4.95": "JPIP Referenced Deflate",
  "1.2.840.10008.1.2.4.100": "MPEG2 Main Profile / Main Level",
  "1.2.840.10008.1.2.4.101": "MPEG2 Main Profile / High Level",
  "1.2.840.10008.1.2.4.102": "MPEG-4 AVC/H.264 High Profile / Level 4.1",
  "1.2.840.10008.1.2.4.103": "MPEG-4 AVC/H.264 BD-compatible High Profile / Level 4.1",
  "1.2.840.10008.1.2.4.104": "MPEG-4 AVC/H.264 High Profile For 2D Video",
  "1.2.840.10008.1.2.4.105": "MPEG-4 AVC/H.264 High Profile For 3D Video",
  "1.2.840.10008.1.2.4.106": "MPEG-4 AVC/H.264 Stereo High Profile",
  "1.2.840.10008.1.2.4.107": "HEVC/H.265 Main Profile / Level 5.1",
  "1.2.840.10008.1.2.4.108": "HEVC/H.265 Main 10 Profile / Level 5.1",
  "1.2.840.10008.1.2.4.110": "JPEG XL Lossless",
  "1.2.840.10008.1.2.4.111": "JPEG XL JPEG Recompression",
  "1.2.840.10008.1.2.4.112": "JPEG XL",
  "1.2.840.10008.1.2.4.204": "High-Throughput JPEG 2000 Lossless Only, JPIP Referenced",
  "1.2.840.10008.1.2.4.205": "High-Throughput JPEG 2000, JPIP Referenced",
};

/** The one-line remedy for a file that cannot be read as it is. */
const CONVERT = "convert it to uncompressed first, e.g. `gdcmconv --raw in.dcm out.dcm` " +
  "(Debian package libgdcm-tools)";

/** The largest inflated dataset of a deflated file: a bound against deflate bombs, well above
 * any single radiograph (36 Mpx × 16 bits is 72 MB). */
const MAX_INFLATED_BYTES = 256 << 20;

/** A lookup table of the greyscale pipeline: input `firstMapped + i` maps to `data[i]`, inputs
 * outside the table to its first or last entry; entries are `bits` wide. */
export interface Lut {
  firstMapped: number;
  data: Uint16Array;
  bits: number;
}

/** The VOI transformation that applies, per PS3.3 C.11.2 (the first of each). */
export type Voi =
  | ({ kind: "lut" } & Lut)
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
  /** The Modality LUT Sequence's first item, which replaces Rescale Slope/Intercept. */
  modalityLut: Lut | null;
  voi: Voi;
  /** Native: the first frame's pixel bytes, little-endian; else null. */
  pixels: Uint8Array | null;
  /** JPEG Baseline or 8-bit Extended: the first frame's bitstream (decoded by sharp); else null. */
  jpeg: Uint8Array | null;
  /** Other compressed syntaxes: the first frame's codestream (see {@link decodeStored}). */
  encoded: Uint8Array | null;
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
  const lut = item ? readLut(item, signed, "VOI", source) : null;
  if (lut) return { kind: "lut", ...lut };
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

/** Parses the dataset wherever it starts (see {@link layoutOf}); returns it and its syntax. */
function parse(bytes: Uint8Array, source: string): { ds: DataSet; transferSyntax: string } {
  const layout = layoutOf(bytes);
  if (!layout) fail(source, "not a DICOM file (no DICM prefix, no group 0008 dataset)");
  try {
    if (layout.part10) {
      const ds = dicomParser.parseDicom(bytes, { inflater });
      const transferSyntax = (ds.string("x00020010") ?? "").replace(/\0/g, "").trim();
      return { ds, transferSyntax };
    }
    const data = bytes.subarray(layout.offset);
    const ds = dicomParser.parseDicom(data, { TransferSyntaxUID: layout.syntax });
    return { ds, transferSyntax: layout.syntax };
  } catch (e) {
    fail(source, `cannot read DICOM file, truncated or damaged (${parserMessage(e)})`);
  }
}

function syntaxName(uid: string): string {
  return CODEC_SYNTAXES[uid] ?? REFUSED_SYNTAXES[uid] ??
    (uid === JPEG_BASELINE ? "JPEG Baseline" : "an unknown transfer syntax");
}

function readModalityLut(ds: DataSet, signed: boolean, source: string): Lut | null {
  const item = ds.elements.x00283000?.items?.[0]?.dataSet;
  if (!item) return null;
  const lut = readLut(item, signed, "Modality", source);
  if (!lut) fail(source, "DICOM Modality LUT Sequence item has no LUT Descriptor or LUT Data");
  return lut;
}

/** A LUT item of the Modality or VOI LUT Sequence (PS3.3 C.11.1, C.11.2): entries of 8 to 16
 * bits, each in one 16-bit word; the first mapped value is US or SS as the pixels are. */
function readLut(item: DataSet, signed: boolean, what: string, source: string): Lut | null {
  const descriptor = item.elements.x00283002;
  const lutData = item.elements.x00283006;
  if (!descriptor || !lutData) return null;
  const entries = item.uint16("x00283002", 0) || 65536;
  const firstMapped = (signed ? item.int16("x00283002", 1) : item.uint16("x00283002", 1)) ?? 0;
  const bits = item.uint16("x00283002", 2) ?? 16;
  if (bits < 8 || bits > 16) fail(source, `${what} LUT with ${bits}-bit entries is not supported`);
  if (lutData.length < entries * 2) {
    fail(source, `${what} LUT Data is shorter than its descriptor`);
  }
  const data = new Uint16Array(entries);
  for (let i = 0; i < entries; i++) data[i] = item.uint16("x00283006", i)!;
  return { firstMapped, data, bits };
}

/**
 * Parses a DICOM file and checks that its first frame can be shown, without decoding pixels:
 * unsupported files give one `UserError` line naming `source` and the reason. Files without
 * preamble or file meta are read as their first element says (see {@link isDicom}).
 */
export function readDicom(bytes: Uint8Array, source = "<dicom>"): DicomImage {
  const { ds, transferSyntax } = parse(bytes, source);
  if (
    !NATIVE.has(transferSyntax) && transferSyntax !== JPEG_BASELINE &&
    !(transferSyntax in CODEC_SYNTAXES)
  ) {
    fail(
      source,
      `DICOM transfer syntax ${syntaxName(transferSyntax)} (${transferSyntax || "none"}) ` +
        `is not supported: ${CONVERT}`,
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
  // JPEG Baseline and 8-bit Extended go to sharp (libjpeg-turbo); 12-bit Extended to our decoder.
  const jpegFamily = transferSyntax === JPEG_BASELINE ||
    (transferSyntax === JPEG_EXTENDED && bitsStored <= 8);
  const codec = !jpegFamily && transferSyntax in CODEC_SYNTAXES;
  const grey = photometric === "MONOCHROME1" || photometric === "MONOCHROME2";
  const colour = jpegFamily
    ? ["RGB", "YBR_FULL", "YBR_FULL_422"].includes(photometric)
    : photometric === "RGB" && (!codec || decodesSyntax(transferSyntax, 3));
  if (!(samples === 1 && grey) && !(samples === 3 && colour)) {
    fail(
      source,
      `DICOM ${photometric} with ${samples} sample(s) per pixel is not supported in ` +
        `${syntaxName(transferSyntax)} (MONOCHROME1/MONOCHROME2, or RGB)`,
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
  if (transferSyntax === JPEG_BASELINE && bitsStored > 8) {
    fail(source, `DICOM JPEG Baseline with Bits Stored ${bitsStored} is invalid (8 at most)`);
  }
  if (transferSyntax === JPEG_EXTENDED && bitsStored > 12) {
    fail(source, `DICOM JPEG Extended with Bits Stored ${bitsStored} is invalid (12 at most)`);
  }
  const modalityLut = grey ? readModalityLut(ds, signed, source) : null;
  const slope = floatAt(ds, "x00281053") ?? 1;
  const intercept = floatAt(ds, "x00281052") ?? 0;
  // The modality LUT's output is unsigned (PS3.3 C.11.1.1), whatever the pixels are.
  const voi = grey ? readVoi(ds, signed && !modalityLut, source) : { kind: "none" as const };
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
    modalityLut,
    voi,
  };
  if (jpegFamily) {
    return {
      ...header,
      pixels: null,
      jpeg: encapsulatedFrame(ds, el, frames, source),
      encoded: null,
    };
  }
  if (codec) {
    return {
      ...header,
      pixels: null,
      jpeg: null,
      encoded: encapsulatedFrame(ds, el, frames, source),
    };
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
  return { ...header, pixels, jpeg: null, encoded: null };
}

/** The first frame of encapsulated Pixel Data (one fragment or several, with or without a
 * Basic Offset Table). */
function encapsulatedFrame(
  ds: DataSet,
  el: DicomParserTypes.Element,
  frames: number,
  source: string,
): Uint8Array {
  if (!el.encapsulatedPixelData || !el.fragments?.length) {
    fail(source, "DICOM compressed Pixel Data has no fragments");
  }
  const fragments = el.fragments.length;
  try {
    let frame;
    if (frames === 1 || (!el.basicOffsetTable?.length && fragments === frames)) {
      // One frame in all fragments, or one fragment per frame.
      frame = dicomParser.readEncapsulatedPixelDataFromFragments(
        ds,
        el,
        0,
        frames === 1 ? fragments : 1,
      );
    } else {
      // JPEG frames end with EOI, by which dicom-parser finds them without an offset table.
      const table = el.basicOffsetTable?.length
        ? el.basicOffsetTable
        : dicomParser.createJPEGBasicOffsetTable(ds, el);
      frame = dicomParser.readEncapsulatedImageFrame(ds, el, 0, table);
    }
    return new Uint8Array(frame.buffer, frame.byteOffset, frame.byteLength);
  } catch (e) {
    fail(source, `cannot read the DICOM compressed frame (${parserMessage(e)})`);
  }
}

/**
 * The first frame's stored values of a compressed syntax other than JPEG Baseline/Extended
 * (see `dicom_codecs.ts`); the codec is loaded on first use.
 */
export function decodeStored(img: DicomImage, source: string): Promise<Int32Array> {
  if (!img.encoded) throw new Error("decodeStored: not a compressed DICOM image");
  return decodeFrame(img.encoded, img.transferSyntax, {
    width: img.width,
    height: img.height,
    samplesPerPixel: img.samplesPerPixel,
    bitsAllocated: img.bitsAllocated as 8 | 16,
    bitsStored: img.bitsStored,
    signed: img.signed,
  }, source);
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

/** Looks `x` up in `lut` (inputs truncated, clamped to the table, as pydicom's apply_*_lut). */
function lookUp(lut: Lut): (x: number) => number {
  const { data, firstMapped } = lut;
  const last = data.length - 1;
  return (x) => data[Math.min(last, Math.max(0, Math.floor(x - firstMapped)))];
}

/** The modality transformation (PS3.3 C.11.1): the Modality LUT Sequence's table where there is
 * one, else `stored * slope + intercept`. */
function modalityFunction(img: DicomImage): (stored: number) => number {
  if (img.modalityLut) return lookUp(img.modalityLut);
  const { slope, intercept } = img;
  return (x) => x * slope + intercept;
}

/** {@link modalityFunction} over stored values. */
export function modalityValues(stored: ArrayLike<number>, img: DicomImage): Float64Array {
  const modality = modalityFunction(img);
  const out = new Float64Array(stored.length);
  for (let i = 0; i < stored.length; i++) out[i] = modality(stored[i]);
  return out;
}

/**
 * The range of modality values, ascending: of a Modality LUT, its entries' least and greatest
 * (from the header, as the table is); else the values Bits Stored can hold, rescaled.
 */
export function rescaledRange(img: DicomImage): [number, number] {
  if (img.modalityLut) {
    let lo = Infinity, hi = -Infinity;
    for (const v of img.modalityLut.data) {
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    return [lo, hi];
  }
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
    const entry = lookUp(voi);
    const scale = 1 / (2 ** voi.bits - 1);
    return (x) => Math.min(1, entry(x) * scale);
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
 * inverted (its 0 is white). Reads the native frame, or `samples`, the stored values of a
 * decoded frame; one pass, so a large radiograph costs only its output.
 */
export function displayGrey(img: DicomImage, samples?: ArrayLike<number>): Uint8Array {
  const read = samples ? (i: number) => samples[i] : storedReader(img);
  const modality = modalityFunction(img);
  const voi = voiFunction(img);
  const invert = img.photometric === "MONOCHROME1";
  const out = new Uint8Array(img.width * img.height);
  for (let i = 0; i < out.length; i++) {
    const v = Math.round(voi(modality(read(i))) * 255);
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
