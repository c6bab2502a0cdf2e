/**
 * A whole training step's gradients against a float64 reference (tests/fixtures/model/
 * precision.*, made by make_precision_reference.py with torch 1.13): the tiny DenseNet at batch
 * 8, 48×48, BCE on the Sigmoid head, on every CPU backend and memory level, must be as accurate
 * as PyTorch's own float32 step (to float32 rounding), whose error the fixture records per
 * parameter. The bf16 step's contract, pooled over several batches, is tests/bf16_step_test.ts.
 */
import { nativeMissingFor } from "./helpers/native.ts";
import * as tf from "@tensorflow/tfjs-core";
import assert from "node:assert/strict";
import { initBackend } from "../lib/backends/backend.ts";
import { FIXTURES } from "./helpers/model_reference.ts";
import { relativeError, trainingStep } from "./helpers/training_step.ts";

const header = JSON.parse(Deno.readTextFileSync(new URL("precision.json", FIXTURES)));
const bytes = Deno.readFileSync(new URL("precision.bin", FIXTURES));
const entries = header.tensors as Record<
  string,
  { shape: number[]; offset: number; torch_float32_error?: number }
>;
const size = (shape: number[]) => shape.reduce((a, b) => a * b, 1);
const gradients = new Float64Array(bytes.buffer, bytes.byteOffset, header.gradient_values);
const inputs = new Float32Array(bytes.buffer, bytes.byteOffset + 8 * header.gradient_values);
const input = (name: string) => {
  const e = entries[name];
  return { shape: e.shape, data: inputs.subarray(e.offset, e.offset + size(e.shape)) };
};

const nativeMissing = nativeMissingFor("the native precision tests");
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
        const images = input("images");
        const step = trainingStep(
          images.data,
          images.shape as [number, number, number, number],
          input("labels").data,
          level,
        );
        const ours: number[] = [];
        const torch: number[] = [];
        for (const [key, grad] of step.gradients) {
          const e = entries[key];
          assert.ok(e?.torch_float32_error !== undefined, `reference gradient of ${key}`);
          ours.push(relativeError(grad, gradients.subarray(e.offset, e.offset + size(e.shape))));
          torch.push(e.torch_float32_error!);
        }
        const lossErr = Math.abs(step.loss - header.loss_float64);
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
