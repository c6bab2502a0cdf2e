/**
 * Label CSVs are bound to the shards they were written with: preprocessing records each label
 * file's SHA-256 in the dataset directory's split record, and a reader takes a subset's labels
 * only after checking that binding. Shards without such a record (the original tool's, or an
 * older version's) are checked by content instead: the CSV must list every one of their samples,
 * with its labels. So labels replaced by a run into another dataset directory, or a CSV of other
 * images, are refused with one line instead of silently weighting the loss.
 * @module
 */
import { labelsFileName, type Subset } from "../../config.ts";
import { UserError } from "../util/errors.ts";
import { type ImageLabels, parseLabelsCsv } from "./label_csv.ts";
import { readSplitRecord, sha256Hex, SPLIT_RECORD_NAME } from "./split_record.ts";
import { listShards, sampleKeyFor, shardLabels } from "./webdataset.ts";

/** Reads `subset`'s label CSV from `labelsDir` once it is known to belong to `datasetDir`. */
export async function readBoundLabels(
  labelsDir: string,
  datasetDir: string,
  subset: Subset,
): Promise<ImageLabels[]> {
  const path = `${labelsDir.replace(/\/+$/, "")}/${labelsFileName(subset)}`;
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new UserError(
        `label file not found: ${path} (run preprocess_data.ts, or pass the --labels_dir it wrote)`,
      );
    }
    throw e;
  }
  const rows = parseLabelsCsv(new TextDecoder().decode(bytes), path);
  const fix = `pass the --labels_dir that preprocess_data.ts wrote with --dataset_dir ` +
    `${datasetDir}, or run it again with both directories to rewrite the labels`;
  const recorded = (await readSplitRecord(datasetDir))?.subsets?.[subset];
  if (recorded !== undefined) {
    if ((await sha256Hex(bytes)) === recorded.labels_sha256) return rows;
    throw new UserError(
      `${path} does not belong to the ${subset} shards in ${datasetDir}: it is not the label ` +
        `file written with them (${SPLIT_RECORD_NAME} there records another; preprocessing ` +
        `into another --dataset_dir with this --labels_dir replaces it): ${fix}`,
    );
  }
  const shards = new Map<string, Float32Array>();
  for await (const s of shardLabels(await listShards(datasetDir, subset))) {
    shards.set(s.key, s.labels);
  }
  const differ = (why: string) =>
    new UserError(
      `${path} does not match the ${subset} shards in ${datasetDir} (${rows.length} row(s), ` +
        `the shards hold ${shards.size} image(s); ${why}): ${fix}`,
    );
  // The original tool's CSVs may list more images than the shards at hand (a published subset
  // of them): every shard sample must be listed, with its labels.
  const listed = new Map<string, ImageLabels>();
  for (const row of rows) {
    const key = sampleKeyFor(row.image) ?? row.image;
    if (listed.has(key)) throw differ(`${row.image} is listed twice`);
    listed.set(key, row);
  }
  for (const [key, labels] of shards) {
    const row = listed.get(key);
    if (row === undefined) throw differ(`${key}.png is not listed`);
    if (!row.labels.every((v, k) => v === labels[k])) {
      throw differ(`the labels of ${row.image} differ from its shard's`);
    }
  }
  return rows;
}
