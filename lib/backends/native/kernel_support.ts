/**
 * What every native kernel shares: the kernel-function arguments, oneDNN opened once, the
 * replaced wasm kernels as fallbacks (kernel_registry.ts), the heap addresses of tensors, and
 * the BatchNorm threads of a wasm module.
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import type { BackendWasm } from "@tensorflow/tfjs-backend-wasm";
import { offsetPointer, OneDnn } from "./onednn.ts";
import { type HeapThreads, heapThreads } from "./row_threads.ts";
import { fallback as registryFallback } from "../kernel_registry.ts";

/** A kernel function's arguments, with the wasm backend. */
export interface KernelArgs {
  inputs: Record<string, tf.TensorInfo | undefined>;
  backend: BackendWasm;
  attrs: Record<string, unknown>;
}

let dnn: OneDnn | null = null;

/** Opens oneDNN once (throws, saying why, when the library is missing or unsupported). */
export function openOneDnn(): OneDnn {
  dnn ??= OneDnn.open();
  return dnn;
}

/** oneDNN if it has been opened in this process (the native backend started), else null. */
export function openedOneDnn(): OneDnn | null {
  return dnn;
}

/** Runs the wasm kernel `name` that the native one replaced (for what the native one does not take). */
export function fallback(name: string, args: KernelArgs): tf.TensorInfo {
  return registryFallback("native", name, args);
}

/** The BatchNorm passes split over the wasm backend's thread count, per wasm module and arithmetic. */
const threadsByModule = new WeakMap<object, Map<boolean, HeapThreads>>();
let heapThreadCount = 1;
let wideArithmetic = false;

/**
 * How the BatchNorm passes of `threadsFor` run: on `threads` threads (the wasm backend's, set
 * when it starts; modules whose passes already started keep their count), and with `wide`
 * the float64 normalising arithmetic (the plain wasm backend: its XNNPACK convolutions leave
 * less accuracy to spare than oneDNN's) or the float32 fused one (native).
 */
export function setHeapPasses(threads: number, wide: boolean): void {
  heapThreadCount = Math.max(1, Math.floor(threads));
  wideArithmetic = wide;
}

export function threadsFor(backend: BackendWasm): HeapThreads {
  const module = backend.wasm as unknown as {
    wasmMemory?: WebAssembly.Memory;
    asm?: { memory?: WebAssembly.Memory };
    wasmExports?: { memory?: WebAssembly.Memory };
    HEAPU8: Uint8Array;
    _malloc: (bytes: number) => number;
  };
  let byVariant = threadsByModule.get(module);
  if (byVariant == null) threadsByModule.set(module, byVariant = new Map());
  let threads = byVariant.get(wideArithmetic);
  if (threads == null) {
    // The threaded build names its heap wasmMemory; the single-threaded one exports it.
    const memory = [module.wasmMemory, module.asm?.memory, module.wasmExports?.memory].find(
      (m) => m instanceof WebAssembly.Memory && m.buffer === module.HEAPU8.buffer,
    ) ?? null;
    const malloc = (bytes: number) => module._malloc(bytes);
    threads = heapThreads(memory, heapThreadCount, malloc, wideArithmetic);
    byVariant.set(wideArithmetic, threads);
  }
  return threads;
}

/** Byte offset of a tensor's data in the wasm heap. */
export function heapOffset(backend: BackendWasm, t: tf.TensorInfo): number {
  return backend.dataIdMap.get(t.dataId)!.memoryOffset;
}

/** Heap address of a tensor's data (after every allocation of the call: the heap may grow). */
export function heapPointer(backend: BackendWasm, t: tf.TensorInfo): Deno.PointerValue {
  const { memoryOffset } = backend.dataIdMap.get(t.dataId)!;
  const heap = (backend.wasm as unknown as { HEAPU8: Uint8Array }).HEAPU8;
  return offsetPointer(Deno.UnsafePointer.of(heap), memoryOffset);
}
