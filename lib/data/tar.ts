/**
 * A small streaming tar (POSIX ustar) reader and writer for WebDataset shards: members are read
 * one at a time (never the whole archive), headers can be listed by seeking past the data, and
 * damage (truncation, bad checksums) is reported naming the archive and the member.
 * Reads ustar, GNU long names (`L`) and pax `path`/`size` records; writes ustar like Python's
 * `tarfile` does for short names.
 * @module
 */
import { UserError } from "../util/errors.ts";

const BLOCK = 512;
/** Python's tarfile pads archives to a multiple of this record size. */
const RECORD = 20 * BLOCK;
const READ_CHUNK = 256 * 1024;

/** One archive member as described by its header. */
export interface TarMember {
  /** Path inside the archive. */
  name: string;
  /** Size of the member's data in bytes. */
  size: number;
  /** Type flag: "0" regular file, "5" directory, ... */
  type: string;
  /** Modification time, seconds since the epoch. */
  mtime: number;
  /** Byte offset of the member's data in the archive. */
  offset: number;
}

/** A member together with its data. */
export interface TarEntry extends TarMember {
  data: Uint8Array;
}

const decoder = new TextDecoder();
const encoder = new TextEncoder();

/** Buffered sequential reads from a file; short results mean end of file. */
class ChunkReader {
  #file: Deno.FsFile;
  #buf = new Uint8Array(READ_CHUNK);
  #start = 0;
  #end = 0;
  #eof = false;
  /** Bytes consumed so far. */
  position = 0;

  constructor(file: Deno.FsFile) {
    this.#file = file;
  }

