/**
 * The `native` backend's kernels: tfjs's wasm backend with its convolutions (Conv2D, FusedConv2D
 * with bias / ReLU, both gradients), evaluation-mode BatchNorm and the passes of the fused
 * training BatchNorm seam run by oneDNN (`onednn.ts`) directly on the wasm heap, its reductions
 * in float64 here (WebAssembly SIMD, `simd_sums.ts`). Registered for the `wasm` backend name, replacing
 * the kernels there (tfjs's or `wasm_kernels.ts`'s), which stay the fallback for what these do
 * not cover (dilations, NCHW, other dtypes, empty tensors, fused activations other than ReLU).
 * `unregisterNativeKernels()` puts the replaced kernels back (wasm without native, in one process).
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import type { BackendWasm } from "@tensorflow/tfjs-backend-wasm";
import { type ConvShape, offsetPointer, OneDnn, type PoolShape } from "./onednn.ts";
import { type Affine, type HeapThreads, heapThreads } from "./row_threads.ts";
import {
  type BatchNormReluAttrs,
  batchNormReluGradientParts,
  batchStatistics,
  BN_CONCAT_GRAD_KERNEL,
  BN_CONCAT_INFERENCE_KERNEL,
  BN_CONCAT_TRAIN_KERNEL,
  BN_GRAD_KERNEL,
  BN_INFERENCE_KERNEL,
  BN_TRAIN_KERNEL,
  gradientPartsFromSums,
  normaliseAffine,
  statisticsFromSums,
} from "../batchnorm_kernels.ts";

/** Kernels this module registers for the wasm backend. */
export const NATIVE_KERNELS = [
  "Conv2D",
  "FusedConv2D",
  "Conv2DBackpropInput",
  "Conv2DBackpropFilter",
  "FusedBatchNorm",
  BN_INFERENCE_KERNEL,
  BN_CONCAT_INFERENCE_KERNEL,
  BN_CONCAT_TRAIN_KERNEL,
  BN_CONCAT_GRAD_KERNEL,
  BN_TRAIN_KERNEL,
  BN_GRAD_KERNEL,
  "Concat",
  "SplitV",
  "Slice",
  "Add",
  "MaxPoolGrad",
  "AvgPoolGrad",
] as const;

let dnn: OneDnn | null = null;
/** The kernels ours replaced, by name: the fallback and what unregistering restores. */
const replaced = new Map<string, tf.KernelConfig>();

/** Opens oneDNN once (throws, saying why, when the library is missing or unsupported). */
export function openOneDnn(): OneDnn {
  dnn ??= OneDnn.open();
  return dnn;
}

/** Registers the native kernels for `wasm` (after the wasm backend and its kernels started). */
export function registerNativeKernels(): void {
  openOneDnn();
  for (const [kernelName, kernelFunc] of Object.entries(KERNELS)) {
    const current = tf.getKernel(kernelName, "wasm");
    if (current?.kernelFunc === kernelFunc) continue;
    if (current != null) {
      replaced.set(kernelName, current);
      tf.unregisterKernel(kernelName, "wasm");
    }
    tf.registerKernel({ kernelName, backendName: "wasm", kernelFunc });
  }
}

/** Puts back the kernels `registerNativeKernels` replaced. */
export function unregisterNativeKernels(): void {
  for (const kernelName of Object.keys(KERNELS)) {
    const prev = replaced.get(kernelName);
    if (tf.getKernel(kernelName, "wasm")?.kernelFunc !== KERNELS[kernelName]) continue;
    tf.unregisterKernel(kernelName, "wasm");
    if (prev != null) tf.registerKernel(prev);
  }
  replaced.clear();
}

/** True while the native kernels are the registered wasm kernels. */
export function nativeKernelsActive(): boolean {
  return tf.getKernel("Conv2D", "wasm")?.kernelFunc === KERNELS.Conv2D;
}

function fallback(name: string, args: KernelArgs): tf.TensorInfo {
  const config = replaced.get(name);
  if (config == null) throw new Error(`wasm backend has no ${name} kernel to fall back to`);
  return config.kernelFunc(args as unknown as Parameters<tf.KernelFunc>[0]) as tf.TensorInfo;
}

interface KernelArgs {
  inputs: Record<string, tf.TensorInfo | undefined>;
  backend: BackendWasm;
  attrs: Record<string, unknown>;
}

