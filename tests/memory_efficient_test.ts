import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import { probeAllocation, resolveMemoryEfficient } from "../lib/backends/memory_efficient.ts";
import { ARCHITECTURES, DENSENET121 } from "../lib/model/densenet.ts";
import { trainingStepBytes } from "../lib/train/training_memory.ts";

const plain = (batch: number, imageSize: number, config = DENSENET121) => ({
  bytes: trainingStepBytes(config, batch, imageSize, false, "webgpu"),
  batch,
  imageSize,
});
import { NO_WEBGPU, useWebgpu } from "./helpers/webgpu.ts";

Deno.test("--memory_efficient: on/off as given; auto by backend", async () => {
  assert.deepEqual(await resolveMemoryEfficient("on", "tensorflow", plain(64, 224)), { on: true });
  assert.deepEqual(await resolveMemoryEfficient("off", "wasm", plain(16, 224)), { on: false });
  const native = await resolveMemoryEfficient("auto", "tensorflow", plain(16, 224));
  assert.equal(native.on, false);
  assert.match(native.note!, /^--memory_efficient auto: off \(/);
  assert.equal((await resolveMemoryEfficient("auto", "wasm", plain(16, 224))).on, true);
  assert.equal((await resolveMemoryEfficient("auto", "cpu", plain(16, 224))).on, true);
});

Deno.test("the plain path's estimate: measured per image, scaled by the network's activations", () => {
  const weights = trainingStepBytes(DENSENET121, 0, 224, false, "webgpu");
  assert.equal(plain(1, 224).bytes - weights, 465 * 2 ** 20);
  // Activations scale with pixels up to the feature maps' rounding: 112² is ~1/4 of 224².
  const quarter = (plain(64, 112).bytes - weights) / (16 * 465 * 2 ** 20);
  assert.ok(Math.abs(quarter - 1) < 0.03, `${quarter}`);
  // Deeper networks need more: DenseNet-201 keeps more activations per image than -121.
  const deeper = trainingStepBytes(ARCHITECTURES.densenet201.config, 1, 224, false, "webgpu");
  assert.ok(deeper > plain(1, 224).bytes * 1.3);
});

Deno.test({
  name: "--memory_efficient auto on WebGPU: the probe allocates; a software adapter keeps it on",
  ignore: NO_WEBGPU != null,
  async fn() {
    await useWebgpu();
    const device = (tf.backend() as unknown as { device: GPUDevice }).device;
    assert.equal(await probeAllocation(device, 64 * 2 ** 20), true);
    const info = (await navigator.gpu.requestAdapter())!.info as { isFallbackAdapter?: boolean };
    const choice = await resolveMemoryEfficient("auto", "webgpu", plain(2, 64));
    if (info.isFallbackAdapter) {
      assert.deepEqual(choice, {
        on: true,
        note: "--memory_efficient auto: on (software adapter: its memory is the host's)",
      });
    } else {
      assert.match(choice.note!, /plain path at batch 2, 64², needs ~0\.1 GB/);
    }
  },
});
