/**
 * WebDataset shards as the original tool writes them: tar archives
 * `ChestXray14_{subset}_NNN.tar` whose samples are `KEY.png` + `KEY.pyd` (a pickled numpy
 * float64[14] of labels). Streaming reader (one member in memory at a time), seeded shard
 * shuffle and shuffle buffer (as webdataset's `.shuffle(1000)`), fast counting from headers,
 * and a writer that renames each shard into place only when it is complete.
 * @module
 */
import { SHARD_PREFIX, SHUFFLE_BUFFER, type Subset } from "../../config.ts";
import { releaseTemp, tempPathFor } from "../util/atomic_file.ts";
import { printable, UserError, writeFailure } from "../util/errors.ts";
import { decodeLabelsPyd, encodeLabelsPyd } from "../torch/pickle.ts";
import type { Rng } from "../util/rng.ts";
import { scanTar, TarWriter } from "./tar.ts";
import { MAX_IMAGE_FILE_BYTES } from "./image_size.ts";
import { readSplitRecord, SPLIT_RECORD_NAME } from "./split_record.ts";

/** One sample of a shard: its key, the encoded image, and the 14 labels. */
export interface Sample {
  key: string;
  /** The encoded image member (PNG; JPEG is accepted too). */
  png: Uint8Array;
  labels: Float32Array;
  /** Where the image came from, for error messages: `shard:member`. */
  source?: string;
}

const IMAGE_EXTS = ["png", "jpg", "jpeg"];

/** Splits a member name into webdataset's key and extension: the key ends at the first dot
 * of the file name. */
export function splitMemberName(name: string): { key: string; ext: string } | null {
  const m = /^((?:.*\/|)[^./]+)\.([^/]*)$/.exec(name);
  return m ? { key: m[1], ext: m[2].toLowerCase() } : null;
}

/**
 * The WebDataset key of an image file name (`00000001_000.png` → `00000001_000`), or null when
 * the name cannot be one. Keys end at the first dot of the file name, so `x.v2.png` would read
 * back as key `x` with extension `v2.png`: such names are refused, not renamed (a renamed key
 * would no longer match the metadata's `Image Index`).
 */
export function sampleKeyFor(fileName: string): string | null {
  const split = splitMemberName(fileName);
  return split && !split.ext.includes(".") && split.ext !== "" ? split.key : null;
}

/** File name of shard `index` of `subset`, e.g. `ChestXray14_train_003.tar`. */
export function shardName(subset: string, index: number): string {
  return `${SHARD_PREFIX}_${subset}_${String(index).padStart(3, "0")}.tar`;
}

/** Path of shard `index` of `subset` in `datasetDir`. */
export function shardPath(datasetDir: string, subset: string, index: number): string {
  return `${datasetDir.replace(/\/+$/, "")}/${shardName(subset, index)}`;
}

/** True when the directory entry is a regular file or a symbolic link to one (datasets are
 * often linked into place); a dangling link is a `UserError` naming it. */
async function isShardFile(dir: string, entry: Deno.DirEntry): Promise<boolean> {
  if (entry.isFile) return true;
  if (!entry.isSymlink) return false;
  const path = `${dir}/${entry.name}`;
  try {
    return (await Deno.stat(path)).isFile;
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
    const target = await Deno.readLink(path).catch(() => "?");
    throw new UserError(
      `shard ${path} is a symbolic link to ${target}, which does not exist; fix or remove the link`,
    );
  }
}

