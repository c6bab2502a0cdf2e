/**
 * train_model.ts — trains the CheXNet-style DenseNet-121 (ImageNet-pretrained, 14-way sigmoid
 * head) with BCE and Adam, validates every epoch, keeps the best model by validation loss
 * with per-class thresholds (Youden's J on the training epoch), as the original tool does.
 *
 *   deno task train -- -b 16 -a
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import {
  DEBUG_SIZES,
  LABELS,
  LEARNING_RATE,
  NUM_CLASSES,
  NUM_EPOCHS,
  SCHEDULER_FACTOR,
  SCHEDULER_PATIENCE,
  SHUFFLE_BUFFER,
} from "./config.ts";
import { Adam } from "./lib/train/adam.ts";
import { writeFileAtomic } from "./lib/util/atomic_file.ts";
import { RUN_FLAGS, startBackend } from "./lib/run_flags.ts";
import { resolveMemoryEfficient } from "./lib/backends/memory_efficient.ts";
import { type FlagSpecs, parseFlags } from "./lib/util/cli.ts";
import { loadSubset } from "./lib/data/dataset.ts";
import { runMain, UserError } from "./lib/util/errors.ts";
import { evaluate, jsonNumber } from "./lib/eval/evaluation.ts";
import { predictBatches } from "./lib/eval/inference.ts";
import { bceLoss, youdenThresholds } from "./lib/eval/metrics.ts";
import { classBalanceWeights } from "./lib/train/loss.ts";
import {
  DENSENET121,
  type DenseNetConfig,
  disposeModel,
  TINY_DENSENET,
} from "./lib/model/densenet.ts";
import { initialModel, loadModel } from "./lib/model/model_loading.ts";
import { stateDictFromModel } from "./lib/model/model_weights.ts";
import { formatDuration, Progress } from "./lib/util/progress.ts";
import { Rng } from "./lib/util/rng.ts";
import { resolveSavedModel, runPaths, runStamp } from "./lib/util/saved_models.ts";
import { ReduceLROnPlateau } from "./lib/train/scheduler.ts";
import { writeCheckpoint } from "./lib/torch/torch_checkpoint.ts";
import { trainEpoch } from "./lib/train/training.ts";
import { readLabelsCsv } from "./lib/data/label_csv.ts";
import { writeTrainingCurves } from "./lib/report/training_curves.ts";
import {
  type BatchTransform,
  paramsForImageSize,
  transformsTest,
  transformsTestCentercrop,
  transformsTrain,
  transformsTrainAugmented,
} from "./transforms/augmented_transforms.ts";
import { writeAugmentationPreview } from "./transforms/preview.ts";

/** Networks `--arch` offers: DenseNet-121 (the original's), and small ones for quick runs. */
export const ARCHITECTURES: Record<string, DenseNetConfig> = {
  densenet121: DENSENET121,
  densenet_small: {
    growthRate: 16,
    blockConfig: [4, 8, 12, 8],
    numInitFeatures: 32,
    bnSize: 4,
    numClasses: 14,
  },
  densenet_tiny: TINY_DENSENET,
};

