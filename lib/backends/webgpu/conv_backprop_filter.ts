/**
 * `Conv2DBackpropFilter` for WebGPU as a tiled implicit GEMM. In NHWC the filter gradient is
 * dW[K, Co] = Aᵀ·dY with A the im2col matrix of x ([M, K], M = N·OH·OW, K = KH·KW·Ci, formed on
 * the fly while loading tiles, never stored; for a 1×1, stride-1, unpadded filter A is x itself)
 * and dY the output gradient as [M, Co]. tfjs 4.22's kernel gives each weight one thread that
 * loops serially over all of M with strided reads; here a workgroup computes a 64×32 tile of dW
 * from shared-memory tiles, and M is split across workgroups (split-K) so that even a 147×64
 * stem filter keeps the GPU busy. Each split writes a partial dW; a second dispatch sums the
 * partials in order (blocked summation: a sequential sum over at most `chunk` rows, then over
 * the splits).
 *
 * 1×1 filters take this path too, not tfjs's matrix product: for xᵀ·dy with M = 64·56·56 rows
 * and a 256×128 result, tfjs picks its 32×32-tile program (split-K only when the result has at
 * most 8 such tiles), i.e. 32 workgroups of 64 threads each looping over 200,704 rows, a few
 * percent of a large GPU's threads.
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { fallback } from "../kernel_registry.ts";
import type { Program, Uniform, WebGPUBackendInternals } from "./program.ts";

/** Tile of dW rows (K) and columns (Co) per workgroup, and rows of M per shared-memory step. */
const TK = 64, TC = 32, RT = 16;
/**
 * Threads per workgroup: each computes 4×4 adjacent outputs (dW rows k0+4·tk…+3, columns
 * c0+4·tc…+3), reading a vec4 of each tile per row of M: 2 shared-memory reads per 16
 * multiply-adds.
 */
const THREADS = (TK / 4) * (TC / 4);
/** Workgroups worth filling the GPU with; M is split until the grid has about this many. */
const TARGET_WORKGROUPS = 1024;
/** Fewest rows of M per split (below this the partial sums cost more than they save). */
const MIN_CHUNK = 512;

class FilterGemmProgram implements Program {
  variableNames = ["x", "dy"];
  outputShape: number[];
  shaderKey: string;
  dispatchLayout = { x: [2], y: [1], z: [0] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number] = [TC / 4, TK / 4, 1];
  uniforms = "M : i32, K : i32, Co : i32, Ci : i32, KW : i32, H : i32, W : i32, OH : i32, " +
    "OW : i32, stride : vec2<i32>, pad : vec2<i32>, chunk : i32,";

  /** `pointwise`: a 1×1, stride-1, unpadded filter, whose A is x as [M, Ci] (no im2col). */
  constructor(splits: number, k: number, co: number, readonly pointwise: boolean) {
    this.outputShape = [splits, k, co];
    this.dispatch = [Math.ceil(co / TC), Math.ceil(k / TK), splits];
    this.shaderKey = `cxrConv2DBackpropFilterGemm_${pointwise}`;
  }

  /** Threads 0..RT-1 decode the step's rows into `rows`, then the workgroup waits. */
  private decodeRows(): string {
    return `if (t < ${RT}) {
            let r = r0 + t;
            let b = r / ohw;
            let oy = (r - b * ohw) / uniforms.OW;
            let ox = r - b * ohw - oy * uniforms.OW;
            rows[t] = vec3<i32>(b * uniforms.H, oy * uniforms.stride.x, ox * uniforms.stride.y);
          }
          workgroupBarrier();`;
  }

  /** The statement setting `a` to A[r, ka] (r < rEnd and ka < K are checked by the caller). */
  private loadA(): string {
    if (this.pointwise) return "a = x[r * uniforms.Ci + ka];";
    return `let row = rows[rr];
              let iy = row.y + offY;
              let ix = row.z + offX;
              if (iy >= 0 && iy < uniforms.H && ix >= 0 && ix < uniforms.W) {
                a = x[((row.x + iy) * uniforms.W + ix) * uniforms.Ci + ci];
              }`;
  }

