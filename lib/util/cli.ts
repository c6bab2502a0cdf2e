/**
 * Command-line flags shared by the three scripts: short and long forms as the original
 * (`-b` / `--batch_size`), typed values with range checks, `-h/--help` with every default,
 * and one-line errors (exit code 2) for unknown flags or bad values.
 * @module
 */
import { parseArgs as nodeParseArgs } from "node:util";
import { UserError } from "./errors.ts";

type FlagKind = "int" | "float" | "string" | "boolean" | "list";

/** One flag: its kind, default, help text and optional constraints. */
export interface FlagSpec {
  kind: FlagKind;
  short?: string;
  default?: number | string | boolean | string[] | null;
  help: string;
  min?: number;
  max?: number;
  choices?: readonly string[];
  /** Name of the value in help output, e.g. PATH. */
  metavar?: string;
  /**
   * Bare arguments are more values of this (list) flag, as `--images *.png` gives them; without
   * such a flag a script refuses them, so a stray word is never silently ignored.
   */
  rest?: boolean;
}

export type FlagSpecs = Record<string, FlagSpec>;

type ValueOf<S extends FlagSpec> = S["kind"] extends "int" | "float" ? number
  : S["kind"] extends "boolean" ? boolean
  : S["kind"] extends "list" ? string[]
  : string;

/** Parsed flags: a typed value for each spec (null when a flag has no default and was not given). */
export type Flags<S extends FlagSpecs> =
  & {
    [K in keyof S]: S[K]["default"] extends null | undefined ? ValueOf<S[K]> | null
      : ValueOf<S[K]>;
  }
  & { _: string[] };

const GIVEN = new WeakMap<object, ReadonlySet<string>>();

/** The flags given on the command line (not defaulted) of a `parseFlags` result. */
export function givenFlags(flags: object): ReadonlySet<string> {
  return GIVEN.get(flags) ?? new Set();
}

/** Flags every script accepts. */
export const COMMON_FLAGS = {
  verbose: { kind: "boolean", default: false, help: "print stack traces on errors" },
  help: { kind: "boolean", short: "h", default: false, help: "show this help and exit" },
} as const satisfies FlagSpecs;

/** Formats the help text of a script. */
export function helpText(usage: string, description: string, specs: FlagSpecs): string {
  const rows = Object.entries(specs).map(([name, s]) => {
    const meta = s.kind === "boolean" ? "" : ` ${s.metavar ?? s.kind.toUpperCase()}`;
    const flag = `${s.short ? `-${s.short}, ` : "    "}--${name}${meta}`;
    const def = s.default === undefined || s.default === null || s.default === false
      ? ""
      : ` (default: ${Array.isArray(s.default) ? s.default.join(" ") : s.default})`;
    const choices = s.choices ? ` {${s.choices.join(",")}}` : "";
    return [flag, `${s.help}${choices}${def}`];
  });
  const width = Math.min(34, Math.max(...rows.map(([f]) => f.length)) + 2);
  const lines = rows.map(([f, h]) =>
    f.length >= width ? `  ${f}\n  ${" ".repeat(width)}${h}` : `  ${f.padEnd(width)}${h}`
  );
  return `usage: ${usage}\n\n${description}\n\noptions:\n${lines.join("\n")}\n`;
}

/**
 * Parses `args` against `specs`. Prints help and exits 0 on `-h`; throws a UserError with
 * exit code 2 on an unknown flag, a bad or empty value, or a bare argument no `rest` flag
 * takes. A leading `--` (from `deno task x -- ...`) is ignored; a negative number after a flag
 * that takes a value is that value (`-b -3`), not a flag.
 */
export function parseFlags<S extends FlagSpecs>(
  args: string[],
  specs: S,
  usage: string,
  description: string,
): Flags<S & typeof COMMON_FLAGS> {
  const all: FlagSpecs = { ...specs, ...COMMON_FLAGS };
  // `deno task NAME -- ARGS` passes the `--` on, after any options the task itself gives (the
  // bench task's `--batch 12`): it separates the task's options from the user's, not options from
  // positionals, so every `--` is dropped and a later option wins over the task's.
  const argv = joinNegativeValues(args.filter((a) => a !== "--"), all);
  const options: Record<
    string,
    { type: "string" | "boolean"; short?: string; multiple?: boolean }
  > = {};
  for (const [name, s] of Object.entries(all)) {
    options[name] = {
      type: s.kind === "boolean" ? "boolean" : "string",
      ...(s.short ? { short: s.short } : {}),
      ...(s.kind === "list" ? { multiple: true } : {}),
    };
  }
  let parsed;
  try {
    parsed = nodeParseArgs({ args: argv, options, allowPositionals: true, strict: true });
  } catch (e) {
    const msg = (e as Error).message.replace(/\. To specify.*$/s, "").split("\n")[0];
    throw new UserError(`${msg} (see --help)`, 2);
  }
  if (parsed.values.help) {
    console.log(helpText(usage, description, all));
    Deno.exit(0);
  }
  const rest = Object.entries(all).find(([, s]) => s.rest);
  if (!rest && parsed.positionals.length > 0) {
    throw new UserError(
      `unexpected argument '${parsed.positionals[0]}': ${
        usage.split(" ")[0]
      } takes only options (see --help)`,
      2,
    );
  }
  const out: Record<string, unknown> = { _: parsed.positionals };
  for (const [name, s] of Object.entries(all)) {
    const raw = parsed.values[name];
    if (raw === undefined) {
      out[name] = s.default ?? (s.kind === "boolean" ? false : s.kind === "list" ? [] : null);
      continue;
    }
    out[name] = convert(name, s, raw as string | boolean | string[]);
  }
  GIVEN.set(out, new Set(Object.keys(parsed.values)));
  return out as Flags<S & typeof COMMON_FLAGS>;
}

