import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import { initBackend } from "../lib/backends/backend.ts";
import {
  createDenseNet,
  disposeModel,
  forward,
  TINY_DENSENET,
  trainableVariables,
} from "../lib/model/densenet.ts";
import { bceWithLogits } from "../lib/train/loss.ts";
import { Adam } from "../lib/train/adam.ts";
import { trainStep } from "../lib/train/training.ts";
import { Rng } from "../lib/util/rng.ts";
import { countKernels, NO_WEBGPU, usedGpuBuffers, useWebgpu } from "./helpers/webgpu.ts";

const BATCH = 3, SIZE = 32;
const rng = new Rng(21);
const images = Float32Array.from({ length: BATCH * SIZE * SIZE * 3 }, () => rng.next() * 4 - 2);
const labels = Float32Array.from({ length: BATCH * 14 }, () => (rng.next() < 0.3 ? 1 : 0));

/** Loss, gradients (by variable order) and BN running statistics of one training forward. */
async function step(memoryEfficient: boolean) {
  const model = createDenseNet(TINY_DENSENET, { seed: 5 });
  const x = tf.tensor4d(images, [BATCH, SIZE, SIZE, 3]);
  const y = tf.tensor2d(labels, [BATCH, 14]);
  const vars = trainableVariables(model);
  const { value, grads } = tf.variableGrads(
    () => bceWithLogits(forward(model, x, { training: true, memoryEfficient }), y),
    vars,
  );
  const out = {
    loss: (await value.data())[0],
    grads: await Promise.all(vars.map(async (v) => await grads[v.name].data())),
    stats: await Promise.all(
      [...model.batchNorms.values()].flatMap((bn) => [bn.runningMean.data(), bn.runningVar.data()]),
    ),
  };
  tf.dispose([x, y, value, ...Object.values(grads)]);
  disposeModel(model);
  return out;
}

const maxAbs = (v: ArrayLike<number>) =>
  Array.from(v).reduce((m, x) => Math.max(m, Math.abs(x)), 0);

/**
 * max |a − b| ≤ tol · max(max |b|, floor): relative to the tensor's scale, with a floor for a
 * tensor that is a cancelling sum near zero (the stem BatchNorm's weight gradient is ~10⁵×
 * smaller than the others, and there even the cpu and wasm backends differ by 1e-2 relative).
 */
function assertRelClose(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  tol: number,
  what: string,
  floor = 0,
) {
  let worst = 0;
  for (let i = 0; i < b.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]));
  const scale = Math.max(maxAbs(b), floor);
  assert.ok(worst <= tol * scale, `${what}: max |diff| ${worst} > ${tol} × ${scale}`);
}

Deno.test({
  name: "WebGPU: a small DenseNet's training step equals the wasm path (loss, grads, BN stats)",
  ignore: NO_WEBGPU != null,
  async fn() {
    for (const memoryEfficient of [false, true]) {
      await initBackend("wasm", { threads: 1 });
      const wasm = await step(memoryEfficient);
      await useWebgpu();
      const gpu = await step(memoryEfficient);
      const what = `memory efficient ${memoryEfficient}`;
      assert.ok(Math.abs(gpu.loss - wasm.loss) <= 1e-4 * Math.abs(wasm.loss), `${what}: loss`);
      const floor = 1e-2 * Math.max(...wasm.grads.map(maxAbs));
      gpu.grads.forEach((g, i) =>
        assertRelClose(g, wasm.grads[i], 1e-4, `${what}: grad ${i}`, floor)
      );
      gpu.stats.forEach((s, i) => assertRelClose(s, wasm.stats[i], 1e-4, `${what}: BN stat ${i}`));
    }
  },
});

Deno.test({
  name: "WebGPU: 20 training steps of a small DenseNet leak no tensors or GPU buffers",
  ignore: NO_WEBGPU != null,
  async fn() {
    await useWebgpu();
    const model = createDenseNet(TINY_DENSENET, { seed: 6 });
    const adam = new Adam({ lr: 1e-3 });
    const x = tf.tensor4d(images, [BATCH, SIZE, SIZE, 3]);
    const y = tf.tensor2d(labels, [BATCH, 14]);
    const opts = { memoryEfficient: false };
    await trainStep(model, adam, x, y, opts); // creates Adam's moments
    const count = await countKernels(() => trainStep(model, adam, x, y, opts));
    console.log(`small DenseNet step: ${count.kernels} kernels, ${count.dispatches} dispatches`);
    const before = [tf.memory().numTensors, usedGpuBuffers()];
    let loss = Infinity;
    for (let i = 0; i < 20; i++) loss = (await trainStep(model, adam, x, y, opts)).loss;
    assert.deepEqual([tf.memory().numTensors, usedGpuBuffers()], before);
    assert.ok(Number.isFinite(loss));
    tf.dispose([x, y]);
    adam.dispose();
    disposeModel(model);
  },
});
