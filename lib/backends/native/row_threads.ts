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
import { LIST_FIELDS, simdBatchNorm } from "./simd_batchnorm.ts";

/** Largest channel count the vector blocks hold (DenseNet-121: 1,024). */
export const MAX_CHANNELS = 4096;
/** Below this many values a split costs more than it saves. */
const MIN_VALUES = 1 << 16;
/** Rows per reduction tile (accumulators in registers across a tile; 8–32 measured alike). */
const TILE_ROWS = 16;
/** Per-thread block: s1, s2 (float64). */
const SUMS_BYTES = 2 * 8 * MAX_CHANNELS;
/** Shared block: va, vb (float64), then six per-channel vectors (float32, or float64 if wide). */
const vectorsBytes = (valueBytes: number) => 2 * 8 * MAX_CHANNELS + 6 * valueBytes * MAX_CHANNELS;
/** The module's functions by index, as the control block names them. */
const FUNCTIONS = ["sums", "applyList", "sumsList", "maskedSumsList", "gradApplyList"] as const;
type FunctionName = typeof FUNCTIONS[number];
/** Most inputs one list call takes (DenseNet-121: 25). */
const MAX_INPUTS = 1024;
/** Most arguments a function takes (sums: 12). */
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

/** An [m, c] float32 view in the heap: byte address of row 0, row stride in values (≥ c). */
export interface Strided {
  at: number;
  stride: number;
}

/** A float32 [C] per-channel vector, as the passes take it. */
type Vector = ArrayLike<number>;

/**
 * A normalisation's per-channel map, in the passes' float32 arithmetic: the pre-ReLU value is
 * (x − mean)·scale + shift (`normaliseAffine`'s scale, the BatchNorm's β as shift; scale 0 with
 * shift 1 for a ReLU mask that keeps everything).
 */
export interface Affine {
  mean: Vector;
  scale: Vector;
  shift: Vector;
}

/** One input of a list pass: its [m, c] views and its first channel in the C-wide vectors. */
export interface ListInput {
  /** dy (the backward passes; a channel range of a [m, C] gradient), else unused. */
  dy?: Strided;
  x: Strided;
  /** Output of the dx pass (a channel range of the [m, C] dx). */
  dx?: Strided;
  /** Added in the dx pass (a channel range of a wider gradient). */
  addend?: Strided;
  /** The input's first channel among the C channels of the vectors and sums. */
  from: number;
  c: number;
}

/** The passes over the heap, threaded. Addresses are byte offsets into the heap. */
export interface HeapThreads {
  /** The SIMD module's float64 normalising arithmetic (its per-channel vectors float64 too). */
  wide: boolean;
  /** `rowSums` over all rows (the `RowSums` contract). */
  rowSums: RowSums;
  /**
   * Σ (x − shift) and Σ (x − shift)² per channel into s1, s2 (added), for each input's
   * channel range of the C-wide float64 `shift`, s1, s2: the batch statistics of a channel
   * concatenation. Null without SIMD.
   */
  statisticsSums:
    | ((
      inputs: ListInput[],
      m: number,
      shift: Float64Array,
      s1: Float64Array,
      s2: Float64Array,
    ) => void)
    | null;
  /**
   * Σ g and Σ g·(x − mean) per channel (float64, `mean64`) into s1, s2 (added), g = dy masked
   * where the pre-ReLU value ≤ 0 (`mask`), for each input's channel range of the C-wide vectors.
   * Null without SIMD.
   */
  maskedSums:
    | ((
      inputs: ListInput[],
      m: number,
      mean64: Float64Array,
      mask: Affine,
      s1: Float64Array,
      s2: Float64Array,
    ) => void)
    | null;
  /**
   * dx = a·g + b·(x − mean) + d (+ addend) per channel, g masked as in `maskedSums`, for each
   * input's channel range. Null without SIMD.
   */
  gradApply:
    | ((
      inputs: ListInput[],
      m: number,
      mask: Affine,
      coefficients: { a: Vector; b: Vector; d: Vector },
    ) => void)
    | null;
  /**
   * y = max((x − mean)·scale + shift, 0 with `relu`) per channel, x the channel concatenation
   * of `inputs` (dense [m, c_i] tensors at byte address `at`; every c_i a multiple of 4) and y
   * dense [m, Σ c_i]: the concatenation is never written. Null without SIMD.
   */
  normaliseConcat:
    | ((
      inputs: { at: number; c: number }[],
      y: number,
      m: number,
      affine: Affine,
      relu: boolean,
    ) => void)
    | null;
}

/**
 * The passes over `threads` threads (the caller plus threads − 1 workers) for tensors on
 * `memory`, with blocks from `malloc` (the wasm module's); `wide`: the SIMD module's float64
 * normalising arithmetic (simd_batchnorm.ts `Variant`).
 */
