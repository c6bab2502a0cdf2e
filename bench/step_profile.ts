/**
 * Where a DenseNet-121 training step and an inference batch spend their time on the native
 * backend (issue #21: when a goal is out of reach, which part limits it and by how much):
 *   - the convolutions by direction (forward, backward-data, backward-weights), the bf16
 *     rounding (`convertBf16`) and every other oneDNN call, timed by wrapping the methods of
 *     the OneDnn instance for the profile only (bench/onednn_calls.ts): ms, calls, and GFLOP/s
 *     of the convolutions against the same convolutions timed on their own, benchdnn-style
 *     (bench/conv_standalone.ts);
 *   - the BatchNorm seam kernels (and AdamStep) with the bytes they must move and the GB/s they
 *     reach, and every other tfjs kernel by name (the optimizer's apart), less the oneDNN calls
 *     and the kernels inside it (`tf.profile`'s kernelTimeMs, wall time on wasm; nesting from
 *     bench/kernel_frames.ts; bench/step_breakdown.ts);
 *   - the remainder: the step's wall time less all of those, so the parts add up;
 *   - the machine's memory bandwidth, measured in the same run on the same thread count
 *     (bench/memory_bandwidth.ts), to set the BatchNorm GB/s against, and the headroom: what
 *     the convolutions would save at their standalone speed, the BatchNorm kernels at the read
 *     bandwidth;
 *   - with `--compare-torch`, PyTorch 1.13's step (bf16 autocast + channels_last, and float32
 *     channels_last) by the same categories (bench/torch_step_profile.py, torch.profiler).
 * Profiled runs come after a warm-up run; an unprofiled run is timed too, to show what
 * profiling costs. Timings move with the machine's load: the tables state it. A readable table goes to stderr, one JSON object to stdout.
 *
 *     deno run --allow-read --allow-env --allow-ffi --allow-run=/usr/bin/python3 --allow-sys bench/step_profile.ts \
 *       [--precision f32|bf16] [--batch 16] [--image_size 224] [--threads 2] [--steps 2] \
 *       [--compare-torch]
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import { fileURLToPath } from "node:url";
import { initBackend, type Precision, PRECISIONS } from "../lib/backends/backend.ts";
import { openOneDnn } from "../lib/backends/native/native_kernels.ts";
import type { OneDnn } from "../lib/backends/native/onednn.ts";
import { ARCHITECTURES, createDenseNet, disposeModel, forward } from "../lib/model/densenet.ts";
import { Adam } from "../lib/train/adam.ts";
import { trainStep } from "../lib/train/training.ts";
import { parseFlags } from "../lib/util/cli.ts";
import { runMain, UserError } from "../lib/util/errors.ts";
import { Rng } from "../lib/util/rng.ts";
import {
  ADAM_STEP,
  BN_CONCAT_GRAD_KERNEL,
  BN_CONCAT_INFERENCE_KERNEL,
  BN_CONCAT_TRAIN_KERNEL,
  BN_GRAD_KERNEL,
  BN_INFERENCE_KERNEL,
  BN_TRAIN_KERNEL,
} from "../lib/backends/seam.ts";
import { type OneDnnCall, type OneDnnMethod, recordOneDnnCalls } from "./onednn_calls.ts";
import {
  type Breakdown,
  breakdown,
  meanBreakdown,
  MEMORY_KERNELS,
  type ProfiledKernel,
} from "./step_breakdown.ts";
import { CONV_DIRECTIONS, type ConvTiming, timeConvsStandalone } from "./conv_standalone.ts";
import { type BandwidthFigure, measureBandwidth } from "./memory_bandwidth.ts";
import { trackKernels } from "./kernel_frames.ts";

const SPECS = {
  precision: {
    kind: "string",
    default: "f32",
    choices: PRECISIONS,
    help: "the convolutions' arithmetic (train_model.ts's --precision)",
  },
  batch: { kind: "int", default: 16, min: 1, help: "images per batch" },
  image_size: { kind: "int", default: 224, min: 32, help: "side of the square images" },
  threads: { kind: "int", default: 2, min: 1, help: "threads (wasm, oneDNN, PyTorch)" },
  steps: {
    kind: "int",
    default: 2,
    min: 1,
    help:
      "profiled training steps and inference batches (each after a warm-up and an unprofiled one)",
  },
  arch: {
    kind: "string",
    default: "densenet121",
    choices: Object.keys(ARCHITECTURES),
    help: "network, random weights",
  },
  memory_efficient: {
    kind: "string",
    default: "on",
    choices: ["on", "off"],
    help: "train_model.ts's --memory_efficient",
  },
  standalone_reps: {
    kind: "int",
    default: 3,
    min: 0,
    help: "time each distinct convolution on its own, best of this many (0: skip)",
  },
  bandwidth_mb: {
    kind: "int",
    default: 256,
    min: 0,
    help: "size of the memory bandwidth measurement's buffer (0: skip)",
  },
  "compare-torch": {
    kind: "boolean",
    default: false,
    help: "also profile PyTorch 1.13's step (bench/torch_step_profile.py, /usr/bin/python3)",
  },
} as const;

const PYTHON = "/usr/bin/python3";
const log = (line: string) => console.error(line);

/** The categories a step is compared by, ours and PyTorch's (torch_step_profile.py's). */
const CATEGORIES = [
  "conv forward",
  "conv backward",
  "casts / copy_",
  "BatchNorm forward",
  "BatchNorm backward",
  "concat / slice copies",
  "pooling",
  "ReLU",
  "optimizer",
  "other kernels",
  "remainder",
] as const;
type Category = typeof CATEGORIES[number];

