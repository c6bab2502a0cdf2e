/**
 * The passes of the native BatchNorm(+ReLU) that oneDNN cannot do in float64, as WebAssembly
 * SIMD functions over the wasm heap itself: float32 loads and stores, float64 accumulation,
 * four channels per step. The module imports the tfjs wasm backend's shared memory, so it works
 * on the tensors where they are, on any thread that instantiates it (row_threads.ts). It is a
 * few hundred bytes, assembled here from opcodes: no toolchain, no binary in the repository.
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
 * @module
 */

// Value types, control flow, locals.
const I32 = 0x7f, V128 = 0x7b;
const BLOCK = 0x02, LOOP = 0x03, BR = 0x0c, BR_IF = 0x0d, END = 0x0b, SELECT = 0x1b, VOID = 0x40;
const GET = 0x20, SET = 0x21;
const I32_CONST = 0x41, I32_LT_U = 0x49, I32_GE_U = 0x4f, I32_ADD = 0x6a, I32_MUL = 0x6c;
const I32_SHL = 0x74;
// Fixed-width SIMD (prefix 0xfd).
const V_LOAD = 0x00, V_STORE = 0x0b, V_CONST = 0x0c, SHUFFLE = 0x0d, V_AND = 0x4e;
const F32X4_GT = 0x44, F32X4_ADD = 0xe4, F32X4_SUB = 0xe5, F32X4_MUL = 0xe6, F32X4_MAX = 0xe9;
const I32_LOAD = 0x28, CALL = 0x10;
const F64X2_PROMOTE_LOW = 0x5f, F64X2_ADD = 0xf0, F64X2_SUB = 0xf1, F64X2_MUL = 0xf2;
const F32X4_DEMOTE_ZERO = 0x5e, F64X2_GT = 0x4a, F64X2_MAX = 0xf5;

function uleb(n: number): number[] {
  const out: number[] = [];
  do {
    let byte = n & 0x7f;
    n >>>= 7;
    if (n !== 0) byte |= 0x80;
    out.push(byte);
  } while (n !== 0);
  return out;
}

/** Signed LEB128, as i32.const takes its operand (64 and up need a second byte). */
function sleb(n: number): number[] {
  const out: number[] = [];
  for (;;) {
    const byte = n & 0x7f;
    n >>= 7;
    if ((n === 0 && (byte & 0x40) === 0) || (n === -1 && (byte & 0x40) !== 0)) {
      out.push(byte);
      return out;
    }
    out.push(byte | 0x80);
  }
}

const vec = (bytes: number[]) => [...uleb(bytes.length), ...bytes];
const section = (id: number, body: number[]) => [id, ...vec(body)];
const name = (s: string) => vec([...new TextEncoder().encode(s)]);

/** A function's parameters (i32) and locals by name, and the instruction helpers over them. */
class Fn {
  readonly index = new Map<string, number>();
  readonly i32Locals: string[];
  readonly v128Locals: string[];

  constructor(readonly params: string[], i32Locals: string[], v128Locals: string[]) {
    [...params, ...i32Locals, ...v128Locals].forEach((n, i) => this.index.set(n, i));
    this.i32Locals = i32Locals;
    this.v128Locals = v128Locals;
  }

