/**
 * Training kernels for the tfjs wasm backend. tfjs-backend-wasm 4.22 lacks
 * `Conv2DBackpropFilter`, and several of the kernels a DenseNet training step leans on are slow
 * there. Profiled on DenseNet-121 (224², batch 4, memory-efficient; one training step
 * ≈ 15 CPU-s with tfjs's kernels, ≈ 4.5 CPU-s with these):
 * - `Conv2DBackpropFilter` (missing): built on wasm's SIMD BatchMatMul (XNNPACK), below.
 * - `Conv2DBackpropInput`: wasm's is a naive loop (≈ 60 % of the step); stride 1 becomes a
 *   forward product: a matmul with the transposed filter (1×1) or XNNPACK's conv2d with the
 *   flipped, in/out-swapped filter.
 * - `SplitV`: block copies on the heap (wasm slices each piece with a generic strided kernel).
 * - `Sum`, `Mean` over leading axes (BatchNorm's per-channel statistics and gradients over
 *   N·H·W): column sums; wasm's transpose the whole tensor first.
 * - `MaxPoolGrad`: one pass over the windows (wasm's is ~3× slower).
 * - `Identity`: shares the input's buffer (reference-counted, as wasm's Reshape and the cpu
 *   backend's Identity do) instead of copying it. The gradient tape clones every tensor it saves
 *   for the backward pass through Identity: ~1,200 full activation copies per DenseNet-121
 *   training step with wasm's copying kernel.
 * - `BatchNormReluTrain` / `BatchNormReluGrad`: the native backend's SIMD passes, which need no
 *   oneDNN, in their float64 variant (≈ 5× the JavaScript kernels of batchnorm_kernels.ts, which
 *   stay for channel counts not a multiple of 4 and were as accurate: a training step's gradient
 *   error against float64 4.20e-6 both; the float32 passes gave 5.31e-6).
 * - `BatchNormReluConcatInference` (evaluation mode): the native backend's, which needs no
 *   oneDNN (WebAssembly SIMD threads on the heap, native/batchnorm.ts): with it a dense block
 *   stays a list of features, never concatenated, and each BatchNorm reads the list in one
 *   pass, where wasm's concatenation copied the block once per layer and normalised it in two
 *   passes (BatchNorm, ReLU).
 * Anything these do not cover (other dtypes, NCHW, strides ≠ 1 for Conv2DBackpropInput, other
 * reduction axes) goes to tfjs's own kernel.
 *
 * Shaped by how wasm's BatchMatMul (XNNPACK) performs: its transposed-operand paths are ~10×
 * slower, and it packs (and caches, per tensor id) the right operand — so the right operand is
 * always a fresh, small tensor (dy's or the filter's few channels), never a refilled buffer.
 *
 * The weight gradient is `dW[kh,kw,ci,co] = Σ_{n,oh,ow} x[n, oh·s+kh−pt, ow·s+kw−pl, ci] ·
 * dy[n,oh,ow,co]`:
 * - Stride 1 (1×1 and 3×3 in DenseNet): xᵀ = the zero-padded input, channel-major
 *   [Ci, N·Hp·Wp] (wasm's PadV2 + Transpose), and dy laid on the same padded grid; filter
 *   position (kh, kw) reads xᵀ shifted by kh·Wp + kw, so each [Ci, Co] slice of dW is one
 *   product with the same (packed once) dy: no patch matrix larger than x.
 * - Other strides (the 7×7/2 stem): windows are gathered element-wise, G positions at a time
 *   (im2col in chunks, bounded by a memory budget) so narrow inputs still give wide products.
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import type { BackendWasm } from "@tensorflow/tfjs-backend-wasm";
import {
  batchNormReluConcatInference,
  batchNormReluGrad,
  batchNormReluTrain,
  simdPassesTake,
} from "./native/batchnorm.ts";
import type { KernelArgs } from "./native/kernel_support.ts";
import { BN_CONCAT_INFERENCE_KERNEL, BN_GRAD_KERNEL, BN_TRAIN_KERNEL } from "./seam.ts";
import { wasmJsKernels } from "./batchnorm_kernels.ts";
import { fallback, type KernelTable } from "./kernel_registry.ts";

/** Bytes one patch matrix may take on the wasm heap (the heap is limited to 4 GB). */
const PATCH_BUDGET_BYTES = 128 * 1024 * 1024;
/** Patch rows (G·Ci) worth batching filter positions for; thinner products are slow. */
const MIN_PATCH_ROWS = 64;

