import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import { BACKENDS, initBackend, parseBackendName } from "../lib/backends/backend.ts";
import { UserError } from "../lib/util/errors.ts";

Deno.test("parseBackendName accepts the listed names and rejects others with a UserError", () => {
  for (const b of BACKENDS) assert.equal(parseBackendName(b), b);
  assert.equal(parseBackendName(" WASM "), "wasm");
  assert.throws(() => parseBackendName("cuda"), (e: unknown) => {
    assert.ok(e instanceof UserError);
    assert.equal(e.exitCode, 2);
    assert.match(e.message, /unknown backend 'cuda'.*auto, tensorflow, webgpu, native, wasm, cpu/);
    return true;
  });
});

Deno.test("initBackend('cpu') activates the cpu backend and logs it", async () => {
  const lines: string[] = [];
  const info = await initBackend("cpu", { log: (l) => lines.push(l) });
  assert.equal(info.name, "cpu");
  assert.equal(tf.getBackend(), "cpu");
  assert.ok(lines.includes("backend: cpu (CPU, plain JavaScript, 1 thread)"), lines.join("\n"));
  assert.deepEqual(Array.from(tf.add(tf.tensor([1, 2]), 1).dataSync()), [2, 3]);
});

Deno.test("initBackend('wasm') works from another working directory and registers training kernels", async () => {
  const cwd = Deno.cwd();
  Deno.chdir(await Deno.makeTempDir());
  try {
    const info = await initBackend("wasm", { threads: 2 });
    assert.equal(info.name, "wasm");
    assert.equal(info.threads, 2, info.notes.join("\n")); // tfjs's threaded build (wasm_threads.ts)
    assert.equal(tf.getBackend(), "wasm");
    assert.ok(tf.getKernel("Conv2DBackpropFilter", "wasm") != null);
    const y = tf.matMul(tf.tensor2d([1, 2, 3, 4], [2, 2]), tf.tensor2d([1, 0, 0, 1], [2, 2]));
    assert.deepEqual(Array.from(y.dataSync()), [1, 2, 3, 4]);
  } finally {
    Deno.chdir(cwd);
  }
});

Deno.test("explicit tensorflow without tfjs-node installed fails fast with the install hint", async () => {
  const t0 = performance.now();
  await assert.rejects(initBackend("tensorflow"), (e: unknown) => {
    assert.ok(e instanceof UserError, String(e));
    assert.match(e.message, /backend tensorflow cannot start/);
    assert.match(e.message, /--allow-scripts=npm:@tensorflow\/tfjs-node-gpu@4\.22\.0/);
    assert.match(e.message, /CUDA 11\.2 and cuDNN 8\.1/);
    return true;
  });
  assert.ok(performance.now() - t0 < 1000, "should not try to download anything");
});

Deno.test("auto on a machine without tfjs-node or a hardware GPU picks native (libdnnl) or wasm", async () => {
  const lines: string[] = [];
  const info = await initBackend("auto", { log: (l) => lines.push(l) });
  const gpu = (navigator as Navigator & { gpu?: GPU }).gpu;
  const adapter = await gpu?.requestAdapter().catch(() => null);
  const info2 = (adapter as (GPUAdapter & { info?: { isFallbackAdapter?: boolean } }) | null)
    ?.info;
  const hardwareGpu = adapter != null && info2?.isFallbackAdapter !== true &&
    !/llvmpipe|lavapipe|swiftshader/i.test(JSON.stringify(info2 ?? {}));
  if (hardwareGpu) {
    console.log("skipping the wasm expectation: this machine has a hardware WebGPU adapter");
    assert.equal(info.name, "webgpu");
    return;
  }
  assert.ok(info.notes.some((n) => n.startsWith("tensorflow skipped")));
  if (info.notes.some((n) => n.startsWith("native skipped"))) {
    assert.equal(info.name, "wasm");
    assert.ok(lines.at(-1)?.startsWith("backend: wasm (CPU, WebAssembly"));
  } else {
    assert.equal(info.name, "native");
    assert.ok(lines.at(-1)?.startsWith("backend: native (oneDNN 2."));
  }
});

Deno.test("unknown backend name is a UserError", async () => {
  await assert.rejects(initBackend("tpu"), UserError);
});

Deno.test("explicit webgpu runs on whatever adapter exists (software adapters accepted)", async (t) => {
  const gpu = (navigator as Navigator & { gpu?: GPU }).gpu;
  const adapter = await gpu?.requestAdapter().catch(() => null);
  if (adapter == null) {
    console.log("skipped: no WebGPU adapter (install mesa-vulkan-drivers for a software one)");
    await assert.rejects(initBackend("webgpu"), UserError);
    return;
  }
  const info = await initBackend("webgpu");
  assert.equal(info.name, "webgpu");
  assert.equal(tf.getBackend(), "webgpu");
  await t.step("a convolution gives the same result as wasm", async () => {
    const xs = Float32Array.from({ length: 2 * 6 * 5 * 3 }, (_, i) => Math.sin(i));
    const ws = Float32Array.from({ length: 3 * 3 * 3 * 4 }, (_, i) => Math.cos(i));
    const conv = () =>
      tf.conv2d(tf.tensor4d(xs, [2, 6, 5, 3]), tf.tensor4d(ws, [3, 3, 3, 4]), 1, "same");
    // webgpu's dataSync (and moving its tensors to another backend) needs an OffscreenCanvas,
    // which Deno lacks: read results with the async data().
    const gpuOut = await conv().data();
    await initBackend("wasm");
    const wasmOut = await conv().data();
    assert.equal(gpuOut.length, wasmOut.length);
    for (let i = 0; i < wasmOut.length; i++) assert.ok(Math.abs(gpuOut[i] - wasmOut[i]) < 1e-4);
  });
});
