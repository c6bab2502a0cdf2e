import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-cpu";
import { encodeSeconds, formatGpuTimes, gpuProgramTimes } from "../bench/gpu_timing.ts";
import { NO_WEBGPU, useWebgpu } from "./helpers/webgpu.ts";

Deno.test("encodeSeconds: the time until the step first waits, not the whole step", async () => {
  const { encode, result } = await encodeSeconds(async () => {
    const start = performance.now();
    while (performance.now() - start < 30) { /* the synchronous part: ~30 ms */ }
    await new Promise((resolve) => setTimeout(resolve, 200));
    return 7;
  });
  assert.equal(result, 7);
  assert.ok(encode >= 0.029 && encode < 0.15, `${encode}`);
});

Deno.test("gpuProgramTimes: null off webgpu", async () => {
  await tf.setBackend("cpu");
  assert.equal(await gpuProgramTimes(() => void tf.dispose(tf.relu(tf.ones([4])))), null);
});

Deno.test({
  name: "gpuProgramTimes: each dispatch timed and summed by program, nothing leaked",
  ignore: NO_WEBGPU != null,
  async fn() {
    await useWebgpu();
    const a = tf.randomNormal([192, 160], 0, 1, "float32", 1);
    const before = tf.memory().numTensors;
    let out: tf.Tensor[] = [];
    const times = await gpuProgramTimes(
      () => {
        out = tf.tidy(() => {
          const p = tf.matMul(a, a, false, true);
          return [tf.relu(p), tf.relu(tf.neg(p))];
        });
      },
      () => Promise.all(out.map((t) => t.data())),
    );
    const backend = tf.backend() as unknown as { supportTimestampQuery?: boolean };
    if (!backend.supportTimestampQuery) {
      assert.equal(times, null); // an adapter without timestamp-query
      tf.dispose(out);
      return;
    }
    assert.ok(times != null);
    const byName = new Map(times.programs.map((p) => [p.program, p]));
    // One matrix product, three unary ops (relu, neg, relu) under one program class.
    assert.equal(byName.get("UnaryOpProgram")?.dispatches, 3, JSON.stringify(times.programs));
    const matMul = times.programs.find((p) => /^MatMul/.test(p.program));
    assert.equal(matMul?.dispatches, 1);
    assert.ok(times.programs.every((p) => p.ms >= 0));
    const sum = times.programs.reduce((s, p) => s + p.ms, 0);
    assert.ok(Math.abs(sum - times.totalMs) < 1e-9 && times.totalMs > 0);
    // Sorted by time, and the table names every program.
    assert.deepEqual(times.programs, [...times.programs].sort((x, y) => y.ms - x.ms));
    assert.equal(formatGpuTimes(times).length, times.programs.length);
    tf.dispose(out);
    assert.equal(tf.memory().numTensors, before);
    a.dispose();
  },
});
