import assert from "node:assert/strict";
import {
  bestEpochIndex,
  type EpochRecord,
  formatLr,
  renderTrainingCurves,
  writeTrainingCurves,
} from "../lib/report/training_curves.ts";
import { niceTicks } from "../lib/report/plot_svg.ts";
import { allText, findAll, hasClass, parseXml, type XmlElement } from "./xml_check.ts";

/** A realistic run: losses falling then over-fitting, LR lowered after epochs 7, 14, 21, 28. */
function run(n: number): EpochRecord[] {
  const out: EpochRecord[] = [];
  let lr = 1e-3;
  for (let e = 1; e <= n; e++) {
    const lowered = e % 7 === 0;
    out.push({
      epoch: e,
      train_loss: 0.2 * Math.exp(-e / 8) + 0.14,
      val_loss: 0.19 * Math.exp(-e / 6) + 0.15 + (e > 15 ? (e - 15) * 0.002 : 0),
      val_mean_auroc: e === 3 ? null : 0.85 - 0.2 * Math.exp(-e / 5),
      lr,
      lr_lowered: lowered,
    });
    if (lowered) lr *= 0.1;
  }
  return out;
}

function seriesByName(root: XmlElement, name: string): XmlElement {
  const found = findAll(root, (e) => e.name === "polyline" && e.attrs["data-series"] === name);
  assert.equal(found.length, 1, `one polyline for ${name}`);
  return found[0];
}

function points(poly: XmlElement): Array<[number, number]> {
  const s = poly.attrs.points.trim();
  return s === "" ? [] : s.split(/\s+/).map((p) => p.split(",").map(Number) as [number, number]);
}

/** The chart group (`g.chart`) that holds `el`. */
function chartOf(el: XmlElement): XmlElement {
  let e: XmlElement | null = el;
  while (e && !(e.name === "g" && hasClass(e, "chart"))) e = e.parent;
  assert.ok(e, "element inside a chart");
  return e;
}

/** The data → px map of one axis, read back from two of the chart's drawn ticks. */
function axisMap(chart: XmlElement, axis: "x" | "y"): (v: number) => number {
  const ticks = findAll(chart, (e) => e.name === "line" && hasClass(e, `tick-${axis}`));
  assert.ok(ticks.length >= 2, `at least two ${axis} ticks`);
  const a = ticks[0], b = ticks[ticks.length - 1];
  const va = Number(a.attrs["data-value"]), vb = Number(b.attrs["data-value"]);
  const pa = Number(a.attrs[`${axis}1`]), pb = Number(b.attrs[`${axis}1`]);
  return (v) => pa + (v - va) * (pb - pa) / (vb - va);
}

Deno.test("30 epochs: well-formed SVG, one polyline per series with one point per epoch", () => {
  const epochs = run(30);
  const svg = renderTrainingCurves(epochs, { title: "Training curves — 20250101-120000" });
  const root = parseXml(svg);
  assert.equal(root.name, "svg");
  assert.equal(root.attrs.xmlns, "http://www.w3.org/2000/svg");
  assert.ok(!svg.includes("NaN") && !svg.includes("undefined") && !svg.includes("Infinity"));
  assert.equal(points(seriesByName(root, "training loss")).length, 30);
  assert.equal(points(seriesByName(root, "validation loss")).length, 30);
  // Epoch 3 has no AUROC: the line skips it.
  assert.equal(points(seriesByName(root, "mean AUROC")).length, 29);
  // No F1 recorded: no F1 series.
  assert.equal(
    findAll(root, (e) => e.attrs["data-series"] === "mean F1").length,
    0,
  );
  assert.ok(allText(root).includes("Training curves — 20250101-120000"));
});

Deno.test("LR-drop markers appear exactly after the epochs with lr_lowered, labelled", () => {
  const epochs = run(30);
  const root = parseXml(renderTrainingCurves(epochs));
  const drops = findAll(root, (e) => e.name === "line" && hasClass(e, "lr-drop"));
  const lossChart = chartOf(seriesByName(root, "training loss"));
  const inLoss = drops.filter((d) => chartOf(d) === lossChart).map((d) =>
    Number(d.attrs["data-x"])
  );
  assert.deepEqual(inLoss, [7.5, 14.5, 21.5, 28.5]);
  // Both panels mark them.
  assert.equal(drops.length, 8);
  const labels = findAll(lossChart, (e) => hasClass(e, "vline-label")).map((e) => e.text);
  assert.ok(labels.includes("lr → 1e-4"), labels.join("|"));
  assert.ok(labels.includes("lr → 1e-5"));
  assert.ok(labels.includes("lr → 1e-7"));
  // The marker line sits at the pixel of x = epoch + 0.5.
  const x = axisMap(lossChart, "x");
  const first = drops.find((d) => chartOf(d) === lossChart)!;
  assert.ok(Math.abs(Number(first.attrs.x1) - x(7.5)) < 0.02);

  // No lr_lowered anywhere: no markers.
  const flat = run(10).map((e) => ({ ...e, lr_lowered: false, lr: 1e-3 }));
  assert.equal(
    findAll(parseXml(renderTrainingCurves(flat)), (e) => hasClass(e, "lr-drop")).length,
    0,
  );
  // The newest epoch lowered the LR and the next is not recorded yet: generic label.
  const last = run(7);
  const lastLabels = findAll(
    parseXml(renderTrainingCurves(last)),
    (e) => hasClass(e, "vline-label"),
  ).map((e) => e.text);
  assert.ok(lastLabels.includes("lr ↓"), lastLabels.join("|"));
});

