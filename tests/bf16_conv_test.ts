/**
 * oneDNN's bfloat16 convolutions (onednn.ts, precision "bf16"; issue #21's groundwork) against
 * its float32 ones: within bfloat16's tolerance of float32 on the original inputs, and equal,
 * up to float32 accumulation, to float32 on the inputs rounded to bfloat16 (so the inputs were
 * rounded, once, as `convertBf16` rounds, and nothing else was). Skipped, with a message, where
 * libdnnl is missing or the CPU has no bfloat16 instructions (oneDNN would emulate them).
 */
import assert from "node:assert/strict";
import { bf16Missing } from "./helpers/bf16.ts";
import { openOneDnn } from "../lib/backends/native/native_kernels.ts";
import type { ConvPrecision, ConvShape, OneDnn } from "../lib/backends/native/onednn.ts";
import { relError } from "./assert.ts";
import { Rng } from "../lib/util/rng.ts";

const ignore = bf16Missing("the bf16 convolution tests") != null;

/** float32 → bfloat16 bits, to nearest, ties to even (NaN-free inputs). */
function bf16Bits(v: number): number {
  const bits = new Uint32Array(new Float32Array([v]).buffer)[0];
  return ((bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16) & 0xffff;
}

/** Each value rounded to the nearest bfloat16, as float32. */
function roundedToBf16(a: Float32Array): Float32Array {
  const bits = new Uint32Array(a.length);
  a.forEach((v, i) => (bits[i] = bf16Bits(v) << 16));
  return new Float32Array(bits.buffer);
}

const at = (a: ArrayBufferView) => Deno.UnsafePointer.of(a);

function toBf16(dnn: OneDnn, a: Float32Array): Uint16Array {
  const out = new Uint16Array(a.length);
  dnn.convertBf16(a.length, at(a), at(out));
  return out;
}

Deno.test({
  name: "convertBf16 rounds to nearest even and widens exactly",
  ignore,
  fn() {
    const dnn = openOneDnn();
    const rng = new Rng(5);
    // Random values over many binades, plus exact ties (a half ulp of bfloat16 above values
    // with an even and an odd last bit) and values bfloat16 holds exactly.
    const ties = new Uint32Array([0x3f808000, 0x3f818000, 0xbf808000, 0x3f800000, 0x40490fdb]);
    const values = new Float32Array(4096 + ties.length);
    for (let i = 0; i < 4096; i++) values[i] = rng.normal() * 2 ** Math.round(rng.normal() * 20);
    values.set(new Float32Array(ties.buffer), 4096);
    const bits = toBf16(dnn, values);
    bits.forEach((b, i) => assert.equal(b, bf16Bits(values[i]), `value ${values[i]}`));
    const back = new Float32Array(values.length);
    dnn.convertBf16(values.length, at(bits), at(back), true);
    assert.deepEqual(back, roundedToBf16(values));
  },
});

interface Case {
  name: string;
  s: ConvShape;
}

const conv = (
  name: string,
  [n, h, w, ci]: number[],
  [fh, fw, co]: number[],
  stride: number,
  pad: [number, number, number, number],
): Case => {
  const oh = Math.floor((h + pad[0] + pad[2] - fh) / stride) + 1;
  const ow = Math.floor((w + pad[1] + pad[3] - fw) / stride) + 1;
  return { name, s: { n, h, w, ci, oh, ow, co, fh, fw, sh: stride, sw: stride, pad } };
};

const CASES: Case[] = [
  conv("1x1 bottleneck", [2, 7, 6, 48], [1, 1, 16], 1, [0, 0, 0, 0]),
  conv("3x3 same", [2, 8, 7, 32], [3, 3, 8], 1, [1, 1, 1, 1]),
  conv("7x7/2 pad 3 (the stem)", [2, 17, 15, 3], [7, 7, 16], 2, [3, 3, 3, 3]),
  conv("3x3/2 odd channels, asymmetric pad", [2, 9, 8, 13], [3, 3, 5], 2, [0, 0, 1, 1]),
];

const size = (a: number[]) => a.reduce((x, y) => x * y, 1);

/** The three convolutions of `s` at `precision` for float32 inputs (rounded here for bf16). */
function runConv(
  dnn: OneDnn,
  s: ConvShape,
  precision: ConvPrecision,
  x: Float32Array,
  w: Float32Array,
  bias: Float32Array,
  dy: Float32Array,
): { y: Float32Array; yFused: Float32Array; dx: Float32Array; dw: Float32Array } {
  const low = (a: Float32Array) => precision === "bf16" ? toBf16(dnn, a) : a;
  const [xl, dyl] = [low(x), low(dy)];
  const y = new Float32Array(size([s.n, s.oh, s.ow, s.co]));
  const yFused = new Float32Array(y.length);
  const dx = new Float32Array(x.length);
  const dw = new Float32Array(w.length);
  const plain = { bias: false, relu: false };
  dnn.convForward(s, plain, at(xl), at(w), null, at(y), false, precision);
  dnn.convForward(
    s,
    { bias: true, relu: true },
    at(xl),
    at(w),
    at(bias),
    at(yFused),
    true,
    precision,
  );
  dnn.convBackwardData(s, at(dyl), at(w), at(dx), precision);
  dnn.convBackwardWeights(s, at(xl), at(dyl), at(dw), precision);
  return { y, yFused, dx, dw };
}

for (const c of CASES) {
  Deno.test({
    name: `bf16 convolution ${c.name}: forward (+bias, ReLU), backward-data, backward-weights`,
    ignore,
    fn() {
      const dnn = openOneDnn();
      const { s } = c;
      const rng = new Rng(21);
      const random = (n: number) => Float32Array.from({ length: n }, () => rng.normal());
      const x = random(size([s.n, s.h, s.w, s.ci]));
      const w = random(size([s.fh, s.fw, s.ci, s.co]));
      const bias = random(s.co);
      const dy = random(size([s.n, s.oh, s.ow, s.co]));
      const bf16 = runConv(dnn, s, "bf16", x, w, bias, dy);
      const f32 = runConv(dnn, s, "f32", x, w, bias, dy);
      const f32OfRounded = runConv(
        dnn,
        s,
        "f32",
        roundedToBf16(x),
        roundedToBf16(w),
        bias,
        roundedToBf16(dy),
      );
      for (const out of ["y", "yFused", "dx", "dw"] as const) {
        const vsF32 = relError(bf16[out], f32[out]);
        // bfloat16 keeps 8 significant bits: a sum of products of rounded inputs is off by
        // ~2^-9 relative per input, far less after summing many.
        assert.ok(vsF32 < 1e-2, `${out}: ${vsF32} from float32`);
        // ...and it did round them (bfloat16 ran, not a silent float32 path).
        assert.ok(vsF32 > 1e-5, `${out}: ${vsF32} from float32, no bfloat16 rounding seen`);
        const vsRounded = relError(bf16[out], f32OfRounded[out]);
        assert.ok(vsRounded < 2e-6, `${out}: ${vsRounded} from float32 on the rounded inputs`);
      }
    },
  });
}
