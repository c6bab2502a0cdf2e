/**
 * What every native kernel shares: the kernel-function arguments, oneDNN opened once, the
 * replaced wasm kernels as fallbacks, the heap addresses of tensors, and the BatchNorm threads
 * of a wasm module.
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import type { BackendWasm } from "@tensorflow/tfjs-backend-wasm";
import { offsetPointer, OneDnn } from "./onednn.ts";
import { type HeapThreads, heapThreads } from "./row_threads.ts";

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

/** The kernels the native ones replaced, by name: the fallbacks and what unregistering restores. */
export const replacedKernels = new Map<string, tf.KernelConfig>();

/** Runs the wasm kernel `name` that the native one replaced (for what the native one does not take). */
export function fallback(name: string, args: KernelArgs): tf.TensorInfo {
  const config = replacedKernels.get(name);
  if (config == null) throw new Error(`wasm backend has no ${name} kernel to fall back to`);
  return config.kernelFunc(args as unknown as Parameters<tf.KernelFunc>[0]) as tf.TensorInfo;
}

/** The BatchNorm passes split over the wasm backend's thread count, per wasm module. */
const threadsByModule = new WeakMap<object, HeapThreads>();
let heapThreadCount = 1;

/**
 * Threads the BatchNorm passes of `threadsFor` use: the wasm backend's (set when it starts, as
 * oneDNN's are; modules whose passes already started keep theirs).
 */
export function setHeapThreadCount(n: number): void {
  heapThreadCount = Math.max(1, Math.floor(n));
}

export function threadsFor(backend: BackendWasm): HeapThreads {
  const module = backend.wasm as unknown as {
    wasmMemory?: WebAssembly.Memory;
    asm?: { memory?: WebAssembly.Memory };
    wasmExports?: { memory?: WebAssembly.Memory };
    HEAPU8: Uint8Array;
    _malloc: (bytes: number) => number;
  };
  let threads = threadsByModule.get(module);
  if (threads == null) {
    // The threaded build names its heap wasmMemory; the single-threaded one exports it.
    const memory = [module.wasmMemory, module.asm?.memory, module.wasmExports?.memory].find(
      (m) => m instanceof WebAssembly.Memory && m.buffer === module.HEAPU8.buffer,
    ) ?? null;
    threads = heapThreads(memory, heapThreadCount, (bytes) => module._malloc(bytes));
    threadsByModule.set(module, threads);
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
