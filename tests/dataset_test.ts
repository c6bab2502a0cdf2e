import assert from "node:assert/strict";
import { NUM_CLASSES } from "../config.ts";
import { type Batch, batches, loadSubset } from "../lib/data/dataset.ts";
import { UserError } from "../lib/util/errors.ts";
import { decodeImage } from "../lib/data/images.ts";
import { readLabelsCsv } from "../lib/data/label_csv.ts";
import { Rng } from "../lib/util/rng.ts";
import { readShard, type Sample } from "../lib/data/webdataset.ts";
import { FIXTURE_SHARD } from "./helpers/original_data.ts";
import { collect } from "./helpers/scripts.ts";

const FIXTURES = new URL("./fixtures/nih_subset/", import.meta.url).pathname;
const SHARD = FIXTURE_SHARD;

Deno.test("batches packs the original shard into [n,256,256,3] with its labels", async () => {
  const csv = await readLabelsCsv(`${FIXTURES}labels.csv`);
  const samples = await collect(readShard(SHARD));
  const got: Batch[] = await collect(batches(readShard(SHARD), { batchSize: 8, workers: 3 }));
  assert.deepEqual(got.map((b) => b.n), [8, 8, 8, 8, 8, 8, 2]);
  const keys = got.flatMap((b) => b.keys);
  assert.deepEqual(keys.map((k) => `${k}.png`), csv.map((r) => r.image));
  for (const [bi, b] of got.entries()) {
    assert.equal(b.height, 256);
    assert.equal(b.width, 256);
    assert.equal(b.images.length, b.n * 256 * 256 * 3);
    assert.equal(b.labels.length, b.n * NUM_CLASSES);
    for (let i = 0; i < b.n; i++) {
      const k = bi * 8 + i;
      assert.deepEqual(
        Array.from(b.labels.subarray(i * NUM_CLASSES, (i + 1) * NUM_CLASSES)),
        Array.from(csv[k].labels),
      );
    }
  }
  // Spot-check pixels against a direct decode.
  const last = got[6];
  const direct = await decodeImage(samples[49].png);
  assert.deepEqual(last.images.subarray(256 * 256 * 3), direct.data);
});

Deno.test("batches honours limit", async () => {
  const got = await collect(batches(readShard(SHARD), { batchSize: 4, workers: 2, limit: 10 }));
  assert.deepEqual(got.map((b) => b.n), [4, 4, 2]);
});

Deno.test("batches rejects a batch mixing image sizes, naming the sample", async () => {
  const { default: sharp } = await import("sharp");
  const png = async (w: number) =>
    new Uint8Array(
      await sharp({ create: { width: w, height: w, channels: 3, background: "#808080" } }).png()
        .toBuffer(),
    );
  async function* samples(): AsyncGenerator<Sample> {
    const labels = new Float32Array(NUM_CLASSES);
    yield { key: "a", png: await png(16), labels, source: "s.tar:a.png" };
    yield { key: "b", png: await png(16), labels, source: "s.tar:b.png" };
    yield { key: "c", png: await png(20), labels, source: "s.tar:c.png" };
  }
  await assert.rejects(
    () => collect(batches(samples(), { batchSize: 8, workers: 2 })),
    (e: Error) => e instanceof UserError && /^s\.tar:c\.png: image is 20×20/.test(e.message),
  );
});

Deno.test("batches reports an undecodable PNG naming shard and member", async () => {
  async function* samples(): AsyncGenerator<Sample> {
    for await (const s of readShard(SHARD)) {
      yield { ...s, png: s.png.subarray(0, 200) };
      return;
    }
  }
  await assert.rejects(
    () => collect(batches(samples(), { batchSize: 2, workers: 1 })),
    (e: Error) =>
      e instanceof UserError &&
      e.message.startsWith(`${SHARD}:00029548_010.png: cannot decode image`),
  );
});

Deno.test("loadSubset finds the shards, counts samples and shuffles per seed", async () => {
  const subset = await loadSubset({ datasetDir: FIXTURES, subset: "val", limit: 20 });
  assert.deepEqual(subset.shards, [SHARD]);
  assert.equal(subset.size, 20);
  const keys = async (seed: number) =>
    (await collect(subset.batches({ batchSize: 8, workers: 2, shuffle: new Rng(seed) })))
      .flatMap((b) => b.keys);
  const a = await keys(5);
  assert.equal(a.length, 20);
  assert.deepEqual(a, await keys(5));
  assert.notDeepEqual(a, await keys(6));
  await assert.rejects(() => loadSubset({ datasetDir: FIXTURES, subset: "train" }), UserError);
});
