/**
 * One training step and one training epoch: transform a batch, compute BCE on the sigmoid
 * outputs, back-propagate, apply Adam. BatchNorm running statistics update inside the forward
 * pass, as in torch. Every tensor of a step is freed before the next one.
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import type { Adam } from "./adam.ts";
import type { Batch } from "../data/dataset.ts";
import { batchToTensor, type BatchTransform, type Predictions } from "../eval/inference.ts";
import { bceWithLogits, type ClassWeights } from "./loss.ts";
import { type DenseNet, forward, trainableVariables } from "../model/densenet.ts";
import type { Progress } from "../util/progress.ts";
import { readValues } from "../backends/device_faults.ts";
import type { Rng } from "../util/rng.ts";

/** Options of a training step. */
export interface StepOptions {
  memoryEfficient: boolean;
  classWeights?: ClassWeights;
}

/** One optimisation step on a normalised batch; returns the batch loss and sigmoid outputs. */
export async function trainStep(
  model: DenseNet,
  adam: Adam,
  x: tf.Tensor4D,
  y: tf.Tensor2D,
  opts: StepOptions,
): Promise<{ loss: number; probs: Float32Array }> {
  const variables = trainableVariables(model);
  let probs: tf.Tensor | null = null;
  const { value, grads } = tf.variableGrads(() => {
    const logits = forward(model, x, { training: true, memoryEfficient: opts.memoryEfficient });
    probs = tf.keep(tf.sigmoid(logits));
    return bceWithLogits(logits, y, opts.classWeights);
  }, variables);
  adam.apply(variables, grads);
  // Asynchronous reads: WebGPU under Deno cannot read synchronously.
  const loss = (await readValues(value))[0];
  const out = await readValues((probs as tf.Tensor | null)!) as Float32Array;
  tf.dispose([value, probs!, ...Object.values(grads)]);
  return { loss, probs: Float32Array.from(out) };
}

/** What one training epoch produced. */
export interface EpochResult extends Predictions {
  /** Mean loss over images. */
  loss: number;
  /** True when the epoch stopped early (stop request or a non-finite loss). */
  stopped: boolean;
  /** Set when a batch loss was NaN or infinite. */
  nonFiniteLoss?: { batch: number; loss: number };
}

/** Runs one epoch over `batches`; stops at a non-finite loss or when `stop()` returns true. */
export async function trainEpoch(
  model: DenseNet,
  adam: Adam,
  batches: AsyncIterable<Batch>,
  transform: BatchTransform,
  rng: Rng,
  opts: StepOptions & { progress?: Progress; stop?: () => boolean },
): Promise<EpochResult> {
  const keys: string[] = [];
  const labels: number[] = [];
  const probs: number[] = [];
  let lossSum = 0, index = 0;
  for await (const batch of batches) {
    const x = tf.tidy(() => transform(batchToTensor(batch), rng));
    const y = tf.tensor2d(batch.labels, [batch.n, batch.labels.length / batch.n]);
    const step = await trainStep(model, adam, x, y, opts);
    tf.dispose([x, y]);
    index++;
    if (!Number.isFinite(step.loss)) {
      return { ...collect(), stopped: true, nonFiniteLoss: { batch: index, loss: step.loss } };
    }
    lossSum += step.loss * batch.n;
    keys.push(...batch.keys);
    for (const v of batch.labels) labels.push(v);
    for (const v of step.probs) probs.push(v);
    opts.progress?.tick(batch.n, `loss ${(lossSum / keys.length).toFixed(4)}`);
    if (opts.stop?.()) {
      return { ...collect(), stopped: true };
    }
  }
  return { ...collect(), stopped: false };

  function collect() {
    return {
      keys,
      labels: Float32Array.from(labels),
      probs: Float32Array.from(probs),
      n: keys.length,
      loss: lossSum / Math.max(1, keys.length),
    };
  }
}
