/**
 * The WebAssembly SIMD BatchNorm reductions (lib/backends/native/simd_batchnorm.ts) against the
 * JavaScript `rowSums` they replace, on a shared memory like the threaded wasm heap: channel
 * counts 4 to 1,024, row ranges that start and end inside a tile, strided rows, sums added to
 * what the accumulators held; and the normalising functions of the two variants an engine may
 * get besides the default (float64 "wide"; float32 without relaxed SIMD's fused multiply-add)
 * against the same arithmetic in JavaScript, bit for bit; and that the text of each of the six
 * variants (shared or unshared heap × fused, plain, wide) assembles into a module the engine takes.
 */
import assert from "node:assert/strict";
import { rowSums } from "../lib/backends/batchnorm_kernels.ts";
import {
  loadAssembler,
  simdBatchNorm,
  simdBatchNormModuleBytes,
} from "../lib/backends/native/simd_batchnorm.ts";
import { Rng } from "../lib/util/rng.ts";

await loadAssembler();

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

Deno.test("wide variant: normalise, masked sums and dx in float64 (float64 vectors), rounded once", () => {
  const memory = new WebAssembly.Memory({ initial: 64, maximum: 65536, shared: true });
  const simd = simdBatchNorm(memory, true);
  assert.ok(simd != null);
  const rng = new Rng(11);
  const f32 = new Float32Array(memory.buffer);
  const f64 = new Float64Array(memory.buffer);
  const c = 12, rows = 23, stride = 20; // strided rows: channels 0..11 of 20
  let next = 64;
  const alloc = (bytes: number) => {
    const at = next;
    next += Math.ceil(bytes / 16) * 16 + 16;
    return at;
  };
  const matrix = (fill: () => number) => {
    const at = alloc(4 * rows * stride);
    for (let i = 0; i < rows * stride; i++) f32[at / 4 + i] = fill();
    return at;
  };
  const vector64 = (values: number[]) => {
    const at = alloc(8 * c);
    f64.set(values, at / 8);
    return at;
  };
  const x = matrix(() => 3 + rng.normal());
  const dy = matrix(() => rng.normal());
  const addend = matrix(() => rng.normal());
  const out = matrix(() => 0);
  const per = (f: () => number) => Array.from({ length: c }, f);
  // Per-channel vectors with more than float32's precision: the wide variant keeps it.
  const m32 = per(() => 3 + 0.1 * rng.normal());
  const scale = per(() => 1 + 0.3 * rng.normal());
  const shift = per(() => 0.2 * rng.normal());
  const [ca, cb, cd] = [0, 1, 2].map(() => per(() => rng.normal()));
  const floor = per(() => 0);
  const at = Object.fromEntries(
    Object.entries({ m32, scale, shift, ca, cb, cd, floor }).map(([k, v]) => [k, vector64(v)]),
  );
  const v = (name: string, k: number) => f64[at[name] / 8 + k];
  const value = (base: number, r: number, k: number) => f32[base / 4 + r * stride + k];
  const pre = (r: number, k: number) =>
    (value(x, r, k) - v("m32", k)) * v("scale", k) + v("shift", k);

  // y = max(pre, 0), rounded once
  simd!.apply(x, 4 * stride, out, 4 * stride, c, 2, rows, at.m32, at.scale, at.shift, at.floor);
  for (let r = 0; r < rows; r++) {
    for (let k = 0; k < c; k++) {
      const want = r < 2 ? 0 : Math.fround(Math.max(pre(r, k), 0));
      assert.equal(value(out, r, k), want, `apply [${r}, ${k}]`);
    }
  }
  // dx = g·a + (x − m32)·b + d + addend with g = dy where pre > 0
  simd!.gradApply(
    dy,
    x,
    c,
    4 * stride,
    4 * stride,
    0,
    rows,
    out,
    4 * stride,
    at.scale,
    at.shift,
    at.ca,
    at.cb,
    at.cd,
    addend,
    4 * stride,
    at.m32,
  );
  for (let r = 0; r < rows; r++) {
    for (let k = 0; k < c; k++) {
      const g = pre(r, k) > 0 ? value(dy, r, k) : 0;
      const want = g * v("ca", k) + (value(x, r, k) - v("m32", k)) * v("cb", k) + v("cd", k) +
        value(addend, r, k);
      assert.equal(value(out, r, k), Math.fround(want), `gradApply [${r}, ${k}]`);
    }
  }
  // Σ g and Σ g·(x − mean) per channel, mean in float64
  const mean64 = alloc(8 * c), s1 = alloc(8 * c), s2 = alloc(8 * c);
  const means = per(() => 3 + 0.1 * rng.normal());
  f64.set(means, mean64 / 8);
  simd!.maskedSums(
    dy,
    x,
    mean64,
    c,
    4 * stride,
    4 * stride,
    1,
    rows,
    s1,
    s2,
    8,
    at.scale,
    at.shift,
    at.m32,
  );
  for (let k = 0; k < c; k++) {
    let a = 0, b = 0;
    for (let r = 1; r < rows; r++) {
      const g = pre(r, k) > 0 ? value(dy, r, k) : 0;
      a += g;
      b += g * (value(x, r, k) - means[k]);
    }
    assert.ok(Math.abs(f64[s1 / 8 + k] - a) < 1e-12 * Math.max(1, Math.abs(a)), `s1[${k}]`);
    assert.ok(Math.abs(f64[s2 / 8 + k] - b) < 1e-12 * Math.max(1, Math.abs(b)), `s2[${k}]`);
  }
});

