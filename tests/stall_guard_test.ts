/**
 * The bf16 backward-weights guard (lib/backends/native/stall_guard.ts): all threads until a call
 * stalls, then one thread for a backoff that doubles while the retries stall and resets after a
 * clean one; never a stall for a call that is only slow by less than a scheduler quantum.
 */
import assert from "node:assert/strict";
import { StallGuard } from "../lib/backends/native/stall_guard.ts";

/** Runs one call of `key` taking `allMs` on all threads or `oneMs` on one; returns if single. */
function call(g: StallGuard, key: string, allMs: number, oneMs = 2 * allMs): boolean {
  const single = g.singleThread(key);
  g.record(key, single, single ? oneMs : allMs);
  return single;
}

/** Calls until the guard tries all threads again; returns how many ran on one thread. */
function singleRun(g: StallGuard, key: string, allMs: number): number {
  let n = 0;
  while (call(g, key, allMs)) n++;
  return n;
}

Deno.test("StallGuard: each shape all threads, then once on one; stays on all while clean", () => {
  const g = new StallGuard();
  assert.equal(call(g, "a", 10), false);
  assert.equal(call(g, "a", 10), true); // a's one-thread reference
  assert.equal(call(g, "b", 10), false);
  assert.equal(call(g, "b", 10), true);
  for (let i = 0; i < 1000; i++) assert.equal(call(g, i % 2 ? "a" : "b", 10 + (i % 7)), false);
  assert.equal(g.stalls, 0);
});

Deno.test("StallGuard: a stall holds one thread; the backoff doubles while retries stall", () => {
  const g = new StallGuard();
  call(g, "a", 10);
  call(g, "a", 10);
  assert.equal(call(g, "a", 200), false); // the stalled call itself ran on all threads
  assert.equal(g.stalls, 1);
  assert.ok(g.holding);
  const first = singleRun(g, "a", 200); // the retry after it stalls again
  assert.equal(g.stalls, 2);
  const second = singleRun(g, "a", 10); // this retry is clean
  assert.equal(second, 2 * first);
  assert.equal(g.stalls, 2);
  assert.ok(!g.holding);
  // Clean again: the next stall holds for the first backoff, not a doubled one.
  assert.equal(call(g, "a", 10), false);
  assert.equal(call(g, "a", 200), false);
  assert.equal(singleRun(g, "a", 10), first);
});

Deno.test("StallGuard: a shape stalled from its first call is judged by its one-thread time", () => {
  const g = new StallGuard();
  call(g, "a", 300); // all threads, stalled already: no reference yet
  assert.equal(g.stalls, 0);
  call(g, "a", 300, 20); // one thread: 20 ms
  assert.equal(call(g, "a", 300), false);
  assert.equal(g.stalls, 1);
  assert.ok(g.holding);
});

Deno.test("StallGuard: sub-quantum slowdowns of short calls are not stalls", () => {
  const g = new StallGuard();
  call(g, "a", 0.3);
  call(g, "a", 0.3);
  for (let i = 0; i < 100; i++) call(g, "a", 1.5); // 5× slower, but by 1.2 ms
  assert.equal(g.stalls, 0);
});
