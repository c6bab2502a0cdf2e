/**
 * DenseNet (torchvision's architecture and numerics) as plain tfjs ops over named variables.
 *
 * Every parameter and BatchNorm running statistic is a `tf.Variable`, held in `model.variables`
 * under its torchvision `state_dict()` key (`features.denseblock1.denselayer1.conv1.weight`), so
 * checkpoint mapping is a table of layout transposes (see model_weights.ts). Layouts are tfjs's:
 * conv `[kh, kw, in, out]`, linear `[in, out]`, activations NHWC. tfjs keeps one global registry
 * of variable names, so the engine-level name carries a per-model prefix (`densenet3/...`);
 * `model.variables` is keyed by the plain torchvision key.
 *
 * BatchNorm in training mode uses batch statistics and, like torch, updates the running
 * statistics as a side effect of `forward` (momentum 0.1, unbiased batch variance,
 * `numBatchesTracked += 1`): the new values are assigned to the (non-trainable) variables inside
 * `forward`, which is safe inside `tf.variableGrads` / `optimizer.minimize` because the running
 * statistics are not read by a training-mode forward. So one training-mode `forward` = one
 * update, exactly as one `model(x)` call in torch. (The updates of all BatchNorms are applied
 * together at the end of the forward pass, ~15 kernels in all.)
 *
 * Where the backend registers them, BatchNorm + ReLU runs as fused kernels with a custom
 * gradient (`BatchNormReluTrain` / `BatchNormReluGrad`, lib/backends/batchnorm_kernels.ts; the
 * WebGPU backend registers its own), and evaluation mode folds norm0 into conv0 and (where the
 * backend lacks the one-pass inference kernel) each dense layer's norm2 into its conv1.
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import { Rng } from "../util/rng.ts";
import "../backends/tf_gradients.ts";
import {
  BN_CONCAT_GRAD_KERNEL,
  BN_CONCAT_INFERENCE_KERNEL,
  BN_CONCAT_TRAIN_KERNEL,
  BN_GRAD_KERNEL,
  BN_INFERENCE_KERNEL,
  BN_TRAIN_KERNEL,
} from "../backends/batchnorm_kernels.ts";

/** DenseNet hyper-parameters, as torchvision's `DenseNet(...)` arguments. */
export interface DenseNetConfig {
  growthRate: number;
  blockConfig: number[];
  numInitFeatures: number;
  bnSize: number;
  numClasses: number;
}

/** DenseNet-121 with the original tool's 14-way head. */
export const DENSENET121: DenseNetConfig = {
  growthRate: 32,
  blockConfig: [6, 12, 24, 16],
  numInitFeatures: 64,
  bnSize: 4,
  numClasses: 14,
};

/** The small DenseNet of the test fixtures (`tests/fixtures/torch/tiny_*.pt`). */
export const TINY_DENSENET: DenseNetConfig = {
  growthRate: 8,
  blockConfig: [2, 2, 2, 2],
  numInitFeatures: 16,
  bnSize: 4,
  numClasses: 14,
};

/** BatchNorm epsilon and running-statistics momentum, as torch's defaults. */
export const BN_EPS = 1e-5;
export const BN_MOMENTUM = 0.1;

/** One BatchNorm2d: affine parameters, running statistics and the update counter. */
export interface BatchNorm {
  weight: tf.Variable<tf.Rank.R1>;
  bias: tf.Variable<tf.Rank.R1>;
  runningMean: tf.Variable<tf.Rank.R1>;
  runningVar: tf.Variable<tf.Rank.R1>;
  /** torch's int64 `num_batches_tracked` buffer, kept as a plain number. */
  numBatchesTracked: number;
}

/** BN-ReLU-1×1 conv (bottleneck) - BN-ReLU-3×3 conv. */
export interface DenseLayer {
  norm1: BatchNorm;
  conv1: tf.Variable<tf.Rank.R4>;
  norm2: BatchNorm;
  conv2: tf.Variable<tf.Rank.R4>;
}

/** BN-ReLU-1×1 conv-2×2 average pool between dense blocks. */
export interface Transition {
  norm: BatchNorm;
  conv: tf.Variable<tf.Rank.R4>;
}

/** A DenseNet: its config, its parts, and every variable by torchvision key. */
export interface DenseNet {
  config: DenseNetConfig;
  conv0: tf.Variable<tf.Rank.R4>;
  norm0: BatchNorm;
  blocks: DenseLayer[][];
  transitions: Transition[];
  norm5: BatchNorm;
  classifier: { weight: tf.Variable<tf.Rank.R2>; bias: tf.Variable<tf.Rank.R1> };
  /** torchvision key → variable, in `state_dict()` order (num_batches_tracked excluded). */
  variables: Map<string, tf.Variable>;
  /** Module prefix (`features.norm0`) → BatchNorm, in module order. */
  batchNorms: Map<string, BatchNorm>;
  /** All torchvision state_dict keys in `state_dict()` order, num_batches_tracked included. */
  stateDictKeys: string[];
}

let modelCounter = 0;

/**
 * Builds a DenseNet initialised as torchvision does: conv weights kaiming_normal_ (fan_in,
 * gain √2), BatchNorm weight 1 / bias 0, running stats 0 / 1, classifier weight
 * U(-1/√in, 1/√in) (torch's Linear default) and bias 0. Seeded: same seed, same weights.
 */
