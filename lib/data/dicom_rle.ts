/**
 * DICOM RLE Lossless (1.2.840.10008.1.2.5), written from PS3.5 Annex G: a frame is a 64-byte
 * header (the segment count, then 15 little-endian segment offsets) and up to 15 PackBits
 * segments, one per byte plane: per sample, the most significant byte first. Pure byte decoding,
 * usable in a browser too.
 * @module
 */

/** The stored values of one RLE frame, planes put back together. */
export interface RleFrame {
  /** 8-bit samples (one plane per sample) or 16-bit (two planes per sample), interleaved by pixel. */
  samples: Uint8Array | Uint16Array;
}

/**
 * Decodes one RLE frame of `width`×`height` pixels, `samplesPerPixel` samples of `bitsAllocated`
 * (8 or 16) bits each, interleaved by pixel. Output size comes from these arguments (the
 * caller's header, already bounded), never from the stream; a stream that does not fill every
 * plane, or has the wrong segment count, throws an `Error` saying so.
 */
export function decodeRle(
  frame: Uint8Array,
  width: number,
  height: number,
  samplesPerPixel: number,
  bitsAllocated: 8 | 16,
): RleFrame {
  const bytesPerSample = bitsAllocated / 8;
  const planes = samplesPerPixel * bytesPerSample;
  if (frame.length < 64) throw new Error(`the RLE header is ${frame.length} bytes, not 64`);
  const view = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  const count = view.getUint32(0, true);
  if (count !== planes) {
    throw new Error(`the RLE frame has ${count} segments, the header needs ${planes}`);
  }
  const offsets: number[] = [];
  for (let s = 0; s < count; s++) offsets.push(view.getUint32(4 + 4 * s, true));
  const n = width * height;
  const plane = new Uint8Array(n);
  const out = bitsAllocated === 8
    ? new Uint8Array(n * samplesPerPixel)
    : new Uint16Array(n * samplesPerPixel);
  for (let s = 0; s < count; s++) {
    const start = offsets[s];
    // Segments follow each other; the last runs to the end of the frame.
    const end = s + 1 < count ? offsets[s + 1] : frame.length;
    if (start < 64 || end > frame.length || end < start) {
      throw new Error(`RLE segment ${s + 1} lies outside the frame (offset ${start})`);
    }
    const filled = unpackBits(frame, start, end, plane);
    if (filled < n) {
      throw new Error(`RLE segment ${s + 1} decodes to ${filled} bytes, the image needs ${n}`);
    }
    const sample = Math.floor(s / bytesPerSample);
    // Most significant byte first: with 16 bits the first plane of a sample is its high byte.
    const shift = bytesPerSample === 2 && s % 2 === 0 ? 8 : 0;
    for (let i = 0, j = sample; i < n; i++, j += samplesPerPixel) out[j] |= plane[i] << shift;
  }
  return { samples: out };
}

/** PackBits (PS3.5 G.3.1) from `src[start, end)` into `dst`; returns the bytes written, at most
 * `dst.length` (a stream that would write more is cut there, as the standard pads segments). */
function unpackBits(src: Uint8Array, start: number, end: number, dst: Uint8Array): number {
  let i = start, o = 0;
  const full = dst.length;
  while (i < end && o < full) {
    const h = src[i++];
    if (h < 128) {
      // A literal run of h + 1 bytes.
      const len = Math.min(h + 1, end - i, full - o);
      dst.set(src.subarray(i, i + len), o);
      i += h + 1;
      o += len;
    } else if (h > 128) {
      // The next byte repeated 257 - h times (h is -1..-127 as a signed byte).
      if (i >= end) break;
      const len = Math.min(257 - h, full - o);
      dst.fill(src[i++], o, o + len);
      o += len;
    } // 128 (-128) is a no-op.
  }
  return o;
}
