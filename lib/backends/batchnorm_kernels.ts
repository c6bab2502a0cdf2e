/**
 * The seam's training BatchNorm(+ReLU) kernels (`BatchNormReluTrain`, `BatchNormReluGrad`:
 * contracts in seam.ts) in JavaScript, for the CPU backends: the `cpu` backend's kernel table
 * (plain JS arrays), and the wasm heap (what the `wasm` table runs where its SIMD passes cannot).
 * One pass computes the batch statistics, one normalises; the backward is two passes.
 *
 * Every sum over M is accumulated in float64 (the statistics from sums shifted by the first
 * row, so the one-pass variance does not cancel), which keeps a training step more accurate
 * than PyTorch's float32 one against a float64 reference.
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import type { BackendWasm } from "@tensorflow/tfjs-backend-wasm";
import { type BatchNormReluAttrs, BN_GRAD_KERNEL, BN_TRAIN_KERNEL } from "./seam.ts";
import type { KernelTable } from "./kernel_registry.ts";

/**
 * Σ (a − va) and Σ (a − va)·(b − vb) per channel over rows [r0, r1) of a and b viewed as
 * [M, C], added into s1 and s2 (a = b, va = vb = a shift: the statistics; a = g, va = 0,
 * vb = mean: the gradient sums). Self-contained (no closures or imports): the native backend's
 * worker threads run its source on their share of the rows.
 */
export function rowSums(
  a: Float32Array,
  va: Float64Array,
  b: Float32Array,
  vb: Float64Array,
  c: number,
  r0: number,
  r1: number,
  s1: Float64Array,
  s2: Float64Array,
): void {
  for (let r = r0; r < r1; r++) {
    const base = r * c;
    for (let k = 0; k < c; k++) {
      const d = a[base + k] - va[k];
      s1[k] += d;
      s2[k] += d * (b[base + k] - vb[k]);
    }
  }
}

/** Runs `rowSums` over all M rows, possibly split among threads (the native backend's). */
export type RowSums = (
  a: Float32Array,
  va: Float64Array,
  b: Float32Array,
  vb: Float64Array,
  c: number,
  m: number,
  s1: Float64Array,
  s2: Float64Array,
) => void;

const sequentialRowSums: RowSums = (a, va, b, vb, c, m, s1, s2) =>
  rowSums(a, va, b, vb, c, 0, m, s1, s2);

/**
 * Per-channel mean and biased variance of `x` viewed as [M, C] (C = mean.length), in one pass:
 * float64 sums of the values shifted by the first row (so the variance does not cancel).
 */
export function batchStatistics(
  x: Float32Array,
  mean: Float64Array,
  variance: Float64Array,
  sums: RowSums = sequentialRowSums,
): void {
  const c = mean.length;
  const m = x.length / c;
  const shift = Float64Array.from(x.subarray(0, c));
  const s1 = new Float64Array(c);
  const s2 = new Float64Array(c);
  sums(x, shift, x, shift, c, m, s1, s2);
  statisticsFromSums(shift, s1, s2, m, mean, variance);
}

/**
 * Mean and biased variance per channel from the sums of M values shifted by `shift`:
 * s1 = Σ (x − shift), s2 = Σ (x − shift)².
 */
export function statisticsFromSums(
  shift: Float64Array,
  s1: Float64Array,
  s2: Float64Array,
  m: number,
  mean: Float64Array,
  variance: Float64Array,
): void {
  for (let k = 0; k < shift.length; k++) {
    const d = s1[k] / m;
    mean[k] = shift[k] + d;
    variance[k] = Math.max(0, s2[k] / m - d * d);
  }
}

/**
 * y, mean, variance of a training-mode BatchNorm(+ReLU) over `x` viewed as [M, C].
 */
export function batchNormReluForward(
  x: Float32Array,
  gamma: Float32Array,
  beta: Float32Array,
  attrs: BatchNormReluAttrs,
  y: Float32Array,
  mean: Float32Array,
  variance: Float32Array,
): void {
  const c = gamma.length;
  const m = x.length / c;
  const mu = new Float64Array(c);
  const v64 = new Float64Array(c);
  batchStatistics(x, mu, v64);
  const scale = new Float64Array(c);
  const offset = new Float64Array(c);
  for (let k = 0; k < c; k++) {
    mean[k] = mu[k];
    variance[k] = v64[k];
    scale[k] = gamma[k] / Math.sqrt(v64[k] + attrs.epsilon);
    offset[k] = beta[k] - mu[k] * scale[k];
  }
  for (let r = 0; r < m; r++) {
    const base = r * c;
    if (attrs.relu) {
      for (let k = 0; k < c; k++) {
        const v = x[base + k] * scale[k] + offset[k];
        y[base + k] = v > 0 ? v : 0;
      }
    } else {
      for (let k = 0; k < c; k++) y[base + k] = x[base + k] * scale[k] + offset[k];
    }
  }
}