/** The shards of `subset` in `datasetDir`, sorted; `UserError` when there are none. */
export async function listShards(datasetDir: string, subset: Subset | string): Promise<string[]> {
  const dir = datasetDir.replace(/\/+$/, "") || "/";
  const pattern = new RegExp(`^${SHARD_PREFIX}_${subset}_(\\d{3,})\\.tar$`);
  const names: string[] = [];
  try {
    for await (const entry of Deno.readDir(dir)) {
      if (pattern.test(entry.name) && await isShardFile(dir, entry)) names.push(entry.name);
    }
  } catch (e) {
    if (e instanceof Deno.errors.NotADirectory) {
      throw new UserError(`dataset directory is a file, not a directory: ${datasetDir}`);
    }
    if (!(e instanceof Deno.errors.NotFound)) throw e;
    throw new UserError(
      `dataset directory not found: ${datasetDir} (run preprocess_data.ts or pass --dataset_dir)`,
    );
  }
  if (names.length === 0) {
    throw new UserError(
      `no ${subset} shards (${shardName(subset, 0).replace("000", "NNN")}) in ${datasetDir}; ` +
        `run preprocess_data.ts or pass --dataset_dir`,
    );
  }
  const index = (n: string) => Number(pattern.exec(n)![1]);
  names.sort((a, b) => index(a) - index(b));
  const path = (n: string) => `${dir === "/" ? "" : dir}/${n}`;
  // The record of a complete subset names its shards: files of an interrupted earlier run that
  // wrote more shards are not part of the set.
  const listed = (await readSplitRecord(dir))?.subsets?.[subset as Subset]?.shards;
  if (listed === undefined) return names.map(path);
  const present = new Set(names);
  const lost = listed.find((s) => !present.has(s.name));
  if (lost) {
    throw new UserError(
      `shard ${
        path(lost.name)
      } of the ${subset} set recorded in ${SPLIT_RECORD_NAME} is missing; ` +
        `restore it, or delete the ${subset} shards and run preprocess_data.ts again`,
    );
  }
  const inSet = new Set(listed.map((s) => s.name));
  const extra = names.filter((n) => !inSet.has(n));
  if (extra.length > 0) {
    console.error(
      `warning: ignoring ${extra.length} ${subset} shard file(s) in ${datasetDir} that are not ` +
        `part of its recorded set (left by an interrupted run; delete them): ${extra[0]}` +
        (extra.length > 1 ? ", …" : ""),
    );
  }
  return listed.map((s) => path(s.name));
}

/** Members of one sample: extension → member. */
type Parts<T> = Map<string, T>;

/**
 * Groups consecutive members by key as webdataset does (names without an extension carry no
 * sample data); one grouping for reading samples and for checking shards.
 */
async function* groupSamples<T extends { name: string }>(
  path: string,
  members: AsyncIterable<T>,
): AsyncGenerator<{ key: string; parts: Parts<T> }> {
  let key: string | null = null;
  let parts: Parts<T> = new Map();
  for await (const member of members) {
    const split = splitMemberName(member.name);
    if (!split) continue;
    if (key !== null && split.key !== key) {
      yield { key, parts };
      parts = new Map();
    }
    key = split.key;
    if (parts.has(split.ext)) {
      throw new UserError(
        `${path}: member '${printable(member.name)}' appears twice for sample '${printable(key)}'`,
      );
    }
    parts.set(split.ext, member);
  }
  if (key !== null) yield { key, parts };
}

/** The image extension and labels member of a sample; a `UserError` when one is missing. */
function sampleMembers<T>(path: string, key: string, parts: Parts<T>): { ext: string; pyd: T } {
  const ext = IMAGE_EXTS.find((e) => parts.has(e));
  if (!ext) {
    throw new UserError(
      `${path}: sample '${printable(key)}' has no image member (${printable(key)}.png); ${REPAIR}`,
    );
  }
  const pyd = parts.get("pyd");
  if (!pyd) {
    throw new UserError(
      `${path}: sample '${printable(key)}' has no labels member (${printable(key)}.pyd); ${REPAIR}`,
    );
  }
  return { ext, pyd };
}

const REPAIR = "re-create or re-download the shard";
/** A `.pyd` of 14 labels is 259 bytes; one far larger is not a label array. */
const MAX_PYD = 64 * 1024;

/**
 * Which members of a shard are read, each bounded before its bytes are: labels up to
 * `MAX_PYD`, images (when `images`) up to `MAX_IMAGE_FILE_BYTES`; other members are skipped unread.
 */
function boundedMembers(path: string, images: boolean) {
  return (name: string, size: number): boolean => {
    const ext = splitMemberName(name)?.ext;
    const image = ext !== undefined && IMAGE_EXTS.includes(ext);
    if (ext !== "pyd" && !(images && image)) return false;
    const max = ext === "pyd" ? MAX_PYD : MAX_IMAGE_FILE_BYTES;
    if (size > max) {
      throw new UserError(
        `${path}: ${ext === "pyd" ? "labels" : "image"} member '${printable(name)}' holds ` +
          `${size} bytes, over the ${max} such a member can need; ${REPAIR}`,
      );
    }
    return true;
  };
}

/**
 * Streams the samples of one shard in archive order, grouping consecutive members by key as
 * webdataset does. Damage gives a `UserError` naming the shard and member.
 */
export async function* readShard(path: string): AsyncGenerator<Sample> {
  for await (
    const { key, parts } of groupSamples(path, scanTar(path, boundedMembers(path, true)))
  ) {
    const { ext, pyd } = sampleMembers(path, key, parts);
    yield {
      key,
      png: parts.get(ext)!.data!,
      labels: decodeLabelsPyd(pyd.data!, `${path}:${printable(key)}.pyd`),
      source: `${path}:${printable(key)}.${ext}`,
    };
  }
}

