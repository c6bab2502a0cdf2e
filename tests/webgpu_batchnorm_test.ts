import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-cpu";
import { bnSplitPlan } from "../lib/backends/webgpu/batchnorm.ts";
import { BN_GRAD_KERNEL, BN_TRAIN_KERNEL } from "../lib/backends/seam.ts";
import { assertClose } from "./assert.ts";
import { countKernels, NO_WEBGPU, usedGpuBuffers, useWebgpu } from "./helpers/webgpu.ts";
import { Rng } from "../lib/util/rng.ts";

const EPS = 1e-5;

interface Inputs {
  shape: [number, number, number, number];
  x: Float32Array;
  dy: Float32Array;
  gamma: Float32Array;
  beta: Float32Array;
}

function inputs(shape: [number, number, number, number], rng: Rng, offset = 0): Inputs {
  const c = shape[3], n = tf.util.sizeFromShape(shape);
  const u = (k: number, lo: number, hi: number) =>
    Float32Array.from({ length: k }, () => lo + (hi - lo) * rng.next());
  return {
    shape,
    x: u(n, offset - 2, offset + 3),
    dy: u(n, -1, 1),
    gamma: u(c, -1.5, 1.5), // negative γ included: the ReLU mask differs from x̂ > 0
    beta: u(c, -0.5, 0.5),
  };
}

/** Runs both contract kernels on the active backend; returns every output's values. */
async function runKernels(p: Inputs, relu: boolean): Promise<Float32Array[]> {
  const c = p.shape[3];
  const [x, dy] = [tf.tensor4d(p.x, p.shape), tf.tensor4d(p.dy, p.shape)];
  const [gamma, beta] = [tf.tensor1d(p.gamma), tf.tensor1d(p.beta)];
  const attrs = { epsilon: EPS, relu } as unknown as tf.NamedAttrMap;
  const fwd = tf.engine().runKernel(
    BN_TRAIN_KERNEL,
    { x, gamma, beta },
    attrs,
  ) as tf.Tensor[];
  const [, mean, variance] = fwd;
  const bwd = tf.engine().runKernel(
    BN_GRAD_KERNEL,
    { dy, x, gamma, beta, mean, variance },
    attrs,
  ) as tf.Tensor[];
  assert.deepEqual([...fwd, ...bwd].map((t) => t.shape), [p.shape, [c], [c], p.shape, [c], [c]]);
  const out = await Promise.all([...fwd, ...bwd].map(async (t) => await t.data() as Float32Array));
  tf.dispose([x, dy, gamma, beta, ...fwd, ...bwd]);
  return out;
}

/** The contract composed from tfjs ops (run on the cpu backend). */
function reference(p: Inputs, relu: boolean): Float32Array[] {
  return tf.tidy(() => {
    const x = tf.tensor4d(p.x, p.shape), dy = tf.tensor4d(p.dy, p.shape);
    const gamma = tf.tensor1d(p.gamma), beta = tf.tensor1d(p.beta);
    const m = p.x.length / p.shape[3];
    const { mean, variance } = tf.moments(x, [0, 1, 2]);
    const rstd = tf.rsqrt(tf.add(variance, EPS));
    const xhat = tf.mul(tf.sub(x, mean), rstd);
    const pre = tf.add(tf.mul(xhat, gamma), beta);
    const y = relu ? tf.relu(pre) : pre;
    const g = relu ? tf.mul(dy, tf.cast(tf.greater(pre, 0), "float32")) : dy;
    const dbeta = tf.sum(g, [0, 1, 2]);
    const dgamma = tf.sum(tf.mul(g, xhat), [0, 1, 2]);
    const dx = tf.mul(
      tf.div(tf.mul(gamma, rstd), m),
      tf.sub(tf.sub(tf.mul(g, m), dbeta), tf.mul(xhat, dgamma)),
    );
    return [y, mean, variance, dx, dgamma, dbeta].map((t) => t.dataSync() as Float32Array);
  });
}

const NAMES = ["y", "mean", "variance", "dx", "dgamma", "dbeta"];

