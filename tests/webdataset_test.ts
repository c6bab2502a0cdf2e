import assert from "node:assert/strict";
import { NUM_CLASSES } from "../config.ts";
import { UserError } from "../lib/util/errors.ts";
import { decodeImage } from "../lib/data/images.ts";
import { readLabelsCsv } from "../lib/data/label_csv.ts";
import { Rng } from "../lib/util/rng.ts";
import { listTar, readTar } from "../lib/data/tar.ts";
import {
  checkShards,
  listShards,
  readShard,
  readShards,
  type Sample,
  sampleKeyFor,
  shardPattern,
  ShardWriter,
  splitMemberName,
} from "../lib/data/webdataset.ts";
import { FIXTURE_SHARD } from "./helpers/original_data.ts";
import { collect } from "./helpers/scripts.ts";
import { fixtureShardRenamed } from "./helpers/shards.ts";

const FIXTURES = new URL("./fixtures/nih_subset/", import.meta.url).pathname;
const SHARD = FIXTURE_SHARD;

const original = await collect(readShard(SHARD));
const csv = await readLabelsCsv(`${FIXTURES}labels.csv`);

Deno.test("the original tool's shard: 50 keys, labels equal labels.csv, 256×256 images", async () => {
  assert.equal(original.length, 50);
  assert.deepEqual(original.map((s) => `${s.key}.png`), csv.map((r) => r.image));
  for (let i = 0; i < original.length; i++) {
    assert.equal(original[i].labels.length, NUM_CLASSES);
    assert.deepEqual(Array.from(original[i].labels), Array.from(csv[i].labels), original[i].key);
    const img = await decodeImage(original[i].png, original[i].source);
    assert.equal(img.width, 256);
    assert.equal(img.height, 256);
  }
  assert.ok(original.some((s) => s.labels.some((v) => v === 1)), "some sample has a finding");
  assert.equal(original[0].source, `${SHARD}:00029548_010.png`);
});

Deno.test("checkShards and listTar read headers only", async () => {
  assert.equal(await checkShards([SHARD]), 50);
  // Two shards count together; one key in two shards is refused (issue 25, class 6).
  const dir = await Deno.makeTempDir({ prefix: "cxr_two_" });
  await fixtureShardRenamed(`${dir}/b.tar`, "_b");
  assert.equal(await checkShards([SHARD, `${dir}/b.tar`]), 100);
  await assert.rejects(() => checkShards([SHARD, SHARD]), /sample '00029548_010' appears twice/);
  await Deno.remove(dir, { recursive: true });
  const members = await listTar(SHARD);
  assert.equal(members.length, 100);
  assert.equal(members[0].name, "00029548_010.png");
  assert.equal(members[1].name, "00029548_010.pyd");
  assert.equal(members[1].size, 259);
});

Deno.test("splitMemberName follows webdataset's key/extension rule", () => {
  assert.deepEqual(splitMemberName("00000001_000.png"), { key: "00000001_000", ext: "png" });
  assert.deepEqual(splitMemberName("dir/a.b.PYD"), { key: "dir/a", ext: "b.pyd" });
  assert.equal(splitMemberName("README"), null);
  // Image names that can be keys: one dot, before the extension.
  assert.equal(sampleKeyFor("00000001_000.png"), "00000001_000");
  assert.equal(sampleKeyFor("dir.d/a.png"), "dir.d/a");
  for (const bad of ["x.v2.png", "noext", ".png", "x."]) assert.equal(sampleKeyFor(bad), null, bad);
});

