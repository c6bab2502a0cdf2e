import assert from "node:assert/strict";
import { runScript } from "./helpers/scripts.ts";

// The bench on the GPU code path, on whatever adapter this machine has (Mesa's lavapipe in CI).
const adapter = await navigator.gpu?.requestAdapter().catch(() => null);
if (!adapter) console.log("skipping WebGPU bench test: no WebGPU adapter");

Deno.test({
  name: "WebGPU: bench.ts finishes (data path included) and counts kernels and dispatches",
  ignore: !adapter,
  async fn() {
    const run = await runScript(
      "bench/bench.ts",
      [
        ...["--backend", "webgpu", "--image_size", "32", "--batch", "2", "--steps", "1"],
      ],
      [],
      { permissions: ["--allow-run"] },
    );
    assert.equal(run.code, 0, run.stderr);
    assert.doesNotMatch(run.stderr, /synchronously reading/);
    const out = JSON.parse(run.stdout.trim().split("\n").pop()!);
    for (const key of ["train_images_per_s", "infer_images_per_s", "augment_images_per_s"]) {
      assert.ok(out[key] > 0, `${key}: ${out[key]}`);
    }
    for (const key of ["kernels_per_train_step", "kernels_per_inference_batch"]) {
      assert.ok(Number.isInteger(out[key]) && out[key] > 0, `${key}: ${out[key]}`);
    }
    // A training step is the forward plus its backward plus Adam: several times the forward.
    assert.ok(out.kernels_per_train_step > 2 * out.kernels_per_inference_batch);
    assert.ok(out.dispatches_per_train_step > 0 && out.dispatches_per_inference_batch > 0);
  },
});
