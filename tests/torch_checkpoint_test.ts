/** Tests of PyTorch checkpoint reading/writing against files and references made by torch 1.13. */

import assert from "node:assert/strict";
import {
  encodeCheckpoint,
  loadCheckpoint,
  readTorchFile,
  writeCheckpoint,
} from "../lib/torch/torch_checkpoint.ts";
import { readZip } from "../lib/torch/zip_store.ts";
import { UserError } from "../lib/util/errors.ts";
import type { Checkpoint, HostTensor } from "../lib/torch/state_dict.ts";

const TORCH = new URL("./fixtures/torch/", import.meta.url);
const PICKLE = new URL("./fixtures/pickle/", import.meta.url);
const SEED = new URL("../../shared/fixtures/torch/seed_model.pt", import.meta.url);
const seedExists = (() => {
  try {
    return Deno.statSync(SEED).isFile;
  } catch {
    return false;
  }
})();
if (!seedExists) console.log(`skipping seed_model.pt tests: ${SEED.pathname} is absent`);

const hasTorch = (() => {
  try {
    const r = new Deno.Command("/usr/bin/python3", {
      args: ["-c", "import torch, torchvision"],
      stdout: "null",
      stderr: "null",
    }).outputSync();
    return r.success;
  } catch {
    return false;
  }
})();
if (!hasTorch) {
  console.log("skipping torch.load interop test: `/usr/bin/python3 -c 'import torch'` fails");
}

interface TensorRef {
  dtype: string;
  shape: number[];
  sum: number;
  first: number[];
}
interface FileRef {
  count: number;
  keys?: string[];
  tensors: Record<string, TensorRef>;
  thresholds?: number[];
  thresholds_dtype?: string;
}
const REFS: Record<string, FileRef> = JSON.parse(
  Deno.readTextFileSync(new URL("torch_refs.json", PICKLE)),
);

function sum(t: HostTensor): number {
  let s = 0;
  for (const v of t.data) s += Number(v);
  return s;
}

function checkTensor(t: HostTensor | undefined, ref: TensorRef, key: string): void {
  assert.ok(t, `missing ${key}`);
  assert.equal(t.dtype, ref.dtype, key);
  assert.deepEqual(t.shape, ref.shape, key);
  assert.equal(t.data.length, ref.shape.reduce((a, b) => a * b, 1), key);
  const tol = 1e-6 * Math.max(1, Math.abs(ref.sum)) + 1e-6 * t.data.length;
  assert.ok(Math.abs(sum(t) - ref.sum) <= tol, `${key}: sum ${sum(t)} vs ${ref.sum}`);
  ref.first.forEach((v, i) => assert.equal(Number(t.data[i]), v, `${key}[${i}]`));
  if (ref.dtype === "int64") assert.ok(t.data instanceof BigInt64Array, key);
  if (ref.dtype === "float32") assert.ok(t.data instanceof Float32Array, key);
}

function checkFile(ckpt: Checkpoint, ref: FileRef): void {
  assert.equal(ckpt.stateDict.size, ref.count);
  if (ref.keys) assert.deepEqual([...ckpt.stateDict.keys()], ref.keys);
  for (const [k, r] of Object.entries(ref.tensors)) checkTensor(ckpt.stateDict.get(k), r, k);
}

function sameTensors(a: Checkpoint, b: Checkpoint): void {
  assert.deepEqual([...a.stateDict.keys()], [...b.stateDict.keys()]);
  for (const [k, t] of a.stateDict) {
    const u = b.stateDict.get(k)!;
    assert.equal(u.dtype, t.dtype, k);
    assert.deepEqual(u.shape, t.shape, k);
    assert.deepEqual(u.data, t.data, k);
  }
  assert.deepEqual(a.thresholds, b.thresholds);
}

Deno.test("tiny_zip.pt reads like torch.load (keys, shapes, dtypes, sums, values)", async () => {
  const ckpt = await loadCheckpoint(new URL("tiny_zip.pt", TORCH).pathname);
  checkFile(ckpt, REFS["tiny_zip.pt"]);
  assert.equal(ckpt.thresholds, null);
});

Deno.test("tiny_legacy.pth (legacy format, old key names kept) reads like torch.load", async () => {
  const ckpt = await loadCheckpoint(new URL("tiny_legacy.pth", TORCH).pathname);
  checkFile(ckpt, REFS["tiny_legacy.pth"]);
  assert.ok([...ckpt.stateDict.keys()].some((k) => /denselayer1\.norm\.1\.weight$/.test(k)));
  assert.equal(ckpt.thresholds, null);
});

