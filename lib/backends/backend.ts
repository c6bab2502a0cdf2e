/**
 * Chooses where the tensor math runs: `--backend auto|tensorflow|webgpu|native|wasm|cpu`.
 *
 * `auto` takes the first that starts: `tensorflow` (libtensorflow through tfjs-node-gpu, then
 * tfjs-node — only when installed with its install script), `webgpu` (Deno's built-in WebGPU on
 * a real GPU, not a software adapter), `native` (the wasm backend with its convolutions run by
 * oneDNN through FFI, when libdnnl 2.x loads: `native/`), `wasm` (XNNPACK SIMD, multi-threaded where it starts,
 * plus the training kernels of `wasm_kernels.ts`), `cpu` (pure JS, a last resort: one
 * DenseNet-121 training step takes minutes). An explicitly requested backend that cannot start
 * is a `UserError` saying how to fix it. Backend packages are imported lazily, so importing this
 * module has no side effects.
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import { fileURLToPath } from "node:url";
import { UserError } from "../util/errors.ts";
import { installBackendKernels } from "./kernel_tables.ts";
import { watchDeviceFaults } from "./device_faults.ts";
import { openOneDnn, setConvPrecision } from "./native/native_kernels.ts";
import { ONEDNN_INSTALL_HINT, OneDnnUnavailable } from "./native/onednn.ts";
import { setHeapPasses } from "./native/kernel_support.ts";
import { loadAssembler } from "./native/simd_batchnorm.ts";
import {
  MAX_WASM_THREADS,
  resolveWasmThreads,
  startThreadedWasm,
  threadedWasmUnavailable,
} from "./wasm_threads.ts";

/** Values accepted by `--backend`. */
export const BACKENDS = ["auto", "tensorflow", "webgpu", "native", "wasm", "cpu"] as const;
/** A `--backend` value. */
export type BackendName = typeof BACKENDS[number];

/** Values accepted by `--precision`: the arithmetic of the convolutions. */
export const PRECISIONS = ["f32", "bf16"] as const;
/** A `--precision` value. */
export type Precision = typeof PRECISIONS[number];

/** What `initBackend` started. */
export interface BackendInfo {
  /**
   * The backend started: `tensorflow`, `webgpu`, `native`, `wasm` or `cpu`; the tfjs backend
   * name now active is the same, except for `native`, which runs on tfjs's `wasm`.
   */
  name: string;
  /** The hardware or library doing the math, in words. */
  device: string;
  /** Threads the backend computes with, where known. */
  threads?: number;
  /** The convolutions' arithmetic: `bf16` only on the native backend, where asked for. */
  precision: Precision;
  /** Why other backends were skipped, and caveats of the chosen one. */
  notes: string[];
}

/** Options of `initBackend`. */
export interface InitBackendOptions {
  /** Threads for the wasm backend; 0 or absent: all cores (at most `MAX_WASM_THREADS`). */
  threads?: number;
  /** Receives the human-readable lines (chosen backend and device); default: none. */
  log?: (line: string) => void;
  /**
   * A setting decided on the started backend, added to its `backend:` line (train_model.ts:
   * the `--memory_efficient auto` decision, which probes the GPU).
   */
  detail?: (info: BackendInfo) => Promise<string | null>;
  /**
   * The convolutions' arithmetic (default `f32`). `bf16` runs on the native backend on a CPU
   * with bfloat16 instructions (`auto` then means native); anything else is refused, in one line,
   * before any work, unless `precisionOptional`.
   */
  precision?: Precision;
  /**
   * With `bf16`: where it cannot run (another backend, no bfloat16 instructions), compute in
   * float32 with a note instead of refusing: a precision carried over from training, not asked
   * for (a model trained in bf16 is validated anywhere).
   */
  precisionOptional?: boolean;
}

/** Version of the tfjs packages this project is pinned to (deno.json). */
const TFJS_VERSION = "4.22.0";

/** How to install the native TensorFlow backend; part of the explicit-`tensorflow` error. */
export const TENSORFLOW_INSTALL_HINT =
  `install it with its install script, which downloads libtensorflow 2.9.1: ` +
  `\`deno install --allow-scripts=npm:@tensorflow/tfjs-node-gpu@${TFJS_VERSION} ` +
  `npm:@tensorflow/tfjs-node-gpu@${TFJS_VERSION}\` (NVIDIA GPU, Linux x86-64, CUDA 11.2 and ` +
  `cuDNN 8.1) or the same with @tensorflow/tfjs-node (CPU only); or use --backend wasm`;

