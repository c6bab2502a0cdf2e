/**
 * The native BatchNorm kernels: the fused training seam (`BatchNormReluTrain` / `Grad`), the
 * evaluation-mode passes (`FusedBatchNorm`, `BatchNormReluInference`) and the
 * BatchNorm-of-a-concatenation kernels (lib/backends/batchnorm_kernels.ts has the contracts).
 * Float64 statistics and gradient sums and the normalising passes run as WebAssembly SIMD on
 * the heap over all threads (row_threads.ts, simd_batchnorm.ts), in one formula for every pass;
 * channel counts that are not a multiple of 4 take oneDNN's passes and float64 JavaScript sums.
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import type { BackendWasm } from "@tensorflow/tfjs-backend-wasm";
import { offsetPointer } from "./onednn.ts";
import { type Affine, MAX_CHANNELS } from "./row_threads.ts";
import {
  fallback,
  heapOffset,
  heapPointer,
  type KernelArgs,
  openedOneDnn,
  openOneDnn,
  threadsFor,
} from "./kernel_support.ts";
import { add, concat, slice } from "./copy_kernels.ts";
import {
  batchNormReluGradientParts,
  batchStatistics,
  gradientPartsFromSums,
  normaliseAffine,
  statisticsFromSums,
} from "../batchnorm_kernels.ts";
import {
  type BatchNormReluAttrs,
  BN_CONCAT_GRAD_KERNEL,
  BN_CONCAT_INFERENCE_KERNEL,
  BN_CONCAT_TRAIN_KERNEL,
  BN_GRAD_KERNEL,
  BN_INFERENCE_KERNEL,
  BN_TRAIN_KERNEL,
} from "../seam.ts";

/**
 * True when the SIMD passes on `backend`'s heap take a BatchNorm of x [.., C] with these inputs
 * (float32, ≥ 2 rows, `passesFit`): `batchNormReluTrain` and `batchNormReluGrad` then
 * need no oneDNN. What the plain wasm backend checks before it runs them (wasm_kernels.ts).
 */
export function simdPassesTake(
  backend: BackendWasm,
  x: tf.TensorInfo,
  inputs: tf.TensorInfo[],
): boolean {
  const t = threadsFor(backend);
  if (t.normaliseConcat == null || t.maskedSums == null || t.gradApply == null) return false;
  const rc = rowsChannels([x, ...inputs], x);
  return rc != null && passesFit([rc[1]]);
}

/**
 * True when the SIMD passes take inputs of these channel counts: each a multiple of 4 (four
 * channels a step), together within the passes' per-channel blocks.
 */
function passesFit(channels: number[]): boolean {
  return channels.every((k) => k % 4 === 0) && channels.reduce((a, k) => a + k, 0) <= MAX_CHANNELS;
}

/**
 * [M, C] of an NHWC tensor; null for what the native BatchNorm does not take. Batch statistics
 * need 2 rows; normalising with running statistics (`minRows` 1) takes a single one: one image
 * whose last feature map is 1×1 (below 64 px) in evaluation.
 */
function rowsChannels(
  inputs: tf.TensorInfo[],
  x: tf.TensorInfo,
  minRows = 2,
): [number, number] | null {
  if (inputs.some((t) => t.dtype !== "float32")) return null;
  const c = x.shape[x.shape.length - 1];
  const rows = tf.util.sizeFromShape(x.shape) / c;
  return rows >= minRows && c > 0 ? [rows, c] : null;
}

/**
 * `BatchNormReluTrain`: the statistics in float64 (`batchStatistics`, one pass of SIMD threads;
 * oneDNN's own float32 ones lose the variance of a channel whose mean is large against its
 * spread), then the normalise + ReLU pass with them (`normalise`).
 */
