/**
 * Starting tfjs's webgpu backend (with this project's kernels) on whatever adapter the machine
 * has, Mesa's lavapipe in CI; and counting what a piece of work costs on it.
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { initBackend } from "../../lib/backends/backend.ts";

const adapter = await navigator.gpu?.requestAdapter().catch(() => null);

/** Why WebGPU tests are skipped here, or null when an adapter exists. */
export const NO_WEBGPU = adapter ? null : "no WebGPU adapter (install mesa-vulkan-drivers)";

/** Makes webgpu the active backend (started once per process). */
export async function useWebgpu(): Promise<void> {
  if (tf.findBackend("webgpu") != null) await tf.setBackend("webgpu");
  else await initBackend("webgpu");
}

/** Kernels (tf.profile) and GPU dispatches (webgpu) that `f` runs. */
export async function countKernels(
  f: () => unknown,
): Promise<{ kernels: number; dispatches: number; names: string[] }> {
  const backend = tf.backend() as unknown as { recordAndSubmit?: (...a: unknown[]) => unknown };
  const record = backend.recordAndSubmit;
  let dispatches = 0;
  if (tf.getBackend() === "webgpu" && record) {
    backend.recordAndSubmit = (...a: unknown[]) => {
      dispatches++;
      return record.apply(backend, a);
    };
  }
  const check = tf.env().getBool("CHECK_COMPUTATION_FOR_ERRORS");
  tf.env().set("CHECK_COMPUTATION_FOR_ERRORS", false);
  try {
    const profile = await tf.profile(async () => {
      await f();
    });
    return { kernels: profile.kernels.length, dispatches, names: profile.kernelNames };
  } finally {
    if (tf.getBackend() === "webgpu") delete backend.recordAndSubmit;
    tf.env().set("CHECK_COMPUTATION_FOR_ERRORS", check);
  }
}

/**
 * GPU buffers tfjs's webgpu buffer manager holds, after submitting the pending commands (tfjs
 * frees the buffers of tensors disposed while commands using them were pending only then).
 */
export function usedGpuBuffers(): number {
  const backend = tf.backend() as unknown as {
    commandEncoder: unknown;
    endComputePassEncoder(): void;
    submitQueue(): void;
    bufferManager: { numUsedBuffers: number };
  };
  if (backend.commandEncoder != null) {
    backend.endComputePassEncoder(); // as tfjs does before every submit
    backend.submitQueue();
  }
  return backend.bufferManager.numUsedBuffers;
}