const KERNEL_CATEGORY: Record<string, Category> = {
  Conv2D: "conv forward",
  FusedConv2D: "conv forward",
  Conv2DBackpropInput: "conv backward",
  Conv2DBackpropFilter: "conv backward",
  [BN_TRAIN_KERNEL]: "BatchNorm forward",
  [BN_CONCAT_TRAIN_KERNEL]: "BatchNorm forward",
  [BN_INFERENCE_KERNEL]: "BatchNorm forward",
  [BN_CONCAT_INFERENCE_KERNEL]: "BatchNorm forward",
  FusedBatchNorm: "BatchNorm forward",
  [BN_GRAD_KERNEL]: "BatchNorm backward",
  [BN_CONCAT_GRAD_KERNEL]: "BatchNorm backward",
  Concat: "concat / slice copies",
  Slice: "concat / slice copies",
  SplitV: "concat / slice copies",
  MaxPool: "pooling",
  AvgPool: "pooling",
  MaxPoolGrad: "pooling",
  AvgPoolGrad: "pooling",
  Mean: "pooling",
  Relu: "ReLU",
  [ADAM_STEP]: "optimizer",
};

const METHOD_CATEGORY: Partial<Record<OneDnnMethod, Category>> = {
  convForward: "conv forward",
  convBackwardData: "conv backward",
  convBackwardWeights: "conv backward",
  convertBf16: "casts / copy_",
};

/** A oneDNN call with the name and group of the kernel it ran in (null: outside kernels). */
type StepCall = OneDnnCall & { kernelName: string | null; group: string | null };

/** The category of a kernel's own time: the optimizer's group, else by name. */
function kernelCategory(name: string, group: string | null): Category {
  return group === "optimizer" ? "optimizer" : KERNEL_CATEGORY[name] ?? "other kernels";
}

/** One profiled kind of run (training steps or inference batches). */
interface RunProfile {
  mean: Breakdown;
  /** Each profiled run's wall time (ms). */
  wallMs: number[];
  /** Unprofiled runs' wall times (ms), after the warm-up. */
  plainMs: number[];
  calls: StepCall[];
  standalone: ConvTiming[];
  /** ms per category, kernels' oneDNN calls counted by the kernel except convolutions'. */
  categories: Record<Category, number>;
}

/** Ours by category: oneDNN convolutions and casts by method, everything else by kernel. */
function categories(b: Breakdown, calls: StepCall[], runs: number): Record<Category, number> {
  const out = Object.fromEntries(CATEGORIES.map((c) => [c, 0])) as Record<Category, number>;
  for (const [m, part] of Object.entries(b.methods) as [OneDnnMethod, { ms: number }][]) {
    const c = METHOD_CATEGORY[m];
    if (c != null) out[c] += part.ms;
  }
  for (const k of Object.values(b.kernels)) {
    out[kernelCategory(k.name, k.group)] += k.selfMs;
  }
  // Other oneDNN calls (copies, pooling gradients, fallback BatchNorm passes) go with their kernel.
  for (const c of calls) {
    if (METHOD_CATEGORY[c.method] != null) continue;
    out[c.kernelName == null ? "other kernels" : kernelCategory(c.kernelName, c.group)] += c.ms /
      runs;
  }
  out.remainder += b.remainderMs;
  return out;
}

