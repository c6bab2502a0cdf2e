/**
 * WebGPU implementations of the fused BatchNorm(+ReLU) kernels whose contract the model
 * (lib/model/densenet.ts) calls when they are registered (float32, NHWC, M = N·H·W):
 * - `BatchNormReluTrain` {x, gamma, beta} {epsilon, relu} → [y, mean, variance (biased)];
 * - `BatchNormReluGrad` {dy, x, gamma, beta, mean, variance} {epsilon, relu} →
 *   [dx, dgamma, dbeta], with g = dy masked by (x̂·γ+β > 0) when relu, dbeta = Σg,
 *   dgamma = Σg·x̂, dx = γ·rstd/M · (M·g − dbeta − x̂·dgamma).
 *
 * Each is three dispatches instead of tfjs's dozens of ops: per-(split of M, channel) partial
 * reductions, one combine per channel, and one element-wise pass. The reductions are blocked,
 * so they stay accurate at M = 16·112·112: each thread sums a strided part of one split
 * (Welford's update for the statistics, so the variance is Σ(x−mean)² without cancellation),
 * a workgroup tree-combines its threads, and the splits are combined in order (Chan's formula
 * for the statistics).
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { copyRanges, type Program, type Uniform, type WebGPUBackendInternals } from "./program.ts";

/** Channels per workgroup of the reductions, and threads per channel. */
const CH = 64, ROWS = 4;
const TARGET_WORKGROUPS = 512;
/** Fewest rows of M per split. */
const MIN_CHUNK = 256;

export interface BnAttrs {
  epsilon: number;
  relu: boolean;
}

/** Splits of M and rows per split for reductions over C channels. */
export function bnSplitPlan(m: number, c: number): { splits: number; chunk: number } {
  const grid = Math.ceil(c / CH);
  const wanted = Math.max(
    1,
    Math.min(Math.ceil(TARGET_WORKGROUPS / grid), Math.floor(m / MIN_CHUNK)),
  );
  const chunk = Math.ceil(m / wanted);
  return { splits: Math.ceil(m / chunk), chunk };
}

const REDUCE_UNIFORMS = "M : i32, C : i32, chunk : i32, eps : f32, relu : i32,";

/** The prologue of a reduction: this thread's channel `c` and its rows of its split. */
const REDUCE_PROLOGUE = `
        let cx = i32(localId.x);
        let ry = i32(localId.y);
        let t = i32(localIndex);
        let c = i32(workgroupId.x) * ${CH} + cx;
        let split = i32(workgroupId.y);
        let rBegin = split * uniforms.chunk;
        let rEnd = min(rBegin + uniforms.chunk, uniforms.M);
        let C = uniforms.C;`;

/** Partial (count, mean, M2) of x per (split, channel), Welford within a thread. */
class StatsPartialProgram implements Program {
  variableNames = ["x"];
  outputShape: number[];
  shaderKey = "cxrBnStatsPartial";
  dispatchLayout = { x: [2], y: [1], z: [0] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number] = [CH, ROWS, 1];
  uniforms = REDUCE_UNIFORMS;

  constructor(splits: number, c: number) {
    this.outputShape = [splits, c, 3];
    this.dispatch = [Math.ceil(c / CH), splits, 1];
  }

  getUserCode(): string {
    return `
      var<workgroup> sn : array<f32, ${CH * ROWS}>;
      var<workgroup> sm : array<f32, ${CH * ROWS}>;
      var<workgroup> s2 : array<f32, ${CH * ROWS}>;

      fn main() {
        ${REDUCE_PROLOGUE}
        var n = 0.0;
        var mean = 0.0;
        var m2 = 0.0;
        if (c < C) {
          for (var r = rBegin + ry; r < rEnd; r = r + ${ROWS}) {
            let v = x[r * C + c];
            n = n + 1.0;
            let d = v - mean;
            mean = mean + d / n;
            m2 = m2 + d * (v - mean);
          }
        }
        sn[t] = n;
        sm[t] = mean;
        s2[t] = m2;
        workgroupBarrier();
        if (ry == 0 && c < C) {
          for (var i = 1; i < ${ROWS}; i = i + 1) {
            let nb = sn[t + i * ${CH}];
            if (nb > 0.0) {
              let nab = n + nb;
              let d = sm[t + i * ${CH}] - mean;
              mean = mean + d * (nb / nab);
              m2 = m2 + s2[t + i * ${CH}] + d * d * (n * nb / nab);
              n = nab;
            }
          }
          let o = (split * C + c) * 3;
          result[o] = n;
          result[o + 1] = mean;
          result[o + 2] = m2;
        }
      }`;
  }
}

