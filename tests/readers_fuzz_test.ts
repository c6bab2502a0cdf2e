/**
 * Fuzz-style test of the tar, pickle and zip readers (issue 14): seeded random truncations,
 * byte flips and field overwrites of the real fixtures. Every case must end within a second
 * with either a result or one clean `UserError` line; a hang, a raw RangeError/TypeError or a
 * multi-line message fails, printing the case so it can be replayed.
 */
import assert from "node:assert/strict";
import { listTar } from "../lib/data/tar.ts";
import { checkShards, readShard, shardPattern, ShardWriter } from "../lib/data/webdataset.ts";
import { decodeLabelsPyd, unpickle } from "../lib/torch/pickle.ts";
import { checkpointFromValue, readTorchFile } from "../lib/torch/torch_checkpoint.ts";
import { UserError } from "../lib/util/errors.ts";
import { Rng } from "../lib/util/rng.ts";
import { FIXTURE_SHARD } from "./helpers/original_data.ts";
import { collect } from "./helpers/scripts.ts";

const CASES = 300;
const fixture = (p: string) => new URL(`./fixtures/${p}`, import.meta.url).pathname;

/** What a mutation did, for the failure message. */
interface Mutant {
  bytes: Uint8Array;
  what: string;
  /** A truncation: if it reads at all, it must read as the intact input. */
  truncated: boolean;
}

/** A stable text form of a decoded value (Maps, Sets, typed arrays, bigints), to compare. */
function summary(v: unknown): string {
  return JSON.stringify(v, (_k, x) => {
    if (typeof x === "bigint") return `${x}n`;
    if (x instanceof Map) return { map: [...x] };
    if (x instanceof Set) return { set: [...x] };
    if (ArrayBuffer.isView(x)) return { typed: Array.from(x as Uint8Array, String) };
    return x;
  });
}

/**
 * One mutation of `good`: a truncation, 1–8 byte flips, or an overwrite of a few bytes with
 * digits, spaces, 0xff or NULs (the values that break numeric fields). Half of the edits land in
 * `hot` regions (headers, directories), where the parsing happens.
 */
function mutate(good: Uint8Array, hot: [number, number][], rng: Rng): Mutant {
  const pick = () => {
    if (hot.length > 0 && rng.bernoulli(0.5)) {
      const [a, b] = hot[rng.int(hot.length)];
      return Math.min(good.length - 1, a + rng.int(Math.max(1, b - a)));
    }
    return rng.int(good.length);
  };
  const kind = rng.int(3);
  if (kind === 0) {
    const cut = rng.bernoulli(0.5) ? pick() : rng.int(good.length);
    return { bytes: good.slice(0, cut), what: `truncated to ${cut} bytes`, truncated: true };
  }
  const bytes = good.slice();
  if (kind === 1) {
    const edits: string[] = [];
    for (let k = 1 + rng.int(8); k > 0; k--) {
      const at = pick();
      const bit = 1 << rng.int(8);
      bytes[at] ^= bit;
      edits.push(`${at}^${bit}`);
    }
    return { bytes, what: `flipped ${edits.join(",")}`, truncated: false };
  }
  const at = pick();
  const fills = [0x39, 0x20, 0xff, 0x00, 0x2d, 0x61];
  const fill = fills[rng.int(fills.length)];
  const n = 1 + rng.int(12);
  bytes.fill(fill, at, at + n);
  return { bytes, what: `${n} bytes at ${at} set to 0x${fill.toString(16)}`, truncated: false };
}

/**
 * Runs `read` on every mutant and asserts the outcome rule: a result or one `UserError` line,
 * within a second; a truncation that reads must give the intact input's result.
 */