export function batchNormReluTrain(args: KernelArgs): tf.TensorInfo[] {
  const { inputs: { x, gamma, beta }, backend } = args;
  const attrs = args.attrs as unknown as BatchNormReluAttrs;
  const rc = rowsChannels([x!, gamma!, beta!], x!);
  if (rc == null) return fallback(BN_TRAIN_KERNEL, args) as unknown as tf.TensorInfo[];
  const [rows, c] = rc;
  for (const t of [x!, gamma!, beta!]) backend.dataIdMap.get(t.dataId);
  const y = backend.makeOutput(x!.shape, "float32");
  const mean = backend.makeOutput([c], "float32");
  const variance = backend.makeOutput([c], "float32");
  const f32 = (t: tf.TensorInfo) => backend.typedArrayFromHeap(t) as Float32Array;
  const m64 = new Float64Array(c);
  const v64 = new Float64Array(c);
  const threads = threadsFor(backend);
  batchStatistics(f32(x!), m64, v64, threads.rowSums);
  f32(mean).set(m64);
  f32(variance).set(v64);
  // The wide passes normalise with the float64 statistics, as the JavaScript kernel does; the
  // float32 ones with the rounded outputs, as every recompute of them will.
  const stats = threads.wide ? { mean: m64, variance: v64 } : undefined;
  normalise(
    backend,
    rows,
    c,
    attrs,
    { x: x!, mean, variance, gamma: gamma!, beta: beta!, y },
    stats,
  );
  return [y, mean, variance];
}

/**
 * The SIMD passes' normalisation map of a BatchNorm's vectors: pre-ReLU value
 * (x − mean)·scale + β, scale = γ·rstd from `normaliseAffine` (float32 when the pass takes it).
 */
function affineOf(
  backend: BackendWasm,
  attrs: BatchNormReluAttrs,
  t: Record<"mean" | "variance" | "gamma" | "beta", tf.TensorInfo>,
  stats?: { mean: Float64Array; variance: Float64Array },
): Affine {
  const f32 = (v: tf.TensorInfo) => backend.typedArrayFromHeap(v) as Float32Array;
  const beta = f32(t.beta);
  const mean = stats?.mean ?? f32(t.mean), variance = stats?.variance ?? f32(t.variance);
  const { scale } = normaliseAffine(f32(t.gamma), beta, mean, variance, attrs.epsilon);
  return { mean, scale, shift: beta };
}

/**
 * y = ReLU?((x − mean)·scale + β) per channel with `affineOf`'s map of the statistics, over
 * [rows, c]: the SIMD pass (one formula for every native normalisation, so a recompute, the
 * concatenation kernels and the backward's ReLU mask all agree with the forward bit for bit);
 * oneDNN's where the channels are not a multiple of 4 or there is no SIMD.
 */
function normalise(
  backend: BackendWasm,
  rows: number,
  c: number,
  attrs: BatchNormReluAttrs,
  t: Record<"x" | "mean" | "variance" | "gamma" | "beta" | "y", tf.TensorInfo>,
  stats?: { mean: Float64Array; variance: Float64Array },
): void {
  const { normaliseConcat } = threadsFor(backend);
  if (normaliseConcat != null && passesFit([c])) {
    const x = [{ at: heapOffset(backend, t.x), c }];
    const affine = affineOf(backend, attrs, t, stats);
    normaliseConcat(x, heapOffset(backend, t.y), rows, affine, attrs.relu);
    return;
  }
  const p = (v: tf.TensorInfo) => heapPointer(backend, v);
  openOneDnn().bnApply(
    rows,
    c,
    attrs.epsilon,
    attrs.relu,
    p(t.x),
    p(t.mean),
    p(t.variance),
    p(t.gamma),
    p(t.beta),
    p(t.y),
  );
}

/**
 * `BatchNormReluGrad` in two reading passes of SIMD threads (`simdGrad`): Σ g and Σ g·x̂ in
 * float64 with g = dy masked by the pre-ReLU sign as it is read, then dx = a·g + b·(x − mean)
 * + d per channel, the mask recomputed in the forward's arithmetic. Where the SIMD passes are
 * missing or the channels are not a multiple of 4: `oneDnnBatchNormReluGrad`.
 */
