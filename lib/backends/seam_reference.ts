/**
 * The reference implementation of every seam op (seam.ts) in plain tfjs ops: what a backend
 * without the op's kernel runs, and the oracle the fast kernels are tested against. Same
 * contracts, tfjs's own arithmetic (float32).
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import type { AdamStepAttrs, Affine, BatchNormReluAttrs, Statistics } from "./seam.ts";

/** BatchNorm with batch statistics (biased variance), then ReLU: [y, statistics]. */
export function bnReluTrain(
  x: tf.Tensor4D,
  p: Affine,
  a: BatchNormReluAttrs,
): [tf.Tensor4D, Statistics] {
  const [y, mean, variance] = tf.tidy(() => {
    const { mean, variance } = tf.moments(x, [0, 1, 2]);
    const y = tf.batchNorm4d(
      x,
      mean as tf.Tensor1D,
      variance as tf.Tensor1D,
      p.beta,
      p.gamma,
      a.epsilon,
    );
    return [a.relu ? tf.relu(y) : y, mean, variance];
  });
  return [y as tf.Tensor4D, { mean: mean as tf.Tensor1D, variance: variance as tf.Tensor1D }];
}

/** BatchNorm with given statistics, then ReLU. */
export function bnReluInference(
  x: tf.Tensor4D,
  p: Affine,
  s: Statistics,
  a: BatchNormReluAttrs,
): tf.Tensor4D {
  return tf.tidy(() => {
    const y = tf.batchNorm4d(x, s.mean, s.variance, p.beta, p.gamma, a.epsilon);
    return a.relu ? tf.relu(y) : y;
  });
}

/**
 * The closed-form gradient of `bnReluTrain` (batch statistics), M = N·H·W values per channel:
 * g = dy masked where the pre-ReLU value ≤ 0 (tfjs's ReLU gradient), dβ = Σ g, dγ = Σ g·x̂,
 * dx = γ·rstd/M · (M·g − dβ − x̂·dγ). Full-size temporaries are freed as soon as used (a tidy
 * would keep them all to its end: the peak of a memory-efficient backward).
 */
export function bnReluGrad(
  dy: tf.Tensor4D,
  x: tf.Tensor4D,
  p: Affine,
  s: Statistics,
  a: BatchNormReluAttrs,
): [tf.Tensor4D, tf.Tensor1D, tf.Tensor1D] {
  const free = <T extends tf.Tensor>(t: T, ...done: tf.Tensor[]): T => {
    tf.dispose(done.filter((d) => d !== dy && d !== x));
    return t;
  };
  const m = x.shape[0] * x.shape[1] * x.shape[2];
  const rstd = tf.rsqrt(tf.add(s.variance, a.epsilon));
  let g = dy;
  if (a.relu) {
    const pre = tf.batchNorm4d(x, s.mean, s.variance, p.beta, p.gamma, a.epsilon);
    const mask = free(tf.step(pre), pre);
    g = free(tf.mul(dy, mask), mask);
  }
  const centred = tf.sub(x, s.mean);
  const xhat = free(tf.mul(centred, rstd), centred);
  const dbeta = tf.sum(g, [0, 1, 2]) as tf.Tensor1D;
  const gXhat = tf.mul(g, xhat);
  const dgamma = free(tf.sum(gXhat, [0, 1, 2]) as tf.Tensor1D, gXhat);
  const xhatDgamma = free(tf.mul(xhat, dgamma), xhat);
  const gM = free(tf.mul(g, m), g);
  const t1 = free(tf.sub(gM, dbeta), gM);
  const t2 = free(tf.sub(t1, xhatDgamma), t1, xhatDgamma);
  const scale = tf.tidy(() => tf.mul(p.gamma, tf.div(rstd, m)));
  const dx = free(tf.mul(scale, t2), t2, scale, rstd) as tf.Tensor4D;
  return [dx, dgamma, dbeta];
}

/** [dx + addend's first C channels, dγ, dβ] from a BatchNorm gradient [dx, dγ, dβ]. */
export function addPrefix(
  [dx, dgamma, dbeta]: [tf.Tensor4D, tf.Tensor1D, tf.Tensor1D],
  addend: tf.Tensor4D,
): [tf.Tensor4D, tf.Tensor1D, tf.Tensor1D] {
  const c = dx.shape[3];
  const prefix = addend.shape[3] === c ? addend : tf.slice(addend, [0, 0, 0, 0], [-1, -1, -1, c]);
  const sum = tf.add(prefix, dx) as tf.Tensor4D;
  tf.dispose([dx, ...(prefix !== addend ? [prefix] : [])]);
  return [sum, dgamma, dbeta];
}

/**
 * The running gradient of a dense block's first `at + width` channels split in one kernel:
 * the prefix `addend` (the first `at`) and the layer's `dNew` (the `width` after).
 */
export function splitPrefix(
  dPrefix: tf.Tensor4D,
  at: number,
  width: number,
): { addend: tf.Tensor4D; dNew: tf.Tensor4D } {
  const [addend, dNew] = tf.split(dPrefix, [at, width], 3) as tf.Tensor4D[];
  return { addend, dNew };
}

/**
 * torch.optim.Adam's update for every parameter: one concatenation of the parameters and one of
 * the gradients (flattened as views, no kernel each), the update on the flat vectors, one split
 * back; ~15 kernels.
 */
export function adamStep(
  params: tf.Tensor[],
  grads: tf.Tensor[],
  m: tf.Tensor,
  v: tf.Tensor,
  a: AdamStepAttrs,
): [tf.Tensor[], tf.Tensor, tf.Tensor] {
  const g = tf.concat(grads.map((t) => view(t, [t.size])));
  const p = tf.concat(params.map((t) => view(t, [t.size])));
  const newM = tf.add(tf.mul(m, a.beta1), tf.mul(g, 1 - a.beta1));
  const newV = tf.add(tf.mul(v, a.beta2), tf.mul(tf.square(g), 1 - a.beta2));
  const denom = tf.add(tf.div(tf.sqrt(newV), a.sqrtBc2), a.eps);
  const newP = tf.sub(p, tf.mul(tf.div(newM, denom), a.stepSize));
  const parts = tf.split(newP, params.map((x) => x.size));
  return [parts.map((t, i) => view(t, params[i].shape)), newM, newV];
}

/**
 * `t` with another shape of the same size, sharing its data (what tfjs's Reshape kernel does,
 * without a kernel call per variable).
 */
function view(t: tf.Tensor, shape: number[]): tf.Tensor {
  const engine = tf.engine();
  const backend = engine.backend as tf.KernelBackend & { incRef(dataId: tf.DataId): void };
  backend.incRef(t.dataId);
  return engine.makeTensorFromTensorInfo({ dataId: t.dataId, shape, dtype: t.dtype });
}
