/**
 * The `native` backend (oneDNN convolutions on the wasm heap) against tfjs's cpu backend, and
 * its selection rules. Tests that need libdnnl are skipped, with a message, where it is absent.
 */
import { tableInstalled, uninstallKernelTable } from "../lib/backends/kernel_registry.ts";
import { nativeMissingFor } from "./helpers/native.ts";
import { relError } from "./assert.ts";
import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import { initBackend } from "../lib/backends/backend.ts";
import { nativeKernelTable } from "../lib/backends/native/native_kernels.ts";
import { Rng } from "../lib/util/rng.ts";
import { createDenseNet, disposeModel, forward, TINY_DENSENET } from "../lib/model/densenet.ts";
import {
  BN_CONCAT_GRAD_KERNEL,
  BN_CONCAT_INFERENCE_KERNEL,
  BN_CONCAT_TRAIN_KERNEL,
  BN_GRAD_KERNEL,
  BN_INFERENCE_KERNEL,
  BN_TRAIN_KERNEL,
} from "../lib/backends/seam.ts";
import "../lib/backends/tf_gradients.ts";

const missing = nativeMissingFor("the native-backend tests");
const ignore = missing != null;

type Pad = "valid" | "same" | number | number[][];
interface Case {
  name: string;
  x: [number, number, number, number];
  filter: [number, number, number, number];
  strides: number | [number, number];
  pad: Pad;
}

const CASES: Case[] = [
  { name: "1x1", x: [2, 6, 5, 12], filter: [1, 1, 12, 7], strides: 1, pad: "valid" },
  { name: "3x3 same", x: [3, 7, 6, 16], filter: [3, 3, 16, 5], strides: 1, pad: "same" },
  {
    name: "7x7/2 pad 3 (the stem)",
    x: [2, 17, 15, 3],
    filter: [7, 7, 3, 8],
    strides: 2,
    pad: [[0, 0], [3, 3], [3, 3], [0, 0]],
  },
  { name: "3x3/2 same, odd", x: [2, 9, 8, 40], filter: [3, 3, 40, 6], strides: 2, pad: "same" },
  {
    name: "2x3 s(2,1) valid",
    x: [2, 8, 7, 5],
    filter: [2, 3, 5, 3],
    strides: [2, 1],
    pad: "valid",
  },
  {
    name: "5x5 asymmetric pad",
    x: [2, 9, 8, 6],
    filter: [5, 5, 6, 5],
    strides: 1,
    pad: [[0, 0], [2, 1], [0, 2], [0, 0]],
  },
];

const size = (s: number[]) => s.reduce((a, b) => a * b, 1);
const random = (rng: Rng, n: number) => Float32Array.from({ length: n }, () => rng.normal());

/** The four convolution kernels of `c` on the active backend, for fixed inputs. */
function convKernels(c: Case, seed: number): Float32Array[] {
  const rng = new Rng(seed);
  const engine = tf.engine();
  return tf.tidy(() => {
    const x = tf.tensor4d(random(rng, size(c.x)), c.x);
    const w = tf.tensor4d(random(rng, size(c.filter)), c.filter);
    const bias = tf.tensor1d(random(rng, c.filter[3]));
    const outShape = tf.backend_util.computeConv2DInfo(c.x, c.filter, c.strides, 1, c.pad as "same")
      .outShape;
    const dy = tf.tensor(random(rng, size(outShape)), outShape);
    const attrs = { strides: c.strides, pad: c.pad, dataFormat: "NHWC" };
    const run = (name: string, inputs: tf.NamedTensorMap, extra: object) =>
      (engine.runKernel(name, inputs, { ...attrs, ...extra } as tf.NamedAttrMap) as tf.Tensor)
        .dataSync() as Float32Array;
    return [
      run("Conv2D", { x, filter: w }, { dilations: 1 }),
      run("FusedConv2D", { x, filter: w, bias }, { dilations: 1, activation: "relu" }),
      run("Conv2DBackpropInput", { dy, filter: w }, { inputShape: c.x }),
      run("Conv2DBackpropFilter", { x, dy }, { filterShape: c.filter }),
    ];
  });
}