let table: KernelTable | null = null;

/**
 * The `wasm` backend's kernel table (this module's kernels; tfjs-backend-wasm's own, where ours
 * replace one, stay the fallback for the cases ours do not cover).
 */
export function wasmKernelTable(): KernelTable {
  return table ??= {
    name: "wasm",
    backendName: "wasm",
    kernels: {
      Conv2DBackpropFilter: conv2DBackpropFilterKernel,
      Conv2DBackpropInput: conv2DBackpropInputKernel,
      SplitV: splitVKernel,
      Sum: sumKernel,
      Mean: meanKernel,
      MaxPoolGrad: maxPoolGradKernel,
      Identity: identityKernel,
      Slice: sliceKernel,
      [BN_CONCAT_INFERENCE_KERNEL]: batchNormReluConcatInference,
      [BN_TRAIN_KERNEL]: simdOrJs(batchNormReluTrain, wasmJsKernels().train),
      [BN_GRAD_KERNEL]: simdOrJs(batchNormReluGrad, wasmJsKernels().grad),
    },
  };
}

/**
 * The native backend's SIMD BatchNorm kernel `simd` where its passes take the inputs (in the
 * float64 arithmetic the plain wasm backend sets: kernel_support.ts `setHeapPasses`), else the
 * JavaScript kernel (batchnorm_kernels.ts).
 */
function simdOrJs(
  simd: (args: KernelArgs) => tf.TensorInfo[],
  js: tf.KernelFunc,
): (args: KernelArgs) => tf.TensorInfo | tf.TensorInfo[] {
  return (args: KernelArgs) => {
    const inputs = Object.values(args.inputs).filter((t) => t != null) as tf.TensorInfo[];
    return simdPassesTake(args.backend, args.inputs.x!, inputs)
      ? simd(args)
      : js(args as unknown as Parameters<tf.KernelFunc>[0]) as tf.TensorInfo[];
  };
}

/** Attributes common to tfjs's convolution backprop kernels. */
interface ConvBackpropAttrs {
  strides: [number, number] | number;
  pad: "valid" | "same" | number | tf.backend_util.ExplicitPadding;
  dataFormat: "NHWC" | "NCHW";
  dimRoundingMode?: "floor" | "round" | "ceil";
}

interface Conv2DBackpropFilterArgs {
  inputs: { x: tf.TensorInfo; dy: tf.TensorInfo };
  backend: BackendWasm;
  attrs: ConvBackpropAttrs & { filterShape: [number, number, number, number] };
}

function conv2DBackpropFilterKernel(args: Conv2DBackpropFilterArgs): tf.TensorInfo {
  const { inputs, backend, attrs } = args;
  const { strides, pad, dataFormat, dimRoundingMode, filterShape } = attrs;
  if (inputs.x.dtype !== "float32" || inputs.dy.dtype !== "float32") {
    throw new Error("Conv2DBackpropFilter (wasm): only float32 is supported");
  }
  // NCHW is not what our models use; convert to NHWC with the backend's transpose.
  const toNhwc = dataFormat === "NCHW";
  const x = toNhwc ? transposeKernel(backend, inputs.x, [0, 2, 3, 1]) : inputs.x;
  const dy = toNhwc ? transposeKernel(backend, inputs.dy, [0, 2, 3, 1]) : inputs.dy;
  try {
    const conv = tf.backend_util.computeConv2DInfo(
      x.shape as [number, number, number, number],
      filterShape,
      strides,
      1,
      pad,
      dimRoundingMode,
      false,
      "channelsLast",
    );
    return filterGradient(backend, x, dy, conv);
  } finally {
    if (toNhwc) {
      backend.disposeData(x.dataId);
      backend.disposeData(dy.dataId);
    }
  }
}

