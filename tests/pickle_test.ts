/** Tests of the safe unpickler and the `.pyd` label codec against Python-made pickles. */

import assert from "node:assert/strict";
import { decodeLabelsPyd, encodeLabelsPyd, unpickle } from "../lib/torch/pickle.ts";
import { UserError } from "../lib/util/errors.ts";
import type { HostTensor } from "../lib/torch/state_dict.ts";

const FIXTURES = new URL("./fixtures/", import.meta.url);
const PICKLES = new URL("pickle/", FIXTURES);

/** Members of an uncompressed ustar archive, in order. */
function readTar(bytes: Uint8Array): { name: string; data: Uint8Array }[] {
  const out: { name: string; data: Uint8Array }[] = [];
  const dec = new TextDecoder();
  for (let pos = 0; pos + 512 <= bytes.length;) {
    const h = bytes.subarray(pos, pos + 512);
    if (h.every((b) => b === 0)) break;
    const field = (a: number, n: number) => dec.decode(h.subarray(a, a + n)).replace(/\0.*$/s, "");
    const size = parseInt(field(124, 12).trim(), 8);
    const prefix = field(345, 155);
    const name = (prefix ? prefix + "/" : "") + field(0, 100);
    if (h[156] === 0x30 || h[156] === 0) {
      out.push({ name, data: bytes.subarray(pos + 512, pos + 512 + size) });
    }
    pos += 512 + Math.ceil(size / 512) * 512;
  }
  return out;
}

function shardPyd(): { key: string; data: Uint8Array }[] {
  const tar = Deno.readFileSync(new URL("nih_subset/ChestXray14_val_002.tar", FIXTURES));
  return readTar(tar)
    .filter((m) => m.name.endsWith(".pyd"))
    .map((m) => ({ key: m.name.slice(0, -4), data: m.data }));
}

function csvLabels(): Map<string, number[]> {
  const lines = Deno.readTextFileSync(new URL("nih_subset/labels.csv", FIXTURES)).trim().split(
    "\n",
  );
  const m = new Map<string, number[]>();
  for (const l of lines.slice(1)) {
    const [name, ...v] = l.trim().split(",");
    m.set(name.replace(/\.png$/, ""), v.map(Number));
  }
  return m;
}

Deno.test("encodeLabelsPyd is byte-identical to the 50 .pyd members of the real shard", () => {
  const members = shardPyd();
  const labels = csvLabels();
  assert.equal(members.length, 50);
  let positives = 0;
  for (const { key, data } of members) {
    assert.equal(data.length, 259);
    const want = labels.get(key);
    assert.ok(want, `labels.csv lacks ${key}`);
    positives += want.reduce((a, b) => a + b, 0);
    assert.deepEqual(encodeLabelsPyd(want), data, key);
  }
  assert.ok(positives > 0, "fixture should contain positive labels");
});

Deno.test("decodeLabelsPyd of the shard members equals labels.csv", () => {
  const labels = csvLabels();
  for (const { key, data } of shardPyd()) {
    const got = decodeLabelsPyd(data, `${key}.pyd`);
    assert.ok(got instanceof Float32Array);
    assert.deepEqual(Array.from(got), labels.get(key));
  }
});

Deno.test("decodeLabelsPyd rejects wrong shapes, non-arrays and truncation, naming the source", () => {
  const good = encodeLabelsPyd(new Array(14).fill(1));
  assert.throws(() => decodeLabelsPyd(good.subarray(0, 200), "x/a.pyd"), (e) => {
    assert.ok(e instanceof UserError);
    assert.match(e.message, /x\/a\.pyd/);
    assert.match(e.message, /truncated/);
    return true;
  });
  // A pickled int (protocol 2: PROTO 2, BININT1 5, STOP).
  assert.throws(
    () => decodeLabelsPyd(new Uint8Array([0x80, 2, 0x4b, 5, 0x2e]), "b.pyd"),
    /b\.pyd: labels are not a numpy array/,
  );
  const f8 = Deno.readFileSync(new URL("arrays_p4.pkl", PICKLES));
  assert.throws(() => decodeLabelsPyd(f8, "c.pyd"), /c\.pyd: labels are not a numpy array/);
  assert.throws(() => encodeLabelsPyd([1, 2, 3]), UserError);
});

interface Json {
  t: string;
  v?: unknown;
  dtype?: string;
  shape?: number[];
}

const NP_DTYPES: Record<string, string> = {
  float64: "float64",
  float32: "float32",
  float16: "float16",
  int64: "int64",
  int32: "int32",
  int16: "int16",
  uint8: "uint8",
  bool: "bool",
};