for (const [i, c] of CASES.entries()) {
  Deno.test({
    name: `native convolutions match tfjs's cpu backend: ${c.name}`,
    ignore,
    fn: async () => {
      await initBackend("cpu");
      const expected = convKernels(c, 100 + i);
      const info = await initBackend("native", { threads: 2 });
      assert.ok(tableInstalled(nativeKernelTable()));
      assert.equal(tf.getBackend(), "wasm");
      assert.equal(info.name, "native");
      const actual = convKernels(c, 100 + i);
      ["Conv2D", "FusedConv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter"].forEach((k, j) => {
        const err = relError(actual[j], expected[j]);
        assert.ok(err < 1e-5, `${k}: relative error ${err}`);
      });
    },
  });
}

Deno.test({
  name: "native kernels leak no tensors and fall back for what oneDNN does not take",
  ignore,
  fn: async () => {
    await initBackend("native", { threads: 2 });
    const x = tf.ones([1, 6, 6, 2]) as tf.Tensor4D;
    const w = tf.ones([3, 3, 2, 3]) as tf.Tensor4D;
    tf.conv2d(x, w, 1, "same").dispose();
    const before = tf.memory().numTensors;
    const ids = (tf.backend() as unknown as { numDataIds(): number }).numDataIds();
    for (let i = 0; i < 3; i++) tf.tidy(() => tf.conv2d(x, w, 1, "same").dataSync());
    assert.equal(tf.memory().numTensors, before);
    assert.equal((tf.backend() as unknown as { numDataIds(): number }).numDataIds(), ids);
    // Dilation 2 is not a native case: tfjs's wasm kernel answers, with the same numbers as cpu.
    const dilated = tf.conv2d(x, w, 1, "same", "NHWC", 2).dataSync();
    await initBackend("cpu");
    assert.deepEqual(
      Array.from(dilated),
      Array.from(tf.conv2d(x, w, 1, "same", "NHWC", 2).dataSync()),
    );
    tf.dispose([x, w]);
  },
});

Deno.test({
  name: "the backend line names oneDNN, its ISA and the threads; wasm afterwards is plain wasm",
  ignore,
  fn: async () => {
    const lines: string[] = [];
    await initBackend("native", { threads: 2, log: (l) => lines.push(l) });
    assert.match(
      lines.at(-1)!,
      /^backend: native \(oneDNN 2\.\d+\.\d+ \w+, wasm heap, 2 threads\)$/,
    );
    await initBackend("wasm", { threads: 2 });
    assert.ok(!tableInstalled(nativeKernelTable()));
    await initBackend("native", { threads: 2 });
    assert.ok(tableInstalled(nativeKernelTable()));
    uninstallKernelTable(nativeKernelTable());
  },
});

Deno.test("without libdnnl, --backend native is a one-line UserError and auto falls back to wasm", async () => {
  // A child process told to load a library that does not exist (ONEDNN_LIBRARY).
  const code = `
    import { initBackend } from "${new URL("../lib/backends/backend.ts", import.meta.url)}";
    const lines = [];
    const info = await initBackend("auto", { threads: 1, log: (l) => lines.push(l) });
    console.log(JSON.stringify({ name: info.name, lines }));
    try { await initBackend("native"); } catch (e) { console.log(e.constructor.name + ": " + e.message); }
  `;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "--config", new URL("../deno.json", import.meta.url).pathname, code],
    env: { ONEDNN_LIBRARY: "/nonexistent/libdnnl.so.2" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout).trim().split("\n");
  assert.ok(out.success, new TextDecoder().decode(out.stderr));
  const first = JSON.parse(text[0]) as { name: string; lines: string[] };
  assert.notEqual(first.name, "native");
  const notes = first.lines.filter((l) => l.startsWith("note: native skipped"));
  assert.equal(notes.length, 1, first.lines.join("\n"));
  assert.match(notes[0], /apt install libdnnl2/);
  assert.equal(text.length, 2);
  assert.match(
    text[1],
    /^UserError: backend native cannot start: .*apt install libdnnl2.*--backend wasm$/,
  );
});

