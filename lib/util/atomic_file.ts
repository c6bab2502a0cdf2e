/**
 * Atomic file writes: write to a temporary name beside the target, then rename,
 * so an interrupted run never leaves a half-written file under the final name.
 * @module
 */

/** Temporary name used while `path` is being written. */
export function tempPathFor(path: string): string {
  const slash = path.lastIndexOf("/");
  const dir = path.slice(0, slash + 1);
  const base = path.slice(slash + 1);
  return `${dir}.${base}.${Deno.pid}.tmp`;
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
    throw e;
  }
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
