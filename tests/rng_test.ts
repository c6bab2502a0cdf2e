import assert from "node:assert/strict";
import { Rng } from "../lib/util/rng.ts";

Deno.test("Rng: same seed gives the same stream, other seeds differ", () => {
  const a = new Rng(42), b = new Rng(42), c = new Rng(43);
  const xs = Array.from({ length: 5 }, () => a.next());
  assert.deepEqual(xs, Array.from({ length: 5 }, () => b.next()));
  assert.notDeepEqual(xs, Array.from({ length: 5 }, () => c.next()));
});

Deno.test("Rng: draws have the documented ranges and moments", () => {
  const rng = new Rng(7);
  const n = 20000;
  let sum = 0, sumSq = 0, heads = 0, lo = Infinity, hi = -Infinity;
  for (let i = 0; i < n; i++) {
    const u = rng.uniform(-10, 10);
    lo = Math.min(lo, u);
    hi = Math.max(hi, u);
    const z = rng.normal();
    sum += z;
    sumSq += z * z;
    if (rng.bernoulli(0.5)) heads++;
  }
  assert.ok(lo >= -10 && hi < 10);
  assert.ok(Math.abs(sum / n) < 0.03, `normal mean ${sum / n}`);
  assert.ok(Math.abs(sumSq / n - 1) < 0.05, `normal variance ${sumSq / n}`);
  assert.ok(Math.abs(heads / n - 0.5) < 0.02, `bernoulli ${heads / n}`);
});

Deno.test("Rng: shuffle is a seeded permutation", () => {
  const items = Array.from({ length: 100 }, (_, i) => i);
  const s1 = new Rng(1).shuffle([...items]);
  assert.deepEqual([...s1].sort((x, y) => x - y), items);
  assert.deepEqual(new Rng(1).shuffle([...items]), s1);
  assert.notDeepEqual(s1, items);
});
