/**
 * The native BatchNorm's own passes (`simd_batchnorm.ts`: float64 reductions, the masked
 * gradient sums, the dx pass) split by rows across threads. The wasm heap is shared memory, so
 * worker threads, each with its own instance of the SIMD module over that memory, work on the
 * tensors in place: each is handed a function and its rows through a small shared control
 * block, reads the per-channel vectors from one block on the heap and adds its sums into a block
 * of its own; the calling thread, which takes the last share, waits for them with
 * `Atomics.wait` (kernels are synchronous). Workers are unref'd: they never keep the process
 * alive. On an unshared heap (the single-threaded wasm build) the calling thread does all rows;
 * without WebAssembly SIMD, or without the heap's Memory object, the reductions run as
 * `rowSums` in JavaScript and the other passes are unavailable (null).
 * @module
 */

import { Worker } from "node:worker_threads";
import { type RowSums, rowSums } from "../batchnorm_kernels.ts";
import { APPLY_ENTRY_BYTES, simdBatchNorm, simdBatchNormModuleBytes } from "./simd_batchnorm.ts";

/** Largest channel count the vector blocks hold (DenseNet-121: 1,024). */
const MAX_CHANNELS = 4096;
/** Below this many values a split costs more than it saves. */
const MIN_VALUES = 1 << 16;
/** Rows per reduction tile (accumulators in registers across a tile; 8–32 measured alike). */
const TILE_ROWS = 16;
/** Per-thread block: s1, s2 (float64). */
const SUMS_BYTES = 2 * 8 * MAX_CHANNELS;
/** Shared block: va, vb (float64), then five float32 vectors. */
const VECTORS_BYTES = 2 * 8 * MAX_CHANNELS + 5 * 4 * MAX_CHANNELS;
/** The module's functions by index, as the control block names them. */
const FUNCTIONS = ["sums", "maskedSums", "gradApply", "applyList"] as const;
type FunctionName = typeof FUNCTIONS[number];
/** Most inputs one `normaliseConcat` call takes. */
const MAX_INPUTS = 1024;
/** Most arguments a function takes (gradApply: 14). */
const MAX_ARGS = 16;

/** Control words: [0] job posted (1) / idle (0), [1] done (1), [2] function index. */
const WORKER_SOURCE = `
const { workerData } = require("node:worker_threads");
const { memory, control, args, moduleBytes, names } = workerData;
const instance = new WebAssembly.Instance(new WebAssembly.Module(moduleBytes), { env: { memory } });
const fns = names.map((n) => instance.exports[n]);
for (;;) {
  Atomics.wait(control, 0, 0);
  fns[control[2]](...args);
  Atomics.store(control, 0, 0);
  Atomics.store(control, 1, 1);
  Atomics.notify(control, 1);
}
`;

interface RowWorker {
  control: Int32Array;
  args: Float64Array;
  sums: number;
}

/** A float32 [C] per-channel vector, as the passes take it. */
type Vector = ArrayLike<number>;

/** The passes over the heap, threaded. Addresses are byte offsets into the heap. */
export interface HeapThreads {
  /** `rowSums` over all rows (the `RowSums` contract). */
  rowSums: RowSums;
  /**
   * Σ g and Σ g·(x − mean) per channel into s1, s2 (added), g = dy masked where
   * x·scale + offset ≤ 0; [m, c] dense dy and x. Null without SIMD.
   */
  maskedSums:
    | ((
      dy: number,
      x: number,
      c: number,
      m: number,
      mean: Float64Array,
      scale: Vector,
      offset: Vector,
      s1: Float64Array,
      s2: Float64Array,
    ) => void)
    | null;
  /** dx = a·g + b·x + d per channel, g masked as in `maskedSums`; [m, c] dense. */
  gradApply:
    | ((
      dy: number,
      x: number,
      dx: number,
      c: number,
      m: number,
      vectors: { scale: Vector; offset: Vector; a: Vector; b: Vector; d: Vector },
    ) => void)
    | null;
  /**
   * y = max(x·scale + offset, 0 with `relu`) per channel, x the channel concatenation of
   * `inputs` (dense [m, c_i] tensors at byte address `at`; every c_i a multiple of 4) and y
   * dense [m, Σ c_i]: the concatenation is never written. Null without SIMD.
   */
  normaliseConcat:
    | ((
      inputs: { at: number; c: number }[],
      y: number,
      m: number,
      scale: Vector,
      offset: Vector,
      relu: boolean,
    ) => void)
    | null;
}

