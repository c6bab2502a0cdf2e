/**
 * The passes of the native BatchNorm(+ReLU) that oneDNN cannot do in float64, as WebAssembly
 * SIMD functions over the wasm heap itself: float32 loads and stores, float64 accumulation,
 * four channels per step. The module imports the tfjs wasm backend's shared memory, so it works
 * on the tensors where they are, on any thread that instantiates it (row_threads.ts). Its source
 * is the WebAssembly text below, assembled once per variant by wabt (the WebAssembly Binary
 * Toolkit's own parser and writer, npm `wabt`) when first asked for: no binary in the
 * repository, no toolchain at build time.
 *
 * Every function takes i32 arguments: byte addresses and byte row strides into the heap, a
 * channel count c (a multiple of 4), rows r0 ≤ r < r1 of a [rows, c] view; per-channel vectors
 * are float64 (`f64`) or float32 (`f32`) as named.
 * - `sums(a, b, va, vb, c, strideA, strideB, r0, r1, s1, s2, tile)`:
 *   s1[k] += Σ (a − va[k]), s2[k] += Σ (a − va[k])·(b − vb[k]) (va, vb, s1, s2 f64): the batch
 *   statistics (a = b = x, va = vb = a shift) and the gradient sums of an unmasked dy.
 * - `maskedSums(dy, x, mean, c, strideDy, strideX, r0, r1, s1, s2, tile, scale, shift, m32)`:
 *   g = dy where the pre-ReLU value (x − m32[k])·scale[k] + shift[k] > 0, else 0 (m32, scale,
 *   shift f32: the forward's own arithmetic, so the mask is its ReLU decision);
 *   s1[k] += Σ g, s2[k] += Σ g·(x − mean[k]) (mean, s1, s2 f64), without writing g.
 * - `gradApply(dy, x, c, strideDy, strideX, r0, r1, dx, strideDx, scale, shift, a, b, d,
 *   addend, strideAddend, m32)`: dx = a[k]·g + b[k]·(x − m32[k]) + d[k] + addend with g masked
 *   as in `maskedSums` (all vectors f32; scale 0 with shift 1 give an unmasked g; a zero row
 *   with stride 0 as addend adds nothing).
 * - `apply(x, strideX, y, strideY, c, r0, r1, mean, scale, shift, floor)`:
 *   y = max((x − mean[k])·scale[k] + shift[k], floor[k]) (f32 vectors; floor 0: ReLU, −∞:
 *   none), strided rows on both sides: the normalise pass, into a channel range of a wider
 *   output. Subtracting the mean first keeps channels whose mean is large against their spread
 *   exact (x·scale + offset cancels there).
 * The pre-ReLU value (x − mean)·scale + shift is one fused multiply-add (relaxed SIMD's
 * relaxed_madd) where the engine has it, in every function that computes it: the forward's
 * normalisation is then as accurate as oneDNN's (measured: a training step's gradient error
 * against float64 4.7e-6 → 4.0e-6, PyTorch float32 3.8e-6), and the masks stay its decisions.
 * - `applyList(table, count, r0, r1)`, `sumsList(table, count, r0, r1, s1, s2, tile)`,
 *   `maskedSumsList(…same)`, `gradApplyList(table, count, r0, r1)`: the function for each of
 *   `count` entries of i32 arguments at `table` (`LIST_FIELDS` per entry; the sums' s1, s2 as
 *   a byte offset into the thread's own blocks given by the call): one call, one thread
 *   hand-off, for all the inputs of a concatenation.
 * The wide variant (`Variant`) computes the pre-ReLU value and dx in float64, rounding once to
 * float32, and takes every per-channel vector named f32 above as float64 instead.
 * The sums go in tiles of `tile` rows, four channels at a time kept in registers across a
 * tile, so the accumulators touch memory once per tile; float64 sums in another order than the
 * JavaScript loops' differ from them only in the last bits.
 *
 * How the text is put together: each function is WebAssembly text in the folded form (an
 * instruction's operands inside its parentheses, evaluated left to right), in a template string.
 * What repeats is a named piece interpolated with `${…}`: the address and the load of channels
 * k..k+3 of a per-channel vector, the float64 halves of a float32 vector, the two loop
 * skeletons (`tiledReduction`, `rowsByChannels`) and the list functions' (`listFunction`). The
 * variants differ by one piece each: `madd` (relaxed_madd or a multiply and an add) and the
 * memory import (shared or not); the wide variant's three normalising functions are functions
 * of their own (`…Wide`). All loads and stores say align=1: the heap's views promise nothing.
 * @module
 */

