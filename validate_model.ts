/**
 * validate_model.ts — evaluates a trained model on the test (or validation) shards as the
 * original tool does: per-class and mean AUROC, F1 at the checkpoint's thresholds, optional
 * center crop or ten-crop; or predicts single X-rays with `--images`.
 *
 *   deno task validate -- -s data/saved_models/2022_0319_090507_model.pt -c -f
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { DEBUG_SIZES, LABELS, LABELS_DIR, NUM_CLASSES } from "./config.ts";
import { writeFileAtomic } from "./lib/util/atomic_file.ts";
import { RUN_FLAGS, startBackend } from "./lib/run_flags.ts";
import { checkOutputPaths } from "./lib/util/output_paths.ts";
import { type FlagSpecs, parseFlags } from "./lib/util/cli.ts";
import { loadSubset } from "./lib/data/dataset.ts";
import { runMain, UserError } from "./lib/util/errors.ts";
import { evaluate, type Evaluation, jsonNumber } from "./lib/eval/evaluation.ts";
import { predictBatches } from "./lib/eval/inference.ts";
import {
  flagGiven,
  readTrainingSettings,
  validationSettings,
} from "./lib/eval/training_settings.ts";
import { plural } from "./lib/util/format.ts";
import { disposeModel } from "./lib/model/densenet.ts";
import { loadModel } from "./lib/model/model_loading.ts";
import { Progress } from "./lib/util/progress.ts";
import { Rng } from "./lib/util/rng.ts";
import { newestSavedModel, resolveSavedModel } from "./lib/util/saved_models.ts";
import { writeImagesReportHtml, writeReportHtml } from "./lib/report/report_html.ts";
import {
  type CamWriteOptions,
  type CamWritten,
  writeImageCams,
  writeTopCams,
} from "./lib/eval/cam.ts";
import { writeCamIndex } from "./lib/report/cam_index.ts";
import { predictImages } from "./lib/eval/single_image.ts";
import {
  type BatchTransform,
  paramsForImageSize,
  resolveParams,
  testTransformText,
  transformsTest,
  transformsTestCentercrop,
  transformsTestTenCrop,
} from "./transforms/augmented_transforms.ts";

export const FLAGS = {
  ...RUN_FLAGS,
  image_size: {
    ...RUN_FLAGS.image_size,
    help: "network input size; without it, the training run's (its _results.json), else",
  },
  saved_model: {
    kind: "string",
    short: "s",
    default: null,
    metavar: "PATH",
    help: "model to evaluate (default: newest *_model.pt in --save_dir)",
  },
  center_crop: {
    kind: "boolean",
    short: "c",
    default: false,
    help: "resize to 256 and center crop 224 (else resize to 224)",
  },
  debug: { kind: "boolean", short: "d", default: false, help: `use ${DEBUG_SIZES.test} images` },
  display_f1: { kind: "boolean", short: "f", default: false, help: "also print F1 per class" },
  labels_dir: {
    kind: "string",
    default: LABELS_DIR,
    metavar: "DIR",
    help: "label CSV directory (accepted as the original; labels are read from the shards)",
  },
  subset: { kind: "string", default: "test", choices: ["test", "val"], help: "shards to evaluate" },
  tta: {
    kind: "string",
    default: "none",
    choices: ["none", "tencrop"],
    help: "test-time augmentation: ten crops of the 256 image, outputs averaged",
  },
  json: {
    kind: "string",
    default: null,
    metavar: "PATH",
    help: "write the results as JSON (with --images: each image's probabilities and findings)",
  },
  predictions: {
    kind: "string",
    default: null,
    metavar: "PATH",
    help: "write per-image probabilities as CSV (test shards or --images)",
  },
  report: {
    kind: "string",
    default: null,
    metavar: "PATH",
    help: "write a self-contained HTML report (AUROC/F1 table, ROC curves; with --images: " +
      "each image's probabilities)",
  },
  cam: {
    kind: "int",
    default: 0,
    min: 0,
    metavar: "N",
    help: "class activation maps of the N highest-scoring images per class (with --images: " +
      "of each image's N most probable classes)",
  },
  cam_dir: {
    kind: "string",
    default: null,
    metavar: "DIR",
    help: "where --cam writes its PNGs and index.html (default: <save_dir>/cam)",
  },
  images: {
    kind: "list",
    metavar: "FILE",
    rest: true,
    help: "predict these PNG/JPEG/DICOM files or directories instead of the test set",
  },
} as const satisfies FlagSpecs;

const USAGE = "validate_model.ts [options] [--images FILE...]";
const DESCRIPTION =
  "Evaluates a trained model (ours or the original tool's *_model.pt) on the test shards:\n" +
  "per-class and mean AUROC, F1 at the saved thresholds.";

/** Formats the original tool's AUROC (and F1) table: one row per class, 4 decimals. */
export function formatTable(auroc: Float64Array, f1: Float64Array | null): string {
  const width = Math.max(...LABELS.map((l) => l.length)) + 2;
  const cell = (v: number) => (Number.isNaN(v) ? "NaN" : v.toFixed(4)).padStart(8);
  const header = " ".repeat(width) + "   AUROC" + (f1 ? "      F1" : "");
  const rows = LABELS.map((label, c) =>
    label.padEnd(width) + cell(auroc[c]) + (f1 ? cell(f1[c]) : "")
  );
  return [header, ...rows].join("\n");
}

