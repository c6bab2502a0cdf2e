/**
 * Builds hostile checkpoints for the decompression-bomb tests (issue 25, class 1): a real
 * checkpoint's members (tests/fixtures/torch/tiny_zip.pt) plus one DEFLATEd stream of zeros
 * that `aliases` central-directory entries all point at (the bomb of the issue: eight entries,
 * one 1 GiB stream, a ~1 MB file), or with `aliases` 1 a single unreferenced big member.
 * Run as a script it writes such a file: `deno run -A tests/helpers/zip_bomb.ts OUT MIB ALIASES`.
 * @module
 */
import zlib from "node:zlib";
import { readZip } from "../../lib/torch/zip_store.ts";

const TINY = new URL("../fixtures/torch/tiny_zip.pt", import.meta.url).pathname;

interface Member {
  name: string;
  method: number;
  crc: number;
  stored: Uint8Array;
  size: number;
}

/** CRC-32 of `mib` MiB of zeros, computed in 1 MiB steps (no big allocation). */
function zerosCrc(mib: number): number {
  const chunk = new Uint8Array(1 << 20);
  let crc = 0;
  for (let i = 0; i < mib; i++) crc = zlib.crc32(chunk, crc);
  return crc >>> 0;
}

/**
 * DEFLATE of `mib` MiB of zeros without holding them: one MiB compressed with a sync flush ends
 * in a non-final block, so copies of it chain into one stream, closed by an empty final block.
 */
function deflateZeros(mib: number): Uint8Array {
  const piece = zlib.deflateRawSync(new Uint8Array(1 << 20), {
    level: 9,
    finishFlush: zlib.constants.Z_SYNC_FLUSH,
  });
  const last = zlib.deflateRawSync(new Uint8Array(0));
  const out = new Uint8Array(piece.length * mib + last.length);
  for (let i = 0; i < mib; i++) out.set(piece, i * piece.length);
  out.set(last, piece.length * mib);
  return out;
}

/** A zip of `members` plus `aliases` directory entries `archive/data/bomb<i>` on one stream. */
function build(members: Member[], bomb: Member | null, aliases: number): Uint8Array {
  const enc = new TextEncoder();
  const parts: Uint8Array[] = [];
  const central: Uint8Array[] = [];
  let pos = 0;
  const local = (m: Member) => {
    const name = enc.encode(m.name);
    const h = new Uint8Array(30 + name.length);
    const v = new DataView(h.buffer);
    v.setUint32(0, 0x04034b50, true);
    v.setUint16(4, 20, true);
    v.setUint16(8, m.method, true);
    v.setUint32(14, m.crc, true);
    v.setUint32(18, m.stored.length, true);
    v.setUint32(22, m.size, true);
    v.setUint16(26, name.length, true);
    h.set(name, 30);
    const at = pos;
    parts.push(h, m.stored);
    pos += h.length + m.stored.length;
    return at;
  };
  const dir = (m: Member, name: string, at: number) => {
    const n = enc.encode(name);
    const c = new Uint8Array(46 + n.length);
    const v = new DataView(c.buffer);
    v.setUint32(0, 0x02014b50, true);
    v.setUint16(4, 20, true);
    v.setUint16(6, 20, true);
    v.setUint16(10, m.method, true);
    v.setUint32(16, m.crc, true);
    v.setUint32(20, m.stored.length, true);
    v.setUint32(24, m.size, true);
    v.setUint16(28, n.length, true);
    v.setUint32(42, at, true);
    c.set(n, 46);
    central.push(c);
  };
  for (const m of members) dir(m, m.name, local(m));
  if (bomb) {
    const at = local(bomb);
    for (let i = 0; i < aliases; i++) dir(bomb, `archive/data/bomb${i}`, at);
  }
  const cdOffset = pos;
  let cdSize = 0;
  for (const c of central) (parts.push(c), cdSize += c.length);
  pos += cdSize;
  const end = new Uint8Array(22);
  const e = new DataView(end.buffer);
  e.setUint32(0, 0x06054b50, true);
  e.setUint16(8, central.length, true);
  e.setUint16(10, central.length, true);
  e.setUint32(12, cdSize, true);
  e.setUint32(16, cdOffset, true);
  parts.push(end);
  const out = new Uint8Array(pos + 22);
  let o = 0;
  for (const p of parts) (out.set(p, o), o += p.length);
  return out;
}

/**
 * tiny_zip.pt's members (STORED) plus a stream inflating to `mib` MiB of zeros that `aliases`
 * directory entries share (1: a single big member the pickle does not reference).
 */
export function zipBomb(mib: number, aliases: number): Uint8Array {
  const members: Member[] = [...readZip(Deno.readFileSync(TINY), TINY)].map(([name, data]) => ({
    name,
    method: 0,
    crc: zlib.crc32(data) >>> 0,
    stored: data,
    size: data.length,
  }));
  const stream = deflateZeros(mib);
  const bomb = { name: "bomb", method: 8, crc: zerosCrc(mib), stored: stream, size: mib << 20 };
  return build(members, bomb, aliases);
}

/**
 * tiny_zip.pt with storage `key`'s member replaced by a DEFLATEd one declaring `mib` MiB (a
 * member larger than the storage its tensor needs).
 */
export function oversizedStorage(key: string, mib: number): Uint8Array {
  const members: Member[] = [...readZip(Deno.readFileSync(TINY), TINY)].map(([name, data]) => {
    if (name.endsWith(`/data/${key}`)) {
      return {
        name,
        method: 8,
        crc: zerosCrc(mib),
        stored: deflateZeros(mib),
        size: mib << 20,
      };
    }
    return { name, method: 0, crc: zlib.crc32(data) >>> 0, stored: data, size: data.length };
  });
  return build(members, null, 0);
}

if (import.meta.main) {
  const [out, mib, aliases] = Deno.args;
  Deno.writeFileSync(out, zipBomb(Number(mib), Number(aliases)));
}