/** The BatchNorm passes split over oneDNN's thread count, per wasm module. */
const threadsByModule = new WeakMap<object, HeapThreads>();

function threadsFor(backend: BackendWasm): HeapThreads {
  const module = backend.wasm as unknown as {
    wasmMemory?: WebAssembly.Memory;
    asm?: { memory?: WebAssembly.Memory };
    wasmExports?: { memory?: WebAssembly.Memory };
    HEAPU8: Uint8Array;
    _malloc: (bytes: number) => number;
  };
  let threads = threadsByModule.get(module);
  if (threads == null) {
    // The threaded build names its heap wasmMemory; the single-threaded one exports it.
    const memory = [module.wasmMemory, module.asm?.memory, module.wasmExports?.memory].find(
      (m) => m instanceof WebAssembly.Memory && m.buffer === module.HEAPU8.buffer,
    ) ?? null;
    const n = openOneDnn().threads ?? 1;
    threads = heapThreads(memory, n, (bytes) => module._malloc(bytes));
    threadsByModule.set(module, threads);
  }
  return threads;
}

/** Byte offset of a tensor's data in the wasm heap. */
function heapOffset(backend: BackendWasm, t: tf.TensorInfo): number {
  return backend.dataIdMap.get(t.dataId)!.memoryOffset;
}

/** Heap address of a tensor's data (after every allocation of the call: the heap may grow). */
function heapPointer(backend: BackendWasm, t: tf.TensorInfo): Deno.PointerValue {
  const { memoryOffset } = backend.dataIdMap.get(t.dataId)!;
  const heap = (backend.wasm as unknown as { HEAPU8: Uint8Array }).HEAPU8;
  return offsetPointer(Deno.UnsafePointer.of(heap), memoryOffset);
}

/** The convolution as oneDNN needs it; null for what the native kernels do not take. */
function convShape(
  xShape: number[],
  filterShape: number[],
  attrs: Record<string, unknown>,
  dtypes: (tf.DataType | undefined)[],
): ConvShape | null {
  if (dtypes.some((d) => d !== "float32")) return null;
  if ((attrs.dataFormat ?? "NHWC") !== "NHWC") return null;
  const dil = attrs.dilations ?? 1;
  if (dil !== 1 && !(Array.isArray(dil) && dil.every((d) => d === 1))) return null;
  const info = tf.backend_util.computeConv2DInfo(
    xShape as [number, number, number, number],
    filterShape as [number, number, number, number],
    attrs.strides as number | [number, number],
    1,
    attrs.pad as "valid",
    attrs.dimRoundingMode as "floor" | undefined,
    false,
    "channelsLast",
  );
  const { top, left, bottom, right } = info.padInfo;
  const s: ConvShape = {
    n: info.batchSize,
    h: info.inHeight,
    w: info.inWidth,
    ci: info.inChannels,
    oh: info.outHeight,
    ow: info.outWidth,
    co: info.outChannels,
    fh: info.filterHeight,
    fw: info.filterWidth,
    sh: info.strideHeight,
    sw: info.strideWidth,
    pad: [top, left, bottom, right],
  };
  const sizes = [s.n, s.h, s.w, s.ci, s.oh, s.ow, s.co];
  if (sizes.some((d) => d <= 0) || Math.min(...s.pad) < 0) return null;
  // oneDNN requires (in + pads − filter) / stride + 1 = out; tfjs's rounding modes may not.
  if (Math.floor((s.h + top + bottom - s.fh) / s.sh) + 1 !== s.oh) return null;
  if (Math.floor((s.w + left + right - s.fw) / s.sw) + 1 !== s.ow) return null;
  return s;
}

function conv2D(args: KernelArgs): tf.TensorInfo {
  return forwardConv(args, "Conv2D", false, false);
}

function fusedConv2D(args: KernelArgs): tf.TensorInfo {
  const { activation } = args.attrs;
  const relu = activation === "relu";
  if (activation != null && activation !== "linear" && !relu) {
    return fallback("FusedConv2D", args);
  }
  return forwardConv(args, "FusedConv2D", args.inputs.bias != null, relu);
}

