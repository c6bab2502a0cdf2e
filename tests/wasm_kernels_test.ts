import { installKernelTable, uninstallKernelTable } from "../lib/backends/kernel_registry.ts";
import { BN_CONCAT_INFERENCE_KERNEL } from "../lib/backends/seam.ts";
import assert from "node:assert/strict";
import { relError } from "./assert.ts";
import * as tf from "@tensorflow/tfjs-core";
import { initBackend } from "../lib/backends/backend.ts";
import { wasmKernelTable } from "../lib/backends/wasm_kernels.ts";
import "../lib/backends/tf_gradients.ts";
import { Rng } from "../lib/util/rng.ts";

type Pad = "valid" | "same" | number | [[number, number], [number, number], [number, number], [
  number,
  number,
]];

interface Case {
  name: string;
  x: [number, number, number, number];
  filter: [number, number, number, number];
  strides: number | [number, number];
  pad: Pad;
}

const explicit = (t: number, b: number, l: number, r: number): Pad => [[0, 0], [t, b], [l, r], [
  0,
  0,
]];

const CASES: Case[] = [
  { name: "1x1", x: [2, 6, 5, 12], filter: [1, 1, 12, 7], strides: 1, pad: "valid" },
  {
    name: "3x3 s1 p1",
    x: [3, 7, 6, 16],
    filter: [3, 3, 16, 5],
    strides: 1,
    pad: explicit(1, 1, 1, 1),
  },
  { name: "3x3 same", x: [1, 5, 9, 9], filter: [3, 3, 9, 4], strides: 1, pad: "same" },
  {
    name: "7x7 s2 p3",
    x: [2, 17, 15, 3],
    filter: [7, 7, 3, 8],
    strides: 2,
    pad: explicit(3, 3, 3, 3),
  },
  { name: "3x3 s2 same wide", x: [2, 9, 8, 40], filter: [3, 3, 40, 6], strides: 2, pad: "same" },
  {
    name: "2x3 s(2,1) valid",
    x: [2, 8, 7, 5],
    filter: [2, 3, 5, 3],
    strides: [2, 1],
    pad: "valid",
  },
  { name: "1x1 s2", x: [2, 6, 6, 4], filter: [1, 1, 4, 3], strides: 2, pad: 0 },
  {
    name: "5x5 pad (2,1,0,2)",
    x: [2, 9, 8, 6],
    filter: [5, 5, 6, 5],
    strides: 1,
    pad: explicit(2, 1, 0, 2),
  },
  {
    name: "1x1 padded",
    x: [1, 4, 5, 3],
    filter: [1, 1, 3, 4],
    strides: 1,
    pad: explicit(0, 0, 0, 0),
  },
  { name: "3x3 valid", x: [2, 6, 7, 5], filter: [3, 3, 5, 9], strides: 1, pad: "valid" },
];

function randomArray(rng: Rng, n: number): Float32Array {
  return Float32Array.from({ length: n }, () => rng.normal());
}

/** dW of `c` on `backend`, for fixed inputs. */
function filterGrad(backend: string, c: Case, xs: Float32Array, dys: Float32Array): Float32Array {
  tf.setBackend(backend);
  return tf.tidy(() => {
    const x = tf.tensor4d(xs, c.x);
    const dyShape = tf.backend_util.computeConv2DInfo(c.x, c.filter, c.strides, 1, c.pad)
      .outShape;
    const dy = tf.tensor(dys.subarray(0, dyShape.reduce((a, b) => a * b, 1)), dyShape);
    const dw = tf.engine().runKernel("Conv2DBackpropFilter", { x, dy }, {
      strides: c.strides,
      pad: c.pad,
      dataFormat: "NHWC",
      filterShape: c.filter,
    }) as tf.Tensor;
    assert.deepEqual(dw.shape, c.filter);
    return dw.dataSync() as Float32Array;
  });
}

Deno.test("the wasm kernel table installs once and can be taken off and put back", async () => {
  await initBackend("wasm");
  const table = wasmKernelTable();
  for (const name of Object.keys(table.kernels)) {
    assert.equal(tf.getKernel(name, "wasm")?.kernelFunc, table.kernels[name], name);
  }
  assert.deepEqual(installKernelTable(table), []);
  // tfjs's own kernels can be put back (for before/after benchmarks) and swapped out again.
  const restored = uninstallKernelTable(table);
  assert.ok(restored.includes("SplitV") && !restored.includes("Conv2DBackpropFilter"));
  assert.notEqual(tf.getKernel("SplitV", "wasm")!.kernelFunc, table.kernels.SplitV);
  assert.equal(tf.getKernel("Conv2DBackpropFilter", "wasm"), undefined);
  const [a, b] = tf.split(tf.range(0, 6), [2, 4]);
  assert.deepEqual([...a.dataSync(), ...b.dataSync()], [0, 1, 2, 3, 4, 5]);
  tf.dispose([a, b]);
  assert.deepEqual(installKernelTable(table).sort(), restored.sort());
  assert.equal(tf.getKernel("SplitV", "wasm")!.kernelFunc, table.kernels.SplitV);
});