/**
 * Wraps `adam.apply` until the returned function is called, recording the range of profile
 * kernel indices each call runs (the optimizer's kernels: on the native backend Adam is the
 * seam's reference, plain tfjs ops, and would otherwise hide among the network's by name).
 */
function markOptimizer(adam: Adam, ranges: [number, number][]): () => void {
  const engine = tf.engine();
  const original = adam.apply;
  adam.apply = (...args: Parameters<Adam["apply"]>) => {
    const from = engine.state.activeProfile.kernels.length;
    try {
      original.apply(adam, args);
    } finally {
      ranges.push([from, engine.state.activeProfile.kernels.length]);
    }
  };
  return () => void delete (adam as unknown as Record<string, unknown>).apply;
}

/**
 * Profiles `steps` runs of `run` (after an unprofiled warm-up run and an unprofiled timed one);
 * `adam`: the optimizer the run steps, whose kernels are grouped as `optimizer`.
 */
async function profileRuns(
  dnn: OneDnn,
  run: () => Promise<unknown>,
  steps: number,
  label: string,
  standaloneReps: number,
  adam: Adam | null = null,
): Promise<RunProfile> {
  const registered = (name: string) => tf.getKernel(name, tf.getBackend()) != null;
  const plainMs: number[] = [];
  for (const what of ["warm-up", "unprofiled"]) {
    const start = performance.now();
    await run();
    const ms = performance.now() - start;
    log(`${label} (${what}): ${ms.toFixed(0)} ms`);
    if (what === "unprofiled") plainMs.push(ms);
  }
  // Profiling would otherwise read every kernel's output back to check it for NaNs.
  const check = tf.env().getBool("CHECK_COMPUTATION_FOR_ERRORS");
  tf.env().set("CHECK_COMPUTATION_FOR_ERRORS", false);
  const runs: Breakdown[] = [];
  const wallMs: number[] = [];
  const allCalls: StepCall[] = [];
  try {
    for (let s = 0; s < steps; s++) {
      const tracker = trackKernels();
      const recorder = recordOneDnnCalls(dnn, tracker.current);
      const optimizer: [number, number][] = [];
      const restoreAdam = adam != null ? markOptimizer(adam, optimizer) : () => {};
      let wall = 0;
      let profile;
      try {
        profile = await tf.profile(async () => {
          const start = performance.now();
          await run();
          wall = performance.now() - start;
        });
      } finally {
        restoreAdam();
        recorder.restore();
        tracker.restore();
      }
      const kernels = profile.kernels as unknown as ProfiledKernel[];
      const groupOf = (i: number) =>
        optimizer.some(([from, to]) => i >= from && i < to) ? "optimizer" : null;
      const parents = tracker.parents(kernels.length);
      const b = breakdown(wall, kernels, parents, recorder.calls, registered, groupOf);
      runs.push(b);
      wallMs.push(wall);
      for (const c of recorder.calls) {
        allCalls.push({
          ...c,
          kernelName: c.kernel == null ? null : kernels[c.kernel.index]?.name ?? null,
          group: c.kernel == null ? null : groupOf(c.kernel.index),
        });
      }
      log(
        `${label} (profiled ${s + 1}): ${wall.toFixed(0)} ms, ${kernels.length} kernels, ` +
          `${recorder.calls.length} oneDNN calls, remainder ${b.remainderMs.toFixed(0)} ms`,
      );
    }
  } finally {
    tf.env().set("CHECK_COMPUTATION_FOR_ERRORS", check);
  }
  const mean = meanBreakdown(runs);
  const standalone = standaloneReps > 0
    ? timeConvsStandalone(dnn, allCalls, steps, standaloneReps)
    : [];
  return {
    mean,
    wallMs,
    plainMs,
    calls: allCalls,
    standalone,
    categories: categories(mean, allCalls, steps),
  };
}

