/**
 * Running the real entry scripts as subprocesses, with the scoped permissions their tasks use,
 * and dataset directories laid out from the fixture shard.
 * @module
 */
import { FIXTURE_SHARD } from "./original_data.ts";
import { LABELS } from "../../config.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const PERMISSIONS = ["--allow-read", "--allow-env", "--allow-ffi", "--allow-sys"];

/** train_model.ts flags for a quick run: the small DenseNet from random weights at 40 px. */
export const TINY_TRAIN_ARGS = [
  "--arch",
  "densenet_tiny",
  "--weights",
  "none",
  "--image_size",
  "40",
] as const;

/** The output of a script run. */
export interface ScriptResult {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Runs `<script>.ts` with `args`; writes are allowed only under `writeDirs`; `permissions`
 * adds flags beyond the common ones (e.g. `--allow-run` for the demo); `env` adds variables to
 * the inherited environment.
 */
export async function runScript(
  script: string,
  args: string[],
  writeDirs: string[],
  opts: {
    cwd?: string;
    permissions?: string[];
    timeoutMs?: number;
    env?: Record<string, string>;
  } = {},
): Promise<ScriptResult> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      ...PERMISSIONS,
      ...(opts.permissions ?? []),
      ...(writeDirs.length ? [`--allow-write=${writeDirs.join(",")}`] : []),
      `${ROOT}${script}`,
      ...args,
    ],
    cwd: opts.cwd ?? ROOT,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", ...opts.env },
    // A hung script is killed, so the test fails instead of hanging the suite.
    signal: opts.timeoutMs ? AbortSignal.timeout(opts.timeoutMs) : undefined,
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/**
 * `validate_model.ts -s model --images files` on the wasm backend (plus `extra` flags): each
 * image's 14 probabilities, in `files` order, from its `--json`.
 */
export async function cliPredictions(
  model: string,
  files: string[],
  extra: string[] = [],
): Promise<number[][]> {
  const dir = await Deno.makeTempDir({ prefix: "cxr_cli_predictions_" });
  try {
    const r = await runScript("validate_model.ts", [
      "-s",
      model,
      "--backend",
      "wasm",
      ...extra,
      "--json",
      `${dir}/p.json`,
      "--images",
      ...files,
    ], [dir]);
    if (r.code !== 0) throw new Error(`validate_model.ts --images failed: ${r.stderr}`);
    const doc = JSON.parse(await Deno.readTextFile(`${dir}/p.json`));
    const by = new Map<string, number[]>(
      doc.images.map((rec: { image: string; probabilities: Record<string, number> }) => [
        rec.image,
        LABELS.map((l) => rec.probabilities[l]),
      ]),
    );
    return files.map((f) => by.get(f)!);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** validate_model.ts's `--predictions` CSV: its image keys (no `.png`) and probability rows. */
export function readPredictionsCsv(text: string): { keys: string[]; rows: number[][] } {
  const lines = text.trim().split("\n");
  if (lines[0] !== ["Image Index", ...LABELS].join(",")) {
    throw new Error(`unexpected predictions header: ${lines[0]}`);
  }
  const rows = lines.slice(1).map((l) => l.split(","));
  return {
    keys: rows.map((r) => r[0].replace(/\.png$/, "")),
    rows: rows.map((r) => r.slice(1).map(Number)),
  };
}

/** A temporary dataset directory with the fixture shard under the given subset names. */
export async function fixtureDatasetDir(subsets: string[]): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "cxr_ds_" });
  for (const subset of subsets) {
    await Deno.copyFile(FIXTURE_SHARD, `${dir}/ChestXray14_${subset}_000.tar`);
  }
  return dir;
}

/** Path of the shared 28 MB seed checkpoint, or null (with a message) when it is absent. */
export function seedModelPath(): string | null {
  const path = new URL("../../../shared/fixtures/torch/seed_model.pt", import.meta.url).pathname;
  try {
    Deno.statSync(path);
    return path;
  } catch {
    console.log(`skipping seed_model.pt tests: ${path} is absent`);
    return null;
  }
}

/** Collects an async iterable into an array. */
export async function collect<T>(items: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of items) out.push(x);
  return out;
}

/** A script started in the background, its stdout read until a line appeared. */
export interface StartedScript {
  child: Deno.ChildProcess;
  /** What the script printed on stdout so far. */
  stdout: string;
  /** Reads stdout to its end (after a signal) and returns the exit status. */
  finish(): Promise<Deno.CommandStatus>;
}

/**
 * Starts `<script>.ts` with `args` (writes only under `writeDirs`) and returns once its stdout
 * matches `until` (or it ended), so a test can signal it at that point of its run.
 */
export async function startScriptUntil(
  script: string,
  args: string[],
  writeDirs: string[],
  until: RegExp,
): Promise<StartedScript> {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      ...PERMISSIONS,
      ...(writeDirs.length ? [`--allow-write=${writeDirs.join(",")}`] : []),
      `${ROOT}${script}`,
      ...args,
    ],
    cwd: ROOT,
    stdin: "null",
    stdout: "piped",
    stderr: "null",
    env: { NO_COLOR: "1" },
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let stdout = "";
  while (!until.test(stdout)) {
    const { value, done } = await reader.read();
    if (done) break;
    stdout += value;
  }
  return {
    child,
    stdout,
    async finish() {
      while (!(await reader.read()).done);
      reader.releaseLock();
      return await child.status;
    },
  };
}