for (const c of CASES) {
  Deno.test(`Conv2DBackpropFilter on wasm matches cpu: ${c.name}`, async () => {
    await initBackend("cpu"); // also silences the cpu backend's first-use banner
    await initBackend("wasm");
    const rng = new Rng(c.name.length * 7919 + c.x[1]);
    const xs = randomArray(rng, c.x.reduce((a, b) => a * b, 1));
    const dys = randomArray(rng, c.x[0] * c.x[1] * c.x[2] * c.filter[3]);
    const expected = filterGrad("cpu", c, xs, dys);
    const actual = filterGrad("wasm", c, xs, dys);
    const err = relError(actual, expected);
    assert.ok(err < 1e-5, `relative error ${err}`);
    tf.setBackend("wasm");
  });
}

/** dx of `c` on `backend`, for fixed dy and filter. */
function inputGrad(backend: string, c: Case, ws: Float32Array, dys: Float32Array): Float32Array {
  tf.setBackend(backend);
  return tf.tidy(() => {
    const w = tf.tensor4d(ws.subarray(0, c.filter.reduce((a, b) => a * b, 1)), c.filter);
    const dyShape = tf.backend_util.computeConv2DInfo(c.x, c.filter, c.strides, 1, c.pad)
      .outShape;
    const dy = tf.tensor(dys.subarray(0, dyShape.reduce((a, b) => a * b, 1)), dyShape);
    const dx = tf.engine().runKernel("Conv2DBackpropInput", { dy, filter: w }, {
      strides: c.strides,
      pad: c.pad,
      dataFormat: "NHWC",
      inputShape: c.x,
    }) as tf.Tensor;
    assert.deepEqual(dx.shape, c.x);
    return dx.dataSync() as Float32Array;
  });
}

for (const c of CASES) {
  Deno.test(`Conv2DBackpropInput on wasm matches cpu: ${c.name}`, async () => {
    await initBackend("cpu");
    await initBackend("wasm");
    const rng = new Rng(c.name.length * 104729 + c.x[2]);
    const ws = randomArray(rng, c.filter.reduce((a, b) => a * b, 1));
    const dys = randomArray(rng, c.x[0] * c.x[1] * c.x[2] * c.filter[3]);
    const expected = inputGrad("cpu", c, ws, dys);
    const actual = inputGrad("wasm", c, ws, dys);
    const err = relError(actual, expected);
    assert.ok(err < 1e-5, `relative error ${err}`);
    tf.setBackend("wasm");
  });
}

Deno.test("Conv2DBackpropInput on wasm leaks no memory", async () => {
  await initBackend("wasm");
  for (const c of [CASES[0], CASES[1], CASES[3]]) {
    const w = tf.ones(c.filter) as tf.Tensor4D;
    const dy = tf.ones(
      tf.backend_util.computeConv2DInfo(c.x, c.filter, c.strides, 1, c.pad).outShape,
    ) as tf.Tensor4D;
    const run = () =>
      (tf.engine().runKernel("Conv2DBackpropInput", { dy, filter: w }, {
        strides: c.strides,
        pad: c.pad,
        dataFormat: "NHWC",
        inputShape: c.x,
      }) as tf.Tensor).dispose();
    run();
    const before = tf.memory().numTensors;
    const dataIds = (tf.backend() as unknown as { numDataIds(): number }).numDataIds();
    for (let i = 0; i < 3; i++) run();
    assert.equal(tf.memory().numTensors, before);
    assert.equal((tf.backend() as unknown as { numDataIds(): number }).numDataIds(), dataIds);
    tf.dispose([w, dy]);
  }
});

/** Runs `f` on cpu and on wasm with the same inputs; returns both results' data. */
async function onBoth(f: () => tf.Tensor | tf.Tensor[]): Promise<[Float32Array[], Float32Array[]]> {
  await initBackend("cpu");
  await initBackend("wasm");
  const run = (backend: string) => {
    tf.setBackend(backend);
    return tf.tidy(() => {
      const r = f();
      return (Array.isArray(r) ? r : [r]).map((t) => Float32Array.from(t.dataSync()));
    });
  };
  const cpu = run("cpu");
  const wasm = run("wasm");
  tf.setBackend("wasm");
  return [cpu, wasm];
}

