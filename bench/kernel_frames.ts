/**
 * Which tfjs kernel is running, during a `tf.profile`: tf.profile lists kernels flat, in the
 * order they finish, but kernels run inside others (the gradient tape's clones, an `Identity`
 * inside each kernel whose inputs it saves; tf.customGrad's forward, listed as a scope after the
 * kernels it ran), and each one's kernelTimeMs includes those inside it. Wrapping the engine's
 * profiler (its `profileKernel`, which times each kernel, runs them synchronously) for the
 * profile only gives each kernel a frame: its index in the list once it finishes, and its
 * parent. bench/step_profile.ts attributes oneDNN calls and nested kernels with them.
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";

/** A kernel of the profile: `index` in tf.profile's list (−1 until it finishes), its parent. */
export interface KernelFrame {
  index: number;
  parent: KernelFrame | null;
}

/** The frames seen so far; `current()` is the innermost running kernel's, null outside. */
export interface KernelTracker {
  current(): KernelFrame | null;
  /** Parent index of each listed kernel (null: top level), once the profile has finished. */
  parents(count: number): (number | null)[];
  restore(): void;
}

type ProfileKernel = (name: string, inputs: unknown, f: () => unknown) => unknown;

/** The engine's parts read here (tfjs-core 4.x; `profiler` is private in its types). */
interface EngineInternals {
  profiler: { profileKernel: ProfileKernel };
  state: { activeProfile: { kernels: unknown[] } };
}

/** Starts tracking; call `restore` when the profile is done (the profiler's method returns). */
export function trackKernels(): KernelTracker {
  const engine = tf.engine() as unknown as EngineInternals;
  const profiler = engine.profiler;
  if (Object.hasOwn(profiler, "profileKernel")) throw new Error("kernels are already tracked");
  const original = profiler.profileKernel;
  const stack: KernelFrame[] = [];
  const frames: KernelFrame[] = [];
  profiler.profileKernel = (name, inputs, f) => {
    const frame: KernelFrame = { index: -1, parent: stack.at(-1) ?? null };
    stack.push(frame);
    try {
      return original.call(profiler, name, inputs, f);
    } finally {
      stack.pop();
      // The engine lists the kernel right after this returns; those inside it are listed.
      frame.index = engine.state.activeProfile.kernels.length;
      frames.push(frame);
    }
  };
  return {
    current: () => stack.at(-1) ?? null,
    parents: (count) => {
      const out = new Array<number | null>(count).fill(null);
      for (const f of frames) {
        if (f.index >= 0 && f.index < count) out[f.index] = f.parent?.index ?? null;
      }
      return out;
    },
    restore: () => void delete (profiler as unknown as Record<string, unknown>).profileKernel,
  };
}