/** Parses a `--backend` value; a `UserError` (exit 2) for anything else. */
export function parseBackendName(value: string): BackendName {
  const v = value.trim().toLowerCase();
  if ((BACKENDS as readonly string[]).includes(v)) return v as BackendName;
  throw new UserError(`unknown backend '${value}': use one of ${BACKENDS.join(", ")}`, 2);
}

/**
 * Starts the requested backend (or, for `auto`, the first that works) and makes it tfjs's
 * active backend. Logs `backend: NAME (DEVICE)` through `opts.log`.
 */
export async function initBackend(
  name: BackendName | string,
  opts: InitBackendOptions = {},
): Promise<BackendInfo> {
  let requested = parseBackendName(name);
  const log = opts.log ?? (() => {});
  const notes: string[] = [];
  const precision = opts.precision ?? "f32";
  const bf16Demanded = precision === "bf16" && !opts.precisionOptional;
  if (bf16Demanded && requested === "auto") requested = "native";
  if (bf16Demanded && requested !== "native") {
    throw new UserError(
      `--precision bf16 runs on the native backend (oneDNN) only, not ${requested}: use ` +
        "--backend native, or --precision f32",
      2,
    );
  }
  let info: BackendInfo | null = null;
  if (requested === "auto") {
    for (const candidate of ["tensorflow", "webgpu", "native", "wasm", "cpu"] as const) {
      try {
        info = await STARTERS[candidate](opts, false);
        break;
      } catch (err) {
        notes.push(`${candidate} skipped: ${err instanceof Error ? err.message : String(err)}`);
      }
    }
    if (info == null) throw new Error(`no tfjs backend could start (${notes.join("; ")})`);
  } else {
    try {
      info = await STARTERS[requested](opts, true);
    } catch (err) {
      if (err instanceof UserError) throw err;
      const why = err instanceof Error ? err.message : String(err);
      throw new UserError(`backend ${requested} cannot start: ${why}`);
    }
  }
  installBackendKernels(info.name);
  setConvPrecision(info.precision);
  info.notes = [...notes, ...info.notes];
  for (const note of info.notes) log(`note: ${note}`);
  const threads = info.threads != null
    ? `, ${info.threads} thread${info.threads > 1 ? "s" : ""}`
    : "";
  const detail = await opts.detail?.(info);
  const bf16 = info.precision === "bf16" ? ", bf16 convolutions" : "";
  log(`backend: ${info.name} (${info.device}${threads}${bf16})${detail ? `; ${detail}` : ""}`);
  // Only a precision carried over (precisionOptional) gets here unmet: said whatever the notes.
  if (precision !== info.precision) {
    const why = info.name === "native"
      ? `this CPU has no bfloat16 instructions (oneDNN reports ${openOneDnn().isa})`
      : `bf16 runs on the native backend only, not ${info.name}`;
    log(`precision: float32, not bf16: ${why}`);
  }
  return info;
}

type Starter = (opts: InitBackendOptions, explicit: boolean) => Promise<BackendInfo>;

const STARTERS: Record<Exclude<BackendName, "auto">, Starter> = {
  tensorflow: startTensorflow,
  webgpu: startWebgpu,
  native: startNative,
  wasm: startWasm,
  cpu: startCpu,
};

/** Makes `name` the active tfjs backend; false when its factory fails. */
async function activate(name: string): Promise<boolean> {
  if (tf.getBackend() === name) return true;
  try {
    return await tf.setBackend(name);
  } catch {
    return false;
  }
}

/**
 * The native TensorFlow backend. Importing an npm specifier that is not installed would make
 * Deno fetch it from the registry (slow, offline-hostile, and it rewrites the lockfile) and
 * would still fail, since its install script (which downloads libtensorflow) does not run by
 * default. So the package is imported only when its files, including the native binding the
 * install script builds, are already in the project's node_modules; otherwise this fails at once.
 */
