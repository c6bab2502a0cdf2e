/**
 * Issue 25, class 1: no input can cost memory beyond what its content needs. Checkpoints are
 * zip archives whose members are inflated lazily, only the ones the pickle references, each to
 * the size its storage needs, and whose entries may not share bytes; shard members are bounded
 * before they are read. Each case builds the hostile file, runs the reader or the real script,
 * and checks the exit code, the one line printed and the time and memory it took.
 * @module
 */
import assert from "node:assert/strict";
import { oversizedStorage, zipBomb } from "./helpers/zip_bomb.ts";
import { runScript } from "./helpers/scripts.ts";
import { loadCheckpoint, readTorchFile } from "../lib/torch/torch_checkpoint.ts";
import { tarHeader, TarWriter } from "../lib/data/tar.ts";
import { checkShards, readShard } from "../lib/data/webdataset.ts";
import { encodeLabelsPyd } from "../lib/torch/pickle.ts";
import { UserError } from "../lib/util/errors.ts";
import { readImageFile } from "../lib/data/images.ts";

const TINY = new URL("./fixtures/torch/tiny_zip.pt", import.meta.url).pathname;
const PNG = new URL("./fixtures/dicom/small.png", import.meta.url).pathname;

/** The single `error:` line of a failed run (asserts there is exactly one, no stack trace). */
function errorLine(r: { code: number; stderr: string }, code: number): string {
  assert.equal(r.code, code, `exit ${r.code}, stderr:\n${r.stderr}`);
  const lines = r.stderr.trim().split("\n").filter((l) => l.startsWith("error:"));
  assert.equal(lines.length, 1, r.stderr);
  assert.ok(!/\n\s+at /.test(r.stderr), `no stack trace:\n${r.stderr}`);
  return lines[0];
}

Deno.test("class 1: eight zip entries on one 1 GiB deflate stream are refused before inflating", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cxr_bomb_" });
  try {
    // The file: 1.2 MB, eight directory entries sharing one stream of 1 GiB of zeros.
    const bomb = zipBomb(1024, 8);
    assert.ok(bomb.length < 1.5e6, `${bomb.length} bytes`);
    const path = `${dir}/bomb_model.pt`;
    await Deno.writeFile(path, bomb);
    const t0 = performance.now();
    const r = await runScript("validate_model.ts", [
      "-s",
      path,
      "--image_size",
      "48",
      "--backend",
      "wasm",
      "--images",
      PNG,
    ], [dir]);
    const line = errorLine(r, 1);
    assert.match(
      line,
      /bomb_model\.pt is not a readable zip archive \(members archive\/data\/bomb0 and archive\/data\/bomb1 overlap at byte \d+\)/,
    );
    // Before: ~10.7 GB of RSS and 37 s; the directory alone decides it now.
    assert.ok(performance.now() - t0 < 20_000);
    assert.deepEqual(await Deno.readFile(path), bomb, "the input is untouched");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("class 1: a big member the pickle does not reference is never inflated", () => {
  const file = zipBomb(1024, 1); // one unreferenced member declaring 1 GiB
  const rss0 = Deno.memoryUsage().rss;
  const t0 = performance.now();
  const value = readTorchFile(file, "unreferenced.pt") as Map<string, { data: ArrayLike<number> }>;
  const ms = performance.now() - t0;
  const grew = Deno.memoryUsage().rss - rss0;
  assert.ok(grew < 200e6, `RSS grew by ${grew} bytes`);
  assert.ok(ms < 3000, `${ms} ms`); // inflating 1 GiB takes several seconds
  // The checkpoint itself reads exactly as the plain file does.
  const plain = readTorchFile(Deno.readFileSync(TINY), TINY) as typeof value;
  assert.deepEqual([...value.keys()], [...plain.keys()]);
  for (const [k, t] of plain) assert.deepEqual(value.get(k)!.data, t.data, k);
});

Deno.test("class 1: a storage member larger than its storage is refused before inflating", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cxr_bomb_" });
  try {
    const path = `${dir}/big_storage.pt`;
    await Deno.writeFile(path, oversizedStorage("0", 512));
    const t0 = performance.now();
    await assert.rejects(loadCheckpoint(path), (e: Error) => {
      assert.ok(e instanceof UserError, String(e));
      assert.match(
        e.message,
        /big_storage\.pt: zip member tiny_zip\/data\/0 declares 536870912 bytes, more than the 9408 storage 0 needs/,
      );
      return true;
    });
    assert.ok(performance.now() - t0 < 2000);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("class 1: shard members are bounded before their bytes are read", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cxr_tarbound_" });
  try {
    const png = await Deno.readFile(PNG);
    // A labels member of 100 KB (a .pyd of 14 labels is 259 bytes).
    const pydPath = `${dir}/ChestXray14_test_000.tar`;
    const f = await Deno.open(pydPath, { write: true, create: true });
    const w = new TarWriter(f);
    await w.add("a.png", png);
    await w.add("a.pyd", new Uint8Array(100_000));
    await w.close();
    const bad = /labels member 'a\.pyd' holds 100000 bytes, over the 65536 such a member can need/;
    for (const read of [() => readShard(pydPath).next(), () => checkShards([pydPath])]) {
      await assert.rejects(read(), (e: Error) => e instanceof UserError && bad.test(e.message));
    }
    // An image member declaring 400 MB (a sparse file: no disk is spent) is refused unread.
    const bigPath = `${dir}/ChestXray14_test_001.tar`;
    const size = 400_000_000;
    const g = await Deno.open(bigPath, { write: true, create: true });
    await g.write(tarHeader("b.png", size));
    g.close();
    await Deno.truncate(bigPath, 512 + size + 1024);
    const rss0 = Deno.memoryUsage().rss;
    await assert.rejects(
      readShard(bigPath).next(),
      (e: Error) =>
        e instanceof UserError &&
        /ChestXray14_test_001\.tar: image member 'b\.png' holds 400000000 bytes/.test(e.message),
    );
    assert.ok(Deno.memoryUsage().rss - rss0 < 100e6);
    // A good shard still reads: the bound holds real members.
    const okPath = `${dir}/ChestXray14_test_002.tar`;
    const h = await Deno.open(okPath, { write: true, create: true });
    const ok = new TarWriter(h);
    await ok.add("c.png", png);
    await ok.add("c.pyd", encodeLabelsPyd(new Array(14).fill(0)));
    await ok.close();
    const samples = [];
    for await (const s of readShard(okPath)) samples.push(s);
    assert.equal(samples.length, 1);
    assert.deepEqual(samples[0].png, png);
    assert.equal(await checkShards([okPath]), 1);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("class 1: an image file larger than any image within the size bound is refused unread", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cxr_bigimg_" });
  try {
    const path = `${dir}/big.png`;
    const png = await Deno.readFile(PNG);
    await Deno.writeFile(path, png);
    await Deno.truncate(path, 400_000_000); // sparse: no disk is spent
    const rss0 = Deno.memoryUsage().rss;
    await assert.rejects(readImageFile(path), (e: Error) => {
      assert.ok(e instanceof UserError, String(e));
      assert.match(
        e.message,
        /big\.png: 400000000 bytes is more than an image within the decoded-size bound can take \(289048576\)/,
      );
      return true;
    });
    assert.ok(Deno.memoryUsage().rss - rss0 < 100e6);
    assert.deepEqual(await readImageFile(PNG), png, "a real image still reads");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