export function batchNormReluGrad(args: KernelArgs): tf.TensorInfo[] {
  const { inputs: { dy, x, gamma, beta, mean, variance }, backend } = args;
  const attrs = args.attrs as unknown as BatchNormReluAttrs;
  const all = [dy!, x!, gamma!, beta!, mean!, variance!];
  const rc = rowsChannels(all, x!);
  if (rc == null) return fallback(BN_GRAD_KERNEL, args) as unknown as tf.TensorInfo[];
  const [rows, c] = rc;
  const { maskedSums, gradApply } = threadsFor(backend);
  if (maskedSums == null || gradApply == null || !passesFit([c])) {
    return oneDnnBatchNormReluGrad(args, rows, c);
  }
  const vectors = { gamma: gamma!, beta: beta!, mean: mean!, variance: variance! };
  return simdGrad(backend, attrs, dy!, [x!], rows, vectors, null);
}

/**
 * The SIMD backward of a BatchNorm(+ReLU) over the channel concatenation of `xs` (each with a
 * multiple of 4 channels): per input, the masked float64 sums over its channel range of dy,
 * then `gradientPartsFromSums`, then per input the dx pass, `addend`'s first C channels (when
 * given) added in it. The mask is the forward's pre-ReLU value in its own float32 arithmetic
 * (with the wide passes: in float64 from the saved statistics, as the JavaScript backward).
 */
function simdGrad(
  backend: BackendWasm,
  attrs: BatchNormReluAttrs,
  dy: tf.TensorInfo,
  xs: tf.TensorInfo[],
  rows: number,
  v: Record<"gamma" | "beta" | "mean" | "variance", tf.TensorInfo>,
  addend: tf.TensorInfo | null,
): tf.TensorInfo[] {
  const { maskedSums, gradApply } = threadsFor(backend);
  const channels = xs.map((t) => t.shape[t.shape.length - 1]);
  const c = channels.reduce((a, k) => a + k, 0);
  for (const t of [dy, ...xs, v.gamma, v.beta, v.mean, v.variance]) {
    backend.dataIdMap.get(t.dataId);
  }
  const dx = backend.makeOutput(dy.shape, "float32");
  const dgamma = backend.makeOutput([c], "float32");
  const dbeta = backend.makeOutput([c], "float32");
  const f32 = (t: tf.TensorInfo) => backend.typedArrayFromHeap(t) as Float32Array;
  const [g, b, mu32, v32] = [v.gamma, v.beta, v.mean, v.variance].map(f32);
  const { rstd, scale } = normaliseAffine(g, b, mu32, v32, attrs.epsilon);
  // Without ReLU: scale 0, shift 1 (nothing masked).
  const mask = attrs.relu
    ? { mean: mu32, scale, shift: b }
    : { mean: mu32, scale: new Float32Array(c), shift: new Float32Array(c).fill(1) };
  const mu = Float64Array.from(mu32);
  const sums = [new Float64Array(c), new Float64Array(c)];
  const [dyAt, dxAt] = [dy, dx].map((t) => heapOffset(backend, t));
  const width = addend?.shape[addend.shape.length - 1] ?? 0;
  const inputs = xs.map((x, i) => {
    const from = channels.slice(0, i).reduce((a, n) => a + n, 0);
    return {
      dy: { at: dyAt + 4 * from, stride: c },
      x: { at: heapOffset(backend, x), stride: channels[i] },
      dx: { at: dxAt + 4 * from, stride: c },
      addend: addend != null
        ? { at: heapOffset(backend, addend) + 4 * from, stride: width }
        : undefined,
      from,
      c: channels[i],
    };
  });
  maskedSums!(inputs, rows, mu, mask, sums[0], sums[1]);
  const parts = gradientPartsFromSums(g, rstd, sums[0], sums[1], rows);
  f32(dgamma).set(parts.dgamma);
  f32(dbeta).set(parts.dbeta);
  gradApply!(inputs, rows, mask, parts);
  return [dx, dgamma, dbeta];
}