function assertSame(cpu: Float32Array[], wasm: Float32Array[], tol: number): void {
  assert.equal(wasm.length, cpu.length);
  cpu.forEach((c, i) => {
    const err = relError(wasm[i], c);
    assert.ok(err <= tol, `output ${i}: relative error ${err}`);
  });
}

Deno.test("SplitV on wasm matches cpu on every axis (and Concat undoes it)", async () => {
  const rng = new Rng(5);
  const data = randomArray(rng, 2 * 5 * 4 * 70);
  for (const axis of [0, 1, 2, 3, -1]) {
    const [cpu, wasm] = await onBoth(() => {
      const x = tf.tensor4d(data, [2, 5, 4, 70]);
      const size = x.shape[axis < 0 ? 3 : axis];
      const parts = size === 70 ? [3, 64, 0, 3] : [1, size - 1];
      const pieces = tf.split(x, parts, axis);
      const back = tf.concat([...pieces].reverse(), axis);
      const ints = tf.concat([tf.cast(pieces[0], "int32"), tf.cast(pieces[1], "int32")], axis);
      return [...pieces, back, tf.cast(ints, "float32"), ...tf.split(tf.cast(x, "int32"), 2, 0)];
    });
    assertSame(cpu, wasm, 0);
  }
});

Deno.test("Slice on wasm matches cpu: contiguous, strided, every rank, int32", async () => {
  const rng = new Rng(6);
  const data = randomArray(rng, 3 * 5 * 4 * 6);
  const [cpu, wasm] = await onBoth(() => {
    const x = tf.tensor4d(data, [3, 5, 4, 6]);
    const xi = tf.cast(x, "int32");
    const cases: [tf.Tensor, number[], number[]][] = [
      [x, [1, 0, 0, 0], [1, -1, -1, -1]], // one image: contiguous
      [x, [0, 1, 2, 0], [3, 3, 2, 6]], // a crop of every image
      [x, [2, 4, 3, 5], [1, 1, 1, 1]],
      [x, [0, 0, 0, 2], [-1, -1, -1, 3]], // a channel range
      [x, [1, 2, 0, 1], [2, 2, 4, 4]],
      [xi, [0, 1, 1, 1], [2, 3, 2, 4]],
      [tf.reshape(x, [360]), [7], [100]],
      [tf.reshape(x, [15, 24]), [3, 5], [7, 10]],
      [tf.reshape(x, [3, 5, 4, 2, 3]), [1, 0, 1, 1, 0], [2, 5, 2, 1, 2]],
      [x, [0, 0, 0, 0], [0, 5, 4, 6]], // empty
    ];
    return cases.map(([t, begin, size]) => tf.cast(tf.slice(t, begin, size), "float32"));
  });
  assertSame(cpu, wasm, 0);
});

Deno.test("Sum and Mean on wasm match cpu (leading axes, other axes, keepDims)", async () => {
  const rng = new Rng(9);
  const data = randomArray(rng, 3 * 7 * 6 * 20);
  const [cpu, wasm] = await onBoth(() => {
    const x = tf.tensor4d(data, [3, 7, 6, 20]);
    return [
      tf.sum(x, [0, 1, 2]),
      tf.mean(x, [0, 1, 2]),
      tf.sum(x, [2, 0, 1], true),
      tf.mean(x, 0),
      tf.sum(x, [1, 2]),
      tf.mean(x, [1, 2], true),
      tf.sum(x),
      tf.mean(x, -1),
      tf.cast(tf.sum(tf.cast(tf.mul(x, 10), "int32"), [0, 1]), "float32"),
      tf.moments(x, [0, 1, 2]).variance,
    ];
  });
  assertSame(cpu, wasm, 1e-5);
});

