import assert from "node:assert/strict";
import { USE_COLUMNS } from "../config.ts";
import { decodeImage, pngBitDepth } from "../lib/data/images.ts";
import { readLabelsCsv } from "../lib/data/label_csv.ts";
import { encodeLabelsPyd } from "../lib/torch/pickle.ts";
import { readTar } from "../lib/data/tar.ts";
import { listShards, readShard, type Sample } from "../lib/data/webdataset.ts";
import { buildOriginalData, FIXTURE_SHARD, type OriginalData } from "./helpers/original_data.ts";

const SCRIPT = new URL("../preprocess_data.ts", import.meta.url).pathname;
const SUBSETS = ["train", "val", "test"] as const;
const LDD = "/usr/bin/ldd";
// sharp's libc detection reads ldd; without it, it falls back to a sys call.
const hasLdd = await Deno.stat(LDD).then(() => true, () => false);

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs the real script with the scoped permissions the deno.json task uses. */
async function preprocess(d: OriginalData, args: string[], out = d): Promise<Run> {
  const perms = [
    `--allow-read=${d.root}${hasLdd ? `,${LDD}` : ""}`,
    `--allow-write=${d.root}`,
    "--allow-ffi",
    "--allow-env=npm_package_config_libvips,MALLOC_ARENA_MAX",
    ...(hasLdd ? [] : ["--allow-sys"]),
  ];
  const r = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--no-prompt",
      ...perms,
      SCRIPT,
      "--image_dir",
      d.imageDir,
      "--meta_file",
      d.metaFile,
      "--labels_dir",
      out.labelsDir,
      "--dataset_dir",
      out.datasetDir,
      "--workers",
      "2",
      ...args,
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: r.code, stdout: dec.decode(r.stdout), stderr: dec.decode(r.stderr) };
}

/** A clean user error: exit code, one `error:` line naming the problem, no stack trace. */
function assertUserError(r: Run, pattern: RegExp, code = 1): void {
  assert.equal(r.code, code, `exit code; stderr:\n${r.stderr}`);
  const errors = r.stderr.split("\n").filter((l) => l.startsWith("error: "));
  assert.equal(errors.length, 1, r.stderr);
  assert.match(errors[0], pattern);
  assert.doesNotMatch(r.stderr, /^\s+at /m, "no stack trace");
}

async function collect(path: string): Promise<Sample[]> {
  const out: Sample[] = [];
  for await (const s of readShard(path)) out.push(s);
  return out;
}

async function readSubset(dir: string, subset: string): Promise<Sample[]> {
  const out: Sample[] = [];
  for (const p of await listShards(dir, subset)) out.push(...await collect(p));
  return out;
}

async function dirNames(dir: string): Promise<string[]> {
  const names: string[] = [];
  for await (const e of Deno.readDir(dir)) names.push(e.name);
  return names.sort();
}

const patientOf = (image: string) => String(Number(image.split("_")[0]));

const data = await buildOriginalData(50);
const originalPixels = new Map<string, Uint8Array>();
for await (const s of readShard(FIXTURE_SHARD)) {
  originalPixels.set(s.key, (await decodeImage(s.png)).data);
}
const first = await preprocess(data, ["--shard_size", "10"]);

