/**
 * The native tensor copies and Add: Concat, SplitV and Slice as multi-threaded oneDNN strided
 * copies (one per input or output), Add of same-shape tensors as one oneDNN pass; small tensors
 * and other cases fall back to the wasm kernels.
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import { offsetPointer } from "./onednn.ts";
import { fallback, heapPointer, type KernelArgs, openOneDnn } from "./kernel_support.ts";

/** Below this many values tfjs's own copy loop beats a oneDNN call (and keeps its cache small). */
const MIN_COPY_VALUES = 1 << 14;

/**
 * `Concat` of float32 tensors as [outer, inner] matrices joined along their columns (any axis):
 * one multi-threaded oneDNN copy per input into its column range of the output, where tfjs's
 * loop copies row by row on one thread (a DenseNet dense layer joins up to 24 inputs of
 * 50,176 rows).
 */
export function concat(args: KernelArgs): tf.TensorInfo {
  const inputs = Object.values(args.inputs).filter((t) => t != null) as tf.TensorInfo[];
  const { backend } = args;
  const shape = inputs[0]?.shape ?? [];
  const axis = tf.util.parseAxisParam(args.attrs.axis as number, shape)[0];
  const outShape = tf.backend_util.computeOutShape(inputs.map((t) => t.shape), axis);
  const rows = tf.util.sizeFromShape(shape.slice(0, axis));
  const total = tf.util.sizeFromShape(outShape);
  if (
    inputs.length < 2 || inputs.some((t) => t.dtype !== "float32") || rows < 2 ||
    total < MIN_COPY_VALUES || inputs.some((t) => tf.util.sizeFromShape(t.shape) === 0)
  ) {
    return fallback("Concat", args);
  }
  const out = backend.makeOutput(outShape, "float32");
  const width = total / rows;
  const dnn = openOneDnn();
  let column = 0;
  for (const t of inputs) {
    const cols = tf.util.sizeFromShape(t.shape) / rows;
    dnn.copyRows(
      rows,
      cols,
      heapPointer(backend, t),
      cols,
      offsetPointer(heapPointer(backend, out), 4 * column),
      width,
    );
    column += cols;
  }
  return out;
}

/** `SplitV`: the inverse of `concat`, one oneDNN copy per output from its column range. */
function splitV(args: KernelArgs): tf.TensorInfo[] {
  const { backend } = args;
  const x = args.inputs.x!;
  const axis = tf.util.parseAxisParam(args.attrs.axis as number, x.shape)[0];
  const sizes = tf.backend_util.prepareSplitSize(
    x as unknown as tf.Tensor,
    args.attrs.numOrSizeSplits as number[] | number,
    axis,
  );
  const rows = tf.util.sizeFromShape(x.shape.slice(0, axis));
  const total = tf.util.sizeFromShape(x.shape);
  if (x.dtype !== "float32" || rows < 2 || total < MIN_COPY_VALUES || sizes.some((s) => s <= 0)) {
    return fallback("SplitV", args) as unknown as tf.TensorInfo[];
  }
  const width = total / rows;
  const inner = width / x.shape[axis];
  const dnn = openOneDnn();
  let column = 0;
  return sizes.map((size) => {
    const shape = x.shape.slice();
    shape[axis] = size;
    const out = backend.makeOutput(shape, "float32");
    const cols = size * inner;
    dnn.copyRows(
      rows,
      cols,
      offsetPointer(heapPointer(backend, x), 4 * column),
      width,
      heapPointer(backend, out),
      cols,
    );
    column += cols;
    return out;
  });
}

/**
 * `Slice` where it is one block of columns of an [outer, inner] matrix (the axes before the
 * sliced one whole, those after it too): one multi-threaded oneDNN copy. A dense block's layer
 * inputs and prefix gradients are channel prefixes of the block's tensors.
 */
export function slice(args: KernelArgs): tf.TensorInfo {
  const { backend } = args;
  const x = args.inputs.x!;
  const [begin, size] = tf.slice_util.parseSliceParams(
    x as unknown as tf.Tensor,
    args.attrs.begin as number[],
    args.attrs.size as number[],
  );
  const shape = x.shape;
  // The sliced axis: the last one the slice does not take whole.
  let axis = shape.length - 1;
  while (axis > 0 && begin[axis] === 0 && size[axis] === shape[axis]) axis--;
  const whole = (i: number) => begin[i] === 0 && size[i] === shape[i];
  const rows = tf.util.sizeFromShape(shape.slice(0, axis));
  const inner = tf.util.sizeFromShape(shape.slice(axis + 1));
  const total = tf.util.sizeFromShape(size);
  if (
    x.dtype !== "float32" || rows < 2 || total < MIN_COPY_VALUES ||
    shape.some((_, i) => i !== axis && !whole(i))
  ) {
    return fallback("Slice", args);
  }
  const out = backend.makeOutput(size, "float32");
  openOneDnn().copyRows(
    rows,
    size[axis] * inner,
    offsetPointer(heapPointer(backend, x), 4 * begin[axis] * inner),
    shape[axis] * inner,
    heapPointer(backend, out),
    size[axis] * inner,
  );
  return out;
}

/**
 * `Add` of two float32 tensors of one shape (no broadcasting) as one multi-threaded oneDNN pass:
 * the gradient accumulations of a training step (tfjs's runs on one thread).
 */
export function add(args: KernelArgs): tf.TensorInfo {
  const { a, b } = args.inputs;
  const { backend } = args;
  const n = tf.util.sizeFromShape(a!.shape);
  if (
    a!.dtype !== "float32" || b!.dtype !== "float32" || n < MIN_COPY_VALUES ||
    !tf.util.arraysEqual(a!.shape, b!.shape)
  ) {
    return fallback("Add", args);
  }
  const out = backend.makeOutput(a!.shape, "float32");
  openOneDnn().add(
    n,
    heapPointer(backend, a!),
    heapPointer(backend, b!),
    heapPointer(backend, out),
  );
  return out;
}

/** The kernels of this module, by name. */
export const COPY_KERNELS: Record<string, tf.KernelFunc> = {
  Concat: concat as unknown as tf.KernelFunc,
  SplitV: splitV as unknown as tf.KernelFunc,
  Slice: slice as unknown as tf.KernelFunc,
  Add: add as unknown as tf.KernelFunc,
};
