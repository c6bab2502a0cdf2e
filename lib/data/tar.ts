/**
 * A small streaming tar (POSIX ustar) reader and writer for WebDataset shards: members are read
 * one at a time (never the whole archive), headers can be listed by skipping the data, and
 * damage (truncation, bad checksums, malformed numeric fields) is reported naming the archive,
 * the byte offset and the member before it.
 * Reads ustar, GNU long names (`L`) and pax `path`/`size` records; writes ustar like Python's
 * `tarfile` does for short names. Every field is checked against the archive's length before it
 * is used, so the reader is linear in the file and a hostile header cannot make it loop or
 * allocate more than the file holds.
 * @module
 */
import { printable, UserError } from "../util/errors.ts";
import { refuseSpecialFile } from "../util/input_files.ts";

const BLOCK = 512;
/** Python's tarfile pads archives to a multiple of this record size. */
const RECORD = 20 * BLOCK;
const READ_CHUNK = 256 * 1024;
/** Header listings read little beyond each header: member data is skipped, not read. */
const LIST_CHUNK = 4 * 1024;
/** Long-name and pax members hold names and a few numbers; anything larger is damage. */
const MAX_META_MEMBER = 1 << 20;

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

/** Buffered sequential reads and skips over a file; short results mean end of file. */
class ChunkReader {
  #file: Deno.FsFile;
  #buf: Uint8Array;
  #start = 0;
  #end = 0;
  #eof = false;
  /** Bytes consumed (read or skipped) so far. */
  position = 0;