export function createDenseNet(config: DenseNetConfig, opts: { seed?: number } = {}): DenseNet {
  validateConfig(config);
  const rng = new Rng(opts.seed ?? 0);
  const prefix = `densenet${++modelCounter}/`;
  const variables = new Map<string, tf.Variable>();
  const batchNorms = new Map<string, BatchNorm>();
  const stateDictKeys: string[] = [];

  const add = <R extends tf.Rank>(key: string, t: tf.Tensor<R>, trainable: boolean) => {
    const v = tf.variable(t, trainable, prefix + key);
    t.dispose();
    variables.set(key, v);
    stateDictKeys.push(key);
    return v;
  };
  const conv = (key: string, k: number, cin: number, cout: number) => {
    const std = Math.sqrt(2 / (cin * k * k));
    const data = new Float32Array(k * k * cin * cout);
    for (let i = 0; i < data.length; i++) data[i] = rng.normal(0, std);
    return add(`${key}.weight`, tf.tensor4d(data, [k, k, cin, cout]), true);
  };
  const norm = (key: string, c: number): BatchNorm => {
    const bn: BatchNorm = {
      weight: add(`${key}.weight`, tf.ones([c]) as tf.Tensor1D, true),
      bias: add(`${key}.bias`, tf.zeros([c]) as tf.Tensor1D, true),
      runningMean: add(`${key}.running_mean`, tf.zeros([c]) as tf.Tensor1D, false),
      runningVar: add(`${key}.running_var`, tf.ones([c]) as tf.Tensor1D, false),
      numBatchesTracked: 0,
    };
    stateDictKeys.push(`${key}.num_batches_tracked`);
    batchNorms.set(key, bn);
    return bn;
  };

  const { growthRate, blockConfig, numInitFeatures, bnSize, numClasses } = config;
  const conv0 = conv("features.conv0", 7, 3, numInitFeatures);
  const norm0 = norm("features.norm0", numInitFeatures);
  const blocks: DenseLayer[][] = [];
  const transitions: Transition[] = [];
  let channels = numInitFeatures;
  blockConfig.forEach((numLayers, b) => {
    const layers: DenseLayer[] = [];
    for (let l = 0; l < numLayers; l++) {
      const key = `features.denseblock${b + 1}.denselayer${l + 1}`;
      const cin = channels + l * growthRate;
      layers.push({
        norm1: norm(`${key}.norm1`, cin),
        conv1: conv(`${key}.conv1`, 1, cin, bnSize * growthRate),
        norm2: norm(`${key}.norm2`, bnSize * growthRate),
        conv2: conv(`${key}.conv2`, 3, bnSize * growthRate, growthRate),
      });
    }
    blocks.push(layers);
    channels += numLayers * growthRate;
    if (b !== blockConfig.length - 1) {
      const key = `features.transition${b + 1}`;
      const cout = Math.floor(channels / 2);
      transitions.push({
        norm: norm(`${key}.norm`, channels),
        conv: conv(`${key}.conv`, 1, channels, cout),
      });
      channels = cout;
    }
  });
  const norm5 = norm("features.norm5", channels);
  const bound = 1 / Math.sqrt(channels);
  const w = new Float32Array(channels * numClasses);
  for (let i = 0; i < w.length; i++) w[i] = rng.uniform(-bound, bound);
  const classifier = {
    weight: add("classifier.0.weight", tf.tensor2d(w, [channels, numClasses]), true),
    bias: add("classifier.0.bias", tf.zeros([numClasses]) as tf.Tensor1D, true),
  };
  return {
    config: { ...config, blockConfig: [...blockConfig] },
    conv0,
    norm0,
    blocks,
    transitions,
    norm5,
    classifier,
    variables,
    batchNorms,
    stateDictKeys,
  };
}

function validateConfig(c: DenseNetConfig): void {
  const positiveInt = (n: number) => Number.isInteger(n) && n > 0;
  if (
    !positiveInt(c.growthRate) || !positiveInt(c.numInitFeatures) || !positiveInt(c.bnSize) ||
    !positiveInt(c.numClasses) || c.blockConfig.length === 0 || !c.blockConfig.every(positiveInt)
  ) {
    throw new Error(`invalid DenseNet config ${JSON.stringify(c)}`);
  }
}

/** Options of `forward`. */
export interface ForwardOptions {
  /** Training mode: BatchNorm uses (and updates the running stats from) batch statistics. */
  training: boolean;
  /**
   * What a training forward keeps for the backward pass (only affects training mode; every level
   * gives the same numbers): see `MemoryEfficiency`. Default false.
   */
  memoryEfficient?: MemoryEfficiency;
}

/**
 * Memory levels of a training forward, leanest last:
 * - `false` / `"off"`: tfjs's tape keeps every intermediate and every intermediate gradient.
 * - `"bottleneck"`: each dense layer's concat + BN + ReLU + 1×1 conv is recomputed in the
 *   backward pass (Pleiss et al.; torchvision's `memory_efficient=True`).
 * - `"block"`: gradient checkpointing per dense block (+ its transition) and for the stem:
 *   the forward keeps only each segment's input; the backward re-runs the segment under its own
 *   tape (with `"bottleneck"` layers inside) and frees that tape before the next segment.
 * - `"layer"`: the same checkpointing per dense layer, transition and the stem; the smallest
 *   peak, at one extra forward pass. With the fused BatchNorm kernels each dense block is one
 *   custom op instead (`denseBlockOp`: same numbers, fewer kernels, no convolution recomputed).
 * - `true`: `"layer"`.
 */
export type MemoryEfficiency = boolean | "off" | "bottleneck" | "block" | "layer";

/**
 * Runs the network on a batch of normalised NHWC float32 images (any size ≥ 32 px) and returns
 * the LOGITS `[batch, numClasses]`; the original tool's Sigmoid is applied by the caller
 * (`predict`, or a BCE-with-logits loss). Training mode updates BatchNorm running statistics.
 */
export function forward(model: DenseNet, x: tf.Tensor4D, opts: ForwardOptions): tf.Tensor2D {
  return tf.tidy(() => {
    const pooled = tf.mean(features(model, x, opts), [1, 2]) as tf.Tensor2D;
    return tf.add(tf.matMul(pooled, model.classifier.weight), model.classifier.bias);
  });
}

/**
 * The final feature map before global average pooling (norm5 + ReLU), `[batch, h, w, C]`,
 * what class activation maps weight with the classifier. Evaluation mode unless `opts` says
 * otherwise.
 */
export function features(
  model: DenseNet,
  x: tf.Tensor4D,
  opts: ForwardOptions = { training: false },
): tf.Tensor4D {
  if (x.rank !== 4 || x.shape[3] !== 3) {
    throw new Error(`forward expects NHWC images with 3 channels, got shape [${x.shape}]`);
  }
  const pass = passFor(opts);
  const checkpointed = pass.checkpoint !== "none";
  try {
    return tf.tidy(() => {
      const out = featuresPass(model, x, pass, checkpointed);
      applyRunningStats(pass.stats);
      return out;
    });
  } finally {
    for (const u of pass.stats) tf.dispose([u.mean, u.variance]);
  }
}

function featuresPass(
  model: DenseNet,
  x: tf.Tensor4D,
  pass: Pass,
  checkpointed: boolean,
): tf.Tensor4D {
  {
    // The image batch needs no gradient: the stem's checkpoint saves it as a constant.
    let h = checkpointed
      ? checkpoint((xs, p) => stem(xs[0], model, p), [x], stemParams(model), pass, false)
      : stem(x, model, pass);
    if (!pass.training && tf.getKernel(BN_CONCAT_INFERENCE_KERNEL, tf.getBackend()) != null) {
      return unjoinedFeatures(h, model);
    }
    const folds = norm2Folds(model, pass);
    model.blocks.forEach((layers, b) => {
      const t: Transition | undefined = model.transitions[b];
      if (pass.checkpoint === "block") {
        const params = [...layers.flatMap(layerParams), ...(t ? transitionParams(t) : [])];
        const segment = (xs: tf.Tensor4D[], p: Pass) => {
          const out = denseBlock(xs[0], layers, p);
          return t ? transition(out, t, p) : out;
        };
        h = checkpoint(segment, [h], params, pass);
        return;
      }
      h = denseBlock(h, layers, pass, folds?.[b]);
      if (!t) return;
      const input = h;
      h = pass.checkpoint === "layer"
        ? checkpoint((xs, p) => transition(xs[0], t, p), [input], transitionParams(t), pass)
        : tf.tidy(() => transition(input, t, pass));
    });
    return batchNormRelu(h, model.norm5, pass);
  }
}

