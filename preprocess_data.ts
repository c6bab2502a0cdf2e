/**
 * Preprocessing, as the original `preprocess_data.py`: reads the NIH metadata, splits the
 * patients into train/val/test, writes `data/labels/{subset}_labels.csv`, and packs the images,
 * resized to 256×256 8-bit grayscale PNG, into WebDataset shards
 * `data/datasets/ChestXray14_{subset}_NNN.tar` (`KEY.png` + `KEY.pyd`). The split parameters
 * are recorded beside the shards and the labels (`ChestXray14_split.json`); a run with other
 * parameters refuses to add subsets to shards of another split. Image names must be usable as
 * WebDataset keys (one dot, before the extension); others are refused before anything is written.
 *
 *   deno task preprocess -- -s 8400
 * @module
 */
import {
  DATASET_DIR,
  DATASET_IMAGE_SIZE,
  IMAGE_DIR,
  LABELS_DIR,
  labelsFileName,
  META_FILE,
  RANDOM_SEED,
  SHARD_PREFIX,
  SHARD_SIZE,
  type Subset,
  SUBSETS,
  TEST_LIST_NAME,
  TRAIN_VAL_LIST_NAME,
} from "./config.ts";
import { ensureDir, exists, removeDeadTemps } from "./lib/util/atomic_file.ts";
import { lockDirectoryForWriting } from "./lib/util/dir_lock.ts";
import { planSubset, recordedKeys, subsetRecord } from "./lib/data/subset_state.ts";
import { parseFlags } from "./lib/util/cli.ts";
import { runMain, UserError } from "./lib/util/errors.ts";
import { mapConcurrent, readImageFile, resizeGrayPng } from "./lib/data/images.ts";
import {
  type MetaEntry,
  readDataEntry,
  readImageList,
  writeLabelsCsv,
} from "./lib/data/label_csv.ts";
import { Progress } from "./lib/util/progress.ts";
import { officialSplit, patientsOf, patientSplit, type Split } from "./lib/data/split.ts";
import {
  fileIdentity,
  readSplitRecord,
  sha256Hex,
  SPLIT_RECORD_NAME,
  splitDifferences,
  type SplitRecord,
  writeSplitRecord,
} from "./lib/data/split_record.ts";
import { sampleKeyFor, shardPath, shardPattern, ShardWriter } from "./lib/data/webdataset.ts";

/** Everything preprocessing needs; the flags map onto it one to one. */
export interface PreprocessOptions {
  seed: number;
  /** Number of patients to draw first; null for all. */
  subsetSize: number | null;
  imageDir: string;
  metaFile: string;
  labelsDir: string;
  datasetDir: string;
  imageSize: number;
  shardSize: number;
  /** Use NIH's train_val_list.txt / test_list.txt (next to the metadata file). */
  officialSplit: boolean;
  workers: number;
  /** Skip (and count) missing or undecodable images instead of stopping. */
  skipMissing: boolean;
  /** zlib level of the stored PNGs (default 6). */
  compressionLevel?: number;
  /** Suppress the progress bar. */
  quiet?: boolean;
}

/** What one subset's processing did. */
export interface SubsetReport {
  /** Images in the split. */
  planned: number;
  /** Images written to shards (0 when skipped). */
  written: number;
  shards: string[];
  /** True when the subset's first shard already existed. */
  skipped: boolean;
}

/** What preprocessing did. */
export interface PreprocessReport {
  subsets: Record<Subset, SubsetReport>;
  /** Missing or undecodable images skipped with `skipMissing`. */
  warnings: number;
  patients: Record<Subset, number>;
}

function dirOf(path: string): string {
  const i = path.lastIndexOf("/");
  return i < 0 ? "." : i === 0 ? "/" : path.slice(0, i);
}

async function imageNames(imageDir: string): Promise<Set<string>> {
  const names = new Set<string>();
  try {
    for await (const e of Deno.readDir(imageDir)) if (!e.isDirectory) names.add(e.name);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new UserError(
        `image directory not found: ${imageDir} (extract the NIH images there, or pass --image_dir)`,
      );
    }
    if (e instanceof Deno.errors.NotADirectory) {
      throw new UserError(`--image_dir is not a directory: ${imageDir}`);
    }
    throw e;
  }
  return names;
}

