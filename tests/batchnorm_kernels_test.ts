/**
 * The fused BatchNorm+ReLU kernels (`BatchNormReluTrain` / `BatchNormReluGrad`) on every CPU
 * backend that has them, against a float64 evaluation of the contract's formulas on a
 * DenseNet-sized channel (M = 16·56·56) with means large against the spread, where float32
 * sums lose digits, with 6 channels (the native backend's JavaScript reductions) and 8 (its
 * WebAssembly SIMD ones, four channels a step). The native backend's are skipped, with a
 * message, without libdnnl.
 */
import { nativeMissingFor } from "./helpers/native.ts";
import { relError } from "./assert.ts";
import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import { initBackend } from "../lib/backends/backend.ts";
import { BN_GRAD_KERNEL, BN_TRAIN_KERNEL } from "../lib/backends/seam.ts";
import { Rng } from "../lib/util/rng.ts";

const nativeMissing = nativeMissingFor("the native BatchNorm tests");

const [N, H, W] = [16, 56, 56];
const M = N * H * W;
const EPS = 1e-5;

/** Inputs with C channels: means large against the spread. */
function inputs(C: number) {
  const rng = new Rng(12);
  const xs = Float32Array.from({ length: M * C }, (_, i) => 3 * (i % C) + 0.5 * rng.normal());
  const dys = Float32Array.from({ length: M * C }, () => rng.normal());
  const gammas = Float32Array.from({ length: C }, () => 1 + 0.2 * rng.normal());
  const betas = Float32Array.from({ length: C }, () => 0.3 * rng.normal());
  return { C, xs, dys, gammas, betas };
}

/**
 * The contract's formulas in float64, straight from the definitions (two-pass statistics). The
 * gradient is of the float32 statistics the forward hands over (the contract's inputs).
 */
function reference(relu: boolean, { C, xs, dys, gammas, betas }: ReturnType<typeof inputs>) {
  const mean = new Float64Array(C);
  const variance = new Float64Array(C);
  for (let i = 0; i < M * C; i++) mean[i % C] += xs[i] / M;
  for (let i = 0; i < M * C; i++) variance[i % C] += (xs[i] - mean[i % C]) ** 2 / M;
  const y = new Float64Array(M * C);
  for (let i = 0; i < M * C; i++) {
    const k = i % C;
    const pre = (xs[i] - mean[k]) / Math.sqrt(variance[k] + EPS) * gammas[k] + betas[k];
    y[i] = relu ? Math.max(pre, 0) : pre;
  }
  const mean32 = Float32Array.from(mean);
  const rstd = Array.from(Float32Array.from(variance), (v) => 1 / Math.sqrt(v + EPS));
  const g = new Float64Array(M * C);
  const dgamma = new Float64Array(C);
  const dbeta = new Float64Array(C);
  for (let i = 0; i < M * C; i++) {
    const k = i % C;
    const xhat = (xs[i] - mean32[k]) * rstd[k];
    const pre = xhat * gammas[k] + betas[k];
    g[i] = relu && pre <= 0 ? 0 : dys[i];
    dbeta[k] += g[i];
    dgamma[k] += g[i] * xhat;
  }
  const dx = new Float64Array(M * C);
  for (let i = 0; i < M * C; i++) {
    const k = i % C;
    const xhat = (xs[i] - mean32[k]) * rstd[k];
    dx[i] = gammas[k] * rstd[k] / M * (M * g[i] - dbeta[k] - xhat * dgamma[k]);
  }
  return { y, mean, variance, dx, dgamma, dbeta };
}

for (const backend of ["cpu", "wasm", "native"]) {
  for (const [relu, C] of [[true, 6], [false, 6], [true, 8], [false, 8]] as const) {
    Deno.test({
      name:
        `${BN_TRAIN_KERNEL} and ${BN_GRAD_KERNEL} on ${backend} (relu ${relu}, ${C} channels) match float64`,
      ignore: backend === "native" && nativeMissing != null,
      fn: async () => {
        await initBackend(backend, { threads: 2 });
        const data = inputs(C);
        const { xs, dys, gammas, betas } = data;
        const ref = reference(relu, data);
        const before = tf.memory().numTensors;
        const attrs = { epsilon: EPS, relu };
        const got = tf.tidy(() => {
          const x = tf.tensor4d(xs, [N, H, W, C]);
          const dy = tf.tensor4d(dys, [N, H, W, C]);
          const gamma = tf.tensor1d(gammas);
          const beta = tf.tensor1d(betas);
          const engine = tf.engine();
          const [y, mean, variance] = engine.runKernel(
            BN_TRAIN_KERNEL,
            { x, gamma, beta },
            attrs,
          ) as tf.Tensor[];
          const [dx, dgamma, dbeta] = engine.runKernel(
            BN_GRAD_KERNEL,
            { dy, x, gamma, beta, mean, variance },
            attrs,
          ) as tf.Tensor[];
          assert.deepEqual([y.shape, mean.shape, dx.shape, dgamma.shape], [
            x.shape,
            [C],
            x.shape,
            [C],
          ]);
          return [y, mean, variance, dx, dgamma, dbeta].map((t) => t.dataSync());
        });
        assert.equal(tf.memory().numTensors, before, "no tensor left behind");
        const names = ["y", "mean", "variance", "dx", "dgamma", "dbeta"] as const;
        // float32 storage costs ~6e-8; a float32 running sum over M = 50,176 costs ~1e-5.
        names.forEach((name, i) => {
          const err = relError(got[i], ref[name]);
          assert.ok(err < 3e-7, `${backend} ${name}: relative error ${err.toExponential(2)}`);
        });
        await tf.setBackend("cpu");
      },
    });
  }
}
