/**
 * Gradient functions for the tfjs kernels that training uses (DenseNet forward, BCE loss).
 *
 * `@tensorflow/tfjs-core`'s published bundles register no gradients: the union package
 * `@tensorflow/tfjs` inlines them, and the per-file ESM sources (`dist/gradients/*.js`) use
 * extensionless imports that Deno's npm resolution rejects. Without registration every
 * `tf.variableGrads` fails with "gradient function not found for Mean". The formulas below are
 * tfjs's own. `registerTrainingGradients()` is idempotent and never overrides a gradient that
 * is already registered (e.g. when the union package is loaded too).
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";

type Saved = tf.Tensor[];
type Attrs = Record<string, unknown>;
type GradMap = Record<string, () => tf.Tensor>;

/** Sums `dy` over the axes that broadcasting added to an input of `shape`. */
function unbroadcast(dy: tf.Tensor, shape: number[]): tf.Tensor {
  const axes = tf.backend_util.getReductionAxes(shape, dy.shape);
  const reduced = axes.length > 0 ? tf.sum(dy, axes) : dy;
  return tf.reshape(reduced, shape);
}

function binary(
  name: string,
  da: (dy: tf.Tensor, a: tf.Tensor, b: tf.Tensor) => tf.Tensor,
  db: (dy: tf.Tensor, a: tf.Tensor, b: tf.Tensor) => tf.Tensor,
): tf.GradConfig {
  return {
    kernelName: name,
    inputsToSave: ["a", "b"],
    gradFunc: (dy: tf.Tensor | tf.Tensor[], saved: Saved) => {
      const [a, b] = saved;
      const g = dy as tf.Tensor;
      return {
        a: () => unbroadcast(da(g, a, b), a.shape),
        b: () => unbroadcast(db(g, a, b), b.shape),
      } as GradMap;
    },
  };
}

function unaryInput(name: string, dx: (dy: tf.Tensor, x: tf.Tensor) => tf.Tensor): tf.GradConfig {
  return {
    kernelName: name,
    inputsToSave: ["x"],
    gradFunc: (dy: tf.Tensor | tf.Tensor[], saved: Saved) => ({
      x: () => dx(dy as tf.Tensor, saved[0]),
    }),
  };
}

function unaryOutput(name: string, dx: (dy: tf.Tensor, y: tf.Tensor) => tf.Tensor): tf.GradConfig {
  return {
    kernelName: name,
    outputsToSave: [true],
    gradFunc: (dy: tf.Tensor | tf.Tensor[], saved: Saved) => ({
      x: () => dx(dy as tf.Tensor, saved[0]),
    }),
  };
}

/** dy broadcast back over the reduced axes of a Sum/Mean of `x`. */
function expandReduced(dy: tf.Tensor, x: tf.Tensor, axis: unknown): tf.Tensor {
  const axes = tf.util.parseAxisParam(axis as number | number[], x.shape);
  const shape = x.shape.map((d, i) => (axes.includes(i) ? 1 : d));
  return tf.broadcastTo(tf.reshape(dy, shape), x.shape);
}

const f32 = (t: tf.Tensor) => tf.cast(t, "float32");

