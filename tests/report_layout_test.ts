/**
 * Layout in a real browser (issue 15 friction 5): the validation report's ROC grid, the
 * `--images` report and the CAM directory's index.html fit windows of 800 and 1400 px (no horizontal scrolling, as many
 * columns as fit, panels not shrunk below readability), in headless Chromium. With
 * REPORT_SCREENSHOT_DIR set, screenshots of each are written there.
 */
import assert from "node:assert/strict";
import { writeImagesReportHtml, writeReportHtml } from "../lib/report/report_html.ts";
import { LABELS } from "../config.ts";
import { writeCamIndex } from "../lib/report/cam_index.ts";
import { type CamWritten, renderCamOverlay } from "../lib/eval/cam.ts";
import {
  closeChromium,
  evaluate,
  hasChromium,
  launchChromium,
  openPage,
  screenshot,
} from "./helpers/chromium.ts";

const fixture = JSON.parse(
  await Deno.readTextFile(new URL("./fixtures/torch/expected.json", import.meta.url)),
);

const LAYOUT = `JSON.stringify((() => {
  const boxes = (sel) => [...document.querySelectorAll(sel)].map((e) => e.getBoundingClientRect());
  const panels = boxes(SELECTOR);
  return {
    scrollWidth: document.documentElement.scrollWidth,
    columns: new Set(panels.map((r) => Math.round(r.left))).size,
    minWidth: Math.min(...panels.map((r) => r.width)),
    maxRight: Math.max(...panels.map((r) => r.right)),
    count: panels.length,
    images: [...document.images].map((i) => i.complete && i.naturalWidth > 0),
  };
})())`;

Deno.test({
  name: "report ROC grid and CAM index fit 800 and 1400 px windows in headless Chromium",
  ignore: !hasChromium,
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "cxr_layout_" });
    const shots = Deno.env.get("REPORT_SCREENSHOT_DIR");
    await writeReportHtml(`${dir}/report.html`, {
      modelPath: "data/saved_models/2025_0101_120000_model.pt",
      subset: "test",
      labels: Float32Array.from(fixture.labels.flat()),
      probs: Float32Array.from(fixture.plain.predictions.flat()),
      n: fixture.labels.length,
      thresholds: fixture.thresholds,
      meta: { backend: "wasm", transform: "resize 224" },
    });
    await writeImagesReportHtml(`${dir}/images.html`, {
      modelPath: "data/saved_models/2025_0101_120000_model.pt",
      images: Array.from({ length: 5 }, (_, i) => ({
        image: `/data/xrays/patient_${i}/00000${i}_000.png`,
        probabilities: Object.fromEntries(LABELS.map((l, c) => [l, ((i + c) % 10) / 10])),
      })),
      thresholds: fixture.thresholds,
      meta: { backend: "wasm", transform: "resize 224" },
    });
    // Ten overlays of a 256 px grey gradient, in two classes.
    const image = {
      width: 256,
      height: 256,
      data: Uint8Array.from({ length: 256 * 256 }, (_, i) => i % 256),
    };
    const cam = Float32Array.from({ length: 256 * 256 }, (_, i) => (i >> 8) / 255);
    const cams: CamWritten[] = [];
    await Deno.mkdir(`${dir}/cam`);
    for (let i = 0; i < 10; i++) {
      const className = i < 5 ? "Effusion" : "Mass";
      const file = `${className}_${(i % 5) + 1}_img${i}_p0.9000.png`;
      await Deno.writeFile(`${dir}/cam/${file}`, await renderCamOverlay(image, cam));
      cams.push({
        path: `${dir}/cam/${file}`,
        file,
        key: `img${i}`,
        className,
        rank: (i % 5) + 1,
        probability: 0.9,
        truth: i % 2 ? ["Effusion"] : [],
      });
    }
    await writeCamIndex(`${dir}/cam`, cams, {
      model: "m.pt",
      source: "test",
      transform: "resize 224",
    });

    const { child, cdp } = launchChromium(`${dir}/profile`);
    try {
      for (const width of [800, 1400]) {
        const report = await openPage(cdp, `file://${dir}/report.html`, { width, height: 1000 });
        const r = JSON.parse(
          await evaluate(cdp, report.session, LAYOUT.replace("SELECTOR", `"svg.roc-panel"`)),
        );
        assert.ok(
          r.scrollWidth <= width,
          `report at ${width} px scrolls sideways: ${r.scrollWidth}`,
        );
        assert.equal(r.count, 14);
        assert.ok(r.maxRight <= width, `a ROC panel is cut at ${width} px`);
        assert.equal(r.columns, width === 800 ? 2 : 4, `ROC columns at ${width} px`);
        assert.ok(r.minWidth >= 250, `ROC panels ${r.minWidth} px wide at ${width} px`);
        if (shots) {
          await evaluate(
            cdp,
            report.session,
            `document.querySelector(".roc-grid").scrollIntoView()`,
          );
          await screenshot(cdp, report.session, `${shots}/report_${width}.png`);
        }

        // The --images report's wide table scrolls inside its box, not the page.
        const images = await openPage(cdp, `file://${dir}/images.html`, { width, height: 1000 });
        const t = JSON.parse(
          await evaluate(cdp, images.session, LAYOUT.replace("SELECTOR", `"tr[data-image]"`)),
        );
        assert.ok(t.scrollWidth <= width, `images report at ${width} px scrolls sideways`);
        assert.equal(t.count, 5);
        if (shots) await screenshot(cdp, images.session, `${shots}/images_report_${width}.png`);

        const index = await openPage(cdp, `file://${dir}/cam/index.html`, { width, height: 1000 });
        const c = JSON.parse(
          await evaluate(cdp, index.session, LAYOUT.replace("SELECTOR", `"figure"`)),
        );
        assert.ok(c.scrollWidth <= width, `CAM index at ${width} px scrolls sideways`);
        assert.equal(c.count, 10);
        assert.ok(c.images.every(Boolean), "every overlay loads");
        assert.ok(c.columns >= (width === 800 ? 3 : 5), `${c.columns} CAM columns at ${width} px`);
        if (shots) await screenshot(cdp, index.session, `${shots}/cam_index_${width}.png`);
      }
    } finally {
      await closeChromium(child, cdp);
      await Deno.remove(dir, { recursive: true });
    }
  },
});
