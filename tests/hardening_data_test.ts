/**
 * Issue 14, the data path: every bad shard, pickle and zip input built here byte by byte must
 * end quickly with one clear `UserError` line naming the file (and the offset), never a hang, a
 * raw RangeError or a silently wrong value; symlinked shards work.
 */
import assert from "node:assert/strict";
import { LABELS, NUM_CLASSES } from "../config.ts";
import { loadSubset } from "../lib/data/dataset.ts";
import { listTar, tarHeader } from "../lib/data/tar.ts";
import { checkShards, listShards, readShard } from "../lib/data/webdataset.ts";
import { encodeLabelsPyd, unpickle } from "../lib/torch/pickle.ts";
import { readTorchFile } from "../lib/torch/torch_checkpoint.ts";
import { readZip, writeZip } from "../lib/torch/zip_store.ts";
import { UserError } from "../lib/util/errors.ts";
import { FIXTURE_SHARD } from "./helpers/original_data.ts";
import { collect, fixtureDatasetDir, runScript } from "./helpers/scripts.ts";
import { fixtureShardRenamed } from "./helpers/shards.ts";

const enc = new TextEncoder();
const BLOCK = 512;

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** Rewrites a header's checksum after a patch, so only the patched field is bad. */
function fixChecksum(block: Uint8Array): Uint8Array {
  block.fill(0x20, 148, 156);
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += block[i];
  block.set(enc.encode(sum.toString(8).padStart(6, "0")), 148);
  block[154] = 0;
  block[155] = 0x20;
  return block;
}

/** A member: header (optionally patched, checksum fixed) + data padded to the block size. */
function member(
  name: string,
  data: Uint8Array,
  patch?: (h: Uint8Array) => void,
): Uint8Array {
  const h = tarHeader(name, data.length, { mtime: 1700000000 });
  if (patch) {
    patch(h);
    fixChecksum(h);
  }
  const body = new Uint8Array(Math.ceil(data.length / BLOCK) * BLOCK);
  body.set(data);
  return concat([h, body]);
}

/** A pax extended header member holding `records` (raw `key=value` strings). */
function pax(records: string[]): Uint8Array {
  const text = records.map((r) => {
    let len = r.length + 3;
    while (`${len} ${r}\n`.length !== len) len = `${len} ${r}\n`.length;
    return `${len} ${r}\n`;
  }).join("");
  return member("././@PaxHeader", enc.encode(text), (h) => (h[156] = 0x78)); // 'x'
}

const END = new Uint8Array(2 * BLOCK);
const firstTwo = (await collect(readShard(FIXTURE_SHARD))).slice(0, 2);
const PNG = firstTwo[0].png;
const goodSample = (key: string, labels: ArrayLike<number> = firstTwo[0].labels) =>
  concat([member(`${key}.png`, PNG), member(`${key}.pyd`, encodeLabelsPyd(labels))]);

/** Asserts `f` rejects within a second with a one-line UserError matching all `patterns`. */
async function refusesQuickly(
  what: string,
  f: () => Promise<unknown>,
  patterns: RegExp[],
): Promise<string> {
  const t0 = performance.now();
  let err: unknown = null;
  try {
    await f();
  } catch (e) {
    err = e;
  }
  const ms = performance.now() - t0;
  assert.ok(err instanceof UserError, `${what}: expected a UserError, got ${err}`);
  assert.ok(ms < 1000, `${what}: took ${ms.toFixed(0)} ms`);
  assert.ok(!err.message.includes("\n"), `${what}: one line: ${err.message}`);
  for (const p of patterns) assert.match(err.message, p, what);
  return err.message;
}

const dir = await Deno.makeTempDir({ prefix: "cxr_hard_" });
const errorLines = (stderr: string) => stderr.split("\n").filter((l) => l.startsWith("error"));
const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

