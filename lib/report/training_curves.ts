/**
 * The training-curves picture (`<stamp>_curves.svg`): training and validation loss per epoch in
 * one panel, validation mean AUROC (and mean F1 when recorded) in the other, with the learning-
 * rate drops and the best epoch (lowest validation loss, the checkpoint kept) marked — the
 * original README's loss figure, redrawn after every epoch.
 * @module
 */

import { writeFileAtomic } from "../util/atomic_file.ts";
import {
  escapeXml,
  niceDomain,
  niceStep,
  type PointMarker,
  renderChart,
  type Series,
  svgDocument,
  type VerticalMarker,
} from "./plot_svg.ts";

/** What training records about one epoch. */
export interface EpochRecord {
  /** Epoch number as shown to the user (1-based in this project). */
  epoch: number;
  /** Mean training loss (BCE) of the epoch. */
  train_loss: number;
  /** Mean validation loss (BCE) after the epoch. */
  val_loss: number;
  /** Mean validation AUROC over the 14 classes (`np.mean`); null when a class is undefined. */
  val_mean_auroc: number | null;
  /** Mean validation AUROC over the classes where it is defined, when recorded. */
  val_mean_auroc_defined?: number | null;
  /** Mean validation F1 at the epoch's thresholds, when recorded. */
  val_mean_f1?: number | null;
  /** The learning rate this epoch was trained with. */
  lr: number;
  /**
   * True when the scheduler lowered the learning rate at the end of this epoch (after its
   * validation), so the next epoch trains with a lower rate. Drawn between this epoch and
   * the next, labelled "lr → " and the next epoch's `lr` ("lr ↓" until that epoch exists).
   */
  lr_lowered?: boolean;
}

/** Options of {@link renderTrainingCurves}. */
export interface TrainingCurvesOptions {
  /** Heading above both panels. */
  title?: string;
}

const PANEL_W = 540;
const PANEL_H = 400;
const TITLE_H = 36;
const COLORS = {
  train: "#1f77b4",
  val: "#ff7f0e",
  auroc: "#2ca02c",
  aurocDefined: "#17becf",
  f1: "#9467bd",
  lr: "#7f7f7f",
  best: "#d62728",
};

/** "1e-4" style learning rate (3 significant digits at most). */
export function formatLr(lr: number): string {
  return Number(lr.toPrecision(3)).toExponential();
}

/** The index of the epoch with the lowest finite validation loss (first on ties), or -1. */
export function bestEpochIndex(epochs: readonly EpochRecord[]): number {
  let best = -1;
  for (let i = 0; i < epochs.length; i++) {
    const v = epochs[i].val_loss;
    if (Number.isFinite(v) && (best < 0 || v < epochs[best].val_loss)) best = i;
  }
  return best;
}

/** Integer epoch ticks, thinned to at most about 10. */
function epochTicks(min: number, max: number): number[] {
  const step = Math.max(1, niceStep(min, max, 10));
  const out: number[] = [];
  for (let t = Math.ceil(min / step) * step; t <= max; t += step) out.push(t);
  return out;
}

/**
 * A nice y range around `values` with a little room above and below, so no point sits on an
 * axis, kept within [lo, hi] when the values are.
 */
function paddedDomain(values: number[], lo: number, hi: number): [number, number] {
  const min = Math.min(...values), max = Math.max(...values);
  const pad = max > min ? (max - min) * 0.06 : Math.max(Math.abs(min) * 0.05, 0.01);
  const [a, b] = niceDomain(min - pad, max + pad, 5);
  return [min >= lo ? Math.max(lo, a) : a, max <= hi ? Math.min(hi, b) : b];
}

function isNumber(v: number | null | undefined): v is number {
  return typeof v === "number" && Number.isFinite(v);
}

function finite(values: Array<number | null | undefined>): number[] {
  return values.filter((v): v is number => typeof v === "number" && Number.isFinite(v));
}

/** The learning-rate drop markers: one dashed line after each epoch with `lr_lowered`. */
function lrMarkers(epochs: readonly EpochRecord[]): VerticalMarker[] {
  const out: VerticalMarker[] = [];
  epochs.forEach((e, i) => {
    if (!e.lr_lowered) return;
    const next = epochs[i + 1];
    const label = next !== undefined && next.lr < e.lr ? `lr → ${formatLr(next.lr)}` : "lr ↓";
    out.push({ x: e.epoch + 0.5, label, color: COLORS.lr, cls: "lr-drop" });
  });
  return out;
}

/**
 * Renders the training curves of `epochs` (in epoch order) as a standalone SVG document: left
 * panel training and validation loss, right panel validation mean AUROC (and F1); learning-rate
 * drops as grey dashed lines labelled "lr → 1e-4", the best epoch (lowest validation loss) as
 * a red dotted line and a red point on the validation loss. Works from 0 epochs up.
 */
