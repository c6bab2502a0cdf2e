/**
 * DenseNet (torchvision's `densenet.py`: architecture, parameter names, numerics) as plain tfjs
 * ops over named variables.
 *
 * Every parameter and BatchNorm running statistic is a `tf.Variable`, held in `model.variables`
 * under its torchvision `state_dict()` key (`features.denseblock1.denselayer1.conv1.weight`), so
 * checkpoint mapping is a table of layout transposes (model_weights.ts). Layouts are tfjs's:
 * conv `[kh, kw, in, out]`, linear `[in, out]`, activations NHWC. tfjs keeps one global registry
 * of variable names, so the engine-level name carries a per-model prefix (`densenet3/...`).
 *
 * The forward is stem → dense blocks and transitions → norm5 + ReLU → global average pool →
 * classifier (logits; the original's Sigmoid is applied by `predict` or the loss). How each
 * BatchNorm runs on the active backend is the seam's business (lib/backends/seam.ts): this file
 * never asks. One training path (dense blocks as one op each, dense_block.ts) and one evaluation
 * path (dense blocks as feature lists, BatchNorms folded where the seam says).
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import { Rng } from "../util/rng.ts";
import { FeatureList, seam } from "../backends/seam.ts";
import {
  affine,
  applyRunningStats,
  type BatchNorm,
  BN_RELU,
  bnReluTrain,
  foldBatchNorms,
  foldedConvRelu,
  running,
  TrainingPass,
} from "./batch_norm.ts";
import { checkpoint } from "./checkpoint.ts";
import { denseBlockInference, denseBlockTrain, type DenseLayer } from "./dense_block.ts";
import { type DenseNetConfig, denseNetPlan } from "./topology.ts";

export type { DenseNetConfig } from "./topology.ts";
export type { BatchNorm } from "./batch_norm.ts";
export { BN_EPS, BN_MOMENTUM } from "./batch_norm.ts";
export type { DenseLayer } from "./dense_block.ts";

// ---------------------------------------------------------------------------------------------
// Configurations

/** A named network: its configuration and, where torchvision publishes one, its ImageNet file. */
export interface Architecture {
  config: DenseNetConfig;
  /** torchvision's ImageNet weights file (`<name>-<sha256 prefix>.pth`), if any. */
  imagenet: string | null;
}

const chexnet = (growthRate: number, blockConfig: number[], numInitFeatures: number) => ({
  growthRate,
  blockConfig,
  numInitFeatures,
  bnSize: 4,
  numClasses: 14,
});

/** torchvision's DenseNets by name, with the original tool's 14-way head. */
export const TORCHVISION_DENSENETS: Record<string, DenseNetConfig> = {
  "DenseNet-121": chexnet(32, [6, 12, 24, 16], 64),
  "DenseNet-161": chexnet(48, [6, 12, 36, 24], 96),
  "DenseNet-169": chexnet(32, [6, 12, 32, 32], 64),
  "DenseNet-201": chexnet(32, [6, 12, 48, 32], 64),
};

/** DenseNet-121 with the original tool's 14-way head. */
export const DENSENET121: DenseNetConfig = TORCHVISION_DENSENETS["DenseNet-121"];
/** The small DenseNet of the test fixtures (`tests/fixtures/torch/tiny_*.pt`). */
export const TINY_DENSENET: DenseNetConfig = chexnet(8, [2, 2, 2, 2], 16);

/** The networks `--arch` offers. */
export const ARCHITECTURES: Record<string, Architecture> = {
  densenet121: { config: DENSENET121, imagenet: "densenet121-a639ec97.pth" },
  densenet169: {
    config: TORCHVISION_DENSENETS["DenseNet-169"],
    imagenet: "densenet169-b2777c0a.pth",
  },
  densenet201: {
    config: TORCHVISION_DENSENETS["DenseNet-201"],
    imagenet: "densenet201-c1103571.pth",
  },
  densenet_small: { config: chexnet(16, [4, 8, 12, 8], 32), imagenet: null },
  densenet_tiny: { config: TINY_DENSENET, imagenet: null },
};

