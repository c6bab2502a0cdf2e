/**
 * Progress reporting on stderr: a redrawn bar with count, rate and ETA on a terminal,
 * plain lines (at most every few seconds) when stderr is not a TTY.
 * @module
 */

const encoder = new TextEncoder();

/** Formats seconds as h:mm:ss or m:ss. */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return "?";
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = String(s % 60).padStart(2, "0");
  return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${sec}` : `${m}:${sec}`;
}

export interface ProgressOptions {
  /** Unit counted, e.g. "img" or "batch". */
  unit?: string;
  /** Force plain-line mode (default: when stderr is not a terminal). */
  plain?: boolean;
  /** Seconds between plain lines. */
  plainInterval?: number;
  /** Suppress all output. */
  silent?: boolean;
}

/** A progress bar for `total` items (total may be unknown: 0). */
export class Progress {
  readonly label: string;
  total: number;
  done = 0;
  #start = performance.now();
  #lastDraw = 0;
  #unit: string;
  #plain: boolean;
  #interval: number;
  #silent: boolean;
  #extra = "";
  #drawn = "";

  constructor(label: string, total: number, opts: ProgressOptions = {}) {
    this.label = label;
    this.total = total;
    this.#unit = opts.unit ?? "it";
    this.#plain = opts.plain ?? !Deno.stderr.isTerminal();
    this.#interval = (opts.plainInterval ?? 10) * 1000;
    this.#silent = opts.silent ?? false;
  }

  /** Items per second so far. */
  get rate(): number {
    const secs = (performance.now() - this.#start) / 1000;
    return secs > 0 ? this.done / secs : 0;
  }

  /** Seconds since the start. */
  get elapsed(): number {
    return (performance.now() - this.#start) / 1000;
  }

  /** Advances by `n` items; `extra` is shown after the counts (e.g. "loss 0.1234"). */
  tick(n = 1, extra?: string): void {
    this.done += n;
    if (extra !== undefined) this.#extra = extra;
    const now = performance.now();
    const wait = this.#plain ? this.#interval : 100;
    if (now - this.#lastDraw >= wait || (this.total > 0 && this.done >= this.total)) {
      this.#lastDraw = now;
      this.#draw(false);
    }
  }

  /** Ends the bar with a final line. */
  finish(extra?: string): void {
    if (extra !== undefined) this.#extra = extra;
    this.#draw(true);
  }

  #line(): string {
    const rate = this.rate;
    const count = this.total > 0 ? `${this.done}/${this.total}` : `${this.done}`;
    const eta = this.total > 0 && rate > 0 ? formatDuration((this.total - this.done) / rate) : "?";
    let bar = "";
    if (this.total > 0 && !this.#plain) {
      const width = 24;
      const filled = Math.min(width, Math.round((this.done / this.total) * width));
      bar = `[${"#".repeat(filled)}${"-".repeat(width - filled)}] `;
    }
    const rateText = rate >= 10 ? rate.toFixed(0) : rate.toFixed(2);
    const tail = this.#extra ? ` ${this.#extra}` : "";
    return `${this.label}: ${bar}${count} ${this.#unit} | ${rateText} ${this.#unit}/s | ` +
      `elapsed ${formatDuration(this.elapsed)} | ETA ${eta}${tail}`;
  }

  #draw(final: boolean): void {
    if (this.#silent) return;
    const line = this.#line();
    // A plain-mode final line repeating the last one (same count and extra) adds nothing.
    const state = `${this.done}|${this.#extra}`;
    if (final && this.#plain && state === this.#drawn) return;
    this.#drawn = state;
    const text = this.#plain ? `${line}\n` : `\r\x1b[2K${line}${final ? "\n" : ""}`;
    Deno.stderr.writeSync(encoder.encode(text));
  }
}