async function startTensorflow(
  opts: InitBackendOptions,
  explicit: boolean,
): Promise<BackendInfo> {
  if (Deno.build.standalone) {
    // A compiled executable can load only what `deno compile` embedded, and tfjs-node (found by
    // probing the disk, so never in the module graph) needs libtensorflow from its own folder.
    const why = "not available in a single-file executable (libtensorflow cannot be embedded)";
    if (!explicit) throw new Error(why);
    throw new UserError(
      `backend tensorflow cannot start: ${why}; run the .ts script with deno from the project ` +
        `(e.g. \`deno task train\`) after installing tfjs-node, or use --backend webgpu or wasm`,
    );
  }
  const tried: string[] = [];
  for (const pkg of ["tfjs-node-gpu", "tfjs-node"]) {
    const dir = await findInstalledPackage(pkg);
    if (dir == null) {
      tried.push(`@tensorflow/${pkg} is not installed`);
      continue;
    }
    if (!(await hasNativeBinding(dir))) {
      tried.push(`@tensorflow/${pkg} lacks its native binding (its install script did not run)`);
      continue;
    }
    try {
      const main = JSON.parse(await Deno.readTextFile(`${dir}/package.json`)).main ?? "index.js";
      await import(new URL(main, `file://${dir}/`).href);
    } catch (err) {
      tried.push(`@tensorflow/${pkg} failed to load: ${(err as Error).message.split("\n")[0]}`);
      continue;
    }
    if (!(await activate("tensorflow"))) {
      tried.push(`@tensorflow/${pkg} loaded but its backend did not start`);
      continue;
    }
    const notes = opts.threads != null ? ["--threads is ignored by libtensorflow"] : [];
    const device = pkg === "tfjs-node-gpu" ? "libtensorflow, CUDA GPU" : "libtensorflow, CPU";
    return { name: "tensorflow", device, notes, precision: "f32" };
  }
  if (!explicit) throw new Error(tried.join("; "));
  throw new UserError(
    `backend tensorflow cannot start: ${tried.join("; ")}; ${TENSORFLOW_INSTALL_HINT}`,
  );
}

/** Where `@tensorflow/NAME` would be installed for this project (npm or Deno layout). */
async function findInstalledPackage(pkg: string): Promise<string | null> {
  // Only a local checkout has a node_modules folder to probe (not an http: import).
  if (!import.meta.url.startsWith("file:")) return null;
  const modules = fileURLToPath(new URL("../../node_modules/", import.meta.url));
  const candidates = [
    `${modules}@tensorflow/${pkg}`,
    `${modules}.deno/@tensorflow+${pkg}@${TFJS_VERSION}/node_modules/@tensorflow/${pkg}`,
  ];
  for (const dir of candidates) {
    try {
      if ((await Deno.stat(`${dir}/package.json`)).isFile) return dir;
    } catch {
      // not there
    }
  }
  return null;
}

/** True when tfjs-node's install script left its N-API binding (lib/napi-vN/*.node). */
async function hasNativeBinding(dir: string): Promise<boolean> {
  try {
    for await (const entry of Deno.readDir(`${dir}/lib`)) {
      if (!entry.isDirectory || !entry.name.startsWith("napi-v")) continue;
      try {
        if ((await Deno.stat(`${dir}/lib/${entry.name}/tfjs_binding.node`)).isFile) return true;
      } catch {
        // this N-API version was not built
      }
    }
  } catch {
    // no lib/ directory
  }
  return false;
}

/** Names of software rasterisers that WebGPU may expose as an adapter. */
const SOFTWARE_ADAPTERS = /llvmpipe|lavapipe|swiftshader|software|warp|basic render/i;

/**
 * WebGPU through Deno's built-in `navigator.gpu` (no flag needed in Deno 2). `auto` accepts only
 * a hardware adapter; an explicit request also accepts a software one (e.g. Mesa's lavapipe),
 * with a note, so tests can exercise the GPU code path on a CPU machine.
 */