import wabtInit from "wabt";

/** i32 fields per entry of each list function (a table row is at most 16 fields). */
export const LIST_FIELDS = { sumsList: 8, maskedSumsList: 10, gradApplyList: 15, applyList: 9 };

/**
 * Which arithmetic the normalising functions use: float32 with a fused multiply-add where the
 * engine has relaxed SIMD (`fused`), or float64 (`wide`: every pre-ReLU value and dx computed in
 * float64 and rounded once, as the JavaScript kernels do; more instructions per value).
 */
export interface Variant {
  fused: boolean;
  wide: boolean;
}

// ---- Pieces of text -----------------------------------------------------------------------

/** `(param $a i32) (param $b i32) …` */
const params = (names: string) =>
  names.trim().split(/\s+/).map((n) => `(param $${n} i32)`).join(" ");
/** `(local $a T) (local $b T) …` */
const locals = (type: "i32" | "v128", names: string) =>
  names.trim().split(/\s+/).map((n) => `(local $${n} ${type})`).join(" ");

/** The address of channel k of the f32 (4-byte) per-channel vector at `$v`. */
const f32At = (v: string) => `(i32.add (local.get $${v}) (i32.shl (local.get $k) (i32.const 2)))`;
/** The address of channel k of the f64 (8-byte) per-channel vector at `$v`. */
const f64At = (v: string) => `(i32.add (local.get $${v}) (i32.shl (local.get $k) (i32.const 3)))`;
/** Channels k..k+3 of the f32 vector `$v`, one f32x4. */
const f32s = (v: string) => `(v128.load align=1 ${f32At(v)})`;
/** `$lo`, `$hi` = channels k, k+1 and k+2, k+3 of the f64 vector `$v`, two f64x2s. */
const f64sInto = (v: string, lo: string, hi: string) => `
  (local.set $${lo} (v128.load align=1 ${f64At(v)}))
  (local.set $${hi} (v128.load offset=16 align=1 ${f64At(v)}))`;

/** Lanes 0, 1 of the f32x4 local `$t` as an f64x2. */
const lowF64 = (t: string) => `(f64x2.promote_low_f32x4 (local.get $${t}))`;
/** Lanes 2, 3 of the f32x4 local `$t` as an f64x2 (moved to lanes 0, 1 first). */
const highF64 = (t: string) =>
  `(f64x2.promote_low_f32x4
     (i8x16.shuffle 8 9 10 11 12 13 14 15 8 9 10 11 12 13 14 15 (local.get $${t}) (local.get $${t})))`;
/** `${to}Lo`, `${to}Hi` = the float64 halves of the f32x4 `value` (through the local `$w`). */
const widen = (value: string, to: string) => `
  (local.set $w ${value})
  (local.set $${to}Lo ${lowF64("w")})
  (local.set $${to}Hi ${highF64("w")})`;
/** The f32x4 of the f64x2 locals `$lo`, `$hi`, each rounded once. */
const narrow = (lo: string, hi: string) =>
  `(i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23
     (f32x4.demote_f64x2_zero (local.get $${lo})) (f32x4.demote_f64x2_zero (local.get $${hi})))`;

const ZERO = "(v128.const i64x2 0 0)";

/**
 * a·b + c over f32x4s: one rounding with `fused` (relaxed SIMD's relaxed_madd, a fused
 * multiply-add where the CPU has FMA: the forward's normalisation is then as accurate as
 * oneDNN's, which the backward's ReLU mask recomputes the same way), else a multiply and an add.
 */
const madd = (fused: boolean, a: string, b: string, c: string) =>
  fused ? `(f32x4.relaxed_madd ${a} ${b} ${c})` : `(f32x4.add (f32x4.mul ${a} ${b}) ${c})`;

// ---- Loop skeletons -----------------------------------------------------------------------

