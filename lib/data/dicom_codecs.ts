/**
 * Decoding of DICOM's compressed greyscale frames to stored values: JPEG 2000 (OpenJPEG), HTJ2K
 * (OpenJPH), JPEG-LS (CharLS), all three as cornerstone's WebAssembly builds; JPEG Lossless
 * processes 14 and SV1 (`jpeg-lossless-decoder-js`, plain JavaScript); 12-bit JPEG Extended
 * (`jpeg_sequential.ts`); RLE Lossless (`dicom_rle.ts`). Each codec is imported on first use, so reading PNGs (or uncompressed DICOM)
 * loads none of them.
 *
 * Before a codec runs, the size its codestream declares (J2K's SIZ marker, JPEG's SOF) is checked
 * against the DICOM header, which {@link readDicom} has already bounded: a damaged or hostile
 * frame cannot make a codec allocate more than the header allows. Codec failures become one
 * `UserError` line naming the file and the syntax.
 *
 * Nothing here touches files except {@link setWasmSource}'s default, which reads the codecs'
 * `.wasm` from `node_modules` (or the compiled executable's embedded copy) with `Deno.readFile`:
 * a browser sets its own source.
 * @module
 */
import { UserError } from "../util/errors.ts";
import { decodeRle } from "./dicom_rle.ts";

/** The compressed syntaxes decoded here, by UID. */
export const CODEC_SYNTAXES: Record<string, string> = {
  "1.2.840.10008.1.2.4.51": "JPEG Extended (Process 2 & 4)",
  "1.2.840.10008.1.2.4.57": "JPEG Lossless, Non-Hierarchical (Process 14)",
  "1.2.840.10008.1.2.4.70": "JPEG Lossless, Non-Hierarchical, First-Order Prediction",
  "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless",
  "1.2.840.10008.1.2.4.81": "JPEG-LS Near-Lossless",
  "1.2.840.10008.1.2.4.90": "JPEG 2000 Lossless Only",
  "1.2.840.10008.1.2.4.91": "JPEG 2000",
  "1.2.840.10008.1.2.4.201": "High-Throughput JPEG 2000 Lossless Only",
  "1.2.840.10008.1.2.4.202": "High-Throughput JPEG 2000 with RPCL Options Lossless Only",
  "1.2.840.10008.1.2.4.203": "High-Throughput JPEG 2000",
  "1.2.840.10008.1.2.5": "RLE Lossless",
};

/** What a frame must hold, from the DICOM header. */
export interface FrameLayout {
  width: number;
  height: number;
  samplesPerPixel: 1 | 3;
  bitsAllocated: 8 | 16;
  bitsStored: number;
  signed: boolean;
}

type Family = "j2k" | "htj2k" | "jls" | "lossless" | "rle" | "dct";

function familyOf(syntax: string): Family | null {
  if (syntax === "1.2.840.10008.1.2.5") return "rle";
  if (syntax === "1.2.840.10008.1.2.4.51") return "dct";
  if (syntax === "1.2.840.10008.1.2.4.57" || syntax === "1.2.840.10008.1.2.4.70") {
    return "lossless";
  }
  if (syntax === "1.2.840.10008.1.2.4.80" || syntax === "1.2.840.10008.1.2.4.81") return "jls";
  if (syntax === "1.2.840.10008.1.2.4.90" || syntax === "1.2.840.10008.1.2.4.91") return "j2k";
  if (/^1\.2\.840\.10008\.1\.2\.4\.20[123]$/.test(syntax)) return "htj2k";
  return null;
}

/** Whether `syntax` is decoded here, for samples per pixel `samples` (RLE also takes RGB). */
export function decodesSyntax(syntax: string, samples: number): boolean {
  const family = familyOf(syntax);
  return family !== null && (samples === 1 || family === "rle");
}

/** Reads a codec's `.wasm` by its package specifier (e.g. `@cornerstonejs/codec-charls/decodewasm`). */
export type WasmSource = (specifier: string) => Promise<Uint8Array>;

async function readWasmFile(specifier: string): Promise<Uint8Array> {
  const url = new URL(import.meta.resolve(specifier));
  return await Deno.readFile(url);
}

let wasmSource: WasmSource = readWasmFile;

/** Where the codecs' WebAssembly comes from (a browser passes a fetch of its own URLs). */
export function setWasmSource(source: WasmSource): void {
  wasmSource = source;
  modules.clear();
}

/** The embedded wasm files `deno compile` must include, as package specifiers. */
export const CODEC_WASM = [
  "@cornerstonejs/codec-openjpeg/decodewasm",
  "@cornerstonejs/codec-openjph/wasm",
  "@cornerstonejs/codec-charls/decodewasm",
] as const;

