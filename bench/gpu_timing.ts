/**
 * Where a WebGPU step spends its time, for deciding what to speed up on a real GPU:
 * - `encodeSeconds`: how long the CPU takes to issue a step's work (the synchronous part of an
 *   async step, which ends at its first read-back). tfjs submits every few dispatches, so the
 *   GPU runs while the CPU encodes; a step whose encoding takes about its whole wall time is
 *   bound by the CPU (tfjs's per-dispatch bookkeeping), one whose encoding is short is bound by
 *   the GPU.
 * - `gpuProgramTimes`: the GPU time of each compute program a step dispatches, from timestamp
 *   queries (tfjs's `time()`; the adapter needs `timestamp-query`), summed by program.
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";

/** Runs `step` and returns the seconds until it yielded (its CPU-side encoding) and its result. */
export async function encodeSeconds<T>(
  step: () => Promise<T>,
): Promise<{ encode: number; result: T }> {
  const start = performance.now();
  const pending = step();
  const encode = (performance.now() - start) / 1000;
  return { encode, result: await pending };
}

/** GPU milliseconds of one program (a WGSL shader class), summed over its dispatches. */
export interface ProgramTime {
  program: string;
  dispatches: number;
  ms: number;
}

/** GPU time of what `issue` dispatches, by program, most expensive first. */
export interface GpuTimes {
  totalMs: number;
  programs: ProgramTime[];
}

/**
 * Times each dispatch `issue` makes on the GPU (each then gets its own compute pass and
 * submission, so the total is the GPU's busy time, without overlap between dispatches), and
 * waits for `after` (e.g. the step's read-back) before resolving. Null when the backend is not
 * webgpu or its adapter lacks timestamp queries.
 */
export async function gpuProgramTimes(
  issue: () => void,
  after?: () => Promise<unknown>,
): Promise<GpuTimes | null> {
  const backend = tf.backend() as unknown as { supportTimestampQuery?: boolean };
  if (tf.getBackend() !== "webgpu" || backend.supportTimestampQuery !== true) return null;
  const info = await tf.time(issue) as tf.TimingInfo & { getExtraProfileInfo?: () => string };
  await after?.();
  const byProgram = new Map<string, ProgramTime>();
  // tfjs lists the dispatches as "Name: ms, Name: ms, ...".
  for (const entry of (info.getExtraProfileInfo?.() ?? "").split(", ")) {
    const at = entry.lastIndexOf(": ");
    if (at < 0) continue;
    const program = entry.slice(0, at), ms = Number(entry.slice(at + 2));
    const t = byProgram.get(program) ?? { program, dispatches: 0, ms: 0 };
    t.dispatches++;
    t.ms += Number.isFinite(ms) ? ms : 0;
    byProgram.set(program, t);
  }
  const programs = [...byProgram.values()].sort((a, b) => b.ms - a.ms);
  return { totalMs: programs.reduce((s, p) => s + p.ms, 0), programs };
}

/** One line per program: "  Name  12 dispatches  3.4 ms  (25 %)". */
export function formatGpuTimes(t: GpuTimes, top = 12): string[] {
  return t.programs.slice(0, top).map((p) =>
    `  ${p.program.padEnd(28)} ${String(p.dispatches).padStart(5)} dispatches ` +
    `${p.ms.toFixed(1).padStart(9)} ms (${(100 * p.ms / t.totalMs).toFixed(0)} %)`
  );
}