Deno.test("preprocess_data.ts: patient split, label CSVs and shards from an NIH-like tree", async () => {
  assert.equal(first.code, 0, first.stderr);
  assert.match(first.stdout, /read 50 images of 21 patients/);
  const byImage = new Map(data.images.map((m) => [m.image, m]));
  const owner = new Map<string, string>();
  const patients: Record<string, number> = {};
  let total = 0;
  for (const subset of SUBSETS) {
    const csvPath = `${data.labelsDir}/${subset}_labels.csv`;
    const text = await Deno.readTextFile(csvPath);
    assert.ok(text.startsWith(`${USE_COLUMNS.join(",")}\n`), "original CSV header");
    assert.match(text, /^(\S+\.png(,[01]){14}\n)+$/m);
    const rows = await readLabelsCsv(csvPath);
    total += rows.length;
    const ids = new Set(rows.map((r) => patientOf(r.image)));
    patients[subset] = ids.size;
    for (const id of ids) {
      assert.ok(!owner.has(id), `patient ${id} in ${owner.get(id)} and ${subset}`);
      owner.set(id, subset);
    }
    for (const r of rows) assert.deepEqual(Array.from(r.labels), byImage.get(r.image)!.labels);

    // Shards: same samples as the CSV, in order; 8-bit grey 256×256 PNG; original .pyd bytes.
    const shards = await listShards(data.datasetDir, subset);
    assert.equal(shards.length, Math.ceil(rows.length / 10));
    const samples = await readSubset(data.datasetDir, subset);
    assert.deepEqual(samples.map((s) => `${s.key}.png`), rows.map((r) => r.image));
    for (const [i, s] of samples.entries()) {
      assert.deepEqual(Array.from(s.labels), Array.from(rows[i].labels));
      assert.equal(pngBitDepth(s.png), 8);
      assert.equal(s.png[25], 0, "grayscale colour type");
      const img = await decodeImage(s.png, s.source);
      assert.equal(img.width, 256);
      assert.equal(img.height, 256);
      // 256 → 1024 → 256 must give back the original picture closely.
      const orig = originalPixels.get(s.key)!;
      let diff = 0;
      for (let k = 0; k < orig.length; k++) diff += Math.abs(orig[k] - img.data[k]);
      assert.ok(diff / orig.length < 4, `${s.key}: mean abs diff ${diff / orig.length}`);
    }
    for (const p of shards) {
      for await (const m of readTar(p)) {
        if (!m.name.endsWith(".pyd")) continue;
        const key = m.name.slice(0, -4);
        assert.deepEqual(m.data, encodeLabelsPyd(byImage.get(`${key}.png`)!.labels));
      }
    }
  }
  assert.equal(total, 50);
  assert.equal(owner.size, 21);
  // 21 patients: test ceil(4.2) = 5, val ceil(16 * 0.125) = 2, train 14.
  assert.deepEqual(patients, { train: 14, val: 2, test: 5 });
  assert.ok((await dirNames(data.datasetDir)).every((n) => n.startsWith("ChestXray14_")));
});

Deno.test("preprocess_data.ts is deterministic for a seed; another seed splits differently", async () => {
  const out = (name: string) => ({
    ...data,
    labelsDir: `${data.root}/${name}/labels`,
    datasetDir: `${data.root}/${name}/datasets`,
  });
  const again = out("again");
  const r = await preprocess(data, ["--shard_size", "10", "-r", "42"], again);
  assert.equal(r.code, 0, r.stderr);
  for (const subset of SUBSETS) {
    assert.equal(
      await Deno.readTextFile(`${again.labelsDir}/${subset}_labels.csv`),
      await Deno.readTextFile(`${data.labelsDir}/${subset}_labels.csv`),
    );
    const a = await readSubset(data.datasetDir, subset);
    const b = await readSubset(again.datasetDir, subset);
    assert.deepEqual(
      b.map((s) => [s.key, s.png, s.labels]),
      a.map((s) => [s.key, s.png, s.labels]),
    );
  }
  const other = out("other");
  const r2 = await preprocess(data, ["--random_seed", "7"], other);
  assert.equal(r2.code, 0, r2.stderr);
  assert.notEqual(
    await Deno.readTextFile(`${other.labelsDir}/test_labels.csv`),
    await Deno.readTextFile(`${data.labelsDir}/test_labels.csv`),
  );
  assert.equal((await listShards(other.datasetDir, "train")).length, 1);
});

