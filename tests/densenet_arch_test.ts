/**
 * DenseNet-169 and DenseNet-201 (`--arch densenet169|densenet201`) against torchvision's: the
 * same state_dict keys, order and shapes, and the same probabilities in evaluation and training
 * mode. tests/fixtures/model/make_arch_reference.py made the reference with torchvision 0.14;
 * the weights are a closed-form pattern of each parameter's position, rebuilt here (`pattern`),
 * so the fixture holds no weights. The memory estimate of each follows its configuration.
 */
import * as tf from "@tensorflow/tfjs-core";
import assert from "node:assert/strict";
import { initBackend } from "../lib/backends/backend.ts";
import {
  ARCHITECTURES,
  createDenseNet,
  DENSENET121,
  disposeModel,
  forward,
  predict,
} from "../lib/model/densenet.ts";
import { loadStateDict } from "../lib/model/model_weights.ts";
import type { StateDict } from "../lib/torch/state_dict.ts";
import { parameterCount } from "../lib/model/topology.ts";
import { trainingStepBytes } from "../lib/train/training_memory.ts";

const ref = JSON.parse(
  await Deno.readTextFile(new URL("./fixtures/model/arch_reference.json", import.meta.url)),
) as {
  size: number;
  batch: number;
  archs: Record<string, {
    state_dict_keys: string[];
    shapes: number[][];
    eval_probabilities: number[];
    train_probabilities_f64: number[];
    torch_f32_train_max_abs_error: number;
    norm5_running_mean_after_train: number[];
    torch_f32_norm5_running_mean_error: number;
  }>;
};

/** make_arch_reference.py's `pattern`: parameter `key` (index t in state_dict order). */
function pattern(key: string, shape: number[], t: number): Float32Array {
  const n = shape.reduce((a, b) => a * b, 1);
  const out = new Float32Array(n);
  let f: (i: number) => number;
  if (key.endsWith("running_mean")) f = (i) => 0.2 * Math.sin(0.29 * i + t);
  else if (key.endsWith("running_var")) f = (i) => 0.75 + 0.25 * Math.sin(0.17 * i + t);
  else if (shape.length === 1 && key.startsWith("features")) {
    f = key.endsWith("weight")
      ? (i) => 1 + 0.2 * Math.sin(0.91 * i + t)
      : (i) => 0.1 * Math.cos(0.53 * i + t);
  } else if (shape.length === 4) {
    const std = Math.sqrt(2 / (shape[1] * shape[2] * shape[3]));
    f = (i) => std * Math.sin(0.37 * i + 1.3 * t);
  } else if (shape.length === 2) f = (i) => Math.sin(0.61 * i + t) / Math.sqrt(shape[1]);
  else f = (i) => 0.05 * Math.cos(i + t);
  for (let i = 0; i < n; i++) out[i] = f(i);
  return out;
}

/** The reference images, NHWC. */
function images(): tf.Tensor4D {
  const { batch, size } = ref;
  const v = new Float32Array(batch * 3 * size * size);
  for (let i = 0; i < v.length; i++) v[i] = Math.sin(0.013 * i + 0.5) * 1.7;
  return tf.tidy(() => tf.transpose(tf.tensor4d(v, [batch, 3, size, size]), [0, 2, 3, 1]));
}

function maxAbs(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

for (const name of ["densenet169", "densenet201"]) {
  Deno.test(`${name} matches torchvision: keys, shapes, eval and training probabilities`, async () => {
    await initBackend("wasm", { threads: 2 });
    const want = ref.archs[name];
    const { config } = ARCHITECTURES[name];
    const model = createDenseNet(config);
    const x = images();
    try {
      assert.deepEqual(model.stateDictKeys, want.state_dict_keys);
      const sd: StateDict = new Map();
      let t = 0;
      want.state_dict_keys.forEach((key, k) => {
        if (key.endsWith("num_batches_tracked")) return;
        const shape = want.shapes[k];
        sd.set(key, { dtype: "float32", shape, data: pattern(key, shape, t++) });
      });
      loadStateDict(model, sd);
      const params = [...model.variables.values()].filter((v) => v.trainable);
      assert.equal(params.reduce((n, v) => n + v.size, 0), parameterCount(config));

      const evalP = predict(model, x);
      const evalErr = maxAbs(await evalP.data(), want.eval_probabilities);
      evalP.dispose();
      const trainP = tf.tidy(() => tf.sigmoid(forward(model, x, { training: true })));
      const trainErr = maxAbs(await trainP.data(), want.train_probabilities_f64);
      trainP.dispose();
      const torchErr = want.torch_f32_train_max_abs_error;
      console.log(
        `${name}: eval max abs error ${evalErr.toExponential(2)}; training mode against ` +
          `float64 ${trainErr.toExponential(2)} (PyTorch float32 ${torchErr.toExponential(2)})`,
      );
      assert.ok(evalErr < 1e-4, `eval probabilities: max abs error ${evalErr}`);
      // Training mode is ill-conditioned here (2·2·2 values per channel in the last block):
      // as accurate as PyTorch's float32 forward, within a small factor.
      assert.ok(trainErr < 3 * torchErr, `training probabilities: ${trainErr} vs ${torchErr}`);
      const runningMean = (await model.norm5.runningMean.data()).slice(0, 8);
      const statsErr = maxAbs(runningMean, want.norm5_running_mean_after_train);
      const torchStatsErr = want.torch_f32_norm5_running_mean_error;
      assert.ok(
        statsErr < 3 * torchStatsErr + 1e-6,
        `norm5 stats: ${statsErr} vs ${torchStatsErr}`,
      );
    } finally {
      x.dispose();
      disposeModel(model);
    }
  });
}

Deno.test("the memory estimate follows the configuration: deeper networks need more", () => {
  const bytes = (name: string) =>
    trainingStepBytes(ARCHITECTURES[name].config, 16, 224, true, "native");
  const d121 = trainingStepBytes(DENSENET121, 16, 224, true, "native");
  assert.equal(bytes("densenet121"), d121);
  assert.ok(bytes("densenet169") > d121 && bytes("densenet201") > bytes("densenet169"));
});