/** [mean; biased variance] per channel from the [splits, C, 3] partials (Chan, in order). */
class StatsCombineProgram implements Program {
  variableNames = ["partials"];
  outputShape: number[];
  shaderKey = "cxrBnStatsCombine";
  dispatchLayout = { x: [0, 1] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number] = [64, 1, 1];
  uniforms = "C : i32, splits : i32, M : i32,";

  constructor(c: number) {
    this.outputShape = [2, c];
    this.dispatch = [Math.ceil(c / 64), 1, 1];
  }

  getUserCode(): string {
    return `
      fn main(index : i32) {
        let C = uniforms.C;
        if (index >= C) { return; }
        var n = 0.0;
        var mean = 0.0;
        var m2 = 0.0;
        for (var s = 0; s < uniforms.splits; s = s + 1) {
          let o = (s * C + index) * 3;
          let nb = partials[o];
          if (nb > 0.0) {
            let nab = n + nb;
            let d = partials[o + 1] - mean;
            mean = mean + d * (nb / nab);
            m2 = m2 + partials[o + 2] + d * d * (n * nb / nab);
            n = nab;
          }
        }
        result[index] = mean;
        result[C + index] = m2 / f32(uniforms.M);
      }`;
  }
}

/**
 * y = (x − mean)·γ/√(var+ε) + β, then ReLU when `relu`. With `vec4` (C a multiple of 4) every
 * array is read as vec4<f32> and a thread does 4 channels; `n` and `C` count vec4s then.
 * `stats` is [mean; variance], [2, C]. Also the evaluation-mode kernel's pass
 * (batchnorm_inference.ts, through `normalize`), so both normalise with the same code.
 */
class NormalizeProgram implements Program {
  variableNames = ["x", "stats", "gamma", "beta"];
  outputShape: number[];
  shaderKey: string;
  dispatchLayout: { x: number[] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number] = [256, 1, 1];
  uniforms = "n : i32, C : i32, eps : f32, relu : i32,";
  outputComponent: number;

  constructor(shape: number[], readonly vec4: boolean) {
    this.outputShape = shape;
    this.outputComponent = vec4 ? 4 : 1;
    this.shaderKey = `cxrBnNormalize_${vec4}`;
    this.dispatchLayout = { x: shape.map((_, i) => i) };
    this.dispatch = [Math.ceil(tf.util.sizeFromShape(shape) / this.outputComponent / 256), 1, 1];
  }

  getUserCode(): string {
    const T = this.vec4 ? "vec4<f32>" : "f32";
    return `
      fn main(index : i32) {
        if (index >= uniforms.n) { return; }
        let C = uniforms.C;
        let c = index % C;
        let rstd = 1.0 / sqrt(stats[C + c] + ${T}(uniforms.eps));
        var y = (x[index] - stats[c]) * (gamma[c] * rstd) + beta[c];
        if (uniforms.relu != 0) { y = max(y, ${T}(0.0)); }
        result[index] = y;
      }`;
  }
}

/** The (masked) output gradient g, and x̂, at element i of channel c, in type T. */
function gradTerms(T: string): string {
  return `
        let rstd = 1.0 / sqrt(variance[c] + ${T}(uniforms.eps));
        let xhat = (x[i] - mean[c]) * rstd;
        var g = dy[i];
        if (uniforms.relu != 0) {
          g = select(g, ${T}(0.0), xhat * gamma[c] + beta[c] <= ${T}(0.0));
        }`;
}

/** Partial (Σg, Σg·x̂) per (split, channel). */
class GradPartialProgram implements Program {
  variableNames = ["dy", "x", "gamma", "beta", "mean", "variance"];
  outputShape: number[];
  shaderKey = "cxrBnGradPartial";
  dispatchLayout = { x: [2], y: [1], z: [0] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number] = [CH, ROWS, 1];
  uniforms = REDUCE_UNIFORMS;