  get = (n: string) => [GET, this.#at(n)];
  set = (n: string) => [SET, this.#at(n)];

  #at(n: string): number {
    const i = this.index.get(n);
    if (i == null) throw new Error(`simd_batchnorm: no local ${n}`);
    return i;
  }

  /** The encoded body: local declarations, then `code`, then `end`. */
  body(code: number[]): number[] {
    const locals = [
      ...uleb(2),
      ...uleb(this.i32Locals.length),
      I32,
      ...uleb(this.v128Locals.length),
      V128,
    ];
    return vec([...locals, ...code, END]);
  }
}

const simd = (op: number) => [0xfd, ...uleb(op)];
// memarg: alignment exponent 0 (nothing promised), then the offset.
const load = (offset = 0) => [...simd(V_LOAD), 0, ...uleb(offset)];
const store = (offset = 0) => [...simd(V_STORE), 0, ...uleb(offset)];
const zero = [...simd(V_CONST), ...new Array(16).fill(0)];
/** Lanes 2, 3 of a f32x4 moved to lanes 0, 1, for the second promote. */
const high = [...simd(SHUFFLE), 8, 9, 10, 11, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15];
const promote = simd(F64X2_PROMOTE_LOW);
const dadd = simd(F64X2_ADD), dsub = simd(F64X2_SUB), dmul = simd(F64X2_MUL);
const fadd = simd(F32X4_ADD), fsub = simd(F32X4_SUB), fmul = simd(F32X4_MUL);
/** f32x4.relaxed_madd (relaxed SIMD): a·b + c, fused where the CPU has FMA. */
const RELAXED_MADD = 0x105;

/**
 * a·b + c over f32x4s: one rounding with `fused` (relaxed_madd: the forward's normalisation is
 * then as accurate as oneDNN's, which the backward's ReLU mask recomputes the same way), else a
 * multiply and an add.
 */
const madd = (a: number[], b: number[], c: number[], fused: boolean) =>
  fused ? [...a, ...b, ...c, ...simd(RELAXED_MADD)] : [...a, ...b, ...fmul, ...c, ...fadd];
const fgt = simd(F32X4_GT), vand = simd(V_AND);
const dgt = simd(F64X2_GT), dmax = simd(F64X2_MAX), demote = simd(F32X4_DEMOTE_ZERO);
/** [a0, a1, b0, b1] of two f32x4s a, b whose lanes 0, 1 hold values (demote's results). */
const joinLow = [...simd(SHUFFLE), 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23];

/**
 * The wide (float64) variant's helper: lo, hi = the two float64 halves of the f32x4 that `v`
 * leaves on the stack (through the local `tmp`).
 */
const widen = (f: Fn, v: number[], tmp: string, lo: string, hi: string) => [
  ...v,
  ...f.set(tmp),
  ...f.get(tmp),
  ...promote,
  ...f.set(lo),
  ...f.get(tmp),
  ...f.get(tmp),
  ...high,
  ...promote,
  ...f.set(hi),
];
const i32 = (v: number) => [I32_CONST, ...sleb(v)];

/** k·shift bytes from `base`: the address of channel k in a vector of 2^shift-byte values. */
const at = (f: Fn, base: string, shift: number) => [
  ...f.get(base),
  ...f.get("k"),
  ...i32(shift),
  I32_SHL,
  I32_ADD,
];

/**
 * The tiled reduction skeleton shared by `sums` and `maskedSums`: for each tile of rows and each
 * group of four channels, `setup` loads per-channel values, `row` adds one row's terms to the
 * register accumulators (pointers pa, pb at the row's channel group), then the tile's sums are
 * added into s1, s2.
 */
function reduction(f: Fn, strideA: string, strideB: string, setup: number[], row: number[]) {
  const addInto = (p: string, off: number, v: string) => [
    ...at(f, p, 3),
    ...at(f, p, 3),
    ...load(off),
    ...f.get(v),
    ...dadd,
    ...store(off),
  ];
  const rowPointer = (base: string, stride: string, p: string) => [
    ...f.get(base),
    ...f.get("r"),
    ...f.get(stride),
    I32_MUL,
    I32_ADD,
    ...f.get("k"),
    ...i32(2),
    I32_SHL,
    I32_ADD,
    ...f.set(p),
  ];
  return [
    ...f.get("r0"),
    ...f.set("r"),
    BLOCK,
    VOID,
    LOOP,
    VOID,
    ...f.get("r"),
    ...f.get("r1"),
    I32_GE_U,
    BR_IF,
    1,
    // rEnd = min(r + tile, r1)
    ...f.get("r"),
    ...f.get("tile"),
    I32_ADD,
    ...f.get("r1"),
    ...f.get("r"),
    ...f.get("tile"),
    I32_ADD,
    ...f.get("r1"),
    I32_LT_U,
    SELECT,
    ...f.set("rEnd"),
    ...i32(0),
    ...f.set("k"),
    LOOP,
    VOID,
    ...setup,
    ...zero,
    ...f.set("s1Lo"),
    ...zero,
    ...f.set("s1Hi"),
    ...zero,
    ...f.set("s2Lo"),
    ...zero,
    ...f.set("s2Hi"),
    // pa = a + r·strideA + k·4, pb likewise
    ...rowPointer("a", strideA, "pa"),
    ...rowPointer("b", strideB, "pb"),
    ...f.get("r"),
    ...f.set("rr"),
    LOOP,
    VOID,
    ...row,
    ...f.get("pa"),
    ...f.get(strideA),
    I32_ADD,
    ...f.set("pa"),
    ...f.get("pb"),
    ...f.get(strideB),
    I32_ADD,
    ...f.set("pb"),
    ...f.get("rr"),
    ...i32(1),
    I32_ADD,
    ...f.set("rr"),
    ...f.get("rr"),
    ...f.get("rEnd"),
    I32_LT_U,
    BR_IF,
    0,
    END,
    ...addInto("s1", 0, "s1Lo"),
    ...addInto("s1", 16, "s1Hi"),
    ...addInto("s2", 0, "s2Lo"),
    ...addInto("s2", 16, "s2Hi"),
    ...f.get("k"),
    ...i32(4),
    I32_ADD,
    ...f.set("k"),
    ...f.get("k"),
    ...f.get("c"),
    I32_LT_U,
    BR_IF,
    0,
    END,
    ...f.get("rEnd"),
    ...f.set("r"),
    BR,
    0,
    END,
    END,
  ];
}

const REDUCTION_I32 = ["r", "rEnd", "k", "pa", "pb", "rr"];
const REDUCTION_V128 = ["s1Lo", "s1Hi", "s2Lo", "s2Hi", "t", "xLo", "xHi", "vaLo", "vaHi"];

/** acc += v, both f64x2 locals or expressions. */
const accumulate = (
  f: Fn,
  acc: string,
  v: number[],
) => [...f.get(acc), ...v, ...dadd, ...f.set(acc)];

/** local = the vector at channel k of `base` (2^shift-byte values), at byte `offset`. */
const loadInto = (f: Fn, base: string, shift: number, offset: number, local: string) => [
  ...at(f, base, shift),
  ...load(offset),
  ...f.set(local),
];

/** lo, hi = the two float64 halves of the f32x4 local `t`, less shiftLo, shiftHi. */
const centred = (f: Fn, t: string, shiftLo: string, shiftHi: string, lo: string, hi: string) => [
  ...f.get(t),
  ...promote,
  ...f.get(shiftLo),
  ...dsub,
  ...f.set(lo),
  ...f.get(t),
  ...f.get(t),
  ...high,
  ...promote,
  ...f.get(shiftHi),
  ...dsub,
  ...f.set(hi),
];

function sumsFn(): number[] {
  const f = new Fn(
    ["a", "b", "va", "vb", "c", "strideA", "strideB", "r0", "r1", "s1", "s2", "tile"],
    REDUCTION_I32,
    [...REDUCTION_V128, "vbLo", "vbHi"],
  );
  const setup = [
    ...loadInto(f, "va", 3, 0, "vaLo"),
    ...loadInto(f, "va", 3, 16, "vaHi"),
    ...loadInto(f, "vb", 3, 0, "vbLo"),
    ...loadInto(f, "vb", 3, 16, "vbHi"),
  ];
  const row = [
    // x = promote(a[rr, k..k+3]) − va
    ...f.get("pa"),
    ...load(0),
    ...f.set("t"),
    ...centred(f, "t", "vaLo", "vaHi", "xLo", "xHi"),
    ...accumulate(f, "s1Lo", f.get("xLo")),
    ...accumulate(f, "s1Hi", f.get("xHi")),
    // s2 += x · (promote(b[rr, k..k+3]) − vb)
    ...f.get("pb"),
    ...load(0),
    ...f.set("t"),
    ...accumulate(f, "s2Lo", [
      ...f.get("t"),
      ...promote,
      ...f.get("vbLo"),
      ...dsub,
      ...f.get("xLo"),
      ...dmul,
    ]),
    ...accumulate(f, "s2Hi", [
      ...f.get("t"),
      ...f.get("t"),
      ...high,
      ...promote,
      ...f.get("vbHi"),
      ...dsub,
      ...f.get("xHi"),
      ...dmul,
    ]),
  ];
  return f.body(reduction(f, "strideA", "strideB", setup, row));
}

/** The parameters of `maskedSums` (a = dy, b = x, va = mean), both variants. */
const MASKED_SUMS_PARAMS = [
  "a",
  "b",
  "va",
  "c",
  "strideA",
  "strideB",
  "r0",
  "r1",
  "s1",
  "s2",
  "tile",
  "scale",
  "shift",
  "m32",
];
/** The parameters of `gradApply`, and its rows' pointers ([base, stride, local]), both variants. */
const GRAD_APPLY_PARAMS = [
  "g",
  "x",
  "c",
  "strideG",
  "strideX",
  "r0",
  "r1",
  "dx",
  "strideDx",
  "scale",
  "offset",
  "ca",
  "cb",
  "cd",
  "addend",
  "strideAddend",
  "m32",
];
const GRAD_APPLY_POINTERS: [string, string, string][] = [
  ["g", "strideG", "pg"],
  ["x", "strideX", "px"],
  ["dx", "strideDx", "pd"],
  ["addend", "strideAddend", "pa"],
];
/** The parameters of `apply`, and its rows' pointers, both variants. */
const APPLY_PARAMS = [
  "x",
  "strideX",
  "y",
  "strideY",
  "c",
  "r0",
  "r1",
  "mean",
  "scale",
  "offset",
  "floor",
];
const APPLY_POINTERS: [string, string, string][] = [["x", "strideX", "px"], ["y", "strideY", "py"]];

function maskedSumsFn(fused: boolean): number[] {
  // a = dy, b = x, va = mean.
  const f = new Fn(
    MASKED_SUMS_PARAMS,
    REDUCTION_I32,
    [...REDUCTION_V128, "sc", "of", "mu", "g"],
  );
  const setup = [
    ...loadInto(f, "va", 3, 0, "vaLo"),
    ...loadInto(f, "va", 3, 16, "vaHi"),
    ...loadInto(f, "scale", 2, 0, "sc"),
    ...loadInto(f, "shift", 2, 0, "of"),
    ...loadInto(f, "m32", 2, 0, "mu"),
  ];
  const row = [
    // t = x; g = dy & ((x − mean)·scale + shift > 0)
    ...f.get("pb"),
    ...load(0),
    ...f.set("t"),
    ...f.get("pa"),
    ...load(0),
    ...madd([...f.get("t"), ...f.get("mu"), ...fsub], f.get("sc"), f.get("of"), fused),
    ...zero,
    ...fgt,
    ...vand,
    ...f.set("g"),
    // x − mean, in float64
    ...centred(f, "t", "vaLo", "vaHi", "xLo", "xHi"),
    // s1 += g, s2 += g·(x − mean)
    ...f.get("g"),
    ...promote,
    ...f.set("t"),
    ...accumulate(f, "s1Lo", f.get("t")),
    ...accumulate(f, "s2Lo", [...f.get("t"), ...f.get("xLo"), ...dmul]),
    ...f.get("g"),
    ...f.get("g"),
    ...high,
    ...promote,
    ...f.set("t"),
    ...accumulate(f, "s1Hi", f.get("t")),
    ...accumulate(f, "s2Hi", [...f.get("t"), ...f.get("xHi"), ...dmul]),
  ];
  return f.body(reduction(f, "strideA", "strideB", setup, row));
}

/**
 * The element-wise skeleton shared by `gradApply` and `apply`: for rows r0 ≤ r < r1, each of
 * `pointers` ([base parameter, stride parameter, local]) set to its row, then `body` for each
 * group of four channels k < c, after which every pointer moves on 16 bytes.
 */
function elementwise(f: Fn, pointers: [string, string, string][], body: number[]): number[] {
  const rowStart = ([base, stride, p]: [string, string, string]) => [
    ...f.get(base),
    ...f.get("r"),
    ...f.get(stride),
    I32_MUL,
    I32_ADD,
    ...f.set(p),
  ];
  const step = ([, , p]: [string, string, string]) => [
    ...f.get(p),
    ...i32(16),
    I32_ADD,
    ...f.set(p),
  ];
  return [
    ...f.get("r0"),
    ...f.set("r"),
    BLOCK,
    VOID,
    LOOP,
    VOID,
    ...f.get("r"),
    ...f.get("r1"),
    I32_GE_U,
    BR_IF,
    1,
    ...pointers.flatMap(rowStart),
    ...i32(0),
    ...f.set("k"),
    LOOP,
    VOID,
    ...body,
    ...pointers.flatMap(step),
    ...f.get("k"),
    ...i32(4),
    I32_ADD,
    ...f.set("k"),
    ...f.get("k"),
    ...f.get("c"),
    I32_LT_U,
    BR_IF,
    0,
    END,
    ...f.get("r"),
    ...i32(1),
    I32_ADD,
    ...f.set("r"),
    BR,
    0,
    END,
    END,
  ];
}

function gradApplyFn(fused: boolean): number[] {
  const f = new Fn(
    GRAD_APPLY_PARAMS,
    ["r", "k", "pg", "px", "pd", "pa"],
    ["t"],
  );
  const vector = (v: string) => [...at(f, v, 2), ...load(0)];
  return f.body(elementwise(f, GRAD_APPLY_POINTERS, [
    // t = x − mean; dx = (g & (t·scale + shift > 0))·a + t·b + d + addend
    ...f.get("px"),
    ...load(0),
    ...vector("m32"),
    ...fsub,
    ...f.set("t"),
    ...f.get("pd"),
    ...f.get("pg"),
    ...load(0),
    ...madd(f.get("t"), vector("scale"), vector("offset"), fused),
    ...zero,
    ...fgt,
    ...vand,
    ...vector("ca"),
    ...fmul,
    ...f.get("t"),
    ...vector("cb"),
    ...fmul,
    ...fadd,
    ...vector("cd"),
    ...fadd,
    ...f.get("pa"),
    ...load(0),
    ...fadd,
    ...store(0),
  ]));
}

function applyFn(fused: boolean): number[] {
  const f = new Fn(
    APPLY_PARAMS,
    ["r", "k", "px", "py"],
    [],
  );
  const vector = (v: string) => [...at(f, v, 2), ...load(0)];
  return f.body(elementwise(f, APPLY_POINTERS, [
    // y = max((x − mean)·scale + offset, floor)
    ...f.get("py"),
    ...madd(
      [...f.get("px"), ...load(0), ...vector("mean"), ...fsub],
      vector("scale"),
      vector("offset"),
      fused,
    ),
    ...vector("floor"),
    ...simd(F32X4_MAX),
    ...store(0),
  ]));
}

/** v = a·b + c over f64x2 locals (no fused multiply-add: products of float32 values are exact). */
const dmaddInto = (f: Fn, v: string, a: string, b: string, c: string) => [
  ...f.get(a),
  ...f.get(b),
  ...dmul,
  ...f.get(c),
  ...dadd,
  ...f.set(v),
];
/** v = a·b over f64x2 locals. */
const dmulInto = (f: Fn, v: string, a: string, b: string) => [
  ...f.get(a),
  ...f.get(b),
  ...dmul,
  ...f.set(v),
];
/** v = v ∘ a over f64x2 locals, ∘ one of dadd, dsub, dmul, dmax. */
const dupdate = (f: Fn, v: string, op: number[], a: string) => [
  ...f.get(v),
  ...f.get(a),
  ...op,
  ...f.set(v),
];
/** g = g where p > 0, else 0 (f64x2 locals). */
const dmask = (f: Fn, g: string, p: string) => [
  ...f.get(g),
  ...f.get(p),
  ...zero,
  ...dgt,
  ...vand,
  ...f.set(g),
];
/** The f32x4 of two f64x2 locals, rounded once, stored at the address left on the stack. */
const narrowStore = (f: Fn, lo: string, hi: string) => [
  ...f.get(lo),
  ...demote,
  ...f.get(hi),
  ...demote,
  ...joinLow,
  ...store(0),
];

/**
 * `maskedSums` in the wide variant: the pre-ReLU value (x − m32)·scale + shift in float64 (as
 * `applyWide` computes it), so the mask is that forward's decision.
 */
function maskedSumsWideFn(): number[] {
  const f = new Fn(
    MASKED_SUMS_PARAMS,
    REDUCTION_I32,
    [
      ...REDUCTION_V128,
      "scLo",
      "scHi",
      "ofLo",
      "ofHi",
      "muLo",
      "muHi",
      "gLo",
      "gHi",
      "pLo",
      "pHi",
      "w",
    ],
  );
  const halves = (v: string, lo: string, hi: string) => [
    ...loadInto(f, v, 3, 0, lo),
    ...loadInto(f, v, 3, 16, hi),
  ];
  const setup = [
    ...halves("va", "vaLo", "vaHi"),
    ...halves("scale", "scLo", "scHi"),
    ...halves("shift", "ofLo", "ofHi"),
    ...halves("m32", "muLo", "muHi"),
  ];
  const row = [
    // p = (x − m32)·scale + shift, g = dy where p > 0
    ...f.get("pb"),
    ...load(0),
    ...f.set("t"),
    ...widen(f, f.get("t"), "w", "pLo", "pHi"),
    ...dupdate(f, "pLo", dsub, "muLo"),
    ...dupdate(f, "pHi", dsub, "muHi"),
    ...dmaddInto(f, "pLo", "pLo", "scLo", "ofLo"),
    ...dmaddInto(f, "pHi", "pHi", "scHi", "ofHi"),
    ...widen(f, [...f.get("pa"), ...load(0)], "w", "gLo", "gHi"),
    ...dmask(f, "gLo", "pLo"),
    ...dmask(f, "gHi", "pHi"),
    // x − mean (float64 mean); s1 += g, s2 += g·(x − mean)
    ...centred(f, "t", "vaLo", "vaHi", "xLo", "xHi"),
    ...accumulate(f, "s1Lo", f.get("gLo")),
    ...accumulate(f, "s2Lo", [...f.get("gLo"), ...f.get("xLo"), ...dmul]),
    ...accumulate(f, "s1Hi", f.get("gHi")),
    ...accumulate(f, "s2Hi", [...f.get("gHi"), ...f.get("xHi"), ...dmul]),
  ];
  return f.body(reduction(f, "strideA", "strideB", setup, row));
}

/** `gradApply` in the wide variant: mask and dx in float64, dx rounded to float32 once. */
function gradApplyWideFn(): number[] {
  const f = new Fn(
    GRAD_APPLY_PARAMS,
    ["r", "k", "pg", "px", "pd", "pa"],
    ["w", "tLo", "tHi", "pLo", "pHi", "gLo", "gHi", "vLo", "vHi"],
  );
  /** vLo, vHi = channels k..k+3 of the float64 vector `v`; then `lo`, `hi` of each half. */
  const withVector = (v: string, lo: number[], hi: number[]) => [
    ...loadInto(f, v, 3, 0, "vLo"),
    ...loadInto(f, v, 3, 16, "vHi"),
    ...lo,
    ...hi,
  ];
  const both = (make: (lo: boolean) => number[]) => [make(true), make(false)] as const;
  const L = (lo: boolean, n: string) => `${n}${lo ? "Lo" : "Hi"}`;
  return f.body(elementwise(f, GRAD_APPLY_POINTERS, [
    // t = x − m32
    ...widen(f, [...f.get("px"), ...load(0)], "w", "tLo", "tHi"),
    ...withVector("m32", ...both((lo) => dupdate(f, L(lo, "t"), dsub, L(lo, "v")))),
    // p = t·scale + offset, the pre-ReLU value; g = dy where p > 0
    ...withVector(
      "scale",
      ...both((lo) => dmulInto(f, L(lo, "p"), L(lo, "t"), L(lo, "v"))),
    ),
    ...withVector("offset", ...both((lo) => dupdate(f, L(lo, "p"), dadd, L(lo, "v")))),
    ...widen(f, [...f.get("pg"), ...load(0)], "w", "gLo", "gHi"),
    ...dmask(f, "gLo", "pLo"),
    ...dmask(f, "gHi", "pHi"),
    // dx = g·a + t·b + d + addend
    ...withVector("ca", ...both((lo) => dmulInto(f, L(lo, "p"), L(lo, "g"), L(lo, "v")))),
    ...withVector(
      "cb",
      ...both((lo) => dmaddInto(f, L(lo, "p"), L(lo, "t"), L(lo, "v"), L(lo, "p"))),
    ),
    ...withVector("cd", ...both((lo) => dupdate(f, L(lo, "p"), dadd, L(lo, "v")))),
    ...widen(f, [...f.get("pa"), ...load(0)], "w", "vLo", "vHi"),
    ...dupdate(f, "pLo", dadd, "vLo"),
    ...dupdate(f, "pHi", dadd, "vHi"),
    ...f.get("pd"),
    ...narrowStore(f, "pLo", "pHi"),
  ]));
}

/** `apply` in the wide variant: y = max((x − mean)·scale + offset, floor) in float64, rounded once. */
function applyWideFn(): number[] {
  const f = new Fn(
    APPLY_PARAMS,
    ["r", "k", "px", "py"],
    ["w", "tLo", "tHi", "vLo", "vHi"],
  );
  const update = (v: string, op: number[]) => [
    ...loadInto(f, v, 3, 0, "vLo"),
    ...loadInto(f, v, 3, 16, "vHi"),
    ...dupdate(f, "tLo", op, "vLo"),
    ...dupdate(f, "tHi", op, "vHi"),
  ];
  return f.body(elementwise(f, APPLY_POINTERS, [
    ...widen(f, [...f.get("px"), ...load(0)], "w", "tLo", "tHi"),
    ...update("mean", dsub),
    ...update("scale", dmul),
    ...update("offset", dadd),
    ...update("floor", dmax),
    ...f.get("py"),
    ...narrowStore(f, "tLo", "tHi"),
  ]));
}

/**
 * A list function: for each of `count` entries of i32 fields at `table` (`fields` per entry),
 * calls function `callee` with `args`, each a field of the entry (a number), one of the list
 * call's own parameters (a name), or a parameter plus a field ([name, field]: a per-thread
 * base address plus the entry's offset into it). One call, so one thread hand-off, for the
 * many inputs of a concatenation.
 */
function listFn(
  callee: number,
  fields: number,
  params: string[],
  args: (number | string | [string, number])[],
): number[] {
  const f = new Fn(["table", "count", ...params], ["i", "e"], []);
  const field = (k: number) => [...f.get("e"), I32_LOAD, 2, ...uleb(4 * k)];
  const arg = (a: number | string | [string, number]) =>
    typeof a === "number" ? field(a) : typeof a === "string" ? f.get(a) : [
      ...f.get(a[0]),
      ...field(a[1]),
      I32_ADD,
    ];
  return f.body([
    ...i32(0),
    ...f.set("i"),
    BLOCK,
    VOID,
    LOOP,
    VOID,
    ...f.get("i"),
    ...f.get("count"),
    I32_GE_U,
    BR_IF,
    1,
    ...f.get("table"),
    ...f.get("i"),
    ...i32(4 * fields),
    I32_MUL,
    I32_ADD,
    ...f.set("e"),
    ...args.flatMap(arg),
    CALL,
    ...uleb(callee),
    ...f.get("i"),
    ...i32(1),
    I32_ADD,
    ...f.set("i"),
    BR,
    0,
    END,
    END,
  ]);
}

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

/** The exported functions, in order, with their parameter counts. */
const FUNCTIONS: [string, (v: Variant) => number[], number][] = [
  ["sums", sumsFn, 12],
  ["maskedSums", (v) => v.wide ? maskedSumsWideFn() : maskedSumsFn(v.fused), 14],
  ["gradApply", (v) => v.wide ? gradApplyWideFn() : gradApplyFn(v.fused), 17],
  ["apply", (v) => v.wide ? applyWideFn() : applyFn(v.fused), 11],
  // entry: x, strideX, y, strideY, c, mean, scale, shift, floor
  [
    "applyList",
    () => listFn(3, LIST_FIELDS.applyList, ["r0", "r1"], [0, 1, 2, 3, 4, "r0", "r1", 5, 6, 7, 8]),
    4,
  ],
  // entry: a, b, va, vb, c, strideA, strideB, byte offset into s1/s2
  [
    "sumsList",
    () =>
      listFn(0, LIST_FIELDS.sumsList, ["r0", "r1", "s1", "s2", "tile"], [
        0,
        1,
        2,
        3,
        4,
        5,
        6,
        "r0",
        "r1",
        ["s1", 7],
        ["s2", 7],
        "tile",
      ]),
    7,
  ],
  // entry: dy, x, mean64, c, strideDy, strideX, byte offset into s1/s2, scale, shift, m32
  [
    "maskedSumsList",
    () =>
      listFn(1, LIST_FIELDS.maskedSumsList, ["r0", "r1", "s1", "s2", "tile"], [
        0,
        1,
        2,
        3,
        4,
        5,
        "r0",
        "r1",
        ["s1", 6],
        ["s2", 6],
        "tile",
        7,
        8,
        9,
      ]),
    7,
  ],
  // entry: dy, x, c, strideDy, strideX, dx, strideDx, scale, shift, a, b, d, addend,
  // strideAddend, m32
  [
    "gradApplyList",
    () =>
      listFn(2, LIST_FIELDS.gradApplyList, ["r0", "r1"], [
        0,
        1,
        2,
        3,
        4,
        "r0",
        "r1",
        5,
        6,
        7,
        8,
        9,
        10,
        11,
        12,
        13,
        14,
      ]),
    4,
  ],
];

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
  const types = section(1, [
    ...uleb(FUNCTIONS.length),
    ...FUNCTIONS.flatMap(([, , n]) => [0x60, ...vec(new Array(n).fill(I32)), 0]),
  ]);
  // Import kind 2 (memory); limits flag 3: shared with a maximum (1 page up to 65,536), 0: a
  // minimum only (1 page).
  const limits = shared ? [3, 1, ...uleb(65536)] : [0, 1];
  const imports = section(2, [1, ...name("env"), ...name("memory"), 2, ...limits]);
  const funcs = section(3, [...uleb(FUNCTIONS.length), ...FUNCTIONS.map((_, i) => i)]);
  const exports = section(7, [
    ...uleb(FUNCTIONS.length),
    ...FUNCTIONS.flatMap(([n], i) => [...name(n), 0, i]),
  ]);
  const code = section(10, [
    ...uleb(FUNCTIONS.length),
    ...FUNCTIONS.flatMap(([, make]) => make(variant)),
  ]);
  const bytes = new Uint8Array([
    ...[0x00, 0x61, 0x73, 0x6d, 1, 0, 0, 0],
    ...types,
    ...imports,
    ...funcs,
    ...exports,
    ...code,
  ]);
  bytesFor.set(key, bytes);
  return bytes;
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
    try {
      const moduleBytes = simdBatchNormModuleBytes(shared, fused, wide);
      const module = new WebAssembly.Module(moduleBytes as BufferSource);
      const instance = new WebAssembly.Instance(module, { env: { memory } });
      return { ...(instance.exports as unknown as SimdBatchNorm), moduleBytes };
    } catch {
      // no relaxed SIMD: the plain variant; no SIMD at all: null
    }
  }
  return null;
}