/** What bench/torch_step_profile.py prints for one variant and one kind of run. */
interface TorchRun {
  plain_ms: number[];
  profiled_ms: number[];
  categories: Record<string, { ms: number; calls: number }>;
  ops: { name: string; calls: number; self_ms: number }[];
}
interface TorchProfile {
  version: string;
  threads: number;
  variants: Record<string, { train: TorchRun; infer: TorchRun }>;
}

async function torchProfile(
  batch: number,
  size: number,
  threads: number,
  steps: number,
): Promise<TorchProfile> {
  const script = fileURLToPath(new URL("./torch_step_profile.py", import.meta.url));
  const args = [
    script,
    ...["--batch", `${batch}`, "--image_size", `${size}`],
    ...["--threads", `${threads}`, "--steps", `${steps}`],
  ];
  log(`torch: ${PYTHON} ${args.join(" ")}`);
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command(PYTHON, { args, stderr: "inherit", stdout: "piped" }).output();
  } catch (err) {
    throw new UserError(`${PYTHON} cannot run (${(err as Error).message.split("\n")[0]})`);
  }
  if (!out.success) throw new UserError(`bench/torch_step_profile.py failed (exit ${out.code})`);
  return JSON.parse(new TextDecoder().decode(out.stdout).trim().split("\n").pop()!);
}

// ---- tables ----

const f1 = (v: number) => v.toFixed(1);
const f0 = (v: number) => v.toFixed(0);
const pct = (v: number, of: number) => `${((100 * v) / of).toFixed(1)}%`;

function markdown(head: string[], rows: string[][]): string {
  return [head, head.map(() => "---"), ...rows].map((l) => `| ${l.join(" | ")} |`).join("\n");
}

/** Kernels with less than this share of the run are summed into one row. */
const SMALL = 0.005;

/**
 * The parts of a run, largest first within oneDNN calls and within kernels; memory passes'
 * GB/s also as a share of the machine's read bandwidth (`readGBps`, the plain SIMD read-only
 * sum), the ceiling of a pass that mostly reads, as the BatchNorm passes do.
 */
function partsTable(p: RunProfile, readGBps: number | null): string {
  const b = p.mean;
  const wall = b.wallMs;
  const rows: string[][] = [];
  const standalone = new Map<string, { ms: number; flop: number }>();
  for (const t of p.standalone) {
    const s = standalone.get(t.method) ?? { ms: 0, flop: 0 };
    s.ms += t.bestMs * t.calls;
    s.flop += t.flop * t.calls;
    standalone.set(t.method, s);
  }
  const gbps = (bytes: number, ms: number) => bytes / (ms / 1000) / 1e9;
  const ofBw = (g: number) => readGBps ? pct(g, readGBps) : "";
  for (
    const [m, part] of Object.entries(b.methods) as [OneDnnMethod, typeof b.methods[OneDnnMethod]][]
  ) {
    if (part == null) continue;
    const direction = (CONV_DIRECTIONS as Record<string, string>)[m];
    const label = direction != null ? `oneDNN conv ${direction}` : `oneDNN ${m}`;
    const alone = standalone.get(m);
    const g = part.bytes > 0 ? gbps(part.bytes, part.ms) : null;
    rows.push([
      label,
      f0(part.calls),
      f1(part.ms),
      pct(part.ms, wall),
      part.flop > 0 ? f1(part.flop / 1e6 / part.ms) : "",
      alone ? `${f1(alone.flop / 1e6 / alone.ms)} (${f1(alone.ms)} ms)` : "",
      g != null ? f1(g) : "",
      g != null ? ofBw(g) : "",
    ]);
  }
  rows.sort((a, b) => Number(b[2]) - Number(a[2]));
  const kernelRows: string[][] = [];
  let small = { names: 0, calls: 0, ms: 0 };
  for (const [name, k] of Object.entries(b.kernels)) {
    const memory = (MEMORY_KERNELS as readonly string[]).includes(k.name);
    if (!memory && k.selfMs < SMALL * wall) {
      small = { names: small.names + 1, calls: small.calls + k.calls, ms: small.ms + k.selfMs };
      continue;
    }
    const g = k.bytes != null ? gbps(k.bytes, k.totalMs) : null;
    const passes = k.passBytes != null ? gbps(k.passBytes, k.totalMs) : null;
    const less = [
      ...(k.oneDnnMs > 0.05 ? [`${f1(k.oneDnnMs)} ms in oneDNN`] : []),
      ...(k.nestedMs > 0.05 ? [`${f1(k.nestedMs)} ms in kernels inside`] : []),
    ];
    kernelRows.push([
      `${k.kernel ? "kernel " : ""}${name}${less.length ? ` (less ${less.join(", ")})` : ""}`,
      f0(k.calls),
      f1(k.selfMs),
      pct(k.selfMs, wall),
      "",
      "",
      g != null ? `${f1(g)} (passes ${f1(passes!)})` : "",
      g != null ? `${ofBw(g)} (${ofBw(passes!)})` : "",
    ]);
  }
  kernelRows.sort((a, b) => Number(b[2]) - Number(a[2]));
  rows.push(...kernelRows);
  if (small.names > 0) {
    rows.push([
      `${small.names} other kernels (each < ${SMALL * 100}%)`,
      f0(small.calls),
      f1(small.ms),
      pct(small.ms, wall),
      "",
      "",
      "",
      "",
    ]);
  }
  rows.push([
    "remainder (JavaScript between kernels)",
    "",
    f1(b.remainderMs),
    pct(b.remainderMs, wall),
    "",
    "",
    "",
    "",
  ]);
  rows.push(["**step wall time**", "", f1(wall), "100%", "", "", "", ""]);
  return markdown(
    [
      "part",
      "calls",
      "ms",
      "share",
      "GFLOP/s",
      "standalone GFLOP/s (ms)",
      "GB/s",
      readGBps ? `of read BW ${f1(readGBps)} GB/s` : "of read BW",
    ],
    rows,
  );
}

