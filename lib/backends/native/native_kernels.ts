/**
 * The `native` backend's kernels: tfjs's wasm backend with its convolutions (Conv2D, FusedConv2D
 * with bias / ReLU, both gradients), evaluation-mode BatchNorm and the passes of the fused
 * training BatchNorm seam run by oneDNN (`onednn.ts`) directly on the wasm heap, its reductions
 * in float64 here. Registered for the `wasm` backend name, replacing
 * the kernels there (tfjs's or `wasm_kernels.ts`'s), which stay the fallback for what these do
 * not cover (dilations, NCHW, other dtypes, empty tensors, fused activations other than ReLU).
 * `unregisterNativeKernels()` puts the replaced kernels back (wasm without native, in one process).
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import type { BackendWasm } from "@tensorflow/tfjs-backend-wasm";
import { type ConvShape, offsetPointer, OneDnn } from "./onednn.ts";
import { rowThreads } from "./row_threads.ts";
import {
  type BatchNormReluAttrs,
  batchNormReluGradientParts,
  batchStatistics,
  BN_GRAD_KERNEL,
  BN_INFERENCE_KERNEL,
  BN_TRAIN_KERNEL,
  type RowSums,
} from "../batchnorm_kernels.ts";

/** Kernels this module registers for the wasm backend. */
export const NATIVE_KERNELS = [
  "Conv2D",
  "FusedConv2D",
  "Conv2DBackpropInput",
  "Conv2DBackpropFilter",
  "FusedBatchNorm",
  BN_INFERENCE_KERNEL,
  BN_TRAIN_KERNEL,
  BN_GRAD_KERNEL,
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

/** The BatchNorm reductions split over oneDNN's thread count, per wasm module. */
const rowSumsByModule = new WeakMap<object, RowSums>();

function rowSumsFor(backend: BackendWasm): RowSums {
  const module = backend.wasm as unknown as { wasmMemory?: WebAssembly.Memory };
  let sums = rowSumsByModule.get(module);
  if (sums == null) {
    const memory = module.wasmMemory;
    const threads = memory?.buffer instanceof SharedArrayBuffer ? openOneDnn().threads ?? 1 : 1;
    sums = rowThreads(memory!, threads);
    rowSumsByModule.set(module, sums);
  }
  return sums;
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
  const p = (t: tf.TensorInfo) => heapPointer(backend, t);
  const f32 = (t: tf.TensorInfo) => backend.typedArrayFromHeap(t) as Float32Array;
  const m64 = new Float64Array(c);
  const v64 = new Float64Array(c);
  batchStatistics(f32(x!), m64, v64, rowSumsFor(backend));
  f32(mean).set(m64);
  f32(variance).set(v64);
  const dnn = openOneDnn();
  dnn.bnApply(
    rows,
    c,
    attrs.epsilon,
    attrs.relu,
    p(x!),
    p(mean),
    p(variance),
    p(gamma!),
    p(beta!),
    p(y),
  );
  return [y, mean, variance];
}

/**
 * `BatchNormReluGrad`: g = dy masked by the pre-ReLU sign (oneDNN: a normalise pass into g, then
 * ReLU's backward in place); Σ g and Σ g·x̂ in one float64 reading pass
 * (`batchNormReluGradientParts`; oneDNN's float32 sums lose the small dγ of channels whose terms
 * cancel); then dx = a·g + b·(x − mean) + d per channel in two oneDNN passes: a normalise pass
 * with those coefficients (variance 1, epsilon 0) and a multiply-accumulate of g. (Masking in
 * the JavaScript pass instead measured slower: a data-dependent branch per element.)
 */
function batchNormReluGrad(args: KernelArgs): tf.TensorInfo[] {
  const { inputs: { dy, x, gamma, beta, mean, variance }, backend } = args;
  const attrs = args.attrs as unknown as BatchNormReluAttrs;
  const all = [dy!, x!, gamma!, beta!, mean!, variance!];
  const rc = rowsChannels(all, x!);
  if (rc == null) return fallback(BN_GRAD_KERNEL, args) as unknown as tf.TensorInfo[];
  const [rows, c] = rc;
  for (const t of all) backend.dataIdMap.get(t.dataId);
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
      rowSumsFor(backend),
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
  const p = (t: tf.TensorInfo) => heapPointer(backend, t);
  openOneDnn().bnApply(
    rows,
    c,
    attrs.epsilon,
    attrs.relu,
    p(x!),
    p(mean!),
    p(variance!),
    p(gamma!),
    p(beta!),
    p(out),
  );
  return out;
}

const KERNELS: Record<string, tf.KernelFunc> = {
  [BN_INFERENCE_KERNEL]: batchNormReluInference as unknown as tf.KernelFunc,
  FusedBatchNorm: fusedBatchNorm as unknown as tf.KernelFunc,
  [BN_TRAIN_KERNEL]: batchNormReluTrain as unknown as tf.KernelFunc,
  [BN_GRAD_KERNEL]: batchNormReluGrad as unknown as tf.KernelFunc,
  Conv2D: conv2D as unknown as tf.KernelFunc,
  FusedConv2D: fusedConv2D as unknown as tf.KernelFunc,
  Conv2DBackpropInput: conv2DBackpropInput as unknown as tf.KernelFunc,
  Conv2DBackpropFilter: conv2DBackpropFilter as unknown as tf.KernelFunc,
};