/** dW for NHWC x/dy described by `conv` (dilation 1), as a new [fh, fw, Ci, Co] tensor. */
function filterGradient(
  backend: BackendWasm,
  x: tf.TensorInfo,
  dy: tf.TensorInfo,
  conv: tf.backend_util.Conv2DInfo,
): tf.TensorInfo {
  const { batchSize: n, inHeight: h, inWidth: w, inChannels: ci } = conv;
  const { outHeight: oh, outWidth: ow, outChannels: co } = conv;
  const { filterHeight: fh, filterWidth: fw, strideHeight: sh, strideWidth: sw } = conv;
  const { top: pt, left: pl, bottom: pb, right: pr } = conv.padInfo;
  // Bring x and dy onto the wasm heap first: a later move could grow (and so detach) the heap
  // under the typed-array views taken below.
  backend.dataIdMap.get(x.dataId);
  backend.dataIdMap.get(dy.dataId);
  const out = backend.makeOutput([fh, fw, ci, co], "float32");
  if (n * oh * ow === 0 || ci === 0 || co === 0) {
    f32(backend, out).fill(0);
    return out;
  }
  const hp = h + pt + pb;
  const wp = w + pl + pr;
  if (sh === 1 && sw === 1) {
    stride1FilterGradient(backend, x, dy, conv, out);
    return out;
  }
  // Strided (the 7×7/2 stem): im2col in chunks of G filter positions, `patchesᵀ · dy`.
  const positions = fh * fw;
  const cols = n * oh * ow;
  const lane = n * hp * wp;
  const temps: tf.TensorInfo[] = [];
  try {
    // Right operand: a private copy of dy, so that BatchMatMul's packed-operand cache is freed
    // with it.
    const dyGrid = backend.makeOutput([1, cols, co], "float32");
    temps.push(dyGrid);
    f32(backend, dyGrid).set(f32(backend, dy));
    // xᵀ: [Ci, lane], channel-major, zero padding around each image.
    const xT = backend.makeOutput([1, ci, lane], "float32");
    temps.push(xT);
    {
      const src = f32(backend, x);
      const dst = f32(backend, xT);
      if (hp !== h || wp !== w) dst.fill(0);
      for (let b = 0; b < n; b++) {
        for (let i = 0; i < h; i++) {
          transpose2d(src, (b * h + i) * w * ci, w, ci, dst, (b * hp + i + pt) * wp + pl, lane);
        }
      }
    }
    const byWidth = Math.max(1, Math.ceil(MIN_PATCH_ROWS / ci));
    const byBudget = Math.max(1, Math.floor(PATCH_BUDGET_BYTES / (cols * ci * 4)));
    const group = Math.min(positions, byWidth, byBudget);
    for (let p0 = 0; p0 < positions; p0 += group) {
      const g = Math.min(group, positions - p0);
      const patches = backend.makeOutput([1, g * ci, cols], "float32");
      temps.push(patches);
      const src = f32(backend, xT);
      const dst = f32(backend, patches);
      for (let k = 0; k < g; k++) {
        const kh = Math.floor((p0 + k) / fw);
        const kw = (p0 + k) % fw;
        for (let c = 0; c < ci; c++) {
          const row = (k * ci + c) * cols;
          for (let b = 0; b < n; b++) {
            for (let i = 0; i < oh; i++) {
              const s = c * lane + (b * hp + i * sh + kh) * wp + kw;
              const d = row + (b * oh + i) * ow;
              for (let j = 0; j < ow; j++) dst[d + j] = src[s + j * sw];
            }
          }
        }
      }
      copyProduct(backend, batchMatMul(backend, patches, dyGrid), out, p0 * ci * co);
      backend.disposeData(temps.pop()!.dataId);
    }
    return out;
  } finally {
    for (const t of temps) backend.disposeData(t.dataId);
  }
}

interface Conv2DBackpropInputArgs {
  inputs: { dy: tf.TensorInfo; filter: tf.TensorInfo };
  backend: BackendWasm;
  attrs: ConvBackpropAttrs & { inputShape: [number, number, number, number] };
}

