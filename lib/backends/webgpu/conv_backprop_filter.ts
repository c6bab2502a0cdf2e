/**
 * `Conv2DBackpropFilter` for WebGPU as a tiled implicit GEMM (1×1 unpadded stride-1 filters,
 * plain matrix products, go to tfjs's matrix product instead). In NHWC the filter gradient is
 * dW[K, Co] = Aᵀ·dY with A the im2col matrix of x ([M, K], M = N·OH·OW, K = KH·KW·Ci, formed on
 * the fly while loading tiles, never stored) and dY the output gradient as [M, Co]. tfjs 4.22's
 * kernel gives each weight one thread that loops serially over all of M with strided reads;
 * here a workgroup computes a 64×32 tile of dW from shared-memory tiles, and M is split across
 * workgroups (split-K) so that even a 147×64 stem filter keeps the GPU busy. Each split writes a
 * partial dW; a second dispatch sums the partials in order (blocked summation: a sequential
 * sum over at most `chunk` rows, then over the splits).
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import type { Program, Uniform, WebGPUBackendInternals } from "./program.ts";

/** Tile of dW rows (K) and columns (Co) per workgroup, and rows of M per shared-memory step. */
const TK = 64, TC = 32, RT = 16;
/** Threads per workgroup: each computes 4×4 outputs. */
const THREADS = (TK / 4) * (TC / 4);
/** Workgroups worth filling the GPU with; M is split until the grid has about this many. */
const TARGET_WORKGROUPS = 1024;
/** Fewest rows of M per split (below this the partial sums cost more than they save). */
const MIN_CHUNK = 512;

class FilterGemmProgram implements Program {
  variableNames = ["x", "dy"];
  outputShape: number[];
  shaderKey = "cxrConv2DBackpropFilterGemm";
  dispatchLayout = { x: [2], y: [1], z: [0] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number] = [TC / 4, TK / 4, 1];
  uniforms = "M : i32, K : i32, Co : i32, Ci : i32, KW : i32, H : i32, W : i32, OH : i32, " +
    "OW : i32, stride : vec2<i32>, pad : vec2<i32>, chunk : i32,";

  constructor(splits: number, k: number, co: number) {
    this.outputShape = [splits, k, co];
    this.dispatch = [Math.ceil(co / TC), Math.ceil(k / TK), splits];
  }

  getUserCode(): string {
    return `
      var<workgroup> As : array<array<f32, ${TK}>, ${RT}>;
      var<workgroup> Bs : array<array<f32, ${TC}>, ${RT}>;

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
        var acc : array<vec4<f32>, 4>;
        for (var r0 = rBegin; r0 < rEnd; r0 = r0 + ${RT}) {
          for (var q = 0; q < ${(RT * TK) / THREADS}; q = q + 1) {
            // A[r, k] = x at the input pixel that output row r reads through filter tap k.
            let rr = rA + q * ${THREADS / TK};
            let r = r0 + rr;
            var a = 0.0;
            if (kIn && r < rEnd) {
              let b = r / ohw;
              let oy = (r - b * ohw) / uniforms.OW;
              let ox = r - b * ohw - oy * uniforms.OW;
              let iy = oy * uniforms.stride.x + offY;
              let ix = ox * uniforms.stride.y + offX;
              if (iy >= 0 && iy < uniforms.H && ix >= 0 && ix < uniforms.W) {
                a = x[((b * uniforms.H + iy) * uniforms.W + ix) * uniforms.Ci + ci];
              }
            }
            As[rr][kk] = a;
          }
          for (var q = 0; q < ${(RT * TC) / THREADS}; q = q + 1) {
            let rr = rB + q * ${THREADS / TC};
            let r = r0 + rr;
            var v = 0.0;
            if (r < rEnd && cb < uniforms.Co) { v = dy[r * uniforms.Co + cb]; }
            Bs[rr][cc] = v;
          }
          workgroupBarrier();
          for (var rr = 0; rr < ${RT}; rr = rr + 1) {
            let b = vec4<f32>(Bs[rr][tc], Bs[rr][tc + ${TC / 4}], Bs[rr][tc + ${TC / 2}],
                              Bs[rr][tc + ${(3 * TC) / 4}]);
            acc[0] = acc[0] + As[rr][tk] * b;
            acc[1] = acc[1] + As[rr][tk + ${TK / 4}] * b;
            acc[2] = acc[2] + As[rr][tk + ${TK / 2}] * b;
            acc[3] = acc[3] + As[rr][tk + ${(3 * TK) / 4}] * b;
          }
          workgroupBarrier();
        }
        let base = split * uniforms.K * uniforms.Co;
        for (var i = 0; i < 4; i = i + 1) {
          let k = k0 + tk + i * ${TK / 4};
          for (var j = 0; j < 4; j = j + 1) {
            let c = c0 + tc + j * ${TC / 4};
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

/**
 * A 1×1, stride-1, unpadded filter gradient is exactly xᵀ·dy with x as [M, Ci] and dy as
 * [M, Co]: tfjs's own matrix product (tuned, split-K for this long inner dimension) runs it,
 * on views of x and dy (no copies).
 */
function pointwiseAsMatMul(
  backend: WebGPUBackendInternals,
  x: tf.TensorInfo,
  dy: tf.TensorInfo,
  m: number,
  filterShape: number[],
): tf.TensorInfo {
  const [reshape, matMul] = ["Reshape", "BatchMatMul"].map((name) => {
    const kernel = tf.getKernel(name, "webgpu");
    if (kernel == null) throw new Error(`webgpu has no ${name} kernel`);
    return kernel.kernelFunc as unknown as (args: unknown) => tf.TensorInfo;
  });
  const view = (t: tf.TensorInfo, shape: number[]) =>
    reshape({ inputs: { x: t }, backend, attrs: { shape } });
  const a = view(x, [1, m, x.shape[3]]);
  const b = view(dy, [1, m, dy.shape[3]]);
  const product = matMul({
    inputs: { a, b },
    backend,
    attrs: { transposeA: true, transposeB: false },
  });
  const out = view(product, filterShape);
  for (const t of [a, b, product]) backend.disposeData(t.dataId);
  return out;
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

/** The kernel; null when it does not apply (NCHW), for the caller to fall back to tfjs's. */
export function conv2DBackpropFilterGemm(
  args: { inputs: tf.NamedTensorInfoMap; backend: unknown; attrs?: tf.NamedAttrMap },
): tf.TensorInfo | null {
  const backend = args.backend as WebGPUBackendInternals;
  const { x, dy } = args.inputs as Record<string, tf.TensorInfo>;
  const a = args.attrs as unknown as BackpropFilterAttrs;
  if (a.dataFormat === "NCHW") return null;
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
  if (
    info.filterHeight === 1 && info.filterWidth === 1 && info.strideHeight === 1 &&
    info.strideWidth === 1 && p.top === 0 && p.left === 0 && p.bottom === 0 && p.right === 0
  ) {
    return pointwiseAsMatMul(backend, x, dy, m, a.filterShape);
  }
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
  const program = new FilterGemmProgram(splits, k, co);
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