function gradConfigs(): tf.GradConfig[] {
  return [
    binary("Add", (dy) => dy, (dy) => dy),
    binary("Sub", (dy) => dy, (dy) => tf.neg(dy)),
    binary("Multiply", (dy, _a, b) => tf.mul(dy, f32(b)), (dy, a) => tf.mul(dy, f32(a))),
    binary(
      "RealDiv",
      (dy, _a, b) => tf.div(dy, f32(b)),
      (dy, a, b) => tf.neg(tf.div(tf.mul(dy, f32(a)), tf.square(f32(b)))),
    ),
    binary(
      "SquaredDifference",
      (dy, a, b) => tf.mul(dy, tf.mul(2, tf.sub(a, b))),
      (dy, a, b) => tf.mul(dy, tf.mul(-2, tf.sub(a, b))),
    ),
    binary(
      "Maximum",
      (dy, a, b) => tf.mul(dy, f32(tf.greaterEqual(a, b))),
      (dy, a, b) => tf.mul(dy, f32(tf.less(a, b))),
    ),
    binary(
      "Minimum",
      (dy, a, b) => tf.mul(dy, f32(tf.lessEqual(a, b))),
      (dy, a, b) => tf.mul(dy, f32(tf.greater(a, b))),
    ),
    {
      kernelName: "AddN",
      saveAllInputs: true,
      gradFunc: (dy: tf.Tensor | tf.Tensor[], saved: Saved) => {
        const out: GradMap = {};
        saved.forEach((_, i) => (out[i] = () => (dy as tf.Tensor).clone()));
        return out;
      },
    },
    unaryInput("Abs", (dy, x) => tf.mul(dy, tf.step(f32(x), -1))),
    unaryInput("Neg", (dy) => tf.neg(dy)),
    unaryInput("Log", (dy, x) => tf.div(dy, f32(x))),
    unaryInput("Log1p", (dy, x) => tf.div(dy, tf.add(x, 1))),
    unaryInput("Relu", (dy, x) => tf.mul(dy, tf.step(f32(x)))),
    unaryInput("Square", (dy, x) => tf.mul(dy, tf.mul(f32(x), 2))),
    unaryInput("Rsqrt", (dy, x) => tf.neg(tf.div(dy, tf.mul(tf.pow(x, 1.5), 2)))),
    unaryInput("Step", (dy) => tf.zerosLike(dy)),
    unaryInput("Cast", (dy) => dy.clone()),
    unaryInput("Identity", (dy) => dy.clone()),
    unaryInput("Reshape", (dy, x) => tf.reshape(dy, x.shape)),
    unaryOutput("Exp", (dy, y) => tf.mul(dy, y)),
    unaryOutput("Sqrt", (dy, y) => tf.div(dy, tf.mul(f32(y), 2))),
    unaryOutput("Sigmoid", (dy, y) => tf.mul(dy, tf.mul(y, tf.sub(1, y)))),
    {
      kernelName: "Sum",
      inputsToSave: ["x"],
      gradFunc: (dy: tf.Tensor | tf.Tensor[], saved: Saved, attrs: Attrs) => ({
        x: () => expandReduced(dy as tf.Tensor, saved[0], attrs.axis),
      }),
    },
    {
      kernelName: "Mean",
      inputsToSave: ["x"],
      gradFunc: (dy: tf.Tensor | tf.Tensor[], saved: Saved, attrs: Attrs) => ({
        x: () => {
          const x = saved[0];
          const full = expandReduced(dy as tf.Tensor, x, attrs.axis);
          const axes = tf.util.parseAxisParam(attrs.axis as number | number[], x.shape);
          return tf.div(full, axes.reduce((n, a) => n * x.shape[a], 1));
        },
      }),
    },
    {
      kernelName: "Transpose",
      gradFunc: (dy: tf.Tensor | tf.Tensor[], _saved: Saved, attrs: Attrs) => {
        const perm = attrs.perm as number[];
        const inverse = perm.map((_, i) => perm.indexOf(i));
        return { x: () => tf.transpose(dy as tf.Tensor, inverse) };
      },
    },
    {
      kernelName: "Concat",
      saveAllInputs: true,
      gradFunc: (dy: tf.Tensor | tf.Tensor[], saved: Saved, attrs: Attrs) => {
        const g = dy as tf.Tensor;
        const axis = tf.util.parseAxisParam(attrs.axis as number, saved[0].shape)[0];
        const parts = tf.split(g, saved.map((t) => t.shape[axis]), axis);
        const out: GradMap = {};
        parts.forEach((p, i) => (out[i] = () => p));
        return out;
      },
    },
    {
      kernelName: "SplitV",
      gradFunc: (dy: tf.Tensor | tf.Tensor[], _saved: Saved, attrs: Attrs) => ({
        x: () => tf.concat(dy as tf.Tensor[], attrs.axis as number),
      }),
    },
    {
      kernelName: "PadV2",
      inputsToSave: ["x"],
      gradFunc: (dy: tf.Tensor | tf.Tensor[], saved: Saved, attrs: Attrs) => {
        const begin = (attrs.paddings as [number, number][]).map((p) => p[0]);
        return { x: () => tf.slice(dy as tf.Tensor, begin, saved[0].shape) };
      },
    },
    {
      kernelName: "BatchMatMul",
      inputsToSave: ["a", "b"],
      gradFunc: (dy: tf.Tensor | tf.Tensor[], saved: Saved, attrs: Attrs) => {
        const [a, b] = saved as tf.Tensor2D[];
        const g = dy as tf.Tensor2D;
        const tA = attrs.transposeA as boolean;
        const tB = attrs.transposeB as boolean;
        const batchA = a.shape.slice(0, -2).join(",");
        if (batchA !== b.shape.slice(0, -2).join(",")) {
          throw new Error("BatchMatMul gradient: broadcast batch dimensions are not supported");
        }
        if (!tA && !tB) {
          return { a: () => tf.matMul(g, b, false, true), b: () => tf.matMul(a, g, true, false) };
        }
        if (!tA && tB) {
          return { a: () => tf.matMul(g, b, false, false), b: () => tf.matMul(g, a, true, false) };
        }
        if (tA && !tB) {
          return { a: () => tf.matMul(b, g, false, true), b: () => tf.matMul(a, g, false, false) };
        }
        return { a: () => tf.matMul(b, g, true, true), b: () => tf.matMul(g, a, true, true) };
      },
    },
    {
      kernelName: "Conv2D",
      inputsToSave: ["x", "filter"],
      gradFunc: (dy: tf.Tensor | tf.Tensor[], saved: Saved, attrs: Attrs) => {
        const [x, filter] = saved;
        const { strides, pad, dataFormat, dimRoundingMode, dilations } = attrs;
        const d = dilations as number | [number, number];
        if (!(d === 1 || (Array.isArray(d) && d[0] === 1 && d[1] === 1))) {
          throw new Error("Conv2D gradient: dilation is not supported");
        }
        const common = { strides, pad, dataFormat, dimRoundingMode };
        return {
          x: () =>
            tf.engine().runKernel("Conv2DBackpropInput", { dy: dy as tf.Tensor, filter }, {
              ...common,
              inputShape: x.shape,
            } as unknown as tf.NamedAttrMap) as tf.Tensor,
          filter: () =>
            tf.engine().runKernel("Conv2DBackpropFilter", { x, dy: dy as tf.Tensor }, {
              ...common,
              filterShape: filter.shape,
            } as unknown as tf.NamedAttrMap) as tf.Tensor,
        };
      },
    },
    {
      kernelName: "MaxPool",
      inputsToSave: ["x"],
      outputsToSave: [true],
      gradFunc: (dy: tf.Tensor | tf.Tensor[], saved: Saved, attrs: Attrs) => {
        const [x, y] = saved;
        const { filterSize, strides, pad, dimRoundingMode } = attrs;
        return {
          x: () =>
            tf.engine().runKernel(
              "MaxPoolGrad",
              { dy: dy as tf.Tensor, input: x, output: y },
              { filterSize, strides, pad, dimRoundingMode } as unknown as tf.NamedAttrMap,
            ) as tf.Tensor,
        };
      },
    },
    {
      kernelName: "AvgPool",
      inputsToSave: ["x"],
      gradFunc: (dy: tf.Tensor | tf.Tensor[], saved: Saved, attrs: Attrs) => {
        const { filterSize, strides, pad, dimRoundingMode } = attrs;
        return {
          x: () =>
            tf.engine().runKernel(
              "AvgPoolGrad",
              { dy: dy as tf.Tensor, input: saved[0] },
              { filterSize, strides, pad, dimRoundingMode } as unknown as tf.NamedAttrMap,
            ) as tf.Tensor,
        };
      },
    },
    {
      kernelName: "FusedBatchNorm",
      inputsToSave: ["x", "mean", "variance", "scale"],
      gradFunc: (dy: tf.Tensor | tf.Tensor[], saved: Saved, attrs: Attrs) => {
        const [x, mean, variance, scale] = saved;
        const g = dy as tf.Tensor;
        const eps = attrs.varianceEpsilon as number;
        const gamma = scale ?? tf.scalar(1);
        const rstd = tf.rsqrt(tf.add(variance, eps));
        const centered = tf.sub(x, mean);
        const dyScaled = tf.mul(g, gamma);
        return {
          x: () => tf.mul(dyScaled, rstd),
          mean: () => unbroadcast(tf.neg(tf.mul(dyScaled, rstd)), mean.shape),
          variance: () =>
            unbroadcast(
              tf.mul(tf.mul(tf.mul(tf.pow(rstd, 3), -0.5), centered), dyScaled),
              variance.shape,
            ),
          scale: () => unbroadcast(tf.mul(g, tf.mul(centered, rstd)), gamma.shape),
          offset: () => unbroadcast(g, mean.shape),
        };
      },
    },
  ];
}

let registered = false;

/** Registers the gradients above for kernels that have none yet (idempotent, cheap). */
export function registerTrainingGradients(): void {
  if (registered) return;
  for (const config of gradConfigs()) {
    if (tf.getGradient(config.kernelName) == null) tf.registerGradient(config);
  }
  registered = true;
}
