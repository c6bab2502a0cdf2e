/**
 * Running a model over a dataset: RGB8 batches become float tensors, pass through a test
 * transform and the network, and the sigmoid outputs are gathered with their labels and keys.
 * Shared by validation during training and by validate_model.ts.
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { NUM_CLASSES } from "../../config.ts";
import type { Batch } from "../data/dataset.ts";
import { type DenseNet, predict } from "../model/densenet.ts";
import type { Progress } from "../util/progress.ts";
import type { Rng } from "../util/rng.ts";
import type { BatchTransform } from "../../transforms/augmented_transforms.ts";
import { readValues } from "../backends/device_faults.ts";

export type { BatchTransform };

/** RGB8 images of a batch as a float32 `[n,h,w,3]` tensor in [0, 1] (value / 255, as the original). */
export function batchToTensor(
  batch: Pick<Batch, "images" | "n" | "height" | "width">,
): tf.Tensor4D {
  const data = new Float32Array(batch.images.length);
  for (let i = 0; i < data.length; i++) data[i] = batch.images[i] / 255;
  return tf.tensor4d(data, [batch.n, batch.height, batch.width, 3]);
}

/** Predictions over a dataset, row-major `[n, 14]`, in the order the batches came. */
export interface Predictions {
  keys: string[];
  labels: Float32Array;
  probs: Float32Array;
  n: number;
}

/** Options of `predictBatches`. */
export interface PredictOptions {
  /** Views per image produced by the transform (10 for ten-crop), laid out view-major. */
  views?: number;
  progress?: Progress;
  /** Checked after each batch: stop early when it returns true (Ctrl-C). */
  stop?: () => boolean;
}

/**
 * Runs `model` in evaluation mode over `batches`. A transform that returns `views` images per
 * input (ten-crop) has its sigmoid outputs averaged per image.
 */
export async function predictBatches(
  model: DenseNet,
  batches: AsyncIterable<Batch>,
  transform: BatchTransform,
  rng: Rng,
  opts: PredictOptions = {},
): Promise<Predictions> {
  const views = opts.views ?? 1;
  const keys: string[] = [];
  const labels: number[] = [];
  const probs: number[] = [];
  for await (const batch of batches) {
    const out = tf.tidy(() => {
      const x = transform(batchToTensor(batch), rng);
      const p = predict(model, x);
      return views === 1 ? p : tf.mean(tf.reshape(p, [views, batch.n, NUM_CLASSES]), 0);
    });
    const values = await readValues(out);
    out.dispose();
    keys.push(...batch.keys);
    for (const v of batch.labels) labels.push(v);
    for (const v of values) probs.push(v);
    opts.progress?.tick(batch.n);
    if (opts.stop?.()) break;
  }
  return {
    keys,
    labels: Float32Array.from(labels),
    probs: Float32Array.from(probs),
    n: keys.length,
  };
}
