/**
 * The one routine that puts a kernel table on a tfjs backend, and the one fallback convention.
 *
 * A kernel table (`KernelTable`) is what a backend of this project adds to tfjs: kernels by name,
 * for one tfjs backend name. Tables stack: `native` goes on top of `wasm` (both register for
 * tfjs's `wasm` backend). Installing a table remembers, for each of its kernels, the kernel it
 * replaced (tfjs's own, or the table below's); a kernel of ours that does not take some input
 * (another dtype, layout, attribute) calls `fallback(table.name, kernelName, args)` and that replaced kernel
 * runs. Uninstalling puts the replaced kernels back, so one process can go from `native` to
 * plain `wasm`, or measure before/after.
 *
 * Nothing registers at import: a backend's tables are installed when it starts
 * (kernel_tables.ts `installBackendKernels`).
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";

/** A kernel of ours: tfjs's kernel-function arguments, any backend. */
// deno-lint-ignore no-explicit-any
export type OwnKernel = (args: any) => tf.TensorInfo | tf.TensorInfo[];

/** What one backend of this project adds to a tfjs backend. */
export interface KernelTable {
  /** Our name for it (`cpu`, `wasm`, `native`, `webgpu`). */
  name: string;
  /** The tfjs backend its kernels register for. */
  backendName: string;
  /** Kernels by tfjs kernel name (seam ops by their seam.ts names). */
  kernels: Readonly<Record<string, OwnKernel>>;
  /**
   * True when its `BatchNormReluInference` / `BatchNormReluConcatInference`, given a training
   * kernel's batch statistics, reproduce that kernel's y bit for bit (so a memory-efficient
   * backward may recompute y with one normalising pass). Read by the seam.
   */
  exactRecompute?: boolean;
  /** Run before its kernels are registered (e.g. a tfjs flag the table relies on). */
  setup?: () => void;
  /** Run after its kernels are unregistered (undo `setup`). */
  teardown?: () => void;
}

/** For each installed table, by its name, the kernels its own replaced (null: tfjs had none). */
const replaced = new Map<string, Map<string, tf.KernelConfig | null>>();
/** Installed tables by tfjs backend name, bottom first. */
const stacks = new Map<string, KernelTable[]>();
let changes = 0;
/** Per backend instance, the replaced kernels whose setupFunc has run. */
const setUp = new WeakMap<object, Set<tf.KernelConfig>>();

/**
 * Registers every kernel of `table` for its backend (idempotent), keeping what each replaced as
 * its fallback. Returns the names of the tfjs kernels it replaced.
 */
export function installKernelTable(table: KernelTable): string[] {
  if (replaced.has(table.name)) return [];
  table.setup?.();
  const previous = new Map<string, tf.KernelConfig | null>();
  for (const [kernelName, kernelFunc] of Object.entries(table.kernels)) {
    const current = tf.getKernel(kernelName, table.backendName) ?? null;
    previous.set(kernelName, current);
    if (current != null) tf.unregisterKernel(kernelName, table.backendName);
    tf.registerKernel({
      kernelName,
      backendName: table.backendName,
      kernelFunc: kernelFunc as unknown as tf.KernelFunc,
    });
  }
  replaced.set(table.name, previous);
  const stack = stacks.get(table.backendName) ?? [];
  stacks.set(table.backendName, [...stack, table]);
  changes++;
  return [...previous].filter(([, config]) => config != null).map(([name]) => name);
}

/**
 * Unregisters `table`'s kernels and puts back what they replaced (tables above it are
 * uninstalled first). Returns the names of the kernels put back.
 */
export function uninstallKernelTable(table: KernelTable): string[] {
  const previous = replaced.get(table.name);
  if (previous == null) return [];
  const stack = stacks.get(table.backendName) ?? [];
  for (const above of stack.slice(stack.indexOf(table) + 1).reverse()) uninstallKernelTable(above);
  const restored: string[] = [];
  for (const [kernelName, config] of previous) {
    tf.unregisterKernel(kernelName, table.backendName);
    if (config != null) {
      tf.registerKernel(config);
      restored.push(kernelName);
    }
  }
  replaced.delete(table.name);
  stacks.set(table.backendName, stack.filter((t) => t !== table));
  table.teardown?.();
  changes++;
  return restored;
}

/** True while `table` is installed. */
export function tableInstalled(table: KernelTable): boolean {
  return replaced.has(table.name);
}

/** The tables installed on tfjs backend `backendName`, bottom first. */
export function installedTables(backendName: string): readonly KernelTable[] {
  return stacks.get(backendName) ?? [];
}

/** Counts installs and uninstalls: what the seam compares to know its choice is current. */
export function registryGeneration(): number {
  return changes;
}

/**
 * Runs the kernel that table `tableName`'s `kernelName` replaced: what a kernel of ours does for
 * inputs it does not take. Throws when there is none (tfjs had no such kernel).
 */
export function fallback<T extends tf.TensorInfo | tf.TensorInfo[] = tf.TensorInfo>(
  tableName: string,
  kernelName: string,
  // deno-lint-ignore no-explicit-any
  args: any,
): T {
  // A table that is not installed has replaced nothing: its kernel was called by another table
  // (plain wasm runs the native BatchNorm passes), whose registered kernel then answers.
  const config = replaced.has(tableName)
    ? replaced.get(tableName)!.get(kernelName)
    : tf.getKernel(kernelName, tf.getBackend());
  if (config == null) throw new Error(`${tableName}: no ${kernelName} kernel to fall back to`);
  if (config.setupFunc != null && args.backend != null) {
    // tfjs runs a kernel's setupFunc (e.g. binding a wasm export) when the backend starts, for
    // the kernels registered then: not for one that was already replaced by ours.
    let done = setUp.get(args.backend);
    if (done == null) setUp.set(args.backend, done = new Set());
    if (!done.has(config)) {
      config.setupFunc(args.backend);
      done.add(config);
    }
  }
  return config.kernelFunc(args) as T;
}