/**
 * dx of a stride-1 NHWC convolution as a forward product (wasm's own kernel is a naive loop,
 * ~1.5 s per DenseNet-sized conv at batch 16):
 * - 1×1 without padding: `dx[R, Ci] = dy[R, Co] · Wᵀ[Co, Ci]`, one BatchMatMul whose packed
 *   right operand is the small transposed filter;
 * - other kernels: `dx = conv2d(dy, W')` with `W'[kh, kw, co, ci] = W[fh−1−kh, fw−1−kw, ci, co]`
 *   (spatially flipped, in/out swapped) and padding `f−1−p` on each side, on XNNPACK.
 * Strides other than 1 (only the stem in DenseNet, whose image gets no gradient), NCHW and
 * non-float32 go to tfjs's own kernel.
 */
function conv2DBackpropInputKernel(args: Conv2DBackpropInputArgs): tf.TensorInfo {
  const { inputs, backend, attrs } = args;
  const { dy, filter } = inputs;
  const { strides, pad, dataFormat, dimRoundingMode, inputShape } = attrs;
  if (dataFormat === "NCHW" || dy.dtype !== "float32" || filter.dtype !== "float32") {
    return fallback("wasm", "Conv2DBackpropInput", args);
  }
  const conv = tf.backend_util.computeConv2DInfo(
    inputShape,
    filter.shape as [number, number, number, number],
    strides,
    1,
    pad,
    dimRoundingMode,
    false,
    "channelsLast",
  );
  const { filterHeight: fh, filterWidth: fw, inChannels: ci, outChannels: co } = conv;
  const { top: pt, left: pl, bottom: pb, right: pr } = conv.padInfo;
  const [t, b, l, r] = [fh - 1 - pt, fh - 1 - pb, fw - 1 - pl, fw - 1 - pr];
  if (conv.strideHeight !== 1 || conv.strideWidth !== 1 || Math.min(t, b, l, r) < 0) {
    return fallback("wasm", "Conv2DBackpropInput", args);
  }
  backend.dataIdMap.get(dy.dataId);
  backend.dataIdMap.get(filter.dataId);
  if (tf.util.sizeFromShape(inputShape) === 0 || dy.shape.some((d) => d === 0)) {
    const out = backend.makeOutput(inputShape, "float32");
    f32(backend, out).fill(0);
    return out;
  }
  if (fh === 1 && fw === 1 && t + b + l + r === 0) {
    // Filter [1, 1, Ci, Co] → Wᵀ [1, Co, Ci], a fresh tensor (BatchMatMul caches it by id).
    const wT = backend.makeOutput([1, co, ci], "float32");
    try {
      transpose2d(f32(backend, filter), 0, ci, co, f32(backend, wT), 0, ci);
      const rows = conv.batchSize * conv.inHeight * conv.inWidth;
      const dy3: tf.TensorInfo = { dataId: dy.dataId, shape: [1, rows, co], dtype: "float32" };
      const prod = batchMatMul(backend, dy3, wT);
      return { dataId: prod.dataId, shape: [...inputShape], dtype: "float32" };
    } finally {
      backend.disposeData(wT.dataId);
    }
  }
  const flipped = backend.makeOutput([fh, fw, co, ci], "float32");
  try {
    const src = f32(backend, filter);
    const dst = f32(backend, flipped);
    for (let kh = 0; kh < fh; kh++) {
      for (let kw = 0; kw < fw; kw++) {
        const s = ((fh - 1 - kh) * fw + (fw - 1 - kw)) * ci * co;
        transpose2d(src, s, ci, co, dst, (kh * fw + kw) * co * ci, ci);
      }
    }
    const kernel = tf.getKernel("Conv2D", "wasm");
    if (kernel == null) throw new Error("wasm backend has no Conv2D kernel");
    return kernel.kernelFunc({
      inputs: { x: dy, filter: flipped },
      backend,
      attrs: {
        strides: 1,
        pad: [[0, 0], [t, b], [l, r], [0, 0]],
        dataFormat: "NHWC",
        dilations: 1,
        dimRoundingMode: undefined,
      } as unknown as tf.NamedAttrMap,
    }) as tf.TensorInfo;
  } finally {
    backend.disposeData(flipped.dataId);
  }
}

/**
 * x zero-padded as the convolution pads it, viewed as [N·Hp·Wp, Ci]: x itself when there is no
 * padding, else a temporary (PadV2) that the caller's transpose consumes and frees.
 */
