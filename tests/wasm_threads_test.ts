/**
 * Tests of the threaded wasm build (lib/backends/wasm_threads.ts): it starts under Deno, and a small conv
 * net's forward pass and training-step gradients equal the single-threaded build's.
 *
 * tfjs holds one `wasm` backend per process, so each build runs in a child process: this file
 * run as a script (`deno run tests/wasm_threads_test.ts THREADS`) prints the backend's thread
 * count, the outputs and the gradients as JSON.
 */

import * as tf from "@tensorflow/tfjs-core";
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { initBackend } from "../lib/backends/backend.ts";
import "../lib/backends/tf_gradients.ts";
import {
  MAX_WASM_THREADS,
  resolveWasmThreads,
  threadedWasmUnavailable,
} from "../lib/backends/wasm_threads.ts";

/** What one child process reports. */
interface NetResult {
  threads: number;
  device: string;
  notes: string[];
  /** Name → flat values: the forward output and each weight's gradient. */
  tensors: Record<string, number[]>;
}

/**
 * A conv net touching the kernels a DenseNet training step uses (3×3 and 1×1 convolutions,
 * stride 2, batch norm, ReLU, concatenation, pooling, dense, sigmoid cross-entropy), on seeded
 * random data: forward output and the gradient of the loss for every weight.
 */
function convNet(): Record<string, tf.Tensor> {
  const x = tf.randomNormal([4, 32, 32, 8], 0, 1, "float32", 1) as tf.Tensor4D;
  const labels = tf.round(tf.randomUniform([4, 5], 0, 1, "float32", 2));
  const w = {
    conv1: tf.variable(tf.randomNormal([3, 3, 8, 32], 0, 0.2, "float32", 3)),
    conv2: tf.variable(tf.randomNormal([1, 1, 40, 48], 0, 0.2, "float32", 4)),
    conv3: tf.variable(tf.randomNormal([3, 3, 48, 32], 0, 0.1, "float32", 5)),
    gamma: tf.variable(tf.randomUniform([32], 0.5, 1.5, "float32", 6)),
    beta: tf.variable(tf.randomNormal([32], 0, 0.1, "float32", 7)),
    dense: tf.variable(tf.randomNormal([32, 5], 0, 0.3, "float32", 8)),
  };
  const forward = () => {
    const c1 = tf.conv2d(x, w.conv1 as tf.Tensor4D, 1, "same");
    const { mean, variance } = tf.moments(c1, [0, 1, 2]);
    const bn = tf.relu(tf.batchNorm(c1, mean, variance, w.beta, w.gamma, 1e-5));
    const cat = tf.concat([bn, x], 3) as tf.Tensor4D;
    const c2 = tf.relu(tf.conv2d(cat, w.conv2 as tf.Tensor4D, 1, "valid"));
    const c3 = tf.conv2d(tf.avgPool(c2, 2, 2, "valid"), w.conv3 as tf.Tensor4D, 2, "same");
    const pooled = tf.mean(tf.relu(c3), [1, 2]) as tf.Tensor2D;
    return tf.matMul(pooled, w.dense as tf.Tensor2D);
  };
  const logits = forward();
  const { grads } = tf.variableGrads(() => tf.losses.sigmoidCrossEntropy(labels, forward()));
  const out: Record<string, tf.Tensor> = { logits };
  for (const [name, v] of Object.entries(w)) out[`grad_${name}`] = grads[v.name];
  return out;
}

/** Starts wasm with `threads` threads and prints a `NetResult` as JSON on stdout. */
async function runChild(threads: number): Promise<void> {
  const info = await initBackend("wasm", { threads });
  const tensors: Record<string, number[]> = {};
  for (const [name, t] of Object.entries(convNet())) tensors[name] = Array.from(await t.data());
  const result: NetResult = {
    threads: info.threads ?? 0,
    device: info.device,
    notes: info.notes,
    tensors,
  };
  console.log(JSON.stringify(result));
}

/** Runs this file as a child with `threads` wasm threads. */
async function child(threads: number): Promise<NetResult> {
  const root = fileURLToPath(new URL("../", import.meta.url));
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-read",
      "--allow-env",
      "--allow-sys",
      "tests/wasm_threads_test.ts",
      `${threads}`,
    ],
    cwd: root,
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  const stderr = new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 0, `child with ${threads} thread(s) failed:\n${stderr}`);
  return JSON.parse(new TextDecoder().decode(out.stdout).trim().split("\n").at(-1)!);
}

Deno.test("resolveWasmThreads: 0 or absent is all cores, capped at tfjs's pool size", () => {
  const cores = Math.min(navigator.hardwareConcurrency || 1, MAX_WASM_THREADS);
  assert.equal(resolveWasmThreads(), cores);
  assert.equal(resolveWasmThreads(0), cores);
  assert.equal(resolveWasmThreads(1), 1);
  assert.equal(resolveWasmThreads(3), 3);
  assert.equal(resolveWasmThreads(64), MAX_WASM_THREADS);
});

Deno.test("the threaded build's requirements hold under this Deno", async () => {
  assert.equal(await threadedWasmUnavailable(), null);
});

Deno.test("threaded wasm gives the single-threaded build's outputs and gradients", async () => {
  const [single, threaded] = await Promise.all([child(1), child(2)]);
  assert.equal(single.threads, 1, single.notes.join("\n"));
  assert.equal(threaded.threads, 2, threaded.notes.join("\n"));
  assert.match(threaded.device, /threaded/);
  assert.deepEqual(Object.keys(threaded.tensors), Object.keys(single.tensors));
  for (const [name, expected] of Object.entries(single.tensors)) {
    const actual = threaded.tensors[name];
    assert.equal(actual.length, expected.length, name);
    let scale = 0;
    let diff = 0;
    for (let i = 0; i < expected.length; i++) {
      scale = Math.max(scale, Math.abs(expected[i]));
      diff = Math.max(diff, Math.abs(actual[i] - expected[i]));
    }
    assert.ok(scale > 0, `${name} is all zeros: the comparison would prove nothing`);
    assert.ok(diff <= 1e-5 * scale, `${name}: max |diff| ${diff} > 1e-5 × max |value| ${scale}`);
  }
});

if (import.meta.main) await runChild(Number(Deno.args[0] ?? 1));
