import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-cpu";
import { deviceFault, readValues } from "../lib/backends/device_faults.ts";
import { runScript } from "./helpers/scripts.ts";
import { NO_WEBGPU } from "./helpers/webgpu.ts";

Deno.test("readValues is data() off WebGPU", async () => {
  await tf.setBackend("cpu");
  const t = tf.tensor1d([1, 2, 3]);
  assert.deepEqual([...await readValues(t)], [1, 2, 3]);
  assert.equal(deviceFault(), null);
  t.dispose();
});

// Each case breaks its GPU device, so each runs in a process of its own.
for (
  const [mode, message] of [
    // tfjs never sees this error: without the check the second step "succeeds".
    ["invalid", /^error: GpuFault: WebGPU error: .*(size|Buffer).*results since are invalid/m],
    // tfjs's read fails with "validation error occurred"; the fault names the loss instead.
    ["destroy", /^error: GpuFault: the WebGPU device was lost \(destroyed: .*--resume last$/m],
  ] as const
) {
  Deno.test({
    name: `a GPU fault (${mode}) stops training with one line naming it`,
    ignore: NO_WEBGPU != null,
    async fn() {
      const run = await runScript("tests/helpers/gpu_fault_script.ts", [mode], [], {
        timeoutMs: 60_000,
      });
      assert.equal(run.code, 1, run.stderr);
      assert.match(run.stdout, /step 1 ok/);
      assert.doesNotMatch(run.stdout, /step 2 ok/);
      assert.match(run.stderr, message);
      assert.doesNotMatch(run.stderr, /^\s+at /m); // no stack trace without --verbose
    },
  });
}