/** Ours and PyTorch's variants by category, and ours less the first variant's. */
function categoryTable(
  ours: RunProfile,
  torch: { name: string; run: TorchRun }[],
): string {
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  const first = torch[0];
  const rows = CATEGORIES.map((c) => [
    c,
    f1(ours.categories[c]),
    ...torch.map(({ run }) => f1(run.categories[c]?.ms ?? 0)),
    f1(ours.categories[c] - (first.run.categories[c]?.ms ?? 0)),
  ]);
  const oursWall = ours.mean.wallMs;
  const torchWall = mean(first.run.profiled_ms);
  rows.push([
    "**wall (profiled)**",
    f1(oursWall),
    ...torch.map(({ run }) => f1(mean(run.profiled_ms))),
    f1(oursWall - torchWall),
  ]);
  rows.push([
    "wall (unprofiled)",
    f1(mean(ours.plainMs)),
    ...torch.map(({ run }) => f1(mean(run.plain_ms))),
    f1(mean(ours.plainMs) - mean(first.run.plain_ms)),
  ]);
  return markdown(
    ["category (ms)", "ours", ...torch.map((t) => `torch ${t.name}`), `ours − torch ${first.name}`],
    rows,
  );
}

/** A part of a run against the least time it could take, by a measurement of this run. */
interface Headroom {
  part: string;
  ms: number;
  floorMs: number;
  floor: string;
}

/**
 * What the parts with a measured ceiling would save at it: the convolutions at their
 * standalone speed, the BatchNorm kernels at the read bandwidth (for the bytes they must move,
 * and for the bytes their passes stream).
 */
function headroom(p: RunProfile, readGBps: number | null): Headroom[] {
  const out: Headroom[] = [];
  for (const [m, direction] of Object.entries(CONV_DIRECTIONS)) {
    const part = p.mean.methods[m as OneDnnMethod];
    const alone = p.standalone.filter((t) => t.method === m);
    if (part == null || alone.length === 0) continue;
    out.push({
      part: `conv ${direction}`,
      ms: part.ms,
      floorMs: alone.reduce((a, t) => a + t.bestMs * t.calls, 0),
      floor: "the same convolutions timed alone",
    });
  }
  const bn = Object.values(p.mean.kernels).filter((k) => k.bytes != null && k.name !== ADAM_STEP);
  if (readGBps != null && bn.length > 0) {
    const ms = bn.reduce((a, k) => a + k.totalMs, 0);
    const at = (bytes: number) => bytes / (readGBps * 1e6);
    out.push({
      part: "BatchNorm kernels",
      ms,
      floorMs: at(bn.reduce((a, k) => a + k.bytes!, 0)),
      floor: "read bandwidth, bytes they must move",
    }, {
      part: "BatchNorm kernels",
      ms,
      floorMs: at(bn.reduce((a, k) => a + k.passBytes!, 0)),
      floor: "read bandwidth, bytes their passes stream",
    });
  }
  return out;
}

