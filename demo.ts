/**
 * demo.ts — the newcomer's first command (`deno task demo`): generates a small SYNTHETIC
 * chest-radiograph-like dataset in the NIH ChestX-ray14 input format, then runs the real
 * `preprocess_data.ts`, `train_model.ts` and `validate_model.ts` on it as subprocesses (the
 * same code paths as real use) and prints the AUROC table, the mean AUROC against the demo's
 * bar and the time taken. The data is not medical data; the model it trains is a toy.
 *
 *   deno task demo                 # about 6½ minutes on a busy 2-core CPU (README)
 *   deno task demo -- --fresh      # regenerate the synthetic images
 * @module
 */
import { fileURLToPath } from "node:url";
import { LABELS, META_FILE_NAME, NUM_CLASSES } from "./config.ts";
import { exists, writeFileAtomic } from "./lib/util/atomic_file.ts";
import { type FlagSpecs, parseFlags } from "./lib/util/cli.ts";
import { runMain, UserError } from "./lib/util/errors.ts";
import { checkOutputPaths } from "./lib/util/output_paths.ts";
import { plural } from "./lib/util/format.ts";
import { BACKENDS } from "./lib/backends/backend.ts";
import { readBoundLabels } from "./lib/data/label_binding.ts";
import { IMAGENET_FILE, weightsCacheDir } from "./lib/model/pretrained_weights.ts";
import { Progress } from "./lib/util/progress.ts";
import { generateSyntheticDataset } from "./lib/data/synthetic_cxr.ts";

/** Mean AUROC (over classes with a defined AUROC) the demo's defaults must reach. */
export const DEMO_AUROC_BAR = 0.75;

/** Exit code when the demo ran but its mean AUROC is below `DEMO_AUROC_BAR`. */
export const BELOW_BAR_EXIT_CODE = 3;

/** Classes with fewer test positives than this get a note: their AUROC is noisy. */
const FEW_POSITIVES = 5;

/** Side of the synthetic PNGs: NIH's 1024. */
const PNG_SIZE = 1024;

/** The repository root, found from this file so that the demo runs from any directory. */
const ROOT = fileURLToPath(new URL(".", import.meta.url));

export const FLAGS = {
  images: {
    kind: "int",
    default: 800,
    min: 20,
    max: 100_000,
    metavar: "N",
    help: "number of synthetic images (split 70/10/20 by patient)",
  },
  epochs: { kind: "int", short: "e", default: 8, min: 1, help: "training epochs" },
  arch: {
    kind: "string",
    default: "densenet_tiny",
    choices: ["densenet121", "densenet_small", "densenet_tiny"],
    help: "network (densenet121 starts from ImageNet weights only when they are cached)",
  },
  image_size: { kind: "int", default: 112, min: 32, max: 1024, help: "network input size" },
  batch_size: { kind: "int", short: "b", default: 16, min: 1, help: "batch size" },
  learning_rate: {
    kind: "float",
    short: "l",
    default: 0.003,
    min: 0,
    help: "initial learning rate (Adam)",
  },
  seed: {
    kind: "int",
    default: 42,
    min: 0,
    max: 2 ** 32 - 1,
    help: "random seed (synthetic data, split, weights, shuffling)",
  },
  backend: {
    kind: "string",
    default: "auto",
    choices: BACKENDS,
    help: "compute backend of training and validation",
  },
  out: {
    kind: "string",
    default: "data/demo",
    metavar: "DIR",
    help: "where the demo's data, shards, models and results go",
  },
  fresh: {
    kind: "boolean",
    default: false,
    help: "regenerate the synthetic images even when they exist with the same settings",
  },
} as const satisfies FlagSpecs;

