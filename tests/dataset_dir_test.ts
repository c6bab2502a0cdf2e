/**
 * Issue 25, classes 3 and 5 and two extras: a dataset directory is written by one preprocessing
 * run at a time, a killed run's shards are never read as part of a later set, a subset is
 * rewritten when more images arrived (and refused when some of its images are gone), a full disk
 * names the file, and label CSVs are bound to their shards. Runs the real scripts on real NIH
 * images (../shared/fixtures/nih_1024; skipped when absent) or the fixture tree, and checks the
 * exit code, the one line printed and that nothing was lost.
 * @module
 */
import assert from "node:assert/strict";
import { listShards, readShard, shardPattern, ShardWriter } from "../lib/data/webdataset.ts";
import { parseDataEntry, readLabelsCsv } from "../lib/data/label_csv.ts";
import { buildOriginalData, META_HEADER, metaCsv } from "./helpers/original_data.ts";
import { patientSplit } from "../lib/data/split.ts";
import {
  collect,
  fixtureDatasetDir,
  runScript,
  type ScriptResult,
  TINY_TRAIN_ARGS,
} from "./helpers/scripts.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const NIH = new URL("../../shared/fixtures/nih_1024/", import.meta.url).pathname;
const nihPresent = await Deno.stat(`${NIH}images`).then(() => true, () => false);
if (!nihPresent) console.log(`skipping the nih_1024 tests: ${NIH} is absent`);

/** The single `error:` line of a failed run (asserts there is exactly one, no stack trace). */
function errorLine(r: ScriptResult, code = 1): string {
  assert.equal(r.code, code, `exit ${r.code}, stderr:\n${r.stderr}`);
  const lines = r.stderr.trim().split("\n").filter((l) => l.startsWith("error:"));
  assert.equal(lines.length, 1, r.stderr);
  assert.doesNotMatch(r.stderr, /^\s+at /m, "no stack trace");
  return lines[0];
}

/** An image directory of the first `count` NIH images (links) and the full metadata file. */
async function nihTree(root: string, count: number): Promise<string> {
  const dir = `${root}/images`;
  await Deno.mkdir(dir, { recursive: true });
  const names = [...Deno.readDirSync(`${NIH}images`)].map((e) => e.name).sort();
  for (const n of names.slice(0, count)) await Deno.symlink(`${NIH}images/${n}`, `${dir}/${n}`);
  return dir;
}

function preprocessArgs(imageDir: string, meta: string, ds: string, labels: string): string[] {
  const sizes = ["--image_size", "32", "--shard_size", "5", "-w", "1"];
  return [
    "--image_dir",
    imageDir,
    "--meta_file",
    meta,
    "--dataset_dir",
    ds,
    "--labels_dir",
    labels,
    ...sizes,
  ];
}

/** Samples read through `listShards` per subset, and their label rows; asserts they agree. */
async function readSets(ds: string, labels: string): Promise<Record<string, string[]>> {
  const out: Record<string, string[]> = {};
  for (const s of ["train", "val", "test"]) {
    const keys: string[] = [];
    for (const p of await listShards(ds, s)) {
      for (const x of await collect(readShard(p))) keys.push(x.key);
    }
    assert.equal(new Set(keys).size, keys.length, `${s}: no key twice`);
    const rows = (await readLabelsCsv(`${labels}/${s}_labels.csv`)).map((r) => r.image);
    assert.deepEqual(keys.map((k) => `${k}.png`), rows, `${s}: shards and labels agree`);
    out[s] = keys;
  }
  return out;
}

const total = (sets: Record<string, string[]>) =>
  Object.values(sets).reduce((n, k) => n + k.length, 0);

