/**
 * Whether the native backend can run here: why not (libdnnl missing or unsupported), or null.
 * Tests that need it skip with that reason.
 */
import { openOneDnn } from "../../lib/backends/native/native_kernels.ts";

/** Why the native backend cannot start here, or null when it can. */
export function nativeMissing(): string | null {
  try {
    openOneDnn();
    return null;
  } catch (err) {
    return (err as Error).message;
  }
}

/** `nativeMissing()`, printing "skipping <what>: <why>" when it is not null. */
export function nativeMissingFor(what: string): string | null {
  const why = nativeMissing();
  if (why != null) console.log(`skipping ${what}: ${why}`);
  return why;
}
