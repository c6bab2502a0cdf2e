/**
 * This project's WebGPU kernels against what tfjs does without them, on DenseNet-121's shapes:
 * `Conv2DBackpropFilter` (ours: tiled split-K GEMM; tfjs 4.22: one thread per weight; for 1×1
 * filters also tfjs's matrix product xᵀ·dy),
 * `Conv2DBackpropInput` (tfjs's tiled GEMM program, which we select, against its default naive
 * one) and the fused BatchNorm+ReLU forward/backward (ours: three dispatches each; tfjs: the op
 * composition the model uses without them). Milliseconds per call (mean of `--reps` after a warm-up call), and
 * under `agreement` each kernel's largest difference from what tfjs computes without it (relative
 * to the largest value; float32 rounding is ~1e-6), including the evaluation-mode BatchNorm of a
 * feature list (`BatchNormReluConcatInference`, against concat + batchNorm + ReLU): on a real GPU
 * what lavapipe cannot show, such as a driver's own float handling. One JSON object on stdout.
 *
 *     deno run -A bench/webgpu_kernels.ts [--batch 16] [--image_size 224] [--reps 5]
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { initBackend } from "../lib/backends/backend.ts";
import { webgpuKernelTable } from "../lib/backends/webgpu/kernels.ts";
import { installKernelTable, uninstallKernelTable } from "../lib/backends/kernel_registry.ts";
import {
  BN_CONCAT_INFERENCE_KERNEL,
  BN_GRAD_KERNEL,
  BN_TRAIN_KERNEL,
} from "../lib/backends/seam.ts";
import { parseFlags } from "../lib/util/cli.ts";
import { runMain } from "../lib/util/errors.ts";

const SPECS = {
  batch: { kind: "int", default: 16, min: 1, help: "images per batch" },
  image_size: { kind: "int", default: 224, min: 32, help: "side of the network's input" },
  reps: { kind: "int", default: 5, min: 1, help: "timed calls per measurement" },
} as const;

type Pad = "valid" | "same" | [
  [number, number],
  [number, number],
  [number, number],
  [number, number],
];

/** Mean ms of `reps` calls of `f` (each read back, so the GPU work is included). */
async function time(f: () => tf.Tensor[], reps: number): Promise<number> {
  const once = async () => {
    const out = f();
    await Promise.all(out.map((t) => t.data()));
    tf.dispose(out);
  };
  await once();
  const start = performance.now();
  for (let i = 0; i < reps; i++) await once();
  return (performance.now() - start) / reps;
}

/** max |a − b| / max |b| over the outputs of two runs of the same computation. */
async function disagreement(ours: () => tf.Tensor[], theirs: () => tf.Tensor[]): Promise<number> {
  const read = async (f: () => tf.Tensor[]) => {
    const out = f();
    const data = await Promise.all(out.map((t) => t.data()));
    tf.dispose(out);
    return data;
  };
  const [a, b] = [await read(ours), await read(theirs)];
  let diff = 0, scale = 0;
  b.forEach((bt, i) => {
    for (let k = 0; k < bt.length; k++) {
      diff = Math.max(diff, Math.abs(a[i][k] - bt[k]));
      scale = Math.max(scale, Math.abs(bt[k]));
    }
  });
  return +(diff / (scale || 1)).toExponential(2);
}

/** BN(batch statistics)+ReLU forward and its backward from tfjs ops (the contract's meaning). */
function composedBnRelu(x: tf.Tensor4D, dy: tf.Tensor4D, gamma: tf.Tensor1D, beta: tf.Tensor1D) {
  const fwd = () =>
    tf.tidy(() => {
      const { mean, variance } = tf.moments(x, [0, 1, 2]);
      const m = mean as tf.Tensor1D, v = variance as tf.Tensor1D;
      return [tf.relu(tf.batchNorm4d(x, m, v, beta, gamma, 1e-5)), mean, variance];
    });
  const bwd = () =>
    tf.tidy(() => {
      const m = x.shape[0] * x.shape[1] * x.shape[2];
      const { mean, variance } = tf.moments(x, [0, 1, 2]);
      const rstd = tf.rsqrt(tf.add(variance, 1e-5));
      const xhat = tf.mul(tf.sub(x, mean), rstd);
      const g = tf.mul(dy, tf.step(tf.add(tf.mul(xhat, gamma), beta)));
      const dbeta = tf.sum(g, [0, 1, 2]);
      const dgamma = tf.sum(tf.mul(g, xhat), [0, 1, 2]);
      const dx = tf.mul(
        tf.mul(gamma, tf.div(rstd, m)),
        tf.sub(tf.sub(tf.mul(g, m), dbeta), tf.mul(xhat, dgamma)),
      );
      return [dx, dgamma, dbeta];
    });
  return { fwd, bwd };
}