  /** Reads up to `n` bytes; fewer only at end of file. */
  async read(n: number): Promise<Uint8Array> {
    const out = new Uint8Array(n);
    let filled = 0;
    while (filled < n) {
      if (this.#start < this.#end) {
        const take = Math.min(n - filled, this.#end - this.#start);
        out.set(this.#buf.subarray(this.#start, this.#start + take), filled);
        this.#start += take;
        filled += take;
        continue;
      }
      if (this.#eof) break;
      if (n - filled >= READ_CHUNK) {
        // Large members go straight into their own buffer.
        const got = await this.#file.read(out.subarray(filled));
        if (got === null) this.#eof = true;
        else filled += got;
        continue;
      }
      const got = await this.#file.read(this.#buf);
      if (got === null) this.#eof = true;
      else {
        this.#start = 0;
        this.#end = got;
      }
    }
    this.position += filled;
    return filled === n ? out : out.subarray(0, filled);
  }
}

function cString(bytes: Uint8Array): string {
  const nul = bytes.indexOf(0);
  return decoder.decode(nul >= 0 ? bytes.subarray(0, nul) : bytes);
}

function parseNumber(field: Uint8Array): number {
  if (field[0] & 0x80) {
    // GNU base-256 for values that do not fit in octal.
    let v = field[0] & 0x7f;
    for (let i = 1; i < field.length; i++) v = v * 256 + field[i];
    return v;
  }
  const text = cString(field).trim();
  if (text === "") return 0;
  if (!/^[0-7]+$/.test(text)) return NaN;
  return parseInt(text, 8);
}

function isZeroBlock(block: Uint8Array): boolean {
  for (let i = 0; i < block.length; i++) if (block[i] !== 0) return false;
  return true;
}

function checksumOk(block: Uint8Array): boolean {
  const stored = parseNumber(block.subarray(148, 156));
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    const b = i >= 148 && i < 156 ? 32 : block[i];
    unsigned += b;
    signed += b > 127 ? b - 256 : b;
  }
  return stored === unsigned || stored === signed;
}

/** Parses a pax extended header's `LEN key=value\n` records. */
function parsePax(data: Uint8Array): Map<string, string> {
  const out = new Map<string, string>();
  let pos = 0;
  while (pos < data.length) {
    const space = data.indexOf(0x20, pos);
    if (space < 0) break;
    const len = parseInt(decoder.decode(data.subarray(pos, space)), 10);
    if (!(len > 0)) break;
    const record = decoder.decode(data.subarray(space + 1, pos + len - 1));
    const eq = record.indexOf("=");
    if (eq > 0) out.set(record.slice(0, eq), record.slice(eq + 1));
    pos += len;
  }
  return out;
}

interface RawHeader {
  name: string;
  size: number;
  type: string;
  mtime: number;
}

function parseHeader(block: Uint8Array, source: string, after: string, at: number): RawHeader {
  if (!checksumOk(block)) {
    throw new UserError(
      `${source}: corrupt tar header at byte ${at} (after member '${after}'): bad checksum; ` +
        `re-create or re-download the shard`,
    );
  }
  let name = cString(block.subarray(0, 100));
  const magic = decoder.decode(block.subarray(257, 262));
  if (magic === "ustar") {
    const prefix = cString(block.subarray(345, 500));
    if (prefix) name = `${prefix}/${name}`;
  }
  const size = parseNumber(block.subarray(124, 136));
  if (!Number.isFinite(size)) {
    throw new UserError(`${source}: corrupt tar header for member '${name}': bad size field`);
  }
  const flag = block[156] === 0 ? "0" : String.fromCharCode(block[156]);
  return { name, size, type: flag, mtime: parseNumber(block.subarray(136, 148)) || 0 };
}

const padTo = (n: number, unit: number) => Math.ceil(n / unit) * unit;

/** Opens an archive for reading; a missing file is a `UserError` naming it. */
async function openArchive(path: string): Promise<Deno.FsFile> {
  try {
    return await Deno.open(path, { read: true });
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new UserError(`shard not found: ${path}`);
    throw e;
  }
}

/**
 * Reads the regular-file members of the tar archive at `path` in order, with their data, one
 * member in memory at a time. Throws `UserError` naming the archive and member on damage.
 */
export async function* readTar(path: string): AsyncGenerator<TarEntry> {
  const file = await openArchive(path);
  try {
    const reader = new ChunkReader(file);
    let last = "(start of archive)";
    let longName: string | null = null;
    let pax: Map<string, string> | null = null;
    while (true) {
      const at = reader.position;
      const block = await reader.read(BLOCK);
      if (block.length === 0) {
        throw new UserError(
          `${path}: tar archive ends without its end-of-archive marker after member '${last}' ` +
            `(truncated?); re-create or re-download the shard`,
        );
      }
      if (block.length < BLOCK) {
        throw new UserError(
          `${path}: truncated tar archive: incomplete header after member '${last}'; ` +
            `re-create or re-download the shard`,
        );
      }
      if (isZeroBlock(block)) return;
      const h = parseHeader(block, path, last, at);
      const name = pax?.get("path") ?? longName ?? h.name;
      const size = pax?.has("size") ? Number(pax.get("size")) : h.size;
      const padded = padTo(size, BLOCK);
      const offset = reader.position;
      const body = await reader.read(padded);
      if (body.length < size) {
        throw new UserError(
          `${path}: truncated tar archive: member '${name}' needs ${size} bytes, ` +
            `only ${body.length} left; re-create or re-download the shard`,
        );
      }
      const data = body.subarray(0, size);
      if (h.type === "L") {
        longName = cString(data);
        continue;
      }
      if (h.type === "x") {
        pax = parsePax(data);
        continue;
      }
      longName = null;
      pax = null;
      last = name;
      if (h.type === "g") continue;
      if (h.type === "0" || h.type === "7") {
        yield { name, size, type: h.type, mtime: h.mtime, offset, data };
      }
    }
  } finally {
    file.close();
  }
}

/**
 * Lists the regular-file members of the tar archive at `path` from their headers alone,
 * seeking past the data. Throws `UserError` naming the archive and member on damage.
 */
export async function listTar(path: string): Promise<TarMember[]> {
  const file = await openArchive(path);
  try {
    const length = (await file.stat()).size;
    const members: TarMember[] = [];
    const block = new Uint8Array(BLOCK);
    let pos = 0;
    let last = "(start of archive)";
    let longName: string | null = null;
    let pax: Map<string, string> | null = null;
    while (true) {
      if (pos + BLOCK > length) {
        throw new UserError(
          `${path}: truncated tar archive after member '${last}' (no end-of-archive marker); ` +
            `re-create or re-download the shard`,
        );
      }
      await file.seek(pos, Deno.SeekMode.Start);
      let filled = 0;
      while (filled < BLOCK) {
        const got = await file.read(block.subarray(filled));
        if (got === null) break;
        filled += got;
      }
      if (isZeroBlock(block)) return members;
      const h = parseHeader(block, path, last, pos);
      const name = pax?.get("path") ?? longName ?? h.name;
      const size = pax?.has("size") ? Number(pax.get("size")) : h.size;
      const offset = pos + BLOCK;
      if (offset + size > length) {
        throw new UserError(
          `${path}: truncated tar archive: member '${name}' needs ${size} bytes, ` +
            `only ${Math.max(0, length - offset)} left; re-create or re-download the shard`,
        );
      }
      pos = offset + padTo(size, BLOCK);
      if (h.type === "L" || h.type === "x") {
        const data = new Uint8Array(size);
        await file.seek(offset, Deno.SeekMode.Start);
        let got = 0;
        while (got < size) {
          const n = await file.read(data.subarray(got));
          if (n === null) break;
          got += n;
        }
        if (h.type === "L") longName = cString(data);
        else pax = parsePax(data);
        continue;
      }
      longName = null;
      pax = null;
      last = name;
      if (h.type === "0" || h.type === "7") {
        members.push({ name, size, type: h.type, mtime: h.mtime, offset });
      }
    }
  } finally {
    file.close();
  }
}

function writeOctal(block: Uint8Array, offset: number, width: number, value: number): void {
  const text = value.toString(8).padStart(width - 1, "0");
  if (text.length > width - 1) throw new RangeError(`tar field overflow: ${value}`);
  block.set(encoder.encode(text), offset);
  block[offset + width - 1] = 0;
}

/** Options for a member written by `TarWriter`. */
export interface TarMemberOptions {
  /** Seconds since the epoch (default: now). */
  mtime?: number;
  /** Permission bits (default 0o444, as webdataset's writer). */
  mode?: number;
}

/** Builds the 512-byte ustar header of a regular file. */
export function tarHeader(name: string, size: number, opts: TarMemberOptions = {}): Uint8Array {
  const block = new Uint8Array(BLOCK);
  let nameBytes = encoder.encode(name);
  let prefixBytes = new Uint8Array(0);
  if (nameBytes.length > 100) {
    const slash = name.lastIndexOf("/", name.length - 1);
    const prefix = slash > 0 ? encoder.encode(name.slice(0, slash)) : null;
    const rest = slash > 0 ? encoder.encode(name.slice(slash + 1)) : null;
    if (!prefix || !rest || prefix.length > 155 || rest.length > 100) {
      throw new RangeError(`tar member name too long: ${name}`);
    }
    nameBytes = rest;
    prefixBytes = prefix;
  }
  block.set(nameBytes, 0);
  writeOctal(block, 100, 8, opts.mode ?? 0o444);
  writeOctal(block, 108, 8, 0);
  writeOctal(block, 116, 8, 0);
  writeOctal(block, 124, 12, size);
  writeOctal(block, 136, 12, Math.floor(opts.mtime ?? Date.now() / 1000));
  block[156] = 0x30; // regular file
  block.set(encoder.encode("ustar\u000000"), 257);
  block.set(prefixBytes, 345);
  block.fill(0x20, 148, 156);
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += block[i];
  const chk = sum.toString(8).padStart(6, "0");
  block.set(encoder.encode(chk), 148);
  block[154] = 0;
  block[155] = 0x20;
  return block;
}

async function writeAll(file: Deno.FsFile, data: Uint8Array): Promise<void> {
  let written = 0;
  while (written < data.length) written += await file.write(data.subarray(written));
}

/** Writes a tar archive member by member to an open file. */
export class TarWriter {
  #file: Deno.FsFile;
  #bytes = 0;
  #closed = false;

  constructor(file: Deno.FsFile) {
    this.#file = file;
  }

  /** Bytes written so far. */
  get bytesWritten(): number {
    return this.#bytes;
  }

  /** Appends a regular file member. */
  async add(name: string, data: Uint8Array, opts: TarMemberOptions = {}): Promise<void> {
    const out = new Uint8Array(BLOCK + padTo(data.length, BLOCK));
    out.set(tarHeader(name, data.length, opts), 0);
    out.set(data, BLOCK);
    await writeAll(this.#file, out);
    this.#bytes += out.length;
  }

  /** Writes the end-of-archive marker, pads to a full record, and closes the file. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const end = this.#bytes + 2 * BLOCK;
    await writeAll(this.#file, new Uint8Array(padTo(end, RECORD) - this.#bytes));
    this.#file.close();
  }

  /** Closes the file without finishing the archive (after an error). */
  abort(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#file.close();
  }
}