/**
 * `BatchNormReluGrad` with oneDNN passes: g = dy masked by the pre-ReLU sign (a normalise pass
 * into g, then ReLU's backward in place); Σ g and Σ g·x̂ in one float64 reading pass
 * (`batchNormReluGradientParts`; oneDNN's float32 sums lose the small dγ of channels whose terms
 * cancel); then dx = a·g + b·(x − mean) + d per channel in two oneDNN passes: a normalise pass
 * with those coefficients (variance 1, epsilon 0) and a multiply-accumulate of g.
 */
function oneDnnBatchNormReluGrad(args: KernelArgs, rows: number, c: number): tf.TensorInfo[] {
  const { inputs: { dy, x, gamma, beta, mean, variance }, backend } = args;
  const attrs = args.attrs as unknown as BatchNormReluAttrs;
  for (const t of [dy!, x!, gamma!, beta!, mean!, variance!]) backend.dataIdMap.get(t.dataId);
  const dx = backend.makeOutput(x!.shape, "float32");
  const dgamma = backend.makeOutput([c], "float32");
  const dbeta = backend.makeOutput([c], "float32");
  const g = backend.makeOutput(x!.shape, "float32");
  // Per-channel vectors: a, b, d, and ones (the normalise pass's variance).
  const vecs = backend.makeOutput([4 * c], "float32");
  try {
    const p = (t: tf.TensorInfo) => heapPointer(backend, t);
    const f32 = (t: tf.TensorInfo) => backend.typedArrayFromHeap(t) as Float32Array;
    const vec = (i: number) => offsetPointer(p(vecs), i * c * 4);
    const dnn = openOneDnn();
    const { epsilon } = attrs;
    if (attrs.relu) {
      dnn.bnApply(
        rows,
        c,
        epsilon,
        false,
        p(x!),
        p(mean!),
        p(variance!),
        p(gamma!),
        p(beta!),
        p(g),
      );
      dnn.reluBackward(rows * c, p(g), p(dy!), p(g));
    }
    const parts = batchNormReluGradientParts(
      f32(attrs.relu ? g : dy!),
      f32(x!),
      f32(gamma!),
      f32(beta!),
      f32(mean!),
      f32(variance!),
      attrs,
      null,
      threadsFor(backend).rowSums,
    );
    f32(dgamma).set(parts.dgamma);
    f32(dbeta).set(parts.dbeta);
    const v = f32(vecs);
    v.set(parts.a, 0);
    v.set(parts.b, c);
    v.set(parts.d, 2 * c);
    v.fill(1, 3 * c);
    dnn.bnApply(rows, c, 0, false, p(x!), p(mean!), vec(3), vec(1), vec(2), p(dx));
    dnn.scaleAccumulate(rows, c, p(attrs.relu ? g : dy!), vec(0), p(dx));
  } finally {
    backend.disposeData(g.dataId);
    backend.disposeData(vecs.dataId);
  }
  return [dx, dgamma, dbeta];
}

/** Evaluation-mode BatchNorm (running statistics) as one multi-threaded oneDNN pass. */
function fusedBatchNorm(args: KernelArgs): tf.TensorInfo {
  const { inputs: { x, mean, variance, offset, scale }, backend } = args;
  const vectors = [mean, variance, offset, scale];
  if (vectors.some((t) => t == null)) return fallback("FusedBatchNorm", args);
  const rc = rowsChannels([x!, ...vectors as tf.TensorInfo[]], x!, 1);
  if (rc == null || vectors.some((t) => tf.util.sizeFromShape(t!.shape) !== rc[1])) {
    return fallback("FusedBatchNorm", args);
  }
  const [rows, c] = rc;
  for (const t of [x!, ...vectors]) backend.dataIdMap.get(t!.dataId);
  const out = backend.makeOutput(x!.shape, "float32");
  const p = (t: tf.TensorInfo) => heapPointer(backend, t);
  const eps = args.attrs.varianceEpsilon as number;
  openOneDnn().bnApply(
    rows,
    c,
    eps,
    false,
    p(x!),
    p(mean!),
    p(variance!),
    p(scale!),
    p(offset!),
    p(out),
  );
  return out;
}