function printEvaluation(title: string, e: Evaluation, showF1: boolean): void {
  console.log(title);
  console.log(formatTable(e.auroc, showF1 ? e.f1 : null));
  const fmt = (v: number) => (Number.isNaN(v) ? "NaN" : v.toFixed(4));
  console.log(`Mean AUROC: ${fmt(e.meanAuroc)}`);
  console.log(`Mean AUROC over ${e.definedClasses} defined classes: ${fmt(e.meanAurocDefined)}`);
  if (showF1) console.log(`Mean F1: ${fmt(e.meanF1)}`);
}

/** Per-image probabilities as CSV: `Image Index` (as given) and the 14 classes. */
function predictionsCsv(names: readonly string[], probs: ArrayLike<number>): string {
  const lines = [["Image Index", ...LABELS].join(",")];
  names.forEach((name, i) => {
    const row = Array.from({ length: NUM_CLASSES }, (_, c) => String(probs[i * NUM_CLASSES + c]));
    lines.push([name.includes(",") ? `"${name}"` : name, ...row].join(","));
  });
  return lines.join("\n") + "\n";
}

/** The metric fields of the JSON output, named as the console and the report name them. */
function evaluationJson(e: Evaluation) {
  return {
    auroc: Array.from(e.auroc, jsonNumber),
    mean_auroc: jsonNumber(e.meanAuroc),
    mean_auroc_defined: jsonNumber(e.meanAurocDefined),
    auroc_defined_classes: e.definedClasses,
    f1: Array.from(e.f1, jsonNumber),
    mean_f1: jsonNumber(e.meanF1),
  };
}