Deno.test("float32 variant without relaxed SIMD: a multiply and an add, each rounded", () => {
  // The module an engine without relaxed SIMD gets (simdBatchNorm falls back to it).
  const memory = new WebAssembly.Memory({ initial: 16, maximum: 65536, shared: true });
  const bytes = simdBatchNormModuleBytes(true, false, false);
  const { exports } = new WebAssembly.Instance(new WebAssembly.Module(bytes as BufferSource), {
    env: { memory },
  });
  const apply = exports.apply as (...args: number[]) => void;
  const rng = new Rng(5);
  const f32 = new Float32Array(memory.buffer);
  const c = 8, rows = 9;
  const [x, y, mean, scale, shift, floor] = [64, 64 + 4 * 72, 1024, 1056, 1088, 1120];
  for (let i = 0; i < rows * c; i++) f32[x / 4 + i] = 2 + rng.normal();
  for (let k = 0; k < c; k++) {
    f32[mean / 4 + k] = 2 + 0.1 * rng.normal();
    f32[scale / 4 + k] = 1 + 0.3 * rng.normal();
    f32[shift / 4 + k] = 0.2 * rng.normal();
    f32[floor / 4 + k] = k % 2 === 0 ? 0 : -Infinity; // ReLU on even channels only
  }
  apply(x, 4 * c, y, 4 * c, c, 0, rows, mean, scale, shift, floor);
  const r = Math.fround;
  for (let i = 0; i < rows * c; i++) {
    const k = i % c;
    const t = r(f32[x / 4 + i] - f32[mean / 4 + k]);
    const want = Math.max(r(r(t * f32[scale / 4 + k]) + f32[shift / 4 + k]), f32[floor / 4 + k]);
    assert.equal(f32[y / 4 + i], want, `y[${i}]`);
  }
});

Deno.test("every variant's text assembles and instantiates with the functions row_threads.ts calls", () => {
  // Parameter counts as the module comment gives each function's arguments.
  const arity = {
    sums: 12,
    maskedSums: 14,
    gradApply: 17,
    apply: 11,
    applyList: 4,
    sumsList: 7,
    maskedSumsList: 7,
    gradApplyList: 4,
  };
  for (const shared of [true, false]) {
    const memory = new WebAssembly.Memory({ initial: 1, maximum: 65536, shared });
    for (const [fused, wide] of [[true, false], [false, false], [false, true]]) {
      const variant = `shared ${shared}, fused ${fused}, wide ${wide}`;
      const bytes = simdBatchNormModuleBytes(shared, fused, wide);
      assert.ok(WebAssembly.validate(bytes as BufferSource), variant);
      const { exports } = new WebAssembly.Instance(new WebAssembly.Module(bytes as BufferSource), {
        env: { memory },
      });
      const got = Object.fromEntries(
        Object.entries(exports).map(([n, f]) => [n, (f as (...a: number[]) => void).length]),
      );
      assert.deepEqual(got, arity, variant);
    }
  }
});
