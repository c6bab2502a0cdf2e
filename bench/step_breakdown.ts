/**
 * One profiled run (a training step or an inference batch) broken into parts that add up to its
 * wall time: each oneDNN method's calls (bench/onednn_calls.ts), each tfjs kernel by name less
 * the oneDNN calls and the kernels inside it (`tf.profile`'s kernelTimeMs, wall time on wasm;
 * nesting from bench/kernel_frames.ts), and the remainder (JavaScript between kernels: the
 * gradient tape, tensor bookkeeping, garbage collection). The BatchNorm seam kernels and
 * AdamStep also get the bytes they move and the GB/s they reach.
 * @module
 */

import {
  ADAM_STEP,
  BN_CONCAT_GRAD_KERNEL,
  BN_CONCAT_INFERENCE_KERNEL,
  BN_CONCAT_TRAIN_KERNEL,
  BN_GRAD_KERNEL,
  BN_INFERENCE_KERNEL,
  BN_TRAIN_KERNEL,
} from "../lib/backends/seam.ts";
import type { OneDnnCall, OneDnnMethod } from "./onednn_calls.ts";

/** A kernel as `tf.profile` lists it (the fields read here). */
export interface ProfiledKernel {
  name: string;
  kernelTimeMs: number;
  inputShapes: (number[] | null)[];
  outputShapes: number[][];
}

/** The seam kernels whose bytes are counted (all float32). */
export const MEMORY_KERNELS = [
  BN_TRAIN_KERNEL,
  BN_CONCAT_TRAIN_KERNEL,
  BN_GRAD_KERNEL,
  BN_CONCAT_GRAD_KERNEL,
  BN_INFERENCE_KERNEL,
  BN_CONCAT_INFERENCE_KERNEL,
  ADAM_STEP,
] as const;

const size = (shape: number[] | null) => shape == null ? 0 : shape.reduce((a, b) => a * b, 1);

/**
 * Bytes a seam kernel must move at least: each float32 input read once and each output written
 * once, 4 bytes a value, from the shapes the profile records:
 *     bytes = 4 · (Σ_inputs size + Σ_outputs size)
 * e.g. BatchNormReluTrain on x [M, C]: 4·(M·C + 2C) read (x, γ, β) + 4·(M·C + 2C) written
 * (y, mean, variance); BatchNormReluGrad: 4·(2·M·C + 4C) + 4·(M·C + 2C). One exception:
 * BatchNormReluConcatGrad reads only the first C channels of its addend (input 5, after dy, γ,
 * β, mean, variance; seam.ts's order), counted as size(dy) = M·C.
 */
export function compulsoryBytes(k: ProfiledKernel): number {
  const inputs = k.inputShapes.map(size);
  if (k.name === BN_CONCAT_GRAD_KERNEL) inputs[5] = inputs[0];
  const outputs = k.outputShapes.map(size);
  return 4 * [...inputs, ...outputs].reduce((a, b) => a + b, 0);
}

/**
 * Bytes the native kernels' passes stream (lib/backends/native/batchnorm.ts's SIMD path; the
 * per-channel vectors left out), M·C = size of the first output:
 *   Train, ConcatTrain: the statistics pass reads x, the normalise pass reads x, writes y: 4·3MC;
 *   Grad: the masked-sums pass reads dy and x, the dx pass reads both again, writes dx: 4·5MC;
 *   ConcatGrad: the same, the dx pass also reading the addend's C channels: 4·6MC;
 *   Inference, ConcatInference: one pass, x read and y written: 4·2MC;
 *   AdamStep: one pass, as `compulsoryBytes`.
 */
export function passBytes(k: ProfiledKernel): number {
  const mc = size(k.outputShapes[0]);
  switch (k.name) {
    case BN_TRAIN_KERNEL:
    case BN_CONCAT_TRAIN_KERNEL:
      return 4 * 3 * mc;
    case BN_GRAD_KERNEL:
      return 4 * 5 * mc;
    case BN_CONCAT_GRAD_KERNEL:
      return 4 * 6 * mc;
    case BN_INFERENCE_KERNEL:
    case BN_CONCAT_INFERENCE_KERNEL:
      return 4 * 2 * mc;
    default:
      return compulsoryBytes(k);
  }
}

/** A oneDNN method's calls in one run. */
export interface MethodPart {
  calls: number;
  ms: number;
  flop: number;
  bytes: number;
}

/** A tfjs kernel's calls in one run, by name (and group). */
export interface KernelPart {
  name: string;
  /** The part of the run it belongs to where the caller tells (e.g. `optimizer`), else null. */
  group: string | null;
  calls: number;
  /** Whether it is a registered kernel (else a scope: tf.customGrad's forward). */
  kernel: boolean;
  /** kernelTimeMs summed. */
  totalMs: number;
  /** The oneDNN calls inside those kernels (counted in `methods`). */
  oneDnnMs: number;
  /** The kernels run inside those (counted as parts of their own). */
  nestedMs: number;
  /** totalMs − oneDnnMs − nestedMs: the part of this kernel's time that is its own. */
  selfMs: number;
  /** `compulsoryBytes` and `passBytes` summed (MEMORY_KERNELS only). */
  bytes?: number;
  passBytes?: number;
}

