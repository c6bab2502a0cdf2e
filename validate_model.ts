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
import { shown } from "./lib/util/shown.ts";
import { RUN_FLAGS, startBackend } from "./lib/run_flags.ts";
import { checkOutputPaths } from "./lib/util/output_paths.ts";
import { type FlagSpecs, givenFlags, parseFlags } from "./lib/util/cli.ts";
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
import { predictionsCsv } from "./lib/report/predictions_csv.ts";
import { imageFailures, listImageFiles, predictImages } from "./lib/eval/single_image.ts";
import { datasetImageSize } from "./lib/data/preprocessed_image.ts";
import { listShards } from "./lib/data/webdataset.ts";
import { resultsPathFor } from "./lib/eval/training_settings.ts";
import type { BootstrapResult } from "./lib/eval/bootstrap.ts";
import {
  assessUncertainty,
  formatComparison,
  type Uncertainty,
  uncertaintyJson,
  withInterval,
} from "./lib/eval/uncertainty.ts";
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
  bootstrap: {
    kind: "int",
    default: 1000,
    min: 0,
    metavar: "N",
    help: "bootstrap resamples (by patient) for confidence intervals; 0: none",
  },
  ci: { kind: "float", default: 0.95, metavar: "LEVEL", help: "confidence level of the intervals" },
  compare: {
    kind: "string",
    default: null,
    metavar: "OTHER.pt",
    help: "compare with this model on the same images: AUROC difference, DeLong, bootstrap",
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

/**
 * Formats the original tool's AUROC (and F1) table: one row per class, 4 decimals; with
 * `extra`, each value's bootstrap interval (`0.8312 [0.8201, 0.8420]`) and an ECE column.
 */
export function formatTable(
  auroc: Float64Array,
  f1: Float64Array | null,
  extra: { intervals?: BootstrapResult; ece?: ArrayLike<number> } = {},
): string {
  const width = Math.max(...LABELS.map((l) => l.length)) + 2;
  const b = extra.intervals;
  const cols = [
    { name: "AUROC", values: auroc, ci: b?.auroc },
    ...(f1 ? [{ name: "F1", values: f1, ci: b?.f1 }] : []),
    ...(extra.ece ? [{ name: "ECE", values: extra.ece, ci: undefined }] : []),
  ].map((col) => {
    const cells = LABELS.map((_, c) => withInterval(col.values[c], col.ci?.[c]));
    return { name: col.name, cells, w: Math.max(6, ...cells.map((x) => x.length)) + 2 };
  });
  const header = " ".repeat(width) + cols.map((col) => col.name.padStart(col.w)).join("");
  const rows = LABELS.map((label, c) =>
    label.padEnd(width) + cols.map((col) => col.cells[c].padStart(col.w)).join("")
  );
  return [header, ...rows].join("\n");
}

function printEvaluation(
  title: string,
  e: Evaluation,
  showF1: boolean,
  u: Uncertainty | null = null,
): void {
  console.log(title);
  const b = u?.bootstrap ?? undefined;
  const ece = showF1 && u ? u.reliability.map((r) => r.ece) : undefined;
  console.log(formatTable(e.auroc, showF1 ? e.f1 : null, { intervals: b, ece }));
  console.log(`Mean AUROC: ${withInterval(e.meanAuroc, b?.meanAuroc)}`);
  console.log(
    `Mean AUROC over ${e.definedClasses} defined classes: ` +
      withInterval(e.meanAurocDefined, b?.meanAurocDefined),
  );
  if (showF1) console.log(`Mean F1: ${withInterval(e.meanF1, b?.meanF1)}`);
  if (b) {
    const skips = LABELS.map((l, c) => [l, b.skipped[c]] as const).filter(([, n]) => n > 0);
    console.log(
      `Intervals: ${Math.round(b.ci * 1000) / 10}% percentile bootstrap, ${b.resamples} ` +
        `resamples by ${b.unit} (--seed ${u!.seed})` +
        (skips.length
          ? `; resamples skipped (one label value): ${
            skips.map(([l, n]) => `${l} ${n}`).join(", ")
          }` +
            (b.skippedMean ? `; for the mean ${b.skippedMean}` : "")
          : ""),
    );
  }
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
      flags.compare ? "--compare" : "",
    ].filter((f) => f !== "");
    if (refused.length > 0) {
      throw new UserError(
        `${refused.join(", ")} ${refused.length > 1 ? "apply" : "applies"} to the labelled test ` +
          `shards, not to --images; for images use --json, --predictions, --report or --cam`,
        2,
      );
    }
  }
  if (!(flags.ci > 0 && flags.ci < 1)) {
    throw new UserError(`--ci ${flags.ci}: give a level between 0 and 1, e.g. 0.95`, 2);
  }
  const modelPath = flags.saved_model
    ? await resolveSavedModel(flags.saved_model, flags.save_dir)
    : await newestSavedModel(flags.save_dir);
  const comparePath = flags.compare ? await resolveSavedModel(flags.compare, flags.save_dir) : null;
  // Inputs first (cheap), then every output, before the backend starts; no output may be a
  // file the run reads.
  const images = imagePaths.length > 0 ? await listImageFiles(imagePaths) : null;
  // Missing shards are reported where they are loaded (after the output checks, as before).
  const shards = images ? [] : await listShards(flags.dataset_dir, flags.subset).catch((e) => {
    if (e instanceof UserError) return [];
    throw e;
  });
  const resultsPath = resultsPathFor(modelPath);
  const inputs = [
    { what: "the model evaluated (-s)", path: modelPath },
    ...(comparePath ? [{ what: "the model compared (--compare)", path: comparePath }] : []),
    ...(resultsPath ? [{ what: "the model's training record", path: resultsPath }] : []),
    ...shards.map((path) => ({ what: `a ${flags.subset} shard`, path })),
    ...(images?.files ?? []).map((path) => ({ what: "an image predicted (--images)", path })),
  ];
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
    // The CAM page: neither an input nor another output (e.g. --report) may be it.
    {
      flag: "--cam (its index.html)",
      path: flags.cam > 0 ? `${camDir}/index.html` : null,
      kind: "file",
    },
  ], { inputs });
  const settings = validationSettings(
    await readTrainingSettings(modelPath, FLAGS, givenFlags(flags)),
    {
      imageSize: flags.image_size,
      imageSizeGiven: flagGiven(args, "image_size"),
      centerCrop: flags.center_crop,
      precision: flags.precision,
      precisionGiven: flagGiven(args, "precision"),
    },
  );
  const backend = await startBackend(
    { ...flags, precision: settings.precision },
    undefined,
    settings.precisionCarried,
  );
  console.log(`Loading from ${shown(modelPath.split("/").pop()!)}.`);
  for (const line of settings.lines) console.log(line);
  const { model, thresholds: saved } = await loadModel(modelPath);
  const thresholds = saved ?? new Float64Array(NUM_CLASSES).fill(0.5);
  if (!saved) console.error("warning: the checkpoint has no thresholds; F1 uses 0.5");
  const rng = new Rng(flags.seed);
  const imageSize = settings.imageSize;
  const size = paramsForImageSize(imageSize);
  const testTransform = (size: ReturnType<typeof paramsForImageSize>): BatchTransform =>
    flags.center_crop
      ? (x, r) => transformsTestCentercrop(x, r, size)
      : (x, r) => transformsTest(x, r, size);
  const test = testTransform(size);
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
      `Class activation maps: ${plural(cams.length, "PNG")} in ${shown(camOpts.dir)} ` +
        `(${shown(index)})`,
    );
  };
  const common = {
    model: modelPath,
    image_size: imageSize,
    center_crop: flags.center_crop,
    transform: testTransformText(imageSize, flags.center_crop),
    backend: backend.name,
    precision: backend.precision,
    labels: LABELS,
    thresholds: Array.from(thresholds),
  };
  const reportMeta = (transformNote = "") => ({
    backend: `${backend.name} (${backend.device}${
      backend.precision === "bf16" ? ", bf16 convolutions" : ""
    })`,
    date: new Date().toISOString(),
    transform: testTransformText(imageSize, flags.center_crop) + transformNote,
    thresholds: saved ? "checkpoint" : "0.5 (checkpoint has none)",
  });
  const writeJson = (value: unknown) =>
    writeFileAtomic(flags.json!, JSON.stringify(value, null, 2) + "\n");
  try {
    if (images) {
      const results = await predictImages(model, images, {
        thresholds,
        transform: test,
        datasetSize: datasetImageSize(imageSize),
      });
      const { predictions, failures } = results;
      // Nothing predicted: nothing to write (the failure is the run's error line).
      if (predictions.length === 0) throw imageFailures(results)!;
      if (flags.json) {
        await writeJson({
          ...common,
          n_images: predictions.length,
          images: predictions,
          ...(failures.length ? { failures } : {}),
        });
        console.log(`Results: ${shown(flags.json!)}`);
      }
      if (flags.predictions) {
        const probs = predictions.flatMap((p) => LABELS.map((l) => p.probabilities[l]));
        await writeFileAtomic(
          flags.predictions,
          predictionsCsv(predictions.map((p) => p.image), probs),
        );
        console.log(`Predictions: ${shown(flags.predictions!)}`);
      }
      if (flags.report) {
        await writeImagesReportHtml(flags.report, {
          modelPath,
          images: predictions,
          thresholds,
          meta: reportMeta(),
        });
        console.log(`Report: ${shown(flags.report!)}`);
      }
      if (flags.cam > 0) {
        const cams = await writeImageCams(model, predictions, flags.cam, {
          ...camOpts,
          datasetSize: datasetImageSize(imageSize),
        });
        await reportCams(cams, "images");
      }
      const failed = imageFailures(results);
      if (failed) throw failed;
      return;
    }
    const subset = await loadSubset({
      datasetDir: flags.dataset_dir,
      subset: flags.subset as "test" | "val",
      limit: flags.debug ? DEBUG_SIZES.test : undefined,
    });
    const run = async (label: string, transform: BatchTransform, views = 1, net = model) => {
      const progress = new Progress(label, subset.size, { unit: "img" });
      const p = await predictBatches(
        net,
        subset.batches({ batchSize: flags.batch_size, workers: flags.workers }),
        transform,
        rng,
        { views, progress },
      );
      progress.finish();
      return p;
    };
    // --compare: model B on the same images, with its own training run's image size.
    const predictModelB = async (path: string) => {
      const settingsB = validationSettings(
        await readTrainingSettings(path, FLAGS, givenFlags(flags)),
        {
          imageSize: flags.image_size,
          imageSizeGiven: flagGiven(args, "image_size"),
          centerCrop: flags.center_crop,
        },
      );
      console.log(`Comparing with ${path.split("/").pop()} (model B).`);
      for (const line of settingsB.lines) console.log(line);
      const { model: modelB } = await loadModel(path);
      try {
        const transformB = testTransform(paramsForImageSize(settingsB.imageSize));
        return { path, predictions: await run("Model B", transformB, 1, modelB) };
      } finally {
        disposeModel(modelB);
      }
    };
    const plain = await run("Validation", test);
    console.log("Validation complete.");
    if (plain.n === 0) throw new UserError(`no images in the ${flags.subset} shards`);
    const result = evaluate(plain, thresholds);
    const other = comparePath ? await predictModelB(comparePath) : undefined;
    const uncertainty = assessUncertainty(plain, {
      thresholds,
      withF1: flags.display_f1,
      resamples: flags.bootstrap,
      ci: flags.ci,
      seed: flags.seed,
      b: other,
    });
    printEvaluation("", result, flags.display_f1, uncertainty);
    if (uncertainty.compare) {
      console.log("\n" + formatComparison(uncertainty.compare, flags.ci, modelPath));
    }
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
        ...uncertaintyJson(uncertainty, flags.display_f1),
        ...(tenCrop ? { tencrop: evaluationJson(tenCrop) } : {}),
      });
      console.log(`Results: ${shown(flags.json!)}`);
    }
    if (flags.predictions) {
      await writeFileAtomic(
        flags.predictions,
        predictionsCsv(plain.keys.map((k) => `${k}.png`), plain.probs),
      );
      console.log(`Predictions: ${shown(flags.predictions!)}`);
    }
    if (flags.report) {
      await writeReportHtml(flags.report, {
        modelPath,
        subset: flags.subset,
        labels: plain.labels,
        probs: plain.probs,
        n: plain.n,
        thresholds,
        uncertainty,
        meta: reportMeta(tenCrop ? "; ten-crop results printed and in --json" : ""),
      });
      console.log(`Report: ${shown(flags.report!)}`);
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
