/**
 * Building a model from weights files: the DenseNet configuration is read off a state dict's
 * shapes (so DenseNet-121 checkpoints and small test models load alike), and `--weights`
 * (`imagenet` | `none` | PATH) picks the starting weights for training.
 * @module
 */
import { LABELS, NUM_CLASSES } from "../../config.ts";
import { UserError } from "../util/errors.ts";
import {
  createDenseNet,
  type DenseNet,
  DENSENET121,
  type DenseNetConfig,
  disposeModel,
} from "./densenet.ts";
import { loadStateDict, normalizeStateDictKeys } from "./model_weights.ts";
import { imagenetWeightsPath } from "./pretrained_weights.ts";
import type { StateDict } from "../torch/state_dict.ts";
import { loadCheckpoint } from "../torch/torch_checkpoint.ts";

/** Reads the DenseNet configuration off a (torchvision-layout) state dict's shapes. */
export function inferDenseNetConfig(sd: StateDict, source = "<state dict>"): DenseNetConfig {
  const keys = normalizeStateDictKeys(sd);
  const shape = (key: string) => {
    const t = keys.get(key);
    if (!t) throw new UserError(`${source} is not a DenseNet checkpoint: no '${key}'`);
    return t.shape;
  };
  const blockConfig: number[] = [];
  for (let b = 1; keys.has(`features.denseblock${b}.denselayer1.conv1.weight`); b++) {
    let layers = 0;
    while (keys.has(`features.denseblock${b}.denselayer${layers + 1}.conv1.weight`)) layers++;
    blockConfig.push(layers);
  }
  if (blockConfig.length === 0) {
    throw new UserError(`${source} is not a DenseNet checkpoint: no dense blocks`);
  }
  const growthRate = shape("features.denseblock1.denselayer1.conv2.weight")[0];
  return {
    growthRate,
    blockConfig,
    numInitFeatures: shape("features.conv0.weight")[0],
    bnSize: shape("features.denseblock1.denselayer1.conv1.weight")[0] / growthRate,
    numClasses: shape("classifier.0.weight")[0],
  };
}

/** A model loaded from a checkpoint, with the checkpoint's thresholds. */
export interface LoadedModel {
  model: DenseNet;
  thresholds: Float64Array | null;
  config: DenseNetConfig;
}

/**
 * Refuses, before any model is built, a state dict whose head is not the 14-class
 * `Linear(features, 14)` the labels need: otherwise the mistake shows only after a whole test
 * set (a predictions size error) or as a tfjs broadcast error in training.
 */
export function checkHead(sd: StateDict, source: string): void {
  const keys = normalizeStateDictKeys(sd);
  const head = [...keys].filter(([k]) => k.startsWith("classifier"));
  const weight = keys.get("classifier.0.weight")?.shape;
  const bias = keys.get("classifier.0.bias")?.shape;
  const features = keys.get("features.norm5.weight")?.shape[0];
  const ok = head.length === 2 && weight?.length === 2 && weight[0] === NUM_CLASSES &&
    (features === undefined || weight[1] === features) && bias?.length === 1 &&
    bias[0] === NUM_CLASSES;
  if (ok) return;
  const found = head.length === 0
    ? "has no classifier"
    : `has the head ${head.map(([k, t]) => `${k} [${t.shape}]`).join(", ")}`;
  throw new UserError(
    `${source} ${found}, not a ${NUM_CLASSES}-class Linear(${features ?? "features"}, ` +
      `${NUM_CLASSES}) for the ChestX-ray14 labels: use a checkpoint trained for them`,
  );
}

/**
 * The checkpoint's thresholds, checked: one per class, or an error; NaN ones become 0.5 with
 * one warning (they would make every F1 of their class 0 without a word).
 */
export function checkedThresholds(
  thresholds: Float64Array | null,
  source: string,
  warn: (line: string) => void,
): Float64Array | null {
  if (thresholds === null) return null;
  if (thresholds.length !== NUM_CLASSES) {
    throw new UserError(
      `${source} holds ${thresholds.length} thresholds, not ${NUM_CLASSES} (one per label): ` +
        `the checkpoint is not for ChestX-ray14`,
    );
  }
  const bad = LABELS.filter((_, c) => !Number.isFinite(thresholds[c]));
  if (bad.length === 0) return thresholds;
  warn(`warning: thresholds in ${source} are not finite for ${bad.join(", ")}; F1 there uses 0.5`);
  return thresholds.map((t) => (Number.isFinite(t) ? t : 0.5));
}

/**
 * Loads a checkpoint (ours or the original tool's) into a DenseNet of the matching shape. The
 * head and the weights' values are checked before anything runs; `warn` gets the one line
 * about non-finite thresholds (default: stderr).
 */
export async function loadModel(
  path: string,
  opts: { warn?: (line: string) => void } = {},
): Promise<LoadedModel> {
  const ckpt = await loadCheckpoint(path);
  checkHead(ckpt.stateDict, path);
  const thresholds = checkedThresholds(
    ckpt.thresholds,
    path,
    opts.warn ?? ((line) => console.error(line)),
  );
  const config = inferDenseNetConfig(ckpt.stateDict, path);
  const model = createDenseNet(config);
  try {
    loadStateDict(model, ckpt.stateDict, { source: path });
  } catch (e) {
    disposeModel(model);
    throw e;
  }
  return { model, thresholds, config };
}

/** Where training's starting weights came from, for the results file. */
export interface WeightsSource {
  kind: "imagenet" | "none" | "file";
  path: string | null;
  sha256: string | null;
  notes: string[];
}

async function sha256File(path: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", await Deno.readFile(path));
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Creates the model to train: DenseNet-121 (or `config`) with `--weights imagenet` (torchvision's
 * ImageNet file `imagenetFile`, default DenseNet-121's; fresh 14-way classifier), `none` (seeded
 * random init) or a PATH (a torchvision state dict or an original-tool checkpoint; a classifier
 * of another size is replaced).
 */
export async function initialModel(
  weights: string,
  opts: { config?: DenseNetConfig; imagenetFile?: string; seed?: number; silent?: boolean } = {},
): Promise<{ model: DenseNet; source: WeightsSource }> {
  const config = opts.config ?? DENSENET121;
  const model = createDenseNet(config, { seed: opts.seed });
  if (weights === "none") {
    return { model, source: { kind: "none", path: null, sha256: null, notes: [] } };
  }
  const path = weights === "imagenet"
    ? await imagenetWeightsPath({ file: opts.imagenetFile, silent: opts.silent })
    : weights;
  const ckpt = await loadCheckpoint(path);
  const report = loadStateDict(model, ckpt.stateDict, { allowNewClassifier: true, source: path });
  return {
    model,
    source: {
      kind: weights === "imagenet" ? "imagenet" : "file",
      path,
      sha256: await sha256File(path),
      notes: report.notes,
    },
  };
}