/** Runs the whole preprocessing; `log` receives the one-line status messages. */
export async function preprocess(
  opts: PreprocessOptions,
  log: (line: string) => void = console.log,
  warn: (line: string) => void = (l) => console.error(`warning: ${l}`),
): Promise<PreprocessReport> {
  const available = await imageNames(opts.imageDir);
  const entries = await readDataEntry(opts.metaFile);
  log(
    `read ${entries.length} images of ${patientsOf(entries).length} patients from ${opts.metaFile}`,
  );
  let split: Split<MetaEntry>;
  const metaDir = dirOf(opts.metaFile);
  const listPaths = {
    trainVal: `${metaDir}/${TRAIN_VAL_LIST_NAME}`,
    test: `${metaDir}/${TEST_LIST_NAME}`,
  };
  if (opts.officialSplit) {
    const lists = {
      trainVal: await readImageList(listPaths.trainVal),
      test: await readImageList(listPaths.test),
    };
    const s = officialSplit(entries, lists, { seed: opts.seed, subsetSize: opts.subsetSize });
    if (s.unlisted > 0) warn(`${s.unlisted} image(s) are in neither official list; left out`);
    if (s.overlapping > 0) {
      warn(`${s.overlapping} train/val image(s) of test patients left out`);
    }
    split = s;
  } else {
    split = patientSplit(entries, { seed: opts.seed, subsetSize: opts.subsetSize });
  }

  for (const subset of SUBSETS) {
    // Refused before any shard is written (a WebDataset key ends at the first dot).
    const bad = split[subset].find((e) => sampleKeyFor(e.image) === null);
    if (bad) {
      throw new UserError(
        `image name '${bad.image}' in ${opts.metaFile} cannot be a WebDataset sample key ` +
          `(keys end at the first dot, so a name needs one dot, before its extension): ` +
          `rename the file (e.g. ${
            bad.image.replace(/\.(?=.*\.)/g, "_")
          }) in --image_dir and the metadata`,
      );
    }
  }

  let warnings = 0;
  for (const subset of SUBSETS) {
    const missing = split[subset].filter((e) => !available.has(e.image));
    if (missing.length === 0) continue;
    if (!opts.skipMissing) {
      throw new UserError(
        `image not found: ${opts.imageDir}/${missing[0].image}` +
          (missing.length > 1 ? ` (and ${missing.length - 1} more missing)` : "") +
          ` listed in ${opts.metaFile}; pass --skip_missing to leave missing images out`,
      );
    }
    for (const e of missing.slice(0, 5)) {
      warn(`image not found, skipped: ${opts.imageDir}/${e.image}`);
    }
    if (missing.length > 5) warn(`... and ${missing.length - 5} more missing ${subset} images`);
    warnings += missing.length;
    split[subset] = split[subset].filter((e) => available.has(e.image));
  }

  await ensureDir(opts.datasetDir, "--dataset_dir");
  await ensureDir(opts.labelsDir, "--labels_dir");
  // One writer per directory; under the lock only a dead run's temporary files are removed.
  lockDirectoryForWriting(opts.datasetDir, "--dataset_dir");
  lockDirectoryForWriting(opts.labelsDir, "--labels_dir");
  removeDeadTemps(opts.datasetDir);
  const record: SplitRecord = {
    random_seed: opts.seed,
    subset_size: opts.subsetSize,
    official_split: opts.officialSplit,
    image_size: opts.imageSize,
    shard_size: opts.shardSize,
    meta_file: await fileIdentity(opts.metaFile),
    lists: opts.officialSplit
      ? {
        train_val: await fileIdentity(listPaths.trainVal),
        test: await fileIdentity(listPaths.test),
      }
      : null,
  };
  const done = new Set<Subset>();
  for (const subset of SUBSETS) {
    if (await exists(shardPath(opts.datasetDir, subset, 0))) done.add(subset);
  }
  const known = await checkSplitRecord(opts, record, done);
  const labelsRecord = await readSplitRecord(opts.labelsDir);
  const labelsCurrent = labelsRecord !== null &&
    splitDifferences(labelsRecord, record).length === 0;
  const subsets = {} as Record<Subset, SubsetReport>;
  const patients = {} as Record<Subset, number>;
  for (const subset of SUBSETS) {
    const planned = split[subset];
    patients[subset] = patientsOf(planned).length;
    const csvPath = `${opts.labelsDir}/${labelsFileName(subset)}`;
    const first = shardPath(opts.datasetDir, subset, 0);
    const images = planned.map((e) => e.image);
    const tracked = record.subsets;
    if (tracked !== undefined) {
      const plan = await planSubset(opts.datasetDir, subset, tracked[subset], images);
      if (plan.skip) {
        log(
          `skipping ${subset}: ${first} already exists, made of the same images (delete the ` +
            `${subset} shards to redo it)`,
        );
        await bindLabels(opts.datasetDir, subset, tracked, planned, csvPath);
        subsets[subset] = { planned: planned.length, written: 0, shards: [], skipped: true };
        continue;
      }
      if (plan.note) log(plan.note);
      // Not done until written again: a kill from here on leaves it to be redone.
      delete tracked[subset];
      await writeSplitRecord(opts.datasetDir, record);
    } else if (done.has(subset)) {
      log(`skipping ${subset}: ${first} already exists (delete the ${subset} shards to redo it)`);
      // Labels of another split (or none) are replaced by this split's, which the shards share.
      if (known && (!labelsCurrent || !(await exists(csvPath)))) {
        await writeLabelsCsv(csvPath, planned);
      }
      subsets[subset] = { planned: planned.length, written: 0, shards: [], skipped: true };
      continue;
    }
    const result = await writeSubset(subset, planned, opts, warn);
    warnings += result.skipped;
    await writeLabelsCsv(csvPath, result.written);
    if (tracked !== undefined) {
      tracked[subset] = await subsetRecord(result.shards, images, result.written.length, csvPath);
      await writeSplitRecord(opts.datasetDir, record);
    }
    log(
      `${subset}: ${result.written.length} images of ${patients[subset]} patients → ` +
        `${result.shards.length} shard(s) in ${opts.datasetDir}, labels in ${csvPath}`,
    );
    subsets[subset] = {
      planned: planned.length,
      written: result.written.length,
      shards: result.shards,
      skipped: false,
    };
  }
  if (known) {
    if (record.subsets !== undefined) await writeSplitRecord(opts.datasetDir, record);
    await writeSplitRecord(opts.labelsDir, record);
  }
  if (warnings > 0) warn(`${warnings} image(s) skipped (missing or undecodable)`);
  return { subsets, warnings, patients };
}