Deno.test({
  name: "class 3: two preprocessing runs into one directory: the second is refused, none is lost",
  ignore: !nihPresent,
  async fn() {
    const root = await Deno.makeTempDir({ prefix: "cxr_twin_pre_" });
    try {
      const images = await nihTree(root, 100);
      const args = preprocessArgs(
        images,
        `${NIH}Data_Entry_2017_v2020.csv`,
        `${root}/ds`,
        `${root}/labels`,
      );
      // Started together, as the identical runs 0.1 s apart.
      const [a, b] = await Promise.all([
        runScript("preprocess_data.ts", args, [root]),
        new Promise((r) => setTimeout(r, 100)).then(() =>
          runScript("preprocess_data.ts", args, [root])
        ),
      ]);
      const [done, refused] = a.code === 0 ? [a, b] : [b, a];
      assert.equal(done.code, 0, done.stderr);
      assert.match(
        errorLine(refused),
        /^error: --(dataset|labels)_dir .* is being written by process \d+ \(it holds .*\/\.writer\.lock\); wait for that run to end, or pass another --(dataset|labels)_dir$/,
      );
      // All 100 images in the set, each once, the labels listing exactly them; no temp or lock
      // file left.
      assert.equal(total(await readSets(`${root}/ds`, `${root}/labels`)), 100);
      const left = [...Deno.readDirSync(`${root}/ds`)].map((e) => e.name);
      assert.deepEqual(left.filter((n) => n.startsWith(".")), []);
      // A third run skips every subset: they are complete.
      const third = await runScript("preprocess_data.ts", args, [root]);
      assert.equal(third.code, 0, third.stderr);
      assert.match(third.stdout, /done: train skipped, val skipped, test skipped/);
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  },
});

Deno.test({
  name: "class 3: after kill -9, a rerun writing fewer shards leaves none of the old in its set",
  ignore: !nihPresent,
  async fn() {
    const root = await Deno.makeTempDir({ prefix: "cxr_kill9_" });
    try {
      const all = await nihTree(`${root}/all`, 100);
      const some = await nihTree(`${root}/some`, 60);
      const meta = `${NIH}Data_Entry_2017_v2020.csv`;
      const ds = `${root}/ds`, labels = `${root}/labels`;
      const child = new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", `${ROOT}preprocess_data.ts`, ...preprocessArgs(all, meta, ds, labels)],
        stdout: "null",
        stderr: "null",
      }).spawn();
      const tenth = `${ds}/ChestXray14_train_010.tar`;
      while (!(await Deno.stat(tenth).then(() => true, () => false))) {
        await new Promise((r) => setTimeout(r, 20));
      }
      child.kill("SIGKILL");
      await child.status;
      // The killed run leaves train shards 001–010 (000 is renamed last) and its lock file.
      const rerun = await runScript(
        "preprocess_data.ts",
        [...preprocessArgs(some, meta, ds, labels), "--skip_missing"],
        [root],
      );
      assert.equal(rerun.code, 0, rerun.stderr);
      const sets = await readSets(ds, labels);
      assert.equal(total(sets), 60, "the 60 images present, none of the killed run's others");
      assert.equal((await listShards(ds, "train")).length, 8);
      // Old higher-numbered files are still on disk (nothing deletes what it did not write) but
      // are not read; training says so.
      assert.ok(await Deno.stat(tenth).then(() => true, () => false));
      const known = new Set(sets.train);
      for (const x of await collect(readShard(tenth))) {
        assert.ok(!known.has(x.key), `${x.key} of the killed run is not in the set`);
      }
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  },
});

