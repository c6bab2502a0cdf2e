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

/** Where one member's bytes lie in the archive, as its central-directory entry says. */
interface ZipMember {
  name: string;
  method: number;
  crc: number;
  /** Stored (compressed) size and uncompressed size, as declared. */
  csize: number;
  usize: number;
  /** First byte of its local header, and of its data. */
  header: number;
  start: number;
}

/**
 * A zip archive whose directory has been read and checked but whose members are not yet
 * inflated: `read` inflates one member on demand, at most to the size the caller can use, so a
 * member nobody references costs nothing and a hostile size claim is refused before any
 * allocation (a decompression bomb gets no further than its directory).
 */
export class ZipArchive {
  private readonly members = new Map<string, ZipMember>();

  /**
   * Reads and checks the directory of `bytes`. Every offset, size and count is checked against
   * the archive's length before use (one bounded field reader), and members whose bytes overlap
   * (several directory entries pointing at one stream, the classic bomb) are refused, so a
   * damaged or hostile archive gives a `UserError` naming `source` and the byte offset, never a
   * RangeError or an allocation beyond what the file can hold.
   */
  constructor(private readonly bytes: Uint8Array, readonly source: string) {
    const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const len = bytes.length;
    const corrupt = (why: string) => this.corrupt(why);
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
      if (next > cdEnd) {
        throw corrupt(`central directory entry at byte ${p} overruns the directory`);
      }
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
      const start = offset + 30 + u16(offset + 26, "name length") +
        u16(offset + 28, "extra length");
      if (start + csize > len) throw corrupt(`data of ${shown} out of range`);
      if (method === 8) {
        // Deflate expands at most 1032:1; a larger claim is damage, not data to allocate for.
        if (usize > 1032 * csize + 64) throw corrupt(`size of ${shown} is impossible`);
      } else if (method === 0) {
        if (usize !== csize) throw corrupt(`size mismatch for ${shown}`);
      } else {
        throw new UserError(
          `${source}: zip member ${shown} uses unsupported compression ${method}`,
        );
      }
      if (this.members.has(name)) throw corrupt(`member ${shown} appears twice`);
      this.members.set(name, { name, method, crc, csize, usize, header: offset, start });
    }
    // Each member owns its bytes: entries sharing one stream would multiply what it inflates to.
    const byOffset = [...this.members.values()].sort((a, b) => a.header - b.header);
    for (let i = 1; i < byOffset.length; i++) {
      const prev = byOffset[i - 1], cur = byOffset[i];
      if (cur.header < prev.start + prev.csize) {
        throw corrupt(
          `members ${printable(prev.name)} and ${
            printable(cur.name)
          } overlap at byte ${cur.header}`,
        );
      }
    }
  }

  private corrupt(why: string): UserError {
    return new UserError(
      `${this.source} is not a readable zip archive (${why}); the file may be truncated or damaged`,
    );
  }

  /** Member names, in central-directory order. */
  names(): string[] {
    return [...this.members.keys()];
  }

  has(name: string): boolean {
    return this.members.has(name);
  }

  /** The uncompressed size a member declares (checked against its data when it is read). */
  declaredSize(name: string): number | undefined {
    return this.members.get(name)?.usize;
  }

  /**
   * Inflates one member (a view into the archive for a STORED one) and checks its size and CRC.
   * `maxBytes` is what the caller can use: a member declaring more is refused before anything
   * is inflated, naming `what` it was expected to hold.
   */
  read(name: string, maxBytes: number, what = "its use"): Uint8Array {
    const m = this.members.get(name);
    if (m === undefined) throw new UserError(`${this.source} has no member ${printable(name)}`);
    const shown = printable(name);
    if (m.usize > maxBytes) {
      throw new UserError(
        `${this.source}: zip member ${shown} declares ${m.usize} bytes, more than the ` +
          `${maxBytes} ${what} needs; the file is damaged or hostile`,
      );
    }
    let data = this.bytes.subarray(m.start, m.start + m.csize);
    if (m.method === 8) {
      try {
        data = new Uint8Array(
          zlib.inflateRawSync(data, { maxOutputLength: Math.max(1, m.usize) }),
        );
      } catch {
        throw this.corrupt(`cannot inflate ${shown}`);
      }
    }
    if (data.length !== m.usize) throw this.corrupt(`size mismatch for ${shown}`);
    if (crc32(data) !== m.crc) throw this.corrupt(`CRC mismatch for ${shown}`);
    return data;
  }
}

/**
 * Reads every member of a zip archive (data are views into `bytes` for STORED entries), in
 * central-directory order, with the checks of `ZipArchive`; the members together may inflate
 * to at most `maxTotal` bytes (by default what deflate can make of the archive's own size).
 * For archives whose members are wanted selectively, `new ZipArchive` reads only those.
 */
export function readZip(
  bytes: Uint8Array,
  source: string,
  maxTotal = 1032 * bytes.length + 64,
): Map<string, Uint8Array> {
  const zip = new ZipArchive(bytes, source);
  const out = new Map<string, Uint8Array>();
  let left = maxTotal;
  for (const name of zip.names()) {
    const data = zip.read(name, left, "the archive's remaining budget");
    left -= data.length;
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
