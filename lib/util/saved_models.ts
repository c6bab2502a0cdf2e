/**
 * Names and lookup of saved models: `<save_dir>/<YYYY_MMDD_HHMMSS>[_debug]_model.pt` with its
 * `_results.json` and `_curves.svg` beside it, as the original tool names them.
 * @module
 */
import { UserError } from "./errors.ts";

/** The run stamp `YYYY_MMDD_HHMMSS` of the original tool, in local time. */
export function runStamp(date: Date = new Date()): string {
  const p = (n: number) => String(n).padStart(2, "0");
  return `${date.getFullYear()}_${p(date.getMonth() + 1)}${p(date.getDate())}_` +
    `${p(date.getHours())}${p(date.getMinutes())}${p(date.getSeconds())}`;
}

/** Paths of one training run's outputs. */
export interface RunPaths {
  stamp: string;
  model: string;
  results: string;
  curves: string;
}

/** Output paths for a run started now. */
export function runPaths(saveDir: string, stamp: string, debug: boolean): RunPaths {
  const base = `${saveDir}/${stamp}${debug ? "_debug" : ""}`;
  return {
    stamp,
    model: `${base}_model.pt`,
    results: `${base}_results.json`,
    curves: `${base}_curves.svg`,
  };
}

/** The newest `*_model.pt` in `saveDir` by modification time; a UserError when there is none. */
export async function newestSavedModel(saveDir: string): Promise<string> {
  let best: { path: string; time: number } | null = null;
  try {
    for await (const entry of Deno.readDir(saveDir)) {
      if (!entry.isFile || !entry.name.endsWith("_model.pt")) continue;
      const path = `${saveDir}/${entry.name}`;
      const info = await Deno.stat(path);
      const time = (info.mtime ?? info.birthtime)?.getTime() ?? 0;
      if (!best || time > best.time || (time === best.time && path > best.path)) {
        best = { path, time };
      }
    }
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  if (!best) {
    throw new UserError(
      `no saved model (*_model.pt) in ${saveDir}: train one with train_model.ts or pass -s PATH`,
    );
  }
  return best.path;
}

/** Resolves `-s NAME`: the path as given when it exists, else under `saveDir`. */
export async function resolveSavedModel(name: string, saveDir: string): Promise<string> {
  for (const path of [name, `${saveDir}/${name}`]) {
    try {
      if ((await Deno.stat(path)).isFile) return path;
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
  }
  throw new UserError(`saved model not found: ${name} (looked as given and in ${saveDir})`);
}