function padInput(
  backend: BackendWasm,
  x: tf.TensorInfo,
  conv: tf.backend_util.Conv2DInfo,
): tf.TensorInfo & { temporary?: boolean } {
  const { top: pt, left: pl, bottom: pb, right: pr } = conv.padInfo;
  const cells = conv.batchSize * (conv.inHeight + pt + pb) * (conv.inWidth + pl + pr);
  if (pt + pb + pl + pr === 0) {
    return { dataId: x.dataId, shape: [cells, conv.inChannels], dtype: "float32" };
  }
  const pad = tf.getKernel("PadV2", "wasm");
  if (pad == null) throw new Error("wasm backend has no PadV2 kernel");
  const p = pad.kernelFunc({
    inputs: { x },
    backend,
    attrs: { paddings: [[0, 0], [pt, pb], [pl, pr], [0, 0]], constantValue: 0 },
  }) as tf.TensorInfo;
  return { dataId: p.dataId, shape: [cells, conv.inChannels], dtype: "float32", temporary: true };
}

/** A tensor's words (4-byte elements, any 32-bit dtype) on the wasm heap. */
function words(backend: BackendWasm, t: tf.TensorInfo): Int32Array {
  const { memoryOffset } = backend.dataIdMap.get(t.dataId)!;
  const heap = (backend.wasm as unknown as { HEAPU8: Uint8Array }).HEAPU8;
  return new Int32Array(heap.buffer, memoryOffset, tf.util.sizeFromShape(t.shape));
}

/**
 * Copies `len` words from `src` at `s` to `dst` at `d`: a loop for short runs (call overhead
 * dominates there), `set` of a subarray for long ones.
 */
function copyWords(src: Int32Array, s: number, dst: Int32Array, d: number, len: number): void {
  if (len > 48) {
    dst.set(src.subarray(s, s + len), d);
  } else {
    for (let i = 0; i < len; i++) dst[d + i] = src[s + i];
  }
}

/** Outer (before `axis`) and inner (after `axis`) sizes of `shape`. */
function outerInner(shape: number[], axis: number): [number, number] {
  return [
    tf.util.sizeFromShape(shape.slice(0, axis)),
    tf.util.sizeFromShape(shape.slice(axis + 1)),
  ];
}

interface SliceArgs {
  inputs: { x: tf.TensorInfo };
  backend: BackendWasm;
  attrs: { begin: number[] | number; size: number[] | number };
}

/**
 * `Slice` as runs of words copied on the heap: tfjs's wasm kernel first reads the whole input
 * out of the heap (a copy of it per call: slicing each image out of a batch of 16 cost ~3.4 ms
 * a slice). The run is the slice's trailing whole axes with the last partial one.
 */
function sliceKernel(args: SliceArgs): tf.TensorInfo {
  const { inputs: { x }, backend, attrs } = args;
  if (x.dtype !== "float32" && x.dtype !== "int32") return fallback("wasm", "Slice", args);
  const [begin, size] = tf.slice_util.parseSliceParams(
    x as unknown as tf.Tensor,
    attrs.begin,
    attrs.size,
  );
  const out = backend.makeOutput(size, x.dtype);
  if (tf.util.sizeFromShape(size) === 0) return out;
  const rank = x.shape.length;
  // The copied run: axes after `k` whole, axis k partial (or k = 0).
  let k = rank - 1;
  while (k > 0 && begin[k] === 0 && size[k] === x.shape[k]) k--;
  const strides = tf.util.computeStrides(x.shape);
  const stride = (axis: number) => (axis === rank - 1 ? 1 : strides[axis]);
  const run = size[k] * stride(k);
  const src = words(backend, x);
  const dst = words(backend, out);
  // Every index of the axes before k, in row-major order.
  const index = begin.slice(0, k);
  const runs = tf.util.sizeFromShape(size.slice(0, k));
  for (let r = 0; r < runs; r++) {
    let offset = begin[k] * stride(k);
    for (let a = 0; a < k; a++) offset += index[a] * stride(a);
    copyWords(src, offset, dst, r * run, run);
    for (let a = k - 1; a >= 0; a--) {
      if (++index[a] < begin[a] + size[a]) break;
      index[a] = begin[a];
    }
  }
  return out;
}

interface SplitVArgs {
  inputs: { x: tf.TensorInfo };
  backend: BackendWasm;
  attrs: { numOrSizeSplits: number[] | number; axis: number };
}

