/**
 * The validation report (`validate_model.ts --report PATH.html`): one self-contained HTML file
 * (inline CSS and inline SVG, no script, no font or image from anywhere) with the run's
 * metadata, the per-class AUROC/F1 table with the original's means, the dataset counts per
 * class, the ROC curve of every class with its decision threshold marked; with the results of
 * lib/eval/uncertainty.ts also bootstrap intervals, ECE, reliability diagrams beside the ROC
 * curves, and the `--compare` table.
 * @module
 */

import { LABELS, NUM_CLASSES } from "../../config.ts";
import { writeFileAtomic } from "../util/atomic_file.ts";
import { UserError } from "../util/errors.ts";
import {
  aurocPerClass,
  column,
  f1PerClass,
  type Matrix,
  matrix,
  mean,
  nanMean,
  rocCurve,
} from "../eval/metrics.ts";
import type { Uncertainty } from "../eval/uncertainty.ts";
import type { Reliability } from "../eval/calibration.ts";
import { escapeXml, FONT_FAMILY, inlineSvg, renderChart } from "./plot_svg.ts";

/** What the report is made from: the predictions of one model on one subset. */
export interface ReportInput {
  /** The checkpoint validated. */
  modelPath: string;
  /** The subset name (train, val, test) or a description of the images. */
  subset: string;
  /** n × 14 labels (0/1), row-major, in the order of {@link LABELS}. */
  labels: Float32Array;
  /** n × 14 predicted probabilities, row-major. */
  probs: Float32Array;
  /** Number of images. */
  n: number;
  /** The 14 decision thresholds: a class is predicted when probability > threshold. */
  thresholds: ArrayLike<number>;
  /** Further run facts shown in the header, in order (backend, date, crop, …). */
  meta: Record<string, string | number>;
  /** Bootstrap intervals, calibration and comparison (validate_model.ts), when computed. */
  uncertainty?: Uncertainty;
}

/** Everything the report shows for one class. */
export interface ClassSummary {
  name: string;
  positives: number;
  negatives: number;
  /** NaN when the class has a single label value. */
  auroc: number;
  f1: number;
  threshold: number;
  /** True/false positive rate of the decision `probability > threshold`; NaN if undefined. */
  tprAtThreshold: number;
  fprAtThreshold: number;
  /** The ROC curve (sklearn 1.2 points), or null when AUROC is undefined. */
  roc: { fpr: Float64Array; tpr: Float64Array } | null;
}

/** The report's numbers, computed with lib/metrics.ts. */
export interface ReportSummary {
  classes: ClassSummary[];
  /** The original's `np.mean` of the AUROCs: NaN as soon as one class is undefined. */
  meanAuroc: number;
  /** Mean AUROC over the classes where it is defined. */
  meanAurocDefined: number;
  /** Number of classes with a defined AUROC. */
  definedCount: number;
  /** `np.mean` of the F1 scores over all classes. */
  meanF1: number;
  /** Mean F1 over the classes with a defined AUROC (the same classes as `meanAurocDefined`). */
  meanF1Defined: number;
}

function checkInput(input: ReportInput): { labels: Matrix; probs: Matrix } {
  const { n } = input;
  if (!Number.isInteger(n) || n <= 0) {
    throw new UserError(`report: no images to report on (n = ${n})`);
  }
  for (const [what, a] of [["labels", input.labels], ["probabilities", input.probs]] as const) {
    if (a.length !== n * NUM_CLASSES) {
      throw new UserError(
        `report: expected ${n} × ${NUM_CLASSES} ${what}, got ${a.length} values`,
      );
    }
  }
  if (input.thresholds.length !== NUM_CLASSES) {
    throw new UserError(
      `report: expected ${NUM_CLASSES} thresholds, got ${input.thresholds.length}`,
    );
  }
  return { labels: matrix(input.labels, NUM_CLASSES), probs: matrix(input.probs, NUM_CLASSES) };
}