  getUserCode(): string {
    return `
      var<workgroup> As : array<array<vec4<f32>, ${TK / 4}>, ${RT}>;
      var<workgroup> Bs : array<array<vec4<f32>, ${TC / 4}>, ${RT}>;
      // Per row of the step: (b·H, oy·stride, ox·stride) of its output pixel, decoded once.
      var<workgroup> rows : array<vec3<i32>, ${RT}>;

      fn main() {
        let tc = i32(localId.x);
        let tk = i32(localId.y);
        let t = i32(localIndex);
        let c0 = i32(workgroupId.x) * ${TC};
        let k0 = i32(workgroupId.y) * ${TK};
        let split = i32(workgroupId.z);
        let rBegin = split * uniforms.chunk;
        let rEnd = min(rBegin + uniforms.chunk, uniforms.M);
        // Each thread loads one column of the A tile (a fixed filter tap k: its kh, kw, ci are
        // decoded once) and one column of the B tile, on every ${THREADS / TK}th / ${
      THREADS / TC
    }th row.
        let kk = t % ${TK};
        let ka = k0 + kk;
        let kwci = uniforms.KW * uniforms.Ci;
        let kh = ka / kwci;
        let kw = (ka - kh * kwci) / uniforms.Ci;
        let ci = ka - kh * kwci - kw * uniforms.Ci;
        let kIn = ka < uniforms.K;
        let offY = kh - uniforms.pad.x;
        let offX = kw - uniforms.pad.y;
        let rA = t / ${TK};
        let cc = t % ${TC};
        let cb = c0 + cc;
        let rB = t / ${TC};
        let ohw = uniforms.OH * uniforms.OW;
        var acc : array<vec4<f32>, 4>; // acc[i][j]: dW[k0 + 4·tk + i, c0 + 4·tc + j]
        for (var r0 = rBegin; r0 < rEnd; r0 = r0 + ${RT}) {
          ${this.pointwise ? "" : this.decodeRows()}
          for (var q = 0; q < ${(RT * TK) / THREADS}; q = q + 1) {
            // A[r, k] = x at the input pixel that output row r reads through filter tap k.
            let rr = rA + q * ${THREADS / TK};
            let r = r0 + rr;
            var a = 0.0;
            if (kIn && r < rEnd) {
              ${this.loadA()}
            }
            As[rr][kk / 4][kk % 4] = a;
          }
          for (var q = 0; q < ${(RT * TC) / THREADS}; q = q + 1) {
            let rr = rB + q * ${THREADS / TC};
            let r = r0 + rr;
            var v = 0.0;
            if (r < rEnd && cb < uniforms.Co) { v = dy[r * uniforms.Co + cb]; }
            Bs[rr][cc / 4][cc % 4] = v;
          }
          workgroupBarrier();
          for (var rr = 0; rr < ${RT}; rr = rr + 1) {
            let b = Bs[rr][tc];
            let a = As[rr][tk];
            acc[0] = acc[0] + a.x * b;
            acc[1] = acc[1] + a.y * b;
            acc[2] = acc[2] + a.z * b;
            acc[3] = acc[3] + a.w * b;
          }
          workgroupBarrier();
        }
        let base = split * uniforms.K * uniforms.Co;
        for (var i = 0; i < 4; i = i + 1) {
          let k = k0 + tk * 4 + i;
          for (var j = 0; j < 4; j = j + 1) {
            let c = c0 + tc * 4 + j;
            if (k < uniforms.K && c < uniforms.Co) {
              result[base + k * uniforms.Co + c] = acc[i][j];
            }
          }
        }
      }`;
  }
}