  constructor(splits: number, c: number) {
    this.outputShape = [splits, c, 2];
    this.dispatch = [Math.ceil(c / CH), splits, 1];
  }

  getUserCode(): string {
    return `
      var<workgroup> sg : array<f32, ${CH * ROWS}>;
      var<workgroup> sgx : array<f32, ${CH * ROWS}>;

      fn main() {
        ${REDUCE_PROLOGUE}
        var a = 0.0;
        var b = 0.0;
        if (c < C) {
          for (var r = rBegin + ry; r < rEnd; r = r + ${ROWS}) {
            let i = r * C + c;
            ${gradTerms("f32")}
            a = a + g;
            b = b + g * xhat;
          }
        }
        sg[t] = a;
        sgx[t] = b;
        workgroupBarrier();
        if (ry == 0 && c < C) {
          for (var k = 1; k < ${ROWS}; k = k + 1) {
            a = a + sg[t + k * ${CH}];
            b = b + sgx[t + k * ${CH}];
          }
          let o = (split * C + c) * 2;
          result[o] = a;
          result[o + 1] = b;
        }
      }`;
  }
}

/** [dbeta; dgamma] per channel: the [splits, C, 2] partials summed in order. */
class GradCombineProgram implements Program {
  variableNames = ["partials"];
  outputShape: number[];
  shaderKey = "cxrBnGradCombine";
  dispatchLayout = { x: [0, 1] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number] = [64, 1, 1];
  uniforms = "C : i32, splits : i32,";

  constructor(c: number) {
    this.outputShape = [2, c];
    this.dispatch = [Math.ceil(c / 64), 1, 1];
  }

  getUserCode(): string {
    return `
      fn main(index : i32) {
        let C = uniforms.C;
        if (index >= C) { return; }
        var a = 0.0;
        var b = 0.0;
        for (var s = 0; s < uniforms.splits; s = s + 1) {
          a = a + partials[(s * C + index) * 2];
          b = b + partials[(s * C + index) * 2 + 1];
        }
        result[index] = a;
        result[C + index] = b;
      }`;
  }
}

/** dx = γ·rstd/M · (M·g − dbeta − x̂·dgamma); `vec4` as in `NormalizeProgram`. */
class GradInputProgram implements Program {
  variableNames = ["dy", "x", "gamma", "beta", "mean", "variance", "sums"];
  outputShape: number[];
  shaderKey: string;
  dispatchLayout: { x: number[] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number] = [256, 1, 1];
  uniforms = "n : i32, C : i32, eps : f32, relu : i32, M : f32,";
  outputComponent: number;

  constructor(shape: number[], readonly vec4: boolean) {
    this.outputShape = shape;
    this.outputComponent = vec4 ? 4 : 1;
    this.shaderKey = `cxrBnGradInput_${vec4}`;
    this.dispatchLayout = { x: shape.map((_, i) => i) };
    this.dispatch = [Math.ceil(tf.util.sizeFromShape(shape) / this.outputComponent / 256), 1, 1];
  }

  getUserCode(): string {
    return `
      fn main(index : i32) {
        if (index >= uniforms.n) { return; }
        let C = uniforms.C;
        let c = index % C;
        let i = index;
        ${gradTerms(this.vec4 ? "vec4<f32>" : "f32")}
        let dbeta = sums[c];
        let dgamma = sums[C + c];
        result[index] = gamma[c] * rstd / uniforms.M *
            (uniforms.M * g - dbeta - xhat * dgamma);
      }`;
  }
}

type Args = { inputs: tf.NamedTensorInfoMap; backend: unknown; attrs?: tf.NamedAttrMap };

