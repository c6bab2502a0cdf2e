/**
 * Whether bfloat16 convolutions run here: why not (libdnnl missing, or a CPU without bfloat16
 * instructions, where oneDNN would emulate them and `--precision bf16` is refused), or null.
 * Tests that need them skip with that reason.
 * @module
 */
import { nativeMissingFor } from "./native.ts";
import { openOneDnn } from "../../lib/backends/native/native_kernels.ts";

/** Why bf16 cannot run here, printing "skipping <what>: <why>", or null when it can. */
export function bf16Missing(what: string): string | null {
  const why = nativeMissingFor(what);
  if (why != null) return why;
  const dnn = openOneDnn();
  if (dnn.bf16Instructions) return null;
  const reason = `the CPU has no bfloat16 instructions (oneDNN reports ${dnn.isa})`;
  console.log(`skipping ${what}: ${reason}`);
  return reason;
}