/**
 * Evaluation mode where the backend has `BatchNormReluConcatInference` (native, wasm, WebGPU): a
 * dense block stays the list of its features and is never concatenated; every BatchNorm that
 * reads the block (each layer's norm1, the transition's norm, norm5) normalises straight from
 * the list, where the joined block would be copied once per layer. norm2 is folded into conv1
 * where `norm2Folds` says so. `h`: the stem's output.
 */
function unjoinedFeatures(h: tf.Tensor4D, model: DenseNet): tf.Tensor4D {
  const pass = passFor({ training: false });
  const folds = norm2Folds(model, pass);
  const bnRelu = (xs: tf.Tensor4D[], bn: BatchNorm): tf.Tensor4D => {
    const inputs: tf.NamedTensorMap = {
      mean: bn.runningMean,
      variance: bn.runningVar,
      gamma: bn.weight,
      beta: bn.bias,
    };
    xs.forEach((x, i) => (inputs[`x${i}`] = x));
    return tf.engine().runKernel(BN_CONCAT_INFERENCE_KERNEL, inputs, BN_RELU_ATTRS) as tf.Tensor4D;
  };
  let features: tf.Tensor4D[] = [h];
  model.blocks.forEach((layers, b) => {
    layers.forEach((layer, i) => {
      const inputs = features;
      const folded = folds?.[b][i];
      features = [
        ...inputs,
        tf.tidy(() => {
          const y1 = bnRelu(inputs, layer.norm1);
          const y2 = folded
            ? foldedBottleneck(y1, layer.conv1, folded)
            : batchNormRelu(tf.conv2d(y1, layer.conv1, 1, "valid"), layer.norm2, pass);
          // 3×3, stride 1: 'same' pads 1 on each side, as torch's padding=1.
          return tf.conv2d(y2, layer.conv2, 1, "same");
        }),
      ];
    });
    const t: Transition | undefined = model.transitions[b];
    if (!t) return;
    const block = features;
    features = [tf.tidy(() => {
      const y = bnRelu(block, t.norm);
      return tf.avgPool(tf.conv2d(y, t.conv, 1, "valid"), 2, 2, "valid");
    })];
    tf.dispose(block);
  });
  const out = bnRelu(features, model.norm5);
  tf.dispose(features);
  return out;
}

/** How one forward pass runs; a backward-pass recompute is the same pass without stat updates. */
interface Pass {
  training: boolean;
  /** Dense layers recompute concat + BN + ReLU + 1×1 conv in the backward pass. */
  bottleneck: boolean;
  /** Segments that keep only their inputs and are re-run under their own tape. */
  checkpoint: "none" | "block" | "layer";
  /** False in a recompute, so running statistics move exactly once per training forward. */
  updateStats: boolean;
  /** Batch statistics waiting to update the running ones, at the end of the forward pass. */
  stats: PendingStats[];
}

/** One BatchNorm's batch statistics (kept tensors) and its M = N·H·W. */
interface PendingStats {
  bn: BatchNorm;
  mean: tf.Tensor1D;
  variance: tf.Tensor1D;
  n: number;
}

function passFor(opts: ForwardOptions): Pass {
  const requested = opts.memoryEfficient ?? false;
  const level = !opts.training || requested === false
    ? "off"
    : requested === true
    ? "layer"
    : requested;
  if (!["off", "bottleneck", "block", "layer"].includes(level)) {
    throw new Error(`unknown memoryEfficient level ${JSON.stringify(requested)}`);
  }
  return {
    training: opts.training,
    bottleneck: level === "bottleneck" || level === "block",
    checkpoint: level === "block" || level === "layer" ? level : "none",
    updateStats: true,
    stats: [],
  };
}

function stem(x: tf.Tensor4D, model: DenseNet, pass: Pass): tf.Tensor4D {
  if (!pass.training) return tf.tidy(() => tf.maxPool(foldedStem(x, model), 3, 2, 1));
  return tf.tidy(() => {
    // torch pads symmetrically; tfjs 'same' would pad only bottom/right for even sizes.
    const h: tf.Tensor4D = tf.conv2d(x, model.conv0, 2, [[0, 0], [3, 3], [3, 3], [0, 0]]);
    // Numeric padding in tfjs pooling ignores the padded cells (-inf semantics), as torch.
    return tf.maxPool(batchNormRelu(h, model.norm0, pass), 3, 2, 1);
  });
}

/**
 * Evaluation mode: norm0 (running statistics) folded into conv0 (`foldBatchNorms`), with the
 * ReLU as the convolution's post-op: one FusedConv2D instead of a convolution, a BatchNorm and a
 * ReLU over the largest feature map.
 */
function foldedStem(x: tf.Tensor4D, model: DenseNet): tf.Tensor4D {
  const [{ scale, bias }] = foldBatchNorms([model.norm0]);
  return tf.fused.conv2d({
    x,
    filter: tf.mul(model.conv0, scale) as tf.Tensor4D,
    strides: 2,
    pad: [[0, 0], [3, 3], [3, 3], [0, 0]],
    bias,
    activation: "relu",
  });
}

/**
 * A BatchNorm (running statistics) folded into the convolution right before it: the filter
 * times `scale` per output channel, plus `bias`.
 */
interface FoldedBatchNorm {
  scale: tf.Tensor1D;
  bias: tf.Tensor1D;
}

/**
 * Evaluation mode: s = γ/√(σ² + ε) and β − μ·s of each BatchNorm, which fold it into the
 * convolution right before it (filter w·s per output channel, bias β − μ·s), for several at once
 * (the statistics concatenated: ~11 kernels however many). Only a BatchNorm directly after a
 * convolution folds: norm0 (after conv0) and each dense layer's norm2 (after its 1×1 conv1).
 * norm1, the transitions' norms and norm5 reach their convolution (or the pooling) through a
 * ReLU, so they cannot be folded.
 */
function foldBatchNorms(bns: BatchNorm[]): FoldedBatchNorm[] {
  return tf.tidy(() => {
    const cat = (ts: tf.Tensor1D[]) => (ts.length === 1 ? ts[0] : tf.concat(ts, 0));
    const gamma = cat(bns.map((bn) => bn.weight));
    const s = tf.mul(gamma, tf.rsqrt(tf.add(cat(bns.map((bn) => bn.runningVar)), BN_EPS)));
    const bias = tf.sub(
      cat(bns.map((bn) => bn.bias)),
      tf.mul(cat(bns.map((bn) => bn.runningMean)), s),
    );
    const sizes = bns.map((bn) => bn.weight.size);
    const scales = bns.length === 1 ? [s] : tf.split(s, sizes);
    const biases = bns.length === 1 ? [bias] : tf.split(bias, sizes);
    return bns.map((_, i) => ({
      scale: scales[i] as tf.Tensor1D,
      bias: biases[i] as tf.Tensor1D,
    }));
  });
}

/**
 * Evaluation mode: every dense layer's norm2 folded (`foldBatchNorms`), by block, so its conv1 +
 * norm2 + ReLU is one FusedConv2D. Not where the backend has the one-pass
 * `BatchNormReluInference` kernel (native): there the fold would trade that kernel for a filter
 * multiply per layer, no faster (measured at 224 px).
 */