Deno.test("MaxPoolGrad on wasm matches cpu, ties included", async () => {
  const rng = new Rng(11);
  // ReLU'd values: windows of zeros tie, and the gradient must go to the first of them.
  const data = Float32Array.from({ length: 2 * 11 * 10 * 9 }, () => Math.max(0, rng.normal()));
  const dyData = randomArray(rng, 2 * 11 * 10 * 9);
  const configs: [number, number, "valid" | "same" | number][] = [
    [3, 2, 1],
    [2, 2, "valid"],
    [3, 1, "same"],
    [3, 2, "same"],
  ];
  for (const [size, stride, pad] of configs) {
    const [cpu, wasm] = await onBoth(() => {
      const x = tf.tensor4d(data, [2, 11, 10, 9]);
      const y = tf.maxPool(x, size, stride, pad);
      const dy = tf.tensor(dyData.subarray(0, y.size), y.shape);
      return tf.engine().runKernel("MaxPoolGrad", { dy, input: x, output: y }, {
        filterSize: size,
        strides: stride,
        pad,
      }) as tf.Tensor;
    });
    assertSame(cpu, wasm, 1e-6);
  }
});

Deno.test("Conv2DBackpropFilter on wasm leaks no memory", async () => {
  await initBackend("wasm");
  for (const c of [CASES[0], CASES[1], CASES[3]]) {
    const x = tf.ones(c.x) as tf.Tensor4D;
    const dy = tf.ones(
      tf.backend_util.computeConv2DInfo(c.x, c.filter, c.strides, 1, c.pad).outShape,
    ) as tf.Tensor4D;
    const run = () =>
      (tf.engine().runKernel("Conv2DBackpropFilter", { x, dy }, {
        strides: c.strides,
        pad: c.pad,
        dataFormat: "NHWC",
        filterShape: c.filter,
      }) as tf.Tensor).dispose();
    run();
    const before = tf.memory();
    const dataIds = (tf.backend() as unknown as { numDataIds(): number }).numDataIds();
    for (let i = 0; i < 3; i++) run();
    assert.equal(tf.memory().numTensors, before.numTensors);
    assert.equal((tf.backend() as unknown as { numDataIds(): number }).numDataIds(), dataIds);
    tf.dispose([x, dy]);
  }
});

/** A miniature of DenseNet's training graph: every kernel kind a DenseNet step uses. */
function makeNet(rng: Rng): Map<string, tf.Variable> {
  const v = (name: string, shape: number[], std: number) =>
    tf.variable(
      tf.tensor(
        Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => rng.normal() * std),
        shape,
      ),
      true,
      name,
    );
  return new Map([
    ["conv0", v("t.conv0", [7, 7, 3, 8], 0.1)],
    ["gamma", v("t.gamma", [8], 0.1)],
    ["conv1", v("t.conv1", [1, 1, 8, 12], 0.3)],
    ["conv2", v("t.conv2", [3, 3, 12, 4], 0.2)],
    ["fc", v("t.fc", [12, 3], 0.3)],
  ]);
}

function netLoss(p: Map<string, tf.Variable>, x: tf.Tensor4D, y: tf.Tensor2D): tf.Scalar {
  let h = tf.conv2d(
    tf.pad(x, [[0, 0], [3, 3], [3, 3], [0, 0]]),
    p.get("conv0") as tf.Tensor4D,
    2,
    "valid",
  );
  const { mean, variance } = tf.moments(h, [0, 1, 2]);
  h = tf.add(
    tf.mul(tf.div(tf.sub(h, mean), tf.sqrt(tf.add(variance, 1e-5))), tf.add(p.get("gamma")!, 1)),
    0,
  );
  h = tf.relu(h);
  h = tf.maxPool(tf.pad(h, [[0, 0], [1, 1], [1, 1], [0, 0]]) as tf.Tensor4D, 3, 2, "valid");
  const b = tf.conv2d(tf.relu(h) as tf.Tensor4D, p.get("conv1") as tf.Tensor4D, 1, "valid");
  const g = tf.conv2d(tf.relu(b) as tf.Tensor4D, p.get("conv2") as tf.Tensor4D, 1, "same");
  h = tf.concat([h, g], 3);
  h = tf.avgPool(h as tf.Tensor4D, 2, 2, "valid");
  const feat = tf.mean(h, [1, 2]) as tf.Tensor2D;
  const logits = tf.matMul(feat, p.get("fc")!);
  const prob = tf.sigmoid(logits);
  const eps = 1e-7;
  return tf.neg(tf.mean(tf.add(
    tf.mul(y, tf.log(tf.add(prob, eps))),
    tf.mul(tf.sub(1, y), tf.log(tf.add(tf.sub(1, prob), eps))),
  ))) as tf.Scalar;
}

