/**
 * The machine's memory bandwidth as the native backend can use it, on the same thread count as
 * the kernels, best of several runs over large float32 buffers:
 *   - plain WebAssembly SIMD passes on threads of their own (bench/simd_stream.ts): a read-only
 *     sum (the read bandwidth) and a copy;
 *   - oneDNN's multi-threaded reorder on the wasm heap (where the tensors live), as a float32
 *     copy (`copyRows`) and as the float32 → bfloat16 rounding (`convertBf16`);
 *   - the BatchNorm passes' own SIMD threads (row_threads.ts) on the heap, as a read-only pass
 *     (`statisticsSums`: Σx, Σx² in float64, four channels a step: its arithmetic, not the
 *     memory, may be what limits it) and as a read-one-write-one pass (`normaliseConcat`).
 * Bytes are those read plus those written (STREAM's convention: a store's write-allocate read
 * is not counted).
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import type { BackendWasm } from "@tensorflow/tfjs-backend-wasm";
import type { OneDnn } from "../lib/backends/native/onednn.ts";
import { heapOffset, heapPointer, threadsFor } from "../lib/backends/native/kernel_support.ts";
import { simdStream } from "./simd_stream.ts";

/** One bandwidth measurement. */
export interface BandwidthFigure {
  /** Short key: simd_read, simd_copy, onednn_copy, onednn_bf16, bn_read, bn_normalise. */
  name: string;
  /** What ran, in words. */
  what: string;
  /** Bytes read + written per run. */
  bytes: number;
  /** Best run, milliseconds. */
  ms: number;
  gbps: number;
}

/** Channels of the [rows, C] view the SIMD passes take (a multiple of 4, as theirs must be). */
const C = 64;

/** Best wall time of `run` in ms over `reps` runs after one warm-up run. */
export function bestMs(run: () => void, reps: number): number {
  run();
  let best = Infinity;
  for (let i = 0; i < reps; i++) {
    const start = performance.now();
    run();
    best = Math.min(best, performance.now() - start);
  }
  return best;
}

/**
 * Measures the six passes on a `megabytes` float32 source and a destination of the same size
 * (on the active wasm backend's heap for the oneDNN and BatchNorm ones, freed after), the plain
 * SIMD ones on `threads` threads. Needs the native backend started (oneDNN's thread count set)
 * and the SIMD passes available; throws, saying so, without them.
 */
export async function measureBandwidth(
  dnn: OneDnn,
  threads: number,
  megabytes = 256,
  reps = 5,
): Promise<BandwidthFigure[]> {
  const figures: BandwidthFigure[] = [];
  const figure = (name: string, what: string, bytes: number, ms: number) =>
    figures.push({ name, what, bytes, ms, gbps: bytes / (ms / 1000) / 1e9 });
  const stream = await simdStream(megabytes, threads);
  try {
    const best = (run: () => number) => {
      run();
      return Math.min(...Array.from({ length: reps }, run));
    };
    figure("simd_read", "wasm SIMD, read-only f32x4 sum", stream.bytes, best(stream.read));
    figure("simd_copy", "wasm SIMD, v128 copy", 2 * stream.bytes, best(stream.copy));
  } finally {
    stream.close();
  }
  return [...figures, ...heapPasses(dnn, megabytes, reps)];
}

/** The oneDNN and BatchNorm passes on the wasm heap. */
function heapPasses(dnn: OneDnn, megabytes: number, reps: number): BandwidthFigure[] {
  const backend = tf.backend() as unknown as BackendWasm;
  const threads = threadsFor(backend);
  if (threads.statisticsSums == null || threads.normaliseConcat == null) {
    throw new Error("the BatchNorm SIMD passes are unavailable on this heap");
  }
  const rows = Math.ceil((megabytes * 2 ** 20) / (4 * C));
  const count = rows * C;
  const src = tf.fill([rows, C], 1.5, "float32");
  const dst = tf.fill([rows, C], 0, "float32");
  try {
    const ptr = (t: tf.Tensor) => heapPointer(backend, t);
    const at = (t: tf.Tensor) => heapOffset(backend, t);
    const shift = new Float64Array(C);
    const [s1, s2] = [new Float64Array(C), new Float64Array(C)];
    const affine = { mean: new Float32Array(C), scale: new Float32Array(C).fill(1), shift };
    const passes: [string, string, number, () => void][] = [
      [
        "onednn_copy",
        "oneDNN reorder, float32 copy (copyRows)",
        2 * 4 * count,
        () => dnn.copyRows(rows, C, ptr(src), C, ptr(dst), C),
      ],
      [
        "onednn_bf16",
        "oneDNN reorder, float32 → bfloat16 (convertBf16)",
        (4 + 2) * count,
        () => dnn.convertBf16(count, ptr(src), ptr(dst)),
      ],
      [
        "bn_read",
        "BatchNorm SIMD pass, read-only Σx, Σx² in float64 (statisticsSums)",
        4 * count,
        () =>
          threads.statisticsSums!(
            [{ x: { at: at(src), stride: C }, from: 0, c: C }],
            rows,
            shift,
            s1,
            s2,
          ),
      ],
      [
        "bn_normalise",
        "BatchNorm SIMD pass, y = x·scale + shift (normaliseConcat)",
        2 * 4 * count,
        () => threads.normaliseConcat!([{ at: at(src), c: C }], at(dst), rows, affine, false),
      ],
    ];
    return passes.map(([name, what, bytes, run]) => {
      const ms = bestMs(run, reps);
      return { name, what, bytes, ms, gbps: bytes / (ms / 1000) / 1e9 };
    });
  } finally {
    tf.dispose([src, dst]);
  }
}