const USAGE = "demo.ts [options]   (deno task demo -- [options])";
const DESCRIPTION =
  "Runs the whole tool end to end on a small SYNTHETIC chest-radiograph-like dataset (not\n" +
  "medical data): generate it, preprocess_data.ts, train_model.ts, validate_model.ts.\n" +
  `Prints the AUROC table and whether the mean AUROC reaches the demo's bar (${DEMO_AUROC_BAR});` +
  `\nexits ${BELOW_BAR_EXIT_CODE} when it does not, with a failing step's exit code when one fails.`;

/** The settings a generated dataset depends on; a mismatch means it is regenerated. */
export interface SyntheticSettings {
  images: number;
  seed: number;
  png_size: number;
  /** sha256 of `lib/data/synthetic_cxr.ts`, so that a changed generator regenerates the data. */
  generator_sha256: string;
}

/** Name of the settings file written beside the synthetic dataset. */
export const SETTINGS_FILE = "demo_settings.json";

async function sha256Hex(data: Uint8Array): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", data as Uint8Array<ArrayBuffer>);
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

async function readSettings(path: string): Promise<SyntheticSettings | null> {
  try {
    return JSON.parse(await Deno.readTextFile(path)) as SyntheticSettings;
  } catch {
    return null;
  }
}

function sameSettings(a: SyntheticSettings | null, b: SyntheticSettings): boolean {
  return a !== null && a.images === b.images && a.seed === b.seed &&
    a.png_size === b.png_size && a.generator_sha256 === b.generator_sha256;
}

async function removeIfPresent(path: string): Promise<void> {
  try {
    await Deno.remove(path, { recursive: true });
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
}

/** Generates the synthetic dataset unless it exists with the same settings; true if it did. */
async function ensureSyntheticData(
  dir: string,
  settings: SyntheticSettings,
  fresh: boolean,
): Promise<boolean> {
  const settingsPath = `${dir}/${SETTINGS_FILE}`;
  if (
    !fresh && sameSettings(await readSettings(settingsPath), settings) &&
    await exists(`${dir}/meta_data/${META_FILE_NAME}`)
  ) {
    console.log(`Using the SYNTHETIC dataset in ${dir} (same settings; --fresh regenerates it).`);
    return false;
  }
  {
    await removeIfPresent(dir);
    const progress = new Progress("synthetic images", settings.images, { unit: "img" });
    const summary = await generateSyntheticDataset({
      outDir: dir,
      numImages: settings.images,
      seed: settings.seed,
      size: settings.png_size,
      workers: 2,
      onImage: () => progress.tick(),
    });
    progress.finish();
    await writeFileAtomic(`${dir}/${SETTINGS_FILE}`, JSON.stringify(settings, null, 2) + "\n");
    console.log(
      `Wrote ${summary.images} SYNTHETIC images of ${summary.patients} patients ` +
        `(${settings.png_size}×${settings.png_size} grey PNG) to ${dir} — not medical data.`,
    );
  }
  return true;
}

/** Runs one of the real scripts as a subprocess, its output streamed; throws if it fails. */
async function runScript(script: string, args: string[], writeDir: string): Promise<void> {
  const permissions = [
    "--allow-read",
    "--allow-env",
    "--allow-ffi",
    "--allow-sys",
    `--allow-write=${writeDir}`,
  ];
  console.log(`\n$ deno run ${permissions.join(" ")} ${script} ${args.join(" ")}`);
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--config", `${ROOT}deno.json`, ...permissions, `${ROOT}${script}`, ...args],
    stdin: "null",
    stdout: "inherit",
    stderr: "inherit",
  }).spawn();
  const { code, signal } = await child.status;
  if (code !== 0) {
    throw new UserError(
      `${script} failed (exit code ${code}${signal ? `, ${signal}` : ""}); see its output above`,
      code || 1,
    );
  }
}

