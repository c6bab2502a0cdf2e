/**
 * A whole training step's gradients against a float64 reference (tests/fixtures/model/
 * precision.*, made by make_precision_reference.py with torch 1.13): the tiny DenseNet at batch
 * 8, 48×48, BCE on the Sigmoid head, on every CPU backend and memory level, must be as accurate
 * as PyTorch's own float32 step (to float32 rounding), whose error the fixture records per
 * parameter; and the native backend's bf16 step no less accurate, parameter by parameter, than
 * PyTorch's bfloat16 autocast step, whose error the fixture records too.
 */
import { nativeMissingFor } from "./helpers/native.ts";
import { bf16Missing } from "./helpers/bf16.ts";
import * as tf from "@tensorflow/tfjs-core";
import assert from "node:assert/strict";
import { initBackend } from "../lib/backends/backend.ts";
import { convPrecision } from "../lib/backends/native/native_kernels.ts";
import { disposeModel, forward, trainableVariables } from "../lib/model/densenet.ts";
import { bceWithLogits } from "../lib/train/loss.ts";
import { FIXTURES, referenceModel, torchLayout } from "./helpers/model_reference.ts";

const header = JSON.parse(Deno.readTextFileSync(new URL("precision.json", FIXTURES)));
const bytes = Deno.readFileSync(new URL("precision.bin", FIXTURES));
const entries = header.tensors as Record<
  string,
  { shape: number[]; offset: number; torch_float32_error?: number; torch_bf16_error?: number }
>;
const size = (shape: number[]) => shape.reduce((a, b) => a * b, 1);
const gradients = new Float64Array(bytes.buffer, bytes.byteOffset, header.gradient_values);
const inputs = new Float32Array(bytes.buffer, bytes.byteOffset + 8 * header.gradient_values);
const input = (name: string) => {
  const e = entries[name];
  return { shape: e.shape, data: inputs.subarray(e.offset, e.offset + size(e.shape)) };
};

const nativeMissing = nativeMissingFor("the native precision tests");
const bf16Unavailable = bf16Missing("the bf16 training-step tests");

/** ‖got − want‖ / ‖want‖ (the fixture's measure of PyTorch's error). */
function error(got: ArrayLike<number>, want: Float64Array): number {
  let diff = 0;
  let norm = 0;
  for (let i = 0; i < want.length; i++) {
    diff += (got[i] - want[i]) ** 2;
    norm += want[i] ** 2;
  }
  return norm > 0 ? Math.sqrt(diff / norm) : Math.sqrt(diff);
}

/** A step's loss and, per trainable parameter (torch name), its gradient's error. */
interface StepErrors {
  loss: number;
  keys: string[];
  errors: number[];
}

/** One training step of the reference model on the active backend, against float64. */
function stepErrors(memoryEfficient: boolean): StepErrors {
  const model = referenceModel();
  try {
    const images = input("images");
    const labels = input("labels");
    const vars = trainableVariables(model);
    const { value, grads } = tf.tidy(() => {
      const x = tf.transpose(
        tf.tensor4d(images.data, images.shape as [number, number, number, number]),
        [0, 2, 3, 1],
      ) as tf.Tensor4D;
      const y = tf.tensor2d(labels.data, labels.shape as [number, number]);
      return tf.variableGrads(
        () => bceWithLogits(forward(model, x, { training: true, memoryEfficient }), y),
        vars,
      );
    });
    const loss = value.dataSync()[0];
    const keys: string[] = [];
    const errors: number[] = [];
    for (const v of vars) {
      const key = v.name.slice(v.name.indexOf("/") + 1);
      const e = entries[key];
      assert.ok(e !== undefined, `reference gradient of ${key}`);
      keys.push(key);
      errors.push(
        error(torchLayout(grads[v.name]), gradients.subarray(e.offset, e.offset + size(e.shape))),
      );
    }
    tf.dispose([value, ...Object.values(grads)]);
    return { loss, keys, errors };
  } finally {
    disposeModel(model);
  }
}

