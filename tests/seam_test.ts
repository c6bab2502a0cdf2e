/**
 * The model's seam (lib/backends/seam.ts) on every backend available here × every seam op: the
 * op exists (its kernel or its reference), runs as the backend's kernel where the backend's
 * table has one, and equals the reference implementation (seam_reference.ts, plain tfjs ops)
 * within float32 tolerance, on dense-block shapes and on channel counts the SIMD passes do not
 * take (their fallbacks). No tensor leaks.
 */
import * as tf from "@tensorflow/tfjs-core";
import assert from "node:assert/strict";
import { initBackend } from "../lib/backends/backend.ts";
import {
  ADAM_STEP,
  BN_CONCAT_GRAD_KERNEL,
  BN_CONCAT_INFERENCE_KERNEL,
  BN_CONCAT_TRAIN_KERNEL,
  BN_GRAD_KERNEL,
  BN_INFERENCE_KERNEL,
  BN_TRAIN_KERNEL,
  FeatureList,
  seam,
  SEAM_OPS,
  type Statistics,
} from "../lib/backends/seam.ts";
import * as reference from "../lib/backends/seam_reference.ts";
import { installKernelTable, uninstallKernelTable } from "../lib/backends/kernel_registry.ts";
import { cpuKernelTable } from "../lib/backends/batchnorm_kernels.ts";
import {
  createDenseNet,
  disposeModel,
  forward,
  predict,
  TINY_DENSENET,
  trainableVariables,
} from "../lib/model/densenet.ts";
import { bceWithLogits } from "../lib/train/loss.ts";
import { relError } from "./assert.ts";
import { nativeMissingFor } from "./helpers/native.ts";
import { NO_WEBGPU } from "./helpers/webgpu.ts";

const ATTRS = { epsilon: 1e-5, relu: true };

/** Which seam ops each backend runs as kernels (the rest: their references). */
const FAST: Record<string, string[]> = {
  cpu: [BN_TRAIN_KERNEL, BN_GRAD_KERNEL],
  wasm: [BN_TRAIN_KERNEL, BN_GRAD_KERNEL, BN_CONCAT_INFERENCE_KERNEL],
  native: [
    BN_TRAIN_KERNEL,
    BN_GRAD_KERNEL,
    BN_INFERENCE_KERNEL,
    BN_CONCAT_INFERENCE_KERNEL,
    BN_CONCAT_TRAIN_KERNEL,
    BN_CONCAT_GRAD_KERNEL,
  ],
  webgpu: [
    BN_TRAIN_KERNEL,
    BN_GRAD_KERNEL,
    BN_INFERENCE_KERNEL,
    BN_CONCAT_INFERENCE_KERNEL,
    ADAM_STEP,
  ],
};

const nativeMissing = nativeMissingFor("the seam test on native");
const skip: Record<string, string | null> = {
  cpu: null,
  wasm: null,
  native: nativeMissing,
  webgpu: NO_WEBGPU,
};
if (NO_WEBGPU) console.log(`skipping the seam test on webgpu: ${NO_WEBGPU}`);

/** Comparisons to make once the work is done (WebGPU reads only asynchronously). */
type Check = [what: string, got: tf.Tensor, want: tf.Tensor, tol: number];

async function verify(checks: Check[]): Promise<void> {
  try {
    for (const [what, got, want, tol] of checks) {
      assert.deepEqual(got.shape, want.shape, `${what}: shape`);
      const [g, w] = [await got.data(), await want.data()];
      const err = relError(g as Float32Array, w as Float32Array);
      assert.ok(err <= tol, `${what}: relative error ${err.toExponential(2)} > ${tol}`);
    }
  } finally {
    tf.dispose(checks.flatMap(([, got, want]) => [got, want]));
  }
}

/** Dense-block-like feature maps: a list whose channels sum to `channels`. */
function features(parts: number[], seed: number): tf.Tensor4D[] {
  return parts.map((c, i) =>
    tf.add(tf.randomNormal([2, 5, 6, c], 0, 1.5, "float32", seed + i), 0.3) as tf.Tensor4D
  );
}