/**
 * The normalisation as an affine map per channel, in float64: rstd = 1/√(variance + ε), the
 * pre-ReLU value x̂·γ + β = x·scale + offset. One formula for every pass that normalises or
 * masks (rounded to float32 where a pass takes float32), so the native backward's ReLU mask
 * is the forward's ReLU decision exactly.
 */
export function normaliseAffine(
  gamma: ArrayLike<number>,
  beta: ArrayLike<number>,
  mean: ArrayLike<number>,
  variance: ArrayLike<number>,
  epsilon: number,
): { rstd: Float64Array; scale: Float64Array; offset: Float64Array } {
  const c = gamma.length;
  const rstd = new Float64Array(c);
  const scale = new Float64Array(c);
  const offset = new Float64Array(c);
  for (let k = 0; k < c; k++) {
    rstd[k] = 1 / Math.sqrt(variance[k] + epsilon);
    scale[k] = gamma[k] * rstd[k];
    offset[k] = beta[k] - mean[k] * scale[k];
  }
  return { rstd, scale, offset };
}

/** What the backward's first pass gives: dγ, dβ (float64) and dx's per-channel coefficients. */
export interface GradientParts {
  dgamma: Float64Array;
  dbeta: Float64Array;
  /** dx = a·g + b·(x − mean) + d per channel. */
  a: Float64Array;
  b: Float64Array;
  d: Float64Array;
}

/**
 * The backward's reduction pass over x, dy viewed as [M, C]: with ReLU, writes g (dy masked
 * where the pre-ReLU value x̂·γ + β ≤ 0) to `g` (which may be dx's buffer); sums Σ g, Σ g·x̂ in
 * float64. `g` null: dy is already masked (the native kernel masks it with oneDNN), g = dy.
 */
export function batchNormReluGradientParts(
  dy: Float32Array,
  x: Float32Array,
  gamma: Float32Array,
  beta: Float32Array,
  mean: Float32Array,
  variance: Float32Array,
  attrs: BatchNormReluAttrs,
  g: Float32Array | null,
  sums: RowSums = sequentialRowSums,
): GradientParts {
  const c = gamma.length;
  const m = x.length / c;
  const { rstd, scale, offset } = normaliseAffine(gamma, beta, mean, variance, attrs.epsilon);
  const mu = Float64Array.from(mean);
  const dbeta = new Float64Array(c);
  const sgx = new Float64Array(c); // Σ g·(x − mean); dgamma = rstd · sgx
  if (g == null || !attrs.relu) {
    // dy is g already: a pure reading pass (g, if given, must be dy itself).
    sums(dy, new Float64Array(c), x, mu, c, m, dbeta, sgx);
  } else {
    for (let r = 0; r < m; r++) {
      const base = r * c;
      for (let k = 0; k < c; k++) {
        const xv = x[base + k];
        const gv = xv * scale[k] + offset[k] <= 0 ? 0 : dy[base + k];
        g[base + k] = gv;
        dbeta[k] += gv;
        sgx[k] += gv * (xv - mu[k]);
      }
    }
  }
  return gradientPartsFromSums(gamma, rstd, dbeta, sgx, m);
}

/**
 * dγ and dx's coefficients from the backward's sums dβ = Σ g, sgx = Σ g·(x − mean) over M
 * values per channel: dx = γ·rstd/M · (M·g − dβ − x̂·dγ) = a·g + b·(x − mean) + d.
 */
export function gradientPartsFromSums(
  gamma: ArrayLike<number>,
  rstd: Float64Array,
  dbeta: Float64Array,
  sgx: Float64Array,
  m: number,
): GradientParts {
  const c = gamma.length;
  const dgamma = new Float64Array(c);
  const a = new Float64Array(c);
  const b = new Float64Array(c);
  const d = new Float64Array(c);
  for (let k = 0; k < c; k++) {
    dgamma[k] = sgx[k] * rstd[k];
    a[k] = gamma[k] * rstd[k];
    b[k] = -a[k] * rstd[k] * dgamma[k] / m;
    d[k] = -a[k] * dbeta[k] / m;
  }
  return { dgamma, dbeta, a, b, d };
}