Deno.test("round trip: ShardWriter → readShards gives the same samples, .pyd byte-identical", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const writer = new ShardWriter(shardPattern(dir, "train"), 16);
    for (const s of original) await writer.write(s);
    const shards = await writer.close();
    assert.deepEqual(shards.map((p) => p.slice(dir.length + 1)), [
      "ChestXray14_train_000.tar",
      "ChestXray14_train_001.tar",
      "ChestXray14_train_002.tar",
      "ChestXray14_train_003.tar",
    ]);
    assert.deepEqual(await listShards(dir, "train"), shards);
    assert.equal(await checkShards(shards), 50);
    const back = await collect(readShards(shards));
    assert.equal(back.length, 50);
    for (let i = 0; i < 50; i++) {
      assert.equal(back[i].key, original[i].key);
      assert.deepEqual(back[i].png, original[i].png);
      assert.deepEqual(back[i].labels, original[i].labels);
    }
    // Our .pyd members are byte-identical to the original tool's.
    const ours = new Map<string, Uint8Array>();
    for (const p of shards) for await (const m of readTar(p)) ours.set(m.name, m.data);
    for await (const m of readTar(SHARD)) assert.deepEqual(ours.get(m.name), m.data, m.name);
    // No temporary files remain.
    const names = [];
    for await (const e of Deno.readDir(dir)) names.push(e.name);
    assert.equal(names.length, 4);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("an interrupted ShardWriter never leaves shard 000; abort removes everything", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const writer = new ShardWriter(shardPattern(dir, "val"), 10);
    for (const s of original.slice(0, 25)) await writer.write(s);
    // Shards 000 and 001 are complete, but 000 is renamed only by close().
    assert.deepEqual(await listShards(dir, "val"), [`${dir}/ChestXray14_val_001.tar`]);
    await writer.abort();
    const left = [];
    for await (const e of Deno.readDir(dir)) left.push(e.name);
    assert.deepEqual(left, []);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("readShards shuffles deterministically for a seed, keeping every sample", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const writer = new ShardWriter(shardPattern(dir, "train"), 7);
    for (const s of original) await writer.write(s);
    const shards = await writer.close();
    const keys = async (seed: number, buf = 20) =>
      (await collect(readShards(shards, { shuffle: new Rng(seed), shuffleBuffer: buf }))).map(
        (s: Sample) => s.key,
      );
    const a = await keys(1);
    const b = await keys(1);
    const c = await keys(2);
    assert.deepEqual(a, b);
    assert.notDeepEqual(a, c);
    assert.notDeepEqual(a, original.map((s) => s.key));
    assert.deepEqual([...a].sort(), original.map((s) => s.key).sort());
    assert.deepEqual([...(await keys(3, 1))].sort(), original.map((s) => s.key).sort());
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("GNU long-name and pax headers (Python tarfile) are read", async () => {
  const key = "nested/dir/" + "long_sample_key_".repeat(7) + "00000001_000";
  for (const name of ["gnu_longname.tar", "pax_longname.tar"]) {
    const path = new URL(`./fixtures/tar/${name}`, import.meta.url).pathname;
    const samples = await collect(readShard(path));
    assert.equal(samples.length, 1, name);
    assert.equal(samples[0].key, key);
    assert.deepEqual(Array.from(samples[0].labels), [1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
    assert.equal((await decodeImage(samples[0].png, samples[0].source)).width, 19);
    assert.equal(await checkShards([path]), 1);
    assert.deepEqual((await listTar(path)).map((m) => m.name), [`${key}.png`, `${key}.pyd`]);
  }
});

Deno.test("listShards sorts by index and names dir and subset when there are none", async () => {
  const dir = await Deno.makeTempDir();
  try {
    for (const n of ["ChestXray14_test_010.tar", "ChestXray14_test_002.tar", "x.tar"]) {
      await Deno.writeFile(`${dir}/${n}`, new Uint8Array(0));
    }
    await Deno.writeFile(`${dir}/.ChestXray14_test_000.tar.1.tmp`, new Uint8Array(0));
    assert.deepEqual(await listShards(dir, "test"), [
      `${dir}/ChestXray14_test_002.tar`,
      `${dir}/ChestXray14_test_010.tar`,
    ]);
    await assert.rejects(
      () => listShards(dir, "train"),
      (e: Error) =>
        e instanceof UserError && e.message.includes(dir) && e.message.includes("train"),
    );
    await assert.rejects(() => listShards(`${dir}/nope`, "train"), /not found/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a truncated or corrupt shard gives an error naming the shard and member", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const bytes = await Deno.readFile(SHARD);
    const members = await listTar(SHARD);
    const third = members[2]; // 00029548_011.png
    const cut = `${dir}/ChestXray14_val_000.tar`;
    await Deno.writeFile(cut, bytes.subarray(0, third.offset + 1000));
    const isNamed = (e: Error) =>
      e instanceof UserError && e.message.includes(cut) && e.message.includes(third.name) &&
      /truncated/.test(e.message);
    await assert.rejects(() => collect(readShard(cut)), isNamed);
    await assert.rejects(() => checkShards([cut]), isNamed);

    // Cut exactly after a member: the end-of-archive marker is missing.
    const atEnd = `${dir}/ChestXray14_val_001.tar`;
    await Deno.writeFile(atEnd, bytes.subarray(0, members[3].offset + 512));
    await assert.rejects(
      () => collect(readShard(atEnd)),
      (e: Error) => e instanceof UserError && e.message.includes(members[3].name),
    );

    const bad = `${dir}/ChestXray14_val_002.tar`;
    const copy = bytes.slice();
    copy[third.offset - 512 + 10] ^= 0x55; // inside the third header's name
    await Deno.writeFile(bad, copy);
    await assert.rejects(
      () => collect(readShard(bad)),
      (e: Error) =>
        e instanceof UserError && e.message.includes(bad) && /checksum/.test(e.message) &&
        e.message.includes(members[1].name),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

const python = "/usr/bin/python3";
let hasNumpy = false;
try {
  const r = await new Deno.Command(python, { args: ["-c", "import numpy"], stderr: "null" })
    .output();
  hasNumpy = r.success;
} catch { /* no python */ }
if (!hasNumpy) {
  console.log("skipping the Python tarfile/pickle check: /usr/bin/python3 with numpy absent");
}

Deno.test({
  name: "Python's tarfile and pickle read our shards (optional: needs python3 + numpy)",
  ignore: !hasNumpy,
  fn: async () => {
    const dir = await Deno.makeTempDir();
    try {
      const writer = new ShardWriter(shardPattern(dir, "test"), 100);
      for (const s of original.slice(0, 5)) await writer.write(s);
      const [path] = await writer.close();
      const script = `
import sys, tarfile, pickle, json
out = []
with tarfile.open(sys.argv[1], "r|*") as t:
    for m in t:
        data = t.extractfile(m).read()
        if m.name.endswith(".pyd"):
            a = pickle.loads(data)
            out.append([m.name, str(a.dtype), a.tolist()])
        else:
            out.append([m.name, len(data)])
print(json.dumps(out))`;
      const r = await new Deno.Command(python, { args: ["-c", script, path] }).output();
      assert.ok(r.success, new TextDecoder().decode(r.stderr));
      const got = JSON.parse(new TextDecoder().decode(r.stdout));
      assert.equal(got.length, 10);
      for (let i = 0; i < 5; i++) {
        assert.deepEqual(got[2 * i], [`${original[i].key}.png`, original[i].png.length]);
        assert.deepEqual(got[2 * i + 1], [
          `${original[i].key}.pyd`,
          "float64",
          Array.from(original[i].labels),
        ]);
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
