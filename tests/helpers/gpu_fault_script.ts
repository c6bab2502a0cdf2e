/**
 * A training step on WebGPU after an injected GPU fault, run as a script (through `runMain`, as
 * the entry scripts are) by tests/device_faults_test.ts: `invalid` makes WebGPU report an
 * error asynchronously (a buffer over the adapter's size limit, which tfjs never sees),
 * `destroy` loses the device. Prints "step 1 ok" after the healthy first step.
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { initBackend } from "../../lib/backends/backend.ts";
import { createDenseNet, TINY_DENSENET } from "../../lib/model/densenet.ts";
import { Adam } from "../../lib/train/adam.ts";
import { trainStep } from "../../lib/train/training.ts";
import { runMain } from "../../lib/util/errors.ts";

async function main(args: string[]) {
  const mode = args[0];
  await initBackend("webgpu");
  const model = createDenseNet(TINY_DENSENET, { seed: 1 });
  const adam = new Adam({ lr: 1e-3 });
  const x = tf.randomNormal([2, 32, 32, 3], 0, 1, "float32", 2) as tf.Tensor4D;
  const y = tf.tensor2d(Array.from({ length: 28 }, (_, i) => i % 2), [2, 14]);
  await trainStep(model, adam, x, y, { memoryEfficient: false });
  console.log("step 1 ok");
  const device = (tf.backend() as unknown as { device: GPUDevice }).device;
  if (mode === "invalid") {
    device.createBuffer({
      size: device.limits.maxBufferSize + 4096,
      usage: GPUBufferUsage.STORAGE,
    });
  } else if (mode === "destroy") {
    device.destroy();
  }
  await trainStep(model, adam, x, y, { memoryEfficient: false });
  console.log("step 2 ok");
}

if (import.meta.main) await runMain(main);