for (const backend of ["cpu", "wasm", "native", "webgpu"]) {
  // Channels the SIMD passes take (multiples of 4) and channels they do not (their fallbacks).
  for (const parts of [[8, 4, 4], [6, 3, 5]]) {
    Deno.test({
      name: `seam on ${backend}: every op equals its reference (channels ${parts.join("+")})`,
      ignore: skip[backend] != null,
      fn: async () => {
        await initBackend(backend, { threads: 2 });
        const ops = seam();
        assert.deepEqual([...ops.fast].sort(), [...FAST[backend]].sort(), "fast ops");
        assert.equal(ops.foldNorm2, !FAST[backend].includes(BN_INFERENCE_KERNEL));
        const before = tf.memory().numTensors;
        const checks: Check[] = [];
        const close = (got: tf.Tensor, want: tf.Tensor, tol: number, what: string) =>
          checks.push([what, tf.keep(got), tf.keep(want), tol]);
        tf.tidy(() => {
          const xs = features(parts, 11);
          const list = new FeatureList(xs);
          const x = tf.concat(xs, 3) as tf.Tensor4D;
          const c = x.shape[3];
          const p = {
            gamma: tf.randomUniform([c], 0.5, 1.5, "float32", 3) as tf.Tensor1D,
            beta: tf.randomNormal([c], 0, 0.5, "float32", 4) as tf.Tensor1D,
          };
          const running: Statistics = {
            mean: tf.randomNormal([c], 0, 0.3, "float32", 5) as tf.Tensor1D,
            variance: tf.randomUniform([c], 0.5, 2, "float32", 6) as tf.Tensor1D,
          };
          const dy = tf.randomNormal(x.shape, 0, 1, "float32", 7) as tf.Tensor4D;
          const addend = tf.randomNormal([2, 5, 6, c + 4], 0, 1, "float32", 8) as tf.Tensor4D;

          const [yRef, sRef] = reference.bnReluTrain(x, p, ATTRS);
          const [y, s] = ops.bnReluTrain(x, p, ATTRS);
          close(y, yRef, 2e-6, "bnReluTrain y");
          close(s.mean, sRef.mean, 2e-6, "bnReluTrain mean");
          close(s.variance, sRef.variance, 2e-6, "bnReluTrain variance");
          const [yl, sl] = ops.bnReluConcatTrain(list, p, ATTRS);
          close(yl, yRef, 2e-6, "bnReluConcatTrain y");
          close(sl.variance, sRef.variance, 2e-6, "bnReluConcatTrain variance");

          const gRef = reference.bnReluGrad(dy, x, p, sRef, ATTRS);
          ops.bnReluGrad(dy, x, p, sRef, ATTRS).forEach((g, i) =>
            close(g, gRef[i], 1e-5, `bnReluGrad ${["dx", "dgamma", "dbeta"][i]}`)
          );
          const glRef = reference.addPrefix(reference.bnReluGrad(dy, x, p, sRef, ATTRS), addend);
          ops.bnReluConcatGrad(dy, list, p, sRef, addend, ATTRS).forEach((g, i) =>
            close(g, glRef[i], 1e-5, `bnReluConcatGrad ${["dx + addend", "dgamma", "dbeta"][i]}`)
          );

          const infRef = reference.bnReluInference(x, p, running, ATTRS);
          close(ops.bnReluInference(x, p, running, ATTRS), infRef, 2e-6, "bnReluInference");
          close(ops.bnReluConcatInference(list, p, running, ATTRS), infRef, 2e-6, "concat inf.");
          // A recompute from the forward's statistics gives the forward's y exactly.
          close(ops.bnReluRecompute(x, p, s, ATTRS), y, 0, "recompute");
          close(ops.bnReluConcatRecompute(list, p, sl, ATTRS), yl, 0, "concat recompute");

          const split = ops.splitPrefix(addend, c, 4);
          close(split.dNew, tf.slice(addend, [0, 0, 0, c], [-1, -1, -1, 4]), 0, "dNew");

          const params = [tf.randomNormal([3, 4], 0, 1, "float32", 9), tf.randomNormal([5])];
          const grads = params.map((t, i) => tf.randomNormal(t.shape, 0, 1, "float32", 20 + i));
          const m = tf.randomNormal([17], 0, 0.1, "float32", 30);
          const v = tf.randomUniform([17], 0, 0.1, "float32", 31);
          const a = { beta1: 0.9, beta2: 0.999, eps: 1e-8, stepSize: 1e-3, sqrtBc2: 0.03 };
          const [pr, mr, vr] = reference.adamStep(params, grads, m, v, a);
          const [po, mo, vo] = ops.adamStep(params, grads, m, v, a);
          po.forEach((t, i) => close(t, pr[i], 1e-6, `adamStep p${i}`));
          close(mo, mr, 1e-6, "adamStep m");
          close(vo, vr, 1e-6, "adamStep v");
        });
        await verify(checks);
        assert.equal(tf.memory().numTensors, before, "no tensor leaks");
        assert.deepEqual(SEAM_OPS.length, 7);
      },
    });
  }
}