/** The locals of `tiledReduction`, before each function's own. */
const REDUCTION_LOCALS = `
  ${locals("i32", "r rEnd k pa pb rr")}
  ${locals("v128", "s1Lo s1Hi s2Lo s2Hi t xLo xHi vaLo vaHi")}`;

/**
 * The tiled reduction shared by `sums` and `maskedSums`, over [rows, c] views `$a`, `$b`: for
 * each tile of `$tile` rows and each group of four channels k, `setup` loads per-channel
 * values, `row` adds one row's terms to the register accumulators `$s1Lo`…`$s2Hi` (pointers
 * `$pa`, `$pb` at the row's channel group), then the tile's sums are added into s1, s2.
 */
const tiledReduction = (setup: string, row: string) => `
  (local.set $r (local.get $r0))
  (block $done
    (loop $tiles
      (br_if $done (i32.ge_u (local.get $r) (local.get $r1)))
      ;; rEnd = min(r + tile, r1)
      (local.set $rEnd
        (select (i32.add (local.get $r) (local.get $tile)) (local.get $r1)
          (i32.lt_u (i32.add (local.get $r) (local.get $tile)) (local.get $r1))))
      (local.set $k (i32.const 0))
      (loop $channels
        ${setup}
        (local.set $s1Lo ${ZERO})
        (local.set $s1Hi ${ZERO})
        (local.set $s2Lo ${ZERO})
        (local.set $s2Hi ${ZERO})
        ;; pa = a + r·strideA + 4k, pb likewise
        (local.set $pa (i32.add (i32.add (local.get $a) (i32.mul (local.get $r) (local.get $strideA)))
          (i32.shl (local.get $k) (i32.const 2))))
        (local.set $pb (i32.add (i32.add (local.get $b) (i32.mul (local.get $r) (local.get $strideB)))
          (i32.shl (local.get $k) (i32.const 2))))
        (local.set $rr (local.get $r))
        (loop $rows
          ${row}
          (local.set $pa (i32.add (local.get $pa) (local.get $strideA)))
          (local.set $pb (i32.add (local.get $pb) (local.get $strideB)))
          (local.set $rr (i32.add (local.get $rr) (i32.const 1)))
          (br_if $rows (i32.lt_u (local.get $rr) (local.get $rEnd))))
        ;; s1[k..k+3] += s1Lo, s1Hi; s2 likewise
        (v128.store align=1 ${f64At("s1")}
          (f64x2.add (v128.load align=1 ${f64At("s1")}) (local.get $s1Lo)))
        (v128.store offset=16 align=1 ${f64At("s1")}
          (f64x2.add (v128.load offset=16 align=1 ${f64At("s1")}) (local.get $s1Hi)))
        (v128.store align=1 ${f64At("s2")}
          (f64x2.add (v128.load align=1 ${f64At("s2")}) (local.get $s2Lo)))
        (v128.store offset=16 align=1 ${f64At("s2")}
          (f64x2.add (v128.load offset=16 align=1 ${f64At("s2")}) (local.get $s2Hi)))
        (local.set $k (i32.add (local.get $k) (i32.const 4)))
        (br_if $channels (i32.lt_u (local.get $k) (local.get $c))))
      (local.set $r (local.get $rEnd))
      (br $tiles)))`;

/**
 * The element-wise loop shared by `gradApply` and `apply`: for rows r0 ≤ r < r1, each of
 * `pointers` ([base parameter, stride parameter, local]) set to its row, then `body` for each
 * group of four channels k < c, after which every pointer moves on 16 bytes.
 */
function rowsByChannels(pointers: [string, string, string][], body: string): string {
  const rowStarts = pointers.map(([base, stride, p]) =>
    `(local.set $${p} (i32.add (local.get $${base}) (i32.mul (local.get $r) (local.get $${stride}))))`
  ).join("\n      ");
  const steps = pointers.map(([, , p]) =>
    `(local.set $${p} (i32.add (local.get $${p}) (i32.const 16)))`
  ).join("\n        ");
  return `
  (local.set $r (local.get $r0))
  (block $done
    (loop $rows
      (br_if $done (i32.ge_u (local.get $r) (local.get $r1)))
      ${rowStarts}
      (local.set $k (i32.const 0))
      (loop $channels
        ${body}
        ${steps}
        (local.set $k (i32.add (local.get $k) (i32.const 4)))
        (br_if $channels (i32.lt_u (local.get $k) (local.get $c))))
      (local.set $r (i32.add (local.get $r) (i32.const 1)))
      (br $rows)))`;
}