Deno.test("class 2: malformed tar headers end at once with the shard, the offset and the fix", async () => {
  const pyd = encodeLabelsPyd(firstTwo[0].labels);
  const octal = (text: string) => (h: Uint8Array) => {
    h.fill(0, 124, 136);
    h.set(enc.encode(text), 124);
  };
  const cases: [string, Uint8Array, RegExp][] = [
    [
      "pax size=abc",
      concat([goodSample("a"), pax(["size=abc"]), member("b.png", PNG)]),
      /pax size 'abc' is not a byte count/,
    ],
    ["pax size=-5", concat([pax(["size=-5"]), member("b.png", PNG)]), /pax size '-5'/],
    [
      "pax size 1e21",
      concat([pax(["size=999999999999999999999"]), member("b.png", PNG)]),
      /pax size/,
    ],
    [
      "pax size beyond the file",
      concat([pax(["size=1000000000"]), member("b.png", PNG), END]),
      /truncated tar archive: member 'b\.png' .*needs 1000000000 bytes/,
    ],
    [
      "pax record length past its data",
      concat([
        member("././@PaxHeader", enc.encode("99 size=1\n"), (h) => (h[156] = 0x78)),
        member("b.png", PNG),
      ]),
      /malformed pax record/,
    ],
    [
      "pax record without a newline",
      concat([
        member("././@PaxHeader", enc.encode("10 size=12"), (h) => (h[156] = 0x78)),
        member("b.png", PNG),
      ]),
      /malformed pax record/,
    ],
    [
      "pax record length not a number",
      concat([
        member("././@PaxHeader", enc.encode("x size=1\n"), (h) => (h[156] = 0x78)),
        member("b.png", PNG),
      ]),
      /malformed pax record/,
    ],
    [
      "size field not octal",
      concat([goodSample("a"), member("b.pyd", pyd, octal("12x4"))]),
      /size field '12x4' is not an octal number/,
    ],
    [
      "size field with a 9",
      concat([member("b.pyd", pyd, octal("00000000409"))]),
      /size field '00000000409'/,
    ],
    [
      "size field base-256 past 2^53",
      concat([member("b.pyd", pyd, (h) => {
        h[124] = 0x80;
        h.fill(0xff, 125, 136);
      })]),
      /size field is too large/,
    ],
    [
      "size field negative base-256",
      concat([member("b.pyd", pyd, (h) => h.fill(0xff, 124, 136))]),
      /size field is negative/,
    ],
    [
      "size beyond the file",
      concat([member("b.pyd", pyd, octal("77777777777")), END]),
      /needs 8589934591 bytes, only \d+ left/,
    ],
    [
      "mtime field not octal",
      concat([member("b.pyd", pyd, (h) => h.set(enc.encode("abc"), 136))]),
      /mtime field 'abc/,
    ],
    [
      "checksum field not octal",
      concat([member("b.pyd", pyd), END]).map((b, i) => (i === 150 ? 0x39 : b)),
      /checksum/,
    ],
    [
      "truncated member data",
      concat([goodSample("a")]).subarray(0, 700),
      /truncated tar archive: member 'a\.png'/,
    ],
    [
      "no end-of-archive marker",
      goodSample("a"),
      /truncated tar archive at byte \d+: no end-of-archive marker after member 'a\.pyd'/,
    ],
    [
      "long-name member of 10 MB",
      concat([member("././@LongLink", new Uint8Array(10 << 20), (h) => (h[156] = 0x4c)), END]),
      /long-name member of 10485760 bytes/,
    ],
  ];
  for (const [what, bytes, pattern] of cases) {
    const path = `${dir}/ChestXray14_train_000.tar`;
    await Deno.writeFile(path, bytes);
    const named = new RegExp(`^${esc(path)}: `);
    const offsetOrMember = /byte \d+|member '/;
    await refusesQuickly(`${what} (check)`, () => checkShards([path]), [
      named,
      pattern,
      offsetOrMember,
      /re-create or re-download/,
    ]);
    await refusesQuickly(`${what} (read)`, () => collect(readShard(path)), [named, pattern]);
    await refusesQuickly(`${what} (list)`, () => listTar(path), [named]);
  }
});

Deno.test("class 2: pre-1970 mtimes (negative base-256, as Python writes them) are read", async () => {
  const path = `${dir}/old.tar`;
  const neg = (h: Uint8Array) => {
    h.fill(0xff, 136, 148);
    h[147] = 0xfe; // -2
  };
  await Deno.writeFile(
    path,
    concat([member("a.png", PNG, neg), member("a.pyd", encodeLabelsPyd(firstTwo[0].labels)), END]),
  );
  const [m] = await listTar(path);
  assert.equal(m.mtime, -2);
  assert.equal(await checkShards([path]), 1);
});

