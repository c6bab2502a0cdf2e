/**
 * WebDataset shards as the original tool writes them: tar archives
 * `ChestXray14_{subset}_NNN.tar` whose samples are `KEY.png` + `KEY.pyd` (a pickled numpy
 * float64[14] of labels). Streaming reader (one member in memory at a time), seeded shard
 * shuffle and shuffle buffer (as webdataset's `.shuffle(1000)`), fast counting from headers,
 * and a writer that renames each shard into place only when it is complete.
 * @module
 */
import { SHARD_PREFIX, SHUFFLE_BUFFER, type Subset } from "../../config.ts";
import { tempPathFor } from "../util/atomic_file.ts";
import { UserError } from "../util/errors.ts";
import { decodeLabelsPyd, encodeLabelsPyd } from "../torch/pickle.ts";
import type { Rng } from "../util/rng.ts";
import { listTar, readTar, TarWriter } from "./tar.ts";

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

/** File name of shard `index` of `subset`, e.g. `ChestXray14_train_003.tar`. */
export function shardName(subset: string, index: number): string {
  return `${SHARD_PREFIX}_${subset}_${String(index).padStart(3, "0")}.tar`;
}

/** Path of shard `index` of `subset` in `datasetDir`. */
export function shardPath(datasetDir: string, subset: string, index: number): string {
  return `${datasetDir.replace(/\/+$/, "")}/${shardName(subset, index)}`;
}

/** The shards of `subset` in `datasetDir`, sorted; `UserError` when there are none. */
export async function listShards(datasetDir: string, subset: Subset | string): Promise<string[]> {
  const pattern = new RegExp(`^${SHARD_PREFIX}_${subset}_(\\d{3,})\\.tar$`);
  const names: string[] = [];
  try {
    for await (const entry of Deno.readDir(datasetDir)) {
      if (entry.isFile && pattern.test(entry.name)) names.push(entry.name);
    }
  } catch (e) {
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
  return names.map((n) => `${datasetDir.replace(/\/+$/, "")}/${n}`);
}

function toSample(
  path: string,
  key: string,
  parts: Map<string, Uint8Array>,
): Sample {
  const ext = IMAGE_EXTS.find((e) => parts.has(e));
  if (!ext) {
    throw new UserError(`${path}: sample '${key}' has no image member (${key}.png)`);
  }
  const pyd = parts.get("pyd");
  if (!pyd) throw new UserError(`${path}: sample '${key}' has no labels member (${key}.pyd)`);
  return {
    key,
    png: parts.get(ext)!,
    labels: decodeLabelsPyd(pyd, `${path}:${key}.pyd`),
    source: `${path}:${key}.${ext}`,
  };
}

/**
 * Streams the samples of one shard in archive order, grouping consecutive members by key as
 * webdataset does. Damage gives a `UserError` naming the shard and member.
 */
export async function* readShard(path: string): AsyncGenerator<Sample> {
  let key: string | null = null;
  let parts = new Map<string, Uint8Array>();
  for await (const member of readTar(path)) {
    const split = splitMemberName(member.name);
    if (!split) continue; // names without an extension carry no sample data
    if (key !== null && split.key !== key) {
      yield toSample(path, key, parts);
      parts = new Map();
    }
    key = split.key;
    if (parts.has(split.ext)) {
      throw new UserError(`${path}: member '${member.name}' appears twice for sample '${key}'`);
    }
    parts.set(split.ext, member.data);
  }
  if (key !== null) yield toSample(path, key, parts);
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

/** Counts the samples (distinct keys) of shards from their tar headers, without reading data. */
export async function countSamples(paths: string[]): Promise<number> {
  let total = 0;
  for (const path of paths) {
    let last: string | null = null;
    for (const m of await listTar(path)) {
      const split = splitMemberName(m.name);
      if (!split || !IMAGE_EXTS.includes(split.ext)) continue;
      if (split.key !== last) total++;
      last = split.key;
    }
  }
  return total;
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
    if (sample.key.includes(".")) {
      throw new Error(`sample key must not contain a dot: ${sample.key}`);
    }
    if (this.#writer === null) {
      this.#path = this.#name(this.#index);
      this.#tmp = tempPathFor(this.#path);
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
    else await Deno.rename(this.#tmp, this.#path);
    this.shards.push(this.#path);
    this.#index++;
    this.#count = 0;
  }

  /** Completes the last shard; returns the paths of all shards written. */
  async close(): Promise<string[]> {
    await this.#finishShard();
    if (this.#firstTmp !== null) {
      await Deno.rename(this.#firstTmp, this.shards[0]);
      this.#firstTmp = null;
    }
    return this.shards;
  }

  /** Removes everything written (after an error), so no partial set of shards remains. */
  async abort(): Promise<void> {
    this.#writer?.abort();
    this.#writer = null;
    const leftovers = [this.#tmp, ...(this.#firstTmp ? [this.#firstTmp] : [])];
    leftovers.push(...this.shards.slice(1));
    for (const p of leftovers) if (p) await Deno.remove(p).catch(() => {});
    this.#firstTmp = null;
  }
}

/** Shard name pattern of `subset` in `datasetDir`, for `ShardWriter`. */
export function shardPattern(datasetDir: string, subset: string): string {
  return `${datasetDir.replace(/\/+$/, "")}/${SHARD_PREFIX}_${subset}_%03d.tar`;
}