export const FLAGS = {
  ...RUN_FLAGS,
  epochs: { kind: "int", short: "e", default: NUM_EPOCHS, min: 1, help: "number of epochs" },
  learning_rate: {
    kind: "float",
    short: "l",
    default: LEARNING_RATE,
    min: 0,
    help: "initial learning rate (Adam)",
  },
  s_factor: {
    kind: "float",
    short: "f",
    default: SCHEDULER_FACTOR,
    min: 0,
    max: 1,
    help: "ReduceLROnPlateau factor",
  },
  s_patience: {
    kind: "int",
    short: "p",
    default: SCHEDULER_PATIENCE,
    min: 0,
    help: "ReduceLROnPlateau patience (epochs)",
  },
  augmentation: {
    kind: "boolean",
    short: "a",
    default: false,
    help: "train with data augmentation (validation then uses center crop)",
  },
  debug: {
    kind: "boolean",
    short: "d",
    default: false,
    help: `use ${DEBUG_SIZES.train} training / ${DEBUG_SIZES.val} validation images`,
  },
  saved_model: {
    kind: "string",
    short: "s",
    default: null,
    metavar: "PATH",
    help: "resume from this checkpoint (ours or the original tool's; as given, else in --save_dir)",
  },
  weights: {
    kind: "string",
    default: "imagenet",
    metavar: "imagenet|none|PATH",
    help: "starting weights: torchvision's ImageNet DenseNet-121, random, or a file",
  },
  arch: {
    kind: "string",
    default: "densenet121",
    choices: Object.keys(ARCHITECTURES),
    help: "network: DenseNet-121, or a small DenseNet for quick runs (random init only)",
  },
  loss: {
    kind: "string",
    default: "bce",
    choices: ["bce", "weighted_bce"],
    help: "loss: BCE, or BCE with CheXNet's class-balancing weights",
  },
  memory_efficient: {
    kind: "string",
    default: "auto",
    choices: ["auto", "on", "off"],
    help:
      "recompute dense-layer bottlenecks in the backward pass (auto: on for wasm/cpu, off for " +
      "tensorflow and for a WebGPU adapter that holds the plain path)",
  },
  preview_augmentation: {
    kind: "int",
    default: 0,
    min: 0,
    metavar: "N",
    help: "write a PNG grid of N training images with augmented draws, then exit",
  },
} as const satisfies FlagSpecs;

const USAGE = "train_model.ts [options]";
const DESCRIPTION = "Trains DenseNet-121 on the ChestX-ray14 shards; saves the best model by " +
  "validation loss\nwith per-class thresholds, and per-epoch results.";

/** One epoch's record in the results file. */
export interface EpochRecord {
  epoch: number;
  train_loss: number;
  val_loss: number;
  val_mean_auroc: number | null;
  val_mean_auroc_defined: number | null;
  val_mean_f1: number | null;
  lr: number;
  lr_lowered: boolean;
  seconds: number;
  train_images_per_s: number;
  saved: boolean;
}

