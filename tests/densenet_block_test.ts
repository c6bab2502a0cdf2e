/**
 * The dense block op (lib/model/dense_block.ts) memory-efficient and not: same loss, gradients
 * and running statistics, no tensor leak, less memory when memory-efficient.
 */
import { nativeMissingFor } from "./helpers/native.ts";
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-cpu";
import assert from "node:assert/strict";
import {
  createDenseNet,
  type DenseNet,
  type DenseNetConfig,
  disposeModel,
  forward,
  trainableVariables,
} from "../lib/model/densenet.ts";
import { initBackend } from "../lib/backends/backend.ts";
import { relError } from "./assert.ts";

/** Several layers per block, growth not a multiple of the input channels. */
const SMALL: DenseNetConfig = {
  growthRate: 4,
  blockConfig: [3, 4, 3],
  numInitFeatures: 6,
  bnSize: 2,
  numClasses: 5,
};

function bce(logits: tf.Tensor2D, labels: tf.Tensor2D): tf.Scalar {
  return tf.tidy(() =>
    tf.mean(
      tf.add(
        tf.sub(tf.relu(logits), tf.mul(logits, labels)),
        tf.log1p(tf.exp(tf.neg(tf.abs(logits)))),
      ),
    )
  );
}

function step(model: DenseNet, x: tf.Tensor4D, labels: tf.Tensor2D, level: boolean) {
  const vars = trainableVariables(model);
  const { value, grads } = tf.variableGrads(
    () => bce(forward(model, x, { training: true, memoryEfficient: level }), labels),
    vars,
  );
  const out = {
    loss: value.dataSync()[0],
    grads: vars.map((v) => grads[v.name].dataSync().slice()),
  };
  tf.dispose([value, ...Object.values(grads)]);
  return out;
}

const stats = (m: DenseNet) =>
  [...m.batchNorms].map(([prefix, bn]) => ({
    prefix,
    mean: bn.runningMean.dataSync().slice(),
    variance: bn.runningVar.dataSync().slice(),
    tracked: bn.numBatchesTracked,
  }));

const nativeMissing = nativeMissingFor("the native block-op test");

// native: the recompute normalises with the saved statistics (BatchNormReluInference).
for (const backend of ["cpu", "wasm", "native"]) {
  Deno.test({
    name: `memory-efficient block op equals the plain one: loss, gradients, stats, ${backend}`,
    ignore: backend === "native" && nativeMissing != null,
    fn: async () => {
      await initBackend(backend, { threads: backend === "native" ? 2 : 1 });
      try {
        for (const batch of [1, 3]) {
          const x = tf.randomNormal([batch, 35, 35, 3], 0, 1, "float32", 7) as tf.Tensor4D;
          const labels = tf.tidy(() =>
            tf.cast(tf.greater(tf.randomUniform([batch, 5], 0, 1, "float32", 8), 0.5), "float32")
          ) as tf.Tensor2D;
          const plainModel = createDenseNet(SMALL, { seed: 3 });
          const model = createDenseNet(SMALL, { seed: 3 });
          try {
            // Two steps each, so the second starts from updated running statistics.
            for (let s = 0; s < 2; s++) {
              const plain = step(plainModel, x, labels, false);
              const before = tf.memory().numTensors;
              const got = step(model, x, labels, true);
              assert.equal(tf.memory().numTensors, before, "tensors freed");
              const what = `batch ${batch} step ${s}`;
              assert.ok(
                Math.abs(got.loss - plain.loss) <= 1e-5 * Math.abs(plain.loss),
                `${what}: loss ${got.loss} vs ${plain.loss}`,
              );
              const names = trainableVariables(model).map((v) => v.name);
              plain.grads.forEach((g, i) => {
                const err = relError(got.grads[i], g);
                assert.ok(err <= 1e-5, `${what}: gradient of ${names[i]}: rel error ${err}`);
              });
              const [a, b] = [stats(model), stats(plainModel)];
              a.forEach((sa, i) => {
                const sb = b[i];
                assert.equal(sa.tracked, sb.tracked, `${what} ${sa.prefix}: num_batches_tracked`);
                assert.equal(sa.tracked, s + 1, `${what} ${sa.prefix}: one update per forward`);
                for (const k of ["mean", "variance"] as const) {
                  const err = relError(sa[k], sb[k]);
                  assert.ok(err <= 1e-5, `${what} ${sa.prefix} running ${k}: rel error ${err}`);
                }
              });
            }
          } finally {
            tf.dispose([x, labels]);
            disposeModel(plainModel);
            disposeModel(model);
          }
        }
      } finally {
        await tf.setBackend("cpu");
      }
    },
  });
}

Deno.test("block op: no tensor leak over 3 optimiser steps, less memory when memory-efficient", () => {
  const model = createDenseNet(SMALL, { seed: 4 });
  const x = tf.randomNormal([2, 33, 33, 3], 0, 1, "float32", 9) as tf.Tensor4D;
  const labels = tf.tensor2d(Array.from({ length: 10 }, (_, i) => i % 2), [2, 5]);
  const optimizer = tf.train.adam(1e-3);
  const vars = trainableVariables(model);
  const minimize = (level: boolean) => {
    const loss = optimizer.minimize(
      () => bce(forward(model, x, { training: true, memoryEfficient: level }), labels),
      true,
      vars,
    )!;
    const v = loss.dataSync()[0];
    loss.dispose();
    return v;
  };
  try {
    const losses = [minimize(true)]; // creates Adam's moment variables
    const counts: number[] = [];
    for (let s = 0; s < 3; s++) {
      losses.push(minimize(true));
      counts.push(tf.memory().numTensors);
    }
    assert.deepEqual(counts, [counts[0], counts[0], counts[0]], `numTensors ${counts}`);
    assert.ok(losses[3] < losses[0], `loss went down: ${losses}`);
    assert.equal(model.norm5.numBatchesTracked, 4);
    // What the switch is for: less kept between the forward and the backward pass.
    const heldAfterForward = (level: boolean) => {
      let held = 0;
      const { value, grads } = tf.variableGrads(() => {
        const loss = bce(forward(model, x, { training: true, memoryEfficient: level }), labels);
        held = tf.memory().numBytes;
        return loss;
      }, vars);
      tf.dispose([value, ...Object.values(grads)]);
      return held;
    };
    const [off, on] = [heldAfterForward(false), heldAfterForward(true)];
    assert.ok(on < off, `memory-efficient: ${on} bytes held after the forward vs ${off}`);
  } finally {
    optimizer.dispose();
    tf.dispose([x, labels]);
    disposeModel(model);
  }
});
