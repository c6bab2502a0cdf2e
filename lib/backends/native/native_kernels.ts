/**
 * The `native` backend's kernels: tfjs's wasm backend with its convolutions (`conv_kernels.ts`),
 * BatchNorm passes (`batchnorm.ts`), tensor copies and Add (`copy_kernels.ts`) and pooling
 * gradients (`pool_kernels.ts`) run on the wasm heap by oneDNN (`onednn.ts`) and WebAssembly
 * SIMD threads (`row_threads.ts`). Registered for the `wasm` backend name, replacing the kernels
 * there (tfjs's or `wasm_kernels.ts`'s), which stay the fallback for what these do not cover
 * (dilations, NCHW, other dtypes, empty tensors, fused activations other than ReLU).
 * Uninstalling the table puts the replaced kernels back (wasm without native, in one process).
 * @module
 */

import { openOneDnn } from "./kernel_support.ts";
import { CONV_KERNELS } from "./conv_kernels.ts";
import { batchNormKernels } from "./batchnorm.ts";
import { COPY_KERNELS } from "./copy_kernels.ts";
import { POOL_KERNELS } from "./pool_kernels.ts";
import type { KernelTable } from "../kernel_registry.ts";

export { openOneDnn } from "./kernel_support.ts";
export { convPrecision, setConvPrecision } from "./conv_kernels.ts";

let table: KernelTable | null = null;

/**
 * The `native` backend's kernel table, on top of the `wasm` one (both for tfjs's `wasm`
 * backend). Its BatchNorm inference kernels normalise with `normaliseAffine`'s map, as its
 * training kernels do: given their batch statistics, they reproduce the training y bit for bit.
 */
export function nativeKernelTable(): KernelTable {
  return table ??= {
    name: "native",
    backendName: "wasm",
    kernels: { ...CONV_KERNELS, ...batchNormKernels(), ...COPY_KERNELS, ...POOL_KERNELS },
    exactRecompute: true,
    setup: () => void openOneDnn(),
  };
}
