import assert from "node:assert/strict";
import { ReduceLROnPlateau } from "../lib/train/scheduler.ts";

// Expected learning rates below were produced by torch.optim.lr_scheduler.ReduceLROnPlateau
// (torch 1.13) fed the same loss sequences; see tests/fixtures/scheduler/make_reference.py.
const reference = JSON.parse(
  await Deno.readTextFile(new URL("./fixtures/scheduler/reference.json", import.meta.url)),
) as { factor: number; patience: number; lr: number; losses: number[]; lrs: number[] }[];

Deno.test("ReduceLROnPlateau follows torch's learning rates on reference sequences", () => {
  for (const c of reference) {
    const s = new ReduceLROnPlateau(c.lr, { factor: c.factor, patience: c.patience });
    const lrs = c.losses.map((loss) => {
      s.step(loss);
      return s.lr;
    });
    lrs.forEach((lr, i) => assert.ok(Math.abs(lr - c.lrs[i]) < 1e-15, `case ${JSON.stringify(c)}`));
  }
});

Deno.test("ReduceLROnPlateau reports a drop only when it lowers the rate", () => {
  const s = new ReduceLROnPlateau(0.001, { factor: 0.1, patience: 0 });
  assert.equal(s.step(1.0), null);
  assert.equal(s.step(0.99995), 0.0001); // within the 1e-4 relative threshold: no improvement
  assert.equal(s.step(0.5), null);
});