/** `BatchNormReluInference`: normalise with the running statistics and ReLU, one oneDNN pass. */
function batchNormReluInference(args: KernelArgs): tf.TensorInfo {
  const { inputs: { x, mean, variance, gamma, beta }, backend } = args;
  const attrs = args.attrs as unknown as BatchNormReluAttrs;
  const vectors = [mean!, variance!, gamma!, beta!];
  const rc = rowsChannels([x!, ...vectors], x!, 1);
  if (rc == null || vectors.some((t) => tf.util.sizeFromShape(t.shape) !== rc[1])) {
    throw new Error(`${BN_INFERENCE_KERNEL}: needs float32 x [.., C] and [C] vectors`);
  }
  const [rows, c] = rc;
  for (const t of [x!, ...vectors]) backend.dataIdMap.get(t.dataId);
  const out = backend.makeOutput(x!.shape, "float32");
  normalise(backend, rows, c, attrs, {
    x: x!,
    mean: mean!,
    variance: variance!,
    gamma: gamma!,
    beta: beta!,
    y: out,
  });
  return out;
}

/**
 * `BatchNormReluConcatInference`: the running-statistics normalisation (+ReLU) of the channel
 * concatenation of x0, x1, … written straight from the inputs (SIMD threads,
 * `normaliseConcat`). Where that cannot run (no SIMD, channels not multiples of 4): with oneDNN
 * (native), the concatenation made and normalised by `batchNormReluInference`, the arithmetic
 * of `BatchNormReluConcatTrain`'s same fallback, so that a recompute equals its y; without
 * (the plain wasm backend, which registers this kernel for evaluation mode: wasm_kernels.ts),
 * the same map in JavaScript.
 */
export function batchNormReluConcatInference(args: KernelArgs): tf.TensorInfo {
  const { backend } = args;
  const { mean, variance, gamma, beta, ...rest } = args.inputs;
  const attrs = args.attrs as unknown as BatchNormReluAttrs;
  const vectors = [mean!, variance!, gamma!, beta!];
  const { xs, c, lead, channels, rows } = concatInputs(BN_CONCAT_INFERENCE_KERNEL, rest, vectors);
  for (const t of [...xs, ...vectors]) backend.dataIdMap.get(t.dataId);
  const { normaliseConcat } = threadsFor(backend);
  const simd = normaliseConcat != null && passesFit(channels);
  if (!simd && openedOneDnn() != null) {
    const x = joined(xs, backend);
    try {
      return batchNormReluInference({
        inputs: { x, mean, variance, gamma, beta },
        backend,
        attrs: args.attrs,
      });
    } finally {
      if (x !== xs[0]) backend.disposeData(x.dataId);
    }
  }
  const out = backend.makeOutput([...lead, c], "float32");
  const affine = affineOf(backend, attrs, {
    mean: mean!,
    variance: variance!,
    gamma: gamma!,
    beta: beta!,
  });
  if (!simd) {
    const f32 = (t: tf.TensorInfo) => backend.typedArrayFromHeap(t) as Float32Array;
    normaliseConcatJs(xs.map(f32), channels, f32(out), rows, affine, attrs.relu);
    return out;
  }
  normaliseConcat!(
    xs.map((t, i) => ({ at: heapOffset(backend, t), c: channels[i] })),
    heapOffset(backend, out),
    rows,
    affine,
    attrs.relu,
  );
  return out;
}