async function main(args: string[]): Promise<void> {
  const flags = parseFlags(args, FLAGS, USAGE, DESCRIPTION);
  const startedAt = new Date();
  const backend = await startBackend(flags);
  const train = await loadSubset({
    datasetDir: flags.dataset_dir,
    subset: "train",
    limit: flags.debug ? DEBUG_SIZES.train : undefined,
  });
  if (flags.preview_augmentation > 0) {
    await previewAugmentation(train, flags.preview_augmentation, flags.save_dir, flags.seed);
    return;
  }
  const val = await loadSubset({
    datasetDir: flags.dataset_dir,
    subset: "val",
    limit: flags.debug ? DEBUG_SIZES.val : undefined,
  });
  if (train.size === 0) throw new UserError(`no training images in ${flags.dataset_dir}`);
  if (val.size === 0) throw new UserError(`no validation images in ${flags.dataset_dir}`);

  // Model: resume from a checkpoint, or start from --weights.
  let model, weightsSource;
  if (flags.saved_model) {
    const path = await resolveSavedModel(flags.saved_model, flags.save_dir);
    model = (await loadModel(path)).model;
    weightsSource = { kind: "resume", path, sha256: null, notes: [] as string[] };
    console.error(`Resuming from ${path}.`);
  } else {
    const config = ARCHITECTURES[flags.arch];
    if (flags.arch !== "densenet121" && flags.weights === "imagenet") {
      throw new UserError(
        `--arch ${flags.arch} has no ImageNet weights: use --weights none or PATH`,
      );
    }
    const init = await initialModel(flags.weights, { config, seed: flags.seed });
    model = init.model;
    weightsSource = init.source;
    if (init.source.kind === "none") {
      console.error("Starting from random weights (--weights none).");
    } else {
      console.error(`Starting from ${init.source.path}.`);
    }
    for (const note of init.source.notes) console.error(`  ${note}`);
  }
  const memory = await resolveMemoryEfficient(
    flags.memory_efficient,
    backend.name,
    flags.batch_size,
    flags.image_size,
  );
  const memoryEfficient = memory.on;
  if (memory.note) console.error(`note: ${memory.note}`);
  const classWeights = flags.loss === "weighted_bce"
    ? classBalanceWeights(
      (await readLabelsCsv(`${flags.labels_dir}/train_labels.csv`)).flatMap((r) =>
        Array.from(r.labels)
      ),
      NUM_CLASSES,
    )
    : undefined;

  const sizeParams = paramsForImageSize(flags.image_size);
  const trainTransform: BatchTransform = flags.augmentation
    ? (x, r) => transformsTrainAugmented(x, r, sizeParams)
    : (x, r) => transformsTrain(x, r, sizeParams);
  const valTransform: BatchTransform = flags.augmentation
    ? (x, r) => transformsTestCentercrop(x, r, sizeParams)
    : (x, r) => transformsTest(x, r, sizeParams);
  const adam = new Adam({ lr: flags.learning_rate });
  const scheduler = new ReduceLROnPlateau(flags.learning_rate, {
    factor: flags.s_factor,
    patience: flags.s_patience,
  });
  await Deno.mkdir(flags.save_dir, { recursive: true });
  const paths = runPaths(flags.save_dir, runStamp(startedAt), flags.debug);
  const rng = new Rng(flags.seed);

  let stopRequested = false;
  const onSigint = () => {
    if (stopRequested) Deno.exit(130);
    stopRequested = true;
    console.error(
      "\nInterrupted: finishing the current batch and saving results (Ctrl-C again to quit now).",
    );
  };
  Deno.addSignalListener("SIGINT", onSigint);

  const epochs: EpochRecord[] = [];
  let best: { epoch: number; val_loss: number; thresholds: number[] } | null = null;
  let status = "running";
  const writeResults = async () => {
    await writeFileAtomic(
      paths.results,
      JSON.stringify(
        {
          status,
          model: paths.model,
          started: startedAt.toISOString(),
          flags: Object.fromEntries(Object.entries(flags).filter(([k]) => k !== "_")),
          seed: flags.seed,
          labels: LABELS,
          dataset: {
            train: { images: train.size, shards: train.shards },
            val: { images: val.size, shards: val.shards },
          },
          backend: backend,
          versions: { deno: Deno.version.deno, v8: Deno.version.v8, tfjs: tf.version_core },
          weights: weightsSource,
          memory_efficient: memoryEfficient,
          epochs,
          best,
        },
        null,
        2,
      ) + "\n",
    );
    await writeTrainingCurves(paths.curves, epochs);
  };

  console.log(
    `Training on ${train.size} images, validating on ${val.size} (${backend.name}, batch ` +
      `${flags.batch_size}${flags.augmentation ? ", augmentation" : ""}).`,
  );
  try {
    for (let epoch = 1; epoch <= flags.epochs && !stopRequested; epoch++) {
      const t0 = performance.now();
      console.log(`\nEpoch ${epoch}/${flags.epochs} (lr ${scheduler.lr})`);
      adam.lr = scheduler.lr;
      const trainBar = new Progress("train", train.size, { unit: "img" });
      const trained = await trainEpoch(
        model,
        adam,
        train.batches({
          batchSize: flags.batch_size,
          workers: flags.workers,
          shuffle: rng.fork(),
          shuffleBuffer: SHUFFLE_BUFFER,
        }),
        trainTransform,
        rng,
        { memoryEfficient, classWeights, progress: trainBar, stop: () => stopRequested },
      );
      trainBar.finish(`loss ${trained.loss.toFixed(4)}`);
      if (trained.nonFiniteLoss) {
        status = "stopped: non-finite loss";
        throw new UserError(
          `training loss became ${trained.nonFiniteLoss.loss} at batch ${trained.nonFiniteLoss.batch} ` +
            `of epoch ${epoch}; lower the learning rate (-l). The best model so far is kept` +
            (best ? ` in ${paths.model}` : ""),
        );
      }
      if (stopRequested) break;
      const trainImagesPerS = trained.n / trainBar.elapsed;
      const thresholds = Array.from(
        youdenThresholds(
          { rows: trained.n, cols: NUM_CLASSES, data: trained.labels },
          { rows: trained.n, cols: NUM_CLASSES, data: trained.probs },
        ),
      );

      const valBar = new Progress("val", val.size, { unit: "img" });
      const validated = await predictBatches(
        model,
        val.batches({ batchSize: flags.batch_size, workers: flags.workers }),
        valTransform,
        rng,
        { progress: valBar, stop: () => stopRequested },
      );
      valBar.finish();
      if (stopRequested) break;
      const valLoss = bceLoss(validated.labels, validated.probs);
      const metrics = evaluate(validated, thresholds);
      const improved = best === null || valLoss < best.val_loss;
      if (improved) {
        await writeCheckpoint(paths.model, {
          stateDict: await stateDictFromModel(model),
          thresholds: Float64Array.from(thresholds),
        });
        best = { epoch, val_loss: valLoss, thresholds };
      }
      const lowered = scheduler.step(valLoss);
      const record: EpochRecord = {
        epoch,
        train_loss: trained.loss,
        val_loss: valLoss,
        val_mean_auroc: jsonNumber(metrics.meanAuroc),
        val_mean_auroc_defined: jsonNumber(metrics.meanAurocDefined),
        val_mean_f1: jsonNumber(metrics.meanF1),
        lr: adam.lr,
        lr_lowered: lowered !== null,
        seconds: (performance.now() - t0) / 1000,
        train_images_per_s: trainImagesPerS,
        saved: improved,
      };
      epochs.push(record);
      await writeResults();
      const fmt = (v: number | null) => (v === null ? "NaN" : v.toFixed(4));
      console.log(
        `train loss ${record.train_loss.toFixed(4)} | val loss ${valLoss.toFixed(4)} | ` +
          `val AUROC ${fmt(record.val_mean_auroc_defined)} | val F1 ${fmt(record.val_mean_f1)} | ` +
          `${trainImagesPerS.toFixed(1)} img/s | ${formatDuration(record.seconds)}` +
          (improved ? ` | saved ${paths.model}` : ""),
      );
      if (lowered !== null) console.log(`Reducing learning rate to ${lowered}.`);
    }
    status = stopRequested ? "interrupted" : "complete";
  } catch (e) {
    if (status === "running") status = `failed: ${(e as Error).message}`;
    throw e;
  } finally {
    Deno.removeSignalListener("SIGINT", onSigint);
    if (epochs.length > 0 || status !== "running") await writeResults().catch(() => {});
    adam.dispose();
    disposeModel(model);
  }
  console.log(`\nTraining ${status}: ${epochs.length} epoch(s).`);
  if (best) {
    console.log(
      `Best epoch ${best.epoch}: validation loss ${best.val_loss.toFixed(4)}; model saved to ` +
        `${paths.model}`,
    );
  }
  console.log(`Results: ${paths.results}`);
  if (stopRequested) Deno.exit(130);
}

async function previewAugmentation(
  train: Awaited<ReturnType<typeof loadSubset>>,
  n: number,
  saveDir: string,
  seed: number,
): Promise<void> {
  const images: { data: Uint8Array; width: number; height: number }[] = [];
  for await (const batch of train.batches({ batchSize: n, workers: 2 })) {
    const pixels = batch.height * batch.width * 3;
    for (let i = 0; i < batch.n; i++) {
      images.push({
        data: batch.images.slice(i * pixels, (i + 1) * pixels),
        width: batch.width,
        height: batch.height,
      });
    }
    break;
  }
  await Deno.mkdir(saveDir, { recursive: true });
  const path = `${saveDir}/augmentation_preview.png`;
  await writeAugmentationPreview(images, path, { rng: new Rng(seed) });
  console.log(`Wrote ${path} (${images.length} images, original + augmented draws).`);
}

if (import.meta.main) await runMain(main);