Deno.test({
  name: "extra: --skip_missing after more images arrived rewrites the subsets; fewer is refused",
  ignore: !nihPresent,
  async fn() {
    const root = await Deno.makeTempDir({ prefix: "cxr_grow_" });
    try {
      const images = await nihTree(root, 60);
      const meta = `${NIH}Data_Entry_2017_v2020.csv`;
      const ds = `${root}/ds`, labels = `${root}/labels`;
      const args = [...preprocessArgs(images, meta, ds, labels), "--skip_missing"];
      assert.equal((await runScript("preprocess_data.ts", args, [root])).code, 0);
      assert.equal(total(await readSets(ds, labels)), 60);
      // The other 40 arrive (as NIH's archives, one by one).
      const names = [...Deno.readDirSync(`${NIH}images`)].map((e) => e.name).sort();
      for (const n of names.slice(60)) await Deno.symlink(`${NIH}images/${n}`, `${images}/${n}`);
      const grown = await runScript("preprocess_data.ts", args, [root]);
      assert.equal(grown.code, 0, grown.stderr);
      assert.match(grown.stdout, /train: 70 images present now, 40 when its shards were written/);
      assert.doesNotMatch(grown.stdout, /skipping/);
      assert.equal(total(await readSets(ds, labels)), 100);
      // Some images gone again: a rewrite would drop them from the shards; refused.
      for (const n of names.slice(60)) await Deno.remove(`${images}/${n}`);
      const before = [...Deno.readDirSync(ds)].map((e) => e.name).sort();
      const shrunk = await runScript("preprocess_data.ts", args, [root]);
      assert.match(
        errorLine(shrunk),
        /^error: the train shards in .*\/ds hold 30 image\(s\) no longer in --image_dir \(e\.g\. \d+_\d+\); restore them, or delete .*\/ds\/ChestXray14_train_\*\.tar to rewrite train from the images present$/,
      );
      assert.deepEqual([...Deno.readDirSync(ds)].map((e) => e.name).sort(), before);
      assert.equal(total(await readSets(ds, labels)), 100, "nothing lost");
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  },
});

Deno.test("class 3: ShardWriter.abort never deletes a finished shard it did not write", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cxr_abort_" });
  try {
    const w = new ShardWriter(shardPattern(dir, "train"), 1);
    const sample = (key: string) => ({
      key,
      png: new Uint8Array(8),
      labels: new Array(14).fill(0),
    });
    for (const k of ["a", "b", "c"]) await w.write(sample(k));
    // Another process's finished shard now sits under the name of this writer's shard 001.
    const other = `${dir}/ChestXray14_train_001.tar`;
    await Deno.writeTextFile(`${dir}/other.tmp`, "another run's shard");
    await Deno.rename(`${dir}/other.tmp`, other);
    await w.abort();
    assert.equal(await Deno.readTextFile(other), "another run's shard");
    const left = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
    assert.deepEqual(left, ["ChestXray14_train_001.tar"], "its own 002 and temps are gone");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("extra: a full disk names the file being written; what was complete is kept", async () => {
  const tree = await buildOriginalData(24);
  try {
    // /dev/full needs all permissions: the helper runs with -A (see tests/helpers/full_disk.ts).
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        `${ROOT}tests/helpers/full_disk.ts`,
        tree.imageDir,
        tree.metaFile,
        tree.datasetDir,
        tree.labelsDir,
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const r = {
      code: out.code,
      stdout: new TextDecoder().decode(out.stdout),
      stderr: new TextDecoder().decode(out.stderr),
    };
    assert.match(
      errorLine(r),
      /^error: no space left on the device while writing .*\/datasets\/ChestXray14_train_000\.tar: free space on that disk \(or write to another directory\) and run again; what was complete before is kept$/,
    );
    // No shard of the failed subset is left under a final name; the split record stays.
    const left = [...Deno.readDirSync(tree.datasetDir)].map((e) => e.name);
    assert.deepEqual(left.filter((n) => n.endsWith(".tar")), []);
    assert.ok(left.includes("ChestXray14_split.json"));
  } finally {
    await Deno.remove(tree.root, { recursive: true });
  }
});

Deno.test("class 5: a label CSV bound to another dataset, or to other images, is refused", async () => {
  const tree = await buildOriginalData(24);
  const save = `${tree.root}/models`;
  try {
    // Names the old label CSV could not hold (a comma) or a spreadsheet would run (a formula).
    // Two images that seed 7 puts in train (the split goes by patient, not by name).
    const split = patientSplit(parseDataEntry(metaCsv(tree.images)), { seed: 7, subsetSize: null });
    const inTrain = new Set(split.train.map((e) => e.image));
    const picks = tree.images.flatMap((m, i) => (inTrain.has(m.image) ? [i] : [])).slice(0, 2);
    const renamed = ["00000999_000,copy.png", "@SUM(1)_000.png"];
    for (const [j, name] of renamed.entries()) {
      const i = picks[j];
      await Deno.rename(`${tree.imageDir}/${tree.images[i].image}`, `${tree.imageDir}/${name}`);
      tree.images[i] = { ...tree.images[i], image: name };
    }
    const meta = [
      META_HEADER,
      ...tree.images.map((m, i) =>
        `"${m.image}",${m.findings},0,${m.patientId},${40 + i},M,PA,2500,2048,0.168,0.168`
      ),
    ].join("\n") + "\n";
    await Deno.writeTextFile(tree.metaFile, meta);
    const labels = `${tree.root}/labels`;
    const pre = (ds: string, seed: string) =>
      runScript("preprocess_data.ts", [
        ...preprocessArgs(tree.imageDir, tree.metaFile, `${tree.root}/${ds}`, labels),
        "-r",
        seed,
      ], [tree.root]);
    assert.equal((await pre("p", "42")).code, 0);
    // Another dataset, the same labels directory: the CSVs now belong to q.
    assert.equal((await pre("q", "7")).code, 0);
    const train = (ds: string, labelsDir: string) =>
      runScript("train_model.ts", [
        ...TINY_TRAIN_ARGS,
        // wasm: the native backend's inference refuses a batch of one image (a separate bug).
        "--backend",
        "wasm",
        "-b",
        "4",
        "-e",
        "1",
        "--loss",
        "weighted_bce",
        "--dataset_dir",
        ds,
        "--labels_dir",
        labelsDir,
        "--save_dir",
        save,
      ], [tree.root]);
    const csv = `${labels}/train_labels.csv`;
    const kept = await Deno.readTextFile(csv);
    const wrong = await train(`${tree.root}/p`, labels);
    assert.match(
      errorLine(wrong),
      /^error: .*\/labels\/train_labels\.csv does not belong to the train shards in .*\/p: it is not the label file written with them \(ChestXray14_split\.json there records another; preprocessing into another --dataset_dir with this --labels_dir replaces it\): pass the --labels_dir that preprocess_data\.ts wrote with --dataset_dir .*\/p, or run it again with both directories to rewrite the labels$/,
    );
    assert.equal(await Deno.readTextFile(csv), kept, "the labels are untouched");
    const saved = await Array.fromAsync(Deno.readDir(save)).catch(() => []);
    assert.deepEqual(saved, [], "no run started");

    // Shards without a record (the original tool's) and 3 unrelated rows against 50 images.
    const legacy = await fixtureDatasetDir(["train", "val"]);
    const few = `${tree.root}/few`;
    await Deno.mkdir(few);
    const rows = (await Deno.readTextFile(csv)).split("\n").slice(0, 4).join("\n") + "\n";
    await Deno.writeTextFile(`${few}/train_labels.csv`, rows);
    try {
      const unrelated = await train(legacy, few);
      assert.match(
        errorLine(unrelated),
        /^error: .*\/few\/train_labels\.csv does not match the train shards in .*: \(3 row\(s\), the shards hold 50 image\(s\); \d+_\d+\.png is not listed\)|does not match the train shards in .* \(3 row\(s\), the shards hold 50 image\(s\); .*is not listed\): pass the --labels_dir/,
      );
    } finally {
      await Deno.remove(legacy, { recursive: true });
    }

    // The tool's own output, names with a comma and a formula included, trains.
    const ok = await train(`${tree.root}/q`, labels);
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(kept, /\n"00000999_000,copy\.png",/);
    assert.match(kept, /\n'@SUM\(1\)_000\.png,/);
  } finally {
    await Deno.remove(tree.root, { recursive: true });
  }
});
