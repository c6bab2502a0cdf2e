/**
 * Training settings carried over to validation: the `_results.json` beside a checkpoint knows
 * the image size, architecture and augmentation it was trained with, so a model trained at
 * 64 px is validated at 64 px unless the user says otherwise, and a model trained with
 * augmentation gets a note when `-c` (the original's center crop for such models) is missing.
 * @module
 */

/** What validation takes from the training run. */
export interface TrainingSettings {
  /** The results file read. */
  path: string;
  imageSize: number | null;
  architecture: string | null;
  augmentation: boolean | null;
}

/** `<stamp>_results.json` for `<stamp>_model.pt`, or null for another name. */
export function resultsPathFor(modelPath: string): string | null {
  return modelPath.endsWith("_model.pt") ? modelPath.replace(/_model\.pt$/, "_results.json") : null;
}

/** Reads the settings from the results file beside `modelPath`; null when there is none. */
export async function readTrainingSettings(modelPath: string): Promise<TrainingSettings | null> {
  const path = resultsPathFor(modelPath);
  if (path === null) return null;
  let flags: Record<string, unknown>;
  try {
    if (!(await Deno.stat(path)).isFile) return null; // never open a FIFO or a device
    flags = JSON.parse(await Deno.readTextFile(path)).flags ?? {};
  } catch {
    return null; // absent or not ours: the original tool writes no results JSON
  }
  const int = (v: unknown) => (Number.isInteger(v) ? v as number : null);
  return {
    path,
    imageSize: int(flags.image_size),
    // A resumed run keeps the checkpoint's network whatever --arch said.
    architecture: typeof flags.arch === "string" && !flags.saved_model ? flags.arch : null,
    augmentation: typeof flags.augmentation === "boolean" ? flags.augmentation : null,
  };
}

/** True when `--name` or `--name=…` is among `args` (a default is not a choice). */
export function flagGiven(args: readonly string[], name: string): boolean {
  return args.some((a) => a === `--${name}` || a.startsWith(`--${name}=`));
}

/** The image size to validate at and the lines that say where it and the notes come from. */
export function validationSettings(
  trained: TrainingSettings | null,
  user: { imageSize: number; imageSizeGiven: boolean; centerCrop: boolean },
): { imageSize: number; lines: string[] } {
  if (trained === null) return { imageSize: user.imageSize, lines: [] };
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
  if (trained.augmentation === true && !user.centerCrop) {
    lines.push(
      "note: the model was trained with augmentation (-a); the original validates such models " +
        "with -c (resize, then center crop).",
    );
  }
  return { imageSize, lines };
}
