/**
 * What an exported model says about itself: the metadata both formats carry (labels,
 * thresholds, normalisation, input size and transform, the output names, the source
 * checkpoint's SHA-256, the training settings from its `_results.json`) and the model card
 * written beside every export (`MODEL_CARD.md` and the same facts as `model_card.json`).
 * @module
 */
import { LABELS, NORM_MEAN, NORM_STD } from "../../config.ts";
import { type DenseNetConfig, TORCHVISION_DENSENETS } from "../model/densenet.ts";
import { readSplitRecord, type SplitRecord } from "../data/split_record.ts";
import { INPUT, OUTPUTS } from "./graph.ts";

/** "DenseNet-121", or the configuration of another DenseNet in words. */
export function architectureName(c: DenseNetConfig): string {
  const hit = Object.entries(TORCHVISION_DENSENETS).find(([, k]) =>
    k.growthRate === c.growthRate && k.numInitFeatures === c.numInitFeatures &&
    k.bnSize === c.bnSize && k.blockConfig.join() === c.blockConfig.join()
  );
  return hit
    ? hit[0]
    : `DenseNet (growth rate ${c.growthRate}, blocks ${c.blockConfig.join("-")}, ` +
      `${c.numInitFeatures} initial features, bottleneck ${c.bnSize})`;
}

/** The training run's record (`_results.json`), as far as the card uses it. */
export interface TrainingRecord {
  path: string;
  // deno-lint-ignore no-explicit-any
  json: any;
}

/** Reads `<stamp>_results.json` beside `<stamp>_model.pt`; null when absent or not ours. */
export async function readTrainingRecord(
  resultsPath: string | null,
): Promise<TrainingRecord | null> {
  if (resultsPath === null) return null;
  try {
    const json = JSON.parse(await Deno.readTextFile(resultsPath));
    return json && typeof json === "object" ? { path: resultsPath, json } : null;
  } catch {
    return null;
  }
}

/** The split record of the training run's dataset directory, when it can still be read. */
export async function readTrainingSplit(
  record: TrainingRecord | null,
): Promise<SplitRecord | null> {
  const dir = record?.json?.flags?.dataset_dir;
  if (typeof dir !== "string") return null;
  try {
    return await readSplitRecord(dir);
  } catch {
    return null;
  }
}

/** Everything the metadata and the card are made from. */
export interface ExportFacts {
  /** The checkpoint's file name (no directories: they may be private). */
  checkpoint: string;
  sha256: string;
  config: DenseNetConfig;
  parameters: number;
  imageSize: number;
  transform: string;
  centerCrop: boolean;
  thresholds: number[];
  thresholdsSource: string;
  featureMap: [number, number, number];
  training: TrainingRecord | null;
  split: SplitRecord | null;
  /** validate_model.ts --json output on the test set, when given. */
  // deno-lint-ignore no-explicit-any
  testMetrics: any | null;
  producer: string;
}

/** The training settings the metadata carries (the results file's flags and summary). */
function trainingSettings(t: TrainingRecord | null) {
  if (!t) return null;
  const j = t.json;
  return {
    results_file: t.path.split("/").pop(),
    flags: j.flags ?? null,
    seed: j.seed ?? null,
    dataset: j.dataset
      ? Object.fromEntries(
        Object.entries(j.dataset).map((
          [k, v],
        ) => [k, { images: (v as { images?: number }).images }]),
      )
      : null,
    backend: j.backend?.name ?? null,
    versions: j.versions ?? null,
    weights: j.weights ? { kind: j.weights.kind, sha256: j.weights.sha256 } : null,
    epochs: Array.isArray(j.epochs) ? j.epochs.length : null,
    best: j.best ? { epoch: j.best.epoch, val_loss: j.best.val_loss } : null,
  };
}

/**
 * The metadata of an export, the same fields in both formats; `layout` is the input layout
 * of the format (ONNX NCHW, TF.js NHWC).
 */