function norm2Folds(model: DenseNet, pass: Pass): FoldedBatchNorm[][] | null {
  if (pass.training || tf.getKernel(BN_INFERENCE_KERNEL, tf.getBackend()) != null) return null;
  const folds = foldBatchNorms(model.blocks.flat().map((l) => l.norm2));
  return model.blocks.map((layers) => folds.splice(0, layers.length));
}

const bnParams = (bn: BatchNorm): tf.Variable[] => [bn.weight, bn.bias];
const stemParams = (m: DenseNet): tf.Variable[] => [m.conv0, ...bnParams(m.norm0)];
const layerParams = (l: DenseLayer): tf.Variable[] => [
  ...bnParams(l.norm1),
  l.conv1,
  ...bnParams(l.norm2),
  l.conv2,
];
const transitionParams = (t: Transition): tf.Variable[] => [...bnParams(t.norm), t.conv];

/**
 * Gradient checkpointing: runs `segment` keeping nothing but its inputs for the backward pass,
 * which re-runs it (same kernels, same values, no running-stat update) under its own tape
 * inside a tidy and back-propagates `dy` to the inputs and `params`, so the segment's
 * intermediates and intermediate gradients live only while that segment is differentiated.
 * `inputsNeedGradients` false: the inputs are saved as constants (the image batch).
 */
function checkpoint(
  segment: (xs: tf.Tensor4D[], pass: Pass) => tf.Tensor4D,
  inputs: tf.Tensor4D[],
  params: tf.Variable[],
  pass: Pass,
  inputsNeedGradients = true,
): tf.Tensor4D {
  const n = inputsNeedGradients ? inputs.length : 0;
  const op = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const save = args[args.length - 1] as tf.GradSaveFunc;
    const xs = inputsNeedGradients ? args.slice(0, n) as tf.Tensor4D[] : inputs;
    const value = segment(xs, pass);
    save(xs);
    return {
      value,
      gradFunc: (dy: tf.Tensor4D, saved: tf.Tensor[]) =>
        tf.tidy(() => {
          const savedXs = saved as tf.Tensor4D[];
          const recompute = () => segment(savedXs, { ...pass, updateStats: false });
          return nestedGradients(
            recompute,
            inputsNeedGradients ? [...savedXs, ...params] : params,
            dy,
          );
        }),
    };
  });
  return op(...(inputsNeedGradients ? inputs : []), ...params) as tf.Tensor4D;
}

/**
 * `engine.gradients` from inside a gradient function. tfjs starts a fresh tape when none is
 * recording (as during a backward pass) and leaves `activeTape` null when done, which would
 * lose the outer `variableGrads`' tape (it frees its saved tensors at the end): keep and restore
 * it. The inner tape's saved tensors are freed by the inner call.
 */
function nestedGradients(f: () => tf.Tensor, xs: tf.Tensor[], dy: tf.Tensor): tf.Tensor[] {
  const engine = tf.engine();
  const outerTape = engine.state.activeTape;
  try {
    const { value, grads } = engine.gradients(f, xs, dy);
    value.dispose();
    return grads;
  } finally {
    engine.state.activeTape = outerTape;
  }
}

/** Sigmoid probabilities in evaluation mode (running statistics), `[batch, numClasses]`. */
export function predict(model: DenseNet, x: tf.Tensor4D): tf.Tensor2D {
  return tf.tidy(() => tf.sigmoid(forward(model, x, { training: false })));
}

/** `folded`: evaluation mode's norm2 of each layer, folded (`norm2Folds`). */
function denseBlock(
  x: tf.Tensor4D,
  layers: DenseLayer[],
  pass: Pass,
  folded: FoldedBatchNorm[] | null = null,
): tf.Tensor4D {
  if (pass.checkpoint === "none" && !pass.bottleneck) {
    // Each layer reads the block so far and appends its channels to it. The block tensor has
    // two consumers (the layer and the next append), so its gradient is accumulated once per
    // layer; with the features as separate tensors each would get one Add per later layer
    // (~500 per DenseNet-121 step). Memory is the same: each layer's BatchNorm keeps its input,
    // the block so far, for its gradient either way (the memory-efficient levels keep less and
    // take the path below).
    let block = x;
    layers.forEach((layer, i) => {
      const input = block;
      block = tf.tidy(() => concat([input, denseLayer([input], layer, pass, folded?.[i])]));
    });
    return block;
  }
  if (pass.checkpoint === "layer" && fusedBatchNorm()) {
    return denseBlockOp(x, layers, pass, concatBatchNorm());
  }
  const features: tf.Tensor4D[] = [x];
  for (const layer of layers) {
    // Per-layer tidy frees what the backward pass does not need (the tape keeps its own).
    features.push(
      tf.tidy(() =>
        pass.checkpoint === "layer"
          ? checkpoint((xs, p) => denseLayer(xs, layer, p), features, layerParams(layer), pass)
          : denseLayer(features, layer, pass)
      ),
    );
  }
  return concat(features);
}

/** `folded`: evaluation mode's norm2, folded into conv1 (`norm2Folds`). */
function denseLayer(
  features: tf.Tensor4D[],
  layer: DenseLayer,
  pass: Pass,
  folded?: FoldedBatchNorm,
): tf.Tensor4D {
  if (pass.training && !pass.bottleneck && fusedBatchNorm()) {
    return fusedDenseLayer(concat(features), layer, pass);
  }
  if (folded) {
    const h = foldedBottleneck(
      batchNormRelu(concat(features), layer.norm1, pass),
      layer.conv1,
      folded,
    );
    return tf.conv2d(h, layer.conv2, 1, "same");
  }
  const bottleneck = pass.bottleneck
    ? efficientBottleneck(features, layer.norm1, layer.conv1, pass)
    : tf.conv2d(batchNormRelu(concat(features), layer.norm1, pass), layer.conv1, 1, "valid");
  // 3×3, stride 1: 'same' pads 1 on each side, as torch's padding=1.
  return tf.conv2d(batchNormRelu(bottleneck, layer.norm2, pass), layer.conv2, 1, "same");
}

/** Evaluation mode: a dense layer's conv1 + norm2 + ReLU as one FusedConv2D (`norm2Folds`). */
function foldedBottleneck(y1: tf.Tensor4D, conv1: tf.Tensor4D, folded: FoldedBatchNorm) {
  return tf.fused.conv2d({
    x: y1,
    filter: tf.mul(conv1, folded.scale) as tf.Tensor4D,
    strides: 1,
    pad: "valid",
    bias: folded.bias,
    activation: "relu",
  });
}

/**
 * A training-mode dense layer, BN-ReLU-1×1 conv-BN-ReLU-3×3 conv, as one custom op over the
 * fused BatchNorm kernels: the tape records one node and keeps the eight tensors the backward
 * needs (input, both batch statistics, both ReLU outputs, the bottleneck), where recording its
 * four ops kept ten copies (the filters among them) and two nodes. The backward runs the same
 * gradient kernels as tfjs's own conv2d gradient and the fused BatchNorm gradient, so the
 * numbers are those of the op-by-op path.
 */
