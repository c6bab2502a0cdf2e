/**
 * Issue 14, preprocessing: the split record beside the shards and labels keeps a patient out of
 * two sets when preprocess_data.ts runs again with other parameters (class 5), and an image
 * name that cannot be a WebDataset key is refused before any shard is written (class 8).
 * Runs the real script on a small NIH-like tree.
 */
import assert from "node:assert/strict";
import { SPLIT_RECORD_NAME } from "../lib/data/split_record.ts";
import { readLabelsCsv } from "../lib/data/label_csv.ts";
import { listShards, readShard } from "../lib/data/webdataset.ts";
import { buildOriginalData, metaCsv } from "./helpers/original_data.ts";
import { collect, runScript, type ScriptResult } from "./helpers/scripts.ts";

const SUBSETS = ["train", "val", "test"] as const;
const data = await buildOriginalData(24);

/** Runs preprocess_data.ts on the tree into `ds`/`labels` (under the tree's root). */
function preprocess(ds: string, labels: string, args: string[] = []): Promise<ScriptResult> {
  return runScript(
    "preprocess_data.ts",
    [
      "--image_dir",
      data.imageDir,
      "--meta_file",
      data.metaFile,
      "--dataset_dir",
      `${data.root}/${ds}`,
      "--labels_dir",
      `${data.root}/${labels}`,
      "--image_size",
      "32",
      "--shard_size",
      "4",
      "-w",
      "2",
      ...args,
    ],
    [data.root],
    { timeoutMs: 120_000 },
  );
}

function assertOneLine(r: ScriptResult, pattern: RegExp): void {
  assert.equal(r.code, 1, r.stderr);
  const lines = r.stderr.split("\n").filter((l) => l.startsWith("error"));
  assert.equal(lines.length, 1, r.stderr);
  assert.match(lines[0], pattern);
  assert.doesNotMatch(r.stderr, /^\s+at /m, "no stack trace");
}

/** Name → size and mtime of every file in a directory, to show nothing was touched. */
async function snapshot(dir: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for await (const e of Deno.readDir(dir)) {
    const st = await Deno.stat(`${dir}/${e.name}`);
    out.set(e.name, `${st.size}@${st.mtime?.getTime()}`);
  }
  return out;
}

const patientOf = (key: string) => String(Number(key.split("_")[0]));

/** Patients per subset, from the shards; asserts no patient is in two subsets. */
async function disjointPatients(ds: string): Promise<Record<string, Set<string>>> {
  const out: Record<string, Set<string>> = {};
  const owner = new Map<string, string>();
  for (const s of SUBSETS) {
    out[s] = new Set();
    for (const p of await listShards(`${data.root}/${ds}`, s)) {
      for (const sample of await collect(readShard(p))) out[s].add(patientOf(sample.key));
    }
    for (const id of out[s]) {
      assert.ok(!owner.has(id), `patient ${id} in ${owner.get(id)} and ${s}`);
      owner.set(id, s);
    }
  }
  return out;
}

/** Asserts each label CSV lists exactly the samples of its shards. */
async function labelsMatchShards(ds: string, labels: string): Promise<void> {
  for (const s of SUBSETS) {
    const rows = await readLabelsCsv(`${data.root}/${labels}/${s}_labels.csv`);
    const keys: string[] = [];
    for (const p of await listShards(`${data.root}/${ds}`, s)) {
      for (const sample of await collect(readShard(p))) keys.push(`${sample.key}.png`);
    }
    assert.deepEqual(rows.map((r) => r.image), keys, `${labels}/${s}_labels.csv`);
  }
}

async function removeShards(ds: string, subset: string): Promise<void> {
  for (const p of await listShards(`${data.root}/${ds}`, subset)) await Deno.remove(p);
}

Deno.test("class 5: another -r after deleting the test shards is refused; nothing is lost", async () => {
  const first = await preprocess("a", "la", ["-r", "42"]);
  assert.equal(first.code, 0, first.stderr);
  const record = JSON.parse(await Deno.readTextFile(`${data.root}/a/${SPLIT_RECORD_NAME}`));
  assert.equal(record.random_seed, 42);
  assert.equal(record.image_size, 32);
  assert.equal(record.shard_size, 4);
  assert.match(record.meta_file.sha256, /^[0-9a-f]{64}$/);
  assert.deepEqual(
    JSON.parse(await Deno.readTextFile(`${data.root}/la/${SPLIT_RECORD_NAME}`)),
    record,
  );
  const before = await disjointPatients("a");

  // The case: test shards deleted, then another seed.
  await removeShards("a", "test");
  const shards = await snapshot(`${data.root}/a`);
  const labels = await snapshot(`${data.root}/la`);
  const r = await preprocess("a", "la", ["-r", "7"]);
  assertOneLine(
    r,
    /^error: .*\/a holds shards of another split \(--random_seed 42 → 7\): pass a new --dataset_dir, or delete .*\/a\/ChestXray14_\*\.tar and ChestXray14_split\.json there to redo all subsets$/,
  );
  assert.deepEqual(await snapshot(`${data.root}/a`), shards, "shards and record untouched");
  assert.deepEqual(await snapshot(`${data.root}/la`), labels, "labels untouched");

  // Other parameters that change the shards are refused too.
  for (
    const [args, diff] of [
      [["-r", "42", "-s", "5"], /--subset_size \(all\) → 5/],
      [["-r", "42", "--image_size", "48"], /--image_size 32 → 48/],
    ] as const
  ) {
    const ri = await runScript(
      "preprocess_data.ts",
      [
        "--image_dir",
        data.imageDir,
        "--meta_file",
        data.metaFile,
        "--dataset_dir",
        `${data.root}/a`,
        "--labels_dir",
        `${data.root}/la`,
        "--shard_size",
        "4",
        "--image_size",
        "32",
        ...args,
      ],
      [data.root],
      { timeoutMs: 120_000 },
    );
    assertOneLine(ri, diff);
  }
  assert.deepEqual(await snapshot(`${data.root}/a`), shards);

  // The same parameters continue: the test subset is redone, of the same patients.
  const again = await preprocess("a", "la", ["-r", "42"]);
  assert.equal(again.code, 0, again.stderr);
  assert.match(again.stdout, /skipping train: /);
  assert.match(again.stdout, /skipping val: /);
  assert.deepEqual(await disjointPatients("a"), before);
  await labelsMatchShards("a", "la");
});

