import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-cpu";
import { Adam } from "../lib/train/adam.ts";
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

Deno.test("Adam over several variables equals one Adam per variable", async () => {
  await tf.setBackend("cpu");
  const a0 = tf.tensor2d(ref.w0, [3, 4]), b0 = tf.tensor1d([0.5, -1, 2]);
  const joint = [tf.variable(a0, true, "adam_joint/a"), tf.variable(b0, true, "adam_joint/b")];
  const alone = [tf.variable(a0, true, "adam_alone/a"), tf.variable(b0, true, "adam_alone/b")];
  const adam = new Adam({ lr: 0.01 });
  const single = [new Adam({ lr: 0.01 }), new Adam({ lr: 0.01 })];
  for (const [i, g] of ref.grads.entries()) {
    const ga = tf.tensor2d(g, [3, 4]), gb = tf.tensor1d([g[0], -g[1], i]);
    adam.apply(joint, { [joint[0].name]: ga, [joint[1].name]: gb });
    single[0].apply([alone[0]], { [alone[0].name]: ga });
    single[1].apply([alone[1]], { [alone[1].name]: gb });
    tf.dispose([ga, gb]);
  }
  assertClose(joint[0].dataSync(), alone[0].dataSync(), 0, "a");
  assertClose(joint[1].dataSync(), alone[1].dataSync(), 0, "b");
  assert.throws(() => adam.apply([joint[0]], { [joint[0].name]: a0 }), /variables changed/);
  assert.throws(() => adam.apply(joint, {}), /no gradient/);
  [adam, ...single].forEach((o) => o.dispose());
  tf.dispose([a0, b0, ...joint, ...alone]);
});