/**
 * Rewrites `-b -3` as `--batch_size=-3`, so the option parser sees a value, not a flag (the
 * range check then says what is allowed), and `-b=3` as `--batch_size=3`, as Python's argparse
 * reads it (node's parser would take the value as "=3").
 */
function joinNegativeValues(argv: string[], specs: FlagSpecs): string[] {
  const takesValue = new Map<string, string>();
  for (const [name, s] of Object.entries(specs)) {
    if (s.kind === "boolean") continue;
    takesValue.set(`--${name}`, name);
    if (s.short) takesValue.set(`-${s.short}`, name);
  }
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const name = takesValue.get(argv[i]);
    const short = /^(-[^-])=(.*)$/s.exec(argv[i]);
    if (name !== undefined && i + 1 < argv.length && /^-\.?\d/.test(argv[i + 1])) {
      out.push(`--${name}=${argv[++i]}`);
    } else if (short != null && takesValue.has(short[1])) {
      out.push(`--${takesValue.get(short[1])}=${short[2]}`);
    } else {
      out.push(argv[i]);
    }
  }
  return out;
}

function convert(name: string, s: FlagSpec, raw: string | boolean | string[]): unknown {
  if (s.kind === "boolean") return raw;
  const values = Array.isArray(raw) ? raw : [raw as string];
  // An empty value is almost always an unset shell variable (`-s "$MODEL"`), never a choice.
  if (values.some((v) => v.trim() === "")) {
    throw new UserError(
      `empty value for --${name}: give a ${s.metavar ?? s.kind} or leave the flag out`,
      2,
    );
  }
  if (s.kind === "list") return raw as string[];
  const text = raw as string;
  if (s.kind === "string") {
    if (s.choices && !s.choices.includes(text)) {
      throw new UserError(
        `invalid value for --${name}: '${text}' (choose from ${s.choices.join(", ")})`,
        2,
      );
    }
    return text;
  }
  const value = Number(text);
  const problem = numberProblem(s, value);
  if (problem !== null) {
    const shown = problem.startsWith("expected") ? `'${text}'` : text;
    throw new UserError(`invalid value for --${name}: ${shown} (${problem})`, 2);
  }
  return value;
}

/** What is wrong with a number for an int/float flag (kind, then range), or null. */
function numberProblem(s: FlagSpec, value: number): string | null {
  if (!Number.isFinite(value) || (s.kind === "int" && !Number.isInteger(value))) {
    return `expected ${s.kind === "int" ? "an integer" : "a number"}`;
  }
  if ((s.min !== undefined && value < s.min) || (s.max !== undefined && value > s.max)) {
    const range = s.max === undefined
      ? `≥ ${s.min}`
      : s.min === undefined
      ? `≤ ${s.max}`
      : `in ${s.min}..${s.max}`;
    return `must be ${range}`;
  }
  return null;
}

/**
 * What is wrong with a value read back from a file (a run's `_results.json` or `_last.pt`) for
 * the flag `s`, or null when the command line could have given it: the same kind and range
 * checks as parsing, and the JSON type the parser produces (a string "64" is not an int, null
 * only where the flag has no default).
 */
export function flagValueProblem(s: FlagSpec, value: unknown): string | null {
  if (value === null) return s.default === null ? null : "expected a value, got null";
  switch (s.kind) {
    case "int":
    case "float":
      if (typeof value !== "number") return `expected a number, got ${JSON.stringify(value)}`;
      return numberProblem(s, value);
    case "boolean":
      return typeof value === "boolean" ? null : `expected true or false`;
    case "string":
      if (typeof value !== "string" || value.trim() === "") return "expected a non-empty string";
      return s.choices && !s.choices.includes(value)
        ? `expected one of ${s.choices.join(", ")}`
        : null;
    case "list":
      return Array.isArray(value) && value.every((v) => typeof v === "string")
        ? null
        : "expected a list of strings";
  }
}

/**
 * Checks a setting read back from `source` with its flag's own validation (`flagValueProblem`,
 * the checks parsing applies): a value the command line would refuse is one UserError line
 * naming the file, the setting and what to do.
 */
export function checkFlagValueFromFile(
  name: string,
  s: FlagSpec,
  value: unknown,
  source: string,
  remedy: string,
): void {
  const problem = flagValueProblem(s, value);
  if (problem !== null) {
    throw new UserError(
      `${source}: setting ${name} = ${JSON.stringify(value)} is not a valid --${name} ` +
        `(${problem}); ${remedy}`,
    );
  }
}
