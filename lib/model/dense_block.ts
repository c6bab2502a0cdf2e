/**
 * A dense block: each layer reads every feature before it (BN-ReLU-1×1 conv-BN-ReLU-3×3 conv)
 * and adds `growth` channels. The BatchNorms that read the block take it as a `FeatureList`:
 * whether it is ever concatenated is the seam's business (lib/backends/seam.ts).
 *
 * Training: the whole block is one op with a hand-written gradient (`denseBlockTrain`). Its
 * forward runs the layers and returns the concatenation; the tape keeps the block's features,
 * each layer's bottleneck (conv1's output) and batch statistics, and, unless memory-efficient,
 * both of each layer's BatchNorm + ReLU outputs (else they are recomputed from the saved
 * statistics: no convolution is ever recomputed). The backward walks the layers last to first
 * with the running gradient of the block's channels so far (`dPrefix`): each layer's slice of it
 * is its feature's gradient, and the layer's input gradient is added to the rest, the way the
 * concatenations of the textbook block would accumulate it.
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { FeatureList, seam, type Statistics } from "../backends/seam.ts";
import {
  affine,
  type BatchNorm,
  BN_RELU,
  bnReluInference,
  type FoldedBatchNorm,
  foldedConvRelu,
  running,
  type TrainingPass,
} from "./batch_norm.ts";

/** BN-ReLU-1×1 conv (bottleneck) - BN-ReLU-3×3 conv, torchvision's `_DenseLayer`. */
export interface DenseLayer {
  norm1: BatchNorm;
  conv1: tf.Variable<tf.Rank.R4>;
  norm2: BatchNorm;
  conv2: tf.Variable<tf.Rank.R4>;
}

/** The variables of a dense layer, in the order the block op takes their gradients. */
export const layerParams = (l: DenseLayer): tf.Variable[] => [
  l.norm1.weight,
  l.norm1.bias,
  l.conv1,
  l.norm2.weight,
  l.norm2.bias,
  l.conv2,
];

/**
 * A dense block in evaluation mode (running statistics) over a feature list, returned as the
 * list grown by each layer's feature. `folds`: each layer's norm2 folded into its conv1, where
 * the seam says so.
 */
export function denseBlockInference(
  features: tf.Tensor4D[],
  layers: DenseLayer[],
  folds: FoldedBatchNorm[] | null,
): tf.Tensor4D[] {
  const ops = seam();
  let list = features;
  layers.forEach((layer, i) => {
    const inputs = list;
    const feature = tf.tidy(() => {
      const { norm1, conv1, norm2, conv2 } = layer;
      const y1 = ops.bnReluConcatInference(
        new FeatureList(inputs),
        affine(norm1),
        running(norm1),
        BN_RELU,
      );
      const y2 = folds
        ? foldedConvRelu(y1, conv1, folds[i], 1, "valid")
        : bnReluInference(tf.conv2d(y1, conv1, 1, "valid"), norm2);
      // 3×3, stride 1: 'same' pads 1 on each side, as torch's padding=1.
      return tf.conv2d(y2, conv2, 1, "same") as tf.Tensor4D;
    });
    list = [...inputs, feature];
  });
  return list;
}

/**
 * A dense block in training mode, as one op: returns the block's concatenation (input channels
 * first). `memoryEfficient`: keep only features, bottlenecks and statistics for the backward
 * (Pleiss et al.; torchvision's `memory_efficient=True`), recomputing the BatchNorm + ReLU
 * outputs there; else keep them too. Both give the same numbers. Running statistics move in the
 * forward only.
 */
