/**
 * The few parts of tfjs-backend-webgpu 4.22's backend that this project's kernels use: running a
 * WGSL program through tfjs's own machinery (its shader prelude, pipeline cache, uniform
 * buffers and batched submission), and buffer-to-buffer copies recorded in its command encoder.
 *
 * A program's WGSL sees its inputs as `var<storage, read> NAME: array<f32>` (NAME from
 * `variableNames`), its output as `result`, and `uniforms.FIELD` for the fields declared in
 * `uniforms`; with a flat dispatch layout its entry point is `fn main(index : i32)`.
 * @module
 */
import type * as tf from "@tensorflow/tfjs-core";

/** A uniform value as tfjs's `runWebGPUProgram` takes it. */
export interface Uniform {
  type: "float32" | "int32" | "uint32";
  data: number[];
}

/** What tfjs-backend-webgpu requires of a program (its `WebGPUProgram` interface). */
export interface Program {
  variableNames: string[];
  outputShape: number[];
  shaderKey: string;
  dispatchLayout: { x: number[]; y?: number[]; z?: number[] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number];
  uniforms?: string;
  /** Adds `size : i32` (the output's element count) to the uniforms. */
  size?: boolean;
  getUserCode(): string;
}

interface TensorData {
  resource: GPUBuffer | null;
  shape: number[];
  dtype: tf.DataType;
}

/** The WebGPUBackend members used here (tfjs-backend-webgpu 4.22, `backend_webgpu.js`). */
export interface WebGPUBackendInternals extends tf.KernelBackend {
  device: GPUDevice;
  tensorMap: { get(dataId: tf.DataId): TensorData };
  commandEncoder: GPUCommandEncoder | null;
  commandQueueOwnedIds: WeakSet<tf.DataId>;
  runWebGPUProgram(
    program: Program,
    inputs: tf.TensorInfo[],
    dtype: tf.DataType,
    uniforms?: Uniform[],
    output?: tf.TensorInfo,
  ): tf.TensorInfo;
  makeTensorInfo(shape: number[], dtype: tf.DataType, values?: tf.TypedArray): tf.TensorInfo;
  uploadToGPU(dataId: tf.DataId): void;
  ensureCommandEncoderReady(): void;
  endComputePassEncoder(): void;
  disposeData(dataId: tf.DataId, force?: boolean): boolean;
}

/** Workgroups along x for `threads` threads of `perGroup` (tfjs splits >65535 over y/z). */
export function groups(threads: number, perGroup: number): [number, number, number] {
  return [Math.max(1, Math.ceil(threads / perGroup)), 1, 1];
}

/** The GPU buffer of `t`, allocated (and uploaded, if its values are on the CPU) first. */
export function bufferOf(backend: WebGPUBackendInternals, t: tf.TensorInfo): GPUBuffer {
  backend.uploadToGPU(t.dataId);
  return backend.tensorMap.get(t.dataId).resource!;
}

/**
 * Records copies of `n` float32 elements from `src` at `srcOffset` to `dst` at `dstOffset`
 * (element offsets) in tfjs's command encoder: copies cost no dispatch, bind group or uniform
 * buffer. Every tensor is marked as used by the pending commands, so tfjs defers freeing it
 * until they are submitted.
 */
export function copyRanges(
  backend: WebGPUBackendInternals,
  copies: {
    src: tf.TensorInfo;
    srcOffset: number;
    dst: tf.TensorInfo;
    dstOffset: number;
    n: number;
  }[],
): void {
  const nonEmpty = copies.filter((c) => c.n > 0);
  const buffers = nonEmpty.map((c) => [bufferOf(backend, c.src), bufferOf(backend, c.dst)]);
  backend.ensureCommandEncoderReady();
  backend.endComputePassEncoder();
  nonEmpty.forEach((c, i) => {
    backend.commandEncoder!.copyBufferToBuffer(
      buffers[i][0],
      c.srcOffset * 4,
      buffers[i][1],
      c.dstOffset * 4,
      c.n * 4,
    );
    backend.commandQueueOwnedIds.add(c.src.dataId);
    backend.commandQueueOwnedIds.add(c.dst.dataId);
  });
}
