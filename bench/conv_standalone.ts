/**
 * The convolutions of a profiled run timed again on their own, benchdnn-style: each distinct
 * call (direction, shape, precision, fusion) on buffers of its own, its inputs filled with one
 * normal value, best of a few runs after a warm-up, through the same cached oneDNN primitives.
 * The in-step time against this says what a step loses around its convolutions (inputs not in
 * cache, threads waking) rather than in them.
 * @module
 */

import type { OneDnn } from "../lib/backends/native/onednn.ts";
import type { ConvCall, OneDnnCall, OneDnnMethod } from "./onednn_calls.ts";
import { bestMs } from "./memory_bandwidth.ts";

/** The convolution methods, as bench/step_profile.ts names their directions. */
export const CONV_DIRECTIONS = {
  convForward: "forward",
  convBackwardData: "backward-data",
  convBackwardWeights: "backward-weights",
} as const satisfies Partial<Record<OneDnnMethod, string>>;
export type ConvMethod = keyof typeof CONV_DIRECTIONS;

/** One distinct convolution of a run: in-step and standalone times, per run. */
export interface ConvTiming {
  method: ConvMethod;
  call: ConvCall;
  /** How many times a run calls it. */
  calls: number;
  /** In-step milliseconds per run, all its calls. */
  stepMs: number;
  /** Best standalone milliseconds of one call. */
  bestMs: number;
  flop: number;
}

/** ≈0.186 as float32 (0x3e3e3e3e) and as bfloat16 (0x3e3e): no denormals, no NaNs. */
const FILL = 0x3e;

function key(method: string, c: ConvCall): string {
  const s = c.s;
  return JSON.stringify([
    method,
    c.precision,
    c.fusion?.bias,
    c.fusion?.relu,
    c.inference,
    s.n,
    s.h,
    s.w,
    s.ci,
    s.oh,
    s.ow,
    s.co,
    s.fh,
    s.fw,
    s.sh,
    s.sw,
    ...s.pad,
  ]);
}

/** A buffer of `values` elements of 4 bytes (float32) or 2 (bfloat16), filled with FILL. */
function buffer(values: number, bf16: boolean): Uint8Array {
  return new Uint8Array(Math.max(values * (bf16 ? 2 : 4), 64)).fill(FILL);
}

/** Runs one call on buffers of its own; returns a function that runs it again. */
function runner(dnn: OneDnn, method: ConvMethod, c: ConvCall): () => void {
  const { s, precision } = c;
  const bf = precision === "bf16";
  const at = (b: Uint8Array) => Deno.UnsafePointer.of(b);
  const x = s.n * s.h * s.w * s.ci, w = s.fh * s.fw * s.ci * s.co, y = s.n * s.oh * s.ow * s.co;
  if (method === "convForward") {
    const [src, weights, bias, dst] = [
      buffer(x, bf),
      buffer(w, false),
      buffer(s.co, false),
      buffer(y, false),
    ];
    const fusion = c.fusion ?? { bias: false, relu: false };
    return () =>
      dnn.convForward(
        s,
        fusion,
        at(src),
        at(weights),
        fusion.bias ? at(bias) : null,
        at(dst),
        c.inference ?? false,
        precision,
      );
  }
  if (method === "convBackwardData") {
    const [dy, weights, dx] = [buffer(y, bf), buffer(w, false), buffer(x, false)];
    return () => dnn.convBackwardData(s, at(dy), at(weights), at(dx), precision);
  }
  const [src, dy, dw] = [buffer(x, bf), buffer(y, bf), buffer(w, false)];
  return () => dnn.convBackwardWeights(s, at(src), at(dy), at(dw), precision);
}

/**
 * Each distinct convolution among `calls` (one or more runs' worth, `runs` of them), timed on
 * its own: best of `reps` after a warm-up. Call it with oneDNN's methods unwrapped.
 */
export function timeConvsStandalone(
  dnn: OneDnn,
  calls: OneDnnCall[],
  runs: number,
  reps: number,
): ConvTiming[] {
  const distinct = new Map<string, ConvTiming>();
  for (const c of calls) {
    if (c.conv == null || !(c.method in CONV_DIRECTIONS)) continue;
    const method = c.method as ConvMethod;
    const k = key(method, c.conv);
    const t = distinct.get(k) ??
      { method, call: c.conv, calls: 0, stepMs: 0, bestMs: 0, flop: c.flop ?? 0 };
    t.calls += 1 / runs;
    t.stepMs += c.ms / runs;
    distinct.set(k, t);
  }
  for (const t of distinct.values()) {
    t.bestMs = bestMs(runner(dnn, t.method, t.call), reps);
  }
  return [...distinct.values()];
}