function headroomTable(h: Headroom[], wallMs: number): string {
  return markdown(
    ["part", "ms", "floor ms", "gap ms", "gap / step", "floor"],
    h.map((x) => [
      x.part,
      f1(x.ms),
      f1(x.floorMs),
      f1(x.ms - x.floorMs),
      pct(x.ms - x.floorMs, wallMs),
      x.floor,
    ]),
  );
}

function headroomJson(h: Headroom[]) {
  const r = (v: number) => Number(v.toFixed(1));
  return h.map((x) => ({ part: x.part, ms: r(x.ms), floor_ms: r(x.floorMs), floor: x.floor }));
}

function runJson(p: RunProfile) {
  const r = (v: number, d = 2) => Number(v.toFixed(d));
  const b = p.mean;
  return {
    wall_ms: r(b.wallMs, 1),
    profiled_ms: p.wallMs.map((v) => r(v, 1)),
    unprofiled_ms: p.plainMs.map((v) => r(v, 1)),
    remainder_ms: r(b.remainderMs),
    onednn: Object.fromEntries(
      Object.entries(b.methods).map(([m, part]) => [m, {
        calls: part!.calls,
        ms: r(part!.ms),
        ...(part!.flop > 0
          ? { gflop: r(part!.flop / 1e9, 3), gflops: r(part!.flop / 1e6 / part!.ms, 1) }
          : {}),
        ...(part!.bytes > 0
          ? { gb: r(part!.bytes / 1e9, 3), gbps: r(part!.bytes / 1e6 / part!.ms, 2) }
          : {}),
      }]),
    ),
    kernels: Object.fromEntries(
      Object.entries(b.kernels).sort((x, y) => y[1].selfMs - x[1].selfMs).map((
        [name, k],
      ) => [name, {
        calls: k.calls,
        ms: r(k.totalMs),
        onednn_ms: r(k.oneDnnMs),
        nested_ms: r(k.nestedMs),
        self_ms: r(k.selfMs),
        ...(k.bytes != null
          ? {
            gb: r(k.bytes / 1e9, 3),
            gbps: r(k.bytes / 1e6 / k.totalMs),
            pass_gb: r(k.passBytes! / 1e9, 3),
            pass_gbps: r(k.passBytes! / 1e6 / k.totalMs),
          }
          : {}),
      }]),
    ),
    standalone_convs: Object.fromEntries(
      Object.keys(CONV_DIRECTIONS).map((m) => {
        const of = p.standalone.filter((t) => t.method === m);
        const ms = of.reduce((a, t) => a + t.bestMs * t.calls, 0);
        const stepMs = of.reduce((a, t) => a + t.stepMs, 0);
        const flop = of.reduce((a, t) => a + t.flop * t.calls, 0);
        return [
          m,
          of.length === 0 ? null : {
            distinct: of.length,
            step_ms: r(stepMs),
            standalone_ms: r(ms),
            step_gflops: r(flop / 1e6 / stepMs, 1),
            standalone_gflops: r(flop / 1e6 / ms, 1),
          },
        ];
      }),
    ),
    categories: Object.fromEntries(CATEGORIES.map((c) => [c, r(p.categories[c])])),
  };
}

