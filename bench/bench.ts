/**
 * DenseNet-121 throughput benchmark: training steps (forward + backward + Adam, BCE on the
 * sigmoid outputs; warm-up step excluded) and inference (eval-mode forward) on a tfjs backend,
 * with random weights and images; the data path (PNG decode + batching from the fixture shard,
 * and training augmentation); peak RSS; the tfjs kernels (and, on webgpu, GPU dispatches) of one
 * training step and one inference batch, counted with `tf.profile`; on webgpu the CPU's encoding
 * time per step and, with `--gpu_times`, GPU time by program. With `--compare-torch`, the same
 * DenseNet-121 work in Debian's PyTorch (`bench/torch_bench.py`: float32 NCHW as the original,
 * float32 channels_last, bfloat16 autocast + channels_last) at the same batch and thread count,
 * and ours (at `--precision`; `both`: f32, then bf16 in the same run) / each of them
 * (`bench/torch_compare.ts`).
 * Prints one JSON object on stdout; progress goes to stderr.
 *
 *     deno run --allow-read --allow-env --allow-ffi --allow-run --allow-sys bench/bench.ts \
 *       [--backend wasm] [--batch 16] [--image_size 224] [--steps 3] [--compare-torch] \
 *       [--threads N] [--memory_efficient on|off|auto|bottleneck|block|layer] [--tensor_memory]
 *       [--wasm_kernels ours|tfjs] [--model_only] [--gpu_times]
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import { fileURLToPath } from "node:url";
import { Adam } from "../lib/train/adam.ts";
import { BACKENDS, initBackend, type Precision, PRECISIONS } from "../lib/backends/backend.ts";
import { resolveMemoryEfficient } from "../lib/backends/memory_efficient.ts";
import { parseFlags } from "../lib/util/cli.ts";
import { batches } from "../lib/data/dataset.ts";
import { runMain, UserError } from "../lib/util/errors.ts";
import { ARCHITECTURES, createDenseNet, disposeModel, forward } from "../lib/model/densenet.ts";
import { trainingStepBytes } from "../lib/train/training_memory.ts";
import { Rng } from "../lib/util/rng.ts";
import { trainStep } from "../lib/train/training.ts";
import { wasmKernelTable } from "../lib/backends/wasm_kernels.ts";
import { uninstallKernelTable } from "../lib/backends/kernel_registry.ts";
import { readShard } from "../lib/data/webdataset.ts";
import { transformsTrainAugmented } from "../transforms/augmented_transforms.ts";
import { encodeSeconds, formatGpuTimes, gpuProgramTimes, type GpuTimes } from "./gpu_timing.ts";
import { comparisonLines, ratio, ratiosByVariant, type TorchResult } from "./torch_compare.ts";

const SPECS = {
  backend: { kind: "string", default: "wasm", choices: BACKENDS, help: "tfjs backend" },
  batch: { kind: "int", default: 16, min: 1, help: "images per training/inference batch" },
  image_size: { kind: "int", default: 224, min: 32, help: "side of the square images" },
  steps: { kind: "int", default: 3, min: 1, help: "timed steps (after one warm-up step)" },
  "compare-torch": {
    kind: "boolean",
    default: false,
    help: "also run bench/torch_bench.py with Debian's /usr/bin/python3 and print ratios",
  },
  threads: { kind: "int", default: 1, min: 1, help: "threads for the backend and for PyTorch" },
  precision: {
    kind: "string",
    default: "f32",
    choices: [...PRECISIONS, "both"],
    help: "the convolutions' arithmetic (train_model.ts's --precision; bf16: native backend); " +
      "both: f32, then bf16 in the same run (the top-level rates are f32's)",
  },
  memory_efficient: {
    kind: "string",
    default: "on",
    choices: ["on", "off", "auto"],
    help: "train_model.ts's --memory_efficient (auto as train_model.ts resolves it)",
  },
  arch: {
    kind: "string",
    default: "densenet121",
    choices: Object.keys(ARCHITECTURES),
    help: "network (train_model.ts's --arch), random weights",
  },
  tensor_memory: {
    kind: "boolean",
    default: false,
    help: "also report the profiled training step's peak live-tensor bytes (any backend)",
  },
  wasm_kernels: {
    kind: "string",
    default: "ours",
    choices: ["ours", "tfjs"],
    help:
      "wasm: this project's training kernels (lib/backends/wasm_kernels.ts) or tfjs's own (before/after)",
  },
  kernel_histogram: {
    kind: "boolean",
    default: false,
    help: "print the most frequent kernels of the profiled training step (what to fuse next)",
  },
  gpu_times: {
    kind: "boolean",
    default: false,
    help: "webgpu: also time one training step and one inference batch on the GPU by program " +
      "(timestamp queries) and report how long the CPU takes to encode a step",
  },
  model_only: {
    kind: "boolean",
    default: false,
    help: "only the model measurements, no data path (needs no sharp: bench/gpu_check.sh)",
  },
  shard: {
    kind: "string",
    default: fileURLToPath(
      new URL("../tests/fixtures/nih_subset/ChestXray14_val_002.tar", import.meta.url),
    ),
    metavar: "PATH",
    help: "WebDataset shard for the decode measurement",
  },
} as const;

/** Interpreter with torch 1.13 / torchvision (Debian's python3-torch). */
const PYTHON = "/usr/bin/python3";
/** Images per batch of the augmentation measurement, and their input side. */
const AUGMENT_BATCH = 16;
const AUGMENT_INPUT = 256;

