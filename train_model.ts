/**
 * train_model.ts — trains the CheXNet-style DenseNet-121 (ImageNet-pretrained, 14-way sigmoid
 * head) with BCE and Adam, validates every epoch, keeps the best model by validation loss
 * with per-class thresholds: Youden's J on the saved model's validation predictions (default), or
 * on the training epoch's predictions as the original tool does (`--thresholds train`).
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
import { ensureDir, writeFileAtomic } from "./lib/util/atomic_file.ts";
import { RUN_FLAGS, startBackend } from "./lib/run_flags.ts";
import {
  type MemoryEfficientChoice,
  resolveMemoryEfficient,
} from "./lib/backends/memory_efficient.ts";
import { checkTrainingFits, trainingStepBytes } from "./lib/train/training_memory.ts";
import { checkOutputPaths } from "./lib/util/output_paths.ts";
import { type FlagSpecs, givenFlags, parseFlags } from "./lib/util/cli.ts";
import { lastBatchNote, loadSubset } from "./lib/data/dataset.ts";
import { explainError, runMain, UserError } from "./lib/util/errors.ts";
import { evaluate, jsonNumber } from "./lib/eval/evaluation.ts";
import { predictBatches } from "./lib/eval/inference.ts";
import { bceLoss, youdenThresholds } from "./lib/eval/metrics.ts";
import { classBalanceWeights } from "./lib/train/loss.ts";
import { ARCHITECTURES, disposeModel } from "./lib/model/densenet.ts";
import { initialModel, loadModel } from "./lib/model/model_loading.ts";
import { stateDictFromModel } from "./lib/model/model_weights.ts";
import { Progress } from "./lib/util/progress.ts";
import { Rng } from "./lib/util/rng.ts";
import {
  lockRun,
  newestUnfinishedRun,
  reserveRunPaths,
  resolveSavedModel,
  runIsLive,
  runPathsOf,
} from "./lib/util/saved_models.ts";
import { StopSignals } from "./lib/util/stop_signals.ts";
import {
  type BestRecord,
  checkAdamFits,
  readTrainState,
  resumedFlags,
  type TrainProgress,
  writeTrainState,
} from "./lib/train/train_state.ts";
import { ReduceLROnPlateau } from "./lib/train/scheduler.ts";
import { writeCheckpoint } from "./lib/torch/torch_checkpoint.ts";
import { trainEpoch } from "./lib/train/training.ts";
import { readBoundLabels } from "./lib/data/label_binding.ts";
import { writeTrainingCurves } from "./lib/report/training_curves.ts";
import {
  firstEpochProgress,
  formatBestResults,
  formatEpochLine,
  formatInterrupted,
  formatSettings,
  originalResults,
  resultsPtPath,
} from "./lib/report/training_log.ts";
import { writeResultsPt } from "./lib/torch/results_pt.ts";
import { formatDecimal, plural } from "./lib/util/format.ts";
import { OnceWarnings } from "./lib/util/warnings.ts";
import {
  type BatchTransform,
  paramsForImageSize,
  transformsTest,
  transformsTestCentercrop,
  transformsTrain,
  transformsTrainAugmented,
} from "./transforms/augmented_transforms.ts";
import { writeAugmentationPreview } from "./transforms/preview.ts";

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
    help: "start from this checkpoint's weights (ours or the original tool's; as given, else " +
      "in --save_dir)",
  },
  resume: {
    kind: "string",
    default: null,
    metavar: "PATH|last",
    help: "continue an interrupted run exactly where its last epoch ended (its <stamp>_last.pt, " +
      "or last: the newest unfinished run in --save_dir); -e may raise the epoch count",
  },
  weights: {
    kind: "string",
    default: "imagenet",
    metavar: "imagenet|none|PATH",
    help: "starting weights: torchvision's ImageNet weights of the --arch, random, or a file",
  },
  arch: {
    kind: "string",
    default: "densenet121",
    choices: Object.keys(ARCHITECTURES),
    help: "network: DenseNet-121 (the original's), -169 or -201 (ImageNet weights for all " +
      "three), or a small DenseNet for quick runs (random init only)",
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
    help: "keep less for the backward pass and recompute it there (each dense layer's " +
      "BatchNorm+ReLU outputs from their statistics; the stem and transitions from their " +
      "inputs): same numbers, less memory (auto: on for native/wasm/cpu, off for tensorflow " +
      "and for a WebGPU adapter that holds the plain path)",
  },
  thresholds: {
    kind: "string",
    default: "val",
    choices: ["val", "train"],
    help: "decision thresholds by Youden's J on: the saved model's validation predictions, or " +
      "the training epoch's (the original tool's way)",
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

/** A run to continue (`--resume`): its files, its saved state, its flags. */
async function openResume(flags: ReturnType<typeof parseFlags<typeof FLAGS>>) {
  const path = flags.resume === "last"
    ? await newestUnfinishedRun(flags.save_dir)
    : runPathsOf(await resolveSavedModel(flags.resume!, flags.save_dir)).last;
  if (runIsLive(runPathsOf(path)) || !lockRun(runPathsOf(path))) {
    throw new UserError(`${path}: the run is still going on in another process; stop it first`);
  }
  const state = await readTrainState<EpochRecord>(path);
  const merged = {
    ...resumedFlags(state.progress.flags, flags, givenFlags(flags), path, FLAGS),
    save_dir: path.slice(0, Math.max(0, path.lastIndexOf("/"))) || ".", // where the run is now
  };
  // Runs from before --thresholds took them from the training epoch: continue them so.
  if (!("thresholds" in state.progress.flags)) merged.thresholds = "train";
  if (state.progress.epoch >= merged.epochs) {
    throw new UserError(
      `${path}: the run already has ${state.progress.epoch} of ${merged.epochs} epochs; ` +
        `pass -e N with N above ${state.progress.epoch} to train on`,
    );
  }
  return { path, state, flags: merged, paths: runPathsOf(path) };
}

