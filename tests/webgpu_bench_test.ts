import assert from "node:assert/strict";
import { runScript } from "./helpers/scripts.ts";

// The bench on the GPU code path, on whatever adapter this machine has (Mesa's lavapipe in CI).
const adapter = await navigator.gpu?.requestAdapter().catch(() => null);
if (!adapter) console.log("skipping WebGPU bench test: no WebGPU adapter");

Deno.test({
  name:
    "WebGPU: bench.ts finishes (data path included), counts kernels and dispatches, times programs",
  ignore: !adapter,
  async fn() {
    const run = await runScript(
      "bench/bench.ts",
      [
        ...["--backend", "webgpu", "--image_size", "32", "--batch", "2", "--steps", "1"],
        "--gpu_times",
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
    // The CPU's share of each step: positive, at most the step.
    assert.equal(out.train_encode_s.length, out.train_step_s.length);
    out.train_encode_s.forEach((e: number, i: number) =>
      assert.ok(e > 0 && e <= out.train_step_s[i] + 0.01, `${e} of ${out.train_step_s[i]}`)
    );
    if (out.gpu_train_step === null) {
      assert.match(run.stderr, /unavailable \(the adapter has no timestamp-query\)/);
    } else {
      // Our filter-gradient GEMM computes the weight gradients (1×1 ones included), and a
      // training step costs more GPU time than an inference batch.
      const programs = new Map(
        out.gpu_train_step.programs.map((p: { program: string }) => [p.program, p]),
      );
      assert.ok(programs.has("FilterGemmProgram"), JSON.stringify(out.gpu_train_step));
      assert.ok(out.gpu_train_step.total_ms > out.gpu_inference_batch.total_ms);
      assert.match(run.stderr, /GPU time of a training step: [\d.]+ ms, by program:/);
    }
  },
});
