/**
 * Atomic file writes: write to a temporary name beside the target, then rename,
 * so an interrupted run never leaves a half-written file under the final name. The temporary
 * name carries the writer's pid, so the leftovers of a killed writer (SIGKILL, power loss) are
 * recognised and removed the next time any script writes into that directory.
 * @module
 */
import { UserError } from "./errors.ts";

/** `.<name>.<pid>.tmp`, the temporary name `tempPathFor` gives. */
const TEMP_NAME = /^\..+\.(\d+)\.tmp$/;

const swept = new Set<string>();

/** Temporary name used while `path` is being written; sweeps dead writers' temps from its dir. */
export function tempPathFor(path: string): string {
  const slash = path.lastIndexOf("/");
  const dir = path.slice(0, slash + 1);
  const base = path.slice(slash + 1);
  removeDeadTemps(dir || ".");
  return `${dir}.${base}.${Deno.pid}.tmp`;
}

/**
 * True unless process `pid` is known to be gone. Only Linux's /proc answers this; elsewhere
 * every writer counts as alive, so a live process's temp file is never removed.
 */
function processAlive(pid: number): boolean {
  if (pid === Deno.pid) return true;
  try {
    Deno.statSync("/proc/self");
  } catch {
    return true;
  }
  try {
    Deno.statSync(`/proc/${pid}`);
    return true;
  } catch {
    return false;
  }
}

/**
 * Removes, once per directory and process, the temp files in `dir` whose writing process is
 * gone. Returns the names removed. Errors (no permission, no directory) are ignored: cleaning
 * up is never a reason to fail a write.
 */
export function removeDeadTemps(dir: string): string[] {
  const key = dir.replace(/\/+$/, "") || "/";
  if (swept.has(key)) return [];
  swept.add(key);
  const removed: string[] = [];
  try {
    for (const entry of Deno.readDirSync(key)) {
      const m = TEMP_NAME.exec(entry.name);
      if (!m || !entry.isFile || processAlive(Number(m[1]))) continue;
      try {
        Deno.removeSync(`${key}/${entry.name}`);
        removed.push(entry.name);
      } catch {
        // Gone already, or not ours to remove.
      }
    }
  } catch {
    // Unreadable or missing directory: nothing to clean.
  }
  return removed;
}

/** Writes `data` to `path` atomically. */
export async function writeFileAtomic(
  path: string,
  data: Uint8Array | string,
): Promise<void> {
  const tmp = tempPathFor(path);
  try {
    if (typeof data === "string") await Deno.writeTextFile(tmp, data);
    else await Deno.writeFile(tmp, data);
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
}

/**
 * Creates directory `path` (and its parents) for the output named by `flag`; a file in the
 * way becomes one line naming it, not "File exists (os error 17)".
 */
export async function ensureDir(path: string, flag: string): Promise<void> {
  try {
    await Deno.mkdir(path, { recursive: true });
    return;
  } catch (e) {
    if (!(e instanceof Deno.errors.AlreadyExists) && !(e instanceof Deno.errors.NotADirectory)) {
      throw e;
    }
  }
  let blocker = path;
  for (let p = path; p && p !== "." && p !== "/"; p = p.slice(0, Math.max(0, p.lastIndexOf("/")))) {
    try {
      if (!Deno.statSync(p).isDirectory) blocker = p;
    } catch {
      // Not there yet: a parent is the file in the way.
    }
  }
  throw new UserError(
    `${flag} ${path}: ${blocker} is a file, not a directory; pass a directory (or move the file)`,
  );
}

/** Returns true when `path` exists. */
export async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}
