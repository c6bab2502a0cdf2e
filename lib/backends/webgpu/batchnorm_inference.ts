/**
 * WebGPU implementations of the two optional evaluation-mode BatchNorm(+ReLU) kernels of the
 * model (lib/backends/batchnorm_kernels.ts; float32, NHWC, M = N·H·W):
 * - `BatchNormReluInference` {x, mean, variance, gamma, beta} {epsilon, relu} → y: the training
 *   kernel's own normalising pass (batchnorm.ts, `normalize`) on the given statistics, so with a
 *   training step's batch statistics (the dense block's backward recompute) it gives exactly
 *   that step's y. One dispatch; mean and variance reach it by buffer copies.
 * - `BatchNormReluConcatInference` {mean, variance, gamma, beta, x0, x1, …} → the same of the
 *   channel concatenation of the xi, read straight from them: one dispatch for any number of
 *   inputs. Up to maxStorageBuffersPerShaderStage − 2 inputs (6 with WebGPU's default limit of
 *   8) are bound as they are; beyond that the first ones are bound and the rest ("the tail")
 *   are copied, each contiguous [M, C_i] after the other, into one scratch buffer bound last.
 *   Copies cost no dispatch. A per-channel table (which binding, its channel count, an offset)
 *   says where each output channel is read from; it and the four vectors are copied into one
 *   `params` buffer, so they take a single binding.
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { type BnAttrs, normalize } from "./batchnorm.ts";
import { BN_CONCAT_INFERENCE_KERNEL, BN_INFERENCE_KERNEL } from "../seam.ts";
import { copyRanges, type Program, type WebGPUBackendInternals } from "./program.ts";

/** Most inputs bound directly, whatever the device allows (bounds the shader variants). */
const MAX_BOUND = 14;

type Args = { inputs: tf.NamedTensorInfoMap; backend: unknown; attrs?: tf.NamedAttrMap };

const lastDim = (t: tf.TensorInfo) => t.shape[t.shape.length - 1];

/**
 * y [.., C] from the inputs x0 … x(nx−1) and `params`: mean, variance, gamma, beta ([C] each),
 * then the table, all in units of T (f32, or vec4<f32> when every C_i is a multiple of 4, `C`
 * counting vec4s then). Table entry of channel (unit) c, 4 i32 stored as f32 bits: (binding,
 * its channels cs, its first channel c0, its block's offset off), all ≥ 0 (so never a NaN
 * pattern); y[m, c] = f(x_binding[m·cs + c − c0 + off]). The arithmetic is `NormalizeProgram`'s.
 */
class ConcatNormalizeProgram implements Program {
  variableNames: string[];
  outputShape: number[];
  shaderKey: string;
  dispatchLayout: { x: number[] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number] = [256, 1, 1];
  uniforms = "n : i32, C : i32, eps : f32, relu : i32,";
  outputComponent: number;

  constructor(shape: number[], readonly nx: number, readonly vec4: boolean) {
    this.variableNames = ["params", ...Array.from({ length: nx }, (_, i) => `x${i}`)];
    this.outputShape = shape;
    this.outputComponent = vec4 ? 4 : 1;
    this.shaderKey = `cxrBnConcatNormalize_${nx}_${vec4}`;
    this.dispatchLayout = { x: shape.map((_, i) => i) };
    this.dispatch = [Math.ceil(tf.util.sizeFromShape(shape) / this.outputComponent / 256), 1, 1];
  }

  getUserCode(): string {
    const T = this.vec4 ? "vec4<f32>" : "f32";
    const entry = this.vec4
      ? "let e = bitcast<vec4<i32>>(params[4 * C + c]);"
      : `let o = 4 * C + 4 * c;
        let e = vec4<i32>(bitcast<i32>(params[o]), bitcast<i32>(params[o + 1]),
            bitcast<i32>(params[o + 2]), bitcast<i32>(params[o + 3]));`;
    const reads = Array.from(
      { length: this.nx },
      (_, p) => p === this.nx - 1 ? `{ v = x${p}[i]; }` : `if (part == ${p}) { v = x${p}[i]; }`,
    ).join(
      " else ",
    );
    return `
      fn main(index : i32) {
        if (index >= uniforms.n) { return; }
        let C = uniforms.C;
        let c = index % C;
        let m = index / C;
        ${entry}
        let part = e.x;
        let i = m * e.y + c - e.z + e.w;
        var v : ${T};
        ${reads}
        let rstd = 1.0 / sqrt(params[C + c] + ${T}(uniforms.eps));
        var y = (v - params[c]) * (params[2 * C + c] * rstd) + params[3 * C + c];
        if (uniforms.relu != 0) { y = max(y, ${T}(0.0)); }
        result[index] = y;
      }`;
  }
}

function checkVectors(kernel: string, vectors: tf.TensorInfo[], c: number): void {
  if (vectors.some((t) => t == null || t.dtype !== "float32")) {
    throw new Error(`${kernel}: mean, variance, gamma and beta must be float32`);
  }
  const bad = vectors.find((t) => tf.util.sizeFromShape(t.shape) !== c);
  if (bad != null) {
    throw new Error(`${kernel}: vectors of ${c} channels expected, got shape [${bad.shape}]`);
  }
}

