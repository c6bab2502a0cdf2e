/**
 * A DenseNet's layout from its configuration, walked once: every module's channels and the
 * feature maps' sides at a given input size. The model (`createDenseNet`), the parameter count
 * and the training-memory estimate all read it, so a new configuration needs nothing else.
 * @module
 */

/** DenseNet hyper-parameters, as torchvision's `DenseNet(...)` arguments. */
export interface DenseNetConfig {
  growthRate: number;
  blockConfig: number[];
  numInitFeatures: number;
  bnSize: number;
  numClasses: number;
}

/** One dense layer: BN-ReLU-1×1 conv (cin → bottleneck) - BN-ReLU-3×3 conv (→ growth). */
export interface LayerPlan {
  key: string;
  cin: number;
  bottleneck: number;
  growth: number;
}

/** One dense block, its layers, and the transition after it (none after the last). */
export interface BlockPlan {
  key: string;
  layers: LayerPlan[];
  /** Channels out of the block (its input's plus every layer's growth). */
  channels: number;
  /** Side of its feature maps at the plan's input size. */
  side: number;
  transition: { key: string; cin: number; cout: number } | null;
}

/** The whole network at one input size. */
export interface DenseNetPlan {
  config: DenseNetConfig;
  imageSize: number;
  /** conv0 (7×7/2, 3 → stem) + norm0 + ReLU, then pool0 (3×3/2). */
  stem: { channels: number; convSide: number; poolSide: number };
  blocks: BlockPlan[];
  /** Channels into norm5 and the classifier. */
  features: number;
}

/** Output side of a k×k convolution or pooling with this stride and padding. */
const outSide = (side: number, k: number, stride: number, pad: number) =>
  Math.floor((side + 2 * pad - k) / stride) + 1;

/** Walks `config` at `imageSize`² input (the sides only matter for activation counts). */
export function denseNetPlan(config: DenseNetConfig, imageSize = 224): DenseNetPlan {
  validateConfig(config);
  const { growthRate, blockConfig, numInitFeatures, bnSize } = config;
  const convSide = outSide(imageSize, 7, 2, 3);
  let side = outSide(convSide, 3, 2, 1);
  const stem = { channels: numInitFeatures, convSide, poolSide: side };
  let channels = numInitFeatures;
  const blocks = blockConfig.map((numLayers, b): BlockPlan => {
    const key = `features.denseblock${b + 1}`;
    const layers = Array.from({ length: numLayers }, (_, l) => ({
      key: `${key}.denselayer${l + 1}`,
      cin: channels + l * growthRate,
      bottleneck: bnSize * growthRate,
      growth: growthRate,
    }));
    channels += numLayers * growthRate;
    const blockSide = side;
    let transition = null;
    if (b !== blockConfig.length - 1) {
      transition = {
        key: `features.transition${b + 1}`,
        cin: channels,
        cout: Math.floor(channels / 2),
      };
      channels = transition.cout;
      side = Math.floor(side / 2); // 2×2 average pool, stride 2
    }
    return { key, layers, channels: transition?.cin ?? channels, side: blockSide, transition };
  });
  return { config, imageSize, stem, blocks, features: channels };
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

/** Side of the last feature map (what CAMs are drawn at) for an `imageSize`² input. */
export function featureMapSide(config: DenseNetConfig, imageSize: number): number {
  return denseNetPlan(config, imageSize).blocks.at(-1)!.side;
}

/** Trainable parameters (convolutions, BatchNorm affine, classifier), as torchvision counts. */
export function parameterCount(config: DenseNetConfig): number {
  const plan = denseNetPlan(config);
  const f0 = plan.stem.channels;
  let n = 49 * 3 * f0 + 2 * f0;
  for (const block of plan.blocks) {
    for (const l of block.layers) {
      n += 2 * l.cin + l.cin * l.bottleneck + 2 * l.bottleneck + 9 * l.bottleneck * l.growth;
    }
    const t = block.transition;
    if (t) n += 2 * t.cin + t.cin * t.cout;
  }
  return n + 2 * plan.features + plan.features * config.numClasses + config.numClasses;
}

/**
 * Activation values one image produces in a forward pass (every conv, BatchNorm, ReLU, concat
 * and pooling output), the quantity training memory grows with.
 */
export function activationsPerImage(config: DenseNetConfig, imageSize: number): number {
  const plan = denseNetPlan(config, imageSize);
  const { channels: f0, convSide, poolSide } = plan.stem;
  let total = 3 * f0 * convSide ** 2 + f0 * poolSide ** 2; // conv0, norm0, relu0; pool0
  for (const block of plan.blocks) {
    const area = block.side ** 2;
    for (const l of block.layers) {
      // concat, norm1, relu1 over cin; conv1, norm2, relu2 over the bottleneck; conv2.
      total += (3 * l.cin + 3 * l.bottleneck + l.growth) * area;
    }
    const t = block.transition;
    if (t) {
      total += (2 * t.cin + t.cout) * area; // norm, relu, conv
      total += t.cout * Math.floor(block.side / 2) ** 2; // average pool
    }
  }
  return total;
}
