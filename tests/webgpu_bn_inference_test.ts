import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import { BN_TRAIN_KERNEL } from "../lib/backends/seam.ts";
import { BN_CONCAT_INFERENCE_KERNEL, BN_INFERENCE_KERNEL } from "../lib/backends/seam.ts";
import { assertClose } from "./assert.ts";
import { countKernels, NO_WEBGPU, usedGpuBuffers, useWebgpu } from "./helpers/webgpu.ts";
import { Rng } from "../lib/util/rng.ts";

const EPS = 1e-5;
type Lead = [number, number, number];

interface Case {
  lead: Lead;
  channels: number[];
  x: Float32Array[];
  mean: Float32Array;
  variance: Float32Array;
  gamma: Float32Array;
  beta: Float32Array;
}

function makeCase(lead: Lead, channels: number[], rng: Rng): Case {
  const m = lead[0] * lead[1] * lead[2], c = channels.reduce((a, b) => a + b, 0);
  const u = (k: number, lo: number, hi: number) =>
    Float32Array.from({ length: k }, () => lo + (hi - lo) * rng.next());
  return {
    lead,
    channels,
    x: channels.map((ci) => u(m * ci, -2, 3)),
    mean: u(c, -1, 1.5),
    variance: u(c, 0.05, 2),
    gamma: u(c, -1.5, 1.5),
    beta: u(c, -0.5, 0.5),
  };
}

/** The contract in float64, on the channel concatenation of the case's inputs. */
function reference(p: Case, relu: boolean): Float64Array {
  const m = p.lead[0] * p.lead[1] * p.lead[2], c = p.mean.length;
  const y = new Float64Array(m * c);
  let c0 = 0;
  p.x.forEach((x, i) => {
    const ci = p.channels[i];
    for (let r = 0; r < m; r++) {
      for (let k = 0; k < ci; k++) {
        const ch = c0 + k;
        const v = (x[r * ci + k] - p.mean[ch]) * p.gamma[ch] / Math.sqrt(p.variance[ch] + EPS) +
          p.beta[ch];
        y[r * c + ch] = relu ? Math.max(v, 0) : v;
      }
    }
    c0 += ci;
  });
  return y;
}

function vectors(p: Case) {
  return {
    mean: tf.tensor1d(p.mean),
    variance: tf.tensor1d(p.variance),
    gamma: tf.tensor1d(p.gamma),
    beta: tf.tensor1d(p.beta),
  };
}

/** Runs the concat kernel (or, for a single input with `plain`, the plain one). */
async function run(p: Case, relu: boolean, plain = false): Promise<Float32Array> {
  const attrs = { epsilon: EPS, relu } as unknown as tf.NamedAttrMap;
  const inputs: Record<string, tf.Tensor> = vectors(p);
  const xs = p.x.map((x, i) => tf.tensor4d(x, [...p.lead, p.channels[i]]));
  let y: tf.Tensor;
  if (plain) {
    y = tf.engine().runKernel(
      BN_INFERENCE_KERNEL,
      { ...inputs, x: xs[0] },
      attrs,
    ) as tf.Tensor;
  } else {
    xs.forEach((x, i) => (inputs[`x${i}`] = x));
    y = tf.engine().runKernel(BN_CONCAT_INFERENCE_KERNEL, inputs, attrs) as tf.Tensor;
  }
  assert.deepEqual(y.shape, [...p.lead, p.mean.length]);
  assert.equal(y.dtype, "float32");
  const out = await y.data() as Float32Array;
  tf.dispose([y, ...xs, ...Object.values(inputs)]);
  return out;
}

/** Within float32 rounding of a few operations on values of order 10. */
const TOL = 1e-5;

Deno.test({
  name: "WebGPU BatchNormReluInference equals a float64 reference",
  ignore: NO_WEBGPU != null,
  async fn() {
    await useWebgpu();
    const rng = new Rng(21);
    const cases: [Lead, number, boolean][] = [
      [[1, 5, 7], 6, true],
      [[2, 3, 5], 33, false],
      [[2, 7, 9], 64, true],
      [[1, 9, 9], 64, false],
      [[2, 3, 3], 1024, true],
      [[1, 1, 1], 3, false],
    ];
    for (const [lead, c, relu] of cases) {
      const p = makeCase(lead, [c], rng);
      assertClose(await run(p, relu, true), reference(p, relu), TOL, `${lead},${c} relu=${relu}`);
    }
  },
});

Deno.test({
  name: "WebGPU BatchNormReluConcatInference equals a float64 reference of the concatenation",
  ignore: NO_WEBGPU != null,
  async fn() {
    await useWebgpu();
    const rng = new Rng(22);
    const f32 = Array(24).fill(32);
    const cases: [Lead, number[]][] = [
      [[1, 5, 7], [64]], // k = 1
      [[2, 3, 5], [3, 5]], // k = 2, scalar path
      [[2, 7, 9], [64, 32]], // k = 2, vec4 path
      [[1, 5, 5], [3, 5, 6, 33, 1, 7]], // k = 6: every input bound, scalar
      [[2, 3, 7], [64, 3, 32, 5, 32, 33, 6]], // k = 7: a tail, scalar
      [[1, 7, 7], [64, 32, 32, 32, 32, 32, 32]], // k = 7: a tail, vec4
      [[2, 3, 3], [256, ...f32]], // k = 25, C = 1,024 (DenseNet-121 block 3)
      [[1, 3, 5], [5, ...Array(20).fill(3)]], // k = 21, scalar
    ];
    for (const [lead, channels] of cases) {
      for (const relu of [true, false]) {
        const p = makeCase(lead, channels, rng);
        assertClose(await run(p, relu), reference(p, relu), TOL, `${lead} ${channels} ${relu}`);
      }
    }
  },
});