// ---------------------------------------------------------------------------------------------
// Parameters

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
  const plan = denseNetPlan(config);
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

  const conv0 = conv("features.conv0", 7, 3, plan.stem.channels);
  const norm0 = norm("features.norm0", plan.stem.channels);
  const blocks: DenseLayer[][] = [];
  const transitions: Transition[] = [];
  for (const block of plan.blocks) {
    blocks.push(block.layers.map((l): DenseLayer => ({
      norm1: norm(`${l.key}.norm1`, l.cin),
      conv1: conv(`${l.key}.conv1`, 1, l.cin, l.bottleneck),
      norm2: norm(`${l.key}.norm2`, l.bottleneck),
      conv2: conv(`${l.key}.conv2`, 3, l.bottleneck, l.growth),
    })));
    const t = block.transition;
    if (t) {
      transitions.push({
        norm: norm(`${t.key}.norm`, t.cin),
        conv: conv(`${t.key}.conv`, 1, t.cin, t.cout),
      });
    }
  }
  const norm5 = norm("features.norm5", plan.features);
  const bound = 1 / Math.sqrt(plan.features);
  const w = new Float32Array(plan.features * config.numClasses);
  for (let i = 0; i < w.length; i++) w[i] = rng.uniform(-bound, bound);
  const classifier = {
    weight: add("classifier.0.weight", tf.tensor2d(w, [plan.features, config.numClasses]), true),
    bias: add("classifier.0.bias", tf.zeros([config.numClasses]) as tf.Tensor1D, true),
  };
  return {
    config: { ...config, blockConfig: [...config.blockConfig] },
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

// ---------------------------------------------------------------------------------------------
// Forward

/** Options of `forward`. */
export interface ForwardOptions {
  /** Training mode: BatchNorm uses (and updates the running stats from) batch statistics. */
  training: boolean;
  /**
   * Training mode only: keep less for the backward pass at the price of recomputing (each
   * dense layer's BatchNorm + ReLU outputs from their saved statistics; the stem and the
   * transitions from their inputs). Same numbers either way. Default false.
   */
  memoryEfficient?: boolean;
}

/**
 * Runs the network on a batch of normalised NHWC float32 images (any size ≥ 32 px) and returns
 * the LOGITS `[batch, numClasses]`. Training mode updates BatchNorm running statistics.
 */
export function forward(model: DenseNet, x: tf.Tensor4D, opts: ForwardOptions): tf.Tensor2D {
  return tf.tidy(() => {
    const pooled = tf.mean(features(model, x, opts), [1, 2]) as tf.Tensor2D;
    return tf.add(tf.matMul(pooled, model.classifier.weight), model.classifier.bias);
  });
}

/** Sigmoid probabilities in evaluation mode (running statistics), `[batch, numClasses]`. */
export function predict(model: DenseNet, x: tf.Tensor4D): tf.Tensor2D {
  return tf.tidy(() => tf.sigmoid(forward(model, x, { training: false })));
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
  return opts.training
    ? trainingFeatures(model, x, opts.memoryEfficient ?? false)
    : inferenceFeatures(model, x);
}

/** torch pads conv0 symmetrically (3); tfjs's 'same' would pad only bottom/right. */
const STEM_PAD: [[number, number], [number, number], [number, number], [number, number]] = [
  [0, 0],
  [3, 3],
  [3, 3],
  [0, 0],
];

/**
 * Training mode. Memory-efficient: the stem and each transition keep only their input
 * (`checkpoint`), the dense blocks their features, bottlenecks and statistics.
 */
function trainingFeatures(model: DenseNet, x: tf.Tensor4D, memoryEfficient: boolean) {
  const pass = new TrainingPass();
  const segment = (
    f: (x: tf.Tensor4D, pass: TrainingPass | null) => tf.Tensor4D,
    input: tf.Tensor4D,
    params: tf.Variable[],
    inputNeedsGradient = true,
  ) =>
    memoryEfficient
      ? checkpoint((xs, p) => f(xs[0], p), [input], params, pass, inputNeedsGradient)
      : tf.tidy(() => f(input, pass));
  try {
    return tf.tidy(() => {
      const { conv0, norm0 } = model;
      // The image batch needs no gradient: a checkpointed stem saves it as a constant.
      let h = segment(
        (x, p) => {
          const y = bnReluTrain(tf.conv2d(x, conv0, 2, STEM_PAD), norm0, p);
          // Numeric padding in tfjs pooling ignores the padded cells (-inf semantics), as torch.
          return tf.maxPool(y, 3, 2, 1);
        },
        x,
        [conv0, norm0.weight, norm0.bias],
        false,
      );
      model.blocks.forEach((layers, b) => {
        h = denseBlockTrain(h, layers, pass, memoryEfficient);
        const t = model.transitions[b];
        if (!t) return;
        h = segment(
          (x, p) =>
            tf.avgPool(tf.conv2d(bnReluTrain(x, t.norm, p), t.conv, 1, "valid"), 2, 2, "valid"),
          h,
          [t.norm.weight, t.norm.bias, t.conv],
        );
      });
      const out = bnReluTrain(h, model.norm5, pass);
      applyRunningStats(pass);
      return out;
    });
  } finally {
    pass.dispose();
  }
}

/**
 * Evaluation mode (running statistics). norm0 is folded into conv0 (one FusedConv2D with the
 * ReLU over the largest feature map); each dense block stays the list of its features, which
 * every BatchNorm reading the block takes as it is (the seam joins it only where the backend
 * has no kernel for a list); each dense layer's norm2 is folded into its conv1 where the seam
 * says the backend has no one-pass BatchNorm (a fold would trade that kernel for a filter
 * multiply per layer, no faster).
 */
function inferenceFeatures(model: DenseNet, x: tf.Tensor4D): tf.Tensor4D {
  const ops = seam();
  return tf.tidy(() => {
    const [stemFold] = foldBatchNorms([model.norm0]);
    const stem = tf.maxPool(foldedConvRelu(x, model.conv0, stemFold, 2, STEM_PAD), 3, 2, 1);
    const layers = model.blocks.flat();
    const folds = ops.foldNorm2 ? foldBatchNorms(layers.map((l) => l.norm2)) : null;
    let list: tf.Tensor4D[] = [stem];
    model.blocks.forEach((block, b) => {
      const blockFolds = folds?.splice(0, block.length) ?? null;
      const grown = denseBlockInference(list, block, blockFolds);
      const t = model.transitions[b];
      if (!t) {
        list = grown;
        return;
      }
      list = [tf.tidy(() => {
        const y = bnReluList(grown, t.norm);
        return tf.avgPool(tf.conv2d(y, t.conv, 1, "valid"), 2, 2, "valid") as tf.Tensor4D;
      })];
      tf.dispose(grown);
    });
    return bnReluList(list, model.norm5);
  });
}

/** ReLU(BatchNorm2d) with running statistics of a dense block's feature list. */
function bnReluList(list: tf.Tensor4D[], bn: BatchNorm): tf.Tensor4D {
  return seam().bnReluConcatInference(new FeatureList(list), affine(bn), running(bn), BN_RELU);
}

// ---------------------------------------------------------------------------------------------
// Bookkeeping

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