/** The `*_model.pt` files in `dir`. */
async function modelFiles(dir: string): Promise<Set<string>> {
  const names = new Set<string>();
  try {
    for await (const e of Deno.readDir(dir)) {
      if (e.isFile && e.name.endsWith("_model.pt")) names.add(e.name);
    }
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  return names;
}

/** Validation results, as `validate_model.ts --json` writes them. */
interface ValidationJson {
  n_images: number;
  auroc: (number | null)[];
  mean_auroc_defined: number | null;
}

/** Formats the demo's AUROC table: AUROC and test positives per class. */
export function formatDemoTable(
  auroc: readonly (number | null)[],
  positives: readonly number[],
  nImages: number,
): string {
  const width = Math.max(...LABELS.map((l) => l.length)) + 2;
  const lines = [`${"".padEnd(width)}   AUROC  test positives (of ${nImages})`];
  LABELS.forEach((label, c) => {
    const v = auroc[c];
    const cell = v === null || !Number.isFinite(v) ? "     n/a" : v.toFixed(4).padStart(8);
    lines.push(`${label.padEnd(width)}${cell}  ${String(positives[c]).padStart(6)}`);
  });
  return lines.join("\n");
}

const seconds = (ms: number) => `${(ms / 1000).toFixed(1)} s`;

async function main(args: string[]): Promise<void> {
  const flags = parseFlags(args, FLAGS, USAGE, DESCRIPTION);
  const t0 = performance.now();
  const out = flags.out.replace(/\/+$/, "") || ".";
  const originalDir = `${out}/original_data`;
  const labelsDir = `${out}/labels`;
  const datasetDir = `${out}/datasets`;
  const saveDir = `${out}/saved_models`;
  const resultsPath = `${out}/demo_results.json`;
  const reportPath = `${out}/demo_report.html`;
  await checkOutputPaths([{ flag: "--out", path: out, kind: "dir" }]);
  const times: [string, number][] = [];
  const phase = async (name: string, fn: () => Promise<unknown>) => {
    const start = performance.now();
    await fn();
    times.push([name, performance.now() - start]);
  };

  const imagenetPath = `${weightsCacheDir()}/${IMAGENET_FILE}`;
  const useImagenet = flags.arch === "densenet121" && await exists(imagenetPath);
  console.log(
    "Augmented Chest X-Ray demo on SYNTHETIC data: cartoon chest radiographs drawn by\n" +
      "lib/data/synthetic_cxr.ts, NOT medical data; the model trained here is a toy.",
  );
  console.log(
    useImagenet
      ? `Weights: ImageNet DenseNet-121 from ${imagenetPath}.`
      : `Weights: random initialisation (--weights none): ${
        flags.arch === "densenet121"
          ? `no ImageNet weights cached at ${imagenetPath}`
          : `--arch ${flags.arch} has no ImageNet weights`
      }.`,
  );

  // 1. The synthetic dataset, in the NIH input layout.
  const settings: SyntheticSettings = {
    images: flags.images,
    seed: flags.seed,
    png_size: PNG_SIZE,
    generator_sha256: await sha256Hex(await Deno.readFile(`${ROOT}lib/data/synthetic_cxr.ts`)),
  };
  await phase("synthetic data", () => ensureSyntheticData(originalDir, settings, flags.fresh));

  // 2. The real scripts, as a user runs them. Shards and labels are rebuilt every run so that
  // none is left over from a run with other settings.
  await removeIfPresent(datasetDir);
  await removeIfPresent(labelsDir);
  await Deno.mkdir(saveDir, { recursive: true });
  const writeDir = await Deno.realPath(out);
  // Shards hold the images at the pre-crop size of the network input (256 for 224), so that
  // the transforms see what they see in real use without resizing 256 px images each epoch.
  const storedSize = Math.round((flags.image_size * 256) / 224);
  await phase("preprocess", () =>
    runScript("preprocess_data.ts", [
      "-r",
      String(flags.seed),
      "--image_dir",
      `${originalDir}/images`,
      "--meta_file",
      `${originalDir}/meta_data/${META_FILE_NAME}`,
      "--labels_dir",
      labelsDir,
      "--dataset_dir",
      datasetDir,
      "--image_size",
      String(storedSize),
    ], writeDir));

  const before = await modelFiles(saveDir);
  const common = ["--dataset_dir", datasetDir, "--labels_dir", labelsDir, "--save_dir", saveDir];
  const size = ["--image_size", String(flags.image_size)];
  await phase("train", () =>
    runScript("train_model.ts", [
      "-b",
      String(flags.batch_size),
      "-e",
      String(flags.epochs),
      "-l",
      String(flags.learning_rate),
      "--arch",
      flags.arch,
      "--weights",
      useImagenet ? "imagenet" : "none",
      "--seed",
      String(flags.seed),
      "--backend",
      flags.backend,
      ...size,
      ...common,
    ], writeDir));
  const created = [...await modelFiles(saveDir)].filter((n) => !before.has(n)).sort();
  if (created.length === 0) throw new UserError(`train_model.ts saved no model in ${saveDir}`);
  const modelPath = `${saveDir}/${created[created.length - 1]}`;

  await phase("validate", () =>
    runScript("validate_model.ts", [
      "-s",
      modelPath,
      "-b",
      String(flags.batch_size),
      "--seed",
      String(flags.seed),
      "--backend",
      flags.backend,
      "--json",
      resultsPath,
      "--report",
      reportPath,
      ...size,
      ...common,
    ], writeDir));

  // 3. The result.
  const result = JSON.parse(await Deno.readTextFile(resultsPath)) as ValidationJson;
  const testRows = await readBoundLabels(labelsDir, datasetDir, "test");
  const positives = Array.from(
    { length: NUM_CLASSES },
    (_, c) => testRows.reduce((n, r) => n + r.labels[c], 0),
  );
  const defined = result.auroc.filter((v) => v !== null).length;
  const undefinedClasses = LABELS.filter((_, c) => result.auroc[c] === null);
  const fewClasses = LABELS.filter((_, c) =>
    result.auroc[c] !== null && positives[c] < FEW_POSITIVES
  );
  const meanAuroc = result.mean_auroc_defined ?? NaN;
  const passed = meanAuroc >= DEMO_AUROC_BAR;

  console.log(
    `\nDemo result on the SYNTHETIC test set (${
      plural(result.n_images, "image")
    }, not medical data):`,
  );
  console.log(formatDemoTable(result.auroc, positives, result.n_images));
  if (undefinedClasses.length > 0) {
    console.log(
      `No AUROC for ${undefinedClasses.join(", ")}: no positive (or no negative) test image.`,
    );
  }
  if (fewClasses.length > 0) {
    console.log(
      `Fewer than ${FEW_POSITIVES} test positives (noisy AUROC): ${fewClasses.join(", ")}.`,
    );
  }
  console.log(`Model: ${modelPath}\nResults: ${resultsPath}\nReport: ${reportPath}`);
  console.log(
    `Phases: ${times.map(([n, ms]) => `${n} ${seconds(ms)}`).join(", ")}.`,
  );
  const total = seconds(performance.now() - t0);
  console.log(
    `Mean AUROC over ${defined} classes with a defined AUROC: ` +
      `${Number.isFinite(meanAuroc) ? meanAuroc.toFixed(4) : "n/a"} — ` +
      `${passed ? "PASSES" : "BELOW"} the demo's bar of ${DEMO_AUROC_BAR} ` +
      `(${useImagenet ? "ImageNet" : "random"} initial weights, synthetic data) — total ${total}.`,
  );
  if (!passed) {
    throw new UserError(
      `mean AUROC ${Number.isFinite(meanAuroc) ? meanAuroc.toFixed(4) : "n/a"} is below the ` +
        `demo's bar of ${DEMO_AUROC_BAR} (more --images or --epochs help)`,
      BELOW_BAR_EXIT_CODE,
    );
  }
}

if (import.meta.main) await runMain(main);