/**
 * A list function `$name(table, count, …params)`: for each of `$count` entries of `fields` i32
 * fields at `$table`, `$e` = the entry's address, then `call` (whose arguments read the entry
 * with `entry`).
 */
const listFunction = (name: string, names: string, fields: number, call: string) => `
(func $${name} (export "${name}") ${params(`table count ${names}`)}
  ${locals("i32", "i e")}
  (local.set $i (i32.const 0))
  (block $done
    (loop $entries
      (br_if $done (i32.ge_u (local.get $i) (local.get $count)))
      (local.set $e (i32.add (local.get $table) (i32.mul (local.get $i) (i32.const ${4 * fields}))))
      ${call}
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $entries))))`;
/** Fields `ks` of the list entry at `$e`. */
const entry = (...ks: number[]) =>
  ks.map((k) => `(i32.load${k === 0 ? "" : ` offset=${4 * k}`} (local.get $e))`).join(" ");

// ---- The functions ------------------------------------------------------------------------

const SUMS_PARAMS = params("a b va vb c strideA strideB r0 r1 s1 s2 tile");
/** `maskedSums`'s parameters (a = dy, b = x, va = mean), both variants. */
const MASKED_SUMS_PARAMS = params("a b va c strideA strideB r0 r1 s1 s2 tile scale shift m32");
/** `gradApply`'s parameters, locals and row pointers, both variants. */
const GRAD_APPLY_PARAMS = params(
  "g x c strideG strideX r0 r1 dx strideDx scale offset ca cb cd addend strideAddend m32",
);
const GRAD_APPLY_LOCALS = locals("i32", "r k pg px pd pa");
const GRAD_APPLY_POINTERS: [string, string, string][] = [
  ["g", "strideG", "pg"],
  ["x", "strideX", "px"],
  ["dx", "strideDx", "pd"],
  ["addend", "strideAddend", "pa"],
];
/** `apply`'s parameters, locals and row pointers, both variants. */
const APPLY_PARAMS = params("x strideX y strideY c r0 r1 mean scale offset floor");
const APPLY_LOCALS = locals("i32", "r k px py");
const APPLY_POINTERS: [string, string, string][] = [["x", "strideX", "px"], ["y", "strideY", "py"]];

function sums(): string {
  const setup = `
    ${f64sInto("va", "vaLo", "vaHi")}
    ${f64sInto("vb", "vbLo", "vbHi")}`;
  const row = `
    ;; x = a[rr, k..k+3] − va, in float64; s1 += x
    (local.set $t (v128.load align=1 (local.get $pa)))
    (local.set $xLo (f64x2.sub ${lowF64("t")} (local.get $vaLo)))
    (local.set $xHi (f64x2.sub ${highF64("t")} (local.get $vaHi)))
    (local.set $s1Lo (f64x2.add (local.get $s1Lo) (local.get $xLo)))
    (local.set $s1Hi (f64x2.add (local.get $s1Hi) (local.get $xHi)))
    ;; s2 += x·(b[rr, k..k+3] − vb)
    (local.set $t (v128.load align=1 (local.get $pb)))
    (local.set $s2Lo (f64x2.add (local.get $s2Lo)
      (f64x2.mul (f64x2.sub ${lowF64("t")} (local.get $vbLo)) (local.get $xLo))))
    (local.set $s2Hi (f64x2.add (local.get $s2Hi)
      (f64x2.mul (f64x2.sub ${highF64("t")} (local.get $vbHi)) (local.get $xHi))))`;
  return `
(func $sums (export "sums") ${SUMS_PARAMS}
  ${REDUCTION_LOCALS} ${locals("v128", "vbLo vbHi")}
  ${tiledReduction(setup, row)})`;
}

