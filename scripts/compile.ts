/**
 * `deno task compile`: builds the single-file executables `dist/preprocess_data`,
 * `dist/train_model` and `dist/validate_model` with `deno compile`. Each gets exactly the
 * permission flags of its `deno task` (read from deno.json, so the two cannot drift apart) and
 * embeds the tfjs wasm binaries, which the wasm backend loads at run time, and the DICOM codecs'
 * wasm (JPEG 2000, HTJ2K, JPEG-LS), which `lib/data/dicom_codecs.ts` reads on first use.
 *
 * `deno compile` downloads its base runtime (`denort`) from dl.deno.land on first use. When that
 * fails (offline or firewalled machine), this prints one line saying so and what to do, and exits
 * with status 1.
 * @module
 */
import { fileURLToPath } from "node:url";
import { CODEC_WASM } from "../lib/data/dicom_codecs.ts";

/** The repository root (where deno.json and the entry scripts are). */
export const ROOT: string = fileURLToPath(new URL("../", import.meta.url));

/** Entry scripts compiled, each with the deno.json task whose permissions it takes. */
export const EXECUTABLES = [
  { script: "preprocess_data.ts", task: "preprocess" },
  { script: "train_model.ts", task: "train" },
  { script: "validate_model.ts", task: "validate" },
] as const;

/** One of the compiled entry scripts. */
export type ExecutableScript = typeof EXECUTABLES[number]["script"];

/** Files embedded with `--include`, relative to ROOT: the wasm backend's binaries (SIMD, plain and
 * threaded, with the threaded build's loader and worker), and the DICOM codecs' wasm. */
export function embeddedFiles(): string[] {
  const moduleUrl = import.meta.resolve("@tensorflow/tfjs-backend-wasm");
  const dist = fileURLToPath(new URL("./", moduleUrl));
  const wasmOut = fileURLToPath(new URL("../wasm-out/", moduleUrl));
  const threadsWorker = fileURLToPath(
    new URL("../lib/backends/wasm_threads_worker.cjs", import.meta.url),
  );
  return [
    `${dist}tfjs-backend-wasm.wasm`,
    `${dist}tfjs-backend-wasm-simd.wasm`,
    // The threaded build (lib/backends/wasm_threads.ts) loads these at run time.
    `${dist}tfjs-backend-wasm-threaded-simd.wasm`,
    `${wasmOut}tfjs-backend-wasm-threaded-simd.js`,
    `${wasmOut}tfjs-backend-wasm-threaded-simd.worker.js`,
    threadsWorker,
    ...CODEC_WASM.map((specifier) => fileURLToPath(import.meta.resolve(specifier))),
  ].map(relativeToRoot);
}

function relativeToRoot(path: string): string {
  return path.startsWith(ROOT) ? path.slice(ROOT.length) : path;
}

/**
 * The `--allow-*` flags of deno.json's task `task`, with `$HOME` expanded as the task shell
 * would (the executable's permissions are fixed when it is built).
 */
export async function taskPermissions(task: string): Promise<string[]> {
  const config = JSON.parse(await Deno.readTextFile(`${ROOT}deno.json`));
  const line: unknown = config.tasks?.[task];
  if (typeof line !== "string") throw new Error(`deno.json has no task '${task}'`);
  const home = Deno.env.get("HOME") ?? "";
  return line.split(/\s+/)
    .filter((t) => t.startsWith("--allow-"))
    .map((t) => t.replaceAll(/\$\{HOME\}|\$HOME/g, home));
}

/** The `deno compile` arguments for one script. */
export async function compileArgs(
  script: ExecutableScript,
  outDir: string,
  opts: { check?: boolean } = {},
): Promise<string[]> {
  const entry = EXECUTABLES.find((e) => e.script === script)!;
  const name = script.replace(/\.ts$/, "");
  return [
    "compile",
    ...(opts.check === false ? ["--no-check"] : []),
    ...(await taskPermissions(entry.task)),
    ...embeddedFiles().map((f) => `--include=${f}`),
    `--output=${outDir}/${name}`,
    script,
  ];
}

/** Outcome of one `deno compile` run. */
export interface CompileResult {
  ok: boolean;
  /** True when it failed because the denort runtime could not be downloaded (or timed out). */
  runtimeUnavailable: boolean;
  /** One line saying what went wrong (empty when ok). */
  message: string;
  /** deno compile's own output. */
  stderr: string;
  seconds: number;
}

/** Options of `compileScript`. */
export interface CompileOptions {
  /** Output folder (default: ROOT/dist). */
  outDir?: string;
  /** Type-check first (default true). */
  check?: boolean;
  /** Stop waiting for a runtime download that shows no progress after this long (ms). */
  downloadTimeoutMs?: number;
  /** Overall limit for one compile (ms). */
  timeoutMs?: number;
}