export function exportMetadata(f: ExportFacts, layout: "NCHW" | "NHWC"): Record<string, unknown> {
  const [h, w, c] = f.featureMap;
  const camShape = layout === "NCHW" ? `[N, 14, ${h}, ${w}]` : `[N, ${h}, ${w}, 14]`;
  const featShape = layout === "NCHW" ? `[N, ${c}, ${h}, ${w}]` : `[N, ${h}, ${w}, ${c}]`;
  return {
    labels: [...LABELS],
    thresholds: f.thresholds,
    thresholds_source: f.thresholdsSource,
    mean: [...NORM_MEAN],
    std: [...NORM_STD],
    image_size: f.imageSize,
    transform: f.transform,
    input: INPUT,
    input_layout: layout,
    input_description: `float32 ${
      layout === "NCHW"
        ? `[N, 3, ${f.imageSize}, ${f.imageSize}]`
        : `[N, ${f.imageSize}, ${f.imageSize}, 3]`
    } RGB in [0, 1] after the transform, then (x - mean) / std per channel`,
    output: OUTPUTS.probabilities,
    cam_output: OUTPUTS.cams,
    cam_output_description: `${camShape}: the last feature map through the classifier ` +
      `weights (CheXNet's CAM, no bias); upsample to the input and min-max normalise to draw`,
    feature_output: OUTPUTS.features,
    feature_output_description: `${featShape}: the last feature map (norm5 + ReLU)`,
    architecture: architectureName(f.config),
    densenet_config: {
      growth_rate: f.config.growthRate,
      block_config: f.config.blockConfig,
      num_init_features: f.config.numInitFeatures,
      bn_size: f.config.bnSize,
    },
    source_checkpoint: f.checkpoint,
    source_sha256: f.sha256,
    training_settings: trainingSettings(f.training),
    producer: f.producer,
  };
}

/** ONNX `metadata_props` values are strings: JSON for everything that is not one. */
export function onnxMetadataProps(meta: Record<string, unknown>): Record<string, string> {
  return Object.fromEntries(
    Object.entries(meta).map(([k, v]) => [k, typeof v === "string" ? v : JSON.stringify(v)]),
  );
}

const fmt4 = (v: unknown) => (typeof v === "number" && Number.isFinite(v) ? v.toFixed(4) : "—");

/** The validation metrics of the saved epoch, from the results file. */
function validationMetrics(t: TrainingRecord | null) {
  const epochs = t?.json?.epochs;
  const best = t?.json?.best?.epoch;
  if (!Array.isArray(epochs)) return null;
  const e = epochs.find((x) => x?.epoch === best) ?? epochs.at(-1);
  if (!e) return null;
  return {
    epoch: e.epoch,
    val_loss: e.val_loss ?? null,
    val_mean_auroc: e.val_mean_auroc ?? null,
    val_mean_auroc_defined: e.val_mean_auroc_defined ?? null,
    val_mean_f1: e.val_mean_f1 ?? null,
  };
}

/** The card's facts as JSON (`model_card.json`). */
export function modelCardJson(f: ExportFacts, format: string, files: string[]) {
  const t = f.training?.json;
  return {
    model: {
      architecture: architectureName(f.config),
      parameters: f.parameters,
      format,
      files,
      source_checkpoint: f.checkpoint,
      source_sha256: f.sha256,
    },
    input: {
      image_size: f.imageSize,
      transform: f.transform,
      mean: [...NORM_MEAN],
      std: [...NORM_STD],
      layout: format === "onnx" ? "NCHW" : "NHWC",
    },
    labels: [...LABELS],
    thresholds: f.thresholds,
    thresholds_source: f.thresholdsSource,
    training: t
      ? {
        data: "NIH ChestX-ray14 (Wang et al., CVPR 2017), split by patient",
        dataset: t.dataset ?? null,
        split: f.split,
        flags: t.flags ?? null,
        epochs: Array.isArray(t.epochs) ? t.epochs.length : null,
      }
      : null,
    validation: validationMetrics(f.training),
    test: f.testMetrics,
    intended_use: "Research and education: studying and demonstrating multi-label chest X-ray " +
      "classification. Not for diagnosis or any clinical decision.",
    not_a_medical_device: true,
  };
}