function maskedSums(fused: boolean): string {
  const setup = `
    ${f64sInto("va", "vaLo", "vaHi")}
    (local.set $sc ${f32s("scale")})
    (local.set $of ${f32s("shift")})
    (local.set $mu ${f32s("m32")})`;
  const preRelu = madd(
    fused,
    "(f32x4.sub (local.get $t) (local.get $mu))",
    "(local.get $sc)",
    "(local.get $of)",
  );
  const row = `
    ;; t = x; g = dy where (x − m32)·scale + shift > 0
    (local.set $t (v128.load align=1 (local.get $pb)))
    (local.set $g (v128.and (v128.load align=1 (local.get $pa)) (f32x4.gt ${preRelu} ${ZERO})))
    ;; x − mean, in float64
    (local.set $xLo (f64x2.sub ${lowF64("t")} (local.get $vaLo)))
    (local.set $xHi (f64x2.sub ${highF64("t")} (local.get $vaHi)))
    ;; s1 += g, s2 += g·(x − mean)
    (local.set $t ${lowF64("g")})
    (local.set $s1Lo (f64x2.add (local.get $s1Lo) (local.get $t)))
    (local.set $s2Lo (f64x2.add (local.get $s2Lo) (f64x2.mul (local.get $t) (local.get $xLo))))
    (local.set $t ${highF64("g")})
    (local.set $s1Hi (f64x2.add (local.get $s1Hi) (local.get $t)))
    (local.set $s2Hi (f64x2.add (local.get $s2Hi) (f64x2.mul (local.get $t) (local.get $xHi))))`;
  return `
(func $maskedSums (export "maskedSums") ${MASKED_SUMS_PARAMS}
  ${REDUCTION_LOCALS} ${locals("v128", "sc of mu g")}
  ${tiledReduction(setup, row)})`;
}

function gradApply(fused: boolean): string {
  const preRelu = madd(fused, "(local.get $t)", f32s("scale"), f32s("offset"));
  const body = `
    ;; t = x − m32; dx = (g where t·scale + offset > 0)·ca + t·cb + cd + addend
    (local.set $t (f32x4.sub (v128.load align=1 (local.get $px)) ${f32s("m32")}))
    (v128.store align=1 (local.get $pd)
      (f32x4.add
        (f32x4.add
          (f32x4.add
            (f32x4.mul
              (v128.and (v128.load align=1 (local.get $pg)) (f32x4.gt ${preRelu} ${ZERO}))
              ${f32s("ca")})
            (f32x4.mul (local.get $t) ${f32s("cb")}))
          ${f32s("cd")})
        (v128.load align=1 (local.get $pa))))`;
  return `
(func $gradApply (export "gradApply") ${GRAD_APPLY_PARAMS}
  ${GRAD_APPLY_LOCALS} ${locals("v128", "t")}
  ${rowsByChannels(GRAD_APPLY_POINTERS, body)})`;
}

function apply(fused: boolean): string {
  const x = `(v128.load align=1 (local.get $px))`;
  const preRelu = madd(fused, `(f32x4.sub ${x} ${f32s("mean")})`, f32s("scale"), f32s("offset"));
  const body = `
    ;; y = max((x − mean)·scale + offset, floor)
    (v128.store align=1 (local.get $py) (f32x4.max ${preRelu} ${f32s("floor")}))`;
  return `
(func $apply (export "apply") ${APPLY_PARAMS}
  ${APPLY_LOCALS}
  ${rowsByChannels(APPLY_POINTERS, body)})`;
}

/**
 * `maskedSums` in the wide variant: the pre-ReLU value p = (x − m32)·scale + shift in float64
 * (as `applyWide` computes it; no fused multiply-add: the products of float32 values are
 * exact), so the mask is that forward's decision.
 */