export function renderTrainingCurves(
  epochs: readonly EpochRecord[],
  opts: TrainingCurvesOptions = {},
): string {
  const title = opts.title ?? "Training curves";
  const width = 2 * PANEL_W;
  const height = PANEL_H + TITLE_H;
  const parts: string[] = [
    `<text class="figure-title" x="${width / 2}" y="24" font-size="17" font-weight="bold" ` +
    `text-anchor="middle" fill="#111">${escapeXml(title)}</text>`,
  ];

  if (epochs.length === 0) {
    parts.push(
      `<text x="${width / 2}" y="${height / 2}" font-size="15" text-anchor="middle" ` +
        `fill="#555">No epoch finished yet.</text>`,
    );
    return svgDocument(width, height, parts.join("\n"), title);
  }

  const xs = epochs.map((e) => e.epoch);
  const xMin = Math.min(...xs) - 0.5, xMax = Math.max(...xs) + 0.5;
  const x = { min: xMin, max: xMax, label: "epoch", ticks: epochTicks(xMin, xMax) };
  const best = bestEpochIndex(epochs);
  const vlines = lrMarkers(epochs);
  const bestLine = (what: string): VerticalMarker[] =>
    best < 0 ? [] : [{
      x: epochs[best].epoch,
      color: COLORS.best,
      dash: "2 3",
      cls: "best-epoch",
      label: `best: epoch ${epochs[best].epoch}${what}`,
      labelAt: "bottom",
    }];
  const bestAuroc = best < 0 ? null : epochs[best].val_mean_auroc;
  const bestAurocDefined = best < 0 ? null : epochs[best].val_mean_auroc_defined;

  // Loss panel.
  const lossValues = finite(epochs.flatMap((e) => [e.train_loss, e.val_loss]));
  const [lossMin, lossMax] = lossValues.length > 0 ? paddedDomain(lossValues, 0, Infinity) : [0, 1];
  const lossSeries: Series[] = [
    {
      name: "training loss",
      x: xs,
      y: epochs.map((e) => e.train_loss),
      color: COLORS.train,
      markers: true,
      cls: "train-loss",
    },
    {
      name: "validation loss",
      x: xs,
      y: epochs.map((e) => e.val_loss),
      color: COLORS.val,
      markers: true,
      cls: "val-loss",
    },
  ];
  const lossPoints: PointMarker[] = best < 0 ? [] : [{
    x: epochs[best].epoch,
    y: epochs[best].val_loss,
    color: COLORS.best,
    cls: "best-epoch",
  }];
  parts.push(renderChart(
    {
      width: PANEL_W,
      height: PANEL_H,
      title: "Loss (binary cross-entropy)",
      x,
      y: { min: lossMin, max: lossMax, label: "loss" },
      series: lossSeries,
      vlines: [...vlines, ...bestLine(`, val loss ${epochs[best]?.val_loss.toFixed(4)}`)],
      points: lossPoints,
      legend: "above",
    },
    0,
    TITLE_H,
  ));

  // Validation metric panel: the 14-class mean AUROC, the mean over the defined classes when
  // some epoch has an undefined class, and F1; only series with a point get a legend entry.
  const someUndefined = epochs.some((e) => !isNumber(e.val_mean_auroc));
  const candidates: Series[] = [
    {
      name: "mean AUROC",
      x: xs,
      y: epochs.map((e) => e.val_mean_auroc),
      color: COLORS.auroc,
      markers: true,
      cls: "val-auroc",
    },
    {
      name: "mean AUROC over defined classes",
      x: xs,
      y: someUndefined ? epochs.map((e) => e.val_mean_auroc_defined ?? null) : [],
      color: COLORS.aurocDefined,
      markers: true,
      dash: "2 2",
      cls: "val-auroc-defined",
    },
    {
      name: "mean F1",
      x: xs,
      y: epochs.map((e) => e.val_mean_f1 ?? null),
      color: COLORS.f1,
      markers: true,
      dash: "6 3",
      cls: "val-f1",
    },
  ];
  const metricSeries = candidates.filter((c) => Array.from(c.y).some(isNumber));
  const hasF1 = metricSeries.some((c) => c.cls === "val-f1");
  const metricValues = finite(metricSeries.flatMap((c) => Array.from(c.y)));
  const [mMin, mMax] = metricValues.length > 0 ? paddedDomain(metricValues, 0, 1) : [0, 1];
  const metricPanel = renderChart(
    {
      width: PANEL_W,
      height: PANEL_H,
      title: hasF1 ? "Validation mean AUROC and F1" : "Validation mean AUROC",
      x,
      y: { min: mMin, max: mMax, label: hasF1 ? "mean AUROC / F1" : "mean AUROC" },
      series: metricSeries,
      vlines: [
        ...vlines,
        ...bestLine(
          isNumber(bestAuroc)
            ? `, AUROC ${bestAuroc.toFixed(4)}`
            : isNumber(bestAurocDefined)
            ? `, AUROC (defined classes) ${bestAurocDefined.toFixed(4)}`
            : "",
        ),
      ],
      legend: "above",
    },
    PANEL_W,
    TITLE_H,
  );
  parts.push(metricPanel);
  if (metricValues.length === 0) {
    parts.push(
      `<text x="${PANEL_W * 1.5}" y="${TITLE_H + PANEL_H / 2}" font-size="14" ` +
        `text-anchor="middle" fill="#777">AUROC undefined (a class without both label ` +
        `values)</text>`,
    );
  }
  return svgDocument(width, height, parts.join("\n"), title);
}

/** Writes {@link renderTrainingCurves} of `epochs` to `path` atomically (temp file + rename). */
export async function writeTrainingCurves(
  path: string,
  epochs: readonly EpochRecord[],
  opts: TrainingCurvesOptions = {},
): Promise<void> {
  await writeFileAtomic(path, renderTrainingCurves(epochs, opts));
}