/** dx, dgamma, dbeta of a training-mode BatchNorm(+ReLU), x and dy viewed as [M, C]. */
export function batchNormReluBackward(
  dy: Float32Array,
  x: Float32Array,
  gamma: Float32Array,
  beta: Float32Array,
  mean: Float32Array,
  variance: Float32Array,
  attrs: BatchNormReluAttrs,
  dx: Float32Array,
  dgamma: Float32Array,
  dbeta: Float32Array,
): void {
  const c = gamma.length;
  const m = x.length / c;
  // g goes to dx's buffer, then dx replaces it element by element.
  if (!attrs.relu) dx.set(dy);
  const parts = batchNormReluGradientParts(dy, x, gamma, beta, mean, variance, attrs, dx);
  dgamma.set(parts.dgamma);
  dbeta.set(parts.dbeta);
  const { a, b } = parts;
  const d0 = Float64Array.from(parts.d, (v, k) => v - b[k] * mean[k]);
  for (let r = 0; r < m; r++) {
    const base = r * c;
    for (let k = 0; k < c; k++) dx[base + k] = a[k] * dx[base + k] + b[k] * x[base + k] + d0[k];
  }
}

/** How a backend's tensors are read and written as Float32Arrays. */
interface Io {
  /** Allocates the outputs, then returns views of `inputs` and the outputs (in that order). */
  run(
    inputs: tf.TensorInfo[],
    shapes: number[][],
  ): { views: Float32Array[]; outs: tf.TensorInfo[] };
}

function wasmIo(backend: BackendWasm): Io {
  return {
    run(inputs, shapes) {
      for (const t of inputs) backend.dataIdMap.get(t.dataId);
      const outs = shapes.map((s) => backend.makeOutput(s, "float32"));
      // Views only after every allocation: the heap may grow (and detach older views).
      const views = [...inputs, ...outs].map((t) => backend.typedArrayFromHeap(t) as Float32Array);
      return { views, outs };
    },
  };
}

function cpuIo(backend: tf.KernelBackend): Io {
  return {
    run(inputs, shapes) {
      const ins = inputs.map((t) => backend.readSync(t.dataId) as Float32Array);
      const data = shapes.map((s) => new Float32Array(tf.util.sizeFromShape(s)));
      const outs = shapes.map((s, i) =>
        (backend as unknown as {
          makeTensorInfo(s: number[], d: string, v: Float32Array): tf.TensorInfo;
        }).makeTensorInfo(s, "float32", data[i])
      );
      return { views: [...ins, ...data], outs };
    },
  };
}

function checkFloat32(name: string, inputs: tf.TensorInfo[]): void {
  for (const t of inputs) {
    if (t.dtype !== "float32") throw new Error(`${name}: only float32 is supported`);
  }
}

function trainKernel(io: (b: tf.KernelBackend) => Io): tf.KernelFunc {
  return ({ inputs, backend, attrs }) => {
    const { x, gamma, beta } = inputs as Record<string, tf.TensorInfo>;
    checkFloat32(BN_TRAIN_KERNEL, [x, gamma, beta]);
    const c = x.shape[x.shape.length - 1];
    const { views: [xs, g, b, y, mean, variance], outs } = io(backend as tf.KernelBackend).run([
      x,
      gamma,
      beta,
    ], [
      x.shape,
      [c],
      [c],
    ]);
    batchNormReluForward(xs, g, b, attrs as unknown as BatchNormReluAttrs, y, mean, variance);
    return outs;
  };
}

function gradKernel(io: (b: tf.KernelBackend) => Io): tf.KernelFunc {
  return ({ inputs, backend, attrs }) => {
    const { dy, x, gamma, beta, mean, variance } = inputs as Record<string, tf.TensorInfo>;
    const ins = [dy, x, gamma, beta, mean, variance];
    checkFloat32(BN_GRAD_KERNEL, ins);
    const c = x.shape[x.shape.length - 1];
    const { views, outs } = io(backend as tf.KernelBackend).run(ins, [x.shape, [c], [c]]);
    const [dys, xs, g, b, m, v, dx, dgamma, dbeta] = views;
    batchNormReluBackward(
      dys,
      xs,
      g,
      b,
      m,
      v,
      attrs as unknown as BatchNormReluAttrs,
      dx,
      dgamma,
      dbeta,
    );
    return outs;
  };
}

/** The JavaScript training kernels on the wasm heap (what the wasm table runs where SIMD cannot). */
export function wasmJsKernels(): { train: tf.KernelFunc; grad: tf.KernelFunc } {
  return wasmJs ??= {
    train: trainKernel((b) => wasmIo(b as unknown as BackendWasm)),
    grad: gradKernel((b) => wasmIo(b as unknown as BackendWasm)),
  };
}
let wasmJs: { train: tf.KernelFunc; grad: tf.KernelFunc } | null = null;

let cpuTable: KernelTable | null = null;

/** The `cpu` backend's kernel table: both training kernels over plain JavaScript arrays. */
export function cpuKernelTable(): KernelTable {
  return cpuTable ??= {
    name: "cpu",
    backendName: "cpu",
    kernels: { [BN_TRAIN_KERNEL]: trainKernel(cpuIo), [BN_GRAD_KERNEL]: gradKernel(cpuIo) },
  };
}