/**
 * SplitV as strided block copies on the heap (wasm's own slices every piece with a generic
 * strided kernel: ~10× slower for DenseNet's channel splits of the concatenated gradient).
 */
function splitVKernel(args: SplitVArgs): tf.TensorInfo[] {
  const { inputs: { x }, backend, attrs } = args;
  if (x.dtype !== "float32" && x.dtype !== "int32") {
    return fallback("wasm", "SplitV", args) as unknown as tf.TensorInfo[];
  }
  const axis = tf.util.parseAxisParam(attrs.axis, x.shape)[0];
  const sizes = tf.backend_util.prepareSplitSize(x, attrs.numOrSizeSplits, axis);
  const [outer, inner] = outerInner(x.shape, axis);
  const row = x.shape[axis] * inner;
  backend.dataIdMap.get(x.dataId);
  const outs = sizes.map((size) => {
    const shape = [...x.shape];
    shape[axis] = size;
    return backend.makeOutput(shape, x.dtype);
  });
  const src = words(backend, x);
  let start = 0;
  sizes.forEach((size, k) => {
    const len = size * inner;
    if (len === 0 || outer === 0) return;
    const dst = words(backend, outs[k]);
    for (let o = 0; o < outer; o++) copyWords(src, o * row + start, dst, o * len, len);
    start += len;
  });
  return outs;
}

interface ReduceArgs {
  inputs: { x: tf.TensorInfo };
  backend: BackendWasm;
  attrs: { axis: number | number[]; keepDims: boolean };
}

function sumKernel(args: ReduceArgs): tf.TensorInfo {
  return leadingReduce(args, false) ?? fallback("wasm", "Sum", args);
}

function meanKernel(args: ReduceArgs): tf.TensorInfo {
  return leadingReduce(args, true) ?? fallback("wasm", "Mean", args);
}

/**
 * Sum/Mean of a float32 tensor over its LEADING axes (BatchNorm's statistics and gradients over
 * N·H·W of NHWC) as column sums with float64 accumulators. wasm's own kernels first transpose
 * the whole tensor to make the reduced axes innermost. Null for any other reduction.
 */
function leadingReduce(args: ReduceArgs, mean: boolean): tf.TensorInfo | null {
  const { inputs: { x }, backend, attrs } = args;
  if (x.dtype !== "float32") return null;
  const axes = [...new Set(tf.util.parseAxisParam(attrs.axis, x.shape))].sort((a, b) => a - b);
  const k = axes.length;
  if (k === 0 || k === x.shape.length || axes.some((a, i) => a !== i)) return null;
  const rows = tf.util.sizeFromShape(x.shape.slice(0, k));
  const cols = tf.util.sizeFromShape(x.shape.slice(k));
  if (rows === 0) return null;
  backend.dataIdMap.get(x.dataId);
  const shape = attrs.keepDims ? x.shape.map((d, i) => (i < k ? 1 : d)) : x.shape.slice(k);
  const out = backend.makeOutput(shape, "float32");
  const src = f32(backend, x);
  const acc = new Float64Array(cols);
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    for (let c = 0; c < cols; c++) acc[c] += src[base + c];
  }
  const dst = f32(backend, out);
  for (let c = 0; c < cols; c++) dst[c] = mean ? acc[c] / rows : acc[c];
  return out;
}

/** Identity without a copy: the output shares the input's heap buffer (tensors are immutable). */
function identityKernel(
  args: { inputs: { x: tf.TensorInfo }; backend: BackendWasm },
): tf.TensorInfo {
  const { inputs: { x }, backend } = args;
  if (x.dtype === "string") return fallback("wasm", "Identity", args);
  backend.incRef(x.dataId);
  return { dataId: x.dataId, shape: [...x.shape], dtype: x.dtype };
}

interface MaxPoolGradArgs {
  inputs: { dy: tf.TensorInfo; input: tf.TensorInfo; output: tf.TensorInfo };
  backend: BackendWasm;
  attrs: {
    filterSize: [number, number] | number;
    strides: [number, number] | number;
    pad: "valid" | "same" | number | tf.backend_util.ExplicitPadding;
    dimRoundingMode?: "floor" | "round" | "ceil";
  };
}

