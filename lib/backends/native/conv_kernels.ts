/**
 * The native convolutions: Conv2D, FusedConv2D (bias, ReLU), and both gradients by oneDNN on the
 * wasm heap, NHWC float32, dilation 1; the rest falls back to the wasm kernels.
 *
 * Precision (`setConvPrecision`, chosen once when the backend starts): `f32`, or `bf16`, where
 * each convolution but the stem (`BF16_MIN_CHANNELS`) reads its activations (forward: x;
 * backward-data: dy; backward-weights: x and dy) and its weights rounded to bfloat16,
 * accumulates in float32 and writes float32, as PyTorch's autocast does for a convolution
 * (which then also rounds what it writes; we do not). The tensors themselves stay float32: the rounded copies live in buffers of this module
 * outside the wasm heap, and a backward pass's dy, read by both gradients, is rounded once.
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import type { ConvPrecision, ConvShape } from "./onednn.ts";
import { fallback, heapPointer, type KernelArgs, openOneDnn } from "./kernel_support.ts";

let precision: ConvPrecision = "f32";

/**
 * A bfloat16 buffer whose address stays put: V8 keeps typed arrays of up to 64 bytes inside its
 * moving heap, so never one that small.
 */
const offHeap = (size: number) => new Uint16Array(Math.max(size, 1024));

/** The arithmetic of every native convolution from now on (see the module's comment). */
export function setConvPrecision(p: ConvPrecision): void {
  precision = p;
  if (p === "f32") bf16Copies.release();
}

/**
 * Input channels below which a convolution stays float32 at `bf16`: the stem's 7×7 over the
 * image (3 channels, ~4 % of DenseNet-121's multiply-adds). Rounding the normalised pixels
 * perturbs every layer after it: on the 50 NIH images with seed_model.pt, bf16 moved the
 * predictions by up to 9.3e-3 with the stem in bf16 and 5.8e-3 without, flipped the order of 10
 * against 6 positive/negative pairs, and moved the mean AUROC by 0.0027 against 0.0013; the step
 * took as long within the noise.
 */
const BF16_MIN_CHANNELS = 16;

/** The precision of one convolution (see BF16_MIN_CHANNELS). */
function precisionOf(s: ConvShape): ConvPrecision {
  return precision === "bf16" && s.ci >= BF16_MIN_CHANNELS ? "bf16" : "f32";
}

/** The precision the native convolutions run at. */
export function convPrecision(): ConvPrecision {
  return precision;
}

/**
 * The bfloat16 copies a bf16 convolution reads: `x` (its source) and `dy` (an output gradient).
 * The last dy's copy is kept with its tensor's data id: tfjs computes a convolution's two
 * gradients from one dy back to back, and a tensor's data never changes while its id lives
 * (the copy holds the id, so a disposed tensor's id is never reused for another's data).
 */
const bf16Copies = new class {
  #x = new Uint16Array(0);
  #dy = new Uint16Array(0);
  #dyId: object | null = null;

  /** x rounded to bfloat16, valid until the next call. */
  x(backend: KernelArgs["backend"], t: tf.TensorInfo): Deno.PointerValue {
    const size = tf.util.sizeFromShape(t.shape);
    if (this.#x.length < size) this.#x = offHeap(size);
    openOneDnn().convertBf16(size, heapPointer(backend, t), Deno.UnsafePointer.of(this.#x));
    return Deno.UnsafePointer.of(this.#x);
  }

  /** dy rounded to bfloat16, valid until the next call with another dy. */
  dy(backend: KernelArgs["backend"], t: tf.TensorInfo): Deno.PointerValue {
    if (this.#dyId !== t.dataId) {
      const size = tf.util.sizeFromShape(t.shape);
      if (this.#dy.length < size) this.#dy = offHeap(size);
      openOneDnn().convertBf16(size, heapPointer(backend, t), Deno.UnsafePointer.of(this.#dy));
      this.#dyId = t.dataId;
    }
    return Deno.UnsafePointer.of(this.#dy);
  }

  /** Frees the copies (float32 from now on). */
  release(): void {
    this.#x = new Uint16Array(0);
    this.#dy = new Uint16Array(0);
    this.#dyId = null;
  }
}();

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
  const at = precisionOf(s);
  const src = at === "bf16" ? bf16Copies.x(backend, x!) : p(x!);
  openOneDnn().convForward(
    s,
    { bias, relu },
    src,
    p(filter!),
    bias ? p(b!) : null,
    p(out),
    false,
    at,
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
  const at = precisionOf(s);
  const diffDst = at === "bf16" ? bf16Copies.dy(backend, dy!) : p(dy!);
  openOneDnn().convBackwardData(s, diffDst, p(filter!), p(out), at);
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
  const at = precisionOf(s);
  const [src, diffDst] = at === "bf16"
    ? [bf16Copies.x(backend, x!), bf16Copies.dy(backend, dy!)]
    : [p(x!), p(dy!)];
  openOneDnn().convBackwardWeights(s, src, diffDst, p(out), at);
  return out;
}

/** The kernels of this module, by name. */
export const CONV_KERNELS: Record<string, tf.KernelFunc> = {
  Conv2D: conv2D as unknown as tf.KernelFunc,
  FusedConv2D: fusedConv2D as unknown as tf.KernelFunc,
  Conv2DBackpropInput: conv2DBackpropInput as unknown as tf.KernelFunc,
  Conv2DBackpropFilter: conv2DBackpropFilter as unknown as tf.KernelFunc,
};
