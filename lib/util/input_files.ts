/**
 * Input files are stat'ed before any read, and only regular files (after symbolic links) are
 * read: `/dev/zero` or `/dev/urandom` would be read until memory runs out, and opening a FIFO
 * blocks until another process writes to it. Every reader of a user-named file (checkpoints,
 * images, label CSVs, shards, results files) goes through `checkInputFile` or `readInputFile`.
 * @module
 */
import { UserError } from "./errors.ts";
import { shown } from "./shown.ts";

/** What a non-regular file is, in words (null for a regular file). */
export function specialKind(info: Deno.FileInfo): string | null {
  if (info.isFile) return null;
  if (info.isDirectory) return "a directory";
  if (info.isFifo) return "a named pipe (FIFO)";
  if (info.isCharDevice) return "a character device";
  if (info.isBlockDevice) return "a block device";
  if (info.isSocket) return "a socket";
  return "not a regular file";
}

/**
 * Stats `path` (following links) and returns its info when it is a regular file; otherwise a
 * one-line UserError: `what` names the input (e.g. "checkpoint", "image"), `hint` says what to
 * give instead. A missing file or a dangling link is `<what> not found: PATH`.
 */
export async function checkInputFile(
  path: string,
  what: string,
  hint = `give a ${what} file`,
): Promise<Deno.FileInfo> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      const link = await Deno.lstat(path).then((l) => l.isSymlink, () => false);
      if (link) {
        const target = await Deno.readLink(path).catch(() => "?");
        throw new UserError(
          `${what} ${shown(path)} is a symbolic link to ${shown(target)}, which does not ` +
            `exist; fix or remove the link`,
        );
      }
      throw new UserError(`${what} not found: ${shown(path)}`);
    }
    if (e instanceof Deno.errors.FilesystemLoop || /symbolic links/i.test(String(e))) {
      throw new UserError(
        `${what} ${shown(path)} is a loop of symbolic links; fix or remove the link`,
      );
    }
    if (e instanceof Deno.errors.PermissionDenied) {
      throw new UserError(`cannot read ${what} ${shown(path)}: permission denied`);
    }
    throw e;
  }
  const kind = specialKind(info);
  if (kind !== null) {
    throw new UserError(`${what} ${shown(path)} is ${kind}, not a regular file; ${hint}`);
  }
  return info;
}

/**
 * For readers with their own messages for a missing file or a directory: refuses only a device,
 * a FIFO or a socket (after links), before the caller opens it.
 */
export async function refuseSpecialFile(path: string, what: string, hint?: string): Promise<void> {
  const info = await Deno.stat(path).catch(() => null);
  if (info !== null && !info.isFile && !info.isDirectory) {
    await checkInputFile(path, what, hint);
  }
}

/** Reads a regular file after `checkInputFile`; the same one-line errors. */
export async function readInputFile(
  path: string,
  what: string,
  hint?: string,
): Promise<Uint8Array> {
  await checkInputFile(path, what, hint);
  try {
    return await Deno.readFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new UserError(`${what} not found: ${shown(path)}`);
    if (e instanceof Deno.errors.PermissionDenied) {
      throw new UserError(`cannot read ${what} ${shown(path)}: permission denied`);
    }
    throw e;
  }
}

/** `readInputFile` as UTF-8 text. */
export async function readInputText(path: string, what: string, hint?: string): Promise<string> {
  return new TextDecoder().decode(await readInputFile(path, what, hint));
}