/** Computes the per-class numbers and the means shown in the report. */
export function summarizeReport(input: ReportInput): ReportSummary {
  const { labels, probs } = checkInput(input);
  const aurocs = aurocPerClass(labels, probs);
  const f1s = f1PerClass(labels, probs, input.thresholds);
  const classes: ClassSummary[] = [];
  for (let c = 0; c < NUM_CLASSES; c++) {
    const y = column(labels, c), s = column(probs, c);
    const t = input.thresholds[c];
    let pos = 0, tp = 0, fp = 0;
    for (let i = 0; i < y.length; i++) {
      const positive = y[i] === 1;
      if (positive) pos++;
      if (s[i] > t) positive ? tp++ : fp++;
    }
    const neg = y.length - pos;
    const defined = !Number.isNaN(aurocs[c]);
    classes.push({
      name: LABELS[c],
      positives: pos,
      negatives: neg,
      auroc: aurocs[c],
      f1: f1s[c],
      threshold: t,
      tprAtThreshold: pos > 0 ? tp / pos : NaN,
      fprAtThreshold: neg > 0 ? fp / neg : NaN,
      roc: defined ? rocCurve(y, s) : null,
    });
  }
  const definedF1 = classes.filter((c) => c.roc !== null).map((c) => c.f1);
  return {
    classes,
    meanAuroc: mean(aurocs),
    meanAurocDefined: nanMean(aurocs),
    definedCount: definedF1.length,
    meanF1: mean(f1s),
    meanF1Defined: definedF1.length > 0 ? mean(definedF1) : NaN,
  };
}

/** 4 decimals, or "n/a" for an undefined value. */
export function fmt4(v: number): string {
  return Number.isFinite(v) ? v.toFixed(4) : "n/a";
}

const ROC_SIZE = 310;

const CSS = `
body { font-family: ${FONT_FAMILY}; color: #1a1a1a; margin: 24px 32px; background: #fff; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 28px 0 10px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
p.note { color: #555; font-size: 13px; margin: 4px 0; }
table { border-collapse: collapse; font-size: 14px; }
th, td { padding: 4px 10px; border-bottom: 1px solid #e4e4e4; }
th { background: #f3f5f7; text-align: left; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.na { color: #999; }
td.ci { white-space: nowrap; }
tr.mean td { font-weight: bold; background: #fafafa; border-top: 2px solid #bbb; }
td.above { background: #fdecea; }
tr.thresholds td { color: #555; font-style: italic; }
table.meta th { background: none; font-weight: normal; color: #555; }
table.meta td { font-family: DejaVu Sans Mono, monospace; font-size: 13px; }
table.meta td { overflow-wrap: anywhere; }
.scroll-x { max-width: 100%; overflow-x: auto; }
.layout { display: flex; flex-wrap: wrap; gap: 32px; align-items: flex-start; }
/* As many columns as fit (4 at 1400 px, 2 at 800 px); panels scale with their column. */
.roc-grid, .reliability-grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(min(100%, ${
  Math.round(ROC_SIZE * 0.85)
}px), 1fr)); gap: 8px; max-width: ${4 * ROC_SIZE * 1.3}px; }
.roc-grid svg, .reliability-grid svg { width: 100%; height: auto; box-sizing: border-box; border: 1px solid #e4e4e4; background: #fff; }
@media (max-width: 700px) { body { margin: 12px; } }
`;

const ROC_COLOR = "#1f77b4";
const THRESHOLD_COLOR = "#d62728";
const RELIABILITY_COLOR = "#2ca02c";

/** The dashed grey diagonal of a ROC plot (chance) or a reliability diagram (perfect). */
function diagonal(name: string) {
  return {
    name,
    x: [0, 1],
    y: [0, 1],
    color: "#aaaaaa",
    dash: "4 4",
    width: 1,
    hideInLegend: true,
    cls: "chance",
  };
}