Deno.test("a small torch.save checkpoint round-trips byte for byte through our writer", async () => {
  const path = new URL("small_ref.pt", PICKLE).pathname;
  const ref = Deno.readFileSync(path);
  const ckpt = await loadCheckpoint(path);
  checkFile(ckpt, REFS["small_ref.pt"]);
  assert.ok(ckpt.thresholds instanceof Float64Array);
  assert.deepEqual(Array.from(ckpt.thresholds), REFS["small_ref.pt"].thresholds);
  const ours = encodeCheckpoint(ckpt);
  assert.equal(ours.length, ref.length);
  assert.deepEqual(ours, ref);
});

Deno.test("written checkpoint: members, alignment, pickle opcodes, storage sizes, re-read", async () => {
  const src = await loadCheckpoint(new URL("tiny_zip.pt", TORCH).pathname);
  const thresholds = Float64Array.from({ length: 14 }, (_, i) => (i + 0.5) / 14);
  const dir = await Deno.makeTempDir();
  try {
    const out = `${dir}/model.pt`;
    await writeCheckpoint(out, { stateDict: src.stateDict, thresholds });
    const bytes = await Deno.readFile(out);
    const members = readZip(bytes, out);
    const n = src.stateDict.size;
    const names = [...members.keys()];
    assert.equal(names[0], "archive/data.pkl");
    assert.equal(names[names.length - 1], "archive/version");
    assert.equal(new TextDecoder().decode(members.get("archive/version")), "3\n");
    const storageNames = names.slice(1, -1);
    assert.deepEqual(
      storageNames,
      Array.from({ length: n }, (_, i) => `archive/data/${i}`).sort(),
    );
    for (const name of names) {
      const m = members.get(name)!;
      assert.equal(m.byteOffset % 64, 0, `${name} is not 64-byte aligned`);
    }
    // Storage sizes: element count × element size, in state-dict order.
    [...src.stateDict.values()].forEach((t, i) => {
      const elem = t.dtype === "int64" ? 8 : 4;
      assert.equal(members.get(`archive/data/${i}`)!.length, t.data.length * elem);
    });
    // Protocol 2, then EMPTY_DICT, BINPUT 0, MARK, BINUNICODE 'model'.
    const pkl = members.get("archive/data.pkl")!;
    assert.deepEqual(
      Array.from(pkl.subarray(0, 11)),
      [0x80, 2, 0x7d, 0x71, 0, 0x28, 0x58, 5, 0, 0, 0],
    );
    assert.equal(new TextDecoder().decode(pkl.subarray(11, 16)), "model");
    assert.equal(pkl[pkl.length - 1], 0x2e);
    const back = await loadCheckpoint(out);
    sameTensors({ stateDict: src.stateDict, thresholds }, back);
    const nbt = back.stateDict.get("features.norm0.num_batches_tracked")!;
    assert.ok(nbt.data instanceof BigInt64Array);
    assert.deepEqual(nbt.shape, []);
    // No temporary file is left behind.
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["model.pt"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name: "torch.load reads our written file and load_state_dict(strict=True) succeeds",
  ignore: !hasTorch,
  async fn() {
    const src = await loadCheckpoint(new URL("tiny_zip.pt", TORCH).pathname);
    const thresholds = Float64Array.from({ length: 14 }, (_, i) => 0.1 + i / 20);
    const dir = await Deno.makeTempDir();
    try {
      const out = `${dir}/tiny_written.pt`;
      await writeCheckpoint(out, { stateDict: src.stateDict, thresholds });
      const r = await new Deno.Command("/usr/bin/python3", {
        args: [new URL("check_written.py", PICKLE).pathname, out, "tiny"],
      }).output();
      const stdout = new TextDecoder().decode(r.stdout);
      assert.ok(r.success, new TextDecoder().decode(r.stderr));
      const [ok, count, dtype, s] = stdout.trim().split(" ");
      assert.equal(ok, "OK");
      assert.equal(Number(count), src.stateDict.size);
      assert.equal(dtype, "float64");
      assert.ok(Math.abs(Number(s) - thresholds.reduce((a, b) => a + b, 0)) < 1e-12);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "seed_model.pt loads: 727 keys, classifier [14,1024], float64 thresholds of expected.json",
  ignore: !seedExists,
  async fn() {
    const t0 = performance.now();
    const ckpt = await loadCheckpoint(SEED.pathname);
    const ms = performance.now() - t0;
    console.log(`seed_model.pt loaded in ${ms.toFixed(0)} ms`);
    const ref = REFS["seed_model.pt"];
    checkFile(ckpt, ref);
    assert.equal(ckpt.stateDict.size, 727);
    assert.deepEqual(ckpt.stateDict.get("classifier.0.weight")!.shape, [14, 1024]);
    const expected = JSON.parse(Deno.readTextFileSync(new URL("expected.json", TORCH)));
    assert.ok(ckpt.thresholds instanceof Float64Array);
    assert.deepEqual(Array.from(ckpt.thresholds), expected.thresholds);
    assert.deepEqual(Array.from(ckpt.thresholds), ref.thresholds);
  },
});

Deno.test({
  name: "seed_model.pt round-trips through writeCheckpoint and (optionally) torch",
  ignore: !seedExists,
  async fn() {
    const ckpt = await loadCheckpoint(SEED.pathname);
    const dir = await Deno.makeTempDir();
    try {
      const out = `${dir}/seed_written.pt`;
      await writeCheckpoint(out, ckpt);
      sameTensors(ckpt, await loadCheckpoint(out));
      if (hasTorch) {
        const r = await new Deno.Command("/usr/bin/python3", {
          args: [new URL("check_written.py", PICKLE).pathname, out, "densenet121"],
        }).output();
        assert.ok(r.success, new TextDecoder().decode(r.stderr));
        assert.match(new TextDecoder().decode(r.stdout), /^OK 727 float64/);
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

async function userError(p: Promise<unknown>, re: RegExp): Promise<void> {
  await assert.rejects(p, (e) => {
    assert.ok(e instanceof UserError, `expected UserError, got ${e}`);
    assert.match(e.message, re);
    assert.ok(!e.message.includes("\n"), "one line");
    return true;
  });
}

Deno.test("missing, non-checkpoint, truncated and corrupt files give one-line UserErrors", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await userError(loadCheckpoint(`${dir}/nope.pt`), /checkpoint not found: .*nope\.pt/);
    const zipBytes = Deno.readFileSync(new URL("tiny_zip.pt", TORCH));
    const legacy = Deno.readFileSync(new URL("tiny_legacy.pth", TORCH));
    const cases: [string, Uint8Array, RegExp][] = [
      [
        "text.pt",
        new TextEncoder().encode("hello, not a checkpoint\n"),
        /not a PyTorch checkpoint/,
      ],
      ["empty.pt", new Uint8Array(0), /not a PyTorch checkpoint/],
      ["cut_zip.pt", zipBytes.subarray(0, 100_000), /not a readable zip archive/],
      ["cut_legacy.pth", legacy.subarray(0, 100_000), /truncated/],
      ["cut_legacy2.pth", legacy.subarray(0, 3000), /truncated/],
      ["labels.pt", Deno.readFileSync(new URL("arrays_p2.pkl", PICKLE)), /not a PyTorch/],
      ["evil.pt", Deno.readFileSync(new URL("malicious.pkl", PICKLE)), /not a PyTorch/],
    ];
    // A flipped byte inside a storage breaks its CRC.
    const flipped = zipBytes.slice();
    flipped[zipBytes.length >> 1] ^= 0xff;
    cases.push(["flipped.pt", flipped, /CRC mismatch|corrupt/]);
    for (const [name, bytes, re] of cases) {
      await Deno.writeFile(`${dir}/${name}`, bytes);
      await userError(loadCheckpoint(`${dir}/${name}`), re);
    }
    // A zip holding a pickle that names a non-allowed global.
    const evilPkl = Deno.readFileSync(new URL("malicious.pkl", PICKLE));
    const { writeZip } = await import("../lib/torch/zip_store.ts");
    await Deno.writeFile(
      `${dir}/evil_zip.pt`,
      writeZip([{ name: "archive/data.pkl", data: evilPkl }]),
    );
    await userError(
      loadCheckpoint(`${dir}/evil_zip.pt`),
      /refusing to load posix\.system: not an allowed global in .*evil_zip\.pt/,
    );
    // A pickle of a plain list inside a zip is a torch file but not a checkpoint.
    assert.deepEqual(
      readTorchFile(
        writeZip([{ name: "x/data.pkl", data: new Uint8Array([0x80, 2, 0x5d, 0x2e]) }]),
        "list.pt",
      ),
      [],
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