Deno.test({
  name: "native evaluation-mode BatchNorm (FusedBatchNorm) matches tfjs's cpu backend",
  ignore,
  fn: async () => {
    const rng = new Rng(77);
    const [n, h, w, c] = [2, 9, 7, 24];
    const xs = random(rng, n * h * w * c);
    const vecs = [0, 1, 2, 3].map(() => random(rng, c));
    vecs[1] = vecs[1].map((v) => v * v + 0.1); // a variance
    const run = () =>
      tf.tidy(() =>
        tf.batchNorm4d(
          tf.tensor4d(xs, [n, h, w, c]),
          tf.tensor1d(vecs[0]),
          tf.tensor1d(vecs[1]),
          tf.tensor1d(vecs[2]),
          tf.tensor1d(vecs[3]),
          1e-5,
        ).dataSync()
      );
    await initBackend("cpu");
    const expected = run();
    const expectedRelu = expected.map((v) => Math.max(v, 0));
    await initBackend("native", { threads: 2 });
    const err = relError(run(), expected);
    assert.ok(err < 1e-6, `relative error ${err}`);
    // The optional fused evaluation kernel: the same normalisation, then ReLU, in one pass.
    const fused = tf.tidy(() =>
      (tf.engine().runKernel(BN_INFERENCE_KERNEL, {
        x: tf.tensor4d(xs, [n, h, w, c]),
        mean: tf.tensor1d(vecs[0]),
        variance: tf.tensor1d(vecs[1]),
        beta: tf.tensor1d(vecs[2]),
        gamma: tf.tensor1d(vecs[3]),
      }, { epsilon: 1e-5, relu: true }) as tf.Tensor).dataSync()
    );
    const errRelu = relError(fused, expectedRelu);
    assert.ok(errRelu < 1e-6, `${BN_INFERENCE_KERNEL}: relative error ${errRelu}`);
  },
});

Deno.test({
  name:
    "native Concat, SplitV and Slice (oneDNN strided copies) equal tfjs's cpu backend on every axis",
  ignore,
  fn: async () => {
    const rng = new Rng(91);
    // [shapes, axis]: DenseNet's channel joins (odd widths, many inputs), inner axes, and sizes
    // under the native threshold (tfjs's own loop).
    const cases: [number[][], number][] = [
      [[[2, 9, 7, 64], [2, 9, 7, 32], [2, 9, 7, 32]], 3],
      [[[3, 5, 11, 13], [3, 5, 11, 3]], 3],
      [Array.from({ length: 24 }, (_, i) => [2, 14, 14, i === 0 ? 256 : 32]), 3],
      [[[4, 6, 50, 20], [4, 7, 50, 20]], 1],
      [[[40, 30, 20], [40, 30, 5]], 2],
      [[[2, 3, 4, 5], [2, 3, 4, 6]], 3],
    ];
    const data = cases.map(([shapes]) => shapes.map((s) => random(rng, size(s))));
    const run = () =>
      cases.map(([shapes, axis], i) =>
        tf.tidy(() => {
          const xs = shapes.map((s, j) => tf.tensor(data[i][j], s));
          const joined = tf.concat(xs, axis);
          const parts = tf.split(joined, shapes.map((s) => s[axis]), axis);
          // Slices: a column block (native), and one that is not (tfjs's own).
          const begin = joined.shape.map((_, k) => (k === axis ? 1 : 0));
          const sliced = tf.slice(
            joined,
            begin,
            joined.shape.map((d, k) => (k === axis ? d - 2 : -1)),
          );
          const inner = tf.slice(joined, joined.shape.map((_, k) => (k === 0 ? 1 : 0)), -1);
          // Add: same shapes (native), and a broadcast (tfjs's own).
          const sum = tf.add(joined, tf.mul(joined, 0.5));
          const broadcast = tf.add(joined, tf.slice(joined, 0, [1]));
          return [joined, ...parts, sliced, inner, sum, broadcast].map((t) =>
            t.dataSync() as Float32Array
          );
        })
      );
    await initBackend("cpu");
    const expected = run();
    await initBackend("native", { threads: 2 });
    const before = tf.memory().numTensors;
    const got = run();
    assert.equal(tf.memory().numTensors, before, "no tensor left behind");
    got.forEach((outs, i) =>
      outs.forEach((out, j) => {
        assert.deepEqual(out, expected[i][j], `case ${i}, output ${j}`);
        if (j > 0 && j <= data[i].length) {
          assert.deepEqual(out, data[i][j - 1], `case ${i}: split ${j - 1} is its input`);
        }
      })
    );
  },
});