function maskedSumsWide(): string {
  const setup = `
    ${f64sInto("va", "vaLo", "vaHi")}
    ${f64sInto("scale", "scLo", "scHi")}
    ${f64sInto("shift", "ofLo", "ofHi")}
    ${f64sInto("m32", "muLo", "muHi")}`;
  const row = `
    ;; t = x; p = (x − m32)·scale + shift; g = dy where p > 0
    (local.set $t (v128.load align=1 (local.get $pb)))
    ${widen("(local.get $t)", "p")}
    (local.set $pLo (f64x2.sub (local.get $pLo) (local.get $muLo)))
    (local.set $pHi (f64x2.sub (local.get $pHi) (local.get $muHi)))
    (local.set $pLo (f64x2.add (f64x2.mul (local.get $pLo) (local.get $scLo)) (local.get $ofLo)))
    (local.set $pHi (f64x2.add (f64x2.mul (local.get $pHi) (local.get $scHi)) (local.get $ofHi)))
    ${widen("(v128.load align=1 (local.get $pa))", "g")}
    (local.set $gLo (v128.and (local.get $gLo) (f64x2.gt (local.get $pLo) ${ZERO})))
    (local.set $gHi (v128.and (local.get $gHi) (f64x2.gt (local.get $pHi) ${ZERO})))
    ;; x − mean (the float64 mean); s1 += g, s2 += g·(x − mean)
    (local.set $xLo (f64x2.sub ${lowF64("t")} (local.get $vaLo)))
    (local.set $xHi (f64x2.sub ${highF64("t")} (local.get $vaHi)))
    (local.set $s1Lo (f64x2.add (local.get $s1Lo) (local.get $gLo)))
    (local.set $s2Lo (f64x2.add (local.get $s2Lo) (f64x2.mul (local.get $gLo) (local.get $xLo))))
    (local.set $s1Hi (f64x2.add (local.get $s1Hi) (local.get $gHi)))
    (local.set $s2Hi (f64x2.add (local.get $s2Hi) (f64x2.mul (local.get $gHi) (local.get $xHi))))`;
  return `
(func $maskedSums (export "maskedSums") ${MASKED_SUMS_PARAMS}
  ${REDUCTION_LOCALS} ${locals("v128", "scLo scHi ofLo ofHi muLo muHi gLo gHi pLo pHi w")}
  ${tiledReduction(setup, row)})`;
}

/**
 * `gradApply` in the wide variant: mask and dx in float64, dx rounded to float32 once. Each
 * per-channel vector passes through `$vLo`, `$vHi`.
 */
function gradApplyWide(): string {
  const body = `
    ;; t = x − m32
    ${widen("(v128.load align=1 (local.get $px))", "t")}
    ${f64sInto("m32", "vLo", "vHi")}
    (local.set $tLo (f64x2.sub (local.get $tLo) (local.get $vLo)))
    (local.set $tHi (f64x2.sub (local.get $tHi) (local.get $vHi)))
    ;; p = t·scale + offset, the pre-ReLU value; g = dy where p > 0
    ${f64sInto("scale", "vLo", "vHi")}
    (local.set $pLo (f64x2.mul (local.get $tLo) (local.get $vLo)))
    (local.set $pHi (f64x2.mul (local.get $tHi) (local.get $vHi)))
    ${f64sInto("offset", "vLo", "vHi")}
    (local.set $pLo (f64x2.add (local.get $pLo) (local.get $vLo)))
    (local.set $pHi (f64x2.add (local.get $pHi) (local.get $vHi)))
    ${widen("(v128.load align=1 (local.get $pg))", "g")}
    (local.set $gLo (v128.and (local.get $gLo) (f64x2.gt (local.get $pLo) ${ZERO})))
    (local.set $gHi (v128.and (local.get $gHi) (f64x2.gt (local.get $pHi) ${ZERO})))
    ;; p = g·ca + t·cb + cd + addend
    ${f64sInto("ca", "vLo", "vHi")}
    (local.set $pLo (f64x2.mul (local.get $gLo) (local.get $vLo)))
    (local.set $pHi (f64x2.mul (local.get $gHi) (local.get $vHi)))
    ${f64sInto("cb", "vLo", "vHi")}
    (local.set $pLo (f64x2.add (f64x2.mul (local.get $tLo) (local.get $vLo)) (local.get $pLo)))
    (local.set $pHi (f64x2.add (f64x2.mul (local.get $tHi) (local.get $vHi)) (local.get $pHi)))
    ${f64sInto("cd", "vLo", "vHi")}
    (local.set $pLo (f64x2.add (local.get $pLo) (local.get $vLo)))
    (local.set $pHi (f64x2.add (local.get $pHi) (local.get $vHi)))
    ${widen("(v128.load align=1 (local.get $pa))", "v")}
    (local.set $pLo (f64x2.add (local.get $pLo) (local.get $vLo)))
    (local.set $pHi (f64x2.add (local.get $pHi) (local.get $vHi)))
    ;; dx = p, rounded once
    (v128.store align=1 (local.get $pd) ${narrow("pLo", "pHi")})`;
  return `
(func $gradApply (export "gradApply") ${GRAD_APPLY_PARAMS}
  ${GRAD_APPLY_LOCALS} ${locals("v128", "w tLo tHi pLo pHi gLo gHi vLo vHi")}
  ${rowsByChannels(GRAD_APPLY_POINTERS, body)})`;
}