Deno.test("values map to the coordinates of the drawn axes", () => {
  const epochs = run(30);
  const root = parseXml(renderTrainingCurves(epochs));
  for (const [name, key] of [["validation loss", "val_loss"], ["training loss", "train_loss"]]) {
    const poly = seriesByName(root, name);
    const chart = chartOf(poly);
    const x = axisMap(chart, "x"), y = axisMap(chart, "y");
    const pts = points(poly);
    for (const i of [0, 4, 29]) {
      const e = epochs[i];
      const v = e[key as "val_loss" | "train_loss"];
      assert.ok(Math.abs(pts[i][0] - x(e.epoch)) < 0.02, `${name} x of epoch ${e.epoch}`);
      assert.ok(Math.abs(pts[i][1] - y(v)) < 0.02, `${name} y of epoch ${e.epoch}`);
    }
  }
  const auroc = seriesByName(root, "mean AUROC");
  const ay = axisMap(chartOf(auroc), "y");
  // Point 4 of the AUROC line is epoch 6 (epoch 3 was skipped).
  assert.ok(Math.abs(points(auroc)[4][1] - ay(epochs[5].val_mean_auroc!)) < 0.02);
  // Higher loss is drawn higher up (smaller y pixel).
  const lossY = axisMap(chartOf(auroc), "y");
  assert.ok(lossY(0.9) < lossY(0.8));
});

Deno.test("the best epoch (lowest validation loss) is marked", () => {
  const epochs = run(30);
  const best = bestEpochIndex(epochs);
  // Independent argmin.
  const vals = epochs.map((e) => e.val_loss);
  assert.equal(best, vals.indexOf(Math.min(...vals)));
  const root = parseXml(renderTrainingCurves(epochs));
  const marks = findAll(root, (e) => e.name === "circle" && hasClass(e, "best-epoch"));
  assert.equal(marks.length, 1);
  assert.equal(Number(marks[0].attrs["data-x"]), epochs[best].epoch);
  assert.equal(Number(marks[0].attrs["data-y"]), epochs[best].val_loss);
  const lines = findAll(root, (e) => e.name === "line" && hasClass(e, "best-epoch"));
  assert.equal(lines.length, 2);
  const label = findAll(root, (e) => hasClass(e, "vline-label") && e.text.startsWith("best:"));
  assert.ok(label[0].text.includes(`epoch ${epochs[best].epoch}`));
  assert.ok(label[0].text.includes(epochs[best].val_loss.toFixed(4)));
});

Deno.test("one epoch, with F1, and zero epochs render sensibly", () => {
  const one: EpochRecord[] = [{
    epoch: 1,
    train_loss: 0.31,
    val_loss: 0.29,
    val_mean_auroc: 0.61,
    val_mean_f1: 0.12,
    lr: 1e-3,
  }];
  const svg = renderTrainingCurves(one);
  const root = parseXml(svg);
  assert.ok(!svg.includes("NaN"));
  for (const s of ["training loss", "validation loss", "mean AUROC"]) {
    assert.equal(points(seriesByName(root, s)).length, 1);
  }
  assert.equal(points(seriesByName(root, "mean F1")).length, 1);
  // The single epoch is tick-labelled, and the point lies strictly inside the axis range.
  const chart = chartOf(seriesByName(root, "validation loss"));
  const xt = findAll(chart, (e) => hasClass(e, "tick-x")).map((e) => Number(e.attrs["data-value"]));
  assert.deepEqual(xt, [1]);
  const yt = findAll(chart, (e) => hasClass(e, "tick-y")).map((e) => Number(e.attrs["data-value"]));
  assert.ok(Math.min(...yt) < 0.29 && Math.max(...yt) > 0.31, yt.join(","));

  const empty = parseXml(renderTrainingCurves([]));
  assert.ok(allText(empty).includes("No epoch finished yet."));
});

Deno.test("diverged values (NaN loss, null AUROC everywhere) do not break the SVG", () => {
  const epochs = run(4).map((e, i) => ({
    ...e,
    val_loss: i === 3 ? NaN : e.val_loss,
    val_mean_auroc: null,
  }));
  const svg = renderTrainingCurves(epochs);
  parseXml(svg);
  assert.ok(!svg.includes("NaN"));
  assert.ok(svg.includes("AUROC undefined"));
});

Deno.test("formatLr and niceTicks", () => {
  assert.equal(formatLr(0.001), "1e-3");
  assert.equal(formatLr(0.001 * 0.1), "1e-4");
  assert.equal(formatLr(5e-5), "5e-5");
  assert.deepEqual(niceTicks(0.1, 0.35, 5), [0.1, 0.15, 0.2, 0.25, 0.3, 0.35]);
  assert.deepEqual(niceTicks(0, 1, 5), [0, 0.2, 0.4, 0.6, 0.8, 1]);
});

Deno.test("writeTrainingCurves replaces the file atomically, leaving no temporary file", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/20250101-120000_curves.svg`;
    await writeTrainingCurves(path, run(2));
    await writeTrainingCurves(path, run(3));
    assert.equal(await Deno.readTextFile(path), renderTrainingCurves(run(3)));
    const names = [];
    for await (const e of Deno.readDir(dir)) names.push(e.name);
    assert.deepEqual(names, ["20250101-120000_curves.svg"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