async function main(args: string[]) {
  const flags = parseFlags(
    args,
    SPECS,
    "deno run -A bench/webgpu_kernels.ts [options]",
    "Times this project's WebGPU kernels against tfjs's on DenseNet-121 shapes.",
  );
  const info = await initBackend("webgpu", { log: (l) => console.error(l) });
  const b = flags.batch, s = flags.image_size / 224;
  const side = (n: number) => Math.max(1, Math.round(n * s));
  const convs: [string, number[], number[], number, Pad][] = [
    ["stem 7×7/2", [b, side(224), side(224), 3], [7, 7, 3, 64], 2, [[0, 0], [3, 3], [3, 3], [
      0,
      0,
    ]]],
    ["1×1 256→128 @56", [b, side(56), side(56), 256], [1, 1, 256, 128], 1, "valid"],
    ["3×3 128→32 @28", [b, side(28), side(28), 128], [3, 3, 128, 32], 1, "same"],
    ["1×1 1024→128 @7", [b, side(7), side(7), 1024], [1, 1, 1024, 128], 1, "valid"],
  ];
  const result: Record<string, unknown> = {
    device: info.device,
    batch: b,
    image_size: flags.image_size,
  };
  const conv: Record<string, unknown> = {};
  const input: Record<string, unknown> = {};
  const agreement: Record<string, number> = {};
  /** Ours against tfjs's kernels for the same call (ours registered again afterwards). */
  const againstTfjs = async (run: () => tf.Tensor[]) => {
    const ours = () => run();
    const theirs = () => {
      uninstallKernelTable(webgpuKernelTable());
      try {
        return run();
      } finally {
        installKernelTable(webgpuKernelTable());
      }
    };
    return await disagreement(ours, theirs);
  };
  for (const [what, xs, fs, stride, pad] of convs) {
    const x = tf.randomNormal(xs, 0, 1, "float32", 1);
    const ci = tf.backend_util.computeConv2DInfo(xs as never, fs as never, stride, 1, pad);
    const dy = tf.randomNormal(ci.outShape, 0, 1, "float32", 2);
    const run = () => [
      tf.engine().runKernel("Conv2DBackpropFilter", { x, dy }, {
        strides: stride,
        pad,
        dataFormat: "NHWC",
        filterShape: fs,
      } as unknown as tf.NamedAttrMap) as tf.Tensor,
    ];
    agreement[`Conv2DBackpropFilter ${what}`] = await againstTfjs(run);
    const ours = await time(run, flags.reps);
    uninstallKernelTable(webgpuKernelTable());
    const theirs = await time(run, flags.reps);
    installKernelTable(webgpuKernelTable());
    // A 1×1 filter gradient is also xᵀ·dy: tfjs's matrix product (its program choice for this
    // shape) is the alternative to ours, which this project used before.
    const matMul = fs[0] === 1 && fs[1] === 1 && stride === 1
      ? await time(() => [
        tf.tidy(() => {
          const m = xs[0] * xs[1] * xs[2];
          return tf.matMul(tf.reshape(x, [m, fs[2]]), tf.reshape(dy, [m, fs[3]]), true, false);
        }),
      ], flags.reps)
      : null;
    conv[what] = {
      ours_ms: +ours.toFixed(2),
      tfjs_ms: +theirs.toFixed(2),
      speedup: +(theirs / ours).toFixed(1),
      ...(matMul != null ? { tfjs_matmul_ms: +matMul.toFixed(2) } : {}),
    };
    console.error(
      `Conv2DBackpropFilter ${what}: ours ${ours.toFixed(2)} ms, tfjs ${theirs.toFixed(2)} ms` +
        (matMul != null ? `, tfjs matMul(xᵀ, dy) ${matMul.toFixed(2)} ms` : ""),
    );
    if (stride === 1) {
      // The input gradient: tfjs's tiled GEMM program (selected with our kernels) vs its naive one.
      const w = tf.randomNormal(fs, 0, 1, "float32", 3);
      const runInput = () => [
        tf.engine().runKernel("Conv2DBackpropInput", { dy, filter: w }, {
          strides: stride,
          pad,
          dataFormat: "NHWC",
          inputShape: xs,
        } as unknown as tf.NamedAttrMap) as tf.Tensor,
      ];
      const gemm = await time(runInput, flags.reps);
      uninstallKernelTable(webgpuKernelTable());
      const naive = await time(runInput, flags.reps);
      installKernelTable(webgpuKernelTable());
      input[what] = {
        gemm_ms: +gemm.toFixed(2),
        naive_ms: +naive.toFixed(2),
        speedup: +(naive / gemm).toFixed(1),
      };
      console.error(
        `Conv2DBackpropInput ${what}: GEMM ${gemm.toFixed(2)} ms, naive ${naive.toFixed(2)} ms`,
      );
      w.dispose();
    }
    tf.dispose([x, dy]);
  }
  result.conv2d_backprop_filter = conv;
  result.conv2d_backprop_input = input;
  const bn: Record<string, unknown> = {};
  for (
    const [what, shape] of [["@112 ×64", [b, side(112), side(112), 64]], ["@56 ×256", [
      b,
      side(56),
      side(56),
      256,
    ]]] as const
  ) {
    const x = tf.randomNormal([...shape], 0, 1, "float32", 3) as tf.Tensor4D;
    const dy = tf.randomNormal([...shape], 0, 1, "float32", 4) as tf.Tensor4D;
    const gamma = tf.randomUniform([shape[3]], 0.5, 1.5, "float32", 5) as tf.Tensor1D;
    const beta = tf.randomUniform([shape[3]], -0.5, 0.5, "float32", 6) as tf.Tensor1D;
    const attrs = { epsilon: 1e-5, relu: true } as unknown as tf.NamedAttrMap;
    const fused = () => {
      const [y, mean, variance] = tf.engine().runKernel(
        BN_TRAIN_KERNEL,
        { x, gamma, beta },
        attrs,
      ) as tf.Tensor[];
      const grads = tf.engine().runKernel(BN_GRAD_KERNEL, {
        dy,
        x,
        gamma,
        beta,
        mean,
        variance,
      }, attrs) as tf.Tensor[];
      return [y, mean, variance, ...grads];
    };
    const composed = composedBnRelu(x, dy, gamma, beta);
    agreement[`BatchNorm+ReLU fwd+bwd ${what}`] = await disagreement(
      () => fused().filter((_, i) => i === 0 || i === 3),
      () => [composed.fwd()[0], composed.bwd()[0]],
    );
    const ours = await time(fused, flags.reps);
    const theirs = await time(() => [...composed.fwd(), ...composed.bwd()], flags.reps);
    bn[what] = {
      ours_ms: +ours.toFixed(2),
      tfjs_ops_ms: +theirs.toFixed(2),
      speedup: +(theirs / ours).toFixed(1),
    };
    console.error(
      `BatchNorm+ReLU fwd+bwd ${what}: ours ${ours.toFixed(2)} ms, tfjs ops ${
        theirs.toFixed(2)
      } ms`,
    );
    tf.dispose([x, dy, gamma, beta]);
  }
  result.batchnorm_relu_fwd_bwd = bn;
  {
    // A dense layer's input at 28² (block 2's last: 128 + 11·32 channels, 12 inputs).
    const shapes = [128, ...new Array(11).fill(32)].map((c) => [b, side(28), side(28), c]);
    const xs = shapes.map((sh, i) => tf.randomNormal(sh, 0.3, 1, "float32", 10 + i));
    const c = 128 + 11 * 32;
    const vec = (lo: number, hi: number, seed: number) =>
      tf.randomUniform([c], lo, hi, "float32", seed) as tf.Tensor1D;
    const [mean, variance, gamma, beta] = [
      vec(-0.5, 0.5, 7),
      vec(0.5, 2, 8),
      vec(0.5, 1.5, 9),
      vec(-0.5, 0.5, 10),
    ];
    const inputs: tf.NamedTensorMap = { mean, variance, gamma, beta };
    xs.forEach((x, i) => (inputs[`x${i}`] = x));
    const attrs = { epsilon: 1e-5, relu: true } as unknown as tf.NamedAttrMap;
    agreement["BatchNormReluConcatInference 12 inputs @28"] = await disagreement(
      () => [tf.engine().runKernel(BN_CONCAT_INFERENCE_KERNEL, inputs, attrs) as tf.Tensor],
      () => [
        tf.tidy(() =>
          tf.relu(
            tf.batchNorm4d(tf.concat(xs, 3) as tf.Tensor4D, mean, variance, beta, gamma, 1e-5),
          )
        ),
      ],
    );
    tf.dispose([...xs, mean, variance, gamma, beta]);
  }
  result.agreement = agreement;
  console.error(`agreement with tfjs (max relative difference): ${JSON.stringify(agreement)}`);
  console.log(JSON.stringify(result));
}

if (import.meta.main) await runMain(main);