/** `apply` in the wide variant: y = max((x − mean)·scale + offset, floor) in float64, rounded once. */
function applyWide(): string {
  const body = `
    ;; t = x, in float64; t = max((t − mean)·scale + offset, floor)
    ${widen("(v128.load align=1 (local.get $px))", "t")}
    ${f64sInto("mean", "vLo", "vHi")}
    (local.set $tLo (f64x2.sub (local.get $tLo) (local.get $vLo)))
    (local.set $tHi (f64x2.sub (local.get $tHi) (local.get $vHi)))
    ${f64sInto("scale", "vLo", "vHi")}
    (local.set $tLo (f64x2.mul (local.get $tLo) (local.get $vLo)))
    (local.set $tHi (f64x2.mul (local.get $tHi) (local.get $vHi)))
    ${f64sInto("offset", "vLo", "vHi")}
    (local.set $tLo (f64x2.add (local.get $tLo) (local.get $vLo)))
    (local.set $tHi (f64x2.add (local.get $tHi) (local.get $vHi)))
    ${f64sInto("floor", "vLo", "vHi")}
    (local.set $tLo (f64x2.max (local.get $tLo) (local.get $vLo)))
    (local.set $tHi (f64x2.max (local.get $tHi) (local.get $vHi)))
    ;; y = t, rounded once
    (v128.store align=1 (local.get $py) ${narrow("tLo", "tHi")})`;
  return `
(func $apply (export "apply") ${APPLY_PARAMS}
  ${APPLY_LOCALS} ${locals("v128", "w tLo tHi vLo vHi")}
  ${rowsByChannels(APPLY_POINTERS, body)})`;
}

/** The list functions: one call of a function per table entry (fields as `LIST_FIELDS`). */
function lists(): string {
  // entry: x, strideX, y, strideY, c, mean, scale, shift, floor
  const apply = `(call $apply ${entry(0, 1, 2, 3, 4)} (local.get $r0) (local.get $r1)
        ${entry(5, 6, 7, 8)})`;
  // entry: a, b, va, vb, c, strideA, strideB, byte offset into s1/s2
  const sums = `(call $sums ${entry(0, 1, 2, 3, 4, 5, 6)} (local.get $r0) (local.get $r1)
        (i32.add (local.get $s1) ${entry(7)}) (i32.add (local.get $s2) ${entry(7)})
        (local.get $tile))`;
  // entry: dy, x, mean64, c, strideDy, strideX, byte offset into s1/s2, scale, shift, m32
  const maskedSums = `(call $maskedSums ${entry(0, 1, 2, 3, 4, 5)} (local.get $r0) (local.get $r1)
        (i32.add (local.get $s1) ${entry(6)}) (i32.add (local.get $s2) ${entry(6)})
        (local.get $tile) ${entry(7, 8, 9)})`;
  // entry: dy, x, c, strideDy, strideX, dx, strideDx, scale, shift, a, b, d, addend,
  // strideAddend, m32
  const gradApply = `(call $gradApply ${entry(0, 1, 2, 3, 4)} (local.get $r0) (local.get $r1)
        ${entry(5, 6, 7, 8, 9, 10, 11, 12, 13, 14)})`;
  const L = LIST_FIELDS;
  return [
    listFunction("applyList", "r0 r1", L.applyList, apply),
    listFunction("sumsList", "r0 r1 s1 s2 tile", L.sumsList, sums),
    listFunction("maskedSumsList", "r0 r1 s1 s2 tile", L.maskedSumsList, maskedSums),
    listFunction("gradApplyList", "r0 r1", L.gradApplyList, gradApply),
  ].join("\n");
}

