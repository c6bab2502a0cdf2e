/**
 * Training losses: binary cross-entropy on the sigmoid outputs (the original tool's
 * `nn.BCELoss`), computed from logits for stability, optionally with CheXNet's per-class
 * balancing weights.
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";

/** Per-class weights for positive and negative terms (CheXNet: w+ = |N|/(|P|+|N|), w− = |P|/(|P|+|N|)). */
export interface ClassWeights {
  positive: Float32Array;
  negative: Float32Array;
}

/** CheXNet's class-balancing weights from training labels (n rows × numClasses, row-major). */
export function classBalanceWeights(labels: ArrayLike<number>, numClasses: number): ClassWeights {
  const n = labels.length / numClasses;
  const positive = new Float32Array(numClasses);
  const negative = new Float32Array(numClasses);
  for (let c = 0; c < numClasses; c++) {
    let p = 0;
    for (let i = 0; i < n; i++) p += labels[i * numClasses + c] > 0.5 ? 1 : 0;
    positive[c] = n > 0 ? (n - p) / n : 0.5;
    negative[c] = n > 0 ? p / n : 0.5;
  }
  return { positive, negative };
}

/**
 * Mean binary cross-entropy of sigmoid(logits) against labels, as torch's BCELoss
 * (whose log is clamped at −100, i.e. |logit| beyond ~100; the stable form differs only there).
 * With `weights`, each term is scaled by w+ (label 1) or w− (label 0) of its class.
 */
export function bceWithLogits(
  logits: tf.Tensor2D,
  labels: tf.Tensor2D,
  weights?: ClassWeights,
): tf.Scalar {
  return tf.tidy(() => {
    // max(z, 0) − z·y + log(1 + exp(−|z|))
    const z = logits;
    const terms = tf.add(
      tf.sub(tf.relu(z), tf.mul(z, labels)),
      tf.log1p(tf.exp(tf.neg(tf.abs(z)))),
    );
    if (!weights) return tf.mean(terms) as tf.Scalar;
    const wPos = tf.tensor1d(weights.positive);
    const wNeg = tf.tensor1d(weights.negative);
    const w = tf.add(tf.mul(labels, wPos), tf.mul(tf.sub(1, labels), wNeg));
    return tf.mean(tf.mul(terms, w)) as tf.Scalar;
  });
}