/**
 * Makes a skipped subset's label CSV the one its shards were written with (another run may have
 * replaced it): rewritten from the metadata for exactly the shards' images when it differs.
 */
async function bindLabels(
  datasetDir: string,
  subset: Subset,
  tracked: NonNullable<SplitRecord["subsets"]>,
  planned: MetaEntry[],
  csvPath: string,
): Promise<void> {
  const recorded = tracked[subset]!;
  const current = await Deno.readFile(csvPath).then(sha256Hex, () => null);
  if (current === recorded.labels_sha256) return;
  const keys = await recordedKeys(datasetDir, recorded);
  await writeLabelsCsv(csvPath, planned.filter((e) => keys.has(sampleKeyFor(e.image)!)));
  recorded.labels_sha256 = await sha256Hex(await Deno.readFile(csvPath));
}

/** Any shard of any subset in the dataset directory (complete or not). */
async function hasShards(datasetDir: string): Promise<boolean> {
  const shard = new RegExp(`^${SHARD_PREFIX}_(${SUBSETS.join("|")})_\\d{3,}\\.tar$`);
  for await (const e of Deno.readDir(datasetDir)) if (shard.test(e.name)) return true;
  return false;
}

/**
 * Compares the split record beside the shards with this run's before a shard is written:
 * shards of another split (or of an unknown one) are never completed with this split's subsets,
 * which could put a patient in two sets. Writes the record when this run starts or continues
 * the directory; returns false when complete shards of an unknown split are only skipped.
 */
async function checkSplitRecord(
  opts: PreprocessOptions,
  record: SplitRecord,
  done: Set<Subset>,
): Promise<boolean> {
  const dir = opts.datasetDir;
  const redo = `pass a new --dataset_dir, or delete ${dir}/${SHARD_PREFIX}_*.tar and ` +
    `${SPLIT_RECORD_NAME} there to redo all subsets`;
  // A directory without shards starts tracking its subsets; one with shards continues its
  // record's (an older version's record tracks none: its subsets are done when shard 000 is).
  record.subsets = {};
  if (await hasShards(dir)) {
    const recorded = await readSplitRecord(dir);
    record.subsets = recorded?.subsets;
    if (recorded === null) {
      const labels = await Promise.all(
        SUBSETS.map((s) => exists(`${opts.labelsDir}/${labelsFileName(s)}`)),
      );
      if (done.size === SUBSETS.length && labels.every(Boolean)) return false;
      throw new UserError(
        `${dir} holds shards without a split record (${SPLIT_RECORD_NAME}: an older version or ` +
          `another tool wrote them), so this run's subsets could share patients with them: ${redo}`,
      );
    }
    const diffs = splitDifferences(recorded, record);
    if (diffs.length > 0) {
      throw new UserError(
        `${dir} holds shards of another split (${diffs.join(", ")}): ${redo}`,
      );
    }
  }
  await writeSplitRecord(dir, record);
  return true;
}