function forwardConv(args: KernelArgs, name: string, bias: boolean, relu: boolean): tf.TensorInfo {
  const { inputs: { x, filter, bias: b }, backend, attrs } = args;
  const s = convShape(x!.shape, filter!.shape, attrs, [
    x!.dtype,
    filter!.dtype,
    b?.dtype ?? "float32",
  ]);
  if (s == null || (bias && tf.util.sizeFromShape(b!.shape) !== s.co)) return fallback(name, args);
  // Bring the inputs onto the heap before the output is allocated.
  for (const t of [x!, filter!, ...(bias ? [b!] : [])]) backend.dataIdMap.get(t.dataId);
  const out = backend.makeOutput([s.n, s.oh, s.ow, s.co], "float32");
  const p = (t: tf.TensorInfo) => heapPointer(backend, t);
  openOneDnn().convForward(
    s,
    { bias, relu },
    p(x!),
    p(filter!),
    bias ? p(b!) : null,
    p(out),
    false,
  );
  return out;
}

function conv2DBackpropInput(args: KernelArgs): tf.TensorInfo {
  const { inputs: { dy, filter }, backend, attrs } = args;
  const inputShape = attrs.inputShape as number[];
  const s = convShape(inputShape, filter!.shape, attrs, [dy!.dtype, filter!.dtype]);
  if (s == null) return fallback("Conv2DBackpropInput", args);
  backend.dataIdMap.get(dy!.dataId);
  backend.dataIdMap.get(filter!.dataId);
  const out = backend.makeOutput(inputShape, "float32");
  const p = (t: tf.TensorInfo) => heapPointer(backend, t);
  openOneDnn().convBackwardData(s, p(dy!), p(filter!), p(out));
  return out;
}

function conv2DBackpropFilter(args: KernelArgs): tf.TensorInfo {
  const { inputs: { x, dy }, backend, attrs } = args;
  const filterShape = attrs.filterShape as number[];
  const s = convShape(x!.shape, filterShape, attrs, [x!.dtype, dy!.dtype]);
  if (s == null) return fallback("Conv2DBackpropFilter", args);
  backend.dataIdMap.get(x!.dataId);
  backend.dataIdMap.get(dy!.dataId);
  const out = backend.makeOutput(filterShape, "float32");
  const p = (t: tf.TensorInfo) => heapPointer(backend, t);
  openOneDnn().convBackwardWeights(s, p(x!), p(dy!), p(out));
  return out;
}

/** [M, C] of an NHWC tensor; null for what the native BatchNorm does not take. */
function rowsChannels(inputs: tf.TensorInfo[], x: tf.TensorInfo): [number, number] | null {
  if (inputs.some((t) => t.dtype !== "float32")) return null;
  const c = x.shape[x.shape.length - 1];
  const rows = tf.util.sizeFromShape(x.shape) / c;
  return rows >= 2 && c > 0 ? [rows, c] : null;
}

/**
 * `BatchNormReluTrain`: the statistics in float64 (`batchStatistics`, one pass; oneDNN's own
 * float32 ones lose the variance of a channel whose mean is large against its spread), then
 * oneDNN's normalise + ReLU pass with them.
 */