async function fuzz(
  name: string,
  inputs: { good: Uint8Array; hot: [number, number][] }[],
  read: (bytes: Uint8Array) => Promise<unknown> | unknown,
  seed: number,
): Promise<void> {
  const rng = new Rng(seed);
  const intact: string[] = [];
  for (const input of inputs) intact.push(summary(await read(input.good)));
  let ok = 0;
  let refused = 0;
  let slowest = 0;
  for (let i = 0; i < CASES; i++) {
    const input = inputs[i % inputs.length];
    const m = mutate(input.good, input.hot, rng);
    const where = `${name} case ${i} (seed ${seed}, input ${i % inputs.length}): ${m.what}`;
    const t0 = performance.now();
    try {
      const got = summary(await read(m.bytes));
      if (m.truncated) assert.equal(got, intact[i % inputs.length], `${where}: wrong result`);
      ok++;
    } catch (e) {
      if (e instanceof assert.AssertionError) throw e;
      assert.ok(e instanceof UserError, `${where}: raw ${e instanceof Error ? e.stack : e}`);
      assert.ok(!e.message.includes("\n"), `${where}: multi-line message ${e.message}`);
      refused++;
    }
    const ms = performance.now() - t0;
    slowest = Math.max(slowest, ms);
    assert.ok(ms < 1000, `${where}: took ${ms.toFixed(0)} ms`);
  }
  console.log(
    `  ${name}: ${CASES} cases, ${ok} read, ${refused} refused, slowest ${slowest.toFixed(1)} ms`,
  );
}

Deno.test("fuzz: tar shards (readShard, checkShards, listTar)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cxr_fuzz_" });
  try {
    // A small shard of 3 real samples, and Python's GNU long-name and pax archives.
    const writer = new ShardWriter(shardPattern(dir, "val"), 100);
    for (const s of (await collect(readShard(FIXTURE_SHARD))).slice(0, 3)) {
      await writer.write({ ...s, png: s.png.subarray(0, 2000) }); // PNGs are not decoded here
    }
    const [small] = await writer.close();
    const inputs = [];
    for (const path of [small, fixture("tar/gnu_longname.tar"), fixture("tar/pax_longname.tar")]) {
      const good = await Deno.readFile(path);
      // Hot regions: every 512-byte block that holds a header (or pax/long-name data).
      const members = await listTar(path);
      const hot: [number, number][] = [[0, 512]];
      for (const m of members) {
        hot.push([m.offset - 512, m.offset], [m.offset + m.size, m.offset + m.size + 1024]);
      }
      inputs.push({ good, hot });
    }
    const path = `${dir}/ChestXray14_val_009.tar`;
    await fuzz("tar", inputs, async (bytes) => {
      await Deno.writeFile(path, bytes);
      const n = await checkShards([path]);
      const samples = await collect(readShard(path));
      // A shard that passes the check must read back the same number of samples.
      assert.equal(samples.length, n, "checkShards and readShard agree");
      return { samples, members: await listTar(path) };
    }, 14);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("fuzz: pickles (protocols 0-5, numpy arrays, .pyd labels)", async () => {
  const inputs = [];
  for (const p of [0, 2, 3, 4, 5]) {
    for (const kind of ["arrays", "nested"]) {
      const good = await Deno.readFile(fixture(`pickle/${kind}_p${p}.pkl`));
      inputs.push({ good, hot: [] as [number, number][] });
    }
  }
  const pyd = (await listTar(FIXTURE_SHARD))[1];
  const shard = await Deno.readFile(FIXTURE_SHARD);
  inputs.push({ good: shard.slice(pyd.offset, pyd.offset + pyd.size), hot: [] });
  await fuzz("pickle", inputs, (bytes) => {
    const value = unpickle(bytes, { source: "fuzz.pkl" });
    if (bytes.length < 300) {
      try {
        decodeLabelsPyd(bytes, "fuzz.pyd");
      } catch (e) {
        if (!(e instanceof UserError)) throw e;
      }
    }
    return value;
  }, 7);
});

Deno.test("fuzz: torch checkpoints (zip format and legacy format)", async () => {
  const inputs = [];
  for (const name of ["torch/tiny_zip.pt", "torch/tiny_legacy.pth", "pickle/small_ref.pt"]) {
    const good = await Deno.readFile(fixture(name));
    // Hot: the zip directory and end records at the tail, the pickle at the head.
    inputs.push({
      good,
      hot: [[0, 4096], [Math.max(0, good.length - 4096), good.length]] as [number, number][],
    });
  }
  await fuzz(
    "torch",
    inputs,
    (bytes) => checkpointFromValue(readTorchFile(bytes, "fuzz.pt"), "fuzz.pt"),
    3,
  );
});