async function startWebgpu(_opts: InitBackendOptions, explicit: boolean): Promise<BackendInfo> {
  const fix = "needs a GPU whose driver supports WebGPU (Vulkan on Linux, Metal on macOS, " +
    "Direct3D 12 on Windows); on Linux install the GPU vendor's Vulkan driver " +
    "(Debian's mesa-vulkan-drivers gives a slow software adapter); or use --backend wasm";
  const gpu = (navigator as Navigator & { gpu?: GPU }).gpu;
  if (gpu == null) throw new UserError(`backend webgpu cannot start: no navigator.gpu; ${fix}`);
  return await withoutWaylandProbeNoise(async () => {
    let adapter: GPUAdapter | null = null;
    try {
      adapter = await gpu.requestAdapter({ powerPreference: "high-performance" });
    } catch {
      adapter = null;
    }
    if (adapter == null) {
      throw new UserError(`backend webgpu cannot start: no WebGPU adapter; ${fix}`);
    }
    const { device, software } = describeAdapter(adapter);
    const notes: string[] = [];
    if (software) {
      if (!explicit) throw new Error(`only a software WebGPU adapter (${device})`);
      notes.push(`WebGPU adapter ${device} is a software rasteriser: correct but slow`);
    }
    await import("@tensorflow/tfjs-backend-webgpu");
    if (!(await activate("webgpu"))) {
      throw new UserError(`backend webgpu cannot start: tfjs could not open ${device}; ${fix}`);
    }
    watchDeviceFaults((tf.backend() as unknown as { device: GPUDevice }).device);
    return { name: "webgpu", device: `WebGPU: ${device}`, notes, precision: "f32" };
  });
}

/**
 * Runs `fn` (which opens WebGPU) with `XDG_RUNTIME_DIR` set when no display server is configured.
 * Opening the Vulkan instance makes libwayland-client look for a compositor socket, and without
 * XDG_RUNTIME_DIR it prints "error: XDG_RUNTIME_DIR is invalid or not set in the environment."
 * on a headless machine. Pointing it at a folder that holds no `wayland-0` socket gives the same
 * outcome (no compositor) silently. Applied only when both XDG_RUNTIME_DIR and WAYLAND_DISPLAY
 * are unset, so a misconfigured desktop still sees the message; restored afterwards, so child
 * processes inherit the untouched environment.
 */
export async function withoutWaylandProbeNoise<T>(fn: () => Promise<T>): Promise<T> {
  let set = false;
  try {
    if (
      Deno.build.os !== "windows" && Deno.build.os !== "darwin" &&
      !Deno.env.get("XDG_RUNTIME_DIR") && !Deno.env.get("WAYLAND_DISPLAY")
    ) {
      const tmp = Deno.env.get("TMPDIR") || "/tmp";
      Deno.env.set("XDG_RUNTIME_DIR", `${tmp}/augmented-chest-xray-headless-${Deno.pid}`);
      set = true;
    }
  } catch {
    // no --allow-env: leave the environment alone (the message is harmless)
  }
  try {
    return await fn();
  } finally {
    if (set) Deno.env.delete("XDG_RUNTIME_DIR");
  }
}

/** A readable adapter name and whether it is a fallback/software adapter. */
function describeAdapter(adapter: GPUAdapter): { device: string; software: boolean } {
  // Deno 2 reports isFallbackAdapter on adapter.info (newer spec); older builds on the adapter.
  const info = (adapter as GPUAdapter & { info?: Record<string, unknown> }).info ?? {};
  const fields = ["description", "vendor", "architecture", "device"]
    .map((k) => info[k])
    .filter((v): v is string => typeof v === "string" && v !== "" && v !== "0");
  const device = fields[0] ?? "unknown adapter";
  const fallback = info.isFallbackAdapter === true ||
    (adapter as GPUAdapter & { isFallbackAdapter?: boolean }).isFallbackAdapter === true;
  return { device, software: fallback || SOFTWARE_ADAPTERS.test(fields.join(" ")) };
}

/**
 * The wasm backend (XNNPACK, SIMD when the CPU has it). With more than one thread (`--threads`,
 * default all cores) it starts tfjs's threaded SIMD build through `wasm_threads.ts`, falling back
 * to the single-threaded build, with a note saying why, when that cannot start. Its .wasm
 * binaries are located next to the package's own module, never relative to the working
 * directory, so scripts run from any directory.
 */