Deno.test("class 2: train_model.ts with a pax size=abc shard exits at once with one line", async () => {
  const ds = await Deno.makeTempDir({ prefix: "cxr_hard_ds_" });
  const bad = `${ds}/ChestXray14_train_000.tar`;
  await Deno.writeFile(
    bad,
    concat([goodSample("a"), pax(["size=abc"]), member("b.png", PNG), END]),
  );
  await Deno.copyFile(FIXTURE_SHARD, `${ds}/ChestXray14_val_000.tar`);
  const r = await runScript("train_model.ts", ["--dataset_dir", ds, "--backend", "cpu"], [], {
    timeoutMs: 60_000,
  });
  assert.equal(r.code, 1, r.stderr);
  const lines = errorLines(r.stderr);
  assert.equal(lines.length, 1, r.stderr);
  assert.match(
    lines[0],
    new RegExp(
      `^error: ${esc(bad)}: corrupt tar header at byte ${
        goodSample("a").length
      } \\(after member 'a\\.pyd'\\): pax size 'abc'`,
    ),
  );
  await Deno.remove(ds, { recursive: true });
});

Deno.test("class 3: shard labels other than 0/1 are refused naming shard, key and class", async () => {
  for (
    const [v, shown] of [[2, "2"], [-1, "-1"], [NaN, "NaN"], [Infinity, "Infinity"], [
      -Infinity,
      "-Infinity",
    ], [0.5, "0.5"]] as const
  ) {
    const labels = new Array(NUM_CLASSES).fill(0);
    labels[4] = v;
    const path = `${dir}/ChestXray14_val_000.tar`;
    await Deno.writeFile(path, concat([goodSample("ok_1"), goodSample("bad_2", labels), END]));
    const pattern = new RegExp(
      `^${esc(path)}:bad_2\\.pyd: label 5 \\(${LABELS[4]}\\) is ${
        esc(shown)
      }, labels must be 0 or 1`,
    );
    await refusesQuickly(`label ${shown} (check)`, () => checkShards([path]), [pattern]);
    await refusesQuickly(`label ${shown} (read)`, () => collect(readShard(path)), [pattern]);
  }
});

Deno.test("class 3: train_model.ts refuses a shard with label 2 before training, one line", async () => {
  const ds = await fixtureDatasetDir(["train"]);
  const labels = new Array(NUM_CLASSES).fill(0);
  labels[0] = 2;
  await Deno.writeFile(
    `${ds}/ChestXray14_val_000.tar`,
    concat([goodSample("x_1"), goodSample("x_2", labels), END]),
  );
  const r = await runScript("train_model.ts", ["--dataset_dir", ds, "--backend", "cpu"], [], {
    timeoutMs: 60_000,
  });
  assert.equal(r.code, 1, r.stderr);
  assert.match(
    r.stderr,
    /^error: .*ChestXray14_val_000\.tar:x_2\.pyd: label 1 \(Atelectasis\) is 2, labels must be 0 or 1; re-create the shard$/m,
  );
  await Deno.remove(ds, { recursive: true });
});

Deno.test("class 4: a damaged validation shard stops training before the first batch", async () => {
  const ds = await fixtureDatasetDir(["train"]);
  const save = await Deno.makeTempDir({ prefix: "cxr_hard_save_" });
  // The last sample lost its labels member: found from the headers, no image decoded.
  const whole = await Deno.readFile(FIXTURE_SHARD);
  const members = await listTar(FIXTURE_SHARD);
  const lastPyd = members[members.length - 1];
  await Deno.writeFile(
    `${ds}/ChestXray14_val_000.tar`,
    concat([whole.subarray(0, lastPyd.offset - BLOCK), END]),
  );
  const t0 = performance.now();
  const r = await runScript(
    "train_model.ts",
    [
      "--dataset_dir",
      ds,
      "--save_dir",
      save,
      "--arch",
      "densenet_tiny",
      "--weights",
      "none",
      "--backend",
      "cpu",
      "-e",
      "1",
    ],
    [save],
    { timeoutMs: 60_000 },
  );
  assert.equal(r.code, 1, r.stderr);
  const lastKey = lastPyd.name.replace(/\.pyd$/, "");
  assert.equal(errorLines(r.stderr).length, 1, r.stderr);
  assert.match(
    r.stderr,
    new RegExp(
      `^error: .*ChestXray14_val_000\\.tar: sample '${lastKey}' has no labels member ` +
        `\\(${lastKey}\\.pyd\\); re-create or re-download the shard$`,
      "m",
    ),
  );
  assert.doesNotMatch(r.stdout + r.stderr, /epoch/i);
  const saved = [];
  for await (const e of Deno.readDir(save)) saved.push(e.name);
  assert.deepEqual(saved, [], "nothing written");
  console.log(`  refused after ${(performance.now() - t0).toFixed(0)} ms (process start included)`);
  await Deno.remove(ds, { recursive: true });
  await Deno.remove(save, { recursive: true });
});

