/**
 * Starts the multi-threaded SIMD build of `@tensorflow/tfjs-backend-wasm` under Deno.
 *
 * tfjs 4.22 never picks that build on Node-like runtimes (`WASM_HAS_MULTITHREAD_SUPPORT` is
 * false when `IS_NODE`), and forcing the flag fails: tfjs's `init()` hands emscripten a `blob:`
 * URL for the pthread worker script, and `node:worker_threads` rejects it with ERR_WORKER_PATH.
 * So this module instantiates the threaded build itself, with what emscripten needs as real files:
 * the worker script `wasm_threads_worker.cjs` (which runs tfjs's own worker code) and the
 * package's `wasm-out/tfjs-backend-wasm-threaded-simd.js` as the script each worker evaluates.
 * The module is then wrapped in tfjs's own `BackendWasm`, so every registered wasm kernel (ours
 * included) runs on it unchanged.
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import type * as TfWasm from "@tensorflow/tfjs-backend-wasm";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

/** Most threads tfjs's threaded build uses: its emscripten pool has 8 workers. */
export const MAX_WASM_THREADS = 8;

/** Files of the threaded build, all of which must exist for it to start. */
export interface ThreadedWasmFiles {
  /** `tfjs-backend-wasm-threaded-simd.wasm`. */
  wasm: string;
  /** `wasm-out/tfjs-backend-wasm-threaded-simd.js`: the emscripten factory. */
  factory: string;
  /** `wasm-out/tfjs-backend-wasm-threaded-simd.worker.js`: tfjs's worker code, as a string. */
  workerContents: string;
  /** `lib/backends/wasm_threads_worker.cjs`: the file each pthread worker starts from. */
  worker: string;
}

/**
 * Resolves `--threads`: 0 or absent means all logical cores (`navigator.hardwareConcurrency`).
 * The result is capped to `MAX_WASM_THREADS`.
 */
export function resolveWasmThreads(requested?: number): number {
  const n = requested == null || requested <= 0 ? navigator.hardwareConcurrency || 1 : requested;
  return Math.max(1, Math.min(Math.floor(n), MAX_WASM_THREADS));
}

/** Where the threaded build's files are, from the installed package; null when not a local file. */
export function threadedWasmFiles(): ThreadedWasmFiles | null {
  const moduleUrl = import.meta.resolve("@tensorflow/tfjs-backend-wasm");
  if (!moduleUrl.startsWith("file:") || !import.meta.url.startsWith("file:")) return null;
  const dist = fileURLToPath(new URL("./", moduleUrl));
  const pkg = fileURLToPath(new URL("../", moduleUrl));
  return {
    wasm: `${dist}tfjs-backend-wasm-threaded-simd.wasm`,
    factory: `${pkg}wasm-out/tfjs-backend-wasm-threaded-simd.js`,
    workerContents: `${pkg}wasm-out/tfjs-backend-wasm-threaded-simd.worker.js`,
    worker: fileURLToPath(new URL("./wasm_threads_worker.cjs", import.meta.url)),
  };
}

/**
 * Why the threaded build cannot run here, or null when it can be tried: it needs WebAssembly
 * SIMD and threads (shared memory), and its files on disk (a `deno compile` executable embeds
 * only the single-threaded binaries).
 */
export async function threadedWasmUnavailable(): Promise<string | null> {
  if (typeof SharedArrayBuffer !== "function") return "this runtime has no SharedArrayBuffer";
  try {
    new WebAssembly.Memory({ initial: 1, maximum: 1, shared: true });
  } catch {
    return "this runtime has no shared WebAssembly memory";
  }
  await import("@tensorflow/tfjs-backend-wasm"); // registers the flag read next
  if (!(await tf.env().getAsync("WASM_HAS_SIMD_SUPPORT"))) {
    return "the threaded build needs WebAssembly SIMD, which this CPU/runtime lacks";
  }
  const files = threadedWasmFiles();
  if (files == null) return "tfjs's wasm files are not local files";
  for (const path of Object.values(files)) {
    try {
      if (!(await Deno.stat(path)).isFile) return `${path} is not a file`;
    } catch {
      return `${path} is missing`;
    }
  }
  return null;
}

/** The parts of the emscripten module that `BackendWasm` and this module use. */
interface EmscriptenModule {
  cwrap: (name: string, ret: string | null, args: string[]) => (...a: number[]) => unknown;
  tfjs?: unknown;
  PThread?: { terminateAllThreads: () => void; runningWorkers: { unref?: () => void }[] };
}