function batchNormReluTrain(args: KernelArgs): tf.TensorInfo[] {
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
  batchStatistics(f32(x!), m64, v64, threadsFor(backend).rowSums);
  f32(mean).set(m64);
  f32(variance).set(v64);
  normalise(backend, rows, c, attrs, { x: x!, mean, variance, gamma: gamma!, beta: beta!, y });
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
): Affine {
  const f32 = (v: tf.TensorInfo) => backend.typedArrayFromHeap(v) as Float32Array;
  const [mean, beta] = [f32(t.mean), f32(t.beta)];
  const { scale } = normaliseAffine(f32(t.gamma), beta, mean, f32(t.variance), attrs.epsilon);
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
): void {
  const { normaliseConcat } = threadsFor(backend);
  if (normaliseConcat != null && c % 4 === 0) {
    const x = [{ at: heapOffset(backend, t.x), c }];
    normaliseConcat(x, heapOffset(backend, t.y), rows, affineOf(backend, attrs, t), attrs.relu);
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
 * `BatchNormReluGrad` in two reading passes of SIMD threads (row_threads.ts): Σ g and Σ g·x̂ in
 * float64 with g = dy masked by the pre-ReLU sign as it is read, then dx = a·g + b·x + d per
 * channel, the mask recomputed (float32, as the forward's). Where the SIMD passes are missing
 * or the channels are not a multiple of 4: `oneDnnBatchNormReluGrad`.
 */
function batchNormReluGrad(args: KernelArgs): tf.TensorInfo[] {
  const { inputs: { dy, x, gamma, beta, mean, variance }, backend } = args;
  const attrs = args.attrs as unknown as BatchNormReluAttrs;
  const all = [dy!, x!, gamma!, beta!, mean!, variance!];
  const rc = rowsChannels(all, x!);
  if (rc == null) return fallback(BN_GRAD_KERNEL, args) as unknown as tf.TensorInfo[];
  const [rows, c] = rc;
  const { maskedSums, gradApply } = threadsFor(backend);
  if (maskedSums == null || gradApply == null || c % 4 !== 0) {
    return oneDnnBatchNormReluGrad(args, rows, c);
  }
  const vectors = { gamma: gamma!, beta: beta!, mean: mean!, variance: variance! };
  return simdGrad(backend, attrs, dy!, [x!], rows, vectors, null);
}

/**
 * The SIMD backward of a BatchNorm(+ReLU) over the channel concatenation of `xs` (each with a
 * multiple of 4 channels): per input, the masked float64 sums over its channel range of dy,
 * then `gradientPartsFromSums`, then per input the dx pass, `addend`'s first C channels (when
 * given) added in it. The mask is the forward's pre-ReLU value in its own float32 arithmetic.
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
  const rc = rowsChannels([x!, ...vectors as tf.TensorInfo[]], x!);
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
  const rc = rowsChannels([x!, ...vectors], x!);
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

/** Below this many values tfjs's own copy loop beats a oneDNN call (and keeps its cache small). */
const MIN_COPY_VALUES = 1 << 14;

/**
 * `Concat` of float32 tensors as [outer, inner] matrices joined along their columns (any axis):
 * one multi-threaded oneDNN copy per input into its column range of the output, where tfjs's
 * loop copies row by row on one thread (a DenseNet dense layer joins up to 24 inputs of
 * 50,176 rows).
 */
function concat(args: KernelArgs): tf.TensorInfo {
  const inputs = Object.values(args.inputs).filter((t) => t != null) as tf.TensorInfo[];
  const { backend } = args;
  const shape = inputs[0]?.shape ?? [];
  const axis = tf.util.parseAxisParam(args.attrs.axis as number, shape)[0];
  const outShape = tf.backend_util.computeOutShape(inputs.map((t) => t.shape), axis);
  const rows = tf.util.sizeFromShape(shape.slice(0, axis));
  const total = tf.util.sizeFromShape(outShape);
  if (
    inputs.length < 2 || inputs.some((t) => t.dtype !== "float32") || rows < 2 ||
    total < MIN_COPY_VALUES || inputs.some((t) => tf.util.sizeFromShape(t.shape) === 0)
  ) {
    return fallback("Concat", args);
  }
  const out = backend.makeOutput(outShape, "float32");
  const width = total / rows;
  const dnn = openOneDnn();
  let column = 0;
  for (const t of inputs) {
    const cols = tf.util.sizeFromShape(t.shape) / rows;
    dnn.copyRows(
      rows,
      cols,
      heapPointer(backend, t),
      cols,
      offsetPointer(heapPointer(backend, out), 4 * column),
      width,
    );
    column += cols;
  }
  return out;
}

/** `SplitV`: the inverse of `concat`, one oneDNN copy per output from its column range. */
function splitV(args: KernelArgs): tf.TensorInfo[] {
  const { backend } = args;
  const x = args.inputs.x!;
  const axis = tf.util.parseAxisParam(args.attrs.axis as number, x.shape)[0];
  const sizes = tf.backend_util.prepareSplitSize(
    x as unknown as tf.Tensor,
    args.attrs.numOrSizeSplits as number[] | number,
    axis,
  );
  const rows = tf.util.sizeFromShape(x.shape.slice(0, axis));
  const total = tf.util.sizeFromShape(x.shape);
  if (x.dtype !== "float32" || rows < 2 || total < MIN_COPY_VALUES || sizes.some((s) => s <= 0)) {
    return fallback("SplitV", args) as unknown as tf.TensorInfo[];
  }
  const width = total / rows;
  const inner = width / x.shape[axis];
  const dnn = openOneDnn();
  let column = 0;
  return sizes.map((size) => {
    const shape = x.shape.slice();
    shape[axis] = size;
    const out = backend.makeOutput(shape, "float32");
    const cols = size * inner;
    dnn.copyRows(
      rows,
      cols,
      offsetPointer(heapPointer(backend, x), 4 * column),
      width,
      heapPointer(backend, out),
      cols,
    );
    column += cols;
    return out;
  });
}

/**
 * `Slice` where it is one block of columns of an [outer, inner] matrix (the axes before the
 * sliced one whole, those after it too): one multi-threaded oneDNN copy. A dense block's layer
 * inputs and prefix gradients are channel prefixes of the block's tensors.
 */
function slice(args: KernelArgs): tf.TensorInfo {
  const { backend } = args;
  const x = args.inputs.x!;
  const [begin, size] = tf.slice_util.parseSliceParams(
    x as unknown as tf.Tensor,
    args.attrs.begin as number[],
    args.attrs.size as number[],
  );
  const shape = x.shape;
  // The sliced axis: the last one the slice does not take whole.
  let axis = shape.length - 1;
  while (axis > 0 && begin[axis] === 0 && size[axis] === shape[axis]) axis--;
  const whole = (i: number) => begin[i] === 0 && size[i] === shape[i];
  const rows = tf.util.sizeFromShape(shape.slice(0, axis));
  const inner = tf.util.sizeFromShape(shape.slice(axis + 1));
  const total = tf.util.sizeFromShape(size);
  if (
    x.dtype !== "float32" || rows < 2 || total < MIN_COPY_VALUES ||
    shape.some((_, i) => i !== axis && !whole(i))
  ) {
    return fallback("Slice", args);
  }
  const out = backend.makeOutput(size, "float32");
  openOneDnn().copyRows(
    rows,
    size[axis] * inner,
    offsetPointer(heapPointer(backend, x), 4 * begin[axis] * inner),
    shape[axis] * inner,
    heapPointer(backend, out),
    size[axis] * inner,
  );
  return out;
}

/**
 * `Add` of two float32 tensors of one shape (no broadcasting) as one multi-threaded oneDNN pass:
 * the gradient accumulations of a training step (tfjs's runs on one thread).
 */
function add(args: KernelArgs): tf.TensorInfo {
  const { a, b } = args.inputs;
  const { backend } = args;
  const n = tf.util.sizeFromShape(a!.shape);
  if (
    a!.dtype !== "float32" || b!.dtype !== "float32" || n < MIN_COPY_VALUES ||
    !tf.util.arraysEqual(a!.shape, b!.shape)
  ) {
    return fallback("Add", args);
  }
  const out = backend.makeOutput(a!.shape, "float32");
  openOneDnn().add(
    n,
    heapPointer(backend, a!),
    heapPointer(backend, b!),
    heapPointer(backend, out),
  );
  return out;
}

/** The pooling as oneDNN takes it; null for what the native kernels do not take. */
function poolShape(x: tf.TensorInfo, attrs: Record<string, unknown>): PoolShape | null {
  if (x.dtype !== "float32" || x.shape.length !== 4) return null;
  const info = tf.backend_util.computePool2DInfo(
    x.shape as [number, number, number, number],
    attrs.filterSize as [number, number] | number,
    attrs.strides as [number, number] | number,
    1,
    attrs.pad as "valid",
    attrs.dimRoundingMode as "floor" | undefined,
  );
  const p = info.padInfo;
  if (info.dilationHeight !== 1 || info.dilationWidth !== 1) return null;
  if ([p.top, p.left, p.bottom, p.right].some((v) => v < 0)) return null;
  return {
    n: info.batchSize,
    h: info.inHeight,
    w: info.inWidth,
    c: info.inChannels,
    oh: info.outHeight,
    ow: info.outWidth,
    fh: info.filterHeight,
    fw: info.filterWidth,
    sh: info.strideHeight,
    sw: info.strideWidth,
    pad: [p.top, p.left, p.bottom, p.right],
  };
}

/**
 * `MaxPoolGrad` / `AvgPoolGrad` (unpadded) as one multi-threaded oneDNN pooling backward (tfjs's wasm
 * kernels loop on one thread: ~0.1 s each for DenseNet-121's stem pooling at batch 16).
 */
function poolGrad(kind: "max" | "avg") {
  const name = kind === "max" ? "MaxPoolGrad" : "AvgPoolGrad";
  return (args: KernelArgs): tf.TensorInfo => {
    const { backend } = args;
    const { dy, input } = args.inputs;
    const s = poolShape(input!, args.attrs);
    // A padded average: tfjs's forward divides by the cells inside, its gradient by the whole
    // window; its own kernel keeps that pair consistent with itself.
    const padded = s != null && s.pad.some((v) => v > 0);
    if (
      s == null || dy!.dtype !== "float32" || s.n * s.h * s.w * s.c === 0 ||
      (kind === "avg" && padded)
    ) {
      return fallback(name, args);
    }
    const dx = backend.makeOutput(input!.shape, "float32");
    openOneDnn().poolBackward(
      kind,
      s,
      heapPointer(backend, input!),
      heapPointer(backend, dy!),
      heapPointer(backend, dx),
    );
    return dx;
  };
}

/**
 * `BatchNormReluConcatInference`: the running-statistics normalisation (+ReLU) of the channel
 * concatenation of x0, x1, … written straight from the inputs (SIMD threads,
 * `normaliseConcat`); where that cannot run (no SIMD, channels not multiples of 4), the
 * concatenation is made and normalised by oneDNN.
 */
function batchNormReluConcatInference(args: KernelArgs): tf.TensorInfo {
  const { backend } = args;
  const { mean, variance, gamma, beta, ...rest } = args.inputs;
  const attrs = args.attrs as unknown as BatchNormReluAttrs;
  const vectors = [mean!, variance!, gamma!, beta!];
  const { xs, c, lead, channels, rows } = concatInputs(BN_CONCAT_INFERENCE_KERNEL, rest, vectors);
  for (const t of [...xs, ...vectors]) backend.dataIdMap.get(t.dataId);
  const { normaliseConcat } = threadsFor(backend);
  if (normaliseConcat == null || channels.some((k) => k % 4 !== 0)) {
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
  normaliseConcat(
    xs.map((t, i) => ({ at: heapOffset(backend, t), c: channels[i] })),
    heapOffset(backend, out),
    rows,
    affineOf(backend, attrs, { mean: mean!, variance: variance!, gamma: gamma!, beta: beta! }),
    attrs.relu,
  );
  return out;
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
    threads.normaliseConcat == null || threads.statisticsSums == null ||
    channels.some((k) => k % 4 !== 0)
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
  if (maskedSums == null || gradApply == null || [...channels, width].some((k) => k % 4 !== 0)) {
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

const KERNELS: Record<string, tf.KernelFunc> = {
  [BN_CONCAT_TRAIN_KERNEL]: batchNormReluConcatTrain as unknown as tf.KernelFunc,
  [BN_CONCAT_GRAD_KERNEL]: batchNormReluConcatGrad as unknown as tf.KernelFunc,
  [BN_CONCAT_INFERENCE_KERNEL]: batchNormReluConcatInference as unknown as tf.KernelFunc,
  Add: add as unknown as tf.KernelFunc,
  Slice: slice as unknown as tf.KernelFunc,
  MaxPoolGrad: poolGrad("max") as unknown as tf.KernelFunc,
  AvgPoolGrad: poolGrad("avg") as unknown as tf.KernelFunc,
  Concat: concat as unknown as tf.KernelFunc,
  SplitV: splitV as unknown as tf.KernelFunc,
  [BN_INFERENCE_KERNEL]: batchNormReluInference as unknown as tf.KernelFunc,
  FusedBatchNorm: fusedBatchNorm as unknown as tf.KernelFunc,
  [BN_TRAIN_KERNEL]: batchNormReluTrain as unknown as tf.KernelFunc,
  [BN_GRAD_KERNEL]: batchNormReluGrad as unknown as tf.KernelFunc,
  Conv2D: conv2D as unknown as tf.KernelFunc,
  FusedConv2D: fusedConv2D as unknown as tf.KernelFunc,
  Conv2DBackpropInput: conv2DBackpropInput as unknown as tf.KernelFunc,
  Conv2DBackpropFilter: conv2DBackpropFilter as unknown as tf.KernelFunc,
};