/**
 * MaxPool's input gradient: each output's gradient goes to the first maximum of its window
 * (row-major window order, padding skipped), as tfjs's cpu backend and torch choose. One pass
 * over the windows with channels innermost; wasm's own kernel is ~10× slower.
 */
function maxPoolGradKernel(args: MaxPoolGradArgs): tf.TensorInfo {
  const { inputs: { dy, input }, backend, attrs } = args;
  if (input.dtype !== "float32" || dy.dtype !== "float32") {
    return fallback("wasm", "MaxPoolGrad", args);
  }
  const info = tf.backend_util.computePool2DInfo(
    input.shape as [number, number, number, number],
    attrs.filterSize,
    attrs.strides,
    1,
    attrs.pad,
    attrs.dimRoundingMode,
  );
  const { batchSize: n, inHeight: h, inWidth: w, inChannels: c } = info;
  const { outHeight: oh, outWidth: ow, strideHeight: sh, strideWidth: sw } = info;
  const { filterHeight: fh, filterWidth: fw } = info;
  const { top: pt, left: pl } = info.padInfo;
  backend.dataIdMap.get(dy.dataId);
  backend.dataIdMap.get(input.dataId);
  const out = backend.makeOutput(input.shape, "float32");
  const x = f32(backend, input);
  const g = f32(backend, dy);
  const dx = f32(backend, out);
  dx.fill(0);
  const best = new Float32Array(c);
  const pos = new Int32Array(c);
  for (let b = 0; b < n; b++) {
    for (let i = 0; i < oh; i++) {
      for (let j = 0; j < ow; j++) {
        best.fill(-Infinity);
        pos.fill(-1);
        for (let r = 0; r < fh; r++) {
          const y = i * sh - pt + r;
          if (y < 0 || y >= h) continue;
          for (let s = 0; s < fw; s++) {
            const xc = j * sw - pl + s;
            if (xc < 0 || xc >= w) continue;
            const base = ((b * h + y) * w + xc) * c;
            for (let ch = 0; ch < c; ch++) {
              const v = x[base + ch];
              if (v > best[ch]) {
                best[ch] = v;
                pos[ch] = base + ch;
              }
            }
          }
        }
        const gBase = ((b * oh + i) * ow + j) * c;
        for (let ch = 0; ch < c; ch++) {
          if (pos[ch] >= 0) dx[pos[ch]] += g[gBase + ch];
        }
      }
    }
  }
  return out;
}

/**
 * dW of a stride-1 convolution into `out`. xᵀ is the input zero-padded as the convolution
 * pads it, channel-major [Ci, P] (P = N·Hp·Wp; wasm's own PadV2 and Transpose), and dyG the
 * output gradient laid on the same padded grid (zeros off the output positions). Filter
 * position (kh, kw) reads xᵀ shifted by kh·Wp + kw columns, so `dW[kh, kw] = shift(xᵀ) · dyG`:
 * one product for a 1×1, nine shifted copies of xᵀ (memcpy per channel) for a 3×3, dyG packed
 * once. (Shifting dy instead, to skip those copies, measured slower: dy is re-packed each time.)
 */
