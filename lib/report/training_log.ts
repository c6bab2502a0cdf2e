/**
 * What training prints, as the original prints it: the settings before the first epoch, an
 * estimate of the epoch and run time after the first batches, one line per epoch with both
 * AUROC means labelled, and the "Best model results" summary at the end; and the numbers of
 * the original's `_results.pt`.
 * @module
 */
import { Progress, type ProgressOptions } from "../util/progress.ts";
import { formatDuration } from "../util/progress.ts";
import { formatDecimal } from "../util/format.ts";
import { bestEpochIndex, type EpochRecord } from "./training_curves.ts";
import type { Evaluation } from "../eval/evaluation.ts";

/** The training flags the original prints before training (train_model.ts's names). */
export interface TrainingFlags {
  batch_size: number;
  workers: number;
  learning_rate: number;
  s_factor: number;
  s_patience: number;
  augmentation: boolean;
  image_size: number;
  arch: string;
  /** When resuming, the network is the checkpoint's. */
  saved_model: string | null;
  epochs: number;
  /** Where the decision thresholds come from (`--thresholds`). */
  thresholds?: string;
}

/** The settings block printed before training. */
export function formatSettings(
  f: TrainingFlags,
  backend: { name: string; device: string },
): string {
  const rows: [string, string | number][] = [
    ["Device", `${backend.name} (${backend.device})`],
    ["Batch size", f.batch_size],
    ["Workers", f.workers],
    ["Learning rate", formatDecimal(f.learning_rate)],
    ["Scheduler factor", formatDecimal(f.s_factor)],
    ["Scheduler patience", f.s_patience],
    ["Data augmentation", f.augmentation ? "yes" : "no"],
    ["Image size", f.image_size],
    ["Architecture", f.saved_model ? `as in ${f.saved_model}` : f.arch],
    ["Epochs", f.epochs],
    ...(f.thresholds
      ? [[
        "Thresholds",
        f.thresholds === "val"
          ? "Youden's J on validation predictions (val)"
          : "Youden's J on training predictions (train)",
      ] as [string, string]]
      : []),
  ];
  return rows.map(([k, v]) => `${(k + ":").padEnd(20)}${v}`).join("\n");
}

/** The labels of the two AUROC means, the same on the console, in JSON and in the curves. */
export function aurocMeanLabel(definedClasses: number | null): string {
  return definedClasses === null
    ? "mean AUROC over defined classes"
    : `mean AUROC over ${definedClasses} defined classes`;
}

/** What one epoch line shows besides the validation metrics (train_model.ts's record). */
export interface EpochTimes {
  train_loss: number;
  val_loss: number;
  train_images_per_s: number;
  seconds: number;
}

const f4 = (v: number) => (Number.isFinite(v) ? v.toFixed(4) : "NaN");

/**
 * `train loss … | val loss … | val mean AUROC … | …`: the 14-class mean always, and, when a
 * class is undefined, the mean over the defined classes with their count. `saved`: the
 * checkpoint path when this epoch was saved.
 */
export function formatEpochLine(e: EpochTimes, m: Evaluation, saved: string | null): string {
  const auroc = m.definedClasses === m.auroc.length
    ? `val mean AUROC ${f4(m.meanAuroc)}`
    : `val mean AUROC ${f4(m.meanAuroc)} | val ${aurocMeanLabel(m.definedClasses)} ` +
      f4(m.meanAurocDefined);
  return `train loss ${e.train_loss.toFixed(4)} | val loss ${e.val_loss.toFixed(4)} | ${auroc} | ` +
    `val mean F1 ${f4(m.meanF1)} | ${e.train_images_per_s.toFixed(1)} img/s | ` +
    formatDuration(e.seconds) + (saved ? ` | saved ${saved}` : "");
}

/** What the results files know about each epoch (a subset of the training record). */
export type EpochNumbers = Pick<
  EpochRecord,
  "epoch" | "train_loss" | "val_loss" | "val_mean_auroc" | "val_mean_auroc_defined" | "val_mean_f1"
>;

const num = (v: number | null | undefined) => (typeof v === "number" ? v : NaN);

/** The "Best model results" summary (the epoch kept: lowest validation loss), or null. */
export function formatBestResults(epochs: readonly EpochNumbers[], model: string): string | null {
  const i = bestEpochIndex(epochs.map((e) => ({ ...e, lr: 0 })));
  if (i < 0) return null;
  const b = epochs[i];
  const defined = num(b.val_mean_auroc_defined);
  const rows: [string, string][] = [
    ["Epoch", String(b.epoch)],
    ["Validation loss", f4(b.val_loss)],
    ["Mean AUROC", f4(num(b.val_mean_auroc))],
  ];
  if (!Number.isFinite(num(b.val_mean_auroc)) && Number.isFinite(defined)) {
    rows.push(["Mean AUROC over defined classes", f4(defined)]);
  }
  rows.push(["Mean F1 score", f4(num(b.val_mean_f1))], ["Model", model]);
  return ["Best model results:", ...rows.map(([k, v]) => `  ${(k + ":").padEnd(33)}${v}`)]
    .join("\n");
}

/**
 * The line that ends a run stopped by Ctrl-C (or SIGTERM): what was kept and how to go on. Before
 * the first epoch finished nothing can be resumed (no model, no state), and the line says so
 * instead of "0 epochs"; after it, the best model and the state file are named with the
 * `--resume` command that continues exactly where the last finished epoch ended.
 */