Deno.test("class 4: checkShards finds a missing image member and a duplicated member", async () => {
  const path = `${dir}/ChestXray14_test_000.tar`;
  const pyd = encodeLabelsPyd(firstTwo[0].labels);
  await Deno.writeFile(path, concat([goodSample("a"), member("b.pyd", pyd), END]));
  await refusesQuickly("no image", () => checkShards([path]), [
    /sample 'b' has no image member \(b\.png\)/,
  ]);
  await Deno.writeFile(path, concat([goodSample("a"), member("a.pyd", pyd), END]));
  await refusesQuickly("duplicate", () => checkShards([path]), [/member 'a\.pyd' appears twice/]);
  await Deno.writeFile(
    path,
    concat([member("a.png", PNG), member("a.pyd", new Uint8Array(100_000)), END]),
  );
  await refusesQuickly("huge pyd", () => checkShards([path]), [
    /labels member 'a\.pyd' holds 100000 bytes/,
  ]);
});

Deno.test("class 9: shard directories of symbolic links work; a dangling link is named", async () => {
  const store = await fixtureDatasetDir(["val"]);
  // Two distinct shards (one key in two shards is refused since issue 25, class 6).
  await fixtureShardRenamed(`${store}/ChestXray14_val_001.tar`, "_b");
  const linked = await Deno.makeTempDir({ prefix: "cxr_hard_links_" });
  await Deno.symlink(`${store}/ChestXray14_val_000.tar`, `${linked}/ChestXray14_val_000.tar`);
  await Deno.symlink(`${store}/ChestXray14_val_001.tar`, `${linked}/ChestXray14_val_001.tar`);
  const subset = await loadSubset({ datasetDir: linked, subset: "val" });
  assert.deepEqual(subset.shards, [
    `${linked}/ChestXray14_val_000.tar`,
    `${linked}/ChestXray14_val_001.tar`,
  ]);
  assert.equal(subset.size, 100);
  let n = 0;
  for await (const b of subset.batches({ batchSize: 25, workers: 2 })) n += b.n;
  assert.equal(n, 100);
  // A link to a directory is not a shard; a dangling link is an error naming it.
  await Deno.symlink(store, `${linked}/ChestXray14_val_002.tar`);
  assert.equal((await listShards(linked, "val")).length, 2);
  await Deno.symlink(`${store}/gone.tar`, `${linked}/ChestXray14_val_003.tar`);
  await refusesQuickly("dangling link", () => listShards(linked, "val"), [
    new RegExp(
      `shard ${
        esc(linked)
      }/ChestXray14_val_003\\.tar is a symbolic link to .*gone\\.tar, which does not exist`,
    ),
  ]);
  await refusesQuickly(
    "dataset dir is a file",
    () => listShards(`${store}/ChestXray14_val_000.tar`, "val"),
    [/dataset directory is a file/],
  );
  await Deno.remove(store, { recursive: true });
  await Deno.remove(linked, { recursive: true });
});

/** A pickle `PROTO 4, <body>, STOP`. */
const pickleOf = (...body: number[][]) => new Uint8Array([0x80, 4, ...body.flat(), 0x2e]);
const le32 = (n: number) => [n & 0xff, (n >> 8) & 0xff, (n >> 16) & 0xff, (n >>> 24) & 0xff];

Deno.test("class 2: a 1 MB LONG4 decodes in milliseconds, exactly", () => {
  const n = 1 << 20;
  const digits = new Uint8Array(n);
  for (let i = 0; i < n; i++) digits[i] = (i * 131 + 7) & 0xff;
  digits[n - 1] = 0x12; // positive
  const bytes = new Uint8Array(2 + 5 + n + 1);
  bytes.set([0x80, 4, 0x8b, ...le32(n)]);
  bytes.set(digits, 7);
  bytes[7 + n] = 0x2e;
  const t0 = performance.now();
  const v = unpickle(bytes) as bigint;
  const ms = performance.now() - t0;
  assert.ok(ms < 500, `${ms} ms`);
  // Independently: the hex digits of the little-endian bytes, most significant first.
  const hex = Array.from(digits).reverse().map((b) => b.toString(16).padStart(2, "0")).join("");
  assert.equal(v.toString(16), hex.replace(/^0+/, ""));
  // Negative two's complement: 0xff…ff is -1 at any length.
  assert.equal(unpickle(pickleOf([0x8b, ...le32(1000)], new Array(1000).fill(0xff))), -1);
  console.log(`  1 MB LONG4: ${ms.toFixed(1)} ms`);
});