/** Options of `readShards`. */
export interface ReadShardsOptions {
  /** Shuffle the shard order and the samples (through a buffer) with this generator. */
  shuffle?: Rng;
  /** Samples held for shuffling (default 1000, as the original's `.shuffle(1000)`). */
  shuffleBuffer?: number;
  /** Samples gathered before the first one is released (default 100, as webdataset). */
  shuffleInitial?: number;
}

/**
 * Streams the samples of several shards. With `shuffle`, the shard order is shuffled and the
 * samples pass through a shuffle buffer, exactly as webdataset's `shuffle(bufsize, initial)`.
 */
export async function* readShards(
  paths: string[],
  opts: ReadShardsOptions = {},
): AsyncGenerator<Sample> {
  const rng = opts.shuffle;
  const order = rng ? rng.shuffle([...paths]) : paths;
  async function* all(): AsyncGenerator<Sample> {
    for (const p of order) yield* readShard(p);
  }
  if (!rng) {
    yield* all();
    return;
  }
  const bufsize = Math.max(1, opts.shuffleBuffer ?? SHUFFLE_BUFFER);
  const initial = Math.min(opts.shuffleInitial ?? 100, bufsize);
  const buf: Sample[] = [];
  const pick = (): Sample => {
    const k = rng.int(buf.length);
    const s = buf[k];
    buf[k] = buf[buf.length - 1];
    buf.pop();
    return s;
  };
  const source = all();
  try {
    while (true) {
      const r = await source.next();
      if (r.done) break;
      buf.push(r.value);
      if (buf.length < bufsize) {
        // webdataset takes a second sample per step until the buffer is full.
        const r2 = await source.next();
        if (!r2.done) buf.push(r2.value);
      }
      if (buf.length >= initial) yield pick();
    }
    while (buf.length > 0) yield pick();
  } finally {
    await source.return(undefined); // closes the open shard when the consumer stops early
  }
}

/**
 * Checks shards without decoding an image: every tar header (fields, sizes, truncation), that
 * each sample has an image and a `.pyd` member, and that the labels are 14 values of 0/1 (the
 * small `.pyd` members are read, images are skipped). Returns the number of samples. Run before
 * training or validation starts, so a damaged shard is found before the first batch.
 */
export async function checkShards(paths: string[]): Promise<number> {
  let total = 0;
  for await (const _ of shardLabels(paths)) total++;
  return total;
}

/**
 * Each sample's key and labels, in archive order, reading the small `.pyd` members only (images
 * are skipped), with the checks of `checkShards`.
 */
export async function* shardLabels(
  paths: string[],
): AsyncGenerator<{ key: string; labels: Float32Array; shard: string }> {
  // Each key once in a subset: two samples of one key give two prediction rows of one name,
  // and a lookup by key (CAMs, label CSVs) would take one sample's image for the other's.
  const seen = new Map<string, string>();
  for (const path of paths) {
    const members = scanTar(path, boundedMembers(path, false), 4096);
    for await (const { key, parts } of groupSamples(path, members)) {
      const { pyd } = sampleMembers(path, key, parts);
      const labels = decodeLabelsPyd(pyd.data!, `${path}:${printable(key)}.pyd`);
      const first = seen.get(key);
      if (first !== undefined) {
        throw new UserError(
          (first === path
            ? `sample '${printable(key)}' appears twice in ${path}`
            : `sample '${printable(key)}' is in both ${first} and ${path}`) +
            `: each image may appear once in a subset; remove the stale shard or re-run ` +
            `preprocessing into an empty --dataset_dir`,
        );
      }
      seen.set(key, path);
      yield { key, labels, shard: path };
    }
  }
}

/** A sample to write: labels as numbers (0/1), the image already encoded. */
export interface SampleToWrite {
  key: string;
  png: Uint8Array;
  labels: ArrayLike<number>;
}

/**
 * Writes samples into numbered shards of at most `maxPerShard` samples. `pattern` holds a
 * printf-style `%03d` (or `%d`, `%06d`) for the shard index, like webdataset's ShardWriter,
 * e.g. `data/datasets/ChestXray14_train_%03d.tar` (see `shardPattern`). Each shard is written
 * under a temporary name and renamed when complete; the first shard is renamed last, by
 * `close`, so an interrupted run never leaves shard 000 (whose presence means "subset done").
 */
