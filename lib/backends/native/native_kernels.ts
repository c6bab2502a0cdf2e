/**
 * The `native` backend's kernels: tfjs's wasm backend with its convolutions run by oneDNN
 * (`onednn.ts`) directly on the wasm heap. Registered for the `wasm` backend name, replacing
 * the kernels there (tfjs's or `wasm_kernels.ts`'s), which stay the fallback for what these do
 * not cover (dilations, NCHW, other dtypes, empty tensors, fused activations other than ReLU).
 * `unregisterNativeKernels()` puts the replaced kernels back (wasm without native, in one process).
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import type { BackendWasm } from "@tensorflow/tfjs-backend-wasm";
import { type ConvShape, offsetPointer, OneDnn } from "./onednn.ts";

/** Kernels this module registers for the wasm backend. */
export const NATIVE_KERNELS = [
  "Conv2D",
  "FusedConv2D",
  "Conv2DBackpropInput",
  "Conv2DBackpropFilter",
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

const KERNELS: Record<string, tf.KernelFunc> = {
  Conv2D: conv2D as unknown as tf.KernelFunc,
  FusedConv2D: fusedConv2D as unknown as tf.KernelFunc,
  Conv2DBackpropInput: conv2DBackpropInput as unknown as tf.KernelFunc,
  Conv2DBackpropFilter: conv2DBackpropFilter as unknown as tf.KernelFunc,
};
