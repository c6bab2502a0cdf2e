/**
 * This project's WebGPU kernels, registered with tfjs for the `webgpu` backend when it starts.
 * Where one replaces a kernel tfjs-backend-webgpu has, tfjs's is kept: as the fallback for the
 * cases ours does not cover, and to put back for before/after measurements.
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { registerWebgpuAdamStep } from "./adam_step.ts";
import { registerWebgpuBatchNorm } from "./batchnorm.ts";
import { registerWebgpuBatchNormInference } from "./batchnorm_inference.ts";
import { conv2DBackpropFilterGemm } from "./conv_backprop_filter.ts";
import { concatBlocked, splitVContiguous } from "./concat_split.ts";

type Args = { inputs: tf.NamedTensorInfoMap; backend: unknown; attrs?: tf.NamedAttrMap };
/** A kernel that returns null where it does not apply. */
type OwnKernel = (args: Args) => tf.TensorInfo | tf.TensorInfo[] | null;

/** tfjs-backend-webgpu's kernels that ours replace. */
const tfjsKernels = new Map<string, tf.KernelConfig>();

const OWN: Record<string, OwnKernel> = {
  Conv2DBackpropFilter: conv2DBackpropFilterGemm,
  SplitV: splitVContiguous,
  Concat: concatBlocked,
};

/**
 * tfjs-backend-webgpu's flag choosing its naive `Conv2DBackpropInput` (one thread per input
 * gradient, looping over KH·KW·Co with no reuse; its default) over its tiled implicit-GEMM
 * program (`Conv2DDerInputMMProgram`), which we use.
 */
const NAIVE_BACKPROP_INPUT = "WEBGPU_USE_NAIVE_CONV2D_TRANSPOSE";

/** Registers every kernel of lib/backends/webgpu/ (idempotent); returns the names replaced. */
export function registerWebgpuKernels(): string[] {
  tf.env().set(NAIVE_BACKPROP_INPUT, false);
  registerWebgpuAdamStep();
  registerWebgpuBatchNorm();
  registerWebgpuBatchNormInference();
  const replaced: string[] = [];
  for (const [name, own] of Object.entries(OWN)) {
    const current = tf.getKernel(name, "webgpu");
    if (current != null && tfjsKernels.has(name)) continue; // ours already
    if (current != null) {
      tfjsKernels.set(name, current);
      tf.unregisterKernel(name, "webgpu");
    }
    const kernelFunc = (args: Args) => {
      const out = own(args);
      if (out != null) return out;
      const fallback = tfjsKernels.get(name);
      if (fallback == null) throw new Error(`webgpu: no ${name} kernel for these attributes`);
      return fallback.kernelFunc(args as unknown as Parameters<tf.KernelFunc>[0]);
    };
    tf.registerKernel({
      kernelName: name,
      backendName: "webgpu",
      kernelFunc: kernelFunc as unknown as tf.KernelFunc,
    });
    replaced.push(name);
  }
  return replaced;
}

/**
 * Puts tfjs-backend-webgpu's own kernels back in place of the ones replaced (before/after
 * measurements; `AdamStep` and the BatchNorm kernels, which tfjs lacks, stay), and its naive
 * `Conv2DBackpropInput`. Returns the names of the kernels put back.
 */
export function restoreTfjsWebgpuKernels(): string[] {
  const restored = [...tfjsKernels.keys()];
  for (const [name, config] of tfjsKernels) {
    tf.unregisterKernel(name, "webgpu");
    tf.registerKernel(config);
  }
  tfjsKernels.clear();
  tf.env().set(NAIVE_BACKPROP_INPUT, true);
  return restored;
}
