/**
 * The `native` backend's kernels: tfjs's wasm backend with its convolutions (`conv_kernels.ts`),
 * BatchNorm passes (`batchnorm.ts`), tensor copies and Add (`copy_kernels.ts`) and pooling
 * gradients (`pool_kernels.ts`) run on the wasm heap by oneDNN (`onednn.ts`) and WebAssembly
 * SIMD threads (`row_threads.ts`). Registered for the `wasm` backend name, replacing the kernels
 * there (tfjs's or `wasm_kernels.ts`'s), which stay the fallback for what these do not cover
 * (dilations, NCHW, other dtypes, empty tensors, fused activations other than ReLU).
 * `unregisterNativeKernels()` puts the replaced kernels back (wasm without native, in one process).
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import { openOneDnn, replacedKernels } from "./kernel_support.ts";
import { CONV_KERNELS } from "./conv_kernels.ts";
import { BATCHNORM_KERNELS } from "./batchnorm.ts";
import { COPY_KERNELS } from "./copy_kernels.ts";
import { POOL_KERNELS } from "./pool_kernels.ts";

export { openOneDnn } from "./kernel_support.ts";

const KERNELS: Record<string, tf.KernelFunc> = {
  ...CONV_KERNELS,
  ...BATCHNORM_KERNELS,
  ...COPY_KERNELS,
  ...POOL_KERNELS,
};

/** Kernels this module registers for the wasm backend. */
export const NATIVE_KERNELS: readonly string[] = Object.keys(KERNELS);

/** Registers the native kernels for `wasm` (after the wasm backend and its kernels started). */
export function registerNativeKernels(): void {
  openOneDnn();
  for (const [kernelName, kernelFunc] of Object.entries(KERNELS)) {
    const current = tf.getKernel(kernelName, "wasm");
    if (current?.kernelFunc === kernelFunc) continue;
    if (current != null) {
      replacedKernels.set(kernelName, current);
      tf.unregisterKernel(kernelName, "wasm");
    }
    tf.registerKernel({ kernelName, backendName: "wasm", kernelFunc });
  }
}

/** Puts back the kernels `registerNativeKernels` replaced. */
export function unregisterNativeKernels(): void {
  for (const kernelName of Object.keys(KERNELS)) {
    const prev = replacedKernels.get(kernelName);
    if (tf.getKernel(kernelName, "wasm")?.kernelFunc !== KERNELS[kernelName]) continue;
    tf.unregisterKernel(kernelName, "wasm");
    if (prev != null) tf.registerKernel(prev);
  }
  replacedKernels.clear();
}

/** True while the native kernels are the registered wasm kernels. */
export function nativeKernelsActive(): boolean {
  return tf.getKernel("Conv2D", "wasm")?.kernelFunc === KERNELS.Conv2D;
}
