/**
 * The split record: the parameters that decide which patient lands in which subset (seed,
 * subset size, official split, the metadata and list files by content), and the image and shard
 * sizes, written as `ChestXray14_split.json` beside the shards and the label CSVs. Preprocessing
 * compares it before adding a subset to a directory, so shards of two different splits (patients
 * in two sets) never sit side by side.
 * @module
 */
import { SHARD_PREFIX, type Subset } from "../../config.ts";
import { writeFileAtomic } from "../util/atomic_file.ts";
import { UserError } from "../util/errors.ts";

/** File name of the record in the dataset and labels directories. */
export const SPLIT_RECORD_NAME = `${SHARD_PREFIX}_split.json`;

/** A file by content: what the split depends on, wherever the file lies. */
export interface FileIdentity {
  /** The path it was read from (for the reader; not compared). */
  path: string;
  bytes: number;
  sha256: string;
}

/** What a set of shards and label CSVs was made from. */
export interface SplitRecord {
  random_seed: number;
  subset_size: number | null;
  official_split: boolean;
  image_size: number;
  shard_size: number;
  meta_file: FileIdentity;
  /** `train_val_list.txt` and `test_list.txt`, with `official_split`. */
  lists: { train_val: FileIdentity; test: FileIdentity } | null;
  /**
   * The subsets written so far, each once complete (absent in records of older versions, whose
   * subsets count as done when their first shard exists).
   */
  subsets?: Partial<Record<Subset, SubsetRecord>>;
}

/** A complete subset as preprocessing wrote it. */
export interface SubsetRecord {
  /** Its shard files in the dataset directory, in order: readers read these and no others. */
  shards: { name: string; bytes: number }[];
  /**
   * The images it was made from (the split's, less those missing with --skip_missing) and the
   * SHA-256 of their sorted names, so a rerun sees when the images present have changed.
   */
  images: number;
  images_sha256: string;
  /** Images in the shards (the others could not be decoded and were skipped). */
  written: number;
  /** SHA-256 of the label CSV written with the shards: every reader checks it. */
  labels_sha256: string;
}

/** SHA-256 of `data` as hex. */
export async function sha256Hex(data: Uint8Array | string): Promise<string> {
  const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes as BufferSource));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** SHA-256 of a set of image names (sorted, one a line): the identity of a subset's images. */
export function imagesDigest(names: readonly string[]): Promise<string> {
  return sha256Hex([...names].sort().join("\n"));
}

/** Reads a file's size and SHA-256. */
export async function fileIdentity(path: string): Promise<FileIdentity> {
  const data = await Deno.readFile(path);
  return { path, bytes: data.length, sha256: await sha256Hex(data) };
}

/** The record in `dir`, or null when there is none; a damaged one is a `UserError`. */
export async function readSplitRecord(dir: string): Promise<SplitRecord | null> {
  const path = `${dir}/${SPLIT_RECORD_NAME}`;
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
  try {
    const r = JSON.parse(text);
    if (typeof r?.random_seed !== "number" || typeof r?.meta_file?.sha256 !== "string") {
      throw new Error("fields missing");
    }
    return r as SplitRecord;
  } catch {
    throw new UserError(
      `${path} is damaged (not a split record): delete it and the shards or label CSVs ` +
        `beside it, then run again`,
    );
  }
}

/** Writes the record into `dir` atomically. */
export async function writeSplitRecord(dir: string, record: SplitRecord): Promise<void> {
  await writeFileAtomic(`${dir}/${SPLIT_RECORD_NAME}`, JSON.stringify(record, null, 2) + "\n");
}

const fileChanged = (a: FileIdentity | undefined, b: FileIdentity | undefined) =>
  a?.sha256 !== b?.sha256;

/**
 * The differences between a recorded and a wanted record, each as `what was → now`; empty
 * when the wanted shards would continue the recorded ones.
 */
export function splitDifferences(recorded: SplitRecord, wanted: SplitRecord): string[] {
  const out: string[] = [];
  const flags = [
    ["random_seed", "--random_seed"],
    ["subset_size", "--subset_size"],
    ["official_split", "--official_split"],
    ["image_size", "--image_size"],
    ["shard_size", "--shard_size"],
  ] as const;
  for (const [key, flag] of flags) {
    const was = recorded[key] ?? null;
    const now = wanted[key] ?? null;
    if (was !== now) out.push(`${flag} ${was ?? "(all)"} → ${now ?? "(all)"}`);
  }
  if (fileChanged(recorded.meta_file, wanted.meta_file)) {
    out.push(`metadata ${recorded.meta_file.path} → ${wanted.meta_file.path} (other content)`);
  }
  const lists = [recorded.lists?.train_val, wanted.lists?.train_val];
  const tests = [recorded.lists?.test, wanted.lists?.test];
  if (recorded.official_split && wanted.official_split) {
    if (fileChanged(lists[0], lists[1]) || fileChanged(tests[0], tests[1])) {
      out.push("official split lists (other content)");
    }
  }
  return out;
}
