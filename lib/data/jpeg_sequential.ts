/**
 * A JPEG decoder for one greyscale component of the sequential DCT processes with Huffman coding
 * (ITU-T T.81: baseline SOF0 and extended SOF1, 8- or 12-bit samples), written from the standard
 * for DICOM's JPEG Extended (Process 2 & 4) 12-bit frames, which neither libjpeg-turbo's usual
 * 8-bit builds (sharp, cornerstone's wasm) nor any npm package decode. Pure byte decoding, usable
 * in a browser too.
 *
 * The output size comes from the frame header, which the caller checks first; every read is
 * bounded, so a truncated or damaged stream ends in an `Error`, never a hang.
 * @module
 */

/** Zig-zag order: position k of the coded coefficients is `ZIGZAG[k]` in the 8×8 block. */
const ZIGZAG = Uint8Array.from([
  0,
  1,
  8,
  16,
  9,
  2,
  3,
  10,
  17,
  24,
  32,
  25,
  18,
  11,
  4,
  5,
  12,
  19,
  26,
  33,
  40,
  48,
  41,
  34,
  27,
  20,
  13,
  6,
  7,
  14,
  21,
  28,
  35,
  42,
  49,
  56,
  57,
  50,
  43,
  36,
  29,
  22,
  15,
  23,
  30,
  37,
  44,
  51,
  58,
  59,
  52,
  45,
  38,
  31,
  39,
  46,
  53,
  60,
  61,
  54,
  47,
  55,
  62,
  63,
]);

/** The 1-D IDCT basis (T.81 A.3.3): `COS[x * 8 + u] = C(u)/2 · cos((2x + 1)uπ/16)`. */
const COS = (() => {
  const t = new Float64Array(64);
  for (let x = 0; x < 8; x++) {
    for (let u = 0; u < 8; u++) {
      t[x * 8 + u] = (u === 0 ? Math.SQRT1_2 : 1) / 2 * Math.cos(((2 * x + 1) * u * Math.PI) / 16);
    }
  }
  return t;
})();

/** A Huffman table as T.81 F.2.2.3 decodes it: per code length, the largest code and where its
 * values start. */
interface Huffman {
  maxCode: Int32Array; // index 1..16; -1 where no code has that length
  valPtr: Int32Array;
  minCode: Int32Array;
  values: Uint8Array;
}

function buildHuffman(counts: Uint8Array, values: Uint8Array): Huffman {
  const maxCode = new Int32Array(18).fill(-1);
  const valPtr = new Int32Array(17);
  const minCode = new Int32Array(17);
  let code = 0, k = 0;
  for (let len = 1; len <= 16; len++) {
    const n = counts[len - 1];
    if (n) {
      valPtr[len] = k;
      minCode[len] = code;
      code += n;
      k += n;
      maxCode[len] = code - 1;
    }
    code <<= 1;
  }
  maxCode[17] = 0x7fffffff; // a sentinel: a longer code is an error
  return { maxCode, valPtr, minCode, values };
}

/** The frame header and tables that decoding needs. */
interface Frame {
  precision: number;
  width: number;
  height: number;
}

/** Reads the entropy-coded segment bit by bit, removing stuffed zero bytes; at a marker or the
 * end it feeds zero bits and counts them, so that running out is detected, not looped on. */