Deno.test({
  name: "WebGPU BatchNormReluInference with the batch statistics gives BatchNormReluTrain's y",
  ignore: NO_WEBGPU != null,
  async fn() {
    await useWebgpu();
    const rng = new Rng(23);
    for (
      const [lead, c, relu] of [
        [[2, 5, 7], 6, true],
        [[1, 3, 5], 33, false],
        [[2, 7, 9], 64, true],
        [[2, 28, 28], 32, false], // several splits of M
      ] as [Lead, number, boolean][]
    ) {
      const p = makeCase(lead, [c], rng);
      const attrs = { epsilon: EPS, relu } as unknown as tf.NamedAttrMap;
      const x = tf.tensor4d(p.x[0], [...lead, c]);
      const gamma = tf.tensor1d(p.gamma), beta = tf.tensor1d(p.beta);
      const [y, mean, variance] = tf.engine().runKernel(
        BN_TRAIN_KERNEL,
        { x, gamma, beta },
        attrs,
      ) as tf.Tensor[];
      const again = tf.engine().runKernel(
        BN_INFERENCE_KERNEL,
        { x, mean, variance, gamma, beta },
        attrs,
      ) as tf.Tensor;
      const [a, b] = [await y.data(), await again.data()];
      assert.deepEqual(b, a, `${lead},${c} relu=${relu}: not bitwise equal`);
      tf.dispose([x, gamma, beta, y, mean, variance, again]);
    }
  },
});

Deno.test({
  name: "WebGPU BatchNorm inference kernels: one dispatch each, no leaks",
  ignore: NO_WEBGPU != null,
  async fn() {
    await useWebgpu();
    const rng = new Rng(24);
    const runs: [Case, boolean][] = [
      [makeCase([2, 5, 5], [96], rng), true],
      [makeCase([2, 5, 5], [64, 32, 32], rng), false],
      [makeCase([1, 3, 3], [256, ...Array(24).fill(32)], rng), false],
      [makeCase([1, 3, 3], [3, 5, 6, 1, 2, 7, 9, 4], rng), false],
    ];
    for (const [p, plain] of runs) {
      await run(p, true, plain);
      const count = await countKernels(() => run(p, true, plain));
      assert.equal(count.dispatches, 1, `${p.channels}: ${count.names.join(",")}`);
      const before = [tf.memory().numTensors, usedGpuBuffers()];
      for (let i = 0; i < 5; i++) await run(p, i % 2 === 0, plain);
      assert.deepEqual([tf.memory().numTensors, usedGpuBuffers()], before, `${p.channels}`);
    }
  },
});

Deno.test({
  name: "WebGPU BatchNorm inference kernels reject other dtypes and inconsistent shapes",
  ignore: NO_WEBGPU != null,
  async fn() {
    await useWebgpu();
    const attrs = { epsilon: EPS, relu: true } as unknown as tf.NamedAttrMap;
    const v = (c: number) => tf.ones([c]);
    const vecs = (c: number) => ({ mean: v(c), variance: v(c), gamma: v(c), beta: v(c) });
    const before = tf.memory().numTensors;
    const throws = (name: string, inputs: tf.NamedTensorMap, re: RegExp) => {
      assert.throws(() => tf.engine().runKernel(name, inputs, attrs), re);
      tf.dispose(Object.values(inputs));
    };
    const INF = BN_INFERENCE_KERNEL, CAT = BN_CONCAT_INFERENCE_KERNEL;
    throws(INF, { x: tf.ones([1, 2, 2, 4], "int32"), ...vecs(4) }, /float32/);
    throws(INF, { x: tf.ones([1, 2, 2, 4]), ...vecs(5) }, /4 channels/);
    const [mean, variance, gamma, beta] = [v(4), v(4), tf.ones([4], "int32"), v(4)];
    throws(INF, { x: tf.ones([1, 2, 2, 4]), mean, variance, gamma, beta }, /float32/);
    throws(CAT, { ...vecs(8), x0: tf.ones([1, 2, 2, 4]), x1: tf.ones([1, 2, 3, 4]) }, /leading/);
    throws(CAT, { ...vecs(9), x0: tf.ones([1, 2, 2, 4]), x1: tf.ones([1, 2, 2, 4]) }, /8 chan/);
    throws(
      CAT,
      { ...vecs(8), x0: tf.ones([1, 2, 2, 4]), x1: tf.ones([1, 2, 2, 4], "int32") },
      /fl/,
    );
    throws(CAT, vecs(8), /no inputs/);
    assert.equal(tf.memory().numTensors, before);
  },
});