type Factory = (config: Record<string, unknown>) => Promise<EmscriptenModule>;

/** How long the pthread workers may take to load before the threaded build is given up. */
const START_TIMEOUT_MS = 60_000;

/**
 * Instantiates the threaded build with `threads` threads (1 to `MAX_WASM_THREADS`; the calling
 * thread counts as one) and makes it tfjs's `wasm` backend. Call only while no `wasm` backend has
 * been initialised, after `threadedWasmUnavailable()` returned null. Rejects (leaving tfjs's
 * original factory registered) when the build does not start; resolves to the thread count
 * XNNPACK reports.
 */
export async function startThreadedWasm(wasm: typeof TfWasm, threads: number): Promise<number> {
  const files = threadedWasmFiles();
  if (files == null) throw new Error("tfjs's wasm files are not local files");
  const require = createRequire(import.meta.url);
  const factory = require(files.factory) as Factory;
  const binary = await Deno.readFile(files.wasm);

  const config: Record<string, unknown> = {
    locateFile: (path: string, prefix: string) => {
      if (path.endsWith(".worker.js")) return files.worker;
      if (path.endsWith(".wasm")) return files.wasm;
      return prefix + path;
    },
    // Each worker evaluates this script (read from disk) to define the module factory.
    mainScriptUrlOrBlob: files.factory,
    // tfjs sizes XNNPACK's pool as min(requested, logical cores / 2) (it assumes two hardware
    // threads per core). Reporting twice the requested count makes the request the pool size.
    instantiateWasm: (
      info: { env: Record<string, unknown> },
      receive: (instance: WebAssembly.Instance, module: WebAssembly.Module) => void,
    ) => {
      info.env.emscripten_num_logical_cores = () => 2 * threads;
      WebAssembly.instantiate(binary, info as WebAssembly.Imports).then(
        (r) => receive(r.instance, r.module),
        (err) => fail(err),
      );
      return {};
    },
    onAbort: (what: unknown) => fail(new Error(`threaded wasm aborted: ${String(what)}`)),
  };
  let fail: (err: unknown) => void = () => {};
  const failed = new Promise<never>((_, reject) => {
    fail = reject;
  });

  // In Node mode emscripten sets the global `Worker` to worker_threads' class; Deno's web
  // `Worker` (used elsewhere, e.g. the benchmark) is put back once its pool exists.
  const webWorker = globalThis.Worker;
  let module: EmscriptenModule;
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    const started = factory(config);
    globalThis.Worker = webWorker;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`its workers did not start within ${START_TIMEOUT_MS / 1000} s`)),
        START_TIMEOUT_MS,
      );
    });
    module = await Promise.race([started, failed, timeout]);
  } catch (err) {
    // emscripten's module object is the config object itself.
    (config as Partial<EmscriptenModule>).PThread?.terminateAllThreads();
    throw err;
  } finally {
    globalThis.Worker = webWorker;
    clearTimeout(timer);
  }

  // The same bridge tfjs's own init() builds (backend_wasm.ts).
  module.tfjs = {
    init: module.cwrap("init", null, []),
    initWithThreadsCount: module.cwrap("init_with_threads_count", null, ["number"]),
    getThreadsCount: module.cwrap("get_threads_count", "number", []),
    registerTensor: module.cwrap("register_tensor", null, ["number", "number", "number"]),
    disposeData: module.cwrap("dispose_data", null, ["number"]),
    dispose: module.cwrap("dispose", null, []),
  };
  const original = tf.findBackendFactory("wasm");
  wasm.setThreadsCount(threads);
  if (tf.findBackendFactory("wasm") != null) tf.removeBackend("wasm");
  tf.registerBackend(
    "wasm",
    () =>
      new wasm.BackendWasm(module as unknown as ConstructorParameters<typeof wasm.BackendWasm>[0]),
    2,
  );
  let ok = false;
  try {
    ok = await tf.setBackend("wasm");
  } catch {
    ok = false;
  }
  if (!ok) {
    tf.removeBackend("wasm");
    if (original != null) tf.registerBackend("wasm", original, 2);
    module.PThread?.terminateAllThreads();
    throw new Error("tfjs could not wrap the threaded module in its wasm backend");
  }
  // emscripten refs each worker that runs a pthread, so XNNPACK's pool threads (which wait for
  // work for ever) would keep the process alive after its last line; they hold no work of ours.
  for (const worker of module.PThread?.runningWorkers ?? []) worker.unref?.();
  return wasm.getThreadsCount();
}
