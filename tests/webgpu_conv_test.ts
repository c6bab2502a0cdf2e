import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-cpu";
import { splitPlan } from "../lib/backends/webgpu/conv_backprop_filter.ts";
import { webgpuKernelTable } from "../lib/backends/webgpu/kernels.ts";
import { installKernelTable, uninstallKernelTable } from "../lib/backends/kernel_registry.ts";
import { assertClose } from "./assert.ts";
import { countKernels, NO_WEBGPU, usedGpuBuffers, useWebgpu } from "./helpers/webgpu.ts";
import { Rng } from "../lib/util/rng.ts";

type Pad = "valid" | "same" | [
  [number, number],
  [number, number],
  [number, number],
  [number, number],
];
interface Case {
  what: string;
  x: [number, number, number, number];
  filter: [number, number, number, number];
  stride: number;
  pad: Pad;
}

// DenseNet's convolutions at small sizes, odd sizes and batch 1 included: the 7×7 stride-2 stem
// with padding 3, 1×1 bottlenecks and transitions, 3×3 "same" growth convolutions.
const CASES: Case[] = [
  {
    what: "stem 7×7/2 pad 3",
    x: [2, 17, 19, 3],
    filter: [7, 7, 3, 16],
    stride: 2,
    pad: [[0, 0], [3, 3], [3, 3], [0, 0]],
  },
  {
    what: "stem, batch 1",
    x: [1, 32, 32, 3],
    filter: [7, 7, 3, 64],
    stride: 2,
    pad: [[0, 0], [3, 3], [3, 3], [0, 0]],
  },
  { what: "1×1 bottleneck", x: [2, 9, 9, 96], filter: [1, 1, 96, 128], stride: 1, pad: "valid" },
  { what: "1×1 odd channels", x: [3, 5, 7, 67], filter: [1, 1, 67, 33], stride: 1, pad: "valid" },
  { what: "3×3 same growth", x: [2, 7, 7, 128], filter: [3, 3, 128, 32], stride: 1, pad: "same" },
  {
    what: "3×3 same, batch 1, odd",
    x: [1, 5, 3, 13],
    filter: [3, 3, 13, 7],
    stride: 1,
    pad: "same",
  },
  { what: "3×3 stride 2 same", x: [2, 9, 8, 5], filter: [3, 3, 5, 6], stride: 2, pad: "same" },
  {
    what: "1×1 long reduction (split over M, no im2col)",
    x: [4, 40, 40, 70],
    filter: [1, 1, 70, 36],
    stride: 1,
    pad: "valid",
  },
  {
    what: "3×3 long reduction (split over M)",
    x: [4, 24, 24, 8],
    filter: [3, 3, 8, 16],
    stride: 1,
    pad: "same",
  },
];

function randoms(n: number, rng: Rng): Float32Array {
  return Float32Array.from({ length: n }, () => rng.next() * 2 - 1);
}

/** Conv2DBackpropFilter of `c` on the active backend. */
async function backpropFilter(c: Case, xv: Float32Array, dyv: Float32Array): Promise<Float32Array> {
  const x = tf.tensor4d(xv, c.x);
  const info = tf.backend_util.computeConv2DInfo(c.x, c.filter, c.stride, 1, c.pad);
  const dy = tf.tensor4d(dyv, info.outShape);
  const dw = tf.engine().runKernel("Conv2DBackpropFilter", { x, dy }, {
    strides: c.stride,
    pad: c.pad,
    dataFormat: "NHWC",
    filterShape: c.filter,
  } as unknown as tf.NamedAttrMap) as tf.Tensor;
  assert.deepEqual(dw.shape, c.filter);
  const out = await dw.data() as Float32Array;
  tf.dispose([x, dy, dw]);
  return out;
}

/** Conv2DBackpropInput of `c` on the active backend. */
async function backpropInput(c: Case, dyv: Float32Array, wv: Float32Array): Promise<Float32Array> {
  const info = tf.backend_util.computeConv2DInfo(c.x, c.filter, c.stride, 1, c.pad);
  const dy = tf.tensor4d(dyv, info.outShape);
  const filter = tf.tensor4d(wv, c.filter);
  const dx = tf.engine().runKernel("Conv2DBackpropInput", { dy, filter }, {
    strides: c.stride,
    pad: c.pad,
    dataFormat: "NHWC",
    inputShape: c.x,
  } as unknown as tf.NamedAttrMap) as tf.Tensor;
  assert.deepEqual(dx.shape, c.x);
  const out = await dx.data() as Float32Array;
  tf.dispose([dy, filter, dx]);
  return out;
}

