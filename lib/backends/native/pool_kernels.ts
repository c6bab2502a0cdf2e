/**
 * The native pooling gradients: MaxPoolGrad and (unpadded) AvgPoolGrad as one oneDNN pooling
 * backward each.
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import type { PoolShape } from "./onednn.ts";
import { fallback, heapPointer, type KernelArgs, openOneDnn } from "./kernel_support.ts";

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

/** The kernels of this module, by name. */
export const POOL_KERNELS: Record<string, tf.KernelFunc> = {
  MaxPoolGrad: poolGrad("max") as unknown as tf.KernelFunc,
  AvgPoolGrad: poolGrad("avg") as unknown as tf.KernelFunc,
};
