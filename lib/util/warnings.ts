/**
 * Warnings said once: a condition that repeats every epoch (a class whose threshold falls back
 * to 0.5) is printed the first time for each key, and the repeats are counted for one closing
 * line, so the log keeps its signal.
 * @module
 */

/** Prints each key's first warning; counts the repeats. */
export class OnceWarnings {
  #seen = new Set<string>();
  #repeats = 0;
  readonly #print: (message: string) => void;

  constructor(print: (message: string) => void = (m) => console.warn(m)) {
    this.#print = print;
  }

  /** Warns with `message` unless `key` has warned before. */
  warn(message: string, key: string = message): void {
    if (this.#seen.has(key)) {
      this.#repeats++;
      return;
    }
    this.#seen.add(key);
    this.#print(message);
  }

  /** Number of warnings not printed because their key had warned already. */
  get repeats(): number {
    return this.#repeats;
  }

  /** "N repeated warnings not shown (…)" or null when none repeated. */
  summary(what: string): string | null {
    if (this.#repeats === 0) return null;
    return `${this.#repeats} repeated ${what} warning${this.#repeats === 1 ? "" : "s"} not shown ` +
      `(each is printed once per run)`;
  }
}
