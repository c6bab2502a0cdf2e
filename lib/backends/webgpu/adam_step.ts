/**
 * The seam's `AdamStep` kernel on WebGPU (contract in seam.ts): torch.optim.Adam's update of
 * every parameter in one call, m′ = β1·m + (1−β1)·g, v′ = β2·v + (1−β2)·g²,
 * p′ = p − stepSize · m′ / (√v′ / sqrtBc2 + ε).
 *
 * On WebGPU the parameters and gradients are gathered into flat buffers by buffer copies (no
 * dispatch each), the update is ONE dispatch over the flat vectors, and the new parameters are
 * copied out: a step is one dispatch whatever the number of variables.
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import type { AdamStepAttrs } from "../seam.ts";
import { copyRanges, groups, type Program, type WebGPUBackendInternals } from "./program.ts";

const WORKGROUP = 256;

/** Writes [p′; m′; v′] (each `n` long) from the flat p, g, m, v. */
class AdamProgram implements Program {
  variableNames = ["p", "g", "m", "v"];
  outputShape: number[];
  shaderKey = "cxrAdamStep";
  dispatchLayout = { x: [0] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number] = [WORKGROUP, 1, 1];
  uniforms = "n : i32, beta1 : f32, beta2 : f32, eps : f32, stepSize : f32, sqrtBc2 : f32,";

  constructor(n: number) {
    this.outputShape = [3 * n];
    this.dispatch = groups(n, WORKGROUP);
  }

  getUserCode(): string {
    return `
      fn main(index : i32) {
        let n = uniforms.n;
        if (index >= n) { return; }
        let gi = g[index];
        let mi = uniforms.beta1 * m[index] + (1.0 - uniforms.beta1) * gi;
        let vi = uniforms.beta2 * v[index] + (1.0 - uniforms.beta2) * (gi * gi);
        let denom = sqrt(vi) / uniforms.sqrtBc2 + uniforms.eps;
        result[index] = p[index] - (mi / denom) * uniforms.stepSize;
        result[n + index] = mi;
        result[2 * n + index] = vi;
      }`;
  }
}

export function adamStepWebgpu(
  args: { inputs: tf.NamedTensorInfoMap; backend: unknown; attrs?: tf.NamedAttrMap },
): tf.TensorInfo[] {
  const backend = args.backend as WebGPUBackendInternals;
  const a = args.attrs as unknown as AdamStepAttrs;
  const inputs = args.inputs as Record<string, tf.TensorInfo>;
  const { m, v } = inputs;
  const ps: tf.TensorInfo[] = [];
  const gs: tf.TensorInfo[] = [];
  for (let i = 0; inputs[`p${i}`] != null; i++) {
    ps.push(inputs[`p${i}`]);
    gs.push(inputs[`g${i}`]);
  }
  const sizes = ps.map((p) => tf.util.sizeFromShape(p.shape));
  const offsets = sizes.map((_, i) => sizes.slice(0, i).reduce((s, x) => s + x, 0));
  const n = sizes.reduce((s, x) => s + x, 0);
  const flatP = backend.makeTensorInfo([n], "float32");
  const flatG = backend.makeTensorInfo([n], "float32");
  copyRanges(backend, [
    ...ps.map((src, i) => ({ src, srcOffset: 0, dst: flatP, dstOffset: offsets[i], n: sizes[i] })),
    ...gs.map((src, i) => ({ src, srcOffset: 0, dst: flatG, dstOffset: offsets[i], n: sizes[i] })),
  ]);
  const out = backend.runWebGPUProgram(new AdamProgram(n), [flatP, flatG, m, v], "float32", [
    { type: "int32", data: [n] },
    { type: "float32", data: [a.beta1] },
    { type: "float32", data: [a.beta2] },
    { type: "float32", data: [a.eps] },
    { type: "float32", data: [a.stepSize] },
    { type: "float32", data: [a.sqrtBc2] },
  ]);
  const outputs = [
    ...ps.map((p) => backend.makeTensorInfo(p.shape, "float32")),
    backend.makeTensorInfo([n], "float32"),
    backend.makeTensorInfo([n], "float32"),
  ];
  copyRanges(backend, [
    ...ps.map((_, i) => ({
      src: out,
      srcOffset: offsets[i],
      dst: outputs[i],
      dstOffset: 0,
      n: sizes[i],
    })),
    { src: out, srcOffset: n, dst: outputs[ps.length], dstOffset: 0, n },
    { src: out, srcOffset: 2 * n, dst: outputs[ps.length + 1], dstOffset: 0, n },
  ]);
  for (const t of [flatP, flatG, out]) backend.disposeData(t.dataId);
  return outputs;
}