/** Keeps ROC points that move at least ~0.5 px, so huge test sets stay a small file. */
function thinCurve(fpr: Float64Array, tpr: Float64Array): { x: number[]; y: number[] } {
  const x: number[] = [], y: number[] = [];
  const eps = 0.5 / ROC_SIZE;
  for (let i = 0; i < fpr.length; i++) {
    const last = x.length - 1;
    const isEnd = i === 0 || i === fpr.length - 1;
    if (
      !isEnd && Math.abs(fpr[i] - x[last]) < eps && Math.abs(tpr[i] - y[last]) < eps
    ) continue;
    x.push(fpr[i]);
    y.push(tpr[i]);
  }
  return { x, y };
}

function rocPanel(c: ClassSummary, index: number): string {
  const ticks = [0, 0.2, 0.4, 0.6, 0.8, 1];
  const common = {
    width: ROC_SIZE,
    height: ROC_SIZE,
    margin: { top: 30, right: 12, bottom: 40, left: 48 },
    title: c.name,
    fontSize: 11,
    x: { min: 0, max: 1, ticks, label: "false positive rate" },
    y: { min: 0, max: 1, ticks, label: "true positive rate" },
  };
  const chance = diagonal("chance");
  let body: string;
  if (c.roc === null) {
    body = renderChart({ ...common, series: [chance], legend: "none" }) +
      `\n<text class="undefined" x="${ROC_SIZE / 2 + 18}" y="${ROC_SIZE / 2}" ` +
      `font-size="12" text-anchor="middle" fill="#777">ROC undefined: ${
        c.positives === 0 ? "no positive images" : "no negative images"
      }</text>`;
  } else {
    const { x, y } = thinCurve(c.roc.fpr, c.roc.tpr);
    body = renderChart({
      ...common,
      series: [chance, {
        name: `AUROC ${fmt4(c.auroc)}`,
        x,
        y,
        color: ROC_COLOR,
        cls: "roc",
      }, {
        // A legend entry for the threshold point (the point itself is drawn below).
        name: `threshold ${c.threshold.toFixed(4)}`,
        x: [],
        y: [],
        color: THRESHOLD_COLOR,
        cls: "legend-only",
        legendSymbol: "dot",
      }],
      points: [{
        x: c.fprAtThreshold,
        y: c.tprAtThreshold,
        color: THRESHOLD_COLOR,
        cls: "threshold",
        radius: 4.5,
      }],
      legend: "bottom-right",
    });
  }
  return inlineSvg(ROC_SIZE, ROC_SIZE, body, {
    "class": "roc-panel",
    "data-class": c.name,
    "role": "img",
    "aria-label": `ROC curve of ${c.name}`,
    "id": `roc-${index}`,
  });
}

/** `[low, high]` of an interval, or n/a. */
function tdInterval(ci: [number, number] | undefined): string {
  return ci && Number.isFinite(ci[0]) && Number.isFinite(ci[1])
    ? `<td class="num ci">[${fmt4(ci[0])}, ${fmt4(ci[1])}]</td>`
    : `<td class="num ci na">n/a</td>`;
}

const signed4 = (v: number) => (Number.isFinite(v) ? (v >= 0 ? "+" : "") + v.toFixed(4) : "n/a");

/** One class's reliability diagram: observed frequency against mean prediction per bin. */
function reliabilityPanel(name: string, r: Reliability, index: number): string {
  const ticks = [0, 0.2, 0.4, 0.6, 0.8, 1];
  const x: number[] = [], y: number[] = [];
  r.count.forEach((n, b) => {
    if (n === 0) return;
    x.push(r.meanPredicted[b]);
    y.push(r.observed[b]);
  });
  const body = renderChart({
    width: ROC_SIZE,
    height: ROC_SIZE,
    margin: { top: 30, right: 12, bottom: 40, left: 48 },
    title: name,
    fontSize: 11,
    x: { min: 0, max: 1, ticks, label: "mean predicted probability" },
    y: { min: 0, max: 1, ticks, label: "fraction positive" },
    series: [diagonal("perfect calibration"), {
      name: `ECE ${fmt4(r.ece)}`,
      x,
      y,
      color: RELIABILITY_COLOR,
      markers: true,
      cls: "reliability",
    }],
    legend: "bottom-right",
  });
  return inlineSvg(ROC_SIZE, ROC_SIZE, body, {
    "class": "reliability-panel",
    "data-class": name,
    "role": "img",
    "aria-label": `Reliability diagram of ${name}`,
    "id": `reliability-${index}`,
  });
}

