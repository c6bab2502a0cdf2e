/**
 * What preprocessing finds for one subset in a dataset directory whose split record tracks its
 * subsets: done (the same images made the recorded shards: skip it), to write (not recorded, a
 * recorded shard gone, or more images present than when it was written: rewrite it), or changed
 * in a way a rewrite would lose data (images in its shards are no longer present: refused). And
 * the record of a subset once written: its shards, the images it was made from, its labels.
 * @module
 */
import { SHARD_PREFIX, type Subset } from "../../config.ts";
import { UserError } from "../util/errors.ts";
import { imagesDigest, sha256Hex, type SubsetRecord } from "./split_record.ts";
import { listTar } from "./tar.ts";
import { sampleKeyFor, splitMemberName } from "./webdataset.ts";

/** Skip the subset, or write it (with a line saying why, when it was written before). */
export type SubsetPlan = { skip: true } | { skip: false; note: string | null };

/** The sample keys of a recorded subset's shards (headers only). */
async function shardKeys(datasetDir: string, recorded: SubsetRecord): Promise<Set<string>> {
  const keys = new Set<string>();
  for (const s of recorded.shards) {
    for (const m of await listTar(`${datasetDir}/${s.name}`)) {
      const split = splitMemberName(m.name);
      if (split) keys.add(split.key);
    }
  }
  return keys;
}

/**
 * Decides what to do with `subset` given its record (if any) and the images it would be made
 * of now (`images`: file names, the split's less those missing).
 */
export async function planSubset(
  datasetDir: string,
  subset: Subset,
  recorded: SubsetRecord | undefined,
  images: readonly string[],
): Promise<SubsetPlan> {
  if (recorded === undefined) return { skip: false, note: null };
  for (const s of recorded.shards) {
    const there = await Deno.stat(`${datasetDir}/${s.name}`).then(() => true, () => false);
    if (!there) {
      return { skip: false, note: `${subset}: its shard ${s.name} is gone: rewriting ${subset}` };
    }
  }
  if ((await imagesDigest(images)) === recorded.images_sha256) return { skip: true };
  // Other images now: rewriting is safe only when every image in the shards is still present.
  const now = new Set(images.map((n) => sampleKeyFor(n)));
  const lost = [...await shardKeys(datasetDir, recorded)].filter((k) => !now.has(k));
  if (lost.length > 0) {
    throw new UserError(
      `the ${subset} shards in ${datasetDir} hold ${lost.length} image(s) no longer in ` +
        `--image_dir (e.g. ${lost[0]}); restore them, or delete ${datasetDir}/` +
        `${SHARD_PREFIX}_${subset}_*.tar to rewrite ${subset} from the images present`,
    );
  }
  return {
    skip: false,
    note: `${subset}: ${images.length} images present now, ${recorded.images} when its shards ` +
      `were written: rewriting ${subset}`,
  };
}

/** The record of a subset just written: `shards` (paths), its images, and its label file. */
export async function subsetRecord(
  shards: readonly string[],
  images: readonly string[],
  written: number,
  labelsCsv: string,
): Promise<SubsetRecord> {
  return {
    shards: await Promise.all(shards.map(async (p) => ({
      name: p.slice(p.lastIndexOf("/") + 1),
      bytes: (await Deno.stat(p)).size,
    }))),
    images: images.length,
    images_sha256: await imagesDigest(images),
    written,
    labels_sha256: await sha256Hex(await Deno.readFile(labelsCsv)),
  };
}

/** The keys in a recorded subset's shards, for rewriting its label CSV to match them. */
export function recordedKeys(datasetDir: string, recorded: SubsetRecord): Promise<Set<string>> {
  return shardKeys(datasetDir, recorded);
}
