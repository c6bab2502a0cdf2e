/**
 * Plain WebAssembly SIMD streaming passes over a shared memory of their own, split across
 * threads as the BatchNorm passes are (the calling thread plus worker threads, handed their
 * range through a shared control block): `read` sums the float32 values (four independent
 * f32x4 accumulators, 64 bytes a step: nothing but loads and adds, so it runs at the memory's
 * read bandwidth, not at an arithmetic limit) and `copy` copies them 64 bytes a step. For
 * bench/memory_bandwidth.ts.
 * @module
 */

import { Worker } from "node:worker_threads";
import wabtInit from "wabt";

const TEXT = `(module
  (import "env" "memory" (memory 1 65536 shared))
  ;; Σ of the float32 values in [p, end) (end − p a multiple of 64).
  (func (export "read") (param $p i32) (param $end i32) (result f32)
    (local $a v128) (local $b v128) (local $c v128) (local $d v128)
    (block $done
      (loop $step
        (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
        (local.set $a (f32x4.add (local.get $a) (v128.load offset=0 align=16 (local.get $p))))
        (local.set $b (f32x4.add (local.get $b) (v128.load offset=16 align=16 (local.get $p))))
        (local.set $c (f32x4.add (local.get $c) (v128.load offset=32 align=16 (local.get $p))))
        (local.set $d (f32x4.add (local.get $d) (v128.load offset=48 align=16 (local.get $p))))
        (local.set $p (i32.add (local.get $p) (i32.const 64)))
        (br $step)))
    (f32x4.extract_lane 0
      (f32x4.add (f32x4.add (local.get $a) (local.get $b)) (f32x4.add (local.get $c) (local.get $d)))))
  ;; [p, end) copied to [q, …).
  (func (export "copy") (param $p i32) (param $end i32) (param $q i32) (result f32)
    (block $done
      (loop $step
        (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
        (v128.store offset=0 align=16 (local.get $q) (v128.load offset=0 align=16 (local.get $p)))
        (v128.store offset=16 align=16 (local.get $q) (v128.load offset=16 align=16 (local.get $p)))
        (v128.store offset=32 align=16 (local.get $q) (v128.load offset=32 align=16 (local.get $p)))
        (v128.store offset=48 align=16 (local.get $q) (v128.load offset=48 align=16 (local.get $p)))
        (local.set $p (i32.add (local.get $p) (i32.const 64)))
        (local.set $q (i32.add (local.get $q) (i32.const 64)))
        (br $step)))
    (f32.const 0))
)`;

/** Control words: [0] go (1) / idle (0), [1] done, [2] pass (0 read, 1 copy), [3..5] p, end, q. */
const WORKER_SOURCE = `
const { workerData } = require("node:worker_threads");
const { memory, control, moduleBytes } = workerData;
const { read, copy } = new WebAssembly.Instance(new WebAssembly.Module(moduleBytes), { env: { memory } }).exports;
for (;;) {
  Atomics.wait(control, 0, 0);
  const [p, end, q] = [control[3], control[4], control[5]];
  if (control[2] === 0) read(p, end); else copy(p, end, q);
  Atomics.store(control, 0, 0);
  Atomics.store(control, 1, 1);
  Atomics.notify(control, 1);
}
`;

type Pass = (p: number, end: number, q: number) => number;

/** The part of wabt's API used here (its index.d.ts omits `validate`'s features argument). */
interface Wabt {
  parseWat(filename: string, text: string, features: { threads: boolean }): {
    validate(features: { threads: boolean }): void;
    toBinary(options: Record<never, never>): { buffer: Uint8Array };
    destroy(): void;
  };
}

/** Two buffers of `bytes` in one shared memory and the passes over them on `threads` threads. */
export interface SimdStream {
  bytes: number;
  /** One read-only pass over the source (ms). */
  read(): number;
  /** One copy of the source into the destination (ms). */
  copy(): number;
  close(): void;
}

/** Sets up the memory (source filled with 1.0) and `threads` − 1 worker threads. */
export async function simdStream(megabytes: number, threads: number): Promise<SimdStream> {
  const wabt = await wabtInit() as unknown as Wabt;
  const features = { threads: true };
  const module = wabt.parseWat("simd_stream.wat", TEXT, features);
  let moduleBytes: Uint8Array;
  try {
    module.validate(features);
    moduleBytes = module.toBinary({}).buffer;
  } finally {
    module.destroy();
  }
  const bytes = Math.ceil((megabytes * 2 ** 20) / 65536) * 65536;
  const pages = (2 * bytes) / 65536 + 1;
  const memory = new WebAssembly.Memory({ initial: pages, maximum: pages, shared: true });
  new Float32Array(memory.buffer, 0, bytes / 4).fill(1);
  new Float32Array(memory.buffer, bytes, bytes / 4).fill(0);
  const exports = new WebAssembly.Instance(new WebAssembly.Module(moduleBytes as BufferSource), {
    env: { memory },
  }).exports as unknown as { read: Pass; copy: Pass };
  const controls: Int32Array[] = [];
  const workers: Worker[] = [];
  for (let i = 1; i < threads; i++) {
    const control = new Int32Array(new SharedArrayBuffer(24));
    const w = new Worker(WORKER_SOURCE, {
      eval: true,
      workerData: { memory, control, moduleBytes },
    });
    w.unref();
    workers.push(w);
    controls.push(control);
  }
  /** Runs pass `which` over all threads, each a contiguous share of 64-byte steps. */
  const run = (which: 0 | 1): number => {
    const steps = bytes / 64;
    const share = Math.ceil(steps / threads);
    const range = (
      i: number,
    ) => [Math.min(steps, i * share) * 64, Math.min(steps, (i + 1) * share) * 64];
    const start = performance.now();
    controls.forEach((c, i) => {
      const [p, end] = range(i);
      c.set([0, 0, which, p, end, bytes + p]);
      Atomics.store(c, 0, 1);
      Atomics.notify(c, 0);
    });
    const [p, end] = range(threads - 1);
    (which === 0 ? exports.read : exports.copy)(p, end, bytes + p);
    for (const c of controls) {
      while (Atomics.load(c, 1) === 0) Atomics.wait(c, 1, 0, 1000);
    }
    return performance.now() - start;
  };
  return {
    bytes,
    read: () => run(0),
    copy: () => run(1),
    close: () => workers.forEach((w) => w.terminate()),
  };
}