Deno.test("preprocess_data.ts skips subsets whose first shard exists, saying so", async () => {
  const before = (await Deno.stat(`${data.datasetDir}/ChestXray14_train_000.tar`)).mtime;
  const r = await preprocess(data, ["--shard_size", "10"]);
  assert.equal(r.code, 0, r.stderr);
  for (const subset of SUBSETS) {
    assert.match(r.stdout, new RegExp(`skipping ${subset}: .*ChestXray14_${subset}_000\\.tar`));
  }
  const after = (await Deno.stat(`${data.datasetDir}/ChestXray14_train_000.tar`)).mtime;
  assert.deepEqual(after, before);
});

Deno.test("preprocess_data.ts --subset_size draws N patients", async () => {
  const out = { ...data, labelsDir: `${data.root}/s/labels`, datasetDir: `${data.root}/s/ds` };
  const r = await preprocess(data, ["-s", "10"], out);
  assert.equal(r.code, 0, r.stderr);
  const counts: number[] = [];
  const all = new Set<string>();
  for (const subset of SUBSETS) {
    const rows = await readLabelsCsv(`${out.labelsDir}/${subset}_labels.csv`);
    const ids = new Set(rows.map((x) => patientOf(x.image)));
    ids.forEach((id) => all.add(id));
    counts.push(ids.size);
  }
  assert.deepEqual(counts, [7, 1, 2]);
  assert.equal(all.size, 10);
  assertUserError(await preprocess(data, ["-s", "22"], out), /--subset_size 22.*21 patients/, 2);
});

Deno.test("preprocess_data.ts --official_split takes the test set from test_list.txt", async () => {
  const testPatients = new Set(["29548", "30183", "30709"]);
  const test = data.images.filter((m) => testPatients.has(m.patientId)).map((m) => m.image);
  const trainVal = data.images.filter((m) => !testPatients.has(m.patientId)).map((m) => m.image);
  await Deno.writeTextFile(`${data.metaDir}/test_list.txt`, test.join("\n") + "\n");
  await Deno.writeTextFile(`${data.metaDir}/train_val_list.txt`, trainVal.join("\n") + "\n");
  const out = { ...data, labelsDir: `${data.root}/o/labels`, datasetDir: `${data.root}/o/ds` };
  const r = await preprocess(data, ["--official_split"], out);
  assert.equal(r.code, 0, r.stderr);
  const rows = await readLabelsCsv(`${out.labelsDir}/test_labels.csv`);
  assert.deepEqual(rows.map((x) => x.image), test);
  const val = await readLabelsCsv(`${out.labelsDir}/val_labels.csv`);
  const train = await readLabelsCsv(`${out.labelsDir}/train_labels.csv`);
  const valIds = new Set(val.map((x) => patientOf(x.image)));
  assert.equal(valIds.size, 3); // ceil(18 * 0.125)
  assert.ok(train.every((x) => !valIds.has(patientOf(x.image)) && !test.includes(x.image)));
  assert.equal(train.length + val.length + rows.length, 50);
});