Deno.test("bnSplitPlan covers M exactly", () => {
  for (const [m, c] of [[200704, 64], [9, 13], [50000, 1024], [257, 3]]) {
    const { splits, chunk } = bnSplitPlan(m, c);
    assert.ok((splits - 1) * chunk < m && splits * chunk >= m, `${m}, ${c}`);
  }
  assert.ok(bnSplitPlan(200704, 64).splits > 100);
});

Deno.test({
  name: "WebGPU BatchNormReluTrain/Grad equal the contract composed from tfjs ops",
  ignore: NO_WEBGPU != null,
  async fn() {
    const rng = new Rng(11);
    const cases: [[number, number, number, number], boolean][] = [
      [[2, 5, 7, 64], true],
      [[1, 3, 3, 13], false], // batch 1, odd channels
      [[3, 8, 9, 130], true], // channels not a multiple of the 64-channel tile
      [[2, 16, 16, 256], false],
      [[1, 28, 28, 32], true], // several splits of M
    ];
    for (const [shape, relu] of cases) {
      const p = inputs(shape, rng);
      await tf.setBackend("cpu");
      const expected = reference(p, relu);
      await useWebgpu();
      const got = await runKernels(p, relu);
      const m = p.x.length / shape[3];
      got.forEach((v, i) => {
        // Sums over M (dgamma, dbeta) carry float32 rounding that grows like √M.
        const tol = i >= 4 ? 2e-6 * m : 2e-5;
        assertClose(v, expected[i], tol, `${shape} relu=${relu} ${NAMES[i]}`);
      });
    }
  },
});

Deno.test({
  name: "WebGPU BatchNorm reductions stay accurate at M = 16·112·112 (float64 reference)",
  ignore: NO_WEBGPU != null,
  async fn() {
    await useWebgpu();
    const p = inputs([16, 112, 112, 3], new Rng(12), 4); // mean ≈ 4.5: cancellation-prone
    const [, mean, variance, , dgamma, dbeta] = await runKernels(p, true);
    const c = 3, m = p.x.length / c;
    for (let ch = 0; ch < c; ch++) {
      let s = 0;
      for (let r = 0; r < m; r++) s += p.x[r * c + ch];
      const mu = s / m;
      let s2 = 0;
      for (let r = 0; r < m; r++) s2 += (p.x[r * c + ch] - mu) ** 2;
      const v = s2 / m;
      const rstd = 1 / Math.sqrt(v + EPS);
      let db = 0, dg = 0;
      for (let r = 0; r < m; r++) {
        const xh = (p.x[r * c + ch] - mu) * rstd;
        if (xh * p.gamma[ch] + p.beta[ch] <= 0) continue;
        db += p.dy[r * c + ch];
        dg += p.dy[r * c + ch] * xh;
      }
      // Within ~2 float32 ulps; a sequential float32 sum of x is off by ~9e-6 relative here.
      assert.ok(Math.abs(mean[ch] - mu) <= 1e-6 * Math.abs(mu), `mean ${mean[ch]} vs ${mu}`);
      assert.ok(Math.abs(variance[ch] - v) <= 1e-6 * v, `variance ${variance[ch]} vs ${v}`);
      // Σ of 2·10⁵ terms in ±1: a sequential float32 sum is off by ~3e-3 here; blocked ≪ that.
      assert.ok(Math.abs(dbeta[ch] - db) <= 1e-4, `dbeta ${dbeta[ch]} vs ${db}`);
      assert.ok(
        Math.abs(dgamma[ch] - dg) <= 1e-4 + 2e-6 * Math.abs(dg),
        `dgamma ${dgamma[ch]} vs ${dg}`,
      );
    }
  },
});

Deno.test({
  name: "WebGPU BatchNorm kernels: three dispatches each, no leaks over 20 steps",
  ignore: NO_WEBGPU != null,
  async fn() {
    await useWebgpu();
    const p = inputs([2, 6, 6, 96], new Rng(13));
    await runKernels(p, true);
    const count = await countKernels(() => runKernels(p, true));
    assert.equal(count.dispatches, 6, count.names.join(","));
    const before = [tf.memory().numTensors, usedGpuBuffers()];
    for (let i = 0; i < 20; i++) await runKernels(p, i % 2 === 0);
    assert.deepEqual([tf.memory().numTensors, usedGpuBuffers()], before);
  },
});
