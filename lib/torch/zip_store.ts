/**
 * A minimal zip reader and writer for PyTorch's checkpoint archives. PyTorch stores every entry
 * uncompressed (STORED) with its data 64-byte aligned through a padding extra field ("FB"); the
 * writer reproduces the layout PyTorch 1.13 writes byte for byte (data descriptors, zip64 end
 * records), and the reader accepts any zip with STORED or DEFLATEd entries.
 * @module
 */

import zlib from "node:zlib";
import { printable, UserError } from "../util/errors.ts";

/** One member of a zip archive. */
export interface ZipEntry {
  name: string;
  data: Uint8Array;
}

/** True when `bytes` starts like a zip archive (a local file header). */
export function looksLikeZip(bytes: Uint8Array): boolean {
  return bytes.length >= 4 && bytes[0] === 0x50 && bytes[1] === 0x4b && bytes[2] === 3 &&
    bytes[3] === 4;
}

/** CRC-32 of `data` (zip's checksum). */
export function crc32(data: Uint8Array): number {
  return zlib.crc32(data) >>> 0;
}

/**
 * Reads every member of a zip archive (data are views into `bytes` for STORED entries), in
 * central-directory order. Checks CRCs. Every offset, size and count is checked against the
 * archive's length before use (one bounded field reader), so a damaged or hostile archive gives a
 * `UserError` naming `source` and the byte offset, never a RangeError or an allocation beyond
 * what the file can hold.
 */
export function readZip(bytes: Uint8Array, source: string): Map<string, Uint8Array> {
  const corrupt = (why: string) =>
    new UserError(
      `${source} is not a readable zip archive (${why}); the file may be truncated or damaged`,
    );
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const len = bytes.length;
  const field = (at: number, width: number, what: string) => {
    if (!(at >= 0 && at + width <= len)) throw corrupt(`${what} at byte ${at} lies past the end`);
  };
  const u16 = (at: number, what: string) => (field(at, 2, what), dv.getUint16(at, true));
  const u32 = (at: number, what: string) => (field(at, 4, what), dv.getUint32(at, true));
  const u64 = (at: number, what: string) => {
    field(at, 8, what);
    const v = dv.getBigUint64(at, true);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw corrupt(`${what} at byte ${at} is too large`);
    return Number(v);
  };
  // The end-of-central-directory record sits in the last 22 + 65535 bytes.
  let eocd = -1;
  for (let i = len - 22; i >= Math.max(0, len - 22 - 0xffff); i--) {
    if (dv.getUint32(i, true) === 0x06054b50) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0) throw corrupt("no end of central directory");
  let count = u16(eocd + 10, "entry count");
  let cdSize = u32(eocd + 12, "central directory size");
  let cdOffset = u32(eocd + 16, "central directory offset");
  const loc = eocd - 20;
  if (loc >= 0 && dv.getUint32(loc, true) === 0x07064b50) {
    const rec = u64(loc + 8, "zip64 end record offset");
    if (rec + 56 > len || dv.getUint32(rec, true) !== 0x06064b50) {
      throw corrupt(`bad zip64 end record at byte ${rec}`);
    }
    count = u64(rec + 32, "zip64 entry count");
    cdSize = u64(rec + 40, "zip64 central directory size");
    cdOffset = u64(rec + 48, "zip64 central directory offset");
  }
  if (cdOffset + cdSize > len) throw corrupt("central directory out of range");
  // Each entry takes at least 46 bytes of the directory.
  if (count * 46 > cdSize) throw corrupt(`${count} entries cannot fit in ${cdSize} bytes`);
  const cdEnd = cdOffset + cdSize;
  const out = new Map<string, Uint8Array>();
  const utf8 = new TextDecoder();
  let p = cdOffset;
  for (let n = 0; n < count; n++) {
    if (p + 46 > cdEnd || dv.getUint32(p, true) !== 0x02014b50) {
      throw corrupt(`bad central directory entry at byte ${p}`);
    }
    const method = u16(p + 10, "compression method");
    const crc = u32(p + 16, "CRC");
    let csize = u32(p + 20, "compressed size");
    let usize = u32(p + 24, "size");
    const nameLen = u16(p + 28, "name length");
    const extraLen = u16(p + 30, "extra length");
    const commentLen = u16(p + 32, "comment length");
    let offset = u32(p + 42, "local header offset");
    const next = p + 46 + nameLen + extraLen + commentLen;
    if (next > cdEnd) throw corrupt(`central directory entry at byte ${p} overruns the directory`);
    const name = utf8.decode(bytes.subarray(p + 46, p + 46 + nameLen));
    const shown = printable(name);
    // zip64 extended information: only the fields that overflowed are present, in order.
    const extraEnd = p + 46 + nameLen + extraLen;
    for (let e = p + 46 + nameLen; e + 4 <= extraEnd;) {
      const id = u16(e, "extra field id");
      const size = u16(e + 2, "extra field size");
      if (e + 4 + size > extraEnd) throw corrupt(`extra field of ${shown} overruns its entry`);
      if (id === 1) {
        let q = e + 4;
        const take = (what: string) => {
          if (q + 8 > e + 4 + size) throw corrupt(`zip64 field of ${shown} is too short`);
          const v = u64(q, what);
          q += 8;
          return v;
        };
        if (usize === 0xffffffff) usize = take("zip64 size");
        if (csize === 0xffffffff) csize = take("zip64 compressed size");
        if (offset === 0xffffffff) offset = take("zip64 local header offset");
      }
      e += 4 + size;
    }
    p = next;
    if (offset + 30 > len || dv.getUint32(offset, true) !== 0x04034b50) {
      throw corrupt(`bad local header for ${shown} at byte ${offset}`);
    }
    const start = offset + 30 + u16(offset + 26, "name length") + u16(offset + 28, "extra length");
    if (start + csize > len) throw corrupt(`data of ${shown} out of range`);
    let data = bytes.subarray(start, start + csize);
    if (method === 8) {
      // Deflate expands at most 1032:1; a larger claim is damage, not data to allocate for.
      if (usize > 1032 * csize + 64) throw corrupt(`size of ${shown} is impossible`);
      try {
        data = new Uint8Array(zlib.inflateRawSync(data, { maxOutputLength: Math.max(1, usize) }));
      } catch {
        throw corrupt(`cannot inflate ${shown}`);
      }
    } else if (method !== 0) {
      throw new UserError(`${source}: zip member ${shown} uses unsupported compression ${method}`);
    }
    if (data.length !== usize) throw corrupt(`size mismatch for ${shown}`);
    if (crc32(data) !== crc) throw corrupt(`CRC mismatch for ${shown}`);
    out.set(name, data);
  }
  return out;
}

