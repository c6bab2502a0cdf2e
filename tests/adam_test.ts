import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-cpu";
import { Adam } from "../lib/adam.ts";
import { assertClose } from "./assert.ts";

// Reference: torch.optim.Adam (torch 1.13), tests/fixtures/adam/make_reference.py.
const ref = JSON.parse(
  await Deno.readTextFile(new URL("./fixtures/adam/reference.json", import.meta.url)),
) as { w0: number[]; grads: number[][]; traj: number[][] };

Deno.test("Adam follows torch.optim.Adam's trajectory, including an LR change", async () => {
  await tf.setBackend("cpu");
  const w = tf.variable(tf.tensor2d(ref.w0, [3, 4]), true, "adam_test/w");
  const vars = [w];
  const adam = new Adam({ lr: 0.001 });
  const before = tf.memory().numTensors;
  ref.grads.forEach((g, i) => {
    if (i === 3) adam.lr = 0.0001;
    const grad = tf.tensor2d(g, [3, 4]);
    adam.apply(vars, { [w.name]: grad });
    grad.dispose();
    assertClose(w.dataSync(), ref.traj[i], 1e-6, `step ${i + 1}`);
  });
  assert.equal(tf.memory().numTensors, before + 2); // the two moment estimates
  adam.dispose();
  w.dispose();
});
