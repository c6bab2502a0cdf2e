/**
 * Training kernels the tfjs wasm backend lacks. tfjs-backend-wasm 4.22 has every kernel a
 * DenseNet training step needs except `Conv2DBackpropFilter` (the weight gradient of a
 * convolution); this module registers one built from the backend's own SIMD matrix multiply.
 *
 * The weight gradient is `dW[kh,kw,ci,co] = Σ_{n,oh,ow} x[n, oh·s+kh−pt, ow·s+kw−pl, ci] ·
 * dy[n,oh,ow,co]`: for each group of G filter positions one product
 * `patchesᵀ[G·Ci, R] · dy[R, Co]`, whose [G·Ci, Co] result is already in filter layout.
 * Shaped by how wasm's BatchMatMul (XNNPACK) performs: its transposed-operand paths are ~10×
 * slower, and it packs (and caches, per tensor id) the right operand — cheap for dy's few
 * channels, so dy is packed once and reused for every filter position.
 * - x is transposed once, in JS, to channel-major and zero-padded: xᵀ[Ci, N·Hp·Wp].
 * - Stride 1 (1×1 and 3×3 in DenseNet): dy is laid on the same padded grid, so the window of
 *   filter position (kh, kw) is xᵀ shifted by kh·Wp + kw: one memcpy per channel, no patch
 *   matrix larger than x (nine shifted products for a 3×3); a 1×1 without padding uses xᵀ as is.
 * - Other strides (the 7×7/2 stem): windows are gathered element-wise, G positions at a time
 *   (im2col in chunks, bounded by a memory budget) so narrow inputs still give wide products.
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import type { BackendWasm } from "@tensorflow/tfjs-backend-wasm";

/** Kernels this module registers for the wasm backend (when tfjs does not provide them). */
export const WASM_TRAINING_KERNELS = ["Conv2DBackpropFilter"] as const;

/** Bytes one patch matrix may take on the wasm heap (the heap is limited to 4 GB). */
const PATCH_BUDGET_BYTES = 128 * 1024 * 1024;
/** Patch rows (G·Ci) worth batching filter positions for; thinner products are slow. */
const MIN_PATCH_ROWS = 64;
/**
 * Registers the missing training kernels for the `wasm` backend. Idempotent; a kernel tfjs
 * already provides is left alone. Returns the names registered by this call.
 */
export function registerWasmTrainingKernels(): string[] {
  const added: string[] = [];
  if (tf.getKernel("Conv2DBackpropFilter", "wasm") == null) {
    tf.registerKernel({
      kernelName: "Conv2DBackpropFilter",
      backendName: "wasm",
      kernelFunc: conv2DBackpropFilterKernel as unknown as tf.KernelFunc,
    });
    added.push("Conv2DBackpropFilter");
  }
  return added;
}

interface Conv2DBackpropFilterArgs {
  inputs: { x: tf.TensorInfo; dy: tf.TensorInfo };
  backend: BackendWasm;
  attrs: {
    strides: [number, number] | number;
    pad: "valid" | "same" | number | tf.backend_util.ExplicitPadding;
    dataFormat: "NHWC" | "NCHW";
    dimRoundingMode?: "floor" | "round" | "ceil";
    filterShape: [number, number, number, number];
  };
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
  const shift = sh === 1 && sw === 1;
  const positions = fh * fw;
  // Columns of the patch matrices: the padded input grid (stride 1) or the output grid.
  const cols = shift ? n * hp * wp : n * oh * ow;
  const maxShift = shift ? (fh - 1) * wp + (fw - 1) : 0;
  const lane = n * hp * wp + maxShift;

  const temps: tf.TensorInfo[] = [];
  try {
    // Right operand: dy on the column grid (zeros off the output positions); a private copy so
    // that BatchMatMul's packed-operand cache is freed with it.
    const dyGrid = backend.makeOutput([1, cols, co], "float32");
    temps.push(dyGrid);
    {
      const src = f32(backend, dy);
      const dst = f32(backend, dyGrid);
      if (!shift || (hp === oh && wp === ow)) {
        dst.set(src);
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
    // xᵀ: [Ci, lane], channel-major, zero padding around each image and after the last.
    const xT = backend.makeOutput([1, ci, lane], "float32");
    temps.push(xT);
    {
      const src = f32(backend, x);
      const dst = f32(backend, xT);
      if (hp !== h || wp !== w || maxShift > 0) dst.fill(0);
      for (let b = 0; b < n; b++) {
        for (let i = 0; i < h; i++) {
          transpose2d(src, (b * h + i) * w * ci, w, ci, dst, (b * hp + i + pt) * wp + pl, lane);
        }
      }
    }
    if (shift && positions === 1 && lane === cols) {
      copyProduct(backend, batchMatMul(backend, xT, dyGrid), out, 0);
      return out;
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
          if (shift) {
            const s = c * lane + kh * wp + kw;
            dst.set(src.subarray(s, s + cols), row);
            continue;
          }
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