/** The `--compare` section: per class AUROC of A and B, A − B, DeLong interval and p. */
function comparisonSection(u: Uncertainty, modelA: string): string[] {
  const k = u.compare!;
  const level = `${Math.round(u.ci * 1000) / 10}%`;
  const h = [
    `<h2>Comparison with ${escapeXml(k.modelB.split("/").pop() ?? k.modelB)}</h2>`,
    `<p class="note">A = ${escapeXml(modelA)}, B = ${escapeXml(k.modelB)}, on the same images. ` +
    `Per class: DeLong's test (fast algorithm of Sun &amp; Xu, 2014) of AUROC(A) − AUROC(B), ` +
    `its interval and two-sided p-value. Mean: over the ${k.definedClasses} classes with ` +
    `defined AUROC, with the paired bootstrap interval (both models scored on the same ` +
    `resamples).</p>`,
    `<div class="scroll-x"><table class="compare">`,
    `<thead><tr><th>Class</th><th class="num">AUROC A</th><th class="num">AUROC B</th>` +
    `<th class="num">A − B</th><th class="num">DeLong interval</th>` +
    `<th class="num">p-value</th></tr></thead><tbody>`,
  ];
  k.classes.forEach((d, c) => {
    h.push(
      `<tr data-class="${escapeXml(LABELS[c])}"><td>${escapeXml(LABELS[c])}</td>` +
        td(d.aurocA) + td(d.aurocB) + `<td class="num">${signed4(d.diff)}</td>` +
        tdInterval(d.ci) + td(d.pValue) + `</tr>`,
    );
  });
  h.push(
    `<tr class="mean" data-row="compare-mean"><td>Mean (${k.definedClasses} classes)</td>` +
      td(k.meanA) + td(k.meanB) + `<td class="num">${signed4(k.meanDiff)}</td>` +
      tdInterval(k.meanDiffCi) + `<td class="num">paired bootstrap ${level}</td></tr>`,
    `</tbody></table></div>`,
  );
  return h;
}

function td(v: number, isCount = false): string {
  if (isCount) return `<td class="num">${v}</td>`;
  return Number.isFinite(v) ? `<td class="num">${fmt4(v)}</td>` : `<td class="num na">n/a</td>`;
}

/**
 * The opening lines of a self-contained page (inline CSS, no script), up to its `<h1>`: shared
 * by the validation report and the CAM index.
 */
export function htmlPageStart(title: string, css: string, heading = title): string[] {
  return [
    `<!DOCTYPE html>`,
    `<html lang="en">`,
    `<head>`,
    `<meta charset="utf-8"/>`,
    `<meta name="viewport" content="width=device-width, initial-scale=1"/>`,
    `<title>${escapeXml(title)}</title>`,
    `<style>${css}</style>`,
    `</head>`,
    `<body>`,
    `<h1>${escapeXml(heading)}</h1>`,
  ];
}

/** The document up to and including the run table: title, a note, the run's facts. */
function pageStart(title: string, note: string, metaRows: Array<[string, string | number]>) {
  const h: string[] = [
    ...htmlPageStart(title, CSS),
    `<p class="note">Self-contained report: everything below is inline, viewing needs no ` +
    `network. ${note}</p>`,
    `<h2>Run</h2>`,
    `<table class="meta">`,
  ];
  for (const [k, v] of metaRows) {
    h.push(`<tr><th>${escapeXml(k)}</th><td>${escapeXml(String(v))}</td></tr>`);
  }
  h.push(`</table>`);
  return h;
}