export function formatInterrupted(
  epochs: readonly { epoch: number; saved: boolean }[],
  paths: { model: string; last: string; results: string },
): string {
  const inEpoch = epochs.length + 1;
  if (epochs.length === 0) {
    return `Training interrupted in epoch 1, before any epoch finished: no model was saved and ` +
      `there is nothing to resume (--resume needs a finished epoch); run the same command ` +
      `again to start anew. The run's record: ${paths.results}.`;
  }
  const best = [...epochs].reverse().find((e) => e.saved);
  const done = epochs.length === 1 ? "1 finished epoch" : `${epochs.length} finished epochs`;
  return `Training interrupted in epoch ${inEpoch}: kept ${done}` +
    (best ? `, the best model (epoch ${best.epoch}) in ${paths.model}` : "") +
    ` and the state after epoch ${epochs.length} in ${paths.last}; the unfinished epoch ` +
    `${inEpoch} is not kept. Continue with: --resume last (or --resume ${paths.last}).`;
}

/**
 * The dict the original saves as `_results.pt`, in its key order: per-epoch 'training loss',
 * 'validation loss', 'mean auroc' (`np.mean` over the 14 classes: NaN when one is undefined)
 * and 'mean F1 score', then the best model's (lowest validation loss) three numbers.
 */
export function originalResults(
  epochs: readonly EpochNumbers[],
): Array<[string, Float64Array | number]> {
  const col = (f: (e: EpochNumbers) => number) => Float64Array.from(epochs, f);
  const i = bestEpochIndex(epochs.map((e) => ({ ...e, lr: 0 })));
  const best = i < 0 ? null : epochs[i];
  return [
    ["training loss", col((e) => e.train_loss)],
    ["validation loss", col((e) => e.val_loss)],
    ["mean auroc", col((e) => num(e.val_mean_auroc))],
    ["mean F1 score", col((e) => num(e.val_mean_f1))],
    ["best validation loss", best ? best.val_loss : NaN],
    ["best model mean AUROC", best ? num(best.val_mean_auroc) : NaN],
    ["best model mean F1 score", best ? num(best.val_mean_f1) : NaN],
  ];
}

/** `<stamp>_results.pt` beside `<stamp>_results.json`. */
export function resultsPtPath(resultsJson: string): string {
  return resultsJson.replace(/\.json$/, "") + ".pt";
}

/**
 * A training progress bar that, once the first batches have run (the very first is left out:
 * it compiles kernels), says how long the epoch and the whole run will take.
 */
export class EstimatingProgress extends Progress {
  #first: { t: number; done: number } | null = null;
  #said = false;
  #ticks = 0;
  readonly #estimate: (trainSeconds: number) => string;
  readonly #print: (line: string) => void;
  readonly #minSeconds: number;

  /**
   * `estimate` turns the projected training seconds of this epoch into the line to print;
   * `print` writes it (default: stdout, after clearing a terminal's bar line).
   */
  constructor(
    label: string,
    total: number,
    estimate: (trainSeconds: number) => string,
    opts: ProgressOptions & { print?: (line: string) => void; minSeconds?: number } = {},
  ) {
    super(label, total, opts);
    this.#estimate = estimate;
    this.#minSeconds = opts.minSeconds ?? 2;
    this.#print = opts.print ?? ((line) => {
      if (Deno.stderr.isTerminal()) Deno.stderr.writeSync(new TextEncoder().encode("\r\x1b[2K"));
      console.log(line);
    });
  }

  override tick(n = 1, extra?: string): void {
    super.tick(n, extra);
    const now = performance.now();
    if (this.#first === null) {
      this.#first = { t: now, done: this.done };
      return;
    }
    const seconds = (now - this.#first.t) / 1000;
    const items = this.done - this.#first.done;
    this.#ticks++;
    // Three timed batches at least; then 2 s of them, or 8 batches on a fast machine.
    const enough = this.#ticks >= 3 && (seconds >= this.#minSeconds || this.#ticks >= 8);
    if (this.#said || !enough || items <= 0 || this.done >= this.total) return;
    this.#said = true;
    const rate = items / seconds;
    this.#print(this.#estimate(this.elapsed + (this.total - this.done) / rate));
  }
}

/**
 * The estimate line: this epoch's training time, and the run's (training plus validation,
 * which runs the network forward only: about a third of a training step per image).
 */
export function formatEstimate(
  trainSeconds: number,
  o: { trainImages: number; valImages: number; epochs: number },
): string {
  const val = trainSeconds * o.valImages / o.trainImages / 3;
  return `Estimated time: ${formatDuration(trainSeconds + val)} per epoch ` +
    `(training ${formatDuration(trainSeconds)}), ${
      formatDuration((trainSeconds + val) * o.epochs)
    } ` +
    `for ${o.epochs} epoch${o.epochs === 1 ? "" : "s"}.`;
}

/** The first epoch's bar: it prints {@link formatEstimate} once the first batches have run. */
export function firstEpochProgress(
  trainImages: number,
  valImages: number,
  epochs: number,
): EstimatingProgress {
  return new EstimatingProgress(
    "train",
    trainImages,
    (s) => formatEstimate(s, { trainImages, valImages, epochs }),
    { unit: "img" },
  );
}
