/**
 * The float64 reductions of the native BatchNorm (`rowSums`, lib/backends/batchnorm_kernels.ts)
 * split by rows across threads: they are single-threaded JavaScript otherwise, ~45 % of a
 * DenseNet-121 training step. The wasm heap is shared memory, so worker threads read the
 * tensors in place; each is handed its rows through a small shared control block and the
 * calling thread, which takes the last share, waits for them with `Atomics.wait` (kernels are
 * synchronous). The workers run `rowSums`'s own source, so the arithmetic is the same code.
 * Workers are unref'd: they never keep the process alive.
 * @module
 */

import { Worker } from "node:worker_threads";
import { type RowSums, rowSums } from "../batchnorm_kernels.ts";

/** Largest channel count a worker's result block holds (DenseNet-121: 1,024). */
const MAX_CHANNELS = 4096;
/** Below this many values a split costs more than it saves. */
const MIN_VALUES = 1 << 16;

/** Control words: [0] job posted (1) / idle (0), [1] done (1). */
const WORKER_SOURCE = `
const { workerData } = require("node:worker_threads");
const { memory, control, params, va, vb, s1, s2 } = workerData;
${rowSums.toString()}
for (;;) {
  Atomics.wait(control, 0, 0);
  const heap = new Float32Array(memory.buffer);
  const [aOffset, bOffset, length, c, r0, r1] = params;
  const a = heap.subarray(aOffset, aOffset + length);
  const b = heap.subarray(bOffset, bOffset + length);
  s1.fill(0, 0, c);
  s2.fill(0, 0, c);
  rowSums(a, va.subarray(0, c), b, vb.subarray(0, c), c, r0, r1, s1.subarray(0, c), s2.subarray(0, c));
  Atomics.store(control, 0, 0);
  Atomics.store(control, 1, 1);
  Atomics.notify(control, 1);
}
`;

interface RowWorker {
  control: Int32Array;
  params: Float64Array;
  va: Float64Array;
  vb: Float64Array;
  s1: Float64Array;
  s2: Float64Array;
}

const f64 = (n: number) => new Float64Array(new SharedArrayBuffer(8 * n));

/**
 * A `RowSums` over `threads` threads (the caller plus threads − 1 workers) for arrays on
 * `memory`; the sequential `rowSums` where workers cannot start, for small tensors and for
 * arrays elsewhere.
 */
export function rowThreads(memory: WebAssembly.Memory, threads: number): RowSums {
  const workers: RowWorker[] = [];
  try {
    for (let i = 1; i < threads; i++) {
      const w: RowWorker = {
        control: new Int32Array(new SharedArrayBuffer(8)),
        params: f64(6),
        va: f64(MAX_CHANNELS),
        vb: f64(MAX_CHANNELS),
        s1: f64(MAX_CHANNELS),
        s2: f64(MAX_CHANNELS),
      };
      new Worker(WORKER_SOURCE, { eval: true, workerData: { memory, ...w } }).unref();
      workers.push(w);
    }
  } catch {
    // no worker threads here: the calling thread does all rows
  }
  return (a, va, b, vb, c, m, s1, s2) => {
    if (
      workers.length === 0 || c > MAX_CHANNELS || m * c < MIN_VALUES ||
      a.buffer !== memory.buffer || b.buffer !== memory.buffer
    ) {
      rowSums(a, va, b, vb, c, 0, m, s1, s2);
      return;
    }
    const share = Math.ceil(m / (workers.length + 1));
    workers.forEach((w, i) => {
      const [r0, r1] = [Math.min(m, i * share), Math.min(m, (i + 1) * share)];
      w.params.set([a.byteOffset / 4, b.byteOffset / 4, a.length, c, r0, r1]);
      w.va.set(va);
      w.vb.set(vb);
      Atomics.store(w.control, 1, 0);
      Atomics.store(w.control, 0, 1);
      Atomics.notify(w.control, 0);
    });
    rowSums(a, va, b, vb, c, Math.min(m, workers.length * share), m, s1, s2);
    for (const w of workers) {
      for (let waited = 0; Atomics.load(w.control, 1) === 0; waited++) {
        if (waited === 60) throw new Error("a BatchNorm reduction thread stopped answering");
        Atomics.wait(w.control, 1, 0, 1000);
      }
      for (let k = 0; k < c; k++) {
        s1[k] += w.s1[k];
        s2[k] += w.s2[k];
      }
    }
  };
}