/** Renders the report as one self-contained HTML document. */
export function renderReportHtml(input: ReportInput): string {
  const s = summarizeReport(input);
  const modelName = input.modelPath.split("/").pop() ?? input.modelPath;
  const title = `Validation report: ${modelName} on ${input.subset}`;
  const metaRows: Array<[string, string | number]> = [
    ["model", input.modelPath],
    ["subset", input.subset],
    ["images", input.n],
    ...Object.entries(input.meta),
  ];
  const h = pageStart(
    title,
    `AUROC as scikit-learn 1.2 <code>roc_auc_score</code>; F1 of the decision probability ` +
      `&gt; threshold.`,
    metaRows,
  );

  // With uncertainty: an interval column after AUROC and after F1, and ECE at the end.
  const u = input.uncertainty;
  const b = u?.bootstrap ?? undefined;
  const level = b ? `${Math.round(b.ci * 1000) / 10}% CI` : "";
  const ci = (c: [number, number] | undefined) => (b ? tdInterval(c) : "");
  h.push(`<h2>AUROC and F1 per class</h2>`);
  h.push(`<div class="scroll-x"><table class="scores">`);
  h.push(
    `<thead><tr><th>Class</th><th class="num">Positives</th><th class="num">Negatives</th>` +
      `<th class="num">AUROC</th>` + (b ? `<th class="num">AUROC ${level}</th>` : "") +
      `<th class="num">F1</th>` + (b?.f1 ? `<th class="num">F1 ${level}</th>` : "") +
      `<th class="num">Threshold</th>` +
      `<th class="num">Sensitivity</th><th class="num">Specificity</th>` +
      (u ? `<th class="num">ECE</th>` : "") + `</tr></thead>`,
  );
  h.push(`<tbody>`);
  s.classes.forEach((c, k) => {
    h.push(
      `<tr data-class="${escapeXml(c.name)}"><td>${escapeXml(c.name)}</td>` +
        td(c.positives, true) + td(c.negatives, true) + td(c.auroc) + ci(b?.auroc[k]) +
        td(c.f1) + (b?.f1 ? ci(b.f1[k]) : "") +
        td(c.threshold) + td(c.tprAtThreshold) + td(1 - c.fprAtThreshold) +
        (u ? td(u.reliability[k].ece) : "") + `</tr>`,
    );
  });
  const blank = `<td></td><td></td><td></td>` + (u ? `<td></td>` : "");
  const f1Ci = (v: [number, number] | undefined) => (b?.f1 ? ci(v) : "");
  h.push(
    `<tr class="mean" data-row="mean"><td>Mean (all ${NUM_CLASSES} classes; n/a if any ` +
      `class is undefined)</td><td></td><td></td>${td(s.meanAuroc)}${ci(b?.meanAuroc)}` +
      `${td(s.meanF1)}${f1Ci(b?.meanF1)}${blank}</tr>`,
  );
  h.push(
    `<tr class="mean" data-row="mean-defined"><td>Mean over the ${s.definedCount} classes ` +
      `with defined AUROC</td><td></td><td></td>${td(s.meanAurocDefined)}` +
      `${ci(b?.meanAurocDefined)}${td(s.meanF1Defined)}${b?.f1 ? "<td></td>" : ""}${blank}</tr>`,
  );
  h.push(`</tbody></table></div>`);
  if (b) {
    const skips = s.classes.map((c, k) => [c.name, b.skipped[k]] as const)
      .filter(([, n]) => n > 0);
    h.push(
      `<p class="note intervals">Intervals: ${level} percentile bootstrap over ` +
        `${b.resamples} resamples drawn by ${b.unit} (seed ${u!.seed}): the range in which the ` +
        `metric falls in ${level.replace(" CI", "")} of resampled test sets. ` +
        (skips.length
          ? `Resamples skipped because a class had a single label value: ${
            escapeXml(skips.map(([n, k]) => `${n} ${k}`).join(", "))
          }` + (b.skippedMean ? `; for the means ${b.skippedMean}` : "") + `.`
          : `No resample was skipped.`) +
        `</p>`,
    );
  }
  h.push(
    `<p class="note">AUROC is undefined (n/a) for a class whose images are all positive or ` +
      `all negative. Sensitivity and specificity are those of the decision at the threshold.</p>`,
  );

  h.push(`<h2>ROC curves</h2>`);
  h.push(
    `<p class="note">Blue: ROC curve (AUROC in the legend). Red dot: the operating point of ` +
      `the class's decision threshold (probability &gt; threshold). Dashed grey: chance.</p>`,
  );
  h.push(`<div class="roc-grid">`);
  s.classes.forEach((c, i) => h.push(rocPanel(c, i)));
  h.push(`</div>`);
  if (u) {
    h.push(`<h2>Reliability diagrams</h2>`);
    h.push(
      `<p class="note">Green: per bin of predicted probability (15 equal-width bins, empty ` +
        `bins left out) the fraction of positive images against the mean prediction. On the ` +
        `dashed diagonal a model is calibrated; ECE is the image-weighted mean distance to ` +
        `it.</p>`,
    );
    h.push(`<div class="reliability-grid">`);
    s.classes.forEach((c, i) => h.push(reliabilityPanel(c.name, u.reliability[i], i)));
    h.push(`</div>`);
    if (u.compare) h.push(...comparisonSection(u, input.modelPath));
  }
  h.push(`</body>`);
  h.push(`</html>`);
  return h.join("\n") + "\n";
}

