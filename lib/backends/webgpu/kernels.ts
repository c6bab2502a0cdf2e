/**
 * The `webgpu` backend's kernel table: this project's WebGPU kernels (the seam's BatchNorm and
 * Adam kernels, which tfjs lacks; the weight gradient, split and concatenation, which replace
 * tfjs's, kept as the fallback for the cases ours do not cover and to put back for before/after
 * measurements).
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { adamStepWebgpu } from "./adam_step.ts";
import { batchNormReluGrad, batchNormReluTrain } from "./batchnorm.ts";
import { batchNormReluConcatInference, batchNormReluInference } from "./batchnorm_inference.ts";
import { conv2DBackpropFilterGemm } from "./conv_backprop_filter.ts";
import { concatBlocked, splitVContiguous } from "./concat_split.ts";
import {
  ADAM_STEP,
  BN_CONCAT_INFERENCE_KERNEL,
  BN_GRAD_KERNEL,
  BN_INFERENCE_KERNEL,
  BN_TRAIN_KERNEL,
} from "../seam.ts";
import type { KernelTable } from "../kernel_registry.ts";

/**
 * tfjs-backend-webgpu's flag choosing its naive `Conv2DBackpropInput` (one thread per input
 * gradient, looping over KH·KW·Co with no reuse; its default) over its tiled implicit-GEMM
 * program (`Conv2DDerInputMMProgram`), which we use.
 */
const NAIVE_BACKPROP_INPUT = "WEBGPU_USE_NAIVE_CONV2D_TRANSPOSE";

let table: KernelTable | null = null;

/**
 * The table. Its BatchNorm inference kernels normalise with the training kernel's arithmetic
 * (`normalize`), so given its batch statistics they reproduce its y.
 */
export function webgpuKernelTable(): KernelTable {
  return table ??= {
    name: "webgpu",
    backendName: "webgpu",
    kernels: {
      [ADAM_STEP]: adamStepWebgpu,
      [BN_TRAIN_KERNEL]: batchNormReluTrain,
      [BN_GRAD_KERNEL]: batchNormReluGrad,
      [BN_INFERENCE_KERNEL]: batchNormReluInference,
      [BN_CONCAT_INFERENCE_KERNEL]: batchNormReluConcatInference,
      Conv2DBackpropFilter: conv2DBackpropFilterGemm,
      SplitV: splitVContiguous,
      Concat: concatBlocked,
    },
    exactRecompute: true,
    setup: () => tf.env().set(NAIVE_BACKPROP_INPUT, false),
    teardown: () => tf.env().set(NAIVE_BACKPROP_INPUT, true),
  };
}
