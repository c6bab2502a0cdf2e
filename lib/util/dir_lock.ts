/**
 * One writer per output directory: a process that fills a directory as a whole (preprocessing
 * its dataset and labels directories) holds an exclusive lock on `<dir>/.writer.lock` for its
 * whole run, and a second one is refused with one line naming the holder's pid and the lock
 * file. The kernel drops the lock when its holder dies (SIGKILL included), so a killed run never
 * blocks the next one. The holder removes the file when it ends; a process that opened it just
 * before and locks it after checks that the name still leads to the file it locked, else tries
 * again, so two processes never hold locks on two files of one name.
 * @module
 */
import { UserError } from "./errors.ts";

/** File name of the lock in a locked directory. */
export const WRITER_LOCK_NAME = ".writer.lock";

/** Attempts when the lock file is replaced between opening and locking it. */
const ATTEMPTS = 5;

/** Locks this process holds, by directory (a directory named twice is locked once). */
const held = new Map<string, { file: Deno.FsFile; path: string }>();

/**
 * Takes `dir`'s writer lock for the rest of this process, or throws a `UserError` naming the
 * process that holds it; `flag` names the directory's flag in the message. Where the file
 * system has no locks the run goes on unprotected, as before.
 */
export function lockDirectoryForWriting(dir: string, flag: string): void {
  let real: string;
  try {
    real = Deno.realPathSync(dir);
  } catch {
    real = dir; // not there yet: the caller creates it first
  }
  if (held.has(real)) return;
  const path = `${real.replace(/\/+$/, "")}/${WRITER_LOCK_NAME}`;
  for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
    let file: Deno.FsFile;
    try {
      file = Deno.openSync(path, { read: true, write: true, create: true });
    } catch {
      return; // not writable: the run's own writes say so, with the path
    }
    let locked: boolean;
    try {
      locked = file.tryLockSync(true);
    } catch {
      file.close();
      return; // no locks on this file system
    }
    if (!locked) {
      let holder = "";
      try {
        holder = new TextDecoder().decode(Deno.readFileSync(path)).trim();
      } catch {
        // Unreadable: the message names the lock file alone.
      }
      file.close();
      const pid = /^\d+$/.test(holder) ? `process ${holder}` : "another process";
      throw new UserError(
        `${flag} ${dir} is being written by ${pid} (it holds ${path}); wait for that run to ` +
          `end, or pass another ${flag}`,
      );
    }
    // The holder before may have removed the name after we opened it: then this lock guards
    // nothing; open the name again.
    let same = false;
    try {
      same = Deno.statSync(path).ino === file.statSync().ino;
    } catch {
      // The name is gone: try again.
    }
    if (!same) {
      file.close();
      continue;
    }
    file.truncateSync(0);
    file.writeSync(new TextEncoder().encode(`${Deno.pid}\n`));
    held.set(real, { file, path });
    return;
  }
}

globalThis.addEventListener("unload", () => {
  // Removed while still locked, so no one can lock the name we are leaving.
  for (const { file, path } of held.values()) {
    try {
      Deno.removeSync(path);
    } catch {
      // Gone already.
    }
    file.close();
  }
  held.clear();
});
