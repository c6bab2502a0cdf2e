/**
 * When to run a family of oneDNN primitives on one thread instead of all: after one of them
 * stalled on all threads.
 *
 * Why: oneDNN 2.x's bfloat16 backward-weights convolutions (`jit_bf16`) reduce across their
 * threads with spinning barriers. When another thread wants the same cores (any other process,
 * or a thread of our own), the waiting thread spins away whole scheduler quanta, barrier after
 * barrier: measured on the 2-core VM, a DenseNet-121 training step's backward-weights took
 * 0.27–0.35 s on 2 threads when it ran clean, but 2.5–12 s in most runs on a busy machine (and
 * in some at load 1), against 0.68–0.82 s on 1 thread at load 5. On a quiet machine 2 threads
 * are 1.7–2× faster than 1. oneDNN fixes a primitive's thread count when it creates it, so the
 * caller keeps one primitive of each count per shape and asks this guard which to run.
 *
 * Each shape runs on all threads first, then once on one thread (its reference). An all-threads
 * call more than `STALL` times (and `STALL_MS`) slower than the shape's best at either count is
 * a stall: the family then runs on one thread for the next `backoff` calls, after which one call
 * tries all threads again; the backoff doubles while those tries stall (a try costs one stall)
 * and resets after a clean one.
 * @module
 */

/**
 * How much slower than the shape's best a call must be to count as a stall, in ratio and in
 * milliseconds (a stall loses scheduler quanta, milliseconds each; a sub-millisecond call that
 * met a page fault or an interrupt did not stall).
 */
const STALL = 3;
const STALL_MS = 2;
/** Calls on one thread after a stall: at first, and at most (~0.5 s and ~2 min of steps). */
const BACKOFF = 240;
const BACKOFF_MAX = 240 * 64;

/** The best milliseconds seen for one shape, on all threads and on one. */
interface Best {
  all: number;
  one: number;
}

/** The guard of one family of primitives (shapes by key). */
export class StallGuard {
  #best = new Map<string, Best>();
  #calls = 0;
  /** Calls up to this count run on one thread. */
  #singleUntil = 0;
  #backoff = BACKOFF;
  /** Stalls seen (for reports and tests). */
  stalls = 0;

  /** Whether the next call of shape `key` should run on one thread. */
  singleThread(key: string): boolean {
    this.#calls++;
    const best = this.#best.get(key);
    if (best == null || best.all === Infinity) return false;
    if (best.one === Infinity) return true; // the shape's one-thread reference, once
    return this.#calls <= this.#singleUntil;
  }

  /** Records that a call of shape `key` took `ms` on one thread (`single`) or on all. */
  record(key: string, single: boolean, ms: number): void {
    let best = this.#best.get(key);
    if (best == null) this.#best.set(key, best = { all: Infinity, one: Infinity });
    if (single) {
      best.one = Math.min(best.one, ms);
      return;
    }
    const ref = Math.min(best.all, best.one);
    const stalled = ms > STALL * ref && ms - ref > STALL_MS;
    best.all = Math.min(best.all, ms);
    if (stalled) {
      this.stalls++;
      this.#singleUntil = this.#calls + this.#backoff;
      this.#backoff = Math.min(2 * this.#backoff, BACKOFF_MAX);
    } else if (this.#calls > this.#singleUntil) {
      this.#backoff = BACKOFF;
    }
  }

  /** Whether calls now run on one thread after a stall. */
  get holding(): boolean {
    return this.#calls < this.#singleUntil;
  }
}