/** Sums [S, n] partials over S, in order. */
class SumSplitsProgram implements Program {
  variableNames = ["partials"];
  outputShape: number[];
  shaderKey = "cxrSumSplits";
  dispatchLayout = { x: [0] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number] = [256, 1, 1];
  uniforms = "n : i32, splits : i32,";

  constructor(n: number) {
    this.outputShape = [n];
    this.dispatch = [Math.ceil(n / 256), 1, 1];
  }

  getUserCode(): string {
    return `
      fn main(index : i32) {
        if (index >= uniforms.n) { return; }
        var s = 0.0;
        for (var i = 0; i < uniforms.splits; i = i + 1) {
          s = s + partials[i * uniforms.n + index];
        }
        result[index] = s;
      }`;
  }
}

/** Splits of M and rows per split for a K×Co filter gradient over M rows. */
export function splitPlan(m: number, k: number, co: number): { splits: number; chunk: number } {
  const grid = Math.ceil(co / TC) * Math.ceil(k / TK);
  const wanted = Math.max(
    1,
    Math.min(Math.ceil(TARGET_WORKGROUPS / grid), Math.floor(m / MIN_CHUNK)),
  );
  const chunk = Math.ceil(Math.ceil(m / wanted) / RT) * RT;
  return { splits: Math.ceil(m / chunk), chunk };
}

interface BackpropFilterAttrs {
  strides: number | [number, number];
  pad: "valid" | "same" | number | [
    [number, number],
    [number, number],
    [number, number],
    [number, number],
  ];
  dataFormat: "NHWC" | "NCHW";
  dimRoundingMode?: "floor" | "round" | "ceil";
  filterShape: [number, number, number, number];
}

/** The kernel; tfjs's where it does not apply (NCHW). */
export function conv2DBackpropFilterGemm(
  args: { inputs: tf.NamedTensorInfoMap; backend: unknown; attrs?: tf.NamedAttrMap },
): tf.TensorInfo {
  const backend = args.backend as WebGPUBackendInternals;
  const { x, dy } = args.inputs as Record<string, tf.TensorInfo>;
  const a = args.attrs as unknown as BackpropFilterAttrs;
  if (a.dataFormat === "NCHW") return fallback("webgpu", "Conv2DBackpropFilter", args);
  const info = tf.backend_util.computeConv2DInfo(
    x.shape as [number, number, number, number],
    a.filterShape,
    a.strides,
    1,
    a.pad,
    a.dimRoundingMode,
  );
  const m = info.batchSize * info.outHeight * info.outWidth;
  const k = info.filterHeight * info.filterWidth * info.inChannels;
  const co = info.outChannels;
  const p = info.padInfo;
  const pointwise = info.filterHeight === 1 && info.filterWidth === 1 &&
    info.strideHeight === 1 && info.strideWidth === 1 &&
    p.top === 0 && p.left === 0 && p.bottom === 0 && p.right === 0;
  const { splits, chunk } = splitPlan(m, k, co);
  const uniforms: Uniform[] = [
    ...[m, k, co, info.inChannels, info.filterWidth, info.inHeight, info.inWidth].map((v) => ({
      type: "int32" as const,
      data: [v],
    })),
    { type: "int32", data: [info.outHeight] },
    { type: "int32", data: [info.outWidth] },
    { type: "int32", data: [info.strideHeight, info.strideWidth] },
    { type: "int32", data: [info.padInfo.top, info.padInfo.left] },
    { type: "int32", data: [chunk] },
  ];
  const program = new FilterGemmProgram(splits, k, co, pointwise);
  const partials = backend.runWebGPUProgram(program, [x, dy], "float32", uniforms);
  if (splits === 1) return { ...partials, shape: a.filterShape };
  const flat = { ...partials, shape: [splits, k * co] };
  const out = backend.runWebGPUProgram(new SumSplitsProgram(k * co), [flat], "float32", [
    { type: "int32", data: [k * co] },
    { type: "int32", data: [splits] },
  ]);
  backend.disposeData(partials.dataId);
  return { ...out, shape: a.filterShape };
}
