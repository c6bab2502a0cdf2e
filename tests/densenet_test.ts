/**
 * DenseNet numerics against PyTorch (tests/fixtures/model/, made by make_reference.py with
 * torch 1.13 / torchvision 0.14), parameter counts, memory-efficient path, tensor leaks.
 */
import { BN_CONCAT_INFERENCE_KERNEL, BN_INFERENCE_KERNEL } from "../lib/backends/seam.ts";
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-cpu";
import assert from "node:assert/strict";
import {
  countParams,
  createDenseNet,
  type DenseNet,
  DENSENET121,
  disposeModel,
  forward,
  predict,
  TINY_DENSENET,
  trainableVariables,
} from "../lib/model/densenet.ts";
import { ref, referenceImages, referenceModel, torchLayout } from "./helpers/model_reference.ts";
import { bceWithLogits } from "../lib/train/loss.ts";
import { initBackend } from "../lib/backends/backend.ts";
import { openOneDnn } from "../lib/backends/native/native_kernels.ts";

await tf.setBackend("cpu");

/** Backends the PyTorch-parity tests run on: cpu, wasm, and native where libdnnl loads. */
const PARITY_BACKENDS = ["cpu", "wasm", "native"].filter((b) => {
  if (b !== "native") return true;
  try {
    openOneDnn();
    return true;
  } catch (err) {
    console.log(`skipping the native-backend parity tests: ${(err as Error).message}`);
    return false;
  }
});

/** Runs `fn` on `backend`, then returns to cpu (the other tests' backend). */
async function onBackend(backend: string, fn: () => void): Promise<void> {
  await initBackend(backend, { threads: 2 });
  try {
    fn();
  } finally {
    await tf.setBackend("cpu");
  }
}

/** Elementwise |a - b| ≤ rtol·|b| + atol, with atol = rtol·max|b| unless given. */
function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  rtol: number,
  what: string,
  atol?: number,
): number {
  assert.equal(actual.length, expected.length, `${what}: length`);
  let maxAbs = 0;
  for (let i = 0; i < expected.length; i++) maxAbs = Math.max(maxAbs, Math.abs(expected[i]));
  const tol = atol ?? rtol * maxAbs;
  let worst = 0;
  for (let i = 0; i < expected.length; i++) {
    const err = Math.abs(actual[i] - expected[i]);
    worst = Math.max(worst, err);
    if (!(err <= rtol * Math.abs(expected[i]) + tol)) {
      assert.fail(`${what}[${i}]: ${actual[i]} vs ${expected[i]} (err ${err})`);
    }
  }
  return worst;
}

Deno.test("densenet121 parameter counts match torchvision", () => {
  const d = ref.header.densenet121;
  const m14 = createDenseNet(DENSENET121);
  try {
    assert.equal(countParams(m14), 6_968_206);
    assert.equal(countParams(m14), d.trainable_params_14);
    assert.equal(countParams(m14, { trainableOnly: false }), 7_051_854);
    assert.equal(
      countParams(m14, { trainableOnly: false }),
      d.trainable_params_14 + d.running_stat_elements,
    );
    // torchvision's plain Linear head vs the original tool's Sequential(Linear, Sigmoid).
    const torchKeys = d.state_dict_keys_14.map((k) => k.replace(/^classifier\./, "classifier.0."));
    assert.deepEqual(m14.stateDictKeys, torchKeys);
    assert.deepEqual(m14.classifier.weight.shape, [1024, 14]);
  } finally {
    disposeModel(m14);
  }
  const m1000 = createDenseNet({ ...DENSENET121, numClasses: 1000 });
  try {
    assert.equal(countParams(m1000), 7_978_856);
    assert.equal(countParams(m1000), d.trainable_params_1000);
  } finally {
    disposeModel(m1000);
  }
});

Deno.test("tiny config parameter counts and key order match torchvision", () => {
  const m = createDenseNet(TINY_DENSENET);
  const m1000 = createDenseNet({ ...TINY_DENSENET, numClasses: 1000 });
  try {
    assert.equal(countParams(m), ref.header.trainable_params);
    assert.equal(countParams(m1000), ref.header.trainable_params_1000);
    assert.equal(
      countParams(m, { trainableOnly: false }),
      ref.header.trainable_params + ref.header.running_stat_elements,
    );
    assert.deepEqual(m.stateDictKeys, ref.header.tiny_state_dict_keys);
  } finally {
    disposeModel(m);
    disposeModel(m1000);
  }
});