Deno.test("splitPlan covers M exactly and splits long reductions", () => {
  for (const [m, k, co] of [[802816, 147, 64], [100, 9, 9], [200704, 256, 128], [513, 1024, 512]]) {
    const { splits, chunk } = splitPlan(m, k, co);
    assert.ok(chunk % 16 === 0 && (splits - 1) * chunk < m && splits * chunk >= m, `${m}`);
  }
  assert.ok(splitPlan(802816, 147, 64).splits > 100); // the stem: a 6-workgroup grid otherwise
  assert.equal(splitPlan(100, 9, 9).splits, 1);
  // A dense layer's 1×1 filter at 56², batch 64: 16 tiles of dW, so the grid is M-split to ~1024.
  const bottleneck = splitPlan(64 * 56 * 56, 256, 128);
  assert.ok(bottleneck.splits * 16 >= 1000, `${bottleneck.splits}`);
  assert.ok(splitPlan(4 * 40 * 40, 70, 36).splits > 1); // the 1×1 test case's split path
});

Deno.test({
  name: "WebGPU Conv2DBackpropFilter (tiled GEMM) equals the cpu backend on DenseNet shapes",
  ignore: NO_WEBGPU != null,
  async fn() {
    const rng = new Rng(7);
    for (const c of CASES) {
      const info = tf.backend_util.computeConv2DInfo(c.x, c.filter, c.stride, 1, c.pad);
      const xv = randoms(tf.util.sizeFromShape(c.x), rng);
      const dyv = randoms(tf.util.sizeFromShape(info.outShape), rng);
      await tf.setBackend("cpu");
      const expected = await backpropFilter(c, xv, dyv);
      await useWebgpu();
      const got = await backpropFilter(c, xv, dyv);
      const m = info.batchSize * info.outHeight * info.outWidth;
      // float32 sums of M products of values in [-1, 1], in different orders.
      assertClose(got, expected, 1e-6 * m, c.what);
    }
  },
});

Deno.test({
  name: "WebGPU Conv2DBackpropInput (tfjs's tiled GEMM program, which we select) equals the cpu",
  ignore: NO_WEBGPU != null,
  async fn() {
    await useWebgpu();
    assert.equal(tf.env().getBool("WEBGPU_USE_NAIVE_CONV2D_TRANSPOSE"), false);
    const rng = new Rng(9);
    for (const c of CASES) {
      const info = tf.backend_util.computeConv2DInfo(c.x, c.filter, c.stride, 1, c.pad);
      const dyv = randoms(tf.util.sizeFromShape(info.outShape), rng);
      const wv = randoms(tf.util.sizeFromShape(c.filter), rng);
      await tf.setBackend("cpu");
      const expected = await backpropInput(c, dyv, wv);
      await useWebgpu();
      const got = await backpropInput(c, dyv, wv);
      // float32 sums of KH·KW·Co products of values in [-1, 1], in different orders.
      assertClose(got, expected, 1e-6 * c.filter[0] * c.filter[1] * c.filter[3], c.what);
    }
  },
});

Deno.test({
  name:
    "WebGPU Conv2DBackpropFilter: GEMM + sum of splits, no leaks over 20 calls, tfjs's restorable",
  ignore: NO_WEBGPU != null,
  async fn() {
    await useWebgpu();
    const c = CASES[8];
    assert.ok(splitPlan(4 * 24 * 24, 72, 16).splits > 1); // this case exercises the split path
    const rng = new Rng(8);
    const info = tf.backend_util.computeConv2DInfo(c.x, c.filter, c.stride, 1, c.pad);
    const xv = randoms(tf.util.sizeFromShape(c.x), rng);
    const dyv = randoms(tf.util.sizeFromShape(info.outShape), rng);
    const ours = await backpropFilter(c, xv, dyv);
    const count = await countKernels(() => backpropFilter(c, xv, dyv));
    assert.equal(count.dispatches, 2); // the split GEMM and the ordered sum of its partials
    const before = [tf.memory().numTensors, usedGpuBuffers()];
    for (let i = 0; i < 20; i++) await backpropFilter(c, xv, dyv);
    assert.deepEqual([tf.memory().numTensors, usedGpuBuffers()], before);
    assert.ok(uninstallKernelTable(webgpuKernelTable()).includes("Conv2DBackpropFilter"));
    try {
      assertClose(await backpropFilter(c, xv, dyv), ours, 1e-6 * 2304, "tfjs's kernel");
    } finally {
      installKernelTable(webgpuKernelTable());
    }
  },
});