export function heapThreads(
  memory: WebAssembly.Memory | null,
  threads: number,
  malloc: (bytes: number) => number,
  wide = false,
): HeapThreads {
  const simd = memory != null ? simdBatchNorm(memory, wide) : null;
  const sequential: RowSums = (a, va, b, vb, c, m, s1, s2) =>
    rowSums(a, va, b, vb, c, 0, m, s1, s2);
  if (memory == null || simd == null) {
    return {
      wide: false,
      rowSums: sequential,
      statisticsSums: null,
      maskedSums: null,
      gradApply: null,
      normaliseConcat: null,
    };
  }
  // The single-threaded wasm build's heap is not shared: no workers can see it.
  if (!(memory.buffer instanceof SharedArrayBuffer)) threads = 1;
  // The per-channel vectors' values: float32, or float64 for the wide variant.
  const valueBytes = wide ? 8 : 4;
  const vectors = malloc(vectorsBytes(valueBytes));
  const table = malloc(MAX_INPUTS * 4 * Math.max(...Object.values(LIST_FIELDS)));
  // One zero row: gradApply's addend (stride 0) when there is none.
  const zeros = malloc(4 * MAX_CHANNELS);
  new Float32Array(memory.buffer, zeros, MAX_CHANNELS).fill(0);
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
          moduleBytes: simd.moduleBytes,
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
  const vectorAt = (i: number) => vectors + 16 * MAX_CHANNELS + valueBytes * MAX_CHANNELS * i;
  const vector = (i: number, c: number) => (wide ? f64 : f32)(vectorAt(i), c);
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
  /** The channels the inputs span (C), checked: multiples of 4, within the blocks. */
  const width = (inputs: ListInput[]) => {
    const c = Math.max(...inputs.map((t) => t.from + t.c));
    if (!fits(c) || inputs.length > MAX_INPUTS || inputs.some((t) => t.c % 4 !== 0)) {
      throw new Error(`a BatchNorm pass over inputs of [${inputs.map((t) => t.c)}] channels`);
    }
    return c;
  };
  /** A list reduction over the table's first `k` rows, each thread into its own sums. */
  const listSums = (
    fn: "sumsList" | "maskedSumsList",
    k: number,
    m: number,
    c: number,
    s1: Float64Array,
    s2: Float64Array,
  ) =>
    parallel(fn, m, c, (r0, r1, block) => [
      table,
      k,
      r0,
      r1,
      s1At(block),
      s2At(block),
      TILE_ROWS,
    ], [s1, s2]);
  /** Writes one table row per input (`fields` i32s each); returns the row count. */
  const writeTable = (fields: number, inputs: ListInput[], row: (t: ListInput) => number[]) => {
    const rows = new Int32Array(memory.buffer, table, fields * inputs.length);
    inputs.forEach((t, i) => rows.set(row(t), fields * i));
    return inputs.length;
  };
  const onHeap = (...arrays: ArrayBufferView[]) => arrays.every((a) => a.buffer === memory.buffer);

  return {
    wide,
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
    statisticsSums: (inputs, m, shift, s1, s2) => {
      const c = width(inputs);
      f64(va, c).set(shift);
      const k = writeTable(LIST_FIELDS.sumsList, inputs, (t) => [
        t.x.at,
        t.x.at,
        va + 8 * t.from,
        va + 8 * t.from,
        t.c,
        4 * t.x.stride,
        4 * t.x.stride,
        8 * t.from,
      ]);
      listSums("sumsList", k, m, c, s1, s2);
    },
    maskedSums: (inputs, m, mean64, mask, s1, s2) => {
      const c = width(inputs);
      f64(va, c).set(mean64);
      [mask.scale, mask.shift, mask.mean].forEach((v, i) => vector(i, c).set(v));
      const k = writeTable(LIST_FIELDS.maskedSumsList, inputs, (t) => [
        t.dy!.at,
        t.x.at,
        va + 8 * t.from,
        t.c,
        4 * t.dy!.stride,
        4 * t.x.stride,
        8 * t.from,
        ...[0, 1, 2].map((v) => vectorAt(v) + valueBytes * t.from),
      ]);
      listSums("maskedSumsList", k, m, c, s1, s2);
    },
    normaliseConcat: (inputs, y, m, affine, relu) => {
      const list = inputs.map((t, i) => ({
        x: { at: t.at, stride: t.c },
        from: inputs.slice(0, i).reduce((sum, u) => sum + u.c, 0),
        c: t.c,
      }));
      const c = width(list);
      [affine.mean, affine.scale, affine.shift].forEach((v, i) => vector(i, c).set(v));
      vector(3, c).fill(relu ? 0 : -Infinity);
      const k = writeTable(LIST_FIELDS.applyList, list, (t) => [
        t.x.at,
        4 * t.x.stride,
        y + 4 * t.from,
        4 * c,
        t.c,
        ...[0, 1, 2, 3].map((v) => vectorAt(v) + valueBytes * t.from),
      ]);
      parallel("applyList", m, c, (r0, r1) => [table, k, r0, r1]);
    },
    gradApply: (inputs, m, mask, k) => {
      const c = width(inputs);
      [mask.scale, mask.shift, k.a, k.b, k.d, mask.mean].forEach((v, i) => vector(i, c).set(v));
      const n = writeTable(LIST_FIELDS.gradApplyList, inputs, (t) => {
        const plus = t.addend ?? { at: zeros, stride: 0 };
        const vec = (v: number) => vectorAt(v) + valueBytes * t.from;
        return [
          t.dy!.at,
          t.x.at,
          t.c,
          4 * t.dy!.stride,
          4 * t.x.stride,
          t.dx!.at,
          4 * t.dx!.stride,
          ...[0, 1, 2, 3, 4].map(vec),
          plus.at,
          4 * plus.stride,
          vec(5),
        ];
      });
      parallel("gradApplyList", m, c, (r0, r1) => [table, n, r0, r1]);
    },
  };
}