Deno.test("initialisation is seeded and torchvision-like", () => {
  const a = createDenseNet(TINY_DENSENET, { seed: 3 });
  const b = createDenseNet(TINY_DENSENET, { seed: 3 });
  const c = createDenseNet(TINY_DENSENET, { seed: 4 });
  try {
    const w = (m: DenseNet) => Array.from(m.conv0.dataSync());
    assert.deepEqual(w(a), w(b));
    assert.notDeepEqual(w(a), w(c));
    // kaiming_normal_ (fan_in): std √(2 / (3·7·7)).
    const v = w(a);
    const mean = v.reduce((s, x) => s + x, 0) / v.length;
    const std = Math.sqrt(v.reduce((s, x) => s + (x - mean) ** 2, 0) / v.length);
    assert.ok(Math.abs(std / Math.sqrt(2 / 147) - 1) < 0.05, `conv0 std ${std}`);
    const head = a.classifier.weight.dataSync();
    const bound = 1 / Math.sqrt(a.classifier.weight.shape[0]);
    assert.ok(head.every((x) => Math.abs(x) <= bound));
    assert.ok(a.classifier.bias.dataSync().every((x) => x === 0));
    assert.ok(a.norm0.weight.dataSync().every((x) => x === 1));
    assert.ok(a.norm0.runningVar.dataSync().every((x) => x === 1));
    assert.equal(a.norm0.numBatchesTracked, 0);
    assert.equal(a.norm0.runningMean.trainable, false);
    assert.equal(a.norm0.weight.trainable, true);
  } finally {
    [a, b, c].forEach(disposeModel);
  }
});

for (const backend of PARITY_BACKENDS) {
  Deno.test(`eval-mode predictions match PyTorch (40×40 and odd 33×33), ${backend}`, () =>
    onBackend(backend, () => {
      const model = referenceModel();
      try {
        for (const size of [40, 33]) {
          const x = referenceImages(`input${size}`);
          const p = predict(model, x);
          assert.deepEqual(p.shape, [x.shape[0], 14]);
          const worst = assertClose(
            p.dataSync(),
            ref.get(`eval${size}`).data,
            0,
            `eval${size}`,
            1e-5,
          );
          console.log(`eval ${size}×${size}: max abs error ${worst.toExponential(2)}`);
          tf.dispose([x, p]);
        }
      } finally {
        disposeModel(model);
      }
    }));
}

Deno.test("evaluation never joins a dense block where BatchNormReluConcatInference exists", async () => {
  for (const backend of PARITY_BACKENDS) {
    await initBackend(backend, { threads: 2 });
    const model = referenceModel();
    const x = referenceImages("input40");
    try {
      const check = tf.env().getBool("CHECK_COMPUTATION_FOR_ERRORS");
      tf.env().set("CHECK_COMPUTATION_FOR_ERRORS", false);
      const profile = await tf.profile(() => tf.dispose(predict(model, x)));
      tf.env().set("CHECK_COMPUTATION_FOR_ERRORS", check);
      const count = (name: string) => profile.kernels.filter((k) => k.name === name).length;
      const layers = model.blocks.flat().length;
      if (backend === "cpu") {
        // No such kernel: the seam's reference joins each layer's feature list (one Concat).
        assert.equal(count(BN_CONCAT_INFERENCE_KERNEL), 0);
        assert.ok(count("Concat") >= layers, `${backend}: ${count("Concat")}`);
        continue;
      }
      // No block is joined (the Concats left join the folded BatchNorms' vectors: fewer than
      // one a layer).
      assert.ok(count("Concat") < layers, `${backend}: ${count("Concat")} Concats`);
      // Each layer's norm1, each transition's norm and norm5 read the feature list.
      assert.equal(count(BN_CONCAT_INFERENCE_KERNEL), layers + model.transitions.length + 1);
      // wasm, lacking a one-pass BatchNormReluInference, folds norm2 into conv1 (FusedConv2D).
      const folded = tf.getKernel(BN_INFERENCE_KERNEL, tf.getBackend()) == null;
      assert.ok(!folded || count("FusedConv2D") >= layers, `${backend}: ${profile.kernelNames}`);
    } finally {
      tf.dispose(x);
      disposeModel(model);
      await tf.setBackend("cpu");
    }
  }
});