/**
 * The module's text: imports `env.memory` (shared, 1 page up to 4 GiB, as the threaded wasm
 * build's heap; or unshared, as the single-threaded build's), then the functions (calls and
 * exports go by name).
 */
function moduleText(shared: boolean, { fused, wide }: Variant): string {
  return `(module
(import "env" "memory" (memory 1${shared ? " 65536 shared" : ""}))
${sums()}
${wide ? maskedSumsWide() : maskedSums(fused)}
${wide ? gradApplyWide() : gradApply(fused)}
${wide ? applyWide() : apply(fused)}
${lists()})
`;
}

// ---- Assembly -----------------------------------------------------------------------------

/** The part of wabt's API used here (its index.d.ts omits `validate`'s features argument). */
interface Wabt {
  parseWat(filename: string, text: string, features: Features): WatModule;
}
interface WatModule {
  validate(features: Features): void;
  toBinary(options: Record<never, never>): { buffer: Uint8Array };
  destroy(): void;
}
type Features = { threads: boolean; relaxed_simd: boolean };
/** Shared memory (threads) and relaxed_madd; SIMD is on by default. */
const FEATURES: Features = { threads: true, relaxed_simd: true };

let wabt: Wabt | null = null;

/**
 * Starts wabt (its own wasm module starts asynchronously, ~35 ms): the wasm and native backends
 * await it when they start, so the functions below stay synchronous and a process that never
 * runs them (a PNG conversion, `--help`, the cpu or WebGPU backend) never pays for it.
 */
export async function loadAssembler(): Promise<void> {
  wabt ??= await wabtInit() as unknown as Wabt;
}

const bytesFor = new Map<string, Uint8Array>();

/**
 * The module's bytes: imports `env.memory` (shared, up to 4 GiB, as the threaded wasm build's
 * heap; or unshared, as the single-threaded build's), exports the functions; `fused`: the
 * normalisation's multiply-add as relaxed SIMD's relaxed_madd; `wide`: float64 normalising
 * arithmetic (`Variant`).
 */
export function simdBatchNormModuleBytes(shared = true, fused = true, wide = false): Uint8Array {
  const variant: Variant = { fused: fused && !wide, wide };
  const key = `${shared},${variant.fused},${wide}`;
  const cached = bytesFor.get(key);
  if (cached != null) return cached;
  // A mistake in the text throws here, quoting the line ("simd_batchnorm.wat:line:column").
  if (wabt == null) {
    throw new Error("the SIMD BatchNorm assembler is not loaded: await loadAssembler() first");
  }
  const module = wabt.parseWat("simd_batchnorm.wat", moduleText(shared, variant), FEATURES);
  try {
    module.validate(FEATURES);
    const bytes = module.toBinary({}).buffer;
    bytesFor.set(key, bytes);
    return bytes;
  } finally {
    module.destroy();
  }
}

/** The module's functions (arguments as in the module comment), and the bytes they came from. */
export interface SimdBatchNorm {
  sums(...args: number[]): void;
  maskedSums(...args: number[]): void;
  gradApply(...args: number[]): void;
  apply(...args: number[]): void;
  applyList(...args: number[]): void;
  sumsList(...args: number[]): void;
  maskedSumsList(...args: number[]): void;
  gradApplyList(...args: number[]): void;
  /** The module bytes (for worker threads, which must run the same variant). */
  moduleBytes: Uint8Array;
}

/**
 * The functions bound to `memory` (the wasm backend's heap, shared or not), with relaxed SIMD's
 * fused multiply-add where the engine has it, or (`wide`) float64 normalising arithmetic; null
 * where the engine has no WebAssembly SIMD.
 */
export function simdBatchNorm(memory: WebAssembly.Memory, wide = false): SimdBatchNorm | null {
  const shared = memory.buffer instanceof SharedArrayBuffer;
  for (const fused of wide ? [false] : [true, false]) {
    const moduleBytes = simdBatchNormModuleBytes(shared, fused, wide);
    try {
      const module = new WebAssembly.Module(moduleBytes as BufferSource);
      const instance = new WebAssembly.Instance(module, { env: { memory } });
      return { ...(instance.exports as unknown as SimdBatchNorm), moduleBytes };
    } catch {
      // no relaxed SIMD: the plain variant; no SIMD at all: null
    }
  }
  return null;
}
