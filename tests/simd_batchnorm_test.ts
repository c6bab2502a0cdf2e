/**
 * The WebAssembly SIMD BatchNorm reductions (lib/backends/native/simd_batchnorm.ts) against the
 * JavaScript `rowSums` they replace, on a shared memory like the threaded wasm heap: channel
 * counts 4 to 1,024, row ranges that start and end inside a tile, strided rows, sums added to
 * what the accumulators held.
 */
import assert from "node:assert/strict";
import { rowSums } from "../lib/backends/batchnorm_kernels.ts";
import { simdBatchNorm } from "../lib/backends/native/simd_batchnorm.ts";
import { Rng } from "../lib/util/rng.ts";

Deno.test("SIMD row sums equal rowSums in float64 (to rounding) on shared memory", () => {
  const memory = new WebAssembly.Memory({ initial: 256, maximum: 65536, shared: true });
  const sums = simdBatchNorm(memory)?.sums;
  assert.ok(sums != null, "WebAssembly SIMD is available in Deno");
  const rng = new Rng(3);
  const cases = [
    { c: 4, rows: 1, r0: 0, r1: 1, stride: 4, tile: 16 },
    { c: 8, rows: 37, r0: 5, r1: 36, stride: 8, tile: 16 },
    { c: 64, rows: 1000, r0: 0, r1: 1000, stride: 64, tile: 16 },
    { c: 32, rows: 300, r0: 17, r1: 299, stride: 96, tile: 8 },
    { c: 1024, rows: 40, r0: 0, r1: 40, stride: 1024, tile: 32 },
  ];
  for (const { c, rows, r0, r1, stride, tile } of cases) {
    const n = rows * stride;
    const [aAt, bAt] = [64, 64 + 4 * n + 16]; // byte addresses, 16-aligned
    const vAt = bAt + 4 * n + 16;
    const f32 = new Float32Array(memory.buffer);
    const f64 = new Float64Array(memory.buffer);
    for (let i = 0; i < n; i++) {
      f32[aAt / 4 + i] = 100 + rng.normal();
      f32[bAt / 4 + i] = rng.normal();
    }
    const va = Float64Array.from({ length: c }, (_, k) => f32[aAt / 4 + k]);
    const vb = Float64Array.from({ length: c }, () => 0.1 * rng.normal());
    const start = Float64Array.from({ length: c }, () => rng.normal());
    const views = [0, 1, 2, 3].map((i) => f64.subarray(vAt / 8 + i * c, vAt / 8 + (i + 1) * c));
    views[0].set(va);
    views[1].set(vb);
    views[2].set(start);
    views[3].set(start);
    sums!(
      aAt,
      bAt,
      vAt,
      vAt + 8 * c,
      c,
      4 * stride,
      4 * stride,
      r0,
      r1,
      vAt + 16 * c,
      vAt + 24 * c,
      tile,
    );
    // The reference on a dense copy of rows r0..r1 (rowSums reads dense rows).
    const dense = (at: number) => {
      const out = new Float32Array((r1 - r0) * c);
      for (let r = r0; r < r1; r++) {
        out.set(f32.subarray(at / 4 + r * stride, at / 4 + r * stride + c), (r - r0) * c);
      }
      return out;
    };
    const [s1, s2] = [Float64Array.from(start), Float64Array.from(start)];
    rowSums(dense(aAt), va, dense(bAt), vb, c, 0, r1 - r0, s1, s2);
    for (let k = 0; k < c; k++) {
      for (
        const [got, want, what] of [[views[2][k], s1[k], "s1"], [views[3][k], s2[k], "s2"]] as const
      ) {
        const err = Math.abs(got - want) / Math.max(1, Math.abs(want));
        assert.ok(err < 1e-12, `c=${c} ${what}[${k}]: ${got} vs ${want}`);
      }
    }
  }
});