/** Alignment of member data, as PyTorch's writer uses. */
const ALIGNMENT = 64;

/**
 * Builds a zip archive laid out as PyTorch 1.13's `PyTorchStreamWriter` does: STORED members,
 * zero timestamps, general-purpose flags 0x0808, an "FB" padding extra field aligning data to
 * 64 bytes, a data descriptor after each member, then the central directory and zip64 + classic
 * end records.
 */
export function writeZip(entries: ZipEntry[]): Uint8Array {
  const enc = new TextEncoder();
  const parts: Uint8Array[] = [];
  const central: Uint8Array[] = [];
  let pos = 0;
  const push = (b: Uint8Array) => {
    parts.push(b);
    pos += b.length;
  };
  for (const { name, data } of entries) {
    const nameBytes = enc.encode(name);
    if (pos >= 0xffffffff || data.length >= 0xffffffff) {
      throw new UserError(`zip member ${name} is too large (over 4 GiB) for this writer`);
    }
    const start = pos + 30 + nameBytes.length + 4;
    const pad = (ALIGNMENT - (start % ALIGNMENT)) % ALIGNMENT;
    const crc = crc32(data);
    const header = new Uint8Array(30 + nameBytes.length + 4 + pad);
    const h = new DataView(header.buffer);
    h.setUint32(0, 0x04034b50, true);
    h.setUint16(6, 0x0808, true); // data descriptor follows; UTF-8 names
    h.setUint16(26, nameBytes.length, true);
    h.setUint16(28, 4 + pad, true);
    header.set(nameBytes, 30);
    const x = 30 + nameBytes.length;
    header[x] = 0x46; // 'F'
    header[x + 1] = 0x42; // 'B'
    h.setUint16(x + 2, pad, true);
    header.fill(0x5a, x + 4); // 'Z'
    const offset = pos;
    push(header);
    push(data);
    const desc = new Uint8Array(16);
    const d = new DataView(desc.buffer);
    d.setUint32(0, 0x08074b50, true);
    d.setUint32(4, crc, true);
    d.setUint32(8, data.length, true);
    d.setUint32(12, data.length, true);
    push(desc);
    const c = new Uint8Array(46 + nameBytes.length);
    const cv = new DataView(c.buffer);
    cv.setUint32(0, 0x02014b50, true);
    cv.setUint16(8, 0x0808, true);
    cv.setUint32(16, crc, true);
    cv.setUint32(20, data.length, true);
    cv.setUint32(24, data.length, true);
    cv.setUint16(28, nameBytes.length, true);
    cv.setUint32(42, offset, true);
    c.set(nameBytes, 46);
    central.push(c);
  }
  const cdOffset = pos;
  for (const c of central) push(c);
  const cdSize = pos - cdOffset;
  const tail = new Uint8Array(56 + 20 + 22);
  const t = new DataView(tail.buffer);
  const n = BigInt(entries.length);
  t.setUint32(0, 0x06064b50, true); // zip64 end of central directory record
  t.setBigUint64(4, 44n, true);
  t.setUint16(12, 0x031e, true);
  t.setUint16(14, 0x2d, true);
  t.setBigUint64(24, n, true);
  t.setBigUint64(32, n, true);
  t.setBigUint64(40, BigInt(cdSize), true);
  t.setBigUint64(48, BigInt(cdOffset), true);
  t.setUint32(56, 0x07064b50, true); // zip64 locator
  t.setBigUint64(64, BigInt(pos), true);
  t.setUint32(72, 1, true);
  t.setUint32(76, 0x06054b50, true); // end of central directory
  t.setUint16(84, entries.length, true);
  t.setUint16(86, entries.length, true);
  t.setUint32(88, cdSize, true);
  t.setUint32(92, cdOffset, true);
  push(tail);
  const out = new Uint8Array(pos);
  let o = 0;
  for (const b of parts) {
    out.set(b, o);
    o += b.length;
  }
  return out;
}
