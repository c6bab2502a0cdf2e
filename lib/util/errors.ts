/**
 * User-facing errors: one clear line and a non-zero exit, stack traces only with `--verbose`.
 * @module
 */
import { shown } from "./shown.ts";

/** An error caused by the user's input (a flag, a file, the data): printed as one line. */
export class UserError extends Error {
  /** Process exit code (2 for usage errors, 1 otherwise). */
  readonly exitCode: number;
  constructor(message: string, exitCode = 1) {
    super(message);
    this.name = "UserError";
    this.exitCode = exitCode;
  }
}

/**
 * Untrusted text (a name read from a damaged file) made safe for a one-line message: control
 * and non-ASCII characters become `?`, long text is cut.
 */
export function printable(text: string, max = 200): string {
  const clean = text.replace(/[^\x20-\x7e]/g, "?");
  return clean.length > max ? `${clean.slice(0, max)}…` : clean;
}

/**
 * A failed write as one line naming the file: the system's "No space left on device (os error
 * 28)" says neither which file nor which disk. A full disk, an exceeded quota and a read-only
 * file system become a `UserError` naming `path`; other errors are returned unchanged.
 */
export function writeFailure(err: unknown, path: string): unknown {
  const msg = err instanceof Error ? err.message : String(err);
  const why = /os error 28\b|no space left/i.test(msg)
    ? "no space left on the device"
    : /os error 122\b|quota exceeded/i.test(msg)
    ? "disk quota exceeded"
    : /os error 30\b|read-only file system/i.test(msg)
    ? "read-only file system"
    : null;
  if (why === null) return err;
  return new UserError(
    `${why} while writing ${path}: free space on that disk (or write to another directory) ` +
      `and run again; what was complete before is kept`,
  );
}

/** Replaces an error by a clearer one that names its cause, or returns null. */
export type ErrorExplainer = (err: Error) => Promise<Error | null>;

const explainers: ErrorExplainer[] = [];

/**
 * Registers `explain` for `explainError` (idempotent). A backend registers one that knows what
 * its bare errors mean, e.g. the GPU fault behind tfjs's "validation error occurred".
 */
export function addErrorExplainer(explain: ErrorExplainer): void {
  if (!explainers.includes(explain)) explainers.push(explain);
}

/** `err` as an Error, replaced by the first registered explainer's clearer one if any. */
export async function explainError(err: unknown): Promise<Error> {
  const e = err instanceof Error ? err : new Error(String(err));
  for (const explain of explainers) {
    const clearer = await explain(e).catch(() => null);
    if (clearer != null) return clearer;
  }
  return e;
}

/** Runs a script's main function; turns errors into one line on stderr and an exit code. */
export async function runMain(
  main: (args: string[]) => Promise<void> | void,
  args: string[] = Deno.args,
): Promise<void> {
  const verbose = args.includes("--verbose");
  try {
    await main(args);
  } catch (err) {
    const e = await explainError(err);
    if (verbose) {
      console.error(e.stack ?? e.message);
      if (e.cause instanceof Error && e.cause !== e) console.error(`caused by: ${e.cause.stack}`);
    }
    const line = e instanceof UserError ? e.message : `${e.name}: ${e.message}`;
    // Names in messages come from outside (file names, file contents): escaped, one line.
    console.error(`error: ${shown(line.split("\n")[0])}`);
    if (!verbose && !(e instanceof UserError)) {
      console.error("(run with --verbose for details)");
    }
    Deno.exit(e instanceof UserError ? e.exitCode : 1);
  }
}