function fusedDenseLayer(x: tf.Tensor4D, layer: DenseLayer, pass: Pass): tf.Tensor4D {
  const { norm1, conv1, norm2, conv2 } = layer;
  const op = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [input, g1, b1, w1, g2, b2, w2] = args as tf.Tensor[];
    const save = args[7] as tf.GradSaveFunc;
    const [y1, m1, v1] = fusedTrainForward(
      input as tf.Tensor4D,
      g1 as tf.Tensor1D,
      b1 as tf.Tensor1D,
    );
    const h: tf.Tensor4D = tf.conv2d(y1, w1 as tf.Tensor4D, 1, "valid");
    const [y2, m2, v2] = fusedTrainForward(h, g2 as tf.Tensor1D, b2 as tf.Tensor1D);
    const value: tf.Tensor4D = tf.conv2d(y2, w2 as tf.Tensor4D, 1, "same");
    if (pass.updateStats) {
      updateRunningStats(norm1, m1, v1, input.shape, pass);
      updateRunningStats(norm2, m2, v2, h.shape, pass);
    }
    // The variables (γ, β, filters) are read when the gradient runs: saving them would cost
    // the tape a copy kernel each.
    save([input, m1, v1, y1, h, m2, v2, y2]);
    return {
      value,
      gradFunc: (dy: tf.Tensor4D, saved: tf.Tensor[]) =>
        tf.tidy(() => {
          const [xs, m1s, v1s, y1s, hs, m2s, v2s, y2s] = saved as tf.Tensor4D[];
          const [dy2, dw2] = convGradients(dy, y2s, conv2, CONV3X3);
          const [dh, dg2, db2] = fusedBackward(dy2, hs, norm2.weight, norm2.bias, m2s, v2s);
          const [dy1, dw1] = convGradients(dh as tf.Tensor4D, y1s, conv1, CONV1X1);
          const [dx, dg1, db1] = fusedBackward(dy1, xs, norm1.weight, norm1.bias, m1s, v1s);
          return [dx, dg1, db1, dw1, dg2, db2, dw2];
        }),
    };
  });
  return op(x, norm1.weight, norm1.bias, conv1, norm2.weight, norm2.bias, conv2) as tf.Tensor4D;
}

/**
 * A training-mode dense block as one custom op over the fused BatchNorm kernels (the `"layer"`
 * memory level). The tape keeps the block's input, each layer's new feature and bottleneck
 * (conv1's output, bn_size·growth channels: ~17 MB an image for DenseNet-121 at 224) and the
 * batch statistics. The backward walks the layers last to first with a running gradient of the
 * block's channels so far ("prefix"): each layer's slice of it is the gradient of its new
 * feature; the layer's two BatchNorm + ReLU outputs are recomputed with the saved statistics
 * (`normaliseWith`: the forward's values), no convolution (the bottleneck is kept, the 3×3
 * conv's output is the feature), back-propagated with the gradient kernels of
 * `fusedDenseLayer`, and its input gradient added to the rest of the prefix gradient, which is
 * how the plain path (one block tensor growing by concat) accumulates it. Only one layer's
 * intermediates are alive at a time, without a nested tape per layer (its saved-tensor copies,
 * one gradient Add per feature per later layer); the running statistics move in the forward.
 *
 * `unjoined` (the backend has the BatchNorm-of-a-concatenation kernels: native): the block is
 * never joined per layer: norm1 reads the feature list (`BatchNormReluConcatTrain`, recomputed
 * by `BatchNormReluConcatInference`), and `BatchNormReluConcatGrad` adds the prefix gradient in
 * its dx pass, so no per-layer concat, gradient slice or Add (~15 % of a native step). Else each
 * layer's input is joined (`concat`) in both passes.
 */
function denseBlockOp(
  x: tf.Tensor4D,
  layers: DenseLayer[],
  pass: Pass,
  unjoined: boolean,
): tf.Tensor4D {
  const params = layers.flatMap(layerParams);
  const cin0 = x.shape[3];
  const growth = layers[0].conv2.shape[3];
  const engine = tf.engine();
  const join = (xs: tf.Tensor4D[]) => (xs.length === 1 ? xs[0] : tf.concat(xs, 3));
  const norm1Train = (features: tf.Tensor4D[], bn: BatchNorm) =>
    unjoined
      ? engine.runKernel(
        BN_CONCAT_TRAIN_KERNEL,
        concatInputs({ gamma: bn.weight, beta: bn.bias }, features),
        BN_RELU_ATTRS,
      ) as [tf.Tensor4D, tf.Tensor1D, tf.Tensor1D]
      : fusedTrainForward(join(features), bn.weight, bn.bias);
  const op = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const input = args[0] as tf.Tensor4D;
    const save = args[args.length - 1] as tf.GradSaveFunc;
    const features: tf.Tensor4D[] = [input];
    // Each layer's bottleneck and batch statistics [m1, v1, m2, v2], for the backward.
    const bottlenecks: tf.Tensor4D[] = [];
    const stats: tf.Tensor[] = [];
    for (const layer of layers) {
      const { norm1, conv1, norm2, conv2 } = layer;
      const [feature, h, ...layerStats] = tf.tidy(() => {
        const [y1, m1, v1] = norm1Train(features, norm1);
        const h: tf.Tensor4D = tf.conv2d(y1, conv1, 1, "valid");
        const [y2, m2, v2] = fusedTrainForward(h, norm2.weight, norm2.bias);
        if (pass.updateStats) {
          updateRunningStats(norm1, m1, v1, y1.shape, pass);
          updateRunningStats(norm2, m2, v2, h.shape, pass);
        }
        return [tf.conv2d(y2, conv2, 1, "same") as tf.Tensor4D, h, m1, v1, m2, v2];
      });
      features.push(feature as tf.Tensor4D);
      bottlenecks.push(h as tf.Tensor4D);
      stats.push(...layerStats);
    }
    const value = tf.concat(features, 3);
    // One vector for all the statistics: the tape copies each tensor it saves.
    save([tf.concat(stats as tf.Tensor1D[]), ...bottlenecks, ...features]);
    return {
      value,
      gradFunc: (dy: tf.Tensor4D, saved: tf.Tensor[]) => {
        const [statsAll, ...rest] = saved as tf.Tensor4D[];
        const hs = rest.slice(0, layers.length);
        const feats = rest.slice(layers.length);
        const stats = tf.split(
          statsAll,
          layers.flatMap((l) => [
            l.norm1.weight.size,
            l.norm1.weight.size,
            l.norm2.weight.size,
            l.norm2.weight.size,
          ]),
        );
        const grads: tf.Tensor[][] = [];
        let dPrefix = dy;
        for (let i = layers.length - 1; i >= 0; i--) {
          const { norm1, conv1, norm2, conv2 } = layers[i];
          const cin = cin0 + i * growth;
          const inputs = feats.slice(0, i + 1);
          const [dx, ...layerGrads] = tf.tidy(() => {
            const dNew = tf.slice(dPrefix, [0, 0, 0, cin], [-1, -1, -1, growth]);
            const [m1, v1, m2, v2] = stats.slice(4 * i, 4 * i + 4);
            const bn1 = { mean: m1, variance: v1, gamma: norm1.weight, beta: norm1.bias };
            const xi = unjoined ? null : join(inputs);
            const y1 = xi == null
              ? engine.runKernel(
                BN_CONCAT_INFERENCE_KERNEL,
                concatInputs(bn1, inputs),
                BN_RELU_ATTRS,
              ) as tf.Tensor4D
              : normaliseWith(xi, norm1, m1, v1);
            const h = hs[i];
            const y2 = normaliseWith(h, norm2, m2, v2);
            // fusedDenseLayer's gradient, with dNew for its output's.
            const [dy2, dw2] = convGradients(dNew, y2, conv2, CONV3X3);
            const [dh, dg2, db2] = fusedBackward(dy2, h, norm2.weight, norm2.bias, m2, v2);
            const [dy1, dw1] = convGradients(dh as tf.Tensor4D, y1, conv1, CONV1X1);
            let dx: tf.Tensor, dg1: tf.Tensor, db1: tf.Tensor;
            if (xi == null) {
              [dx, dg1, db1] = engine.runKernel(
                BN_CONCAT_GRAD_KERNEL,
                concatInputs({ dy: dy1, ...bn1, addend: dPrefix }, inputs),
                BN_RELU_ATTRS,
              ) as tf.Tensor[];
            } else {
              const [g, dg, db] = fusedBackward(dy1, xi, norm1.weight, norm1.bias, m1, v1);
              dx = tf.add(tf.slice(dPrefix, [0, 0, 0, 0], [-1, -1, -1, cin]), g);
              [dg1, db1] = [dg, db];
            }
            return [dx, dg1, db1, dw1, dg2, db2, dw2];
          });
          if (dPrefix !== dy) dPrefix.dispose();
          dPrefix = dx as tf.Tensor4D;
          grads[i] = layerGrads;
        }
        tf.dispose(stats);
        return [dPrefix, ...grads.flat()];
      },
    };
  });
  return op(x, ...params) as tf.Tensor4D;
}