const median = (a: number[]) => [...a].sort((p, q) => p - q)[a.length >> 1];

const cases: [string, boolean][] = [
  ["cpu", false],
  ["wasm", false],
  ["wasm", true],
  ["native", false],
  ["native", true],
];
for (const [backend, level] of cases) {
  Deno.test({
    name:
      `a training step (${backend}, memory-efficient ${level}) is as accurate as PyTorch's float32 one`,
    ignore: backend === "native" && nativeMissing != null,
    fn: async () => {
      await initBackend(backend, { threads: 2 });
      try {
        const { loss, keys, errors: ours } = stepErrors(level);
        const torch = keys.map((k) => entries[k].torch_float32_error!);
        assert.ok(torch.every((e) => e !== undefined), "the fixture's float32 errors");
        const lossErr = Math.abs(loss - header.loss_float64);
        const torchLossErr = Math.abs(header.loss_torch_float32 - header.loss_float64);
        const worst = Math.max(...ours.map((e, i) => e / Math.max(torch[i], 1e-7)));
        console.log(
          `${backend} ${level}: gradient error median ${median(ours).toExponential(2)} ` +
            `(torch float32 ${median(torch).toExponential(2)}), worst ratio to torch's ` +
            `${worst.toFixed(2)}; loss error ${lossErr.toExponential(2)} ` +
            `(torch ${torchLossErr.toExponential(2)})`,
        );
        // As accurate overall as PyTorch's float32 step, to float32 rounding (measured: native
        // 1.06×, cpu and wasm 1.11× its median error), and no tensor far worse than its.
        assert.ok(
          median(ours) <= 1.15 * median(torch),
          `median error ${median(ours)} against torch's ${median(torch)}`,
        );
        assert.ok(worst <= 3, `a gradient ${worst.toFixed(1)}× less accurate than torch's`);
        assert.ok(lossErr <= Math.max(4 * torchLossErr, 1e-7), `loss error ${lossErr}`);
      } finally {
        await tf.setBackend("cpu");
      }
    },
  });
}

for (const level of [false, true]) {
  Deno.test({
    name:
      `a bf16 training step (native, memory-efficient ${level}) is as accurate as PyTorch's bf16 autocast one`,
    ignore: bf16Unavailable != null,
    fn: async () => {
      await initBackend("native", { threads: 2, precision: "bf16" });
      try {
        const { loss, keys, errors: ours } = stepErrors(level);
        const torch = keys.map((k) => entries[k].torch_bf16_error!);
        assert.ok(torch.every((e) => e !== undefined), "the fixture's bf16 errors");
        const ratios = ours.map((e, i) => e / torch[i]);
        const lossErr = Math.abs(loss - header.loss_float64);
        const torchLossErr = Math.abs(header.loss_torch_bf16 - header.loss_float64);
        const worst = ratios.indexOf(Math.max(...ratios));
        console.log(
          `native bf16 ${level}: gradient error median ${median(ours).toExponential(2)} ` +
            `(torch bf16 ${median(torch).toExponential(2)}); ratio to torch's median ` +
            `${median(ratios).toFixed(3)}, max ${ratios[worst].toFixed(3)} (${keys[worst]}); ` +
            `loss error ${lossErr.toExponential(2)} (torch ${torchLossErr.toExponential(2)})`,
        );
        // Issue #21's contract: every gradient at least as accurate as PyTorch's bf16 step's.
        const worse = keys.filter((_, i) => ours[i] > torch[i]);
        assert.equal(
          worse.length,
          0,
          `${worse.length} of ${keys.length} gradients less accurate than torch bf16's, the ` +
            `worst ${keys[worst]}: ${ours[worst]} against ${torch[worst]}`,
        );
        assert.ok(lossErr <= torchLossErr, `loss error ${lossErr} against torch's ${torchLossErr}`);
      } finally {
        // Back to float32 convolutions for the tests that follow in this process.
        await initBackend("native", { threads: 2 });
        assert.equal(convPrecision(), "f32");
        await tf.setBackend("cpu");
      }
    },
  });
}