Deno.test({
  name: "native MaxPoolGrad and AvgPoolGrad (oneDNN pooling backward) equal tfjs's cpu backend",
  ignore,
  fn: async () => {
    const rng = new Rng(5);
    // [kind, x shape, filter, stride, pad]: DenseNet's stem max pooling and transition average
    // pooling, odd sizes, 'same' padding (ignored by the max; a padded average is tfjs's own).
    const cases: [
      "max" | "avg",
      [number, number, number, number],
      number,
      number,
      "valid" | "same" | number,
    ][] = [
      ["max", [2, 17, 15, 8], 3, 2, 1],
      ["max", [3, 9, 9, 4], 2, 2, "valid"],
      ["avg", [2, 14, 14, 12], 2, 2, "valid"],
      ["avg", [2, 7, 9, 4], 2, 2, "valid"],
      ["avg", [1, 8, 7, 4], 3, 1, "valid"],
      ["max", [1, 8, 7, 4], 3, 1, "same"],
    ];
    const data = cases.map(([, shape]) => random(rng, size(shape)));
    const run = () =>
      cases.map(([kind, shape, f, st, pad], i) =>
        tf.tidy(() => {
          const x = tf.tensor4d(data[i], shape);
          const pool = (t: tf.Tensor4D) =>
            kind === "max" ? tf.maxPool(t, f, st, pad) : tf.avgPool(t, f, st, pad);
          const out = pool(x);
          const dy = tf.tensor(random(new Rng(i), out.size), out.shape);
          return (tf.grad((t: tf.Tensor) => tf.sum(tf.mul(pool(t as tf.Tensor4D), dy)))(x))
            .dataSync() as Float32Array;
        })
      );
    await initBackend("cpu");
    const expected = run();
    await initBackend("native", { threads: 2 });
    const before = tf.memory().numTensors;
    const got = run();
    assert.equal(tf.memory().numTensors, before, "no tensor left behind");
    got.forEach((g, i) => {
      const err = relError(g, expected[i]);
      assert.ok(err < 1e-6, `case ${i} (${cases[i][0]}): relative error ${err}`);
    });
  },
});

Deno.test({
  name: "native evaluation forward (blocks never joined) equals tfjs's cpu backend",
  ignore,
  fn: async () => {
    // TINY_DENSENET's channels are multiples of 4 (the SIMD pass); the second net's 6 initial
    // features and growth 3 take the kernel's fallback (join, then oneDNN).
    const configs = [TINY_DENSENET, { ...TINY_DENSENET, growthRate: 3, numInitFeatures: 6 }];
    const x = random(new Rng(8), 2 * 37 * 37 * 3);
    const run = () =>
      configs.map((config) => {
        const model = createDenseNet(config, { seed: 11 });
        // Running statistics away from 0 / 1, so the normalisation matters.
        tf.tidy(() => {
          for (const [, bn] of model.batchNorms) {
            bn.runningMean.assign(tf.randomNormal(bn.runningMean.shape, 0, 0.3, "float32", 2));
            bn.runningVar.assign(tf.randomUniform(bn.runningVar.shape, 0.5, 2, "float32", 3));
          }
        });
        const out = tf.tidy(() =>
          forward(model, tf.tensor4d(x, [2, 37, 37, 3]), { training: false }).dataSync()
        );
        disposeModel(model);
        return out as Float32Array;
      });
    await initBackend("cpu");
    const expected = run();
    await initBackend("native", { threads: 2 });
    const before = tf.memory().numTensors;
    const got = run();
    assert.equal(tf.memory().numTensors, before, "no tensor left behind");
    got.forEach((g, i) => {
      const err = relError(g, expected[i]);
      assert.ok(err < 1e-5, `net ${i}: relative error ${err}`);
    });
  },
});

