/**
 * Text from outside the program (file names, names read from files) made safe to print: every
 * control character (C0, DEL, C1), and the Unicode controls that reorder or hide text (bidi
 * overrides and isolates, marks), is shown as a visible escape (`\x1b`, `\x07`, `\n`,
 * `\u{202e}`), so an escape sequence or a bell in an image's name never reaches the terminal raw
 * and a newline never splits a line. Other Unicode (accents, CJK) stays as it is. The one
 * escaping for everything printed: entry scripts and `lib/` print names through it, and
 * `runMain` passes every error line through it as well. Idempotent: its output has no control
 * characters left to escape.
 * @module
 */

// C0, DEL, C1; ALM, LRM/RLM, LRE..RLO, LRI..PDI; BOM and the line/paragraph separators.
const CONTROLS =
  // deno-lint-ignore no-control-regex -- matching control characters is the point
  /[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff]/g;

const NAMED: Record<string, string> = { "\n": "\\n", "\r": "\\r", "\t": "\\t" };

/** `text` with its control characters shown as escapes. */
export function shown(text: string): string {
  return text.replace(CONTROLS, (c) => {
    const code = c.charCodeAt(0);
    return NAMED[c] ??
      (code < 0x100 ? `\\x${code.toString(16).padStart(2, "0")}` : `\\u{${code.toString(16)}}`);
  });
}