async function writeSubset(
  subset: Subset,
  entries: MetaEntry[],
  opts: PreprocessOptions,
  warn: (line: string) => void,
): Promise<{ written: MetaEntry[]; shards: string[]; skipped: number }> {
  const writer = new ShardWriter(shardPattern(opts.datasetDir, subset), opts.shardSize);
  const progress = new Progress(`preprocess ${subset}`, entries.length, {
    unit: "img",
    silent: opts.quiet,
  });
  const written: MetaEntry[] = [];
  let skipped = 0;
  try {
    const resized = mapConcurrent(entries, opts.workers, async (e) => {
      const path = `${opts.imageDir}/${e.image}`;
      try {
        const bytes = await readImageFile(path);
        return { e, png: await resizeGrayPng(bytes, opts.imageSize, path, opts) };
      } catch (err) {
        if (opts.skipMissing && err instanceof UserError) return { e, error: err.message };
        throw err;
      }
    });
    for await (const r of resized) {
      if ("error" in r) {
        warn(`skipped: ${r.error}`);
        skipped++;
      } else {
        await writer.write({
          key: sampleKeyFor(r.e.image)!,
          png: r.png,
          labels: r.e.labels,
        });
        written.push(r.e);
      }
      progress.tick();
    }
    const shards = await writer.close();
    progress.finish();
    return { written, shards, skipped };
  } catch (e) {
    await writer.abort();
    throw e;
  }
}

const FLAGS = {
  random_seed: { kind: "int", short: "r", default: RANDOM_SEED, help: "seed of the patient split" },
  subset_size: {
    kind: "int",
    short: "s",
    default: null,
    min: 1,
    metavar: "N",
    help: "use only N randomly drawn patients (default: all)",
  },
  image_dir: { kind: "string", default: IMAGE_DIR, metavar: "DIR", help: "NIH image directory" },
  meta_file: {
    kind: "string",
    default: META_FILE,
    metavar: "CSV",
    help: "NIH metadata file (Data_Entry_2017_v2020.csv)",
  },
  labels_dir: {
    kind: "string",
    default: LABELS_DIR,
    metavar: "DIR",
    help: "where to write {train,val,test}_labels.csv",
  },
  dataset_dir: {
    kind: "string",
    default: DATASET_DIR,
    metavar: "DIR",
    help: "where to write the WebDataset shards",
  },
  image_size: {
    kind: "int",
    default: DATASET_IMAGE_SIZE,
    min: 8,
    max: 4096,
    metavar: "PX",
    help: "side of the stored square images",
  },
  shard_size: {
    kind: "int",
    default: SHARD_SIZE,
    min: 1,
    metavar: "N",
    help: "samples per shard at most",
  },
  official_split: {
    kind: "boolean",
    default: false,
    help: "test set from NIH's test_list.txt, val/train from train_val_list.txt (meta_data dir)",
  },
  workers: {
    kind: "int",
    short: "w",
    default: navigator.hardwareConcurrency || 1,
    min: 1,
    max: 256,
    help: "images resized concurrently",
  },
  skip_missing: {
    kind: "boolean",
    default: false,
    help: "skip missing or undecodable images with a warning instead of stopping",
  },
} as const;

async function main(args: string[]): Promise<void> {
  const f = parseFlags(
    args,
    FLAGS,
    "preprocess_data.ts [options]",
    "Split NIH ChestX-ray14 by patient, write label CSVs and 256×256 WebDataset shards.",
  );
  const report = await preprocess({
    seed: f.random_seed,
    subsetSize: f.subset_size,
    imageDir: f.image_dir,
    metaFile: f.meta_file,
    labelsDir: f.labels_dir,
    datasetDir: f.dataset_dir,
    imageSize: f.image_size,
    shardSize: f.shard_size,
    officialSplit: f.official_split,
    workers: f.workers,
    skipMissing: f.skip_missing,
  });
  const done = SUBSETS.map((s) =>
    `${s} ${report.subsets[s].skipped ? "skipped" : report.subsets[s].written}`
  );
  console.log(`done: ${done.join(", ")}`);
}

if (import.meta.main) await runMain(main);
