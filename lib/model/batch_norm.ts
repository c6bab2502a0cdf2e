/**
 * BatchNorm2d + ReLU as the DenseNet uses it, over the seam's ops (lib/backends/seam.ts):
 * training mode with batch statistics and torch's running-statistics update, evaluation mode
 * with running statistics, and the folding of a BatchNorm into the convolution before it.
 *
 * Training mode updates the running statistics as a side effect of the forward, like torch
 * (momentum 0.1, unbiased batch variance, `num_batches_tracked += 1`): each BatchNorm queues its
 * batch statistics on the pass (`recordStatistics`), and `applyRunningStats` updates them all at
 * the end of the forward (~15 kernels in all, not 6 per BatchNorm). One training forward, one
 * update, as one `model(x)` call in torch; a backward-pass recompute records nothing.
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { type Affine, type BatchNormReluAttrs, seam, type Statistics } from "../backends/seam.ts";

/** BatchNorm epsilon and running-statistics momentum, as torch's defaults. */
export const BN_EPS = 1e-5;
export const BN_MOMENTUM = 0.1;

/** Every DenseNet BatchNorm is followed by a ReLU. */
export const BN_RELU: BatchNormReluAttrs = { epsilon: BN_EPS, relu: true };

/** One BatchNorm2d: affine parameters, running statistics and the update counter. */
export interface BatchNorm {
  weight: tf.Variable<tf.Rank.R1>;
  bias: tf.Variable<tf.Rank.R1>;
  runningMean: tf.Variable<tf.Rank.R1>;
  runningVar: tf.Variable<tf.Rank.R1>;
  /** torch's int64 `num_batches_tracked` buffer, kept as a plain number. */
  numBatchesTracked: number;
}

/** γ and β of `bn`, as the seam takes them. */
export const affine = (bn: BatchNorm): Affine => ({ gamma: bn.weight, beta: bn.bias });
/** The running statistics of `bn`. */
export const running = (bn: BatchNorm): Statistics => ({
  mean: bn.runningMean,
  variance: bn.runningVar,
});

/** A training forward: the batch statistics waiting to update the running ones. */
export class TrainingPass {
  readonly pending: { bn: BatchNorm; stats: Statistics; n: number }[] = [];

  /** Queues `bn`'s batch statistics (of `shape`'s N·H·W values) and counts the batch. */
  recordStatistics(bn: BatchNorm, stats: Statistics, shape: number[]): void {
    const n = shape[0] * shape[1] * shape[2];
    if (n <= 1) {
      throw new Error(
        `BatchNorm in training mode needs more than 1 value per channel, got input [${shape}]`,
      );
    }
    this.pending.push({
      bn,
      stats: { mean: tf.keep(stats.mean), variance: tf.keep(stats.variance) },
      n,
    });
    bn.numBatchesTracked += 1;
  }

  /** Frees the queued statistics (after `applyRunningStats`, or on failure). */
  dispose(): void {
    for (const { stats } of this.pending) tf.dispose([stats.mean, stats.variance]);
    this.pending.length = 0;
  }
}

/**
 * ReLU(BatchNorm2d(x)) in training mode, as one op with a hand-written gradient: the seam's
 * `bnReluTrain` forward (batch statistics) and `bnReluGrad` backward. `pass` null: a recompute
 * that records no statistics.
 */
export function bnReluTrain(x: tf.Tensor4D, bn: BatchNorm, pass: TrainingPass | null): tf.Tensor4D {
  const ops = seam();
  const op = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [input, gamma, beta] = args as [tf.Tensor4D, tf.Tensor1D, tf.Tensor1D];
    const save = args[3] as tf.GradSaveFunc;
    const [value, stats] = ops.bnReluTrain(input, { gamma, beta }, BN_RELU);
    pass?.recordStatistics(bn, stats, input.shape);
    // γ and β are the BatchNorm's variables, read when the gradient runs: saving them would
    // cost the tape a copy kernel each.
    save([input, stats.mean, stats.variance]);
    return {
      value,
      gradFunc: (dy: tf.Tensor4D, saved: tf.Tensor[]) => {
        const [xs, mean, variance] = saved as [tf.Tensor4D, tf.Tensor1D, tf.Tensor1D];
        return ops.bnReluGrad(dy, xs, affine(bn), { mean, variance }, BN_RELU);
      },
    };
  });
  return op(x, bn.weight, bn.bias) as tf.Tensor4D;
}