Deno.test("a backend with no seam kernels (as tfjs-node) trains and evaluates on the references", async () => {
  await initBackend("cpu");
  const model = createDenseNet(TINY_DENSENET, { seed: 5 });
  const x = tf.randomNormal([3, 40, 40, 3], 0, 1, "float32", 12) as tf.Tensor4D;
  const labels = tf.tidy(() =>
    tf.cast(tf.greater(tf.randomUniform([3, 14], 0, 1, "float32", 13), 0.6), "float32")
  ) as tf.Tensor2D;
  const vars = trainableVariables(model);
  const step = (memoryEfficient: boolean) => {
    const { value, grads } = tf.variableGrads(
      () => bceWithLogits(forward(model, x, { training: true, memoryEfficient }), labels),
      vars,
    );
    const out = {
      loss: value.dataSync()[0],
      grads: vars.map((v) => grads[v.name].dataSync().slice()),
    };
    tf.dispose([value, ...Object.values(grads)]);
    return out;
  };
  const probs = () => tf.tidy(() => predict(model, x).dataSync().slice());
  const referencesOnly = <T>(f: () => T): T => {
    uninstallKernelTable(cpuKernelTable());
    try {
      assert.equal(seam().fast.size, 0, "every op runs its reference");
      return f();
    } finally {
      installKernelTable(cpuKernelTable());
    }
  };
  try {
    // Evaluation first: training steps move the running statistics it reads.
    const fastProbs = probs();
    const before = tf.memory().numTensors;
    const refProbs = referencesOnly(probs);
    assert.equal(tf.memory().numTensors, before);
    assert.ok(relError(refProbs, fastProbs) <= 1e-5, "evaluation probabilities");
    const fast = [step(false), step(true)];
    assert.ok(seam().fast.has(BN_TRAIN_KERNEL));
    const refs = referencesOnly(() => [step(false), step(true)]);
    refs.forEach((r, k) => {
      const f = fast[k];
      assert.ok(Math.abs(r.loss - f.loss) <= 1e-5 * Math.abs(f.loss), `loss ${r.loss} ${f.loss}`);
      r.grads.forEach((g, i) => {
        // Relative to the tensor, or (a gradient that nearly cancels, such as norm0's γ here,
        // of norm ~5e-6) absolute: float32 moments against the kernels' float64 sums.
        const err = relError(g, f.grads[i]);
        const abs = Array.from(g).reduce(
          (m, v, j) => Math.max(m, Math.abs(v - f.grads[i][j])),
          0,
        );
        assert.ok(err <= 1e-3 || abs <= 1e-6, `${vars[i].name}: relative ${err}, abs ${abs}`);
      });
    });
  } finally {
    tf.dispose([x, labels]);
    disposeModel(model);
  }
});