/** True when the backend has the three BatchNorm-of-a-concatenation kernels (native). */
function concatBatchNorm(): boolean {
  const backend = tf.getBackend();
  return [BN_CONCAT_TRAIN_KERNEL, BN_CONCAT_GRAD_KERNEL, BN_CONCAT_INFERENCE_KERNEL].every((k) =>
    tf.getKernel(k, backend) != null
  );
}

/** The inputs of a BatchNorm-of-a-concatenation kernel: `vectors`, then x0, x1, … */
function concatInputs(vectors: tf.NamedTensorMap, xs: tf.Tensor[]): tf.NamedTensorMap {
  const inputs = { ...vectors };
  xs.forEach((x, i) => (inputs[`x${i}`] = x));
  return inputs;
}

/**
 * A training BatchNorm + ReLU recomputed with the batch statistics its forward computed: one
 * normalising pass where the backend has `BatchNormReluInference` (the same pass, on the same
 * statistics, as the training kernel's second: the same values), else the training kernel again
 * (its statistics come out the same).
 */
function normaliseWith(
  x: tf.Tensor4D,
  bn: BatchNorm,
  mean: tf.Tensor,
  variance: tf.Tensor,
): tf.Tensor4D {
  if (tf.getKernel(BN_INFERENCE_KERNEL, tf.getBackend()) == null) {
    return fusedTrainForward(x, bn.weight, bn.bias)[0];
  }
  const inputs = { x, mean, variance, gamma: bn.weight, beta: bn.bias };
  return tf.engine().runKernel(BN_INFERENCE_KERNEL, inputs, BN_RELU_ATTRS) as tf.Tensor4D;
}

function transition(x: tf.Tensor4D, t: Transition, pass: Pass): tf.Tensor4D {
  return tf.tidy(() => {
    const h = tf.conv2d(batchNormRelu(x, t.norm, pass), t.conv, 1, "valid");
    return tf.avgPool(h, 2, 2, "valid");
  });
}

/**
 * Channel concatenation whose gradient is the split of dy (as tfjs's own), as a custom op: tfjs's
 * Concat keeps a copy of every input for its gradient (a copy kernel each, ~600 per DenseNet-121
 * step), though only their channel counts are needed.
 */
function concat(features: tf.Tensor4D[]): tf.Tensor4D {
  if (features.length === 1) return features[0];
  const sizes = features.map((f) => f.shape[3]);
  const op = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => ({
    value: tf.concat(args.slice(0, -1) as tf.Tensor4D[], 3),
    gradFunc: (dy: tf.Tensor4D) => tf.split(dy, sizes, 3),
  }));
  return op(...features) as tf.Tensor4D;
}

/** Attributes of the fused BatchNorm kernels: every DenseNet BatchNorm is followed by a ReLU. */
const BN_RELU_ATTRS = { epsilon: BN_EPS, relu: true };

/** True when the active backend has both fused BatchNorm+ReLU kernels (the seam). */
function fusedBatchNorm(): boolean {
  const backend = tf.getBackend();
  return tf.getKernel(BN_TRAIN_KERNEL, backend) != null &&
    tf.getKernel(BN_GRAD_KERNEL, backend) != null;
}

/**
 * ReLU(BatchNorm2d(x)) over NHWC. In training mode, where the backend has the fused kernels
 * (lib/backends/batchnorm_kernels.ts, or the WebGPU backend's), one kernel computes the batch
 * statistics, normalisation and ReLU, and one the gradient: 2 kernels instead of ~30. Other
 * backends get `batchNorm` + ReLU from tfjs ops. Evaluation mode uses the optional
 * `BatchNormReluInference` kernel (running statistics, one pass) where the backend has it.
 */
function batchNormRelu(x: tf.Tensor4D, bn: BatchNorm, pass: Pass): tf.Tensor4D {
  if (!pass.training && tf.getKernel(BN_INFERENCE_KERNEL, tf.getBackend()) != null) {
    const inputs = {
      x,
      mean: bn.runningMean,
      variance: bn.runningVar,
      gamma: bn.weight,
      beta: bn.bias,
    };
    return tf.engine().runKernel(BN_INFERENCE_KERNEL, inputs, BN_RELU_ATTRS) as tf.Tensor4D;
  }
  if (!pass.training || !fusedBatchNorm()) return tf.relu(batchNorm(x, bn, pass));
  const op = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [input, gamma, beta] = args as [tf.Tensor4D, tf.Tensor1D, tf.Tensor1D];
    const save = args[3] as tf.GradSaveFunc;
    const [value, mean, variance] = fusedTrainForward(input, gamma, beta);
    if (pass.updateStats) updateRunningStats(bn, mean, variance, input.shape, pass);
    // γ and β are the BatchNorm's variables, read when the gradient runs: saving them would
    // cost the tape a copy kernel each.
    save([input, mean, variance]);
    return {
      value,
      gradFunc: (dy: tf.Tensor4D, saved: tf.Tensor[]) => {
        const [xs, m, v] = saved;
        return fusedBackward(dy, xs as tf.Tensor4D, bn.weight, bn.bias, m, v);
      },
    };
  });
  return op(x, bn.weight, bn.bias) as tf.Tensor4D;
}