/** ReLU(BatchNorm2d(x)) in evaluation mode (running statistics). */
export function bnReluInference(x: tf.Tensor4D, bn: BatchNorm): tf.Tensor4D {
  return seam().bnReluInference(x, affine(bn), running(bn), BN_RELU);
}

/**
 * torch: running = (1 − momentum)·running + momentum·batch, with the UNBIASED batch variance,
 * for every BatchNorm of the pass at once (the statistics concatenated): the same ops per
 * element as one update per BatchNorm, so the same values. Run with the gradient tape paused:
 * no gradient flows into running statistics, and the tape would keep a copy of each input.
 */
export function applyRunningStats(pass: TrainingPass): void {
  const updates = pass.pending;
  if (updates.length === 0) return;
  const engine = tf.engine();
  const depth = engine.state.gradientDepth;
  engine.state.gradientDepth = 0;
  try {
    tf.tidy(() => {
      const m = BN_MOMENTUM;
      const sizes = updates.map((u) => u.stats.mean.size);
      const unbias = new Float32Array(sizes.reduce((a, b) => a + b, 0));
      let at = 0;
      for (const u of updates) {
        unbias.fill(m * u.n / (u.n - 1), at, at + u.stats.mean.size);
        at += u.stats.mean.size;
      }
      const newMean = tf.add(
        tf.mul(concat1d(updates.map((u) => u.bn.runningMean)), 1 - m),
        tf.mul(concat1d(updates.map((u) => u.stats.mean)), m),
      );
      const newVar = tf.add(
        tf.mul(concat1d(updates.map((u) => u.bn.runningVar)), 1 - m),
        tf.mul(concat1d(updates.map((u) => u.stats.variance)), tf.tensor1d(unbias)),
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

const concat1d = (ts: tf.Tensor1D[]) => (ts.length === 1 ? ts[0] : tf.concat(ts, 0));

/**
 * A BatchNorm (running statistics) folded into the convolution right before it: the filter
 * times `scale` per output channel, plus `bias`.
 */
export interface FoldedBatchNorm {
  scale: tf.Tensor1D;
  bias: tf.Tensor1D;
}

/**
 * s = γ/√(σ² + ε) and β − μ·s of each BatchNorm, which fold it into the convolution right before
 * it (filter w·s per output channel, bias β − μ·s), for several at once (the statistics
 * concatenated: ~11 kernels however many). Only a BatchNorm directly after a convolution folds:
 * norm0 (after conv0) and each dense layer's norm2 (after its conv1).
 */
export function foldBatchNorms(bns: BatchNorm[]): FoldedBatchNorm[] {
  return tf.tidy(() => {
    const gamma = concat1d(bns.map((bn) => bn.weight));
    const s = tf.mul(gamma, tf.rsqrt(tf.add(concat1d(bns.map((bn) => bn.runningVar)), BN_EPS)));
    const bias = tf.sub(
      concat1d(bns.map((bn) => bn.bias)),
      tf.mul(concat1d(bns.map((bn) => bn.runningMean)), s),
    );
    const sizes = bns.map((bn) => bn.weight.size);
    const scales = bns.length === 1 ? [s] : tf.split(s, sizes);
    const biases = bns.length === 1 ? [bias] : tf.split(bias, sizes);
    return bns.map((_, i) => ({ scale: scales[i] as tf.Tensor1D, bias: biases[i] as tf.Tensor1D }));
  });
}

/** A convolution with a folded BatchNorm and the ReLU as one FusedConv2D. */
export function foldedConvRelu(
  x: tf.Tensor4D,
  filter: tf.Tensor4D,
  folded: FoldedBatchNorm,
  strides: number,
  pad: "valid" | [[number, number], [number, number], [number, number], [number, number]],
): tf.Tensor4D {
  return tf.fused.conv2d({
    x,
    filter: tf.mul(filter, folded.scale) as tf.Tensor4D,
    strides,
    pad,
    bias: folded.bias,
    activation: "relu",
  });
}