/** A run broken into parts: Σ methods.ms + Σ kernels.selfMs + remainderMs = wallMs. */
export interface Breakdown {
  wallMs: number;
  methods: Partial<Record<OneDnnMethod, MethodPart>>;
  /** By `name`, or `name (group)` for a kernel in a group. */
  kernels: Record<string, KernelPart>;
  remainderMs: number;
}

/**
 * The parts of a run of `wallMs` from its profile (`kernels`, in the order they finished, and
 * `parents`, the index of the kernel each ran inside or null) and the oneDNN calls made
 * meanwhile (each with the kernel it ran in). `registered(name)`: whether `name` is a kernel
 * of the backend (else a scope); `groupOf(index)`: the group of the kernel at that index, or null.
 */
export function breakdown(
  wallMs: number,
  kernels: ProfiledKernel[],
  parents: (number | null)[],
  calls: OneDnnCall[],
  registered: (name: string) => boolean,
  groupOf: (index: number) => string | null = () => null,
): Breakdown {
  const methods: Breakdown["methods"] = {};
  const oneDnn = new Float64Array(kernels.length);
  const nested = new Float64Array(kernels.length);
  for (const c of calls) {
    const m = methods[c.method] ??= { calls: 0, ms: 0, flop: 0, bytes: 0 };
    m.calls++;
    m.ms += c.ms;
    m.flop += c.flop ?? 0;
    m.bytes += c.bytes ?? 0;
    const i = c.kernel?.index ?? -1;
    if (i >= 0 && i < kernels.length) oneDnn[i] += c.ms;
  }
  kernels.forEach((k, i) => {
    const p = parents[i];
    if (p != null) nested[p] += k.kernelTimeMs;
  });
  const byName: Record<string, KernelPart> = {};
  kernels.forEach((k, i) => {
    const group = groupOf(i);
    const kernel = registered(k.name);
    const name = kernel ? k.name : `scope "${k.name}"`;
    const key = group == null ? name : `${name} (${group})`;
    const part = byName[key] ??= {
      name: k.name,
      group,
      kernel,
      calls: 0,
      totalMs: 0,
      oneDnnMs: 0,
      nestedMs: 0,
      selfMs: 0,
    };
    part.calls++;
    part.totalMs += k.kernelTimeMs;
    part.oneDnnMs += oneDnn[i];
    part.nestedMs += nested[i];
    part.selfMs += k.kernelTimeMs - oneDnn[i] - nested[i];
    if ((MEMORY_KERNELS as readonly string[]).includes(k.name)) {
      part.bytes = (part.bytes ?? 0) + compulsoryBytes(k);
      part.passBytes = (part.passBytes ?? 0) + passBytes(k);
    }
  });
  const parts = Object.values(methods).reduce((a, m) => a + m.ms, 0) +
    Object.values(byName).reduce((a, k) => a + k.selfMs, 0);
  return { wallMs, methods, kernels: byName, remainderMs: wallMs - parts };
}

/** The mean of several runs' breakdowns (calls averaged too: equal in every step of a run). */
export function meanBreakdown(runs: Breakdown[]): Breakdown {
  const n = runs.length;
  const methods: Breakdown["methods"] = {};
  const kernels: Record<string, KernelPart> = {};
  for (const r of runs) {
    for (const [name, m] of Object.entries(r.methods) as [OneDnnMethod, MethodPart][]) {
      const t = methods[name] ??= { calls: 0, ms: 0, flop: 0, bytes: 0 };
      t.calls += m.calls / n;
      t.ms += m.ms / n;
      t.flop += m.flop / n;
      t.bytes += m.bytes / n;
    }
    for (const [name, k] of Object.entries(r.kernels)) {
      const t = kernels[name] ??= {
        name: k.name,
        group: k.group,
        kernel: k.kernel,
        calls: 0,
        totalMs: 0,
        oneDnnMs: 0,
        nestedMs: 0,
        selfMs: 0,
      };
      t.calls += k.calls / n;
      t.totalMs += k.totalMs / n;
      t.oneDnnMs += k.oneDnnMs / n;
      t.nestedMs += k.nestedMs / n;
      t.selfMs += k.selfMs / n;
      if (k.bytes != null) t.bytes = (t.bytes ?? 0) + k.bytes / n;
      if (k.passBytes != null) t.passBytes = (t.passBytes ?? 0) + k.passBytes / n;
    }
  }
  const mean = (f: (r: Breakdown) => number) => runs.reduce((a, r) => a + f(r), 0) / n;
  return {
    wallMs: mean((r) => r.wallMs),
    methods,
    kernels,
    remainderMs: mean((r) => r.remainderMs),
  };
}