export function denseBlockTrain(
  x: tf.Tensor4D,
  layers: DenseLayer[],
  pass: TrainingPass,
  memoryEfficient: boolean,
): tf.Tensor4D {
  const ops = seam();
  const params = layers.flatMap(layerParams);
  const cin0 = x.shape[3];
  const growth = layers[0].conv2.shape[3];
  // Unless memory-efficient, each layer keeps y1 and y2, and the join of its input where the
  // seam made one: its [start, end) in the saved list's kept part.
  const keptRanges: [number, number][] = [];
  const op = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const input = args[0] as tf.Tensor4D;
    const save = args[args.length - 1] as tf.GradSaveFunc;
    const features: tf.Tensor4D[] = [input];
    const bottlenecks: tf.Tensor4D[] = [];
    const stats: tf.Tensor[] = [];
    const kept: tf.Tensor[] = [];
    for (const { norm1, conv1, norm2, conv2 } of layers) {
      const [feature, h, ...rest] = tf.tidy(() => {
        const list = new FeatureList([...features]);
        const [y1, s1] = ops.bnReluConcatTrain(list, affine(norm1), BN_RELU);
        const h: tf.Tensor4D = tf.conv2d(y1, conv1, 1, "valid");
        const [y2, s2] = ops.bnReluTrain(h, affine(norm2), BN_RELU);
        pass.recordStatistics(norm1, s1, y1.shape);
        pass.recordStatistics(norm2, s2, h.shape);
        const feature = tf.conv2d(y2, conv2, 1, "same") as tf.Tensor4D;
        const join = list.joinedIfMade();
        const keep = memoryEfficient ? [] : [y1, y2, ...(join ? [join] : [])];
        return [feature, h, s1.mean, s1.variance, s2.mean, s2.variance, ...keep];
      });
      features.push(feature as tf.Tensor4D);
      bottlenecks.push(h as tf.Tensor4D);
      stats.push(...rest.slice(0, 4));
      keptRanges.push([kept.length, kept.length + rest.length - 4]);
      kept.push(...rest.slice(4));
    }
    const value = tf.concat(features, 3);
    // One vector for all the statistics: the tape copies each tensor it saves.
    save([tf.concat(stats as tf.Tensor1D[]), ...bottlenecks, ...features, ...kept]);
    return {
      value,
      gradFunc: (dy: tf.Tensor4D, saved: tf.Tensor[]) => {
        const n = layers.length;
        const [statsAll, ...rest] = saved as tf.Tensor4D[];
        const hs = rest.slice(0, n);
        const feats = rest.slice(n, 2 * n + 1);
        const keptSaved = rest.slice(2 * n + 1);
        const stats = tf.split(
          statsAll,
          layers.flatMap((l) => [l.norm1, l.norm1, l.norm2, l.norm2].map((bn) => bn.weight.size)),
        ) as tf.Tensor1D[];
        const grads: tf.Tensor[][] = [];
        let dPrefix = dy;
        for (let i = n - 1; i >= 0; i--) {
          const { norm1, conv1, norm2, conv2 } = layers[i];
          const cin = cin0 + i * growth;
          const [dx, ...layerGrads] = tf.tidy(() => {
            const [m1, v1, m2, v2] = stats.slice(4 * i, 4 * i + 4);
            const s1: Statistics = { mean: m1, variance: v1 };
            const s2: Statistics = { mean: m2, variance: v2 };
            const k = keptSaved.slice(...keptRanges[i]);
            const list = new FeatureList(feats.slice(0, i + 1), k[2] ?? null);
            const h = hs[i];
            const y1 = k[0] ?? ops.bnReluConcatRecompute(list, affine(norm1), s1, BN_RELU);
            const y2 = k[1] ?? ops.bnReluRecompute(h, affine(norm2), s2, BN_RELU);
            const { addend, dNew } = ops.splitPrefix(dPrefix, cin, growth);
            const [dy2, dw2] = convGradients(dNew, y2, conv2, CONV3X3);
            const [dh, dg2, db2] = ops.bnReluGrad(dy2, h, affine(norm2), s2, BN_RELU);
            const [dy1, dw1] = convGradients(dh, y1, conv1, CONV1X1);
            const [dx, dg1, db1] = ops.bnReluConcatGrad(
              dy1,
              list,
              affine(norm1),
              s1,
              addend,
              BN_RELU,
            );
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