function stride1FilterGradient(
  backend: BackendWasm,
  x: tf.TensorInfo,
  dy: tf.TensorInfo,
  conv: tf.backend_util.Conv2DInfo,
  out: tf.TensorInfo,
): void {
  const { batchSize: n, inHeight: h, inWidth: w, inChannels: ci } = conv;
  const { outHeight: oh, outWidth: ow, outChannels: co } = conv;
  const { filterHeight: fh, filterWidth: fw } = conv;
  const { top: pt, left: pl, bottom: pb, right: pr } = conv.padInfo;
  const hp = h + pt + pb;
  const wp = w + pl + pr;
  const cells = n * hp * wp;
  const temps: tf.TensorInfo[] = [];
  try {
    const padded = padInput(backend, x, conv);
    let t: tf.TensorInfo;
    try {
      t = transposeKernel(backend, padded, [1, 0]);
    } finally {
      if (padded.temporary) backend.disposeData(padded.dataId);
    }
    temps.push(t);
    const xT: tf.TensorInfo = { dataId: t.dataId, shape: [1, ci, cells], dtype: "float32" };
    // dy on the padded grid: row (b, i, j) holds dy[b, i, j], zeros elsewhere. One fresh tensor
    // used as the right operand of every product, so XNNPACK packs it once.
    const dyGrid = backend.makeOutput([1, cells, co], "float32");
    temps.push(dyGrid);
    {
      const src = f32(backend, dy);
      const dst = f32(backend, dyGrid);
      if (oh === hp && ow === wp) {
        dst.set(src); // 1×1 without padding: the grids coincide
      } else {
        dst.fill(0);
        for (let b = 0; b < n; b++) {
          for (let i = 0; i < oh; i++) {
            const s = (b * oh + i) * ow * co;
            dst.set(src.subarray(s, s + ow * co), (b * hp + i) * wp * co);
          }
        }
      }
    }
    if (fh * fw === 1) {
      copyProduct(backend, batchMatMul(backend, xT, dyGrid), out, 0);
      return;
    }
    // Filter position (kh, kw) sees xᵀ shifted left by kh·Wp + kw columns. The last columns
    // have no source; dy is zero there, but they must be finite, so they are zeroed.
    for (let kh = 0; kh < fh; kh++) {
      for (let kw = 0; kw < fw; kw++) {
        const shift = kh * wp + kw;
        const patches = backend.makeOutput([1, ci, cells], "float32");
        temps.push(patches);
        const src = f32(backend, xT);
        const dst = f32(backend, patches);
        for (let c = 0; c < ci; c++) {
          const row = c * cells;
          dst.set(src.subarray(row + shift, row + cells), row);
          dst.fill(0, row + cells - shift, row + cells);
        }
        copyProduct(backend, batchMatMul(backend, patches, dyGrid), out, (kh * fw + kw) * ci * co);
        backend.disposeData(temps.pop()!.dataId);
      }
    }
  } finally {
    for (const t of temps) backend.disposeData(t.dataId);
  }
}

/** The heap view of a float32 tensor (re-take it after any allocation: the heap may grow). */
function f32(backend: BackendWasm, t: tf.TensorInfo): Float32Array {
  return backend.typedArrayFromHeap(t) as Float32Array;
}

/** Copies a product into `out` at element `offset`, then frees the product. */
function copyProduct(
  backend: BackendWasm,
  prod: tf.TensorInfo,
  out: tf.TensorInfo,
  offset: number,
): void {
  f32(backend, out).set(f32(backend, prod), offset);
  backend.disposeData(prod.dataId);
}

/**
 * Cache-blocked transpose of a row-major [rows, cols] block of `src` into `dst`, where element
 * (i, j) lands at dst[dstOffset + j·dstStride + i].
 */
function transpose2d(
  src: Float32Array,
  srcOffset: number,
  rows: number,
  cols: number,
  dst: Float32Array,
  dstOffset: number,
  dstStride: number,
): void {
  const B = 16;
  for (let i0 = 0; i0 < rows; i0 += B) {
    const iMax = Math.min(rows, i0 + B);
    for (let j0 = 0; j0 < cols; j0 += B) {
      const jMax = Math.min(cols, j0 + B);
      for (let j = j0; j < jMax; j++) {
        const d = dstOffset + j * dstStride;
        for (let i = i0; i < iMax; i++) dst[d + i] = src[srcOffset + i * cols + j];
      }
    }
  }
}

/** a [1, M, K] · b [1, K, N] with the wasm backend's BatchMatMul kernel. */
function batchMatMul(backend: BackendWasm, a: tf.TensorInfo, b: tf.TensorInfo): tf.TensorInfo {
  const kernel = tf.getKernel("BatchMatMul", "wasm");
  if (kernel == null) throw new Error("wasm backend has no BatchMatMul kernel");
  return kernel.kernelFunc({
    inputs: { a, b },
    backend,
    attrs: { transposeA: false, transposeB: false },
  }) as tf.TensorInfo;
}

function transposeKernel(backend: BackendWasm, x: tf.TensorInfo, perm: number[]): tf.TensorInfo {
  const kernel = tf.getKernel("Transpose", "wasm");
  if (kernel == null) throw new Error("wasm backend has no Transpose kernel");
  return kernel.kernelFunc({ inputs: { x }, backend, attrs: { perm } }) as tf.TensorInfo;
}
