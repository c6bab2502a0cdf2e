/**
 * The seam between the network (lib/model/) and the kernels that run it: every custom op the
 * model uses, by name, with its inputs, attributes and a typed caller, as tfjs-core's
 * `kernel_names.ts` names tfjs's own. lib/model/ imports this module and nothing else of
 * lib/backends/.
 *
 * Each op is a fast kernel on the backends whose kernel table (kernel_tables.ts) has it, and a
 * reference implementation in plain tfjs ops (seam_reference.ts) everywhere else. Which one a
 * backend runs is decided once, when its tables are installed (`resolveSeam`), never per call.
 * The references are also the oracle the fast kernels are tested against (tests/seam_test.ts).
 *
 * Contracts (float32, NHWC, M = N·H·W values per channel; attrs `{epsilon, relu}`):
 * - `BatchNormReluTrain` {x, gamma, beta} → [y, mean, variance (biased)],
 *   y = (x − mean)·gamma/√(variance + epsilon) + beta, then max(·, 0) when relu.
 * - `BatchNormReluGrad` {dy, x, gamma, beta, mean, variance} → [dx, dgamma, dbeta]: g = dy
 *   masked where the pre-ReLU value ≤ 0, dbeta = Σ g, dgamma = Σ g·x̂,
 *   dx = gamma·rstd/M · (M·g − dbeta − x̂·dgamma).
 * - `BatchNormReluInference` {x, mean, variance, gamma, beta} → y with given statistics.
 * - `BatchNormReluConcatInference` {mean, variance, gamma, beta, x0, x1, …} → y of the channel
 *   concatenation of x0, x1, … (same leading dims), which it never writes.
 * - `BatchNormReluConcatTrain` {gamma, beta, x0, x1, …} → [y, mean, variance] as
 *   `BatchNormReluTrain` of the concatenation.
 * - `BatchNormReluConcatGrad` {dy, gamma, beta, mean, variance, addend, x0, x1, …} →
 *   [dx + addend's first C channels, dgamma, dbeta]: `BatchNormReluGrad` of the concatenation
 *   with the gradient already accumulated there added in the same pass.
 * - `AdamStep` {p0…, g0…, m, v} `AdamStepAttrs` → [p0′…, m′, v′]: torch.optim.Adam's update of
 *   every parameter in one call (m, v: the flat moments in parameter order).
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import "./tf_gradients.ts";
import * as reference from "./seam_reference.ts";
import { installBackendKernels, kernelsChosen } from "./kernel_tables.ts";
import { installedTables, registryGeneration } from "./kernel_registry.ts";

export const BN_TRAIN_KERNEL = "BatchNormReluTrain";
export const BN_GRAD_KERNEL = "BatchNormReluGrad";
export const BN_INFERENCE_KERNEL = "BatchNormReluInference";
export const BN_CONCAT_INFERENCE_KERNEL = "BatchNormReluConcatInference";
export const BN_CONCAT_TRAIN_KERNEL = "BatchNormReluConcatTrain";
export const BN_CONCAT_GRAD_KERNEL = "BatchNormReluConcatGrad";
export const ADAM_STEP = "AdamStep";

/** Every seam op, by kernel name. */
export const SEAM_OPS = [
  BN_TRAIN_KERNEL,
  BN_GRAD_KERNEL,
  BN_INFERENCE_KERNEL,
  BN_CONCAT_INFERENCE_KERNEL,
  BN_CONCAT_TRAIN_KERNEL,
  BN_CONCAT_GRAD_KERNEL,
  ADAM_STEP,
] as const;

/** Attributes of the BatchNorm ops. */
export interface BatchNormReluAttrs {
  epsilon: number;
  relu: boolean;
}

/** Attributes of `AdamStep`. */
export interface AdamStepAttrs {
  beta1: number;
  beta2: number;
  eps: number;
  /** lr / (1 − β1ᵗ). */
  stepSize: number;
  /** √(1 − β2ᵗ). */
  sqrtBc2: number;
}

/** A BatchNorm's affine parameters. */
export interface Affine {
  gamma: tf.Tensor1D;
  beta: tf.Tensor1D;
}

/** Per-channel statistics: running ones, or a training forward's batch ones. */
export interface Statistics {
  mean: tf.Tensor1D;
  variance: tf.Tensor1D;
}

/**
 * The inputs of a BatchNorm that reads a dense block: its features, in channel order. Whether
 * they are ever concatenated is the op's business: a backend with the concatenation kernels
 * reads the list; the references join it, once (`joined`), and a block that keeps its
 * intermediates keeps that join for the backward pass (`joinedIfMade`).
 */
export class FeatureList {
  #joined: tf.Tensor4D | null;