/** `MODEL_CARD.md`: the same facts for people. */
export function modelCardMarkdown(f: ExportFacts, format: string, files: string[]): string {
  const card = modelCardJson(f, format, files);
  const lines: string[] = [];
  const p = (...l: string[]) => lines.push(...l);
  p(
    `# Model card: ${card.model.architecture} for ChestX-ray14 (${
      format === "onnx" ? "ONNX" : "TF.js"
    })`,
    "",
    "**Not a medical device.** This model is for research and education. It has not been " +
      "cleared or approved for clinical use; do not use it to diagnose, treat or triage anyone.",
    "",
    "## Model",
    "",
    `- Architecture: ${card.model.architecture}, ${
      card.model.parameters.toLocaleString("en-US")
    } ` +
      "stored values, 14 sigmoid outputs (multi-label).",
    `- Files: ${files.map((x) => `\`${x}\``).join(", ")}`,
    `- Source checkpoint: \`${f.checkpoint}\`, SHA-256 \`${f.sha256}\``,
    `- Made by: ${f.producer}`,
    "",
    "## Input and preprocessing",
    "",
    `1. Decode the X-ray to RGB in [0, 1] (grey images: the grey value in all three channels).`,
    `2. ${f.transform} (bilinear, half-pixel centres, as OpenCV's INTER_LINEAR).`,
    `3. Normalise per channel: (x - mean) / std, mean ${JSON.stringify(card.input.mean)}, std ${
      JSON.stringify(card.input.std)
    }.`,
    `4. Feed \`${INPUT}\` as float32 ${
      card.input.layout === "NCHW"
        ? `[N, 3, ${f.imageSize}, ${f.imageSize}]`
        : `[N, ${f.imageSize}, ${f.imageSize}, 3]`
    } (${card.input.layout}).`,
    "",
    `Outputs: \`${OUTPUTS.probabilities}\` [N, 14] probabilities; \`${OUTPUTS.cams}\` class ` +
      `activation maps; \`${OUTPUTS.features}\` the last feature map.`,
    "",
    "## Labels and thresholds",
    "",
    `A finding is reported when its probability is above its threshold (${f.thresholdsSource}).`,
    "",
    "| label | threshold |",
    "| --- | --- |",
    ...LABELS.map((l, c) => `| ${l} | ${fmt4(f.thresholds[c])} |`),
    "",
    "## Training data",
    "",
  );
  if (card.training) {
    const ds = card.training.dataset ?? {};
    const count = (s: string) => ds[s]?.images ?? "?";
    p(
      `NIH ChestX-ray14 (Wang et al., "ChestX-ray8", CVPR 2017; NIH Clinical Center), split by ` +
        `patient: ${count("train")} training and ${count("val")} validation images.`,
    );
    if (f.split) {
      p(
        "",
        `Split: seed ${f.split.random_seed}, ${
          f.split.official_split ? "NIH's official test list" : "20 % of patients for test"
        }${f.split.subset_size ? `, a subset of ${f.split.subset_size} patients` : ""}, metadata ` +
          `file SHA-256 \`${f.split.meta_file.sha256}\`.`,
      );
    }
    const fl = card.training.flags ?? {};
    p(
      "",
      `Settings: ${card.training.epochs ?? "?"} epochs, batch ${fl.batch_size ?? "?"}, image ` +
        `size ${fl.image_size ?? "?"}, augmentation ${fl.augmentation ? "on" : "off"}, loss ` +
        `${fl.loss ?? "bce"}, starting weights ${fl.weights ?? "?"}, seed ${fl.seed ?? "?"}.`,
    );
  } else {
    p(
      "Unknown: no `_results.json` beside the checkpoint (e.g. a checkpoint of the original " +
        "Python tool). The original trains on NIH ChestX-ray14, split by patient.",
    );
  }
  p("", "## Metrics", "");
  const v = card.validation;
  p(
    v
      ? `Validation (epoch ${v.epoch}): loss ${fmt4(v.val_loss)}, mean AUROC ${
        fmt4(v.val_mean_auroc)
      } (over defined classes ${fmt4(v.val_mean_auroc_defined)}), mean F1 ${fmt4(v.val_mean_f1)}.`
      : "Validation: not known.",
  );
  const t = f.testMetrics;
  p(
    t && typeof t === "object"
      ? `Test (${t.n_images ?? "?"} images, ${t.transform ?? ""}): mean AUROC ${
        fmt4(t.mean_auroc)
      } (over defined classes ${fmt4(t.mean_auroc_defined)}), mean F1 ${fmt4(t.mean_f1)}.`
      : "Test: not known (pass `--metrics` with validate_model.ts's `--json` output).",
  );
  p(
    "",
    "## Intended use",
    "",
    card.intended_use,
    "Its outputs are probabilities of 14 findings on a frontal chest radiograph, learnt from " +
      "labels mined from radiology reports (known to be noisy). It has not been evaluated on " +
      "other populations, devices or views. Not a medical device.",
    "",
  );
  return lines.join("\n");
}
