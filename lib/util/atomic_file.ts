/**
 * Atomic file writes: write to a temporary name beside the target, then rename,
 * so an interrupted run never leaves a half-written file under the final name. The temporary
 * name carries the writer's pid, and while a temp file may exist its writer holds a lock on
 * `<dir>/.<pid>.alive` (the kernel drops it when the process dies, SIGKILL included), so the
 * leftovers of a killed writer are recognised, and removed, the next time any script writes
 * into that directory; a live process's temp files never are. (A lock, not /proc: Deno's
 * scoped permissions do not reach /proc.)
 * @module
 */
import { UserError, writeFailure } from "./errors.ts";

/** `.<name>.<pid>.tmp`, the temporary name `tempPathFor` gives. */
const TEMP_NAME = /^\..+\.(\d+)\.tmp$/;
/** `.<pid>.alive`, locked by process pid while it may have temp files in the directory. */
const ALIVE_NAME = /^\.(\d+)\.alive$/;
/** An unlocked alive file younger than this may be one whose owner is just locking it. */
const ALIVE_GRACE_MS = 60_000;

/** This process's locks: per directory, the open alive file and how many temps may be open. */
const held = new Map<string, { file: Deno.FsFile; path: string; users: number }>();
const swept = new Set<string>();

function dirKey(dir: string): string {
  return dir.replace(/\/+$/, "") || (dir.startsWith("/") ? "/" : ".");
}

/**
 * Temporary name used while `path` is being written. Sweeps dead writers' temps from its
 * directory (once per process) and holds this process's lock there: until `releaseTemp`, or
 * for good when the caller never releases (a writer that keeps its temp files a long time).
 */
export function tempPathFor(path: string): string {
  const slash = path.lastIndexOf("/");
  const dir = path.slice(0, slash + 1);
  const base = path.slice(slash + 1);
  acquire(dirKey(dir));
  return `${dir}.${base}.${Deno.pid}.tmp`;
}

/** Marks the temp file of `tempPathFor(path)` as gone (renamed or removed). */
export function releaseTemp(path: string): void {
  const key = dirKey(path.slice(0, path.lastIndexOf("/") + 1));
  const entry = held.get(key);
  if (!entry || --entry.users > 0) return;
  held.delete(key);
  closeAndRemove(entry);
}

function acquire(key: string): void {
  if (!swept.has(key)) {
    swept.add(key);
    removeDeadTemps(key);
  }
  const entry = held.get(key);
  if (entry) {
    entry.users++;
    return;
  }
  const path = `${key}/.${Deno.pid}.alive`;
  try {
    // truncate refreshes mtime, so a stale file of an earlier process with this pid looks new.
    const file = Deno.openSync(path, { write: true, create: true, truncate: true });
    if (!file.tryLockSync(true)) {
      file.close();
      return;
    }
    held.set(key, { file, path, users: 1 });
  } catch {
    // Not writable yet (the write itself will say so) or no locks here: no cleanup later.
  }
}

function closeAndRemove(entry: { file: Deno.FsFile; path: string }): void {
  try {
    Deno.removeSync(entry.path);
  } catch {
    // Already gone.
  }
  try {
    entry.file.close();
  } catch {
    // Already closed.
  }
}

globalThis.addEventListener("unload", () => {
  for (const entry of held.values()) closeAndRemove(entry);
  held.clear();
});

/**
 * Whether another process holds the flock of `path`: "locked", "free" (its holder is gone:
 * the kernel drops a dead process's locks), or "absent"/"unknown" (no file, or no locks here).
 */
export function probeLock(path: string): "locked" | "free" | "absent" | "unknown" {
  let file: Deno.FsFile;
  try {
    file = Deno.openSync(path, { read: true });
  } catch (e) {
    return e instanceof Deno.errors.NotFound ? "absent" : "unknown";
  }
  try {
    if (!file.tryLockSync(true)) return "locked";
    file.unlockSync();
    return "free";
  } catch {
    return "unknown";
  } finally {
    file.close();
  }
}

/** A temp file is removed only when its writer certainly died: its alive file is unlocked. */
function writerAlive(dir: string, pid: number): boolean {
  return pid === Deno.pid || probeLock(`${dir}/.${pid}.alive`) !== "free";
}

/**
 * Removes the temp files in `dir` whose writing process is gone, and that process's stale
 * alive file. Returns the names removed. Errors (no permission, no directory) are ignored:
 * cleaning up is never a reason to fail a write.
 */
export function removeDeadTemps(dir: string): string[] {
  const removed: string[] = [];
  const remove = (name: string) => {
    try {
      Deno.removeSync(`${dir}/${name}`);
      removed.push(name);
    } catch {
      // Gone already, or not ours to remove.
    }
  };
  try {
    const entries = [...Deno.readDirSync(dir)];
    for (const entry of entries) {
      const m = TEMP_NAME.exec(entry.name);
      if (m && entry.isFile && !writerAlive(dir, Number(m[1]))) remove(entry.name);
    }
    for (const entry of entries) {
      const m = ALIVE_NAME.exec(entry.name);
      if (!m || !entry.isFile || writerAlive(dir, Number(m[1]))) continue;
      const mtime = Deno.statSync(`${dir}/${entry.name}`).mtime?.getTime() ?? Date.now();
      if (Date.now() - mtime > ALIVE_GRACE_MS) remove(entry.name);
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
    // Users chose `path`; the temp name would only puzzle them (and cannot be granted ahead).
    if (e instanceof Error) e.message = e.message.replaceAll(tmp, path);
    throw writeFailure(e, path);
  } finally {
    releaseTemp(path);
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