/** `normaliseConcat`'s map in JavaScript: y[r, c0 + j] = ReLU?((x_i[r, j] − mean)·scale + β). */
function normaliseConcatJs(
  xs: Float32Array[],
  channels: number[],
  y: Float32Array,
  rows: number,
  { mean, scale, shift }: Affine,
  relu: boolean,
): void {
  const c = y.length / Math.max(1, rows);
  let c0 = 0;
  xs.forEach((x, i) => {
    const ci = channels[i];
    for (let r = 0; r < rows; r++) {
      for (let j = 0; j < ci; j++) {
        const k = c0 + j;
        const v = (x[r * ci + j] - mean[k]) * scale[k] + shift[k];
        y[r * c + k] = relu && v < 0 ? 0 : v; // NaN stays NaN
      }
    }
    c0 += ci;
  });
}

/** The x0, x1, … of a concatenation kernel, their shared leading shape and channel counts. */
function concatInputs(
  name: string,
  rest: Record<string, tf.TensorInfo | undefined>,
  vectors: tf.TensorInfo[],
) {
  const xs = Object.values(rest) as tf.TensorInfo[];
  const c = tf.util.sizeFromShape(vectors[0].shape);
  const lead = xs[0].shape.slice(0, -1);
  const channels = xs.map((t) => t.shape[t.shape.length - 1]);
  if (
    [...xs, ...vectors].some((t) => t.dtype !== "float32") ||
    channels.reduce((a, b) => a + b, 0) !== c ||
    xs.some((t) => !tf.util.arraysEqual(t.shape.slice(0, -1), lead)) ||
    vectors.some((t) => tf.util.sizeFromShape(t.shape) !== c)
  ) {
    throw new Error(`${name}: needs float32 [.., C_i] inputs and [ΣC_i] vectors`);
  }
  return { xs, c, lead, channels, rows: tf.util.sizeFromShape(lead) };
}

/** The inputs joined by the native `Concat` (the kernels' fallback where SIMD cannot run). */
function joined(xs: tf.TensorInfo[], backend: BackendWasm): tf.TensorInfo {
  if (xs.length === 1) return xs[0];
  // Concat's inputs are an array (tfjs's own kernel maps over them).
  const inputs = xs as unknown as KernelArgs["inputs"];
  return concat({ inputs, backend, attrs: { axis: -1 } });
}

/**
 * `BatchNormReluConcatTrain`: float64 statistics of each input's channels (SIMD threads, as
 * `BatchNormReluTrain`'s), then `normaliseConcat` with `normaliseAffine`'s map of them: the y
 * `BatchNormReluConcatInference` gives for the same statistics, bit for bit.
 */
function batchNormReluConcatTrain(args: KernelArgs): tf.TensorInfo[] {
  const { backend } = args;
  const { gamma, beta, ...rest } = args.inputs;
  const attrs = args.attrs as unknown as BatchNormReluAttrs;
  const { xs, c, lead, channels, rows } = concatInputs(BN_CONCAT_TRAIN_KERNEL, rest, [
    gamma!,
    beta!,
  ]);
  const threads = threadsFor(backend);
  if (
    threads.normaliseConcat == null || threads.statisticsSums == null || !passesFit(channels)
  ) {
    const x = joined(xs, backend);
    try {
      return batchNormReluTrain({ inputs: { x, gamma, beta }, backend, attrs: args.attrs });
    } finally {
      if (x !== xs[0]) backend.disposeData(x.dataId);
    }
  }
  for (const t of [...xs, gamma!, beta!]) backend.dataIdMap.get(t.dataId);
  const y = backend.makeOutput([...lead, c], "float32");
  const mean = backend.makeOutput([c], "float32");
  const variance = backend.makeOutput([c], "float32");
  const f32 = (t: tf.TensorInfo) => backend.typedArrayFromHeap(t) as Float32Array;
  // Float64 sums of each input's values shifted by its first row, all inputs in one pass.
  const [m64, v64, s1, s2, shift] = [0, 0, 0, 0, 0].map(() => new Float64Array(c));
  const inputs = xs.map((x, i) => {
    const from = channels.slice(0, i).reduce((a, n) => a + n, 0);
    shift.set(f32(x).subarray(0, channels[i]), from);
    return { x: { at: heapOffset(backend, x), stride: channels[i] }, from, c: channels[i] };
  });
  threads.statisticsSums!(inputs, rows, shift, s1, s2);
  statisticsFromSums(shift, s1, s2, rows, m64, v64);
  f32(mean).set(m64);
  f32(variance).set(v64);
  threads.normaliseConcat(
    xs.map((t, i) => ({ at: heapOffset(backend, t), c: channels[i] })),
    heapOffset(backend, y),
    rows,
    affineOf(backend, attrs, { mean, variance, gamma: gamma!, beta: beta! }),
    attrs.relu,
  );
  return [y, mean, variance];
}