/** An Emscripten module of one of cornerstone's codecs (the parts used here). */
interface CodecModule {
  [decoderClass: string]: unknown;
}
interface WasmDecoder {
  getEncodedBuffer(length: number): Uint8Array;
  decode(): void;
  getFrameInfo(): {
    width: number;
    height: number;
    bitsPerSample: number;
    componentCount: number;
    isSigned?: boolean;
  };
  getDecodedBuffer(): Uint8Array;
  delete(): void;
}
type Factory = (args: Record<string, unknown>) => Promise<CodecModule>;

const WASM_CODECS = {
  j2k: {
    load: () => import("@cornerstonejs/codec-openjpeg/decodewasmjs"),
    wasm: CODEC_WASM[0],
    decoder: "J2KDecoder",
  },
  htj2k: {
    load: () => import("@cornerstonejs/codec-openjph"),
    wasm: CODEC_WASM[1],
    decoder: "HTJ2KDecoder",
  },
  jls: {
    load: () => import("@cornerstonejs/codec-charls/decodewasmjs"),
    wasm: CODEC_WASM[2],
    decoder: "JpegLSDecoder",
  },
} as const;

const modules = new Map<keyof typeof WASM_CODECS, Promise<CodecModule>>();

function codecModule(kind: keyof typeof WASM_CODECS): Promise<CodecModule> {
  let m = modules.get(kind);
  if (!m) {
    const codec = WASM_CODECS[kind];
    m = (async () => {
      const [js, wasmBinary] = await Promise.all([codec.load(), wasmSource(codec.wasm)]);
      const factory = ((js as { default?: unknown }).default ?? js) as Factory;
      // The codecs log progress (OpenJPEG's "[INFO] ...") on stdout: silenced.
      return await factory({ wasmBinary, print: () => {}, printErr: () => {} });
    })();
    modules.set(kind, m);
    m.catch(() => modules.delete(kind));
  }
  return m;
}

/** The size a codestream declares, read from its header before any decoding. */
interface DeclaredSize {
  width: number;
  height: number;
  components: number;
}

/** J2K and HTJ2K: the SIZ marker segment right after SOC (PS3.5 A.4.4 forbids the JP2 box
 * wrapper, but some writers add one: the codestream is then searched for in the first bytes). */
function j2kSize(frame: Uint8Array): DeclaredSize | null {
  let p = -1;
  const limit = Math.min(frame.length - 4, 4096);
  for (let i = 0; i <= limit; i++) {
    if (
      frame[i] === 0xff && frame[i + 1] === 0x4f && frame[i + 2] === 0xff && frame[i + 3] === 0x51
    ) {
      p = i + 4;
      break;
    }
  }
  if (p < 0 || p + 38 > frame.length) return null;
  const v = new DataView(frame.buffer, frame.byteOffset + p);
  // Lsiz(2) Rsiz(2) Xsiz Ysiz XOsiz YOsiz (4 each) ... Csiz(2).
  const width = v.getUint32(4) - v.getUint32(12);
  const height = v.getUint32(8) - v.getUint32(16);
  return { width, height, components: v.getUint16(36) };
}

/** JPEG and JPEG-LS: the frame header (SOF0..SOF15 but DHT/JPG/DAC, or JPEG-LS's SOF55). */
function jpegSize(frame: Uint8Array): DeclaredSize | null {
  if (frame[0] !== 0xff || frame[1] !== 0xd8) return null;
  let p = 2;
  while (p + 4 <= frame.length) {
    if (frame[p] !== 0xff) return null;
    const marker = frame[p + 1];
    if (marker === 0xff) {
      p++; // fill byte
      continue;
    }
    const length = (frame[p + 2] << 8) | frame[p + 3];
    const sof = (marker >= 0xc0 && marker <= 0xcf && ![0xc4, 0xc8, 0xcc].includes(marker)) ||
      marker === 0xf7;
    if (sof) {
      if (p + 10 > frame.length) return null;
      return {
        height: (frame[p + 5] << 8) | frame[p + 6],
        width: (frame[p + 7] << 8) | frame[p + 8],
        components: frame[p + 9],
      };
    }
    if (marker === 0xda || marker === 0xd9) return null; // scan or end before any frame header
    p += 2 + length;
  }
  return null;
}

function fail(source: string, syntax: string, what: string): never {
  throw new UserError(
    `${source}: cannot decode the DICOM ${CODEC_SYNTAXES[syntax] ?? syntax} frame (${what})`,
  );
}

function message(e: unknown): string {
  if (e instanceof Error) return e.message.split("\n")[0];
  // Emscripten throws C++ exceptions as numbers (pointers), and aborts with strings.
  if (typeof e === "number") return "the codec rejected the codestream";
  return String(e).split("\n")[0];
}

/**
 * Decodes one compressed frame to its stored values (Bits Stored masked, sign-extended where
 * Pixel Representation is 1), interleaved by pixel for RLE colour. Throws a `UserError` line
 * naming `source` when the codestream is damaged or does not match the header.
 */