Deno.test("preprocess_data.ts: one-line errors for each bad input", async (t) => {
  const d = await buildOriginalData(8);
  try {
    await t.step("missing metadata file", async () => {
      const r = await preprocess({ ...d, metaFile: `${d.metaDir}/nope.csv` }, []);
      assertUserError(r, /metadata file not found: .*nope\.csv/);
    });
    await t.step("missing image directory", async () => {
      const r = await preprocess({ ...d, imageDir: `${d.root}/no_images` }, []);
      assertUserError(r, /image directory not found: .*no_images/);
    });
    await t.step("CSV without the needed columns", async () => {
      const bad = `${d.metaDir}/bad.csv`;
      await Deno.writeTextFile(bad, "Image Index,Labels\n00029548_010.png,Mass\n");
      const r = await preprocess({ ...d, metaFile: bad }, []);
      assertUserError(r, /bad\.csv: missing columns Finding Labels, Patient ID/);
    });
    await t.step("unknown label", async () => {
      const bad = `${d.metaDir}/flu.csv`;
      const text = await Deno.readTextFile(d.metaFile);
      await Deno.writeTextFile(bad, text.replace(/(00029548_012\.png),[^,]+,/, "$1,Mass|Flu,"));
      const r = await preprocess({ ...d, metaFile: bad }, []);
      assertUserError(r, /flu\.csv row 4 \(00029548_012\.png\): unknown label 'Flu'/);
    });
    await t.step("bad flag value", async () => {
      assertUserError(await preprocess(d, ["--shard_size", "0"]), /--shard_size/, 2);
      assertUserError(await preprocess(d, ["--bogus"]), /bogus/, 2);
    });
    await t.step("missing image; --skip_missing counts it", async () => {
      await Deno.rename(`${d.imageDir}/00029548_011.png`, `${d.root}/moved.png`);
      const r = await preprocess(d, []);
      assertUserError(r, /image not found: .*00029548_011\.png.*--skip_missing/);
      const ok = await preprocess(d, ["--skip_missing"]);
      assert.equal(ok.code, 0, ok.stderr);
      assert.match(ok.stderr, /warning: image not found, skipped: .*00029548_011\.png/);
      assert.match(ok.stderr, /warning: 1 image\(s\) skipped/);
      let rows = 0;
      for (const s of SUBSETS) {
        const csv = await readLabelsCsv(`${d.labelsDir}/${s}_labels.csv`);
        assert.ok(csv.every((x) => x.image !== "00029548_011.png"));
        rows += csv.length;
      }
      assert.equal(rows, 7);
      await Deno.rename(`${d.root}/moved.png`, `${d.imageDir}/00029548_011.png`);
      await Deno.remove(d.labelsDir, { recursive: true });
      await Deno.remove(d.datasetDir, { recursive: true });
    });
    await t.step("undecodable image; nothing half-written is left", async () => {
      const png = await Deno.readFile(`${d.imageDir}/00029548_012.png`);
      await Deno.writeFile(`${d.imageDir}/00029548_012.png`, png.subarray(0, 3000));
      const r = await preprocess(d, ["--shard_size", "1"]);
      assertUserError(r, /00029548_012\.png: cannot decode image/);
      // The failing subset left neither shard 000 nor temporary files.
      const left = await dirNames(d.datasetDir);
      assert.ok(left.every((n) => !n.endsWith(".tmp")), left.join(" "));
      const failed = SUBSETS.filter((s) => !left.includes(`ChestXray14_${s}_000.tar`));
      assert.ok(failed.length >= 1);
      assert.ok(left.every((n) => !failed.some((s) => n.includes(`_${s}_`))), left.join(" "));
      // Completed with the same split parameters (the record beside the shards must match).
      const ok = await preprocess(d, ["--skip_missing", "--shard_size", "1"]);
      assert.equal(ok.code, 0, ok.stderr);
      assert.match(ok.stderr, /warning: skipped: .*00029548_012\.png: cannot decode image/);
    });
  } finally {
    await Deno.remove(d.root, { recursive: true });
  }
});

Deno.test("preprocess_data.ts -h lists every flag with its default", async () => {
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--no-prompt", SCRIPT, "-h"],
    stdout: "piped",
  }).output();
  const help = new TextDecoder().decode(r.stdout);
  assert.equal(r.code, 0);
  for (
    const flag of [
      "-r, --random_seed",
      "-s, --subset_size",
      "--image_dir",
      "--meta_file",
      "--labels_dir",
      "--dataset_dir",
      "--image_size",
      "--shard_size",
      "--official_split",
      "-w, --workers",
      "--skip_missing",
    ]
  ) assert.ok(help.includes(flag), flag);
  assert.match(help, /default: 42/);
  assert.match(help, /default: 1000/);
});

Deno.test("cleanup of the preprocessing tree", async () => {
  await Deno.remove(data.root, { recursive: true });
});
