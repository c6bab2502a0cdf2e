/**
 * The inference graph of a DenseNet checkpoint, independent of any file format: a list of
 * steps over named values, with the weights taken from the state dict (torchvision layouts,
 * NCHW semantics). The ONNX and TF.js writers translate it step by step.
 *
 * BatchNorms that follow a convolution (norm0 after conv0, norm2 after each dense layer's
 * 1×1 conv) are folded into that convolution's weights and a bias, in float64; the others act
 * on concatenated features before a ReLU and stay BatchNorm steps with their own statistics.
 * The blocks are walked from the configuration read off the state dict, so any torchvision
 * DenseNet (121, 169, 201, the small test networks) gives its graph.
 * @module
 */
import { NUM_CLASSES } from "../../config.ts";
import { UserError } from "../util/errors.ts";
import { type HostTensor, numel, type StateDict } from "../torch/state_dict.ts";
import { normalizeStateDictKeys } from "../model/model_weights.ts";
import { checkHead, inferDenseNetConfig } from "../model/model_loading.ts";
import type { DenseNetConfig } from "../model/densenet.ts";
import { denseNetPlan } from "../model/topology.ts";

/** torch's BatchNorm epsilon (the models here and the original's use the default). */
const BN_EPS = 1e-5;

/** A convolution (torch weight layout `[out, in, kh, kw]`), optionally with bias and ReLU. */
export interface ConvStep {
  op: "conv";
  name: string;
  input: string;
  output: string;
  weight: Float32Array;
  shape: [number, number, number, number];
  bias: Float32Array | null;
  stride: number;
  pad: number;
  relu: boolean;
}

/** Inference BatchNorm `(x - mean) / sqrt(var + eps) · gamma + beta`, then ReLU. */
export interface BatchNormStep {
  op: "batchnorm";
  name: string;
  input: string;
  output: string;
  gamma: Float32Array;
  beta: Float32Array;
  mean: Float32Array;
  variance: Float32Array;
  epsilon: number;
  relu: true;
}

/** Max pooling with zero padding: exact because its input follows a ReLU (never negative). */
export interface MaxPoolStep {
  op: "maxpool";
  name: string;
  input: string;
  output: string;
  kernel: number;
  stride: number;
  pad: number;
}

/** Average pooling without padding (floor of the output size, as torch). */
export interface AvgPoolStep {
  op: "avgpool";
  name: string;
  input: string;
  output: string;
  kernel: number;
  stride: number;
}

/** Channel concatenation. */
export interface ConcatStep {
  op: "concat";
  name: string;
  inputs: string[];
  output: string;
}

/** Global average pooling to `[N, C]`, the classifier `Linear`, then the sigmoid. */
export interface HeadStep {
  op: "head";
  name: string;
  input: string;
  output: string;
  /** `[classes, features]`, torch's Linear layout. */
  weight: Float32Array;
  bias: Float32Array;
  classes: number;
  features: number;
}

/**
 * The class activation maps of CheXNet: the last feature map through the classifier weights
 * without the bias, `[N, classes, h, w]` (their spatial mean plus the bias is the logit).
 */
export interface CamStep {
  op: "cam";
  name: string;
  input: string;
  output: string;
  weight: Float32Array;
  classes: number;
  features: number;
}

export type Step =
  | ConvStep
  | BatchNormStep
  | MaxPoolStep
  | AvgPoolStep
  | ConcatStep
  | HeadStep
  | CamStep;

/** The graph's outputs, by the names both formats use. */
export const OUTPUTS = {
  probabilities: "probabilities",
  cams: "class_activation_maps",
  features: "features",
} as const;
export const INPUT = "image";

/** A DenseNet inference graph. */
export interface ExportGraph {
  config: DenseNetConfig;
  steps: Step[];
  /** Channels of the last feature map (`features` output). */
  featureChannels: number;
  /** Total number of stored weights (for the model card). */
  parameters: number;
}

function floats(t: HostTensor, key: string, source: string): Float32Array {
  if (t.data instanceof Float32Array) return t.data;
  if (t.data instanceof Float64Array) return Float32Array.from(t.data);
  throw new UserError(`${source}: '${key}' holds ${t.dtype}, not floating-point weights`);
}

/** Reads the state dict's tensors by name, with shape checks that name the key. */
class Weights {
  readonly keys: StateDict;
  constructor(sd: StateDict, readonly source: string) {
    this.keys = normalizeStateDictKeys(sd);
  }
  get(key: string, shape: number[]): Float32Array {
    const t = this.keys.get(key);
    if (!t) throw new UserError(`${this.source} is not a DenseNet checkpoint: no '${key}'`);
    if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
      throw new UserError(
        `${this.source}: '${key}' has shape [${t.shape}], expected [${shape}]: the checkpoint ` +
          `is damaged or not a torchvision DenseNet`,
      );
    }
    return floats(t, key, this.source);
  }
  batchNorm(prefix: string, c: number) {
    return {
      gamma: this.get(`${prefix}.weight`, [c]),
      beta: this.get(`${prefix}.bias`, [c]),
      mean: this.get(`${prefix}.running_mean`, [c]),
      variance: this.get(`${prefix}.running_var`, [c]),
    };
  }
}

/**
 * `conv` followed by BatchNorm `bn` as one convolution: `W' = W · s`, `b' = beta - mean · s`
 * per output channel with `s = gamma / sqrt(var + eps)`, computed in float64.
 */
