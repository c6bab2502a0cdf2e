/**
 * `SplitV` for WebGPU in one dispatch. tfjs 4.22 runs one slice program per part, and the
 * backward pass of DenseNet's concatenations splits a block's features into up to ~30 parts, a
 * few hundred dispatches a step. Here one pass rearranges x so that every part is contiguous,
 * part after part, and each part is then copied out of that buffer into its own tensor (buffer
 * copies cost no dispatch). A split along the outermost non-trivial axis is copies alone.
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { copyRanges, type Program, type WebGPUBackendInternals } from "./program.ts";

/** Writes x [outer, total, inner] as the parts' blocks [outer, size_p, inner], one after another. */
class SplitProgram implements Program {
  variableNames = ["x", "starts"];
  outputShape: number[];
  shaderKey = "cxrSplitContiguous";
  dispatchLayout = { x: [0] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number] = [256, 1, 1];
  uniforms = "n : i32, total : i32, inner : i32, outer : i32, parts : i32,";

  constructor(n: number) {
    this.outputShape = [n];
    this.dispatch = [Math.ceil(n / 256), 1, 1];
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
        let block = uniforms.outer * start * inner;
        result[block + (o * size + (a - start)) * inner + i] = x[index];
      }`;
  }
}

type Args = { inputs: tf.NamedTensorInfoMap; backend: unknown; attrs?: tf.NamedAttrMap };

/** The kernel; null where it does not apply (not float32, empty parts), for tfjs's instead. */
export function splitVContiguous(args: Args): tf.TensorInfo[] | null {
  const backend = args.backend as WebGPUBackendInternals;
  const { x } = args.inputs as Record<string, tf.TensorInfo>;
  if (x.dtype !== "float32") return null;
  const attrs = args.attrs as unknown as { numOrSizeSplits: number[] | number; axis: number };
  const axis = tf.util.parseAxisParam(attrs.axis, x.shape)[0];
  const sizes = tf.backend_util.prepareSplitSize(
    { shape: x.shape } as tf.Tensor,
    attrs.numOrSizeSplits,
    axis,
  );
  if (sizes.some((s) => s === 0)) return null;
  const outer = tf.util.sizeFromShape(x.shape.slice(0, axis));
  const inner = tf.util.sizeFromShape(x.shape.slice(axis + 1));
  const total = x.shape[axis];
  const starts = [0];
  for (const s of sizes) starts.push(starts[starts.length - 1] + s);
  const outputs = sizes.map((s) => {
    const shape = x.shape.slice();
    shape[axis] = s;
    return backend.makeTensorInfo(shape, "float32");
  });
  let src = x;
  const temps: tf.TensorInfo[] = [];
  if (outer > 1) {
    const n = tf.util.sizeFromShape(x.shape);
    const startsInfo = backend.makeTensorInfo([starts.length], "int32", Int32Array.from(starts));
    src = backend.runWebGPUProgram(new SplitProgram(n), [x, startsInfo], "float32", [
      { type: "int32", data: [n] },
      { type: "int32", data: [total] },
      { type: "int32", data: [inner] },
      { type: "int32", data: [outer] },
      { type: "int32", data: [sizes.length] },
    ]);
    temps.push(startsInfo, src);
  }
  copyRanges(
    backend,
    sizes.map((s, p) => ({
      src,
      srcOffset: outer * starts[p] * inner,
      dst: outputs[p],
      dstOffset: 0,
      n: outer * s * inner,
    })),
  );
  for (const t of temps) backend.disposeData(t.dataId);
  return outputs;
}