/** `BatchNormReluTrain`: [ReLU(BN(x)), batch mean, biased batch variance]. */
function fusedTrainForward(
  x: tf.Tensor4D,
  gamma: tf.Tensor1D,
  beta: tf.Tensor1D,
): [tf.Tensor4D, tf.Tensor1D, tf.Tensor1D] {
  return tf.engine().runKernel(
    BN_TRAIN_KERNEL,
    { x, gamma, beta },
    BN_RELU_ATTRS,
  ) as unknown as [tf.Tensor4D, tf.Tensor1D, tf.Tensor1D];
}

/** `BatchNormReluGrad`: [dx, dgamma, dbeta]. */
function fusedBackward(
  dy: tf.Tensor4D,
  x: tf.Tensor4D,
  gamma: tf.Tensor,
  beta: tf.Tensor,
  mean: tf.Tensor,
  variance: tf.Tensor,
): tf.Tensor[] {
  return tf.engine().runKernel(
    BN_GRAD_KERNEL,
    { dy, x, gamma, beta, mean, variance },
    BN_RELU_ATTRS,
  ) as unknown as tf.Tensor[];
}

/**
 * BatchNorm2d over NHWC. Training mode normalises with batch statistics (biased variance),
 * updates `bn`'s running statistics, and back-propagates with the closed-form BatchNorm
 * gradient (`batchNormBackward`) instead of tfjs's long op chain through `tf.moments`.
 */
function batchNorm(x: tf.Tensor4D, bn: BatchNorm, pass: Pass): tf.Tensor4D {
  if (!pass.training) {
    return tf.batchNorm4d(x, bn.runningMean, bn.runningVar, bn.bias, bn.weight, BN_EPS);
  }
  const op = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [input, gamma, beta] = args as [tf.Tensor4D, tf.Tensor1D, tf.Tensor1D];
    const save = args[3] as tf.GradSaveFunc;
    const { value, mean, variance } = batchNormTrainForward(input, gamma, beta, bn, pass);
    save([input, gamma, mean, variance]);
    return {
      value,
      gradFunc: (dy: tf.Tensor4D, saved: tf.Tensor[]) =>
        tf.tidy(() => {
          const [xs, g, m, v] = saved as [tf.Tensor4D, tf.Tensor1D, tf.Tensor1D, tf.Tensor1D];
          const { dx, dgamma, dbeta } = batchNormBackward(xs, m, v, g, dy);
          return [dx, dgamma, dbeta];
        }),
    };
  });
  return op(x, bn.weight, bn.bias) as tf.Tensor4D;
}

/**
 * Training-mode BatchNorm forward: batch statistics, running-stat update (not in a backward-pass
 * recompute), normalisation.
 */
function batchNormTrainForward(
  x: tf.Tensor4D,
  gamma: tf.Tensor1D,
  beta: tf.Tensor1D,
  bn: BatchNorm,
  pass: Pass,
): { value: tf.Tensor4D; mean: tf.Tensor1D; variance: tf.Tensor1D } {
  const moments = tf.moments(x, [0, 1, 2]);
  const mean = moments.mean as tf.Tensor1D;
  const variance = moments.variance as tf.Tensor1D;
  if (pass.updateStats) updateRunningStats(bn, mean, variance, x.shape, pass);
  return { value: tf.batchNorm4d(x, mean, variance, beta, gamma, BN_EPS), mean, variance };
}

/**
 * Closed-form BatchNorm (batch statistics) gradient over NHWC, M = N·H·W values per channel:
 * dγ = Σ dy·x̂, dβ = Σ dy, dx = γ·rstd/M · (M·dy − dβ − x̂·dγ).
 */
function batchNormBackward(
  x: tf.Tensor4D,
  mean: tf.Tensor1D,
  variance: tf.Tensor1D,
  gamma: tf.Tensor1D,
  dy: tf.Tensor4D,
): { dx: tf.Tensor4D; dgamma: tf.Tensor1D; dbeta: tf.Tensor1D } {
  const m = x.shape[0] * x.shape[1] * x.shape[2];
  const rstd = tf.rsqrt(tf.add(variance, BN_EPS));
  // Full-size temporaries are freed as soon as used (a tidy would keep all ~7 to its end, the
  // peak of a checkpointed backward); same ops in the same order, so the same values.
  const free = <T extends tf.Tensor>(t: T, ...done: tf.Tensor[]): T => {
    tf.dispose(done);
    return t;
  };
  const centred = tf.sub(x, mean);
  const xhat = free(tf.mul(centred, rstd), centred);
  const dbeta = tf.sum(dy, [0, 1, 2]) as tf.Tensor1D;
  const dyXhat = tf.mul(dy, xhat);
  const dgamma = free(tf.sum(dyXhat, [0, 1, 2]) as tf.Tensor1D, dyXhat);
  const xhatDgamma = free(tf.mul(xhat, dgamma), xhat);
  const dyM = tf.mul(dy, m);
  const t1 = free(tf.sub(dyM, dbeta), dyM);
  const t2 = free(tf.sub(t1, xhatDgamma), t1, xhatDgamma);
  const dx = free(tf.mul(tf.mul(gamma, tf.div(rstd, m)), t2), t2) as tf.Tensor4D;
  return { dx, dgamma, dbeta };
}

/**
 * Queues the running-statistics update of `bn` from its batch statistics (applied by
 * `applyRunningStats` at the end of the forward pass) and counts the batch, as torch does.
 */
function updateRunningStats(
  bn: BatchNorm,
  mean: tf.Tensor1D,
  variance: tf.Tensor1D,
  shape: number[],
  pass: Pass,
): void {
  const n = shape[0] * shape[1] * shape[2];
  if (n <= 1) {
    throw new Error(
      `BatchNorm in training mode needs more than 1 value per channel, got input [${shape}]`,
    );
  }
  pass.stats.push({ bn, mean: tf.keep(mean), variance: tf.keep(variance), n });
  bn.numBatchesTracked += 1;
}

/**
 * torch: running = (1 - momentum)·running + momentum·batch, with the UNBIASED batch variance,
 * for every BatchNorm of the pass at once: the statistics are concatenated so the update is ~15
 * kernels instead of 6 per BatchNorm (~730 for DenseNet-121). Same ops per element, so the same
 * values. Run with the gradient tape paused: no gradient flows into running statistics, and the
 * tape would otherwise keep a copy of each input.
 */