for (const backend of PARITY_BACKENDS) {
  Deno.test(`training mode matches PyTorch: outputs, running stats, loss, gradients, ${backend}`, () =>
    onBackend(backend, () => {
      const model = referenceModel();
      const x = referenceImages("input40");
      const labels = tf.tensor2d(ref.get("labels40").data, [4, 14]);
      try {
        let probs: Float32Array | null = null;
        const { value, grads } = tf.variableGrads(() => {
          const logits = forward(model, x, { training: true });
          probs = tf.sigmoid(logits).dataSync() as Float32Array;
          return bceWithLogits(logits, labels);
        }, trainableVariables(model));
        assertClose(probs!, ref.get("train40").data, 1e-4, "train40");
        assertClose([value.dataSync()[0]], [ref.header.bce_loss], 1e-5, "loss");
        for (const [prefix, bn] of model.batchNorms) {
          assert.equal(bn.numBatchesTracked, ref.header.num_batches_tracked + 1, prefix);
          assertClose(
            bn.runningMean.dataSync(),
            ref.get(`after_train/${prefix}.running_mean`).data,
            1e-4,
            prefix,
          );
          assertClose(
            bn.runningVar.dataSync(),
            ref.get(`after_train/${prefix}.running_var`).data,
            1e-4,
            prefix,
          );
        }
        const gradNames = Object.keys(ref.header.tensors).filter((k) => k.startsWith("grad/"));
        assert.ok(gradNames.length >= 8);
        for (const name of gradNames) {
          const key = name.slice("grad/".length);
          const v = model.variables.get(key)!;
          const g = grads[v.name];
          assert.ok(g, `gradient of ${key}`);
          const worst = assertClose(torchLayout(g), ref.get(name).data, 1e-4, name);
          console.log(`${name}: max abs error ${worst.toExponential(2)}`);
        }
        tf.dispose([value, ...Object.values(grads)]);
        // Batch statistics at an odd size, no gradient tape.
        const x33 = referenceImages("input33");
        const fresh = referenceModel();
        const out = tf.tidy(() => tf.sigmoid(forward(fresh, x33, { training: true })));
        assertClose(out.dataSync(), ref.get("train33").data, 1e-4, "train33");
        tf.dispose([x33, out]);
        disposeModel(fresh);
      } finally {
        tf.dispose([x, labels]);
        disposeModel(model);
      }
    }));
}

function lossAndGrads(
  model: DenseNet,
  x: tf.Tensor4D,
  labels: tf.Tensor2D,
  memoryEfficient: boolean,
) {
  const vars = trainableVariables(model);
  const { value, grads } = tf.variableGrads(
    () => bceWithLogits(forward(model, x, { training: true, memoryEfficient }), labels),
    vars,
  );
  const out = {
    loss: value.dataSync()[0],
    grads: new Map(vars.map((v) => [v.name, grads[v.name].dataSync().slice() as Float32Array])),
  };
  tf.dispose([value, ...Object.values(grads)]);
  return out;
}

Deno.test("memory-efficient dense layers give the plain path's loss and gradients", () => {
  const model = referenceModel();
  const x = referenceImages("input40");
  const labels = tf.tensor2d(ref.get("labels40").data, [4, 14]);
  try {
    const plain = lossAndGrads(model, x, labels, false);
    const statsAfterPlain = model.norm5.runningMean.dataSync().slice();
    const efficient = lossAndGrads(model, x, labels, true);
    assert.ok(Math.abs(plain.loss - efficient.loss) <= 1e-5 * Math.abs(plain.loss));
    assert.equal(plain.grads.size, efficient.grads.size);
    let worst = 0;
    for (const [name, g] of plain.grads) {
      worst = Math.max(worst, assertClose(efficient.grads.get(name)!, g, 1e-5, name));
    }
    console.log(`memory-efficient vs plain: max abs gradient difference ${worst.toExponential(2)}`);
    // Exactly one running-stat update per forward (none from the recompute): two updates total.
    for (const [prefix, bn] of model.batchNorms) {
      assert.equal(bn.numBatchesTracked, ref.header.num_batches_tracked + 2, prefix);
    }
    const ref2 = new Float32Array(statsAfterPlain.length);
    const m0 = ref.get("after_train/features.norm5.running_mean").data;
    // After two identical updates: r2 = 0.9·r1 + 0.1·batchMean, with batchMean = (r1 - 0.9·r0)/0.1.
    const r0 = ref.get("weights/features.norm5.running_mean").data;
    for (let i = 0; i < ref2.length; i++) {
      const batchMean = (m0[i] - 0.9 * r0[i]) / 0.1;
      ref2[i] = 0.9 * m0[i] + 0.1 * batchMean;
    }
    assertClose(model.norm5.runningMean.dataSync(), ref2, 1e-4, "norm5 running_mean after two");
  } finally {
    tf.dispose([x, labels]);
    disposeModel(model);
  }
});