Deno.test({
  name: "native BatchNorm-of-a-concatenation kernels equal the fused kernels on the joined tensor",
  ignore,
  fn: async () => {
    await initBackend("native", { threads: 2 });
    const rng = new Rng(21);
    const engine = tf.engine();
    const attrs = { epsilon: 1e-5, relu: true };
    // A dense layer's inputs (block input + 32-channel features, split across both threads);
    // odd channel counts, and more channels than the SIMD passes' blocks hold (4,096), take the
    // kernels' join-then-fuse fallback.
    for (const channels of [[64, 32, 32, 32], [16, 8], [6, 5, 3], [4000, 104]]) {
      const before = tf.memory().numTensors;
      const c = channels.reduce((a, b) => a + b, 0);
      // (Fewer rows for the widest case: what it checks is the channel count.)
      const lead = c > 1024 ? [2, 4, 4] : [2, 28, 28];
      const rows = tf.util.sizeFromShape(lead);
      const got = tf.tidy(() => {
        // Means large against the spread, as in a network's later layers.
        const xs = channels.map((k) =>
          tf.tensor4d(
            Float32Array.from({ length: rows * k }, (_, i) => 4 * (i % k) / k + rng.normal()),
            [...lead, k] as [number, number, number, number],
          )
        );
        const vec = (f: () => number) => tf.tensor1d(Float32Array.from({ length: c }, f));
        const gamma = vec(() => 1 + 0.2 * rng.normal());
        const beta = vec(() => 0.3 * rng.normal());
        const dy = tf.tensor4d(
          random(rng, rows * c),
          [...lead, c] as [number, number, number, number],
        );
        const addend = tf.tensor4d(
          random(rng, rows * (c + 8)),
          [...lead, c + 8] as [number, number, number, number],
        );
        const list = (vectors: tf.NamedTensorMap) => {
          const inputs = { ...vectors };
          xs.forEach((x, i) => (inputs[`x${i}`] = x));
          return inputs;
        };
        const x = tf.concat(xs, 3);
        const [y0, m0, v0] = engine.runKernel(
          BN_TRAIN_KERNEL,
          { x, gamma, beta },
          attrs,
        ) as tf.Tensor[];
        const [y1, m1, v1] = engine.runKernel(
          BN_CONCAT_TRAIN_KERNEL,
          list({ gamma, beta }),
          attrs,
        ) as tf.Tensor[];
        const bn = { mean: m1, variance: v1, gamma, beta };
        const y2 = engine.runKernel(BN_CONCAT_INFERENCE_KERNEL, list(bn), attrs) as tf.Tensor;
        const [dx0, dg0, db0] = engine.runKernel(
          BN_GRAD_KERNEL,
          { dy, x, gamma, beta, mean: m1, variance: v1 },
          attrs,
        ) as tf.Tensor[];
        const [dx1, dg1, db1] = engine.runKernel(
          BN_CONCAT_GRAD_KERNEL,
          list({ dy, ...bn, addend }),
          attrs,
        ) as tf.Tensor[];
        const plus = tf.add(dx0, tf.slice(addend, [0, 0, 0, 0], [-1, -1, -1, c]));
        return [[y1, y0], [m1, m0], [v1, v0], [y2, y1], [dx1, plus], [dg1, dg0], [db1, db0]].map(
          ([a, b]) => [a.dataSync() as Float32Array, b.dataSync() as Float32Array],
        );
      });
      assert.equal(tf.memory().numTensors, before, "no tensor left behind");
      const names = ["y", "mean", "variance", "recomputed y", "dx + addend", "dgamma", "dbeta"];
      got.forEach(([a, b], i) => {
        const err = relError(a, b);
        // The recompute must give the forward's values exactly (the backward's ReLU mask).
        const limit = i === 3 ? 0 : 2e-6;
        assert.ok(err <= limit, `[${channels}] ${names[i]}: relative error ${err}`);
      });
    }
  },
});

Deno.test({
  name: "processes that used the native backend exit cleanly (OpenMP's threads vs library unload)",
  ignore,
  fn: async () => {
    // Before the libraries were pinned (onednn.ts pinLibraries), about 1 in 6 of these runs
    // ended in SIGSEGV (status 139) after writing its output: libgomp was unmapped at exit under
    // its waiting threads. Six runs catch that two times in three.
    const dir = await Deno.makeTempDir({ prefix: "cxr_native_exit_" });
    try {
      const shard = new URL("./fixtures/nih_subset/ChestXray14_val_002.tar", import.meta.url);
      const { readShard } = await import("../lib/data/webdataset.ts");
      for await (const s of readShard(shard.pathname)) {
        await Deno.writeFile(`${dir}/${s.key}.png`, s.png);
        break;
      }
      const model = new URL("./fixtures/torch/tiny_zip.pt", import.meta.url).pathname;
      const script = new URL("../validate_model.ts", import.meta.url).pathname;
      const runs = await Promise.all(
        Array.from({ length: 6 }, () =>
          new Deno.Command(Deno.execPath(), {
            args: ["run", "-A", script, "-s", model, "--images", dir, "--backend", "native"],
            stdout: "null",
            stderr: "null",
          }).output()),
      );
      assert.deepEqual(runs.map((r) => r.code), [0, 0, 0, 0, 0, 0]);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
