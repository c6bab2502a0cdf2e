/**
 * Times every call into oneDNN (lib/backends/native/onednn.ts) while a profile runs, by
 * wrapping the methods of the `OneDnn` instance the native kernels use, and restoring them
 * after: which method, how long (wall), inside which tfjs kernel, and for the convolutions
 * their FLOPs, for the memory passes the bytes they move. bench/step_profile.ts reads it.
 * @module
 */

import type {
  ConvFusion,
  ConvPrecision,
  ConvShape,
  OneDnn,
} from "../lib/backends/native/onednn.ts";

/** The OneDnn methods a training step or an inference batch calls. */
export const ONEDNN_METHODS = [
  "convForward",
  "convBackwardData",
  "convBackwardWeights",
  "convertBf16",
  "copyRows",
  "add",
  "bnApply",
  "reluBackward",
  "scaleAccumulate",
  "poolBackward",
] as const;
export type OneDnnMethod = typeof ONEDNN_METHODS[number];

/** One call into oneDNN. */
export interface OneDnnCall {
  method: OneDnnMethod;
  ms: number;
  /**
   * The tfjs kernel it ran in (its `index` in the profile's kernel list, known once that kernel
   * finishes: bench/kernel_frames.ts), null outside kernels.
   */
  kernel: { readonly index: number } | null;
  /** Floating-point operations (convolutions: 2·N·OH·OW·CO·CI·FH·FW). */
  flop?: number;
  /** Bytes read + written, where the call is a pass over memory (see `callBytes`). */
  bytes?: number;
  /** A convolution's arguments, to run it again on buffers of its own (`ConvCall`). */
  conv?: ConvCall;
}

/** What a convolution call was asked: its shape, precision and (forward) fusion. */
export interface ConvCall {
  s: ConvShape;
  precision: ConvPrecision;
  fusion?: ConvFusion;
  inference?: boolean;
}

/** The ConvCall of a convolution method's arguments (onednn.ts's signatures). */
function convCall(method: OneDnnMethod, args: unknown[]): ConvCall | undefined {
  const s = args[0] as ConvShape;
  if (method === "convForward") {
    return {
      s,
      fusion: args[1] as ConvFusion,
      inference: args[6] as boolean,
      precision: (args[7] as ConvPrecision | undefined) ?? "f32",
    };
  }
  if (method === "convBackwardData" || method === "convBackwardWeights") {
    return { s, precision: (args[4] as ConvPrecision | undefined) ?? "f32" };
  }
  return undefined;
}

/** 2·N·OH·OW·CO·CI·FH·FW: one multiply-add per filter tap and output value, in any direction. */
export function convFlop(s: ConvShape): number {
  return 2 * s.n * s.oh * s.ow * s.co * s.ci * s.fh * s.fw;
}

/**
 * Bytes a memory pass reads plus writes, from its arguments (float32 4 bytes, bfloat16 2):
 * convertBf16 count·(4 + 2); copyRows rows·cols·4·2 (+ rows·cols·4 read back with
 * `accumulate`); add and reluBackward size·4·3 (two read, one written); bnApply rows·c·4·2
 * (+ four [c] vectors); scaleAccumulate rows·c·4·3 (+ one [c] vector). Undefined for the rest.
 */
function callBytes(method: OneDnnMethod, args: unknown[]): number | undefined {
  const n = (i: number) => args[i] as number;
  switch (method) {
    case "convertBf16":
      return n(0) * 6;
    case "copyRows":
      return n(0) * n(1) * 4 * (args[6] ? 3 : 2);
    case "add":
    case "reluBackward":
      return n(0) * 12;
    case "bnApply":
      return n(0) * n(1) * 8 + 16 * n(1);
    case "scaleAccumulate":
      return n(0) * n(1) * 12 + 4 * n(1);
    default:
      return undefined;
  }
}

/** The calls recorded so far; `restore` puts the instance's own methods back. */
export interface OneDnnRecorder {
  calls: OneDnnCall[];
  restore(): void;
}

/**
 * Wraps `dnn`'s methods until `restore`: each call is timed and recorded with the kernel
 * `currentKernel` gives at that moment (null: not inside a kernel). Refuses to wrap twice.
 */
export function recordOneDnnCalls(
  dnn: OneDnn,
  currentKernel: () => { readonly index: number } | null,
): OneDnnRecorder {
  const target = dnn as unknown as Record<string, unknown>;
  for (const method of ONEDNN_METHODS) {
    if (Object.hasOwn(target, method)) throw new Error(`OneDnn.${method} is already wrapped`);
  }
  const calls: OneDnnCall[] = [];
  for (const method of ONEDNN_METHODS) {
    const original = target[method] as (...a: unknown[]) => void;
    target[method] = (...args: unknown[]) => {
      const kernel = currentKernel();
      const start = performance.now();
      try {
        original.apply(dnn, args);
      } finally {
        const call: OneDnnCall = { method, ms: performance.now() - start, kernel };
        const conv = convCall(method, args);
        if (conv != null) {
          call.conv = conv;
          call.flop = convFlop(conv.s);
        }
        const bytes = callBytes(method, args);
        if (bytes != null) call.bytes = bytes;
        calls.push(call);
      }
    };
  }
  return {
    calls,
    // Deleting the own property uncovers the prototype's method again.
    restore: () => ONEDNN_METHODS.forEach((m) => delete target[m]),
  };
}
