/**
 * This project's WebGPU kernels, registered with tfjs for the `webgpu` backend when it starts.
 * @module
 */
import { registerWebgpuAdamStep } from "./adam_step.ts";

/** Registers every kernel of lib/backends/webgpu/ (idempotent). */
export function registerWebgpuKernels(): void {
  registerWebgpuAdamStep();
}