function applyRunningStats(updates: PendingStats[]): void {
  if (updates.length === 0) return;
  const engine = tf.engine();
  const depth = engine.state.gradientDepth;
  engine.state.gradientDepth = 0;
  try {
    tf.tidy(() => {
      const m = BN_MOMENTUM;
      const cat = (ts: tf.Tensor1D[]) => (ts.length === 1 ? ts[0] : tf.concat(ts, 0));
      const sizes = updates.map((u) => u.mean.size);
      const unbias = new Float32Array(sizes.reduce((a, b) => a + b, 0));
      let at = 0;
      for (const u of updates) {
        unbias.fill(m * u.n / (u.n - 1), at, at + u.mean.size);
        at += u.mean.size;
      }
      const runningMean = cat(updates.map((u) => u.bn.runningMean));
      const runningVar = cat(updates.map((u) => u.bn.runningVar));
      const newMean = tf.add(
        tf.mul(runningMean, 1 - m),
        tf.mul(cat(updates.map((u) => u.mean)), m),
      );
      const newVar = tf.add(
        tf.mul(runningVar, 1 - m),
        tf.mul(cat(updates.map((u) => u.variance)), tf.tensor1d(unbias)),
      );
      const means = updates.length === 1 ? [newMean] : tf.split(newMean, sizes);
      const vars = updates.length === 1 ? [newVar] : tf.split(newVar, sizes);
      updates.forEach((u, i) => {
        u.bn.runningMean.assign(means[i] as tf.Tensor1D);
        u.bn.runningVar.assign(vars[i] as tf.Tensor1D);
      });
    });
  } finally {
    engine.state.gradientDepth = depth;
  }
}

const CONV1X1 = { strides: 1, pad: "valid", dataFormat: "NHWC", dimRoundingMode: undefined };
/** 3×3, stride 1: 'same' pads 1 on each side, as torch's padding=1. */
const CONV3X3 = { strides: 1, pad: "same", dataFormat: "NHWC", dimRoundingMode: undefined };

/**
 * Gradients of `conv2d(x, w)` (stride 1) for `dy`: [dx, dw], with the kernels tfjs's own conv2d
 * gradient runs (Conv2DBackpropInput, Conv2DBackpropFilter).
 */
function convGradients(
  dy: tf.Tensor4D,
  x: tf.Tensor4D,
  w: tf.Tensor4D,
  conv: typeof CONV1X1 | typeof CONV3X3,
): [tf.Tensor4D, tf.Tensor4D] {
  const engine = tf.engine();
  const dw = engine.runKernel("Conv2DBackpropFilter", { x, dy }, {
    ...conv,
    filterShape: w.shape,
  } as unknown as tf.NamedAttrMap) as tf.Tensor4D;
  const dx = engine.runKernel("Conv2DBackpropInput", { dy, filter: w }, {
    ...conv,
    inputShape: x.shape,
  } as unknown as tf.NamedAttrMap) as tf.Tensor4D;
  return [dx, dw];
}

/**
 * concat + BN (batch statistics) + ReLU + 1×1 conv whose intermediates are not kept for the
 * backward pass (Pleiss et al.; torchvision's `memory_efficient=True`): only the inputs are
 * saved, and the backward recomputes concat/BN/ReLU with the forward's kernels, then applies
 * the same kernels the plain path's gradients use, so both paths give the same numbers.
 * The running statistics are updated once, in the forward pass only.
 */
function efficientBottleneck(
  features: tf.Tensor4D[],
  bn: BatchNorm,
  conv: tf.Variable<tf.Rank.R4>,
  pass: Pass,
): tf.Tensor4D {
  const n = features.length;
  const op = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const save = args[args.length - 1] as tf.GradSaveFunc;
    const inputs = args.slice(0, -1) as tf.Tensor[];
    const x = concat(inputs.slice(0, n) as tf.Tensor4D[]);
    const [gamma, beta, w] = inputs.slice(n) as [tf.Tensor1D, tf.Tensor1D, tf.Tensor4D];
    let r: tf.Tensor4D;
    if (fusedBatchNorm()) {
      const [y, mean, variance] = fusedTrainForward(x, gamma, beta);
      if (pass.updateStats) updateRunningStats(bn, mean, variance, x.shape, pass);
      r = y;
    } else {
      r = tf.relu(batchNormTrainForward(x, gamma, beta, bn, pass).value);
    }
    const value: tf.Tensor4D = tf.conv2d(r, w, 1, "valid");
    save(inputs);
    return {
      value,
      gradFunc: (dy: tf.Tensor4D, saved: tf.Tensor[]) =>
        tf.tidy(() => bottleneckBackward(dy, saved, n)),
    };
  });
  return op(...features, bn.weight, bn.bias, conv) as tf.Tensor4D;
}

/** Gradients of concat-BN(train)-ReLU-1×1 conv w.r.t. [...features, gamma, beta, w]. */
function bottleneckBackward(dy: tf.Tensor4D, saved: tf.Tensor[], n: number): tf.Tensor[] {
  const feats = saved.slice(0, n) as tf.Tensor4D[];
  const [gamma, beta, w] = saved.slice(n) as [tf.Tensor1D, tf.Tensor1D, tf.Tensor4D];
  const x = concat(feats);
  const fused = fusedBatchNorm();
  // Recompute exactly as the forward did (same kernels, same values).
  let mean: tf.Tensor1D, variance: tf.Tensor1D, r: tf.Tensor4D, normed: tf.Tensor4D | null = null;
  if (fused) {
    [r, mean, variance] = fusedTrainForward(x, gamma, beta);
  } else {
    const moments = tf.moments(x, [0, 1, 2]);
    mean = moments.mean as tf.Tensor1D;
    variance = moments.variance as tf.Tensor1D;
    normed = tf.batchNorm4d(x, mean, variance, beta, gamma, BN_EPS);
    r = tf.relu(normed);
  }
  const [dr, dw] = convGradients(dy, r, w, CONV1X1);
  let dx: tf.Tensor, dgamma: tf.Tensor, dbeta: tf.Tensor;
  if (fused) {
    [dx, dgamma, dbeta] = fusedBackward(dr, x, gamma, beta, mean, variance);
  } else {
    ({ dx, dgamma, dbeta } = batchNormBackward(
      x,
      mean,
      variance,
      gamma,
      tf.mul(dr, tf.step(normed!)),
    ));
  }
  const dfeats = n === 1 ? [dx] : tf.split(dx, feats.map((f) => f.shape[3]), 3);
  return [...dfeats, dgamma, dbeta, dw];
}

/** Trainable variables (what the optimiser updates), in state_dict order. */
export function trainableVariables(model: DenseNet): tf.Variable[] {
  return [...model.variables.values()].filter((v) => v.trainable);
}

/**
 * Number of parameters. `trainableOnly` (default true) counts as torchvision's
 * `sum(p.numel() for p in model.parameters())`; false adds the BatchNorm running statistics
 * (as tfjs's Layers `countParams` does), never num_batches_tracked.
 */
export function countParams(model: DenseNet, opts: { trainableOnly?: boolean } = {}): number {
  const trainableOnly = opts.trainableOnly ?? true;
  let total = 0;
  for (const v of model.variables.values()) {
    if (v.trainable || !trainableOnly) total += v.size;
  }
  return total;
}

/** Frees every variable of the model. */
export function disposeModel(model: DenseNet): void {
  for (const v of model.variables.values()) v.dispose();
  model.variables.clear();
}
