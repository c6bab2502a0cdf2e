import assert from "node:assert/strict";
import { UserError } from "../lib/util/errors.ts";
import { Rng } from "../lib/util/rng.ts";
import { officialSplit, patientsOf, patientSplit, type Split } from "../lib/data/split.ts";

interface Entry {
  image: string;
  patientId: string;
}

/** 1000 patients with 1 to 6 images each. */
function makeEntries(patients = 1000): Entry[] {
  const rng = new Rng(123);
  const out: Entry[] = [];
  for (let p = 1; p <= patients; p++) {
    const n = 1 + rng.int(6);
    for (let k = 0; k < n; k++) {
      out.push({
        image: `${String(p).padStart(8, "0")}_${String(k).padStart(3, "0")}.png`,
        patientId: String(p),
      });
    }
  }
  return out;
}

function assertDisjoint(split: Split<Entry>): void {
  const owner = new Map<string, string>();
  for (const subset of ["train", "val", "test"] as const) {
    for (const e of split[subset]) {
      const o = owner.get(e.patientId);
      assert.ok(o === undefined || o === subset, `patient ${e.patientId} in ${o} and ${subset}`);
      owner.set(e.patientId, subset);
    }
  }
}

const entries = makeEntries();

Deno.test("patientSplit: no patient in two subsets, 20% / 0.1/0.8 of patients, all images", () => {
  const s = patientSplit(entries, { seed: 42 });
  assertDisjoint(s);
  const p = { train: 0, val: 0, test: 0 };
  for (const k of ["train", "val", "test"] as const) p[k] = patientsOf(s[k]).length;
  assert.equal(p.test, 200); // ceil(0.2 * 1000)
  assert.equal(p.val, 100); // ceil(0.125 * 800)
  assert.equal(p.train, 700);
  assert.equal(s.train.length + s.val.length + s.test.length, entries.length);
  // Input order is kept inside each subset.
  const pos = new Map(entries.map((e, i) => [e.image, i]));
  for (const k of ["train", "val", "test"] as const) {
    for (let i = 1; i < s[k].length; i++) {
      assert.ok(pos.get(s[k][i - 1].image)! < pos.get(s[k][i].image)!);
    }
  }
});

Deno.test("patientSplit is deterministic for a seed and independent of row order", () => {
  const a = patientSplit(entries, { seed: 7 });
  const b = patientSplit(entries, { seed: 7 });
  assert.deepEqual(a, b);
  const shuffled = new Rng(99).shuffle([...entries]);
  const c = patientSplit(shuffled, { seed: 7 });
  for (const k of ["train", "val", "test"] as const) {
    assert.deepEqual(patientsOf(c[k]), patientsOf(a[k]));
  }
  const d = patientSplit(entries, { seed: 8 });
  assert.notDeepEqual(patientsOf(d.test), patientsOf(a.test));
});

Deno.test("patientSplit ratios with odd patient counts follow GroupShuffleSplit (ceil)", () => {
  const s = patientSplit(makeEntries(21), { seed: 1 });
  assert.equal(patientsOf(s.test).length, 5); // ceil(4.2)
  assert.equal(patientsOf(s.val).length, 2); // ceil(16 * 0.125)
  assert.equal(patientsOf(s.train).length, 14);
  assertDisjoint(s);
});

Deno.test("subsetSize draws exactly N patients first, deterministically", () => {
  const s = patientSplit(entries, { seed: 42, subsetSize: 100 });
  assertDisjoint(s);
  const all = [...s.train, ...s.val, ...s.test];
  assert.equal(patientsOf(all).length, 100);
  assert.equal(patientsOf(s.test).length, 20);
  assert.equal(patientsOf(s.val).length, 10);
  assert.deepEqual(s, patientSplit(entries, { seed: 42, subsetSize: 100 }));
  assert.throws(
    () => patientSplit(entries, { seed: 1, subsetSize: 1001 }),
    (e: Error) => e instanceof UserError && /1001.*1000 patients/.test(e.message),
  );
  assert.throws(() => patientSplit(makeEntries(2), { seed: 1 }), /at least 3/);
});

Deno.test("officialSplit: test from the list, val patient-grouped from train_val", () => {
  // A patient-wise official list: patients divisible by 5 are test patients.
  const test = new Set(entries.filter((e) => Number(e.patientId) % 5 === 0).map((e) => e.image));
  const trainVal = new Set(entries.filter((e) => !test.has(e.image)).map((e) => e.image));
  trainVal.delete(entries[0].image); // one image in neither list
  const s = officialSplit(entries, { trainVal, test }, { seed: 3 });
  assertDisjoint(s);
  assert.deepEqual(new Set(s.test.map((e) => e.image)), test);
  assert.equal(s.unlisted, 1);
  assert.equal(s.overlapping, 0);
  const tvPatients = patientsOf([...s.train, ...s.val]).length;
  assert.equal(patientsOf(s.val).length, Math.ceil(tvPatients * 0.125));
  assert.deepEqual(s, officialSplit(entries, { trainVal, test }, { seed: 3 }));

  // A test patient's train_val images are left out, so no patient is in two subsets.
  const leaky = new Set(trainVal);
  const extra = { image: "00000005_999.png", patientId: "5" };
  leaky.add(extra.image);
  const t = officialSplit([...entries, extra], { trainVal: leaky, test }, { seed: 3 });
  assertDisjoint(t);
  assert.equal(t.overlapping, 1);
  assert.ok(!t.train.includes(extra) && !t.val.includes(extra));

  const sub = officialSplit(entries, { trainVal, test }, { seed: 3, subsetSize: 50 });
  assert.equal(patientsOf([...sub.train, ...sub.val, ...sub.test]).length, 50);
});
