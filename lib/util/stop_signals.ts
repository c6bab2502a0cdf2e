/**
 * Graceful stops: Ctrl-C (SIGINT), `kill` (SIGTERM) and a closed terminal (SIGHUP) all ask a
 * long run to finish its current step and save; a second signal exits at once. The exit code
 * is the shell's 128 + signal number (130, 143, 129).
 * @module
 */

const SIGNAL_NUMBERS = { SIGHUP: 1, SIGINT: 2, SIGTERM: 15 } as const;

export type StopSignal = keyof typeof SIGNAL_NUMBERS;

/** Listens for the stop signals until `dispose()`. */
export class StopSignals {
  /** The first signal received, or null. */
  signal: StopSignal | null = null;
  readonly #listeners: [StopSignal, () => void][] = [];

  /** `onFirst` is told about the first signal (e.g. to print what happens now). */
  constructor(onFirst: (signal: StopSignal) => void) {
    for (const name of Object.keys(SIGNAL_NUMBERS) as StopSignal[]) {
      const listener = () => {
        if (this.signal !== null) Deno.exit(exitCodeFor(name));
        this.signal = name;
        try {
          onFirst(name);
        } catch {
          // A closed terminal (SIGHUP) cannot be written to; stopping matters, not the line.
        }
      };
      try {
        Deno.addSignalListener(name, listener);
        this.#listeners.push([name, listener]);
      } catch {
        // Not every platform has every signal (Windows has only SIGINT).
      }
    }
  }

  /** True once a stop was asked for. */
  get requested(): boolean {
    return this.signal !== null;
  }

  /** 128 + the signal's number, or 0 when none came. */
  get exitCode(): number {
    return this.signal === null ? 0 : exitCodeFor(this.signal);
  }

  /** Removes the listeners. */
  dispose(): void {
    for (const [name, listener] of this.#listeners) Deno.removeSignalListener(name, listener);
    this.#listeners.length = 0;
  }
}

function exitCodeFor(signal: StopSignal): number {
  return 128 + SIGNAL_NUMBERS[signal];
}