export async function decodeFrame(
  frame: Uint8Array,
  syntax: string,
  layout: FrameLayout,
  source: string,
): Promise<Int32Array> {
  const family = familyOf(syntax);
  if (!family || (layout.samplesPerPixel !== 1 && family !== "rle")) {
    throw new Error(`decodeFrame: ${syntax} with ${layout.samplesPerPixel} samples`);
  }
  const { width, height } = layout;
  let raw: ArrayLike<number>;
  if (family === "rle") {
    try {
      raw = decodeRle(frame, width, height, layout.samplesPerPixel, layout.bitsAllocated).samples;
    } catch (e) {
      fail(source, syntax, message(e));
    }
  } else {
    const declared = family === "j2k" || family === "htj2k" ? j2kSize(frame) : jpegSize(frame);
    if (!declared) fail(source, syntax, "no codestream header: damaged or not this syntax");
    if (declared.width !== width || declared.height !== height || declared.components !== 1) {
      fail(
        source,
        syntax,
        `the codestream is ${declared.width}×${declared.height}×${declared.components}, ` +
          `the DICOM header says ${width}×${height}×1`,
      );
    }
    raw = family === "lossless"
      ? await decodeLossless(frame, layout, source, syntax)
      : family === "dct"
      ? await decodeDct(frame, source, syntax)
      : await decodeWasm(family, frame, layout, source, syntax);
  }
  return storedValues(raw, layout);
}

/** Bits Stored of each raw sample, sign-extended for signed data. */
function storedValues(raw: ArrayLike<number>, layout: FrameLayout): Int32Array {
  const out = new Int32Array(raw.length);
  const bits = layout.bitsStored;
  const mask = bits >= 32 ? -1 : (1 << bits) - 1;
  const sign = 1 << (bits - 1);
  for (let i = 0; i < out.length; i++) {
    const v = raw[i] & mask;
    out[i] = layout.signed && v & sign ? v - 2 * sign : v;
  }
  return out;
}

async function decodeLossless(
  frame: Uint8Array,
  layout: FrameLayout,
  source: string,
  syntax: string,
): Promise<ArrayLike<number>> {
  const { Decoder } = await import("jpeg-lossless-decoder-js");
  const n = layout.width * layout.height;
  let out: ArrayLike<number>;
  try {
    const decoder = new Decoder();
    const copy = frame.slice(); // the decoder takes an ArrayBuffer from offset 0
    out = decoder.decode(copy.buffer, 0, copy.length) as ArrayLike<number>;
  } catch (e) {
    fail(source, syntax, message(e));
  }
  if (!out || out.length < n) fail(source, syntax, "the codestream ends before the image does");
  return out;
}

async function decodeDct(
  frame: Uint8Array,
  source: string,
  syntax: string,
): Promise<ArrayLike<number>> {
  const { decodeSequentialJpeg } = await import("./jpeg_sequential.ts");
  try {
    return decodeSequentialJpeg(frame).samples;
  } catch (e) {
    return fail(source, syntax, message(e));
  }
}

async function decodeWasm(
  kind: keyof typeof WASM_CODECS,
  frame: Uint8Array,
  layout: FrameLayout,
  source: string,
  syntax: string,
): Promise<ArrayLike<number>> {
  const mod = await codecModule(kind);
  const Decoder = mod[WASM_CODECS[kind].decoder] as new () => WasmDecoder;
  let decoder: WasmDecoder | undefined;
  try {
    decoder = new Decoder();
    decoder.getEncodedBuffer(frame.length).set(frame);
    decoder.decode();
    const info = decoder.getFrameInfo();
    if (info.width !== layout.width || info.height !== layout.height || info.componentCount !== 1) {
      fail(
        source,
        syntax,
        `decoded ${info.width}×${info.height}×${info.componentCount}, ` +
          `the DICOM header says ${layout.width}×${layout.height}×1`,
      );
    }
    const bytes = decoder.getDecodedBuffer();
    const n = layout.width * layout.height;
    const wide = info.bitsPerSample > 8;
    if (bytes.length < n * (wide ? 2 : 1)) fail(source, syntax, "the decoded frame is short");
    // A copy: the view is into the codec's memory, freed with the decoder.
    const copy = bytes.slice(0, n * (wide ? 2 : 1));
    if (!wide) return copy;
    return info.isSigned ? new Int16Array(copy.buffer, 0, n) : new Uint16Array(copy.buffer, 0, n);
  } catch (e) {
    if (e instanceof UserError) throw e;
    // A trap (e.g. an out-of-bounds access on a damaged stream) may leave the instance broken:
    // the next frame gets a fresh one.
    if (e instanceof WebAssembly.RuntimeError) modules.delete(kind);
    return fail(source, syntax, message(e));
  } finally {
    try {
      decoder?.delete();
    } catch {
      modules.delete(kind);
    }
  }
}
