import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-cpu";
import { bceWithLogits, classBalanceWeights } from "../lib/train/loss.ts";

// Reference: torch.nn.BCELoss()(torch.sigmoid(z), y) and the weighted form, computed by
// tests/fixtures/loss/make_reference.py with Debian's python3-torch.
const ref = JSON.parse(
  await Deno.readTextFile(new URL("./fixtures/loss/reference.json", import.meta.url)),
) as {
  logits: number[][];
  labels: number[][];
  bce: number;
  weighted_bce: number;
  w_pos: number[];
  w_neg: number[];
};

Deno.test("bceWithLogits equals torch BCELoss on sigmoid outputs", async () => {
  await tf.setBackend("cpu");
  const z = tf.tensor2d(ref.logits), y = tf.tensor2d(ref.labels);
  const before = tf.memory().numTensors;
  const loss = bceWithLogits(z, y);
  assert.ok(Math.abs(loss.dataSync()[0] - ref.bce) < 1e-6);
  loss.dispose();
  const w = classBalanceWeights(ref.labels.flat(), ref.labels[0].length);
  w.positive.forEach((v, i) => assert.ok(Math.abs(v - ref.w_pos[i]) < 1e-6));
  w.negative.forEach((v, i) => assert.ok(Math.abs(v - ref.w_neg[i]) < 1e-6));
  const weighted = bceWithLogits(z, y, w);
  assert.ok(Math.abs(weighted.dataSync()[0] - ref.weighted_bce) < 1e-6);
  weighted.dispose();
  assert.equal(tf.memory().numTensors, before);
  tf.dispose([z, y]);
});
