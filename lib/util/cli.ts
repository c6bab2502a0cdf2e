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
 * exit code 2 on an unknown flag or a bad value. A leading `--` (from `deno task x -- ...`)
 * is ignored.
 */
export function parseFlags<S extends FlagSpecs>(
  args: string[],
  specs: S,
  usage: string,
  description: string,
): Flags<S & typeof COMMON_FLAGS> {
  const all: FlagSpecs = { ...specs, ...COMMON_FLAGS };
  const argv = args[0] === "--" ? args.slice(1) : args;
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
  const out: Record<string, unknown> = { _: parsed.positionals };
  for (const [name, s] of Object.entries(all)) {
    const raw = parsed.values[name];
    if (raw === undefined) {
      out[name] = s.default ?? (s.kind === "boolean" ? false : s.kind === "list" ? [] : null);
      continue;
    }
    out[name] = convert(name, s, raw as string | boolean | string[]);
  }
  return out as Flags<S & typeof COMMON_FLAGS>;
}

function convert(name: string, s: FlagSpec, raw: string | boolean | string[]): unknown {
  if (s.kind === "boolean") return raw;
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
  if (
    text.trim() === "" || !Number.isFinite(value) || (s.kind === "int" && !Number.isInteger(value))
  ) {
    throw new UserError(
      `invalid value for --${name}: '${text}' (expected ${
        s.kind === "int" ? "an integer" : "a number"
      })`,
      2,
    );
  }
  if ((s.min !== undefined && value < s.min) || (s.max !== undefined && value > s.max)) {
    const range = `${s.min ?? "-inf"}..${s.max ?? "inf"}`;
    throw new UserError(`invalid value for --${name}: ${text} (must be in ${range})`, 2);
  }
  return value;
}
