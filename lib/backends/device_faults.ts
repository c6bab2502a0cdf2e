/**
 * GPU faults made loud. tfjs-backend-webgpu never looks at WebGPU's error reports: a device
 * that is lost (driver reset, GPU hang, the machine sleeping) makes the next GPU call fail with
 * a bare "validation error occurred" or "Buffer with '' label is invalid", and an error WebGPU
 * reports asynchronously (an allocation or a binding over the adapter's limits) leaves the
 * dispatch undone and its output garbage, with no exception at all.
 *
 * `watchDeviceFaults` records a device's loss and its first uncaptured error, and registers an
 * error explainer (lib/util/errors.ts) that turns any error raised after a fault into a
 * `GpuFault` naming it; `readValues` reads a tensor and fails the same way when a fault was
 * reported meanwhile, so that no result computed after one is used. Off WebGPU it is
 * `tensor.data()`.
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { addErrorExplainer } from "../util/errors.ts";

/** The first fault seen on each watched device, as one line. */
const faults = new WeakMap<GPUDevice, string>();
const watched = new WeakSet<GPUDevice>();

/** How long an error may precede the device-loss report that explains it. */
const LOSS_REPORT_MS = 250;

/** What a fault's message adds: what to try. */
const ADVICE = "try a smaller --batch or --memory_efficient on; a training run continues from " +
  "its last finished epoch with --resume last";

/** A GPU fault: the device was lost or reported an error, so results are not to be trusted. */
export class GpuFault extends Error {
  constructor(fault: string, cause?: unknown) {
    super(`${fault}; results since are invalid: ${ADVICE}`, { cause });
    this.name = "GpuFault";
  }
}

/** Records `device`'s loss and its first uncaptured error (idempotent). */
export function watchDeviceFaults(device: GPUDevice): void {
  if (watched.has(device)) return;
  watched.add(device);
  const record = (line: string) => {
    if (!faults.has(device)) faults.set(device, line);
  };
  device.addEventListener("uncapturederror", (event) => {
    const error = (event as GPUUncapturedErrorEvent).error;
    const kind = error instanceof GPUOutOfMemoryError ? "out of GPU memory" : "WebGPU error";
    record(`${kind}: ${oneLine(error.message)}`);
  });
  device.lost.then((info) => {
    record(`the WebGPU device was lost (${info.reason ?? "unknown"}: ${oneLine(info.message)})`);
  });
  addErrorExplainer(explainGpuError);
}

/** The active webgpu backend's device, if watched. */
function activeDevice(): GPUDevice | null {
  if (tf.getBackend() !== "webgpu") return null;
  const device = (tf.backend() as unknown as { device?: GPUDevice }).device;
  return device != null && watched.has(device) ? device : null;
}

/** The fault recorded on the active webgpu backend's device, or null. */
export function deviceFault(): string | null {
  const device = activeDevice();
  return device == null ? null : faults.get(device) ?? null;
}

/** Throws a `GpuFault` when the active device has had one. */
export function throwIfDeviceFault(cause?: unknown): void {
  const fault = deviceFault();
  if (fault != null) throw new GpuFault(fault, cause);
}

/**
 * The explainer: `err` raised on a faulted device becomes a `GpuFault`. A lost device fails
 * calls at once but reports its loss a moment later, so that report is waited for briefly.
 */
async function explainGpuError(err: Error): Promise<Error | null> {
  if (err instanceof GpuFault) return null;
  const device = activeDevice();
  if (device == null) return null;
  if (!faults.has(device)) {
    await Promise.race([
      device.lost,
      new Promise((resolve) => setTimeout(resolve, LOSS_REPORT_MS)),
    ]);
    await Promise.resolve(); // let the loss handler record it
  }
  const fault = faults.get(device);
  return fault == null ? null : new GpuFault(fault, err);
}

/**
 * `t.data()`, failing with a `GpuFault` when the GPU reported a fault before the values
 * arrived: they may come from dispatches that never ran.
 */
export async function readValues(t: tf.Tensor): Promise<tf.TypedArray> {
  const values = await t.data() as tf.TypedArray;
  throwIfDeviceFault();
  return values;
}

function oneLine(text: string): string {
  const line = text.replace(/\s+/g, " ").trim();
  return line.length > 300 ? `${line.slice(0, 300)}…` : line || "no message";
}
