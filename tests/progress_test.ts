import assert from "node:assert/strict";
import { formatDuration, Progress } from "../lib/util/progress.ts";

Deno.test("formatDuration", () => {
  assert.equal(formatDuration(5), "0:05");
  assert.equal(formatDuration(3725), "1:02:05");
  assert.equal(formatDuration(NaN), "?");
});

Deno.test("Progress counts, rates and stays silent when asked", () => {
  const p = new Progress("x", 10, { silent: true });
  p.tick(4, "loss 1");
  p.tick(6);
  p.finish();
  assert.equal(p.done, 10);
  assert.ok(p.rate > 0);
});
