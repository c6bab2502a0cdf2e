/**
 * One training step of the tiny reference DenseNet (tests/fixtures/model/) on the active backend,
 * as the original tool takes it (BCE on the Sigmoid head), with each trainable parameter's
 * gradient in torch layout under its torch name, and the relative error the precision fixtures
 * use, for the tests that compare a step's gradients with make_precision_reference.py's.
 */
import * as tf from "@tensorflow/tfjs-core";
import { disposeModel, forward, trainableVariables } from "../../lib/model/densenet.ts";
import { bceWithLogits } from "../../lib/train/loss.ts";
import { referenceModel, torchLayout } from "./model_reference.ts";

/** A step's loss and its gradients, by torch parameter name, in torch layouts. */
export interface Step {
  loss: number;
  gradients: Map<string, Float32Array>;
}

/** The step on `images` (NCHW float32, shape [n, 3, h, w]) and `labels` ([n, 14]). */
export function trainingStep(
  images: Float32Array,
  imageShape: [number, number, number, number],
  labels: Float32Array,
  memoryEfficient: boolean,
): Step {
  const model = referenceModel();
  try {
    const vars = trainableVariables(model);
    const { value, grads } = tf.tidy(() => {
      const x = tf.transpose(tf.tensor4d(images, imageShape), [0, 2, 3, 1]) as tf.Tensor4D;
      const y = tf.tensor2d(labels, [imageShape[0], labels.length / imageShape[0]]);
      return tf.variableGrads(
        () => bceWithLogits(forward(model, x, { training: true, memoryEfficient }), y),
        vars,
      );
    });
    const gradients = new Map<string, Float32Array>();
    for (const v of vars) {
      gradients.set(v.name.slice(v.name.indexOf("/") + 1), torchLayout(grads[v.name]));
    }
    const loss = value.dataSync()[0];
    tf.dispose([value, ...Object.values(grads)]);
    return { loss, gradients };
  } finally {
    disposeModel(model);
  }
}

/** ‖got − want‖ / ‖want‖ (make_precision_reference.py's measure). */
export function relativeError(got: ArrayLike<number>, want: ArrayLike<number>): number {
  let diff = 0;
  let norm = 0;
  for (let i = 0; i < want.length; i++) {
    diff += (got[i] - want[i]) ** 2;
    norm += want[i] ** 2;
  }
  return norm > 0 ? Math.sqrt(diff / norm) : Math.sqrt(diff);
}