export function batchNormReluInference(args: Args): tf.TensorInfo {
  const backend = args.backend as WebGPUBackendInternals;
  const { x, mean, variance, gamma, beta } = args.inputs as Record<string, tf.TensorInfo>;
  if (x == null || x.dtype !== "float32" || x.shape.length === 0) {
    throw new Error(`${BN_INFERENCE_KERNEL}: needs float32 x [.., C]`);
  }
  const c = lastDim(x);
  checkVectors(BN_INFERENCE_KERNEL, [mean, variance, gamma, beta], c);
  if (tf.util.sizeFromShape(x.shape) === 0) return backend.makeTensorInfo(x.shape, "float32");
  const stats = backend.makeTensorInfo([2, c], "float32");
  copyRanges(backend, [
    { src: mean, srcOffset: 0, dst: stats, dstOffset: 0, n: c },
    { src: variance, srcOffset: 0, dst: stats, dstOffset: c, n: c },
  ]);
  const y = normalize(backend, x, stats, gamma, beta, args.attrs as unknown as BnAttrs);
  backend.disposeData(stats.dataId);
  return y;
}

export function batchNormReluConcatInference(args: Args): tf.TensorInfo {
  const backend = args.backend as WebGPUBackendInternals;
  const { mean, variance, gamma, beta, ...rest } = args.inputs as Record<string, tf.TensorInfo>;
  const all = Object.values(rest);
  const name = BN_CONCAT_INFERENCE_KERNEL;
  if (all.length === 0) throw new Error(`${name}: no inputs x0, x1, …`);
  if (all.some((t) => t.dtype !== "float32" || t.shape.length === 0)) {
    throw new Error(`${name}: the inputs x_i must be float32 [.., C_i]`);
  }
  const lead = all[0].shape.slice(0, -1);
  const odd = all.find((t) => !tf.util.arraysEqual(t.shape.slice(0, -1), lead));
  if (odd != null) {
    throw new Error(
      `${name}: inputs must share their leading dimensions, got [${
        all[0].shape
      }] and [${odd.shape}]`,
    );
  }
  const c = all.reduce((s, t) => s + lastDim(t), 0);
  checkVectors(name, [mean, variance, gamma, beta], c);
  const shape = [...lead, c];
  const m = tf.util.sizeFromShape(lead);
  if (m * c === 0) return backend.makeTensorInfo(shape, "float32");
  const attrs = args.attrs as unknown as BnAttrs;
  const xs = all.filter((t) => lastDim(t) > 0);
  if (xs.length === 1) {
    return batchNormReluInference({ ...args, inputs: { x: xs[0], mean, variance, gamma, beta } });
  }

  const vec4 = xs.every((t) => lastDim(t) % 4 === 0), lanes = vec4 ? 4 : 1;
  const maxBound = Math.min(MAX_BOUND, backend.device.limits.maxStorageBuffersPerShaderStage - 2);
  const direct = xs.length <= maxBound ? xs.length : maxBound - 1;
  const tailParts = xs.slice(direct);
  const starts: number[] = [];
  xs.reduce((s, t) => (starts.push(s), s + lastDim(t)), 0);
  const tailStart = tailParts.length > 0 ? starts[direct] : c;

  const temps: tf.TensorInfo[] = [];
  const bound = xs.slice(0, direct);
  if (tailParts.length > 0) {
    const tail = backend.makeTensorInfo([m, c - tailStart], "float32");
    copyRanges(
      backend,
      tailParts.map((src, q) => ({
        src,
        srcOffset: 0,
        dst: tail,
        dstOffset: m * (starts[direct + q] - tailStart),
        n: m * lastDim(src),
      })),
    );
    bound.push(tail);
    temps.push(tail);
  }

  const units = c / lanes;
  const table = new Int32Array(4 * units);
  xs.forEach((t, p) => {
    const c0 = starts[p] / lanes, cs = lastDim(t) / lanes;
    const inTail = p >= direct;
    const entry = inTail ? [direct, cs, c0, (m * (starts[p] - tailStart)) / lanes] : [p, cs, c0, 0];
    for (let u = c0; u < c0 + cs; u++) table.set(entry, 4 * u);
  });
  const tableInfo = backend.makeTensorInfo([table.length], "int32", table);
  const params = backend.makeTensorInfo([4 * c + table.length], "float32");
  copyRanges(backend, [
    ...[mean, variance, gamma, beta].map((src, j) => ({
      src,
      srcOffset: 0,
      dst: params,
      dstOffset: j * c,
      n: c,
    })),
    { src: tableInfo, srcOffset: 0, dst: params, dstOffset: 4 * c, n: table.length },
  ]);
  temps.push(tableInfo, params);

  const y = backend.runWebGPUProgram(
    new ConcatNormalizeProgram(shape, bound.length, vec4),
    [params, ...bound],
    "float32",
    [
      { type: "int32", data: [(m * c) / lanes] },
      { type: "int32", data: [units] },
      { type: "float32", data: [attrs.epsilon] },
      { type: "int32", data: [attrs.relu ? 1 : 0] },
    ],
  );
  for (const t of temps) backend.disposeData(t.dataId);
  return y;
}