async function main(args: string[]): Promise<void> {
  const parsed = parseFlags(args, FLAGS, USAGE, DESCRIPTION);
  const resumed = parsed.resume ? await openResume(parsed) : null;
  const flags = resumed?.flags ?? parsed;
  const startedAt = resumed ? new Date(resumed.state.progress.started) : new Date();
  // The memory decision probes the started GPU and belongs on its `backend:` line.
  let memory: MemoryEfficientChoice = { on: true };
  const backend = await startBackend(flags, async (info) => {
    // The --arch's network (a run from saved weights is sized as its --arch says).
    const config = ARCHITECTURES[flags.arch].config;
    memory = await resolveMemoryEfficient(flags.memory_efficient, info.name, {
      bytes: trainingStepBytes(config, flags.batch_size, flags.image_size, false, info.name),
      batch: flags.batch_size,
      imageSize: flags.image_size,
    });
    return memory.note ?? null;
  });
  const train = await loadSubset({
    datasetDir: flags.dataset_dir,
    subset: "train",
    limit: flags.debug ? DEBUG_SIZES.train : undefined,
  });
  // Outputs are checked once the shards are found, before any image is decoded.
  const checkOutputs = () =>
    checkOutputPaths([{ flag: "--save_dir", path: flags.save_dir, kind: "dir" }]);
  if (flags.preview_augmentation > 0) {
    await checkOutputs();
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
  const ds = resumed?.state.progress.dataset;
  if (ds && (ds.train !== train.size || ds.val !== val.size)) {
    throw new UserError(
      `${flags.dataset_dir} holds ${train.size} training / ${val.size} validation images, the ` +
        `run being resumed had ${ds.train} / ${ds.val}: pass the run's --dataset_dir`,
    );
  }
  // Inputs are resolved before outputs are checked, so a wrong -s is named as such.
  const savedModel = !resumed && flags.saved_model
    ? await resolveSavedModel(flags.saved_model, flags.save_dir)
    : null;
  await checkOutputs();

  // Model: resume from a checkpoint, or start from --weights.
  let model, weightsSource;
  if (resumed) {
    model = (await loadModel(resumed.path)).model;
    weightsSource = resumed.state.progress.weights;
    console.error(
      `Resuming run ${resumed.paths.stamp} after epoch ${resumed.state.progress.epoch}.`,
    );
  } else if (savedModel) {
    const path = savedModel;
    model = (await loadModel(path)).model;
    weightsSource = { kind: "resume", path, sha256: null, notes: [] as string[] };
    console.error(
      `Starting from the weights of ${path} (optimiser and epochs afresh; --resume continues a run).`,
    );
  } else {
    const arch = ARCHITECTURES[flags.arch];
    if (arch.imagenet == null && flags.weights === "imagenet") {
      throw new UserError(
        `--arch ${flags.arch} has no ImageNet weights: use --weights none or PATH`,
      );
    }
    const init = await initialModel(flags.weights, {
      config: arch.config,
      imagenetFile: arch.imagenet ?? undefined,
      seed: flags.seed,
    });
    model = init.model;
    weightsSource = init.source;
    if (init.source.kind === "none") {
      console.error("Starting from random weights (--weights none).");
    } else {
      console.error(`Starting from ${init.source.path}.`);
    }
    for (const note of init.source.notes) console.error(`  ${note}`);
  }
  const memoryEfficient = memory.on;
  checkTrainingFits(
    backend.name,
    model.config,
    flags.batch_size,
    flags.image_size,
    memoryEfficient,
  );
  const classWeights = flags.loss === "weighted_bce"
    ? classBalanceWeights(
      (await readBoundLabels(flags.labels_dir, flags.dataset_dir, "train")).flatMap((r) =>
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
  await ensureDir(flags.save_dir, "--save_dir");
  const paths = resumed?.paths ?? await reserveRunPaths(flags.save_dir, startedAt, flags.debug);
  const rng = new Rng(flags.seed);
  const epochs: EpochRecord[] = [];
  let best: BestRecord | null = null;
  const resumes: { after_epoch: number; at: string }[] = [];
  if (resumed) {
    // Continue exactly: optimiser moments and step, scheduler, RNG, records.
    const saved = resumed.state.progress;
    checkAdamFits(resumed.state.adam, model, resumed.path);
    adam.setState(resumed.state.adam);
    scheduler.restore(saved.scheduler);
    rng.setState(saved.rng);
    epochs.push(...saved.epochs);
    best = saved.best;
    resumes.push(...(saved.resumes ?? []), {
      after_epoch: saved.epoch,
      at: new Date().toISOString(),
    });
  }
  const runFlags = Object.fromEntries(Object.entries(flags).filter(([k]) => k !== "_"));

  const stop = new StopSignals((signal) =>
    console.error(
      `\nInterrupted (${signal}): finishing the current batch and saving results ` +
        `(again to quit now).`,
    )
  );
  const stopRequested = () => stop.requested;

  let status = "running";
  const writeResults = async () => {
    await writeFileAtomic(
      paths.results,
      JSON.stringify(
        {
          status,
          ...(stop.signal ? { signal: stop.signal } : {}),
          pid: Deno.pid,
          model: paths.model,
          resume_state: paths.last,
          started: startedAt.toISOString(),
          ...(resumes.length ? { resumed: resumes } : {}),
          flags: runFlags,
          seed: flags.seed,
          thresholds_from: flags.thresholds === "val"
            ? "validation predictions of the saved model (Youden's J)"
            : "training epoch predictions (Youden's J, as the original tool)",
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
    await writeResultsPt(resultsPtPath(paths.results), originalResults(epochs));
  };
  const thresholdWarnings = new OnceWarnings();

  console.log(
    `Training on ${plural(train.size, "image")}, validating on ${val.size}.`,
  );
  console.log(formatSettings(flags, backend));
  const lastBatch = lastBatchNote(train.size, flags.batch_size);
  if (lastBatch) console.log(lastBatch);
  try {
    await writeResults();
    for (let epoch = epochs.length + 1; epoch <= flags.epochs && !stopRequested(); epoch++) {
      const t0 = performance.now();
      console.log(`\nEpoch ${epoch}/${flags.epochs} (lr ${formatDecimal(scheduler.lr)})`);
      adam.lr = scheduler.lr;
      const trainBar = epoch > 1
        ? new Progress("train", train.size, { unit: "img" })
        : firstEpochProgress(train.size, val.size, flags.epochs);
      const trained = await trainEpoch(
        model,
        adam,
        train.batches({
          batchSize: flags.batch_size,
          workers: flags.workers,
          shuffle: rng.fork(),
          shuffleBuffer: SHUFFLE_BUFFER,
          mergeLastSingle: true,
        }),
        trainTransform,
        rng,
        { memoryEfficient, classWeights, progress: trainBar, stop: stopRequested },
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
      if (stopRequested()) break;
      const trainImagesPerS = trained.n / trainBar.elapsed;

      const valBar = new Progress("val", val.size, { unit: "img" });
      const validated = await predictBatches(
        model,
        val.batches({ batchSize: flags.batch_size, workers: flags.workers }),
        valTransform,
        rng,
        { progress: valBar, stop: stopRequested },
      );
      valBar.finish();
      if (stopRequested()) break;
      const valLoss = bceLoss(validated.labels, validated.probs);
      // Youden's J on the predictions `--thresholds` names: the validation pass of the very
      // weights saved below (held-out, unaugmented), or the training epoch's (the original's).
      const fitted = flags.thresholds === "val" ? validated : trained;
      const thresholds = Array.from(
        youdenThresholds(
          { rows: fitted.n, cols: NUM_CLASSES, data: fitted.labels },
          { rows: fitted.n, cols: NUM_CLASSES, data: fitted.probs },
          LABELS,
          (m, c) => thresholdWarnings.warn(m, c),
        ),
      );
      const metrics = evaluate(validated, thresholds);
      const improved = best === null || valLoss < best.val_loss;
      const stateDict = await stateDictFromModel(model);
      if (improved) {
        await writeCheckpoint(paths.model, {
          stateDict,
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
      const progress: Omit<TrainProgress<EpochRecord>, "adam"> = {
        epoch,
        flags: runFlags,
        started: startedAt.toISOString(),
        dataset: { train: train.size, val: val.size },
        weights: weightsSource,
        scheduler: scheduler.toJSON(),
        rng: rng.getState(),
        best,
        thresholds,
        epochs,
        resumes,
      };
      await writeTrainState(paths.last, { stateDict, adam: await adam.getState(), progress });
      await writeResults();
      console.log(formatEpochLine(record, metrics, improved ? paths.model : null));
      if (lowered !== null) console.log(`Reducing learning rate to ${formatDecimal(lowered)}.`);
    }
    status = stopRequested() ? "interrupted" : "complete";
  } catch (e) {
    const clear = await explainError(e);
    if (status === "running") status = `failed: ${clear.message}`;
    throw clear;
  } finally {
    stop.dispose();
    await writeResults().catch(() => {});
    adam.dispose();
    disposeModel(model);
  }
  console.log(
    status === "interrupted"
      ? `\n${formatInterrupted(epochs, paths)}`
      : `\nTraining ${status}: ${plural(epochs.length, "epoch")}.`,
  );
  const warned = thresholdWarnings.summary("threshold");
  if (warned) console.warn(warned);
  const bestResults = formatBestResults(epochs, paths.model);
  if (bestResults) console.log(bestResults);
  console.log(`Results: ${paths.results} (and ${resultsPtPath(paths.results)})`);
  if (stop.requested) Deno.exit(stop.exitCode);
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
  await ensureDir(saveDir, "--save_dir");
  const path = `${saveDir}/augmentation_preview.png`;
  await writeAugmentationPreview(images, path, { rng: new Rng(seed) });
  console.log(`Wrote ${path} (${plural(images.length, "image")}, original + augmented draws).`);
}

if (import.meta.main) await runMain(main);