async function main(args: string[]): Promise<void> {
  const flags = parseFlags(
    args,
    SPECS,
    "deno run --allow-read --allow-env --allow-ffi --allow-run=/usr/bin/python3 --allow-sys bench/step_profile.ts [options]",
    "Where a DenseNet-121 training step and inference batch spend their time on the native backend",
  );
  const load0 = Deno.loadavg();
  const info = await initBackend("native", {
    threads: flags.threads,
    log,
    precision: flags.precision as Precision,
  });
  const dnn = openOneDnn();
  const config = ARCHITECTURES[flags.arch].config;
  const model = createDenseNet(config, { seed: 0 });
  const adam = new Adam({ lr: 1e-4 });
  const rng = new Rng(1);
  const { batch, image_size: size } = flags;
  const x = tf.tidy(() =>
    tf.randomNormal([batch, size, size, 3], 0, 1, "float32", 1)
  ) as tf.Tensor4D;
  const y = tf.tensor2d(
    Float32Array.from({ length: batch * 14 }, () => (rng.next() < 0.3 ? 1 : 0)),
    [batch, 14],
  );
  const memoryEfficient = flags.memory_efficient === "on";
  let train: RunProfile, infer: RunProfile;
  try {
    train = await profileRuns(
      dnn,
      () => trainStep(model, adam, x, y, { memoryEfficient }),
      flags.steps,
      "training step",
      flags.standalone_reps,
      adam,
    );
    infer = await profileRuns(
      dnn,
      async () => {
        const out = forward(model, x, { training: false });
        await out.data();
        out.dispose();
      },
      flags.steps,
      "inference batch",
      flags.standalone_reps,
    );
  } finally {
    tf.dispose([x, y]);
    adam.dispose();
    disposeModel(model);
  }
  let bandwidth: BandwidthFigure[] = [];
  if (flags.bandwidth_mb > 0) {
    log(`memory bandwidth (${flags.bandwidth_mb} MB buffers, ${info.threads} threads)`);
    bandwidth = await measureBandwidth(dnn, info.threads ?? flags.threads, flags.bandwidth_mb);
  }
  const load1 = Deno.loadavg();
  let torch: TorchProfile | null = null;
  if (flags["compare-torch"]) {
    torch = await torchProfile(batch, size, info.threads ?? flags.threads, flags.steps);
  }

  const read = bandwidth.find((b) => b.name === "simd_read")?.gbps ?? null;
  const head =
    `${flags.arch}, ${info.precision}, batch ${batch}, ${size}², ${info.threads} threads, ` +
    `oneDNN ${dnn.version} ${dnn.isa}, memory-efficient ${flags.memory_efficient}; ` +
    `load average ${load0.join(" ")} before, ${load1.join(" ")} after`;
  log(`\n## Training step (${head}; mean of ${flags.steps} profiled)\n`);
  log(partsTable(train, read));
  log(`\n## Inference batch (mean of ${flags.steps} profiled)\n`);
  log(partsTable(infer, read));
  if (bandwidth.length > 0) {
    log(`\n## Memory bandwidth (same run, ${info.threads} threads, best of 5)\n`);
    log(markdown(
      ["pass", "MB moved", "ms", "GB/s"],
      bandwidth.map((b) => [b.what, f0(b.bytes / 2 ** 20), f1(b.ms), f1(b.gbps)]),
    ));
  }
  for (const [what, p] of [["training step", train], ["inference batch", infer]] as const) {
    const h = headroom(p, read);
    if (h.length === 0) continue;
    log(`\n## Headroom of the ${what} (what each part would save at its measured floor)\n`);
    log(headroomTable(h, p.mean.wallMs));
  }
  if (torch != null) {
    const variants = Object.entries(torch.variants);
    log(`\n## Training step by category vs PyTorch ${torch.version} (${torch.threads} threads)\n`);
    log(categoryTable(train, variants.map(([name, v]) => ({ name, run: v.train }))));
    log(`\n## Inference batch by category vs PyTorch\n`);
    log(categoryTable(infer, variants.map(([name, v]) => ({ name, run: v.infer }))));
  }
  console.log(JSON.stringify({
    arch: flags.arch,
    backend: info.name,
    precision: info.precision,
    threads: info.threads,
    batch,
    image_size: size,
    memory_efficient: memoryEfficient,
    onednn: dnn.version,
    isa: dnn.isa,
    load_average: { before: load0, after: load1 },
    train: { ...runJson(train), headroom: headroomJson(headroom(train, read)) },
    infer: { ...runJson(infer), headroom: headroomJson(headroom(infer, read)) },
    bandwidth: bandwidth.map((b) => ({
      name: b.name,
      what: b.what,
      mb: Math.round(b.bytes / 2 ** 20),
      ms: Number(b.ms.toFixed(2)),
      gbps: Number(b.gbps.toFixed(2)),
    })),
    ...(torch != null ? { torch } : {}),
  }));
}

if (import.meta.main) await runMain(main);