Deno.test("class 5: a changed metadata file is refused; deleting the shards redoes the split", async () => {
  const ok = await preprocess("m", "lm");
  assert.equal(ok.code, 0, ok.stderr);
  await removeShards("m", "val");
  const original = await Deno.readTextFile(data.metaFile);
  // Patients renumbered: another metadata file with the same images.
  const swapped = metaCsv(data.images.map((m, i) => ({ ...m, patientId: String(900 + (i % 5)) })));
  await Deno.writeTextFile(data.metaFile, swapped);
  try {
    const r = await preprocess("m", "lm");
    assertOneLine(r, /holds shards of another split \(metadata .* \(other content\)\)/);
    // The fix the message gives: delete the shards and the record, then run again.
    for (const s of SUBSETS) {
      await removeShards("m", s).catch(() => {});
    }
    await Deno.remove(`${data.root}/m/${SPLIT_RECORD_NAME}`);
    const redo = await preprocess("m", "lm");
    assert.equal(redo.code, 0, redo.stderr);
    assert.doesNotMatch(redo.stdout, /skipping/);
    await labelsMatchShards("m", "lm");
  } finally {
    await Deno.writeTextFile(data.metaFile, original);
  }
});

Deno.test("class 5: shards without a record (older version) are only skipped when complete", async () => {
  const ok = await preprocess("o", "lo");
  assert.equal(ok.code, 0, ok.stderr);
  await Deno.remove(`${data.root}/o/${SPLIT_RECORD_NAME}`);
  // Complete, with labels: nothing to write, so nothing can mix.
  const skip = await preprocess("o", "lo");
  assert.equal(skip.code, 0, skip.stderr);
  assert.match(skip.stdout, /skipping test: /);
  // With a subset to write, it could mix patients with the unknown split: refused.
  await removeShards("o", "test");
  const shards = await snapshot(`${data.root}/o`);
  const r = await preprocess("o", "lo", ["-r", "7"]);
  assertOneLine(
    r,
    /holds shards without a split record \(ChestXray14_split\.json: an older version or another tool wrote them\)/,
  );
  assert.deepEqual(await snapshot(`${data.root}/o`), shards);
});

Deno.test("class 5: label CSVs of another split in --labels_dir are replaced by this split's", async () => {
  assert.equal((await preprocess("p", "lp", ["-r", "42"])).code, 0);
  // Another dataset directory, same labels directory, another seed: labels now belong to q.
  assert.equal((await preprocess("q", "lp", ["-r", "7"])).code, 0);
  await labelsMatchShards("q", "lp");
  // Back to p (all shards present, skipped): the CSVs are rewritten to match p's shards.
  const back = await preprocess("p", "lp", ["-r", "42"]);
  assert.equal(back.code, 0, back.stderr);
  await labelsMatchShards("p", "lp");
});

Deno.test("class 8: an image named x.v2.png is refused before any shard is written", async () => {
  const tree = await buildOriginalData(24);
  try {
    const dotted = "00029548_010.v2.png";
    await Deno.rename(`${tree.imageDir}/${tree.images[0].image}`, `${tree.imageDir}/${dotted}`);
    const images = tree.images.map((m, i) => (i === 0 ? { ...m, image: dotted } : m));
    await Deno.writeTextFile(tree.metaFile, metaCsv(images));
    const r = await runScript(
      "preprocess_data.ts",
      [
        "--image_dir",
        tree.imageDir,
        "--meta_file",
        tree.metaFile,
        "--dataset_dir",
        tree.datasetDir,
        "--labels_dir",
        tree.labelsDir,
        "--image_size",
        "32",
      ],
      [tree.root],
      { timeoutMs: 120_000 },
    );
    assertOneLine(
      r,
      /^error: image name '00029548_010\.v2\.png' in .*Data_Entry_2017_v2020\.csv cannot be a WebDataset sample key \(keys end at the first dot, so a name needs one dot, before its extension\): rename the file \(e\.g\. 00029548_010_v2\.png\) in --image_dir and the metadata$/,
    );
    const written = await Deno.stat(tree.datasetDir).then(() => true, () => false);
    assert.equal(written, false, "no dataset directory, no shard");
    assert.equal(await Deno.stat(tree.labelsDir).then(() => true, () => false), false);
  } finally {
    await Deno.remove(tree.root, { recursive: true });
  }
});

Deno.test("cleanup of the preprocessing hardening tree", async () => {
  await Deno.remove(data.root, { recursive: true });
});