class BitReader {
  #pos: number;
  #byte = 0;
  #bits = 0;
  #atMarker = false;
  /** Zero bits fed past the data. */
  overrun = 0;
  constructor(private data: Uint8Array, pos: number) {
    this.#pos = pos;
  }
  #fill(): void {
    const d = this.data;
    let byte = 0;
    if (this.#pos < d.length && !this.#atMarker) {
      byte = d[this.#pos];
      if (byte !== 0xff) this.#pos++;
      else if (d[this.#pos + 1] === 0x00) this.#pos += 2; // a stuffed 0xff data byte
      else { // a marker ends the segment
        byte = 0;
        this.#atMarker = true;
        this.overrun += 8;
      }
    } else this.overrun += 8;
    this.#byte = byte;
    this.#bits = 8;
  }
  bit(): number {
    if (this.#bits === 0) this.#fill();
    this.#bits--;
    return (this.#byte >> this.#bits) & 1;
  }
  /** `n` bits (n ≤ 16), most significant first. */
  bits(n: number): number {
    let v = 0;
    for (let i = 0; i < n; i++) v = (v << 1) | this.bit();
    return v;
  }
  decode(h: Huffman): number {
    let code = this.bit();
    let len = 1;
    while (code > h.maxCode[len]) {
      code = (code << 1) | this.bit();
      if (++len > 16) throw new Error("invalid Huffman code");
    }
    return h.values[h.valPtr[len] + code - h.minCode[len]] ?? 0;
  }
  /** Skips to the next byte and past an RSTn marker (T.81 E.1.4). */
  restart(): void {
    this.#bits = 0;
    this.#atMarker = false;
    const d = this.data;
    while (
      this.#pos + 1 < d.length && !(d[this.#pos] === 0xff && d[this.#pos + 1] >= 0xd0 &&
        d[this.#pos + 1] <= 0xd7)
    ) this.#pos++;
    this.#pos += 2;
  }
}

/** The value of `bits` received bits of category `s` (T.81 F.2.2.1 EXTEND). */
function extend(v: number, s: number): number {
  return s && v < 1 << (s - 1) ? v - (1 << s) + 1 : v;
}

/**
 * Decodes a single-component sequential Huffman JPEG (SOF0 or SOF1, 8 or 12 bits) to its samples,
 * row-major. Throws an `Error` naming what is wrong for anything else or a damaged stream.
 */
export function decodeSequentialJpeg(data: Uint8Array): {
  width: number;
  height: number;
  precision: number;
  samples: Uint16Array;
} {
  if (data[0] !== 0xff || data[1] !== 0xd8) throw new Error("no JPEG start of image");
  const quant: (Uint16Array | undefined)[] = [];
  const dc: (Huffman | undefined)[] = [];
  const ac: (Huffman | undefined)[] = [];
  let frame: (Frame & { tq: number }) | null = null;
  let restartInterval = 0;
  let p = 2;
  const u16 = (i: number) => {
    if (i + 1 >= data.length) throw new Error("the codestream ends inside a marker segment");
    return (data[i] << 8) | data[i + 1];
  };
  while (true) {
    if (p + 4 > data.length) throw new Error("the codestream ends before its scan");
    if (data[p] !== 0xff) throw new Error(`no marker at byte ${p}`);
    const marker = data[p + 1];
    if (marker === 0xff) {
      p++;
      continue;
    }
    const length = u16(p + 2);
    const end = p + 2 + length;
    if (length < 2 || end > data.length) throw new Error("a marker segment runs past the end");
    const seg = p + 4;
    if (marker === 0xdb) { // DQT
      for (let q = seg; q < end;) {
        const pq = data[q] >> 4, tq = data[q] & 15;
        const table = new Uint16Array(64);
        for (let k = 0; k < 64; k++) {
          table[ZIGZAG[k]] = pq ? u16(q + 1 + 2 * k) : data[q + 1 + k];
        }
        quant[tq & 3] = table;
        q += 1 + 64 * (pq ? 2 : 1);
      }
    } else if (marker === 0xc4) { // DHT
      for (let q = seg; q < end;) {
        const tc = data[q] >> 4, th = data[q] & 3;
        const counts = data.subarray(q + 1, q + 17);
        const total = counts.reduce((a, b) => a + b, 0);
        if (q + 17 + total > end) throw new Error("a Huffman table runs past its segment");
        const table = buildHuffman(counts, data.slice(q + 17, q + 17 + total));
        (tc === 0 ? dc : ac)[th] = table;
        q += 17 + total;
      }
    } else if (marker === 0xc0 || marker === 0xc1) { // SOF0, SOF1
      if (data[seg + 5] !== 1) throw new Error(`${data[seg + 5]} components (one is decoded)`);
      frame = {
        precision: data[seg],
        height: u16(seg + 1),
        width: u16(seg + 3),
        tq: data[seg + 8] & 3,
      };
      if (frame.precision !== 8 && frame.precision !== 12) {
        throw new Error(`${frame.precision}-bit DCT samples (8 or 12)`);
      }
    } else if (
      marker >= 0xc2 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc
    ) {
      throw new Error(`JPEG process SOF${marker - 0xc0} (only sequential Huffman is decoded)`);
    } else if (marker === 0xdd) { // DRI
      restartInterval = u16(seg);
    } else if (marker === 0xda) { // SOS
      if (!frame) throw new Error("a scan before the frame header");
      if (data[seg] !== 1) throw new Error("a scan of several components");
      const td = data[seg + 2] >> 4, ta = data[seg + 2] & 3;
      const q = quant[frame.tq], hd = dc[td & 3], ha = ac[ta];
      if (!q || !hd || !ha) throw new Error("a table the scan uses is missing");
      return { ...frame, samples: decodeScan(data, end, frame, q, hd, ha, restartInterval) };
    } else if (marker === 0xd9) {
      throw new Error("the codestream ends before its scan");
    }
    p = end;
  }
}

function decodeScan(
  data: Uint8Array,
  start: number,
  frame: Frame,
  q: Uint16Array,
  hd: Huffman,
  ha: Huffman,
  restartInterval: number,
): Uint16Array {
  const { width, height, precision } = frame;
  const out = new Uint16Array(width * height);
  const blocksX = Math.ceil(width / 8), blocksY = Math.ceil(height / 8);
  const reader = new BitReader(data, start);
  const coef = new Float64Array(64);
  const tmp = new Float64Array(64);
  const shift = 1 << (precision - 1);
  const max = (1 << precision) - 1;
  // Data past the end: a truncated stream can be read as zeros for a few bits, not blocks.
  const overrunLimit = 64;
  let pred = 0;
  let mcu = 0;
  for (let by = 0; by < blocksY; by++) {
    for (let bx = 0; bx < blocksX; bx++, mcu++) {
      if (restartInterval && mcu > 0 && mcu % restartInterval === 0) {
        reader.restart();
        pred = 0;
      }
      coef.fill(0);
      const s = reader.decode(hd);
      if (s > 16) throw new Error("invalid DC difference category");
      pred += extend(reader.bits(s), s);
      coef[0] = pred * q[0];
      for (let k = 1; k < 64;) {
        const rs = reader.decode(ha);
        const r = rs >> 4, size = rs & 15;
        if (size === 0) {
          if (r !== 15) break; // EOB
          k += 16; // ZRL
          continue;
        }
        k += r;
        if (k > 63) throw new Error("AC coefficients past the block");
        const z = ZIGZAG[k];
        coef[z] = extend(reader.bits(size), size) * q[z];
        k++;
      }
      if (reader.overrun > overrunLimit) {
        throw new Error("the codestream ends before the image does");
      }
      // 2-D IDCT, rows then columns (T.81 A.3.3).
      for (let y = 0; y < 8; y++) {
        for (let x = 0; x < 8; x++) {
          let sum = 0;
          for (let u = 0; u < 8; u++) sum += COS[x * 8 + u] * coef[y * 8 + u];
          tmp[y * 8 + x] = sum;
        }
      }
      for (let x = 0; x < 8; x++) {
        const ox = bx * 8 + x;
        if (ox >= width) break;
        for (let y = 0; y < 8; y++) {
          const oy = by * 8 + y;
          if (oy >= height) break;
          let sum = 0;
          for (let v = 0; v < 8; v++) sum += COS[y * 8 + v] * tmp[v * 8 + x];
          const value = Math.round(sum) + shift;
          out[oy * width + ox] = value < 0 ? 0 : value > max ? max : value;
        }
      }
    }
  }
  return out;
}
