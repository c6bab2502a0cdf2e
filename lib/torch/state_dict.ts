/**
 * Host-side tensors as read from or written to checkpoint files: a dtype, a shape and a
 * plain typed array, in row-major (C) order. A state dict maps torchvision parameter names
 * (`features.denseblock1.denselayer1.conv1.weight`) to such tensors, in insertion order.
 * @module
 */

export type DType =
  | "float32"
  | "float64"
  | "float16"
  | "bfloat16"
  | "int64"
  | "int32"
  | "int16"
  | "int8"
  | "uint8"
  | "bool";

/**
 * A tensor on the host. `data` is contiguous, row-major. float16/bfloat16 values are widened
 * to a Float32Array (dtype keeps the stored type); int64 uses BigInt64Array.
 */
export interface HostTensor {
  dtype: DType;
  shape: number[];
  data:
    | Float32Array
    | Float64Array
    | BigInt64Array
    | Int32Array
    | Int16Array
    | Int8Array
    | Uint8Array;
}

/** Parameter name → tensor, insertion-ordered like PyTorch's OrderedDict. */
export type StateDict = Map<string, HostTensor>;

/** A model checkpoint: weights plus the per-class decision thresholds (original tool format). */
export interface Checkpoint {
  stateDict: StateDict;
  /** Per-class thresholds, or null for a bare state_dict (e.g. ImageNet weights). */
  thresholds: Float64Array | null;
}

/** Number of elements of a shape. */
export function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}
