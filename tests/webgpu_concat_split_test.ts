import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-cpu";
import { countKernels, NO_WEBGPU, usedGpuBuffers, useWebgpu } from "./helpers/webgpu.ts";
import { Rng } from "../lib/util/rng.ts";

// DenseNet's concatenation backward splits along channels into the block's features (64 or
// more, then 32 each); also odd sizes, batch 1, other axes, and an even split.
const CASES: [number[], number[] | number, number][] = [
  [[2, 5, 7, 96], [64, 32], 3],
  [[1, 4, 4, 832], [64, ...Array(24).fill(32)], 3],
  [[3, 3, 3, 13], [5, 1, 7], -1],
  [[2, 6, 5, 4], [2, 3, 1], 1],
  [[5, 3, 2, 2], [2, 3], 0],
  [[2, 3, 4, 6], 3, 3],
];

async function splitOn(shape: number[], sizes: number[] | number, axis: number, v: Float32Array) {
  const x = tf.tensor(v, shape);
  const parts = tf.split(x, sizes, axis);
  const out = await Promise.all(parts.map(async (p) => ({ shape: p.shape, v: await p.data() })));
  tf.dispose([x, ...parts]);
  return out;
}

/** Concatenates parts of `shapes` (values from `v`, in order) along `axis` on the active backend. */
async function concatOn(shapes: number[][], axis: number, v: Float32Array) {
  let at = 0;
  const parts = shapes.map((s) => {
    const n = tf.util.sizeFromShape(s);
    at += n;
    return tf.tensor(v.subarray(at - n, at), s);
  });
  const out = tf.concat(parts, axis);
  const result = { shape: out.shape, v: await out.data() };
  tf.dispose([out, ...parts]);
  return result;
}

// More inputs than one tfjs concat program binds (7), DenseNet's channel concatenations among
// them; 7 or fewer fall back to tfjs's single pass.
const CONCATS: [number[][], number][] = [
  [[[1, 3, 3, 64], ...Array(24).fill([1, 3, 3, 32])], 3],
  [Array.from({ length: 9 }, (_, i) => [2, 2, 3, 1 + 2 * i]), -1],
  [Array.from({ length: 9 }, (_, i) => [1 + (i % 3), 2, 2]), 0],
  [Array.from({ length: 8 }, (_, i) => [2, 1 + i, 3]), 1],
  [[[2, 2, 5], [2, 2, 3]], 2],
];

Deno.test({
  name: "WebGPU Concat (one dispatch for many inputs) equals the cpu backend; no leaks",
  ignore: NO_WEBGPU != null,
  async fn() {
    const rng = new Rng(32);
    for (const [shapes, axis] of CONCATS) {
      const total = shapes.reduce((n, s) => n + tf.util.sizeFromShape(s), 0);
      const v = Float32Array.from({ length: total }, () => rng.next());
      await tf.setBackend("cpu");
      const expected = await concatOn(shapes, axis, v);
      await useWebgpu();
      const got = await concatOn(shapes, axis, v);
      assert.deepEqual(got.shape, expected.shape);
      assert.deepEqual(got.v, expected.v, `${shapes.length} inputs, axis ${axis}`);
    }
    await useWebgpu();
    const parts = [
      tf.randomNormal([1, 4, 4, 64]),
      ...Array.from({ length: 24 }, () => tf.randomNormal([1, 4, 4, 32])),
    ];
    const count = await countKernels(async () => {
      const out = tf.concat(parts, 3);
      await out.data();
      out.dispose();
    });
    assert.equal(count.dispatches, 1); // tfjs's own: a tree of 5 concatenations
    const before = [tf.memory().numTensors, usedGpuBuffers()];
    for (let i = 0; i < 20; i++) tf.concat(parts, 3).dispose();
    assert.deepEqual([tf.memory().numTensors, usedGpuBuffers()], before);
    tf.dispose(parts);
  },
});

Deno.test({
  name: "WebGPU SplitV (one dispatch) equals the cpu backend; no leaks",
  ignore: NO_WEBGPU != null,
  async fn() {
    const rng = new Rng(31);
    for (const [shape, sizes, axis] of CASES) {
      const v = Float32Array.from({ length: tf.util.sizeFromShape(shape) }, () => rng.next());
      await tf.setBackend("cpu");
      const expected = await splitOn(shape, sizes, axis, v);
      await useWebgpu();
      const got = await splitOn(shape, sizes, axis, v);
      assert.deepEqual(got.map((p) => p.shape), expected.map((p) => p.shape));
      got.forEach((p, i) => assert.deepEqual(p.v, expected[i].v, `${shape} ${sizes} part ${i}`));
    }
    await useWebgpu();
    const x = tf.randomNormal([1, 4, 4, 832], 0, 1, "float32", 1);
    const sizes = [64, ...Array(24).fill(32)];
    const count = await countKernels(async () => {
      const parts = tf.split(x, sizes, 3);
      await parts[24].data();
      tf.dispose(parts);
    });
    assert.equal(count.dispatches, 1); // tfjs's own: one slice per part, 25
    const axis0 = await countKernels(() => tf.dispose(tf.split(x, [1], 0)));
    assert.equal(axis0.dispatches, 0);
    const before = [tf.memory().numTensors, usedGpuBuffers()];
    for (let i = 0; i < 20; i++) tf.dispose(tf.split(x, sizes, 3));
    assert.deepEqual([tf.memory().numTensors, usedGpuBuffers()], before);
    x.dispose();
  },
});