/**
 * Samples the process RSS every 20 ms in a worker, whose event loop keeps running while the
 * main thread is busy in a long synchronous tfjs step (an interval on the main thread would
 * not fire then).
 */
class RssSampler {
  #worker: Worker;
  #url: string;
  constructor() {
    const code = `let peak = 0;
      const sample = () => { peak = Math.max(peak, Deno.memoryUsage().rss); };
      sample();
      setInterval(sample, 20);
      self.onmessage = () => { sample(); self.postMessage(peak); };`;
    this.#url = URL.createObjectURL(new Blob([code], { type: "application/javascript" }));
    this.#worker = new Worker(this.#url, { type: "module" });
  }

  /** Peak RSS seen so far, in bytes (includes a sample taken now). */
  peak(): Promise<number> {
    return new Promise((resolve) => {
      this.#worker.onmessage = (e: MessageEvent<number>) =>
        resolve(Math.max(e.data, Deno.memoryUsage().rss));
      this.#worker.postMessage(null);
    });
  }

  stop(): void {
    this.#worker.terminate();
    URL.revokeObjectURL(this.#url);
  }
}

function log(line: string): void {
  console.error(line);
}

/**
 * CPU seconds (user + system) this process has used, from /proc (Linux; Deno reads /proc/self
 * only with --allow-all, so through `cat`); null where unavailable. On a machine shared with
 * other work, images per CPU-second estimate what an idle machine would give a 1-thread run.
 */
function cpuSeconds(): number | null {
  try {
    const out = new Deno.Command("cat", { args: [`/proc/${Deno.pid}/stat`] }).outputSync();
    if (!out.success) return null;
    const fields = new TextDecoder().decode(out.stdout).split(") ")[1].split(" ");
    return (Number(fields[11]) + Number(fields[12])) / 100; // USER_HZ is 100 on Linux
  } catch {
    return null;
  }
}

/** Wall and CPU seconds taken by `f` (CPU null where unavailable). */
async function seconds(
  f: () => unknown | Promise<unknown>,
): Promise<{ wall: number; cpu: number | null }> {
  const cpu0 = cpuSeconds();
  const start = performance.now();
  await f();
  const wall = (performance.now() - start) / 1000;
  const cpu1 = cpuSeconds();
  return { wall, cpu: cpu0 == null || cpu1 == null ? null : cpu1 - cpu0 };
}

/** Images/s of the model measurements; `*Cpu` per CPU-second of this process. */
interface ModelRates {
  train: number;
  trainCpu: number | null;
  trainStepS: number[];
  infer: number;
  inferCpu: number | null;
  /** Peak live-tensor MB of one profiled training step above the bytes live before it. */
  stepPeakTensorMb?: number;
  /** tfjs kernels (engine-level, as `tf.profile` lists them) of one training step. */
  trainKernels: number;
  /** GPU compute dispatches of one training step (webgpu only). */
  trainDispatches?: number;
  /** tfjs kernels of one inference batch. */
  inferKernels: number;
  /** GPU compute dispatches of one inference batch (webgpu only). */
  inferDispatches?: number;
  /** Seconds the CPU took to issue each timed training step (webgpu only). */
  trainEncodeS?: number[];
  /** GPU time by program of one training step and one inference batch (`--gpu_times`). */
  trainGpu?: GpuTimes | null;
  inferGpu?: GpuTimes | null;
}

/** What `profileKernels` counted. */
interface KernelProfile {
  kernels: number;
  /** Compute-shader dispatches recorded (webgpu only; one kernel may issue several). */
  dispatches?: number;
  /** Peak live-tensor MB above the bytes live before. */
  peakMb: number;
}

/**
 * Counts the tfjs kernels `f` runs (`tf.profile`; kernels a kernel runs internally through the
 * backend are not counted) and, on webgpu, the compute dispatches, by counting the backend's
 * program submissions while `f` runs.
 */
async function profileKernels(
  f: () => Promise<unknown>,
  histogram = false,
): Promise<KernelProfile> {
  // Profiling reads every kernel output back to check it unless told not to: a copy each.
  const check = tf.env().getBool("CHECK_COMPUTATION_FOR_ERRORS");
  tf.env().set("CHECK_COMPUTATION_FOR_ERRORS", false);
  const backend = tf.backend() as unknown as {
    recordAndSubmit?: (...a: unknown[]) => unknown;
    supportTimestampQuery?: boolean;
    hasTimestampQueryWarned?: boolean;
  };
  const record = tf.getBackend() === "webgpu" ? backend.recordAndSubmit : undefined;
  // Profiling times each kernel; with timestamp queries webgpu then submits and maps a buffer
  // per dispatch. The counts need no timings, so the queries are off while counting.
  const timestamps = backend.supportTimestampQuery;
  const warned = backend.hasTimestampQueryWarned;
  let dispatches = 0;
  if (record) {
    backend.supportTimestampQuery = false;
    backend.hasTimestampQueryWarned = true;
    backend.recordAndSubmit = (...a: unknown[]) => {
      dispatches++;
      return record.apply(backend, a);
    };
  }
  try {
    const before = tf.memory().numBytes;
    const profile = await tf.profile(async () => {
      await f();
    });
    if (histogram) {
      const counts = new Map<string, number>();
      for (const k of profile.kernels) counts.set(k.name, (counts.get(k.name) ?? 0) + 1);
      const top = [...counts].sort((a, b) => b[1] - a[1]).slice(0, 15);
      console.error(`kernels by name: ${top.map(([n, c]) => `${n} ${c}`).join(", ")}`);
    }
    return {
      kernels: profile.kernels.length,
      dispatches: record ? dispatches : undefined,
      peakMb: (profile.peakBytes - before) / 2 ** 20,
    };
  } finally {
    if (record) {
      delete backend.recordAndSubmit; // back to the prototype's
      backend.supportTimestampQuery = timestamps;
      backend.hasTimestampQueryWarned = warned;
    }
    tf.env().set("CHECK_COMPUTATION_FOR_ERRORS", check);
  }
}

function accumulate(
  total: { wall: number; cpu: number | null },
  t: { wall: number; cpu: number | null },
  walls?: number[],
): void {
  total.wall += t.wall;
  total.cpu = total.cpu == null || t.cpu == null ? null : total.cpu + t.cpu;
  walls?.push(t.wall);
}

/** Training and inference images/s of DenseNet-121 with random weights and inputs. */
async function benchModel(
  batch: number,
  size: number,
  steps: number,
  memoryEfficient: boolean,
  arch: string,
  tensorMemory = false,
  kernelHistogram = false,
  gpuTimes = false,
): Promise<ModelRates> {
  const model = createDenseNet(ARCHITECTURES[arch].config, { seed: 0 });
  const adam = new Adam({ lr: 1e-4 });
  const rng = new Rng(1);
  const x = tf.tidy(() => tf.randomNormal([batch, size, size, 3], 0, 1, "float32", 1));
  const y = tf.tensor2d(
    Float32Array.from({ length: batch * 14 }, () => (rng.next() < 0.3 ? 1 : 0)),
    [batch, 14],
  );
  try {
    const train = { wall: 0, cpu: 0 as number | null };
    const trainStepS: number[] = [];
    const webgpu = tf.getBackend() === "webgpu";
    const trainEncodeS: number[] = [];
    const opts = { memoryEfficient };
    const step = () => trainStep(model, adam, x as tf.Tensor4D, y, opts);
    for (let s = 0; s <= steps; s++) {
      let encode = 0;
      const t = await seconds(async () => (encode = (await encodeSeconds(step)).encode));
      log(
        `train step ${s === 0 ? "(warm-up)" : s}: ${t.wall.toFixed(2)} s (cpu ${
          t.cpu?.toFixed(2)
        } s${webgpu ? `, encoding ${encode.toFixed(2)} s` : ""})`,
      );
      if (s > 0) {
        accumulate(train, t, trainStepS);
        trainEncodeS.push(encode);
      }
    }
    const trainProfile = await profileKernels(
      () => trainStep(model, adam, x as tf.Tensor4D, y, { memoryEfficient }),
      kernelHistogram,
    );
    log(
      `profiled train step: ${trainProfile.kernels} kernels` +
        (trainProfile.dispatches != null ? `, ${trainProfile.dispatches} dispatches` : "") +
        `, peak live tensors ${trainProfile.peakMb.toFixed(0)} MB above before`,
    );
    const infer1 = async () => {
      const out = forward(model, x as tf.Tensor4D, { training: false });
      await out.data();
      out.dispose();
    };
    const infer = { wall: 0, cpu: 0 as number | null };
    for (let s = 0; s <= steps; s++) {
      const t = await seconds(infer1);
      log(
        `inference ${s === 0 ? "(warm-up)" : s}: ${t.wall.toFixed(2)} s (cpu ${
          t.cpu?.toFixed(2)
        } s)`,
      );
      if (s > 0) accumulate(infer, t);
    }
    const inferProfile = await profileKernels(infer1);
    log(
      `profiled inference batch: ${inferProfile.kernels} kernels` +
        (inferProfile.dispatches != null ? `, ${inferProfile.dispatches} dispatches` : ""),
    );
    // Last, and allowed to fail: the rates and counts above are the run's main results.
    let trainGpu: GpuTimes | null = null, inferGpu: GpuTimes | null = null;
    if (gpuTimes && webgpu) {
      try {
        let pending: Promise<unknown> | null = null;
        trainGpu = await gpuProgramTimes(() => void (pending = step()), () => pending!);
        logGpuTimes("training step", trainGpu);
        let out: tf.Tensor | null = null;
        inferGpu = await gpuProgramTimes(
          () => void (out = forward(model, x as tf.Tensor4D, { training: false })),
          async () => {
            await out!.data();
            out!.dispose();
          },
        );
        logGpuTimes("inference batch", inferGpu);
      } catch (err) {
        log(`GPU times failed: ${(err as Error).message}`);
      }
    }
    const images = batch * steps;
    return {
      train: images / train.wall,
      trainCpu: train.cpu == null ? null : images / train.cpu,
      trainStepS,
      infer: images / infer.wall,
      inferCpu: infer.cpu == null ? null : images / infer.cpu,
      stepPeakTensorMb: tensorMemory ? trainProfile.peakMb : undefined,
      trainKernels: trainProfile.kernels,
      trainDispatches: trainProfile.dispatches,
      inferKernels: inferProfile.kernels,
      inferDispatches: inferProfile.dispatches,
      ...(webgpu ? { trainEncodeS } : {}),
      ...(gpuTimes && webgpu ? { trainGpu, inferGpu } : {}),
    };
  } finally {
    tf.dispose([x, y]);
    adam.dispose();
    disposeModel(model);
  }
}

/** PNG decode + batching images/s over the whole shard (second pass; the first warms up). */
async function benchDecode(shard: string, batch: number): Promise<number> {
  try {
    await Deno.stat(shard);
  } catch {
    throw new UserError(`shard ${shard} not found: pass --shard PATH to a WebDataset .tar`);
  }
  let rate = 0;
  for (let pass = 0; pass < 2; pass++) {
    let images = 0;
    const start = performance.now();
    for await (const b of batches(readShard(shard), { batchSize: batch, workers: 4 })) {
      images += b.n;
    }
    rate = images / ((performance.now() - start) / 1000);
  }
  return rate;
}

/**
 * `transformsTrainAugmented` images/s at batch 16 from 256×256 inputs (warm-up excluded). The
 * result is read asynchronously: WebGPU under Deno has no synchronous read.
 */
async function benchAugment(): Promise<number> {
  const images = tf.tidy(() =>
    tf.randomUniform([AUGMENT_BATCH, AUGMENT_INPUT, AUGMENT_INPUT, 3], 0, 1, "float32", 2)
  ) as tf.Tensor4D;
  const rng = new Rng(3);
  const once = async () => {
    const out = transformsTrainAugmented(images, rng);
    await out.data();
    out.dispose();
  };
  try {
    await once();
    let n = 0;
    const start = performance.now();
    while (n < 3 || performance.now() - start < 2000) {
      await once();
      n++;
    }
    return (n * AUGMENT_BATCH) / ((performance.now() - start) / 1000);
  } finally {
    images.dispose();
  }
}

/** Runs the PyTorch side; null (with the reason logged) when torch is not importable. */
async function benchTorch(
  batch: number,
  size: number,
  steps: number,
  threads: number,
): Promise<TorchResult | { skipped: string }> {
  let probe: Deno.CommandOutput;
  try {
    probe = await new Deno.Command(PYTHON, { args: ["-c", "import torch, torchvision"] }).output();
  } catch (err) {
    const why = `${PYTHON} cannot run (${(err as Error).message.split("\n")[0]})`;
    log(`torch comparison skipped: ${why}`);
    return { skipped: why };
  }
  if (!probe.success) {
    const why = `${PYTHON} -c 'import torch, torchvision' failed`;
    log(`torch comparison skipped: ${why}`);
    return { skipped: why };
  }
  const script = fileURLToPath(new URL("./torch_bench.py", import.meta.url));
  const args = [
    script,
    ...["--batch", `${batch}`, "--image_size", `${size}`, "--steps", `${steps}`],
    ...["--threads", `${threads}`],
  ];
  log(`torch: ${PYTHON} ${args.join(" ")}`);
  const out = await new Deno.Command(PYTHON, { args, stderr: "inherit" }).output();
  if (!out.success) throw new Error(`bench/torch_bench.py failed (exit ${out.code})`);
  return JSON.parse(new TextDecoder().decode(out.stdout).trim().split("\n").pop()!);
}

/** The 1-minute load average, to judge measurements on a shared machine (needs --allow-sys). */
function loadAverage(): number | null {
  try {
    return Deno.loadavg()[0];
  } catch {
    return null;
  }
}

const round = (v: number, digits = 3) => Number(v.toFixed(digits));

function logGpuTimes(what: string, t: GpuTimes | null): void {
  if (t == null) {
    log(`GPU times of a ${what}: unavailable (the adapter has no timestamp-query)`);
    return;
  }
  log(`GPU time of a ${what}: ${t.totalMs.toFixed(1)} ms, by program:`);
  for (const line of formatGpuTimes(t)) log(line);
}

/** The JSON form of GPU times: total and the programs over 1 % of it. */
function gpuTimesJson(t: GpuTimes | null | undefined) {
  if (t == null) return null;
  return {
    total_ms: round(t.totalMs, 1),
    programs: t.programs.filter((p) => p.ms >= 0.01 * t.totalMs).map((p) => ({
      program: p.program,
      dispatches: p.dispatches,
      ms: round(p.ms, 2),
    })),
  };
}

async function main(args: string[]) {
  const flags = parseFlags(
    args,
    SPECS,
    "deno run --allow-read --allow-env --allow-ffi --allow-run --allow-sys bench/bench.ts " +
      "[options]",
    "Measures DenseNet-121 training/inference images/s, the data path and peak RSS; " +
      "optionally beside PyTorch.",
  );
  const sampler = new RssSampler();
  try {
    const precisions = (flags.precision === "both" ? PRECISIONS : [flags.precision]) as Precision[];
    const start = (precision: Precision) =>
      initBackend(flags.backend, { threads: flags.threads, log, precision });
    const info = await start(precisions[0]);
    const threads = info.threads ?? flags.threads;
    if (info.name === "wasm" && flags.wasm_kernels === "tfjs") {
      log(`wasm: tfjs's own ${uninstallKernelTable(wasmKernelTable()).join(", ")} kernels`);
    }
    let memoryEfficient = flags.memory_efficient === "on";
    if (flags.memory_efficient === "auto") {
      const config = ARCHITECTURES[flags.arch].config;
      const choice = await resolveMemoryEfficient("auto", info.name, {
        bytes: trainingStepBytes(config, flags.batch, flags.image_size, false, info.name),
        batch: flags.batch,
        imageSize: flags.image_size,
      });
      log(`note: ${choice.note}`);
      memoryEfficient = choice.on;
    }
    const loadBefore = loadAverage();
    const measure = () =>
      benchModel(
        flags.batch,
        flags.image_size,
        flags.steps,
        memoryEfficient,
        flags.arch,
        flags.tensor_memory,
        flags.kernel_histogram,
        flags.gpu_times,
      );
    let model: ModelRates;
    // --precision both: the same model bench again, the backend restarted at the next precision.
    const more: { precision: Precision; model: ModelRates }[] = [];
    try {
      model = await measure();
      for (const precision of precisions.slice(1)) {
        await start(precision);
        more.push({ precision, model: await measure() });
      }
    } catch (err) {
      // Emscripten aborts when the 4 GB wasm heap is exhausted; the backend is unusable after.
      if (info.name === "wasm" && /Abort|memory/i.test((err as Error).message)) {
        throw new UserError(
          `DenseNet-121 at batch ${flags.batch}, ${flags.image_size}² ran out of the 4 GB wasm ` +
            `heap: use a smaller --batch (16 fits at 224 with --memory_efficient on, 32 does not)`,
        );
      }
      throw err;
    }
    const peakRss = await sampler.peak();
    if (!flags.model_only) log("measuring the data path");
    const decode = flags.model_only ? null : await benchDecode(flags.shard, flags.batch);
    const augment = flags.model_only ? null : await benchAugment();
    const result: Record<string, unknown> = {
      backend: info.name,
      device: info.device,
      precision: info.precision,
      threads,
      image_size: flags.image_size,
      batch: flags.batch,
      memory_efficient: memoryEfficient,
      ...(info.name === "wasm" ? { wasm_kernels: flags.wasm_kernels } : {}),
      train_images_per_s: round(model.train),
      train_step_s: model.trainStepS.map((s) => round(s, 2)),
      infer_images_per_s: round(model.infer),
      train_images_per_cpu_s: model.trainCpu == null ? null : round(model.trainCpu),
      infer_images_per_cpu_s: model.inferCpu == null ? null : round(model.inferCpu),
      decode_images_per_s: decode == null ? null : round(decode, 1),
      augment_images_per_s: augment == null ? null : round(augment, 1),
      peak_rss_mb: Math.round(peakRss / 2 ** 20),
      kernels_per_train_step: model.trainKernels,
      kernels_per_inference_batch: model.inferKernels,
      ...(model.trainDispatches != null
        ? {
          dispatches_per_train_step: model.trainDispatches,
          dispatches_per_inference_batch: model.inferDispatches,
        }
        : {}),
      ...(model.trainEncodeS != null
        ? { train_encode_s: model.trainEncodeS.map((s) => round(s, 3)) }
        : {}),
      ...(model.trainGpu !== undefined
        ? {
          gpu_train_step: gpuTimesJson(model.trainGpu),
          gpu_inference_batch: gpuTimesJson(model.inferGpu),
        }
        : {}),
      ...(model.stepPeakTensorMb != null
        ? { step_peak_tensor_mb: Math.round(model.stepPeakTensorMb) }
        : {}),
      load_average: loadBefore,
    };
    if (more.length > 0) {
      const rates = (m: ModelRates) => ({
        train_images_per_s: round(m.train),
        train_step_s: m.trainStepS.map((s) => round(s, 2)),
        infer_images_per_s: round(m.infer),
        train_images_per_cpu_s: m.trainCpu == null ? null : round(m.trainCpu),
        infer_images_per_cpu_s: m.inferCpu == null ? null : round(m.inferCpu),
      });
      result.by_precision = Object.fromEntries([
        [info.precision, rates(model)],
        ...more.map((m) => [m.precision, rates(m.model)]),
      ]);
    }
    if (flags["compare-torch"]) {
      const torch = await benchTorch(flags.batch, flags.image_size, flags.steps, threads);
      result.torch = torch;
      if ("train_images_per_s" in torch) {
        // `ratio`: against float32 NCHW, the original tool's (as before the variants).
        result.ratio = ratio(model, torch);
        result.ratio_by_variant = ratiosByVariant(model, torch);
        for (const line of comparisonLines(`${info.name} ${info.precision}`, model, torch)) {
          log(line);
        }
        if (more.length > 0) {
          result.ratio_by_precision = Object.fromEntries([
            [info.precision, result.ratio_by_variant],
            ...more.map((m) => [m.precision, ratiosByVariant(m.model, torch)]),
          ]);
          for (const m of more) {
            for (const line of comparisonLines(`${info.name} ${m.precision}`, m.model, torch)) {
              log(line);
            }
          }
        }
      }
    }
    console.log(JSON.stringify(result));
  } finally {
    sampler.stop();
  }
}

if (import.meta.main) await runMain(main);
