/**
 * Which kernel tables each backend of this project installs, bottom first: the one place a
 * backend's kernels are chosen. `initBackend` calls `installBackendKernels` when the backend has
 * started (and the seam, for a tfjs backend a test set directly).
 * @module
 */
import { cpuKernelTable } from "./batchnorm_kernels.ts";
import { installKernelTable, type KernelTable, uninstallKernelTable } from "./kernel_registry.ts";
import { nativeKernelTable } from "./native/native_kernels.ts";
import { wasmKernelTable } from "./wasm_kernels.ts";
import { webgpuKernelTable } from "./webgpu/kernels.ts";

/** The tables of each backend (by this project's backend names), bottom first. */
export function backendTables(name: string): KernelTable[] {
  switch (name) {
    case "cpu":
      return [cpuKernelTable()];
    case "wasm":
      return [wasmKernelTable()];
    case "native":
      return [wasmKernelTable(), nativeKernelTable()];
    case "webgpu":
      return [webgpuKernelTable()];
    default:
      return []; // e.g. tensorflow: every seam op runs its reference
  }
}

/** tfjs backends whose kernels `installBackendKernels` has chosen (a table list may be empty). */
const prepared = new Set<string>();

/**
 * Installs backend `name`'s tables and uninstalls any other table on the same tfjs backend
 * (plain `wasm` after `native` in one process). Returns the tfjs kernels replaced.
 */
export function installBackendKernels(name: string): string[] {
  const wanted = backendTables(name);
  if (name === "wasm") uninstallKernelTable(nativeKernelTable());
  prepared.add(name === "native" ? "wasm" : name);
  return wanted.flatMap(installKernelTable);
}

/** True once `installBackendKernels` ran for tfjs backend `backendName` (its choice stands). */
export function kernelsChosen(backendName: string): boolean {
  return prepared.has(backendName);
}