  constructor(file: Deno.FsFile, chunk: number) {
    this.#file = file;
    this.#buf = new Uint8Array(chunk);
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
      if (n - filled >= this.#buf.length) {
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

  /** Moves `n` bytes forward without reading them. */
  async skip(n: number): Promise<void> {
    const buffered = this.#end - this.#start;
    if (n <= buffered) {
      this.#start += n;
    } else {
      this.#start = this.#end = 0;
      await this.#file.seek(this.position + n, Deno.SeekMode.Start);
    }
    this.position += n;
  }
}

function cString(bytes: Uint8Array): string {
  const nul = bytes.indexOf(0);
  return decoder.decode(nul >= 0 ? bytes.subarray(0, nul) : bytes);
}

/** The damage found in a header field; the caller adds the archive and offset. */
class BadField extends Error {}

/**
 * A numeric header field as Python's tarfile reads it: octal text (NUL/space padded, blank = 0)
 * or GNU base-256 (first byte 0x80, or 0xff for negative `signed` fields). Anything else,
 * negative sizes and values past 2^53 are refused: they are damage, never a size to trust.
 */
function parseNumber(field: Uint8Array, what: string, signed = false): number {
  if (field[0] === 0x80 || field[0] === 0xff) {
    const negative = field[0] === 0xff;
    if (negative && !signed) throw new BadField(`${what} field is negative`);
    let v = 0;
    for (let i = 1; i < field.length; i++) v = v * 256 + (negative ? 255 - field[i] : field[i]);
    if (!Number.isSafeInteger(v)) throw new BadField(`${what} field is too large`);
    return negative ? -v - 1 : v;
  }
  const text = cString(field).replace(/^[ ]+|[ ]+$/g, "");
  if (text === "") return 0;
  if (!/^[0-7]+$/.test(text)) {
    throw new BadField(`${what} field '${printable(text, 40)}' is not an octal number`);
  }
  return parseInt(text, 8);
}

function isZeroBlock(block: Uint8Array): boolean {
  for (let i = 0; i < block.length; i++) if (block[i] !== 0) return false;
  return true;
}

function checksumOk(block: Uint8Array): boolean {
  const stored = parseNumber(block.subarray(148, 156), "checksum");
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    const b = i >= 148 && i < 156 ? 32 : block[i];
    unsigned += b;
    signed += b > 127 ? b - 256 : b;
  }
  return stored === unsigned || stored === signed;
}

/**
 * Parses a pax extended header's `LEN key=value\n` records. Each record must lie inside the
 * data and end with a newline, as Python's tarfile requires.
 */
function parsePax(data: Uint8Array): Map<string, string> {
  const out = new Map<string, string>();
  let pos = 0;
  while (pos < data.length) {
    if (data[pos] === 0) break; // NUL padding after the last record
    const space = data.indexOf(0x20, pos);
    const lenText = space < 0 ? "" : decoder.decode(data.subarray(pos, space));
    const len = /^[0-9]{1,9}$/.test(lenText) ? Number(lenText) : NaN;
    if (!(len > space - pos + 1) || pos + len > data.length || data[pos + len - 1] !== 0x0a) {
      throw new BadField(`malformed pax record at byte ${pos} of the extended header`);
    }
    const record = decoder.decode(data.subarray(space + 1, pos + len - 1));
    const eq = record.indexOf("=");
    if (eq <= 0) throw new BadField(`pax record at byte ${pos} has no key=value`);
    out.set(record.slice(0, eq), record.slice(eq + 1));
    pos += len;
  }
  const size = out.get("size");
  if (size !== undefined && !(/^[0-9]{1,16}$/.test(size) && Number.isSafeInteger(Number(size)))) {
    throw new BadField(`pax size '${printable(size, 40)}' is not a byte count`);
  }
  return out;
}

interface RawHeader {
  name: string;
  size: number;
  type: string;
  mtime: number;
}

function parseHeader(block: Uint8Array): RawHeader {
  if (!checksumOk(block)) throw new BadField("bad checksum");
  let name = cString(block.subarray(0, 100));
  const magic = decoder.decode(block.subarray(257, 262));
  if (magic === "ustar") {
    const prefix = cString(block.subarray(345, 500));
    if (prefix) name = `${prefix}/${name}`;
  }
  const size = parseNumber(block.subarray(124, 136), "size");
  // Python writes pre-1970 times as negative base-256 numbers.
  const mtime = parseNumber(block.subarray(136, 148), "mtime", true);
  const flag = block[156] === 0 ? "0" : String.fromCharCode(block[156]);
  return { name, size, type: flag, mtime };
}

const padTo = (n: number, unit: number) => Math.ceil(n / unit) * unit;

/** Opens an archive for reading; a missing file is a `UserError` naming it. */
async function openArchive(path: string): Promise<Deno.FsFile> {
  try {
    // Stat'ed before the open: opening a FIFO blocks, a device never ends.
    await refuseSpecialFile(path, "shard", "give a tar file");
    return await Deno.open(path, { read: true });
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new UserError(`shard not found: ${path}`);
    if (e instanceof Deno.errors.IsADirectory) {
      throw new UserError(`shard is a directory, not a tar file: ${path}`);
    }
    if (e instanceof Deno.errors.PermissionDenied) {
      throw new UserError(`cannot read shard ${path}: permission denied (check its mode)`);
    }
    throw e;
  }
}

const REDO = "re-create or re-download the shard";

/**
 * Walks the regular-file members of the tar archive at `path` in order. The data of a member
 * is read when `wantData(name, size)` is true and skipped otherwise. Every header field is checked
 * against the file's length first; damage is a `UserError` naming the archive, the byte offset
 * and the member before it.
 */
export async function* scanTar(
  path: string,
  wantData: (name: string, size: number) => boolean,
  chunk = READ_CHUNK,
): AsyncGenerator<TarMember & { data?: Uint8Array }> {
  const file = await openArchive(path);
  try {
    const length = (await file.stat()).size;
    const reader = new ChunkReader(file, chunk);
    let last = "(start of archive)";
    let longName: string | null = null;
    let pax: Map<string, string> | null = null;
    const corrupt = (at: number, why: string) =>
      new UserError(
        `${path}: corrupt tar header at byte ${at} (after member '${printable(last)}'): ` +
          `${why}; ${REDO}`,
      );
    while (true) {
      const at = reader.position;
      if (at + BLOCK > length) {
        throw new UserError(
          `${path}: truncated tar archive at byte ${at}: no end-of-archive marker after member ` +
            `'${printable(last)}'; ${REDO}`,
        );
      }
      const block = await reader.read(BLOCK);
      if (block.length < BLOCK) {
        throw new UserError(`${path}: truncated tar archive at byte ${at} (file shrank?); ${REDO}`);
      }
      if (isZeroBlock(block)) return;
      let h: RawHeader;
      try {
        h = parseHeader(block);
      } catch (e) {
        if (e instanceof BadField) throw corrupt(at, e.message);
        throw e;
      }
      const name = pax?.get("path") ?? longName ?? h.name;
      const size = pax?.has("size") ? Number(pax.get("size")) : h.size;
      const offset = reader.position;
      if (offset + size > length) {
        const shown = printable(name);
        throw new UserError(
          `${path}: truncated tar archive: member '${shown}' (header at byte ${at}) needs ` +
            `${size} bytes, only ${length - offset} left; ${REDO}`,
        );
      }
      const meta = h.type === "L" || h.type === "x";
      if (meta && size > MAX_META_MEMBER) {
        throw corrupt(at, `${h.type === "L" ? "long-name" : "pax"} member of ${size} bytes`);
      }
      const regular = h.type === "0" || h.type === "7";
      let data: Uint8Array | undefined;
      if (meta || (regular && wantData(name, size))) {
        data = await reader.read(size);
        if (data.length < size) {
          throw new UserError(
            `${path}: truncated tar archive at member '${printable(name)}' (file shrank?); ${REDO}`,
          );
        }
        await reader.skip(Math.min(padTo(size, BLOCK), length - offset) - size);
      } else {
        await reader.skip(Math.min(padTo(size, BLOCK), length - offset));
      }
      if (h.type === "L") {
        longName = cString(data!);
        continue;
      }
      if (h.type === "x") {
        try {
          pax = parsePax(data!);
        } catch (e) {
          if (e instanceof BadField) throw corrupt(at, e.message);
          throw e;
        }
        continue;
      }
      longName = null;
      pax = null;
      last = name;
      if (regular) yield { name, size, type: h.type, mtime: h.mtime, offset, data };
    }
  } finally {
    file.close();
  }
}

/**
 * Reads the regular-file members of the tar archive at `path` in order, with their data, one
 * member in memory at a time. Throws `UserError` naming the archive and member on damage.
 */
export async function* readTar(path: string): AsyncGenerator<TarEntry> {
  for await (const m of scanTar(path, () => true)) yield m as TarEntry;
}

/**
 * Lists the regular-file members of the tar archive at `path` from their headers alone,
 * skipping the data. Throws `UserError` naming the archive and member on damage.
 */
export async function listTar(path: string): Promise<TarMember[]> {
  const members: TarMember[] = [];
  for await (const m of scanTar(path, () => false, LIST_CHUNK)) members.push(m);
  return members;
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