export class ShardWriter {
  readonly pattern: string;
  readonly maxPerShard: number;
  /** Completed shards, in order. */
  readonly shards: string[] = [];
  #index = 0;
  #count = 0;
  #total = 0;
  #writer: TarWriter | null = null;
  #path = "";
  #tmp = "";
  #mtime = Math.floor(Date.now() / 1000);
  /** The first shard, complete but still under its temporary name until `close`. */
  #firstTmp: string | null = null;
  /** Temp files named by tempPathFor and not yet renamed or removed. */
  #heldTemps = 0;
  /** Finished shards this writer renamed into place, with their inode then. */
  #mine = new Map<string, number | null>();

  constructor(pattern: string, maxPerShard = 1000) {
    if (!/%0?\d*d/.test(pattern)) {
      throw new Error(`shard pattern needs a %03d placeholder: ${pattern}`);
    }
    if (!(maxPerShard >= 1)) throw new Error(`maxPerShard must be >= 1, got ${maxPerShard}`);
    this.pattern = pattern;
    this.maxPerShard = maxPerShard;
  }

  /** Samples written so far. */
  get count(): number {
    return this.#total;
  }

  #name(index: number): string {
    return this.pattern.replace(/%(0?)(\d*)d/, (_m, zero: string, width: string) => {
      const w = width ? Number(width) : 0;
      return String(index).padStart(w, zero ? "0" : " ");
    });
  }

  /** Appends one sample (`KEY.png`, `KEY.pyd`), starting a new shard when the current is full. */
  async write(sample: SampleToWrite): Promise<void> {
    try {
      await this.#write(sample);
    } catch (e) {
      throw writeFailure(e, this.#path);
    }
  }

  async #write(sample: SampleToWrite): Promise<void> {
    if (sample.key.includes(".")) {
      throw new Error(`sample key must not contain a dot: ${sample.key}`);
    }
    if (this.#writer === null) {
      this.#path = this.#name(this.#index);
      this.#tmp = tempPathFor(this.#path);
      this.#heldTemps++;
      const file = await Deno.open(this.#tmp, { write: true, create: true, truncate: true });
      this.#writer = new TarWriter(file);
    }
    const opts = { mtime: this.#mtime };
    await this.#writer.add(`${sample.key}.png`, sample.png, opts);
    await this.#writer.add(`${sample.key}.pyd`, encodeLabelsPyd(sample.labels), opts);
    this.#count++;
    this.#total++;
    if (this.#count >= this.maxPerShard) await this.#finishShard();
  }

  async #finishShard(): Promise<void> {
    if (this.#writer === null) return;
    await this.#writer.close();
    this.#writer = null;
    if (this.#index === 0) this.#firstTmp = this.#tmp;
    else {
      await Deno.rename(this.#tmp, this.#path);
      this.#releaseTemp();
      this.#mine.set(this.#path, (await Deno.stat(this.#path)).ino);
    }
    this.shards.push(this.#path);
    this.#index++;
    this.#count = 0;
  }

  /** Completes the last shard; returns the paths of all shards written. */
  async close(): Promise<string[]> {
    try {
      await this.#finishShard();
    } catch (e) {
      throw writeFailure(e, this.#path);
    }
    if (this.#firstTmp !== null) {
      await Deno.rename(this.#firstTmp, this.shards[0]);
      this.#firstTmp = null;
      this.#releaseTemp();
      this.#mine.set(this.shards[0], (await Deno.stat(this.shards[0])).ino);
    }
    return this.shards;
  }

  /**
   * Removes what this writer wrote (after an error), so no partial set of shards remains: its
   * temporary files, and its finished shards while they are still the files it renamed into
   * place (same inode). A file another process put under a shard's name since is not touched.
   */
  async abort(): Promise<void> {
    this.#writer?.abort();
    this.#writer = null;
    const leftovers = [this.#tmp, ...(this.#firstTmp ? [this.#firstTmp] : [])];
    for (const p of leftovers) if (p) await Deno.remove(p).catch(() => {});
    for (const [p, ino] of this.#mine) {
      const now = await Deno.stat(p).then((s) => s.ino, () => null);
      if (now !== null && now === ino) await Deno.remove(p).catch(() => {});
    }
    this.#mine.clear();
    this.#firstTmp = null;
    while (this.#heldTemps > 0) this.#releaseTemp();
  }

  /** One temp file is gone: the directory's writer lock is dropped with the last one. */
  #releaseTemp(): void {
    this.#heldTemps--;
    releaseTemp(this.#path);
  }
}

/** Shard name pattern of `subset` in `datasetDir`, for `ShardWriter`. */
export function shardPattern(datasetDir: string, subset: string): string {
  return `${datasetDir.replace(/\/+$/, "")}/${SHARD_PREFIX}_${subset}_%03d.tar`;
}