/** Compares an unpickled value with the generator's JSON description. */
function check(got: unknown, want: Json, path: string): void {
  switch (want.t) {
    case "none":
      assert.equal(got, null, path);
      break;
    case "bool":
      assert.equal(got, want.v, path);
      break;
    case "int": {
      const big = BigInt(want.v as string);
      const safe = big <= BigInt(Number.MAX_SAFE_INTEGER) &&
        big >= -BigInt(Number.MAX_SAFE_INTEGER);
      assert.equal(got, safe ? Number(big) : big, path);
      break;
    }
    case "float":
      assert.equal(got, Number((want.v as string).replace("inf", "Infinity")), path);
      break;
    case "str":
      assert.equal(got, want.v, path);
      break;
    case "bytes":
      assert.ok(got instanceof Uint8Array, path);
      assert.deepEqual(Array.from(got), want.v, path);
      break;
    case "list": {
      assert.ok(Array.isArray(got), path);
      const items = want.v as Json[];
      assert.equal(got.length, items.length, path);
      items.forEach((w, i) => check(got[i], w, `${path}[${i}]`));
      break;
    }
    case "set": {
      assert.ok(got instanceof Set, path);
      assert.equal(got.size, (want.v as Json[]).length, path);
      for (const w of want.v as Json[]) {
        const v = w.t === "int" ? Number(w.v) : w.v;
        assert.ok(got.has(v), `${path} lacks ${v}`);
      }
      break;
    }
    case "dict": {
      assert.ok(got instanceof Map, path);
      const items = want.v as [Json, Json][];
      assert.deepEqual([...got.keys()], items.map(([k]) => k.v), path);
      for (const [k, v] of items) check(got.get(k.v), v, `${path}.${k.v}`);
      break;
    }
    case "ndarray": {
      const t = got as HostTensor;
      assert.equal(t.dtype, NP_DTYPES[want.dtype!], path);
      assert.deepEqual(t.shape, want.shape, path);
      const vals = want.v as string[];
      assert.equal(t.data.length, vals.length, path);
      vals.forEach((s, i) => {
        const g = t.data[i];
        if (typeof g === "bigint") assert.equal(g, BigInt(s), `${path}[${i}]`);
        else if (want.dtype === "float32") {
          assert.equal(g, Math.fround(Number(s)), `${path}[${i}]`);
        } else assert.equal(g, Number(s), `${path}[${i}]`);
      });
      break;
    }
    default:
      throw new Error(`unknown kind ${want.t}`);
  }
}

Deno.test("unpickle matches Python on reference pickles of protocols 0, 2, 3, 4, 5", () => {
  const expected = JSON.parse(Deno.readTextFileSync(new URL("expected.json", PICKLES)));
  const names = Object.keys(expected);
  assert.equal(names.length, 10);
  for (const name of names) {
    const got = unpickle(Deno.readFileSync(new URL(name, PICKLES)), { source: name });
    check(got, expected[name], name);
  }
});

Deno.test("unpickle keeps shared references shared (memo)", () => {
  const got = unpickle(Deno.readFileSync(new URL("nested_p4.pkl", PICKLES))) as Map<
    string,
    unknown[]
  >;
  const shared = got.get("shared")!;
  assert.equal(shared[0], shared[1]);
});

Deno.test("unpickle refuses globals outside the allow-list, naming them", () => {
  const evil = Deno.readFileSync(new URL("malicious.pkl", PICKLES));
  assert.throws(() => unpickle(evil, { source: "evil.pkl" }), (e) => {
    assert.ok(e instanceof UserError);
    assert.equal(
      e.message,
      "refusing to load posix.system: not an allowed global in evil.pkl",
    );
    return true;
  });
  // Protocol 0 `cos\nsystem\n(S'ls'\ntR.`
  const p0 = new TextEncoder().encode("cos\nsystem\n(S'ls'\ntR.");
  assert.throws(() => unpickle(p0, { source: "p0.pkl" }), /refusing to load os\.system.*p0\.pkl/);
  // Opt-in extra globals are honoured.
  const ok = unpickle(p0, { globals: { "os.system": (cmd) => `ran ${cmd}` } });
  assert.equal(ok, "ran ls");
});

Deno.test("unpickle reports corrupt and truncated input as UserError", () => {
  const good = Deno.readFileSync(new URL("nested_p2.pkl", PICKLES));
  for (const cut of [0, 1, 10, good.length - 1]) {
    assert.throws(() => unpickle(good.subarray(0, cut), { source: "cut.pkl" }), (e) => {
      assert.ok(e instanceof UserError, String(e));
      assert.match(e.message, /cut\.pkl/);
      return true;
    });
  }
  assert.throws(
    () => unpickle(new Uint8Array([0x80, 2, 0xff, 0x2e]), { source: "bad.pkl" }),
    /corrupt pickle data in bad\.pkl at byte 2: unknown opcode 0xff/,
  );
  assert.throws(() => unpickle(new Uint8Array([0x80, 2, 0x2e])), /stack underflow/);
  // Persistent ids without a resolver.
  assert.throws(
    () => unpickle(new Uint8Array([0x80, 2, 0x4b, 1, 0x51, 0x2e]), { source: "p.pkl" }),
    /p\.pkl uses persistent ids/,
  );
});
