/**
 * Gradient checkpointing for a segment of the network (the stem, a transition) in a
 * memory-efficient training forward.
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import type { TrainingPass } from "./batch_norm.ts";

/**
 * Runs `segment` keeping nothing but its inputs for the backward pass, which re-runs it (same
 * kernels, same values; `pass` null, so no running-statistics update) under its own tape inside a
 * tidy and back-propagates `dy` to the inputs and `params`: the segment's intermediates and
 * intermediate gradients live only while that segment is differentiated.
 * `inputsNeedGradients` false: the inputs are saved as constants (the image batch).
 */
export function checkpoint(
  segment: (xs: tf.Tensor4D[], pass: TrainingPass | null) => tf.Tensor4D,
  inputs: tf.Tensor4D[],
  params: tf.Variable[],
  pass: TrainingPass,
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
          return nestedGradients(
            () => segment(savedXs, null),
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
