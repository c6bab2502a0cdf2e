/**
 * `SplitV` and `Concat` for WebGPU in one dispatch each, whatever the number of parts. tfjs 4.22
 * runs one slice program per part of a split, and a concatenation of more than
 * maxStorageBuffersPerShaderStage − 1 (usually 7) inputs as a tree of concatenations; DenseNet's
 * blocks concatenate up to 25 feature maps along channels, and their backward splits them again.
 * Here the parts are laid out contiguously, part after part ("blocks"), in a scratch buffer, and
 * one pass converts between that and the interleaved layout; the parts travel to or from the
 * blocks by buffer copies, which cost no dispatch. Along the outermost non-trivial axis the
 * layouts coincide and it is copies alone.
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { fallback } from "../kernel_registry.ts";
import { copyRanges, type Program, type Uniform, type WebGPUBackendInternals } from "./program.ts";

/**
 * Converts between x [outer, total, inner] and its parts' blocks [outer, size_p, inner], one
 * after another: `toBlocks` for a split, the reverse for a concatenation.
 */
class PartsProgram implements Program {
  variableNames = ["x", "starts"];
  outputShape: number[];
  shaderKey: string;
  dispatchLayout = { x: [0] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number] = [256, 1, 1];
  uniforms = "n : i32, total : i32, inner : i32, outer : i32, parts : i32,";

  constructor(n: number, readonly toBlocks: boolean) {
    this.outputShape = [n];
    this.dispatch = [Math.ceil(n / 256), 1, 1];
    this.shaderKey = `cxrParts_${toBlocks}`;
  }

  getUserCode(): string {
    return `
      fn main(index : i32) {
        if (index >= uniforms.n) { return; }
        let inner = uniforms.inner;
        let i = index % inner;
        let oa = index / inner;
        let a = oa % uniforms.total;
        let o = oa / uniforms.total;
        // The part holding position a along the axis: starts[p] <= a < starts[p + 1].
        var lo = 0;
        var hi = uniforms.parts;
        while (hi - lo > 1) {
          let mid = (lo + hi) / 2;
          if (starts[mid] <= a) { lo = mid; } else { hi = mid; }
        }
        let start = starts[lo];
        let size = starts[lo + 1] - start;
        let blocked = uniforms.outer * start * inner + (o * size + (a - start)) * inner + i;
        ${this.toBlocks ? "result[blocked] = x[index];" : "result[index] = x[blocked];"}
      }`;
  }
}

/** Where each part's block starts in the blocked layout, and the uniforms of `PartsProgram`. */
function partsLayout(shape: number[], axis: number, sizes: number[]) {
  const outer = tf.util.sizeFromShape(shape.slice(0, axis));
  const inner = tf.util.sizeFromShape(shape.slice(axis + 1));
  const starts = [0];
  for (const s of sizes) starts.push(starts[starts.length - 1] + s);
  const n = tf.util.sizeFromShape(shape);
  const uniforms: Uniform[] = [n, shape[axis], inner, outer, sizes.length].map((v) => ({
    type: "int32" as const,
    data: [v],
  }));
  return {
    outer,
    inner,
    starts,
    n,
    uniforms,
    blockOffset: (p: number) => outer * starts[p] * inner,
  };
}

type Args = { inputs: tf.NamedTensorInfoMap; backend: unknown; attrs?: tf.NamedAttrMap };

/** The kernel; tfjs's where it does not apply (not float32, empty parts). */
export function splitVContiguous(args: Args): tf.TensorInfo[] {
  const backend = args.backend as WebGPUBackendInternals;
  const { x } = args.inputs as Record<string, tf.TensorInfo>;
  const tfjs = () => fallback<tf.TensorInfo[]>("webgpu", "SplitV", args);
  if (x.dtype !== "float32") return tfjs();
  const attrs = args.attrs as unknown as { numOrSizeSplits: number[] | number; axis: number };
  const axis = tf.util.parseAxisParam(attrs.axis, x.shape)[0];
  const sizes = tf.backend_util.prepareSplitSize(
    { shape: x.shape } as tf.Tensor,
    attrs.numOrSizeSplits,
    axis,
  );
  if (sizes.some((s) => s === 0)) return tfjs();
  const { outer, inner, starts, n, uniforms, blockOffset } = partsLayout(x.shape, axis, sizes);
  const outputs = sizes.map((s) => {
    const shape = x.shape.slice();
    shape[axis] = s;
    return backend.makeTensorInfo(shape, "float32");
  });
  let src = x;
  const temps: tf.TensorInfo[] = [];
  if (outer > 1) {
    const startsInfo = backend.makeTensorInfo([starts.length], "int32", Int32Array.from(starts));
    src = backend.runWebGPUProgram(
      new PartsProgram(n, true),
      [x, startsInfo],
      "float32",
      uniforms,
    );
    temps.push(startsInfo, src);
  }
  copyRanges(
    backend,
    sizes.map((s, p) => ({
      src,
      srcOffset: blockOffset(p),
      dst: outputs[p],
      dstOffset: 0,
      n: outer * s * inner,
    })),
  );
  for (const t of temps) backend.disposeData(t.dataId);
  return outputs;
}

/**
 * The kernel; tfjs's where tfjs's does as well (at most `maxInputs` inputs: one pass, no
 * copies) or it does not apply (not float32, empty inputs).
 */
export function concatBlocked(args: Args): tf.TensorInfo {
  const backend = args.backend as WebGPUBackendInternals;
  const inputs = Object.values(args.inputs) as tf.TensorInfo[];
  const maxInputs = backend.device.limits.maxStorageBuffersPerShaderStage - 1;
  if (
    inputs.length <= maxInputs ||
    inputs.some((t) => t.dtype !== "float32" || tf.util.sizeFromShape(t.shape) === 0)
  ) {
    return fallback("webgpu", "Concat", args);
  }
  const attrs = args.attrs as unknown as { axis: number };
  const axis = tf.util.parseAxisParam(attrs.axis, inputs[0].shape)[0];
  const shape = tf.backend_util.computeOutShape(inputs.map((t) => t.shape), axis);
  const sizes = inputs.map((t) => t.shape[axis]);
  const { outer, inner, starts, n, uniforms, blockOffset } = partsLayout(shape, axis, sizes);
  const blocks = backend.makeTensorInfo([n], "float32");
  copyRanges(
    backend,
    inputs.map((src, p) => ({
      src,
      srcOffset: 0,
      dst: blocks,
      dstOffset: blockOffset(p),
      n: outer * sizes[p] * inner,
    })),
  );
  if (outer === 1) return { ...blocks, shape };
  const startsInfo = backend.makeTensorInfo([starts.length], "int32", Int32Array.from(starts));
  const out = backend.runWebGPUProgram(
    new PartsProgram(n, false),
    [blocks, startsInfo],
    "float32",
    uniforms,
  );
  backend.disposeData(blocks.dataId);
  backend.disposeData(startsInfo.dataId);
  return { ...out, shape };
}