Deno.test("a small conv/BN/pool training step on wasm: gradients match cpu, loss decreases", async () => {
  await initBackend("cpu");
  const rng = new Rng(42);
  const xs = randomArray(rng, 2 * 20 * 18 * 3);
  const ys = Float32Array.from({ length: 6 }, () => (rng.next() < 0.5 ? 0 : 1));
  const grads = (backend: string) => {
    tf.setBackend(backend);
    const p = makeNet(new Rng(7));
    const x = tf.tensor4d(xs, [2, 20, 18, 3]);
    const y = tf.tensor2d(ys, [2, 3]);
    const { value, grads } = tf.variableGrads(() => netLoss(p, x, y), [...p.values()]);
    const out = {
      loss: value.dataSync()[0],
      grads: Object.fromEntries(Object.entries(grads).map(([k, g]) => [k, g.dataSync().slice()])),
    };
    tf.dispose([value, x, y, ...Object.values(grads), ...p.values()]);
    return out;
  };
  const cpu = grads("cpu");
  await initBackend("wasm");
  const wasm = grads("wasm");
  assert.ok(Math.abs(cpu.loss - wasm.loss) < 1e-5 * Math.abs(cpu.loss));
  for (const k of Object.keys(cpu.grads)) {
    const err = relError(wasm.grads[k], cpu.grads[k]);
    assert.ok(err < 1e-4, `${k}: relative error ${err}`);
  }

  // A few SGD steps on wasm lower the loss, without leaking tensors.
  const p = makeNet(new Rng(7));
  const x = tf.tensor4d(xs, [2, 20, 18, 3]);
  const y = tf.tensor2d(ys, [2, 3]);
  const opt = tf.train.sgd(0.5);
  const losses: number[] = [];
  let tensors = 0;
  for (let step = 0; step < 5; step++) {
    const loss = opt.minimize(() => netLoss(p, x, y), true, [...p.values()])!;
    losses.push(loss.dataSync()[0]);
    loss.dispose();
    if (step === 1) tensors = tf.memory().numTensors;
    if (step > 1) assert.equal(tf.memory().numTensors, tensors);
  }
  assert.ok(losses[4] < losses[0], `loss ${losses.join(" → ")}`);
  tf.dispose([x, y, ...p.values()]);
  opt.dispose();
});

Deno.test("BatchNormReluConcatInference on plain wasm equals concat + BatchNorm + ReLU", async () => {
  await initBackend("wasm", { threads: 2 });
  const rng = new Rng(3);
  const eps = 1e-5;
  // Multiples of 4 take the SIMD threads; odd channel counts, and more channels than the SIMD
  // passes' blocks hold (4,096), the JavaScript map (no oneDNN here).
  for (const channels of [[64, 32, 32], [6, 5, 3], [8], [4000, 104]]) {
    const c = channels.reduce((a, b) => a + b, 0);
    const rows = 2 * 9 * 7;
    const xs = channels.map((k) => Float32Array.from({ length: rows * k }, () => rng.normal()));
    const vec = (f: () => number) => Float32Array.from({ length: c }, f);
    const [mean, variance, gamma, beta] = [
      vec(() => rng.normal()),
      vec(() => 0.5 + rng.next()),
      vec(() => 1 + 0.2 * rng.normal()),
      vec(() => 0.3 * rng.normal()),
    ];
    const before = tf.memory().numTensors;
    const got = tf.tidy(() => {
      const inputs: tf.NamedTensorMap = {
        mean: tf.tensor1d(mean),
        variance: tf.tensor1d(variance),
        gamma: tf.tensor1d(gamma),
        beta: tf.tensor1d(beta),
      };
      xs.forEach((x, i) => (inputs[`x${i}`] = tf.tensor4d(x, [2, 9, 7, channels[i]])));
      const attrs = { epsilon: eps, relu: true };
      const y = tf.engine().runKernel(BN_CONCAT_INFERENCE_KERNEL, inputs, attrs) as tf.Tensor;
      assert.deepEqual(y.shape, [2, 9, 7, c]);
      return y.dataSync() as Float32Array;
    });
    assert.equal(tf.memory().numTensors, before);
    // Float64 reference over the joined channels.
    const expected = new Float64Array(rows * c);
    let c0 = 0;
    channels.forEach((k, i) => {
      for (let r = 0; r < rows; r++) {
        for (let j = 0; j < k; j++) {
          const ch = c0 + j;
          const v = (xs[i][r * k + j] - mean[ch]) / Math.sqrt(variance[ch] + eps) * gamma[ch] +
            beta[ch];
          expected[r * c + ch] = Math.max(0, v);
        }
      }
      c0 += k;
    });
    const err = relError(got, Float32Array.from(expected));
    assert.ok(err < 1e-6, `[${channels}]: relative error ${err}`);
  }
});
