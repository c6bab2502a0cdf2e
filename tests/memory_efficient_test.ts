import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import {
  plainPathBytes,
  probeAllocation,
  resolveMemoryEfficient,
} from "../lib/backends/memory_efficient.ts";
import { NO_WEBGPU, useWebgpu } from "./helpers/webgpu.ts";

Deno.test("--memory_efficient: on/off as given; auto by backend", async () => {
  assert.deepEqual(await resolveMemoryEfficient("on", "tensorflow", 64, 224), { on: true });
  assert.deepEqual(await resolveMemoryEfficient("off", "wasm", 16, 224), { on: false });
  const native = await resolveMemoryEfficient("auto", "tensorflow", 16, 224);
  assert.equal(native.on, false);
  assert.match(native.note!, /^--memory_efficient auto: off \(/);
  assert.equal((await resolveMemoryEfficient("auto", "wasm", 16, 224)).on, true);
  assert.equal((await resolveMemoryEfficient("auto", "cpu", 16, 224)).on, true);
});

Deno.test("the plain path's estimate scales with batch and pixels", () => {
  assert.equal(plainPathBytes(1, 224), 465 * 2 ** 20);
  assert.equal(plainPathBytes(64, 112), 16 * 465 * 2 ** 20);
});

Deno.test({
  name: "--memory_efficient auto on WebGPU: the probe allocates; a software adapter keeps it on",
  ignore: NO_WEBGPU != null,
  async fn() {
    await useWebgpu();
    const device = (tf.backend() as unknown as { device: GPUDevice }).device;
    assert.equal(await probeAllocation(device, 64 * 2 ** 20), true);
    const info = (await navigator.gpu.requestAdapter())!.info as { isFallbackAdapter?: boolean };
    const choice = await resolveMemoryEfficient("auto", "webgpu", 2, 64);
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