  constructor(readonly parts: tf.Tensor4D[], joined: tf.Tensor4D | null = null) {
    if (parts.length === 0) throw new Error("FeatureList: no features");
    this.#joined = parts.length === 1 ? parts[0] : joined;
  }

  /** The channel concatenation (made on first use). */
  joined(): tf.Tensor4D {
    return this.#joined ??= tf.concat(this.parts, 3);
  }

  /** The concatenation if one was made for this list, else null (one part: no join). */
  joinedIfMade(): tf.Tensor4D | null {
    return this.parts.length > 1 ? this.#joined : null;
  }

  /** Channels in all. */
  get channels(): number {
    return this.parts.reduce((c, t) => c + t.shape[3], 0);
  }
}

/** One backend's choice for every seam op (`resolveSeam`). */
export interface SeamOps {
  bnReluTrain(x: tf.Tensor4D, p: Affine, a: BatchNormReluAttrs): [tf.Tensor4D, Statistics];
  bnReluGrad(
    dy: tf.Tensor4D,
    x: tf.Tensor4D,
    p: Affine,
    s: Statistics,
    a: BatchNormReluAttrs,
  ): [tf.Tensor4D, tf.Tensor1D, tf.Tensor1D];
  bnReluInference(x: tf.Tensor4D, p: Affine, s: Statistics, a: BatchNormReluAttrs): tf.Tensor4D;
  /** y of `bnReluTrain` for statistics it returned, recomputed (a memory-efficient backward). */
  bnReluRecompute(x: tf.Tensor4D, p: Affine, s: Statistics, a: BatchNormReluAttrs): tf.Tensor4D;
  bnReluConcatTrain(xs: FeatureList, p: Affine, a: BatchNormReluAttrs): [tf.Tensor4D, Statistics];
  /** [dx + addend's first C channels, dgamma, dbeta]. */
  bnReluConcatGrad(
    dy: tf.Tensor4D,
    xs: FeatureList,
    p: Affine,
    s: Statistics,
    addend: tf.Tensor4D,
    a: BatchNormReluAttrs,
  ): [tf.Tensor4D, tf.Tensor1D, tf.Tensor1D];
  bnReluConcatInference(
    xs: FeatureList,
    p: Affine,
    s: Statistics,
    a: BatchNormReluAttrs,
  ): tf.Tensor4D;
  bnReluConcatRecompute(
    xs: FeatureList,
    p: Affine,
    s: Statistics,
    a: BatchNormReluAttrs,
  ): tf.Tensor4D;
  /**
   * A dense block's running gradient `dPrefix` (its channels so far) split for layer `at` of
   * `width` channels: `dNew`, the gradient of that layer's feature, and `addend`, what
   * `bnReluConcatGrad` adds its dx to (the whole prefix where the kernel reads its first
   * channels in place, else just them).
   */
  splitPrefix(
    dPrefix: tf.Tensor4D,
    at: number,
    width: number,
  ): { addend: tf.Tensor4D; dNew: tf.Tensor4D };
  adamStep(
    params: tf.Tensor[],
    grads: tf.Tensor[],
    m: tf.Tensor,
    v: tf.Tensor,
    a: AdamStepAttrs,
  ): [tf.Tensor[], tf.Tensor, tf.Tensor];
  /**
   * Evaluation mode folds each dense layer's norm2 into its conv1 (a FusedConv2D with the
   * filter scaled): where the backend has no one-pass `BatchNormReluInference`.
   */
  foldNorm2: boolean;
  /** The seam ops that run as this backend's kernels (the rest run their references). */
  fast: ReadonlySet<string>;
}

/** Runs a registered seam kernel. */
function run<T>(name: string, inputs: tf.NamedTensorMap, attrs: object): T {
  return tf.engine().runKernel(name, inputs, attrs as unknown as tf.NamedAttrMap) as T;
}

/** The inputs of a BatchNorm-of-a-concatenation kernel: `vectors`, then x0, x1, … */
function listInputs(vectors: tf.NamedTensorMap, xs: FeatureList): tf.NamedTensorMap {
  const inputs = { ...vectors };
  xs.parts.forEach((x, i) => (inputs[`x${i}`] = x));
  return inputs;
}

/**
 * Decides, for the active backend, which seam ops run as its kernels (installing its kernel
 * tables first if no backend start chose them: a test that set a tfjs backend directly).
 */