/** `NormalizeProgram` on x [.., C] with `stats` [2, C] (mean; variance): one dispatch. */
export function normalize(
  backend: WebGPUBackendInternals,
  x: tf.TensorInfo,
  stats: tf.TensorInfo,
  gamma: tf.TensorInfo,
  beta: tf.TensorInfo,
  a: BnAttrs,
): tf.TensorInfo {
  const c = x.shape[x.shape.length - 1];
  const vec4 = c % 4 === 0, lanes = vec4 ? 4 : 1;
  return backend.runWebGPUProgram(
    new NormalizeProgram(x.shape, vec4),
    [x, stats, gamma, beta],
    "float32",
    [
      { type: "int32", data: [tf.util.sizeFromShape(x.shape) / lanes] },
      { type: "int32", data: [c / lanes] },
      { type: "float32", data: [a.epsilon] },
      { type: "int32", data: [a.relu ? 1 : 0] },
    ],
  );
}

function reduceUniforms(m: number, c: number, chunk: number, a: BnAttrs): Uniform[] {
  return [
    { type: "int32", data: [m] },
    { type: "int32", data: [c] },
    { type: "int32", data: [chunk] },
    { type: "float32", data: [a.epsilon] },
    { type: "int32", data: [a.relu ? 1 : 0] },
  ];
}

/** Copies the two rows of a [2, C] result into two new [C] tensors. */
function splitRows(backend: WebGPUBackendInternals, rows: tf.TensorInfo, c: number) {
  const out = [backend.makeTensorInfo([c], "float32"), backend.makeTensorInfo([c], "float32")];
  copyRanges(backend, [
    { src: rows, srcOffset: 0, dst: out[0], dstOffset: 0, n: c },
    { src: rows, srcOffset: c, dst: out[1], dstOffset: 0, n: c },
  ]);
  return out;
}

export function batchNormReluTrain(args: Args): tf.TensorInfo[] {
  const backend = args.backend as WebGPUBackendInternals;
  const { x, gamma, beta } = args.inputs as Record<string, tf.TensorInfo>;
  const a = args.attrs as unknown as BnAttrs;
  const c = x.shape[x.shape.length - 1];
  const m = tf.util.sizeFromShape(x.shape) / c;
  const { splits, chunk } = bnSplitPlan(m, c);
  const partials = backend.runWebGPUProgram(
    new StatsPartialProgram(splits, c),
    [x],
    "float32",
    reduceUniforms(m, c, chunk, a),
  );
  const stats = backend.runWebGPUProgram(new StatsCombineProgram(c), [partials], "float32", [
    { type: "int32", data: [c] },
    { type: "int32", data: [splits] },
    { type: "int32", data: [m] },
  ]);
  const y = normalize(backend, x, stats, gamma, beta, a);
  const [mean, variance] = splitRows(backend, stats, c);
  backend.disposeData(partials.dataId);
  backend.disposeData(stats.dataId);
  return [y, mean, variance];
}

export function batchNormReluGrad(args: Args): tf.TensorInfo[] {
  const backend = args.backend as WebGPUBackendInternals;
  const { dy, x, gamma, beta, mean, variance } = args.inputs as Record<string, tf.TensorInfo>;
  const a = args.attrs as unknown as BnAttrs;
  const c = x.shape[x.shape.length - 1];
  const m = tf.util.sizeFromShape(x.shape) / c;
  const { splits, chunk } = bnSplitPlan(m, c);
  const vec4 = c % 4 === 0, lanes = vec4 ? 4 : 1;
  const terms = [dy, x, gamma, beta, mean, variance];
  const partials = backend.runWebGPUProgram(
    new GradPartialProgram(splits, c),
    terms,
    "float32",
    reduceUniforms(m, c, chunk, a),
  );
  const sums = backend.runWebGPUProgram(new GradCombineProgram(c), [partials], "float32", [
    { type: "int32", data: [c] },
    { type: "int32", data: [splits] },
  ]);
  const dx = backend.runWebGPUProgram(
    new GradInputProgram(x.shape, vec4),
    [...terms, sums],
    "float32",
    [
      { type: "int32", data: [(m * c) / lanes] },
      { type: "int32", data: [c / lanes] },
      { type: "float32", data: [a.epsilon] },
      { type: "int32", data: [a.relu ? 1 : 0] },
      { type: "float32", data: [m] },
    ],
  );
  const [dbeta, dgamma] = splitRows(backend, sums, c);
  backend.disposeData(partials.dataId);
  backend.disposeData(sums.dataId);
  return [dx, dgamma, dbeta];
}
