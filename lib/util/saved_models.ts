/**
 * Names and lookup of saved models: `<save_dir>/<YYYY_MMDD_HHMMSS>[_debug]_model.pt` with its
 * `_results.json`, `_curves.svg` and resumable `_last.pt` beside it, as the original tool names
 * them; a run started in the same second as another gets `_2`, `_3`, … after its stamp.
 * @module
 */
import { UserError } from "./errors.ts";
import { probeLock } from "./atomic_file.ts";
import { checkInputFile } from "./input_files.ts";

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
  /** Everything an exact continuation needs, rewritten after every epoch (`--resume`). */
  last: string;
  /** Hidden lock file, held (flock) by the process running the run; removed at its exit. */
  lock: string;
}

const RUN_SUFFIXES = ["_model.pt", "_results.json", "_curves.svg", "_last.pt"];

function pathsForBase(base: string, stamp: string): RunPaths {
  const slash = base.lastIndexOf("/");
  return {
    lock: `${base.slice(0, slash + 1)}.${base.slice(slash + 1)}.lock`,
    stamp,
    model: `${base}_model.pt`,
    results: `${base}_results.json`,
    curves: `${base}_curves.svg`,
    last: `${base}_last.pt`,
  };
}

/** Output paths of the run `stamp` in `saveDir`. */
export function runPaths(saveDir: string, stamp: string, debug: boolean): RunPaths {
  return pathsForBase(`${saveDir}/${stamp}${debug ? "_debug" : ""}`, stamp);
}

/** The paths of the run one of whose files is `path` (`…_last.pt`, `…_model.pt`, …). */
export function runPathsOf(path: string): RunPaths {
  const suffix = RUN_SUFFIXES.find((s) => path.endsWith(s));
  if (suffix === undefined) {
    throw new UserError(
      `${path} is not a training run's file: pass its <stamp>_last.pt (or _results.json)`,
    );
  }
  const base = path.slice(0, -suffix.length);
  const name = base.slice(base.lastIndexOf("/") + 1);
  return pathsForBase(base, name.replace(/_debug$/, ""));
}

/**
 * Reserves the names of a run started at `date`: the results file is created exclusively, so
 * two runs started in the same second never share (and overwrite) each other's files; the
 * later one gets the next free `_N` suffix. The run's lock is taken (`lockRun`).
 */
export async function reserveRunPaths(
  saveDir: string,
  date: Date,
  debug: boolean,
): Promise<RunPaths> {
  const stamp = runStamp(date);
  for (let n = 1;; n++) {
    const paths = runPaths(saveDir, n === 1 ? stamp : `${stamp}_${n}`, debug);
    if (await anyExists([paths.model, paths.curves, paths.last])) continue;
    try {
      (await Deno.open(paths.results, { write: true, createNew: true })).close();
      lockRun(paths);
      return paths;
    } catch (e) {
      if (!(e instanceof Deno.errors.AlreadyExists)) throw e;
    }
  }
}

async function anyExists(paths: string[]): Promise<boolean> {
  for (const path of paths) {
    try {
      await Deno.lstat(path);
      return true;
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
  }
  return false;
}

/** Files in `dir` whose names end with `suffix` (symbolic links to files included), by mtime. */
async function filesBySuffix(
  dir: string,
  suffix: string,
): Promise<{ path: string; time: number }[]> {
  const out: { path: string; time: number }[] = [];
  try {
    for await (const entry of Deno.readDir(dir)) {
      if (entry.isDirectory || !entry.name.endsWith(suffix)) continue;
      const path = `${dir}/${entry.name}`;
      let info;
      try {
        info = await Deno.stat(path); // follows a symlink
      } catch (e) {
        if (e instanceof Deno.errors.NotFound) continue; // a dangling link
        throw e;
      }
      if (!info.isFile) continue;
      out.push({ path, time: (info.mtime ?? info.birthtime)?.getTime() ?? 0 });
    }
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  return out.sort((a, b) => b.time - a.time || (b.path > a.path ? 1 : b.path < a.path ? -1 : 0));
}

/** The newest `*_model.pt` in `saveDir` by modification time; a UserError when there is none. */
export async function newestSavedModel(saveDir: string): Promise<string> {
  const [best] = await filesBySuffix(saveDir, "_model.pt");
  if (!best) {
    throw new UserError(
      `no saved model (*_model.pt) in ${saveDir}: train one with train_model.ts or pass -s PATH`,
    );
  }
  return best.path;
}

const heldRuns = new Map<string, Deno.FsFile>();

globalThis.addEventListener("unload", () => {
  for (const [path, file] of heldRuns) {
    try {
      Deno.removeSync(path);
      file.close();
    } catch {
      // Already gone.
    }
  }
  heldRuns.clear();
});

/**
 * Takes the lock of a run for this process (the kernel drops it when the process dies, SIGKILL
 * included); false when another live process holds it, i.e. runs it. Where locks cannot be
 * taken, true: the run goes on unprotected.
 */
export function lockRun(paths: RunPaths): boolean {
  if (heldRuns.has(paths.lock)) return true;
  try {
    const file = Deno.openSync(paths.lock, { write: true, create: true });
    if (!file.tryLockSync(true)) {
      file.close();
      return false;
    }
    heldRuns.set(paths.lock, file);
  } catch {
    // A directory without locks (or not writable: the run's own writes will say so).
  }
  return true;
}

/** True while another process holds the run's lock (the run is still going on). */
export function runIsLive(paths: RunPaths): boolean {
  return !heldRuns.has(paths.lock) && probeLock(paths.lock) === "locked";
}

async function runStatus(path: string): Promise<unknown> {
  try {
    return JSON.parse(await Deno.readTextFile(runPathsOf(path).results)).status;
  } catch {
    // A missing or unreadable results file: the run did not finish writing it.
    return null;
  }
}

/**
 * The `_last.pt` of the newest run in `saveDir` that did not complete (its results file says
 * running, interrupted, stopped or failed, or is missing) and that no live process runs; a
 * UserError when there is none.
 */
export async function newestUnfinishedRun(saveDir: string): Promise<string> {
  for (const { path } of await filesBySuffix(saveDir, "_last.pt")) {
    if ((await runStatus(path)) !== "complete" && !runIsLive(runPathsOf(path))) return path;
  }
  throw new UserError(
    `no unfinished run in ${saveDir} (no *_last.pt of a run whose results are not complete): ` +
      `pass --resume PATH to continue a given run`,
  );
}

/** Resolves `-s NAME`: the path as given when it exists, else under `saveDir`. */
export async function resolveSavedModel(name: string, saveDir: string): Promise<string> {
  for (const path of [name, `${saveDir}/${name}`]) {
    let info;
    try {
      info = await Deno.stat(path);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) continue;
      throw e;
    }
    if (info.isDirectory) {
      throw new UserError(
        `${path} is a directory, not a model file: pass a checkpoint in it, such as ` +
          `${path.replace(/\/+$/, "")}/<stamp>_model.pt`,
      );
    }
    // A device or a FIFO is refused before it is opened (a read would never end).
    await checkInputFile(path, "model", "pass a checkpoint file (*.pt)");
    return path;
  }
  throw new UserError(`saved model not found: ${name} (looked as given and in ${saveDir})`);
}