/**
 * The passes over `threads` threads (the caller plus threads − 1 workers) for tensors on
 * `memory`, with blocks from `malloc` (the wasm module's).
 */
export function heapThreads(
  memory: WebAssembly.Memory | null,
  threads: number,
  malloc: (bytes: number) => number,
): HeapThreads {
  const simd = memory != null ? simdBatchNorm(memory) : null;
  const sequential: RowSums = (a, va, b, vb, c, m, s1, s2) =>
    rowSums(a, va, b, vb, c, 0, m, s1, s2);
  if (memory == null || simd == null) {
    return { rowSums: sequential, maskedSums: null, gradApply: null, normaliseConcat: null };
  }
  // The single-threaded wasm build's heap is not shared: no workers can see it.
  if (!(memory.buffer instanceof SharedArrayBuffer)) threads = 1;
  const vectors = malloc(VECTORS_BYTES);
  const table = malloc(MAX_INPUTS * APPLY_ENTRY_BYTES);
  const mainSums = malloc(SUMS_BYTES);
  const workers: RowWorker[] = [];
  try {
    for (let i = 1; i < threads; i++) {
      const w: RowWorker = {
        control: new Int32Array(new SharedArrayBuffer(12)),
        args: new Float64Array(new SharedArrayBuffer(8 * MAX_ARGS)),
        sums: malloc(SUMS_BYTES),
      };
      new Worker(WORKER_SOURCE, {
        eval: true,
        workerData: {
          memory,
          control: w.control,
          args: w.args,
          moduleBytes: simdBatchNormModuleBytes(),
          names: FUNCTIONS,
        },
      }).unref();
      workers.push(w);
    }
  } catch {
    // no worker threads here: the calling thread does all rows
  }
  // Views made per call: the heap may have grown since.
  const f64 = (at: number, c: number) => new Float64Array(memory.buffer, at, c);
  const f32 = (at: number, c: number) => new Float32Array(memory.buffer, at, c);
  const va = vectors, vb = vectors + 8 * MAX_CHANNELS;
  const f32Vector = (i: number) => vectors + 16 * MAX_CHANNELS + 4 * MAX_CHANNELS * i;
  const s1At = (block: number) => block, s2At = (block: number) => block + 8 * MAX_CHANNELS;

  /**
   * Runs `fn` over rows [0, m), `args(r0, r1, sums)` giving a share's arguments; with `sums`,
   * each thread's s1, s2 block is zeroed first and added into `sums` after.
   */
  const parallel = (
    fn: FunctionName,
    m: number,
    c: number,
    args: (r0: number, r1: number, block: number) => number[],
    sums?: [Float64Array, Float64Array],
  ) => {
    const split = workers.length > 0 && m * c >= MIN_VALUES;
    const team = split ? workers : [];
    const share = Math.ceil(m / (team.length + 1));
    const blocks = [...team.map((w) => w.sums), mainSums];
    if (sums) {
      for (const b of blocks) {
        f64(s1At(b), c).fill(0);
        f64(s2At(b), c).fill(0);
      }
    }
    team.forEach((w, i) => {
      w.args.set(args(Math.min(m, i * share), Math.min(m, (i + 1) * share), w.sums));
      w.control[2] = FUNCTIONS.indexOf(fn);
      Atomics.store(w.control, 1, 0);
      Atomics.store(w.control, 0, 1);
      Atomics.notify(w.control, 0);
    });
    simd[fn](...args(Math.min(m, team.length * share), m, mainSums));
    for (const w of team) {
      for (let waited = 0; Atomics.load(w.control, 1) === 0; waited++) {
        if (waited === 60) throw new Error("a BatchNorm thread stopped answering");
        Atomics.wait(w.control, 1, 0, 1000);
      }
    }
    if (sums) {
      for (const b of blocks) {
        const [t1, t2] = [f64(s1At(b), c), f64(s2At(b), c)];
        for (let k = 0; k < c; k++) {
          sums[0][k] += t1[k];
          sums[1][k] += t2[k];
        }
      }
    }
  };
  const fits = (c: number) => c % 4 === 0 && c > 0 && c <= MAX_CHANNELS;
  const onHeap = (...arrays: ArrayBufferView[]) => arrays.every((a) => a.buffer === memory.buffer);

  return {
    rowSums: (a, vA, b, vB, c, m, s1, s2) => {
      if (!fits(c) || !onHeap(a, b)) return sequential(a, vA, b, vB, c, m, s1, s2);
      f64(va, c).set(vA);
      f64(vb, c).set(vB);
      parallel("sums", m, c, (r0, r1, block) => [
        a.byteOffset,
        b.byteOffset,
        va,
        vb,
        c,
        4 * c,
        4 * c,
        r0,
        r1,
        s1At(block),
        s2At(block),
        TILE_ROWS,
      ], [s1, s2]);
    },
    maskedSums: (dy, x, c, m, mean, scale, offset, s1, s2) => {
      if (!fits(c)) throw new Error(`maskedSums: ${c} channels (a multiple of 4 is needed)`);
      f64(va, c).set(mean);
      f32(f32Vector(0), c).set(scale);
      f32(f32Vector(1), c).set(offset);
      parallel("maskedSums", m, c, (r0, r1, block) => [
        dy,
        x,
        va,
        c,
        4 * c,
        4 * c,
        r0,
        r1,
        s1At(block),
        s2At(block),
        TILE_ROWS,
        f32Vector(0),
        f32Vector(1),
      ], [s1, s2]);
    },
    normaliseConcat: (inputs, y, m, scale, offset, relu) => {
      const c = inputs.reduce((sum, t) => sum + t.c, 0);
      if (!fits(c) || inputs.length > MAX_INPUTS || inputs.some((t) => t.c % 4 !== 0)) {
        throw new Error(`normaliseConcat: inputs of [${inputs.map((t) => t.c)}] channels`);
      }
      f32(f32Vector(0), c).set(scale);
      f32(f32Vector(1), c).set(offset);
      f32(f32Vector(2), c).fill(relu ? 0 : -Infinity);
      const entries = new Int32Array(memory.buffer, table, 8 * inputs.length);
      let column = 0;
      inputs.forEach((t, i) => {
        const at = (v: number) => f32Vector(v) + 4 * column;
        entries.set([t.at, 4 * t.c, y + 4 * column, 4 * c, t.c, at(0), at(1), at(2)], 8 * i);
        column += t.c;
      });
      parallel("applyList", m, c, (r0, r1) => [table, inputs.length, r0, r1]);
    },
    gradApply: (dy, x, dx, c, m, v) => {
      if (!fits(c)) throw new Error(`gradApply: ${c} channels (a multiple of 4 is needed)`);
      [v.scale, v.offset, v.a, v.b, v.d].forEach((values, i) => f32(f32Vector(i), c).set(values));
      parallel("gradApply", m, c, (r0, r1) => [
        dy,
        x,
        c,
        4 * c,
        4 * c,
        r0,
        r1,
        dx,
        4 * c,
        ...[0, 1, 2, 3, 4].map(f32Vector),
      ]);
    },
  };
}