export function resolveSeam(): SeamOps {
  const backendName = tf.getBackend();
  if (!kernelsChosen(backendName)) installBackendKernels(backendName);
  const has = (k: string) => tf.getKernel(k, backendName) != null;
  const exact = installedTables(backendName).some((t) => t.exactRecompute);
  const fused = has(BN_TRAIN_KERNEL) && has(BN_GRAD_KERNEL);
  const inference = has(BN_INFERENCE_KERNEL);
  const concatInference = has(BN_CONCAT_INFERENCE_KERNEL);
  const concatTraining = has(BN_CONCAT_TRAIN_KERNEL) && has(BN_CONCAT_GRAD_KERNEL) &&
    concatInference && exact;
  const adam = has(ADAM_STEP);

  const bnReluTrain: SeamOps["bnReluTrain"] = fused
    ? (x, p, a) => {
      const [y, mean, variance] = run<tf.Tensor[]>(BN_TRAIN_KERNEL, { x, ...p }, a);
      return [y as tf.Tensor4D, { mean: mean as tf.Tensor1D, variance: variance as tf.Tensor1D }];
    }
    : reference.bnReluTrain;
  const bnReluGrad: SeamOps["bnReluGrad"] = fused
    ? (dy, x, p, s, a) => run(BN_GRAD_KERNEL, { dy, x, ...p, ...s }, a)
    : reference.bnReluGrad;
  const bnReluInference: SeamOps["bnReluInference"] = inference
    ? (x, p, s, a) => run(BN_INFERENCE_KERNEL, { x, ...s, ...p }, a)
    : reference.bnReluInference;
  // One normalising pass only where it equals the training kernel's y; else that kernel again.
  const bnReluRecompute: SeamOps["bnReluRecompute"] = inference && exact
    ? bnReluInference
    : (x, p, _s, a) => bnReluTrain(x, p, a)[0];
  const bnReluConcatInference: SeamOps["bnReluConcatInference"] = concatInference
    ? (xs, p, s, a) => run(BN_CONCAT_INFERENCE_KERNEL, listInputs({ ...s, ...p }, xs), a)
    : (xs, p, s, a) => bnReluInference(xs.joined(), p, s, a);

  const ops: SeamOps = {
    bnReluTrain,
    bnReluGrad,
    bnReluInference,
    bnReluRecompute,
    bnReluConcatInference,
    bnReluConcatTrain: concatTraining
      ? (xs, p, a) => {
        const [y, mean, variance] = run<tf.Tensor[]>(
          BN_CONCAT_TRAIN_KERNEL,
          listInputs({ ...p }, xs),
          a,
        );
        return [y as tf.Tensor4D, {
          mean: mean as tf.Tensor1D,
          variance: variance as tf.Tensor1D,
        }];
      }
      : (xs, p, a) => bnReluTrain(xs.joined(), p, a),
    bnReluConcatGrad: concatTraining
      ? (dy, xs, p, s, addend, a) =>
        run(BN_CONCAT_GRAD_KERNEL, listInputs({ dy, ...p, ...s, addend }, xs), a)
      : (dy, xs, p, s, addend, a) =>
        reference.addPrefix(bnReluGrad(dy, xs.joined(), p, s, a), addend),
    bnReluConcatRecompute: concatTraining
      ? bnReluConcatInference
      : (xs, p, s, a) => bnReluRecompute(xs.joined(), p, s, a),
    splitPrefix: concatTraining
      ? (dPrefix, at, width) => ({
        addend: dPrefix,
        dNew: tf.slice(dPrefix, [0, 0, 0, at], [-1, -1, -1, width]),
      })
      : reference.splitPrefix,
    adamStep: adam
      ? (params, grads, m, v, a) => {
        const inputs: tf.NamedTensorMap = { m, v };
        params.forEach((x, i) => {
          inputs[`p${i}`] = x;
          inputs[`g${i}`] = grads[i];
        });
        const out = run<tf.Tensor[]>(ADAM_STEP, inputs, a);
        return [out.slice(0, params.length), out[params.length], out[params.length + 1]];
      }
      : reference.adamStep,
    foldNorm2: !inference,
    fast: new Set(
      SEAM_OPS.filter((k) =>
        k === BN_CONCAT_TRAIN_KERNEL || k === BN_CONCAT_GRAD_KERNEL
          ? concatTraining
          : k === BN_TRAIN_KERNEL || k === BN_GRAD_KERNEL
          ? fused
          : has(k)
      ),
    ),
  };
  return ops;
}

let current: { backend: tf.KernelBackend; generation: number; ops: SeamOps } | null = null;

/**
 * The seam ops of the active backend: resolved when its kernel tables were installed (or the
 * backend changed), then reused.
 */
export function seam(): SeamOps {
  const backend = tf.backend();
  if (current?.backend !== backend || current.generation !== registryGeneration()) {
    const ops = resolveSeam();
    current = { backend, generation: registryGeneration(), ops };
  }
  return current.ops;
}