async function main(args: string[]): Promise<void> {
  const flags = parseFlags(args, FLAGS, USAGE, DESCRIPTION);
  const imagePaths = [...flags.images, ...flags._];
  if (imagePaths.length > 0) {
    // Flags that select or evaluate the labelled shards: refused rather than ignored.
    const refused = [
      flags.tta !== "none" ? "--tta" : "",
      flagGiven(args, "subset") ? "--subset" : "",
      flags.debug ? "--debug" : "",
    ].filter((f) => f !== "");
    if (refused.length > 0) {
      throw new UserError(
        `${refused.join(", ")} ${refused.length > 1 ? "apply" : "applies"} to the labelled test ` +
          `shards, not to --images; for images use --json, --predictions, --report or --cam`,
        2,
      );
    }
  }
  const modelPath = flags.saved_model
    ? await resolveSavedModel(flags.saved_model, flags.save_dir)
    : await newestSavedModel(flags.save_dir);
  // Inputs first (cheap), then every output, before the backend starts.
  const camDir = flags.cam_dir ?? `${flags.save_dir}/cam`;
  await checkOutputPaths([
    { flag: "--json", path: flags.json, kind: "file" },
    { flag: "--predictions", path: flags.predictions, kind: "file" },
    { flag: "--report", path: flags.report, kind: "file" },
    {
      flag: flags.cam_dir ? "--cam_dir" : "--cam",
      path: flags.cam > 0 ? camDir : null,
      kind: "dir",
    },
  ]);
  const settings = validationSettings(await readTrainingSettings(modelPath), {
    imageSize: flags.image_size,
    imageSizeGiven: flagGiven(args, "image_size"),
    centerCrop: flags.center_crop,
  });
  const backend = await startBackend(flags);
  console.log(`Loading from ${modelPath.split("/").pop()}.`);
  for (const line of settings.lines) console.log(line);
  const { model, thresholds: saved } = await loadModel(modelPath);
  const thresholds = saved ?? new Float64Array(NUM_CLASSES).fill(0.5);
  if (!saved) console.error("warning: the checkpoint has no thresholds; F1 uses 0.5");
  const rng = new Rng(flags.seed);
  const imageSize = settings.imageSize;
  const size = paramsForImageSize(imageSize);
  const test: BatchTransform = flags.center_crop
    ? (x, r) => transformsTestCentercrop(x, r, size)
    : (x, r) => transformsTest(x, r, size);
  const tenCropTransform: BatchTransform = (x, r) => transformsTestTenCrop(x, r, size);
  const camOpts: CamWriteOptions = {
    dir: camDir,
    transform: test,
    centerCrop: flags.center_crop ? resolveParams(size) : undefined,
  };
  const reportCams = async (cams: CamWritten[], source: string) => {
    const index = await writeCamIndex(camOpts.dir, cams, {
      model: modelPath,
      source,
      transform: testTransformText(imageSize, flags.center_crop),
    });
    console.log(
      `Class activation maps: ${plural(cams.length, "PNG")} in ${camOpts.dir} (${index})`,
    );
  };
  const common = {
    model: modelPath,
    image_size: imageSize,
    center_crop: flags.center_crop,
    transform: testTransformText(imageSize, flags.center_crop),
    backend: backend.name,
    labels: LABELS,
    thresholds: Array.from(thresholds),
  };
  const reportMeta = (transformNote = "") => ({
    backend: `${backend.name} (${backend.device})`,
    date: new Date().toISOString(),
    transform: testTransformText(imageSize, flags.center_crop) + transformNote,
    thresholds: saved ? "checkpoint" : "0.5 (checkpoint has none)",
  });
  const writeJson = (value: unknown) =>
    writeFileAtomic(flags.json!, JSON.stringify(value, null, 2) + "\n");
  try {
    if (imagePaths.length > 0) {
      const predictions = await predictImages(model, imagePaths, { thresholds, transform: test });
      if (flags.json) {
        await writeJson({ ...common, n_images: predictions.length, images: predictions });
        console.log(`Results: ${flags.json}`);
      }
      if (flags.predictions) {
        const probs = predictions.flatMap((p) => LABELS.map((l) => p.probabilities[l]));
        await writeFileAtomic(
          flags.predictions,
          predictionsCsv(predictions.map((p) => p.image), probs),
        );
        console.log(`Predictions: ${flags.predictions}`);
      }
      if (flags.report) {
        await writeImagesReportHtml(flags.report, {
          modelPath,
          images: predictions,
          thresholds,
          meta: reportMeta(),
        });
        console.log(`Report: ${flags.report}`);
      }
      if (flags.cam > 0) {
        await reportCams(await writeImageCams(model, predictions, flags.cam, camOpts), "images");
      }
      return;
    }
    const subset = await loadSubset({
      datasetDir: flags.dataset_dir,
      subset: flags.subset as "test" | "val",
      limit: flags.debug ? DEBUG_SIZES.test : undefined,
    });
    const run = async (label: string, transform: BatchTransform, views = 1) => {
      const progress = new Progress(label, subset.size, { unit: "img" });
      const p = await predictBatches(
        model,
        subset.batches({ batchSize: flags.batch_size, workers: flags.workers }),
        transform,
        rng,
        { views, progress },
      );
      progress.finish();
      return p;
    };
    const plain = await run("Validation", test);
    console.log("Validation complete.");
    if (plain.n === 0) throw new UserError(`no images in the ${flags.subset} shards`);
    const result = evaluate(plain, thresholds);
    printEvaluation("", result, flags.display_f1);
    let tenCrop: Evaluation | null = null;
    if (flags.tta === "tencrop") {
      const p = await run("Ten-crop", tenCropTransform, 10);
      tenCrop = evaluate(p, thresholds);
      printEvaluation("\nTen-crop test-time augmentation:", tenCrop, flags.display_f1);
    }
    // The JSON first: the cheapest output, and the one scripts read.
    if (flags.json) {
      await writeJson({
        ...common,
        subset: flags.subset,
        n_images: plain.n,
        ...evaluationJson(result),
        ...(tenCrop ? { tencrop: evaluationJson(tenCrop) } : {}),
      });
      console.log(`Results: ${flags.json}`);
    }
    if (flags.predictions) {
      await writeFileAtomic(
        flags.predictions,
        predictionsCsv(plain.keys.map((k) => `${k}.png`), plain.probs),
      );
      console.log(`Predictions: ${flags.predictions}`);
    }
    if (flags.report) {
      await writeReportHtml(flags.report, {
        modelPath,
        subset: flags.subset,
        labels: plain.labels,
        probs: plain.probs,
        n: plain.n,
        thresholds,
        meta: reportMeta(tenCrop ? "; ten-crop results printed and in --json" : ""),
      });
      console.log(`Report: ${flags.report}`);
    }
    if (flags.cam > 0) {
      const cams = await writeTopCams(model, subset.shards, plain, flags.cam, camOpts);
      await reportCams(cams, `the ${flags.subset} shards (top ${flags.cam} per class)`);
    }
  } finally {
    disposeModel(model);
    tf.disposeVariables();
  }
}

if (import.meta.main) await runMain(main);
