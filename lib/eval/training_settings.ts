/**
 * Training settings carried over to validation: the `_results.json` beside a checkpoint knows
 * the image size, architecture, augmentation and precision it was trained with, so a model
 * trained at 64 px is validated at 64 px unless the user says otherwise, a model trained in
 * bf16 is validated in bf16 where the machine can (else float32, with a note), and a model
 * trained with augmentation gets a note when `-c` (the original's center crop for such models)
 * is missing.
 * @module
 */

import { checkFlagValueFromFile, type FlagSpec, flagValueProblem } from "../util/cli.ts";

// Training's flags as validation reads them back (the architecture only names the network).
const ARCH_SETTING: FlagSpec = { kind: "string", default: "densenet121", help: "" };
const AUGMENTATION_SETTING: FlagSpec = { kind: "boolean", default: false, help: "" };

/** What validation takes from the training run. */
export interface TrainingSettings {
  /** The results file read. */
  path: string;
  imageSize: number | null;
  architecture: string | null;
  augmentation: boolean | null;
  /** `--precision` of the training run (absent before the flag existed: float32). */
  precision: string | null;
}

/** `<stamp>_results.json` for `<stamp>_model.pt`, or null for another name. */
export function resultsPathFor(modelPath: string): string | null {
  return modelPath.endsWith("_model.pt") ? modelPath.replace(/_model\.pt$/, "_results.json") : null;
}

/**
 * Reads the settings from the results file beside `modelPath`; null when there is none. Each
 * value goes through its flag's own validation (`specs`, the flags' definitions the command line
 * is parsed with): an image size of 3, 100000, 64.5, "64" or null is one line naming the file,
 * never a crash, an out-of-memory or a silent default. A value the user overrides on the
 * command line (`given`) is not refused (and only named when valid).
 */
export async function readTrainingSettings(
  modelPath: string,
  specs: { image_size: FlagSpec; precision?: FlagSpec },
  given: ReadonlySet<string> = new Set(),
): Promise<TrainingSettings | null> {
  const path = resultsPathFor(modelPath);
  if (path === null) return null;
  let flags: Record<string, unknown>;
  try {
    if (!(await Deno.stat(path)).isFile) return null; // never open a FIFO or a device
    flags = JSON.parse(await Deno.readTextFile(path)).flags ?? {};
  } catch {
    return null; // absent or not ours: the original tool writes no results JSON
  }
  if (typeof flags !== "object" || flags === null || Array.isArray(flags)) return null;
  const name = path.split("/").pop();
  const read = <T>(key: string, spec: FlagSpec, remedy: string): T | null => {
    if (!(key in flags)) return null;
    // Overridden on the command line: only named (in a note) when valid, never refused.
    if (given.has(key)) return flagValueProblem(spec, flags[key]) === null ? flags[key] as T : null;
    checkFlagValueFromFile(key, spec, flags[key], path, remedy);
    return flags[key] as T;
  };
  const fix = `repair ${name} or pass --image_size`;
  return {
    path,
    imageSize: read<number>("image_size", specs.image_size, fix),
    // A resumed run keeps the checkpoint's network whatever --arch said.
    architecture: flags.saved_model
      ? null
      : read<string>("arch", ARCH_SETTING, `repair or remove ${name}`),
    augmentation: read<boolean>("augmentation", AUGMENTATION_SETTING, `repair ${name} or pass -c`),
    precision: specs.precision
      ? read<string>("precision", specs.precision, `repair ${name} or pass --precision`)
      : null,
  };
}

/** True when `--name` or `--name=…` is among `args` (a default is not a choice). */
export function flagGiven(args: readonly string[], name: string): boolean {
  return args.some((a) => a === `--${name}` || a.startsWith(`--${name}=`));
}

/** What validation runs with, taken from the user's flags and the training run's record. */
export interface ValidationSettings {
  imageSize: number;
  /** `--precision`, or the training run's where the user gave none. */
  precision: string;
  /** The precision came from the training record: float32 where bf16 cannot run, not refused. */
  precisionCarried: boolean;
  /** Where the settings come from, and notes, for the user. */
  lines: string[];
}

/** The settings to validate with and the lines that say where they and the notes come from. */
export function validationSettings(
  trained: TrainingSettings | null,
  user: {
    imageSize: number;
    imageSizeGiven: boolean;
    centerCrop: boolean;
    precision?: string;
    precisionGiven?: boolean;
  },
): ValidationSettings {
  const asked = user.precision ?? "f32";
  const carried = trained?.precision != null && user.precisionGiven !== true &&
    trained.precision !== asked;
  const precision = carried ? trained!.precision! : asked;
  if (trained === null) {
    return { imageSize: user.imageSize, precision, precisionCarried: false, lines: [] };
  }
  const name = trained.path.split("/").pop();
  const lines: string[] = [];
  let imageSize = user.imageSize;
  const arch = trained.architecture ? `, architecture ${trained.architecture}` : "";
  if (trained.imageSize !== null && !user.imageSizeGiven) {
    imageSize = trained.imageSize;
    lines.push(
      `Settings from ${name}: image size ${imageSize}${arch} (override with --image_size).`,
    );
  } else if (trained.imageSize !== null && trained.imageSize !== user.imageSize) {
    lines.push(
      `--image_size ${user.imageSize} overrides the training image size ${trained.imageSize} ` +
        `(${name}).`,
    );
  }
  if (carried) {
    lines.push(
      `Precision from ${name}: ${precision} (override with --precision; float32 where this ` +
        "machine has no bf16).",
    );
  }
  if (trained.augmentation === true && !user.centerCrop) {
    lines.push(
      "note: the model was trained with augmentation (-a); the original validates such models " +
        "with -c (resize, then center crop).",
    );
  }
  return { imageSize, precision, precisionCarried: carried, lines };
}