export function foldBatchNorm(
  weight: Float32Array,
  outChannels: number,
  bn: { gamma: Float32Array; beta: Float32Array; mean: Float32Array; variance: Float32Array },
  epsilon = BN_EPS,
): { weight: Float32Array; bias: Float32Array } {
  const per = weight.length / outChannels;
  const w = new Float32Array(weight.length);
  const b = new Float32Array(outChannels);
  for (let o = 0; o < outChannels; o++) {
    const s = bn.gamma[o] / Math.sqrt(bn.variance[o] + epsilon);
    for (let k = o * per; k < (o + 1) * per; k++) w[k] = weight[k] * s;
    b[o] = bn.beta[o] - bn.mean[o] * s;
  }
  return { weight: w, bias: b };
}

/**
 * Builds the inference graph of a DenseNet state dict. A checkpoint whose head is not the
 * 14-class Linear gets validate's error (`checkHead`); a missing or misshapen tensor gets one
 * line naming it.
 */
export function buildGraph(sd: StateDict, source: string): ExportGraph {
  checkHead(sd, source);
  const config = inferDenseNetConfig(sd, source);
  const w = new Weights(sd, source);
  const steps: Step[] = [];
  // The layout walked once for the model (lib/model/topology.ts): keys and channels.
  const plan = denseNetPlan(config);
  const f0 = plan.stem.channels;

  const conv0 = w.get("features.conv0.weight", [f0, 3, 7, 7]);
  const folded0 = foldBatchNorm(conv0, f0, w.batchNorm("features.norm0", f0));
  steps.push({
    op: "conv",
    name: "conv0",
    input: INPUT,
    output: "conv0",
    ...folded0,
    shape: [f0, 3, 7, 7],
    stride: 2,
    pad: 3,
    relu: true,
  });
  steps.push({
    op: "maxpool",
    name: "pool0",
    input: "conv0",
    output: "pool0",
    kernel: 3,
    stride: 2,
    pad: 1,
  });

  let current = "pool0";
  plan.blocks.forEach((block, bi) => {
    const b = bi + 1;
    const parts = [current];
    block.layers.forEach(({ key: p, cin: inC, bottleneck: mid, growth: k }, li) => {
      const name = `block${b}_layer${li + 1}`;
      let input = parts[0];
      if (parts.length > 1) {
        input = `${name}_concat`;
        steps.push({ op: "concat", name: input, inputs: [...parts], output: input });
      }
      steps.push({
        op: "batchnorm",
        name: `${name}_norm1`,
        input,
        output: `${name}_norm1`,
        ...w.batchNorm(`${p}.norm1`, inC),
        epsilon: BN_EPS,
        relu: true,
      });
      const conv1 = w.get(`${p}.conv1.weight`, [mid, inC, 1, 1]);
      steps.push({
        op: "conv",
        name: `${name}_conv1`,
        input: `${name}_norm1`,
        output: `${name}_conv1`,
        ...foldBatchNorm(conv1, mid, w.batchNorm(`${p}.norm2`, mid)),
        shape: [mid, inC, 1, 1],
        stride: 1,
        pad: 0,
        relu: true,
      });
      steps.push({
        op: "conv",
        name: `${name}_conv2`,
        input: `${name}_conv1`,
        output: `${name}_conv2`,
        weight: w.get(`${p}.conv2.weight`, [k, mid, 3, 3]),
        shape: [k, mid, 3, 3],
        bias: null,
        stride: 1,
        pad: 1,
        relu: false,
      });
      parts.push(`${name}_conv2`);
    });
    const out = `block${b}`;
    steps.push({ op: "concat", name: out, inputs: parts, output: out });
    const t = block.transition;
    const normOut = t ? `transition${b}_norm` : OUTPUTS.features;
    steps.push({
      op: "batchnorm",
      name: normOut,
      input: out,
      output: normOut,
      ...w.batchNorm(t ? `${t.key}.norm` : "features.norm5", block.channels),
      epsilon: BN_EPS,
      relu: true,
    });
    if (!t) return;
    steps.push({
      op: "conv",
      name: `transition${b}_conv`,
      input: normOut,
      output: `transition${b}_conv`,
      weight: w.get(`${t.key}.conv.weight`, [t.cout, t.cin, 1, 1]),
      shape: [t.cout, t.cin, 1, 1],
      bias: null,
      stride: 1,
      pad: 0,
      relu: false,
    });
    steps.push({
      op: "avgpool",
      name: `transition${b}_pool`,
      input: `transition${b}_conv`,
      output: `transition${b}_pool`,
      kernel: 2,
      stride: 2,
    });
    current = `transition${b}_pool`;
  });

  const channels = plan.features;
  const weight = w.get("classifier.0.weight", [NUM_CLASSES, channels]);
  const bias = w.get("classifier.0.bias", [NUM_CLASSES]);
  steps.push({
    op: "head",
    name: "classifier",
    input: OUTPUTS.features,
    output: OUTPUTS.probabilities,
    weight,
    bias,
    classes: NUM_CLASSES,
    features: channels,
  });
  steps.push({
    op: "cam",
    name: "cam",
    input: OUTPUTS.features,
    output: OUTPUTS.cams,
    weight,
    classes: NUM_CLASSES,
    features: channels,
  });
  let parameters = 0;
  for (const [key, t] of w.keys) {
    if (!key.endsWith("num_batches_tracked")) parameters += numel(t.shape);
  }
  return { config, steps, featureChannels: channels, parameters };
}