/** Writes {@link renderReportHtml} of `input` to `path` atomically (temp file + rename). */
export async function writeReportHtml(path: string, input: ReportInput): Promise<void> {
  await writeFileAtomic(path, renderReportHtml(input));
}

/** What the `--images` report is made from: unlabelled images and their probabilities. */
export interface ImagesReportInput {
  modelPath: string;
  images: ReadonlyArray<{ image: string; probabilities: Record<string, number> }>;
  thresholds: ArrayLike<number>;
  meta: Record<string, string | number>;
}

/**
 * The report of `--images`: no labels, so no AUROC; per image its 14 probabilities, those
 * above the class's threshold marked, and its findings.
 */
export function renderImagesReportHtml(input: ImagesReportInput): string {
  if (input.thresholds.length !== NUM_CLASSES) {
    throw new UserError(
      `report: expected ${NUM_CLASSES} thresholds, got ${input.thresholds.length}`,
    );
  }
  const modelName = input.modelPath.split("/").pop() ?? input.modelPath;
  const title = `Predictions: ${modelName} on ${input.images.length} image` +
    (input.images.length === 1 ? "" : "s");
  const h = pageStart(
    title,
    `The images have no labels, so there is no AUROC: each row gives an image's predicted ` +
      `probabilities; bold ones are above the class's decision threshold (its finding).`,
    [["model", input.modelPath], ["images", input.images.length], ...Object.entries(input.meta)],
  );
  h.push(`<h2>Probabilities per image</h2>`);
  h.push(`<div class="scroll-x"><table class="scores images">`);
  h.push(
    `<thead><tr><th>Image</th><th>Findings</th>` +
      LABELS.map((l) => `<th class="num">${escapeXml(l)}</th>`).join("") + `</tr></thead>`,
  );
  h.push(
    `<tbody><tr class="thresholds"><td>threshold</td><td></td>` +
      LABELS.map((_, c) => td(Number(input.thresholds[c]))).join("") + `</tr>`,
  );
  for (const img of input.images) {
    const p = LABELS.map((l) => img.probabilities[l]);
    const found = LABELS.filter((_, c) => p[c] > input.thresholds[c]);
    h.push(
      `<tr data-image="${escapeXml(img.image)}"><td>${escapeXml(img.image)}</td>` +
        `<td>${escapeXml(found.length ? found.join(", ") : "none above threshold")}</td>` +
        p.map((v, c) =>
          v > input.thresholds[c] ? `<td class="num above"><b>${fmt4(v)}</b></td>` : td(v)
        ).join("") + `</tr>`,
    );
  }
  h.push(`</tbody></table></div>`, `</body>`, `</html>`);
  return h.join("\n") + "\n";
}

/** Writes {@link renderImagesReportHtml} of `input` to `path` atomically. */
export async function writeImagesReportHtml(path: string, input: ImagesReportInput): Promise<void> {
  await writeFileAtomic(path, renderImagesReportHtml(input));
}