Deno.test("memory-efficient training gives the plain path's loss, gradients and running stats", () => {
  const x = referenceImages("input40");
  const labels = tf.tensor2d(ref.get("labels40").data, [4, 14]);
  const plainModel = referenceModel();
  const stats = (m: DenseNet) =>
    [...m.batchNorms].map(([prefix, bn]) => ({
      prefix,
      mean: bn.runningMean.dataSync().slice(),
      variance: bn.runningVar.dataSync().slice(),
      tracked: bn.numBatchesTracked,
    }));
  try {
    const plain = lossAndGrads(plainModel, x, labels, false);
    const plainStats = stats(plainModel);
    const levels = [true];
    for (const level of levels) {
      const model = referenceModel();
      try {
        const before = tf.memory().numTensors;
        const got = lossAndGrads(model, x, labels, level);
        assert.equal(tf.memory().numTensors, before, `${level}: tensors freed`);
        assert.ok(
          Math.abs(plain.loss - got.loss) <= 1e-5 * Math.abs(plain.loss),
          `${level}: loss ${got.loss} vs ${plain.loss}`,
        );
        assert.equal(got.grads.size, plain.grads.size);
        let worst = 0;
        for (const [name, g] of plain.grads) {
          const name2 = name.replace(/^densenet\d+\//, "");
          const mine = [...got.grads].find(([n]) => n.replace(/^densenet\d+\//, "") === name2);
          assert.ok(mine, `${level}: gradient of ${name2}`);
          worst = Math.max(worst, assertClose(mine[1], g, 1e-5, `${level} ${name2}`));
        }
        // One running-stat update per training forward, none from any recompute.
        const after = stats(model);
        for (let i = 0; i < after.length; i++) {
          const [a, b] = [after[i], plainStats[i]];
          assert.equal(a.tracked, b.tracked, `${level} ${a.prefix}: num_batches_tracked`);
          assertClose(a.mean, b.mean, 1e-6, `${level} ${a.prefix}.running_mean`, 1e-7);
          assertClose(a.variance, b.variance, 1e-6, `${level} ${a.prefix}.running_var`, 1e-7);
        }
        console.log(`${level} vs plain: max abs gradient difference ${worst.toExponential(2)}`);
      } finally {
        disposeModel(model);
      }
    }
  } finally {
    tf.dispose([x, labels]);
    disposeModel(plainModel);
  }
});

Deno.test("any input size ≥ 32 runs; BatchNorm training needs more than one value", () => {
  const model = createDenseNet(TINY_DENSENET, { seed: 1 });
  try {
    for (const size of [32, 37, 64]) {
      const p = tf.tidy(() =>
        predict(model, tf.randomNormal([1, size, size, 3], 0, 1, "float32", 1))
      );
      assert.deepEqual(p.shape, [1, 14]);
      assert.ok(p.dataSync().every((v) => v > 0 && v < 1));
      p.dispose();
    }
    const before = tf.memory().numTensors;
    assert.throws(
      () => forward(model, tf.zeros([1, 32, 32, 3]) as tf.Tensor4D, { training: true }),
      /more than 1 value per channel/,
    );
    assert.ok(tf.memory().numTensors <= before + 1); // only the zeros input survives
    assert.throws(
      () => forward(model, tf.zeros([1, 32, 32, 1]) as tf.Tensor4D, { training: false }),
      /3 channels/,
    );
  } finally {
    disposeModel(model);
  }
});

Deno.test("no tensor leak across training steps (variableGrads + Adam + BN updates)", () => {
  const model = createDenseNet(TINY_DENSENET, { seed: 2 });
  const x = tf.randomNormal([2, 32, 32, 3], 0, 1, "float32", 3) as tf.Tensor4D;
  const labels = tf.tensor2d(Array.from({ length: 28 }, (_, i) => i % 3 === 0 ? 1 : 0), [2, 14]);
  const optimizer = tf.train.adam(1e-3);
  const vars = trainableVariables(model);
  try {
    const step = (memoryEfficient: boolean) => {
      const loss = optimizer.minimize(
        () => bceWithLogits(forward(model, x, { training: true, memoryEfficient }), labels),
        true,
        vars,
      )!;
      const v = loss.dataSync()[0];
      loss.dispose();
      return v;
    };
    const losses = [step(false)]; // creates Adam's moment variables
    const before = tf.memory().numTensors;
    for (const level of [true, false, true, true]) losses.push(step(level));
    assert.equal(tf.memory().numTensors, before);
    assert.ok(losses[4] < losses[0], `loss went down: ${losses}`);
    assert.equal(model.norm5.numBatchesTracked, 5);
  } finally {
    optimizer.dispose();
    tf.dispose([x, labels]);
    disposeModel(model);
  }
});
