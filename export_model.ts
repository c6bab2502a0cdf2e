/**
 * export_model.ts — writes a trained model (ours or the original tool's `*_model.pt`) as an
 * ONNX file or a TF.js graph-model directory, with a model card beside it, so it runs in
 * onnxruntime, a web page or a Node/Deno service without this tool.
 *
 *   deno task export -- --format tfjs -o data/exports/viewer_model
 * @module
 */
import { SAVE_DIR } from "./config.ts";
import { type FlagSpecs, givenFlags, parseFlags } from "./lib/util/cli.ts";
import { runMain } from "./lib/util/errors.ts";
import { checkOutputPaths } from "./lib/util/output_paths.ts";
import { newestSavedModel, resolveSavedModel } from "./lib/util/saved_models.ts";
import {
  flagGiven,
  readTrainingSettings,
  resultsPathFor,
  validationSettings,
} from "./lib/eval/training_settings.ts";
import { RUN_FLAGS } from "./lib/run_flags.ts";
import { EXPORT_FORMATS, type ExportFormat, exportModel } from "./lib/export/export.ts";
import { testTransformText } from "./transforms/augmented_transforms.ts";

export const FLAGS = {
  saved_model: {
    kind: "string",
    short: "s",
    default: null,
    metavar: "PATH",
    help: "model to export (default: newest *_model.pt in --save_dir)",
  },
  save_dir: { kind: "string", default: SAVE_DIR, metavar: "DIR", help: "saved model directory" },
  format: { kind: "string", default: "onnx", choices: EXPORT_FORMATS, help: "what to write" },
  output: {
    kind: "string",
    short: "o",
    default: null,
    metavar: "PATH",
    help: "the .onnx file, or the TF.js directory (default: data/exports/<model>_<format>/)",
  },
  image_size: {
    ...RUN_FLAGS.image_size,
    help: "input size; without it, the training run's (its _results.json), else",
  },
  center_crop: {
    kind: "boolean",
    short: "c",
    default: false,
    help: "the metadata's transform: resize to 256 and center crop 224 (default: so for a " +
      "model trained with -a, else resize to 224)",
  },
  metrics: {
    kind: "string",
    default: null,
    metavar: "JSON",
    help: "test metrics for the model card: validate_model.ts --json output",
  },
} as const satisfies FlagSpecs;

const USAGE = "export_model.ts [options]";
const DESCRIPTION =
  "Exports a trained model (ours or the original tool's *_model.pt) as ONNX or as a TF.js\n" +
  "graph model, with a model card (MODEL_CARD.md, model_card.json) beside it.";

const PRODUCER = "augmented-chest-xray export_model.ts";

async function main(args: string[]): Promise<void> {
  const flags = parseFlags(args, FLAGS, USAGE, DESCRIPTION);
  const format = flags.format as ExportFormat;
  const modelPath = flags.saved_model
    ? await resolveSavedModel(flags.saved_model, flags.save_dir)
    : await newestSavedModel(flags.save_dir);
  const stem = modelPath.split("/").pop()!.replace(/(_model)?\.pt$|\.pth?$/, "");
  const output = flags.output ??
    (format === "onnx" ? `data/exports/${stem}_onnx/model.onnx` : `data/exports/${stem}_tfjs`);
  const resultsPath = resultsPathFor(modelPath);
  await checkOutputPaths(
    [{ flag: "-o", path: output, kind: format === "onnx" ? "file" : "dir" }],
    {
      args,
      inputs: [
        { what: "the model exported (-s)", path: modelPath },
        ...(resultsPath ? [{ what: "the model's training record", path: resultsPath }] : []),
        ...(flags.metrics ? [{ what: "the test metrics (--metrics)", path: flags.metrics }] : []),
      ],
    },
  );
  const trained = await readTrainingSettings(modelPath, FLAGS, givenFlags(flags));
  // A model trained with augmentation is validated with the center crop (as the original).
  const centerCrop = flagGiven(args, "center_crop") || args.includes("-c")
    ? flags.center_crop
    : trained?.augmentation === true;
  const settings = validationSettings(trained, {
    imageSize: flags.image_size,
    imageSizeGiven: flagGiven(args, "image_size"),
    centerCrop: true, // no note: the crop is decided above
  });
  for (const line of settings.lines) console.log(line);
  const transform = testTransformText(settings.imageSize, centerCrop);
  console.log(
    `Exporting ${modelPath} as ${format} (input ${settings.imageSize} px, ${transform}).`,
  );
  const start = performance.now();
  const result = await exportModel({
    checkpoint: modelPath,
    format,
    output,
    imageSize: settings.imageSize,
    transform,
    centerCrop,
    metricsPath: flags.metrics,
    producer: PRODUCER,
  });
  const seconds = (performance.now() - start) / 1000;
  const bytes = result.files.reduce((n, f) => n + f.bytes, 0);
  console.log(
    `${result.facts.config.blockConfig.length}-block ${result.graph.steps.length}-step graph, ${result.files.length} files, ${
      (bytes / 1e6).toFixed(1)
    } MB in ` +
      `${seconds.toFixed(1)} s:`,
  );
  for (const f of result.files) console.log(`  ${f.path} (${(f.bytes / 1e6).toFixed(2)} MB)`);
}

if (import.meta.main) await runMain(main);