Deno.test("class 2: length-prefixed pickle opcodes are capped by the input, offsets named", () => {
  const cases: [string, Uint8Array, RegExp][] = [
    [
      "LONG4 of 2 GB",
      pickleOf([0x8b, ...le32(0x7fffffff)]),
      /truncated: pickle data ends early \(opcode at byte 2\)/,
    ],
    ["LONG4 negative", pickleOf([0x8b, ...le32(-5)]), /at byte 2: negative LONG4 length/],
    ["BINUNICODE of 4 GB", pickleOf([0x58, 0xff, 0xff, 0xff, 0xff]), /truncated/],
    [
      "BINBYTES8 of 2^63",
      pickleOf([0x8e, 0, 0, 0, 0, 0, 0, 0, 0x80]),
      /at byte 2: length too large/,
    ],
    ["BINSTRING negative", pickleOf([0x54, ...le32(-1)]), /negative BINSTRING length/],
    [
      "FRAME of 2^64-1",
      pickleOf([0x95, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
      /length too large/,
    ],
    [
      "decimal INT of 100k digits",
      pickleOf([0x49], Array.from(enc.encode("9".repeat(100_000) + "\n"))),
      /decimal integer of 100000 digits \(Python's limit is 4300\)/,
    ],
    ["bad UTF-8 in BINUNICODE", pickleOf([0x8c, 2, 0xc3, 0x28]), /at byte 2: /],
    ["LONG_BINGET of a missing memo", pickleOf([0x6a, ...le32(123456)]), /memo key 123456 missing/],
  ];
  for (const [what, bytes, pattern] of cases) {
    const t0 = performance.now();
    assert.throws(() => unpickle(bytes, { source: "hostile.pkl" }), (e: Error) => {
      assert.ok(e instanceof UserError, `${what}: ${e}`);
      assert.match(e.message, /hostile\.pkl/, what);
      assert.match(e.message, pattern, what);
      return true;
    });
    assert.ok(performance.now() - t0 < 1000, what);
  }
});

Deno.test("class 2: zip fields (counts, offsets, sizes) are checked against the archive", () => {
  const good = writeZip([
    { name: "archive/data.pkl", data: pickleOf([0x4b, 7]) },
    { name: "archive/version", data: enc.encode("3\n") },
  ]);
  assert.equal(readZip(good, "ok.pt").size, 2);
  const eocd = good.length - 22;
  const zip64 = good.length - 22 - 20 - 56;
  const cd = new DataView(good.buffer).getUint32(eocd + 16, true);
  const patched = (at: number, bytes: number[]) => {
    const b = good.slice();
    b.set(bytes, at);
    return b;
  };
  const cases: [string, Uint8Array, RegExp][] = [
    ["zip64 count 2^40", patched(zip64 + 32, [0, 0, 0, 0, 0, 1, 0, 0]), /entries cannot fit/],
    [
      "zip64 cd offset past the end",
      patched(zip64 + 48, [0, 0, 0, 0, 1, 0, 0, 0]),
      /central directory out of range/,
    ],
    [
      "zip64 locator offset 2^64-1",
      patched(good.length - 22 - 20 + 8, new Array(8).fill(0xff)),
      /too large|zip64 end record/,
    ],
    ["name length past the directory", patched(cd + 28, [0xff, 0xff]), /overruns the directory/],
    ["extra field overrunning its entry", patched(cd + 30, [4, 0]), /overruns|extra field/],
    [
      "local header offset past the end",
      patched(cd + 42, [0xff, 0xff, 0xff, 0x7f]),
      /bad local header for archive\/data\.pkl at byte/,
    ],
    [
      "compressed size past the end",
      patched(cd + 20, [0xff, 0xff, 0xff, 0x7f]),
      /data of archive\/data\.pkl out of range/,
    ],
    ["no end record", good.subarray(0, good.length - 30), /no end of central directory|bad/],
  ];
  for (const [what, bytes, pattern] of cases) {
    const t0 = performance.now();
    assert.throws(() => readTorchFile(bytes, "hostile.pt"), (e: Error) => {
      assert.ok(e instanceof UserError, `${what}: ${e}`);
      assert.match(e.message, /^hostile\.pt /, what);
      assert.match(e.message, pattern, what);
      return true;
    });
    assert.ok(performance.now() - t0 < 1000, what);
  }
});

Deno.test("cleanup of the hardening tree", async () => {
  await Deno.remove(dir, { recursive: true });
});