/**
 * `BatchNormReluConcatGrad`: per input, the masked float64 sums and the dx pass of
 * `batchNormReluGrad` over its channel range of dy and dx, the addend's range added in that
 * pass. The fallback joins the inputs, runs `batchNormReluGrad` and adds the addend's prefix.
 */
function batchNormReluConcatGrad(args: KernelArgs): tf.TensorInfo[] {
  const { backend } = args;
  const { dy, gamma, beta, mean, variance, addend, ...rest } = args.inputs;
  const attrs = args.attrs as unknown as BatchNormReluAttrs;
  const vectors = [gamma!, beta!, mean!, variance!];
  const { xs, c, lead, channels, rows } = concatInputs(BN_CONCAT_GRAD_KERNEL, rest, vectors);
  const width = addend!.shape[addend!.shape.length - 1];
  if (
    !tf.util.arraysEqual(dy!.shape, [...lead, c]) || width < c ||
    !tf.util.arraysEqual(addend!.shape.slice(0, -1), lead)
  ) {
    throw new Error(`${BN_CONCAT_GRAD_KERNEL}: dy [.., ${c}] and addend [.., ≥ ${c}] needed`);
  }
  const { maskedSums, gradApply } = threadsFor(backend);
  if (maskedSums == null || gradApply == null || !passesFit(channels) || width % 4 !== 0) {
    const x = joined(xs, backend);
    const [dx, dgamma, dbeta] = batchNormReluGrad({
      inputs: { dy, x, gamma, beta, mean, variance },
      backend,
      attrs: args.attrs,
    });
    const begin = lead.map(() => 0).concat(0);
    const prefix = slice({ inputs: { x: addend }, backend, attrs: { begin, size: [...lead, c] } });
    const sum = add({ inputs: { a: prefix, b: dx }, backend, attrs: {} });
    for (const t of [dx, prefix, ...(x !== xs[0] ? [x] : [])]) backend.disposeData(t.dataId);
    return [sum, dgamma, dbeta];
  }
  return simdGrad(
    backend,
    attrs,
    dy!,
    xs,
    rows,
    { gamma: gamma!, beta: beta!, mean: mean!, variance: variance! },
    addend!,
  );
}

/** The kernels of this module, by name. */
export const batchNormKernels = (): Record<string, tf.KernelFunc> => ({
  FusedBatchNorm: fusedBatchNorm as unknown as tf.KernelFunc,
  [BN_INFERENCE_KERNEL]: batchNormReluInference as unknown as tf.KernelFunc,
  [BN_TRAIN_KERNEL]: batchNormReluTrain as unknown as tf.KernelFunc,
  [BN_GRAD_KERNEL]: batchNormReluGrad as unknown as tf.KernelFunc,
  [BN_CONCAT_TRAIN_KERNEL]: batchNormReluConcatTrain as unknown as tf.KernelFunc,
  [BN_CONCAT_GRAD_KERNEL]: batchNormReluConcatGrad as unknown as tf.KernelFunc,
  [BN_CONCAT_INFERENCE_KERNEL]: batchNormReluConcatInference as unknown as tf.KernelFunc,
});