/** Runs `deno compile` for `script`, recognising a runtime that cannot be fetched. */
export async function compileScript(
  script: ExecutableScript,
  opts: CompileOptions = {},
): Promise<CompileResult> {
  const outDir = opts.outDir ?? `${ROOT}dist`;
  await Deno.mkdir(outDir, { recursive: true });
  const started = performance.now();
  const child = new Deno.Command(Deno.execPath(), {
    args: await compileArgs(script, outDir, { check: opts.check }),
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  let stderr = "";
  let downloading: number | null = null;
  let timedOut: "download" | "overall" | null = null;
  const downloadLimit = opts.downloadTimeoutMs ?? 60_000;
  const overallLimit = opts.timeoutMs ?? 300_000;
  // A firewall that drops packets would make the download hang: watch it and give up.
  const watchdog = setInterval(() => {
    const now = performance.now();
    if (downloading != null && now - downloading > downloadLimit) timedOut = "download";
    else if (now - started > overallLimit) timedOut = "overall";
    if (timedOut) {
      clearInterval(watchdog);
      try {
        child.kill("SIGKILL");
      } catch {
        // already exited
      }
    }
  }, 250);
  const decoder = new TextDecoder();
  const drainStdout = child.stdout.pipeTo(new WritableStream());
  for await (const chunk of child.stderr) {
    stderr += decoder.decode(chunk, { stream: true });
    if (downloading == null && /Download\s+\S*denort/.test(stderr)) downloading = performance.now();
  }
  await drainStdout;
  const status = await child.status;
  clearInterval(watchdog);
  const seconds = (performance.now() - started) / 1000;
  if (status.success && timedOut == null) {
    return { ok: true, runtimeUnavailable: false, message: "", stderr, seconds };
  }
  const version = Deno.version.deno;
  const remedy = `run \`deno task compile\` on a machine with internet access, or set DENORT_BIN ` +
    `to a denort ${version} binary for ${Deno.build.target} (from denort-${Deno.build.target}.zip ` +
    `of Deno's v${version} release)`;
  const denortBin = Deno.env.get("DENORT_BIN");
  if (denortBin && /denort/i.test(stderr) && timedOut == null) {
    return {
      ok: false,
      runtimeUnavailable: true,
      message: `cannot build executables: DENORT_BIN=${denortBin} is unusable ` +
        `(${downloadFailureCause(stderr)}); set it to a denort ${version} binary for ` +
        `${Deno.build.target}, or unset it on a machine with internet access`,
      stderr,
      seconds,
    };
  }
  if (timedOut === "download" || isRuntimeDownloadFailure(stderr)) {
    const cause = timedOut === "download"
      ? `no answer within ${Math.round(downloadLimit / 1000)} s`
      : downloadFailureCause(stderr);
    return {
      ok: false,
      runtimeUnavailable: true,
      message: `cannot build executables: deno compile could not download its runtime ` +
        `(denort ${version}) from dl.deno.land (${cause}); ${remedy}`,
      stderr,
      seconds,
    };
  }
  if (timedOut === "overall") {
    return {
      ok: false,
      runtimeUnavailable: false,
      message: `deno compile ${script} did not finish within ${Math.round(overallLimit / 1000)} s`,
      stderr,
      seconds,
    };
  }
  const first = stderr.split("\n").find((l) => /^error/i.test(l.trim()))?.trim()
    .replace(/^error:\s*/i, "") ?? "see its output above";
  const cause = /Caused by/.test(stderr) ? ` (${downloadFailureCause(stderr)})` : "";
  return {
    ok: false,
    runtimeUnavailable: false,
    message: `deno compile ${script} failed: ${first}${cause}`,
    stderr,
    seconds,
  };
}

/** True when deno compile's output says the base runtime could not be fetched or opened. */
export function isRuntimeDownloadFailure(stderr: string): boolean {
  return /Setting up base binary/i.test(stderr) ||
    (/denort/i.test(stderr) && /error sending request|dns error|timed out|connect/i.test(stderr));
}

/** The innermost cause in deno compile's "Caused by:" chain, in a few words. */
function downloadFailureCause(stderr: string): string {
  const causes = stderr.split("\n")
    .map((l) => /^\s*\d+:\s*(.+)$/.exec(l)?.[1]?.trim())
    .filter((c): c is string => c != null && c !== "<unknown>");
  return causes.at(-1) ?? "network error";
}

async function main(): Promise<number> {
  for (const { script } of EXECUTABLES) {
    const result = await compileScript(script);
    if (!result.ok) {
      if (!result.runtimeUnavailable) console.error(result.stderr.trimEnd());
      console.error(`error: ${result.message}`);
      return 1;
    }
    console.error(`built dist/${script.replace(/\.ts$/, "")} (${result.seconds.toFixed(1)} s)`);
  }
  return 0;
}

if (import.meta.main) Deno.exit(await main());