async function startWasm(opts: InitBackendOptions): Promise<BackendInfo> {
  const wasm = await import("@tensorflow/tfjs-backend-wasm");
  await loadAssembler(); // the SIMD BatchNorm passes' (native/simd_batchnorm.ts)
  const notes: string[] = [];
  const threads = resolveWasmThreads(opts.threads);
  if (opts.threads != null && opts.threads > MAX_WASM_THREADS) {
    notes.push(`--threads ${opts.threads}: tfjs's wasm build uses at most ${MAX_WASM_THREADS}`);
  }
  let running: number | null = null;
  if (tf.findBackend("wasm") != null) {
    // Already started in this process (tfjs cannot restart it with another build).
    running = wasmThreadsCount(wasm);
    if (running !== threads) {
      notes.push(`wasm already runs on ${running} thread(s) in this process; keeping that`);
    }
  } else if (threads > 1) {
    const why = await threadedWasmUnavailable();
    if (why == null) {
      try {
        running = await startThreadedWasm(wasm, threads);
      } catch (err) {
        const msg = err instanceof Error ? err.message : String(err);
        notes.push(`tfjs's threaded wasm build did not start (${msg}): wasm runs on 1 thread`);
      }
    } else {
      notes.push(`tfjs's threaded wasm build cannot run: ${why}; wasm runs on 1 thread`);
    }
  }
  if (running == null) {
    const moduleUrl = import.meta.resolve("@tensorflow/tfjs-backend-wasm");
    if (moduleUrl.startsWith("file:")) {
      wasm.setWasmPaths(fileURLToPath(new URL("./", moduleUrl)));
    }
    wasm.setThreadsCount(1);
  }
  if (!(await activate("wasm"))) {
    throw new UserError(
      "backend wasm cannot start: the tfjs wasm binaries did not load (is " +
        "node_modules/@tensorflow/tfjs-backend-wasm/dist complete? run `deno install`)",
    );
  }
  running ??= wasmThreadsCount(wasm);
  setHeapPasses(running, true);
  const simd = await tf.env().getAsync("WASM_HAS_SIMD_SUPPORT");
  if (!simd) notes.push("this CPU/runtime lacks WebAssembly SIMD: the plain wasm build is slower");
  return {
    name: "wasm",
    device: `CPU, WebAssembly${simd ? " SIMD" : ""} (XNNPACK${running > 1 ? ", threaded" : ""})`,
    threads: running,
    notes,
    precision: "f32",
  };
}

/**
 * The wasm backend (same threads) with its convolutions replaced by oneDNN's, run on the wasm
 * heap (`native/native_kernels.ts`). The library is opened first, so that without it nothing
 * is started and `auto` moves on to plain wasm with a note naming the package.
 */
async function startNative(opts: InitBackendOptions, explicit: boolean): Promise<BackendInfo> {
  let dnn;
  try {
    dnn = openOneDnn();
  } catch (err) {
    const msg = (err as Error).message;
    const why = err instanceof OneDnnUnavailable && err.install
      ? `${msg}; ${ONEDNN_INSTALL_HINT}`
      : msg;
    if (!explicit) throw new Error(why);
    const instead = opts.precision === "bf16" ? "--precision f32" : "--backend wasm";
    throw new UserError(`backend native cannot start: ${why}; or use ${instead}`);
  }
  let precision: Precision = "f32";
  if (opts.precision === "bf16") {
    if (dnn.bf16Instructions) precision = "bf16";
    else if (!opts.precisionOptional) {
      throw new UserError(
        `--precision bf16 needs a CPU with bfloat16 instructions (AVX512_BF16 or AMX); oneDNN ` +
          `reports ${dnn.isa} on this one, where bf16 would run emulated, slower than float32: ` +
          "use --precision f32",
        2,
      );
    }
  }
  const wasm = await startWasm(opts);
  setHeapPasses(wasm.threads ?? 1, false);
  dnn.setThreads(wasm.threads ?? 1);
  const notes = [...wasm.notes];
  if (dnn.threads == null) notes.push("oneDNN's thread count could not be set (no OpenMP found)");
  return {
    name: "native",
    device: `oneDNN ${dnn.version} ${dnn.isa}, wasm heap`,
    threads: wasm.threads,
    notes,
    precision,
  };
}

/** Threads of the running wasm backend (1 where the build reports no thread pool). */
function wasmThreadsCount(wasm: { getThreadsCount: () => number }): number {
  try {
    return Math.max(1, wasm.getThreadsCount());
  } catch {
    return 1;
  }
}

/** The pure-JavaScript backend. */
async function startCpu(): Promise<BackendInfo> {
  await import("@tensorflow/tfjs-backend-cpu");
  if (!(await activate("cpu"))) throw new UserError("backend cpu cannot start");
  // Our own log line replaces its "install tfjs-node" banner on first use.
  (tf.backend() as unknown as { firstUse?: boolean }).firstUse = false;
  return {
    name: "cpu",
    device: "CPU, plain JavaScript",
    threads: 1,
    notes: ["the cpu backend is very slow for training; prefer wasm"],
    precision: "f32",
  };
}
