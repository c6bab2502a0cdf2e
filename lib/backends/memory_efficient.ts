/**
 * What `--memory_efficient auto` means on the running backend. Recomputing the dense layers'
 * bottlenecks in the backward pass buys memory at the price of extra forward work: worth it on
 * the 4 GB wasm heap and the cpu backend, not on libtensorflow (which has its own allocator), and
 * on WebGPU only when the adapter cannot hold the plain path at the requested batch.
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import type { WebGPUBackendInternals } from "./webgpu/program.ts";

/**
 * Tensor bytes a training step may use on a backend whose tensors live in the 4 GiB wasm heap
 * (`wasm`, and `native`, which computes on that heap): the address space less what tfjs, XNNPACK
 * and the allocator keep. Null for backends without such a hard limit.
 */
export function heapBudgetBytes(backendName: string): number | null {
  return backendName === "wasm" || backendName === "native" ? 3.6 * 2 ** 30 : null;
}

/** Headroom over the estimate (weights, Adam's moments, the allocator's pooling). */
const HEADROOM = 1.25;

/** The decision of `--memory_efficient`, and for `auto` why. */
export interface MemoryEfficientChoice {
  on: boolean;
  /** For `auto`: one line saying which and why. */
  note?: string;
}

/** A training step without `--memory_efficient`: its estimated bytes (model/training_memory.ts). */
export interface PlainStep {
  bytes: number;
  batch: number;
  imageSize: number;
}

/**
 * Resolves `--memory_efficient` (`on`, `off` or `auto`) for the active backend `backendName`
 * and the step `plain` would take without it. On webgpu, `auto` probes the adapter: it
 * allocates those bytes (with headroom) in buffers of at most the adapter's `maxBufferSize`
 * inside an out-of-memory error scope and frees them at once; off when that succeeds. A
 * software (fallback) adapter keeps it on: its memory is the host's.
 */
export async function resolveMemoryEfficient(
  flag: string,
  backendName: string,
  plain: PlainStep,
): Promise<MemoryEfficientChoice> {
  if (flag === "on" || flag === "off") return { on: flag === "on" };
  const auto = (on: boolean, why: string) => ({
    on,
    note: `--memory_efficient auto: ${on ? "on" : "off"} (${why})`,
  });
  if (backendName === "tensorflow") return auto(false, "libtensorflow manages its own memory");
  if (backendName === "wasm") return auto(true, "the wasm heap is limited to 4 GB");
  if (backendName !== "webgpu") return auto(true, `${backendName} backend`);
  const need = plain.bytes * HEADROOM;
  const gb = (b: number) => `${(b / 2 ** 30).toFixed(1)} GB`;
  const what = `the plain path at batch ${plain.batch}, ${plain.imageSize}², needs ~` +
    gb(need / HEADROOM);
  const adapter = await navigator.gpu?.requestAdapter({ powerPreference: "high-performance" })
    .catch(() => null);
  const info = (adapter as GPUAdapter & { info?: { isFallbackAdapter?: boolean } } | null)?.info;
  if (info?.isFallbackAdapter === true) {
    return auto(true, "software adapter: its memory is the host's");
  }
  const device = (tf.backend() as unknown as WebGPUBackendInternals).device;
  const fits = await probeAllocation(device, need);
  return auto(
    !fits,
    `${what}; ${fits ? "a probe allocation of" : "the adapter could not allocate"} ${gb(need)}` +
      (fits ? " succeeded" : ""),
  );
}

/** True when `device` can allocate `bytes` of storage buffers at once (freed before returning). */
export async function probeAllocation(device: GPUDevice, bytes: number): Promise<boolean> {
  const chunk = Math.min(device.limits.maxBufferSize, 2 ** 30);
  const buffers: GPUBuffer[] = [];
  device.pushErrorScope("out-of-memory");
  device.pushErrorScope("validation");
  try {
    for (let left = bytes; left > 0; left -= chunk) {
      const size = Math.ceil(Math.min(chunk, left) / 4) * 4;
      buffers.push(device.createBuffer({ size, usage: GPUBufferUsage.STORAGE }));
    }
  } catch {
    buffers.forEach((b) => b.destroy());
    await device.popErrorScope();
    await device.popErrorScope();
    return false;
  }
  const invalid = await device.popErrorScope();
  const oom = await device.popErrorScope();
  buffers.forEach((b) => b.destroy());
  return invalid == null && oom == null;
}
