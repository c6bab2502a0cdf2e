/**
 * The `index.html` of a CAM directory: every overlay of a `--cam` run on one page, grouped by
 * class, with the image, its probability and its ground truth, in a grid that fits the window
 * (links to the PNGs beside it; no script, nothing from the network).
 * @module
 */
import { writeFileAtomic } from "../util/atomic_file.ts";
import type { CamWritten } from "../eval/cam.ts";
import { truthText } from "../eval/cam.ts";
import { escapeXml, FONT_FAMILY } from "./plot_svg.ts";
import { htmlPageStart } from "./report_html.ts";

const CSS = `
body { font-family: ${FONT_FAMILY}; color: #1a1a1a; margin: 24px 32px; background: #fff; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 24px 0 8px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
p.note { color: #555; font-size: 13px; margin: 4px 0; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(min(100%, 220px), 1fr));
  gap: 12px; }
figure { margin: 0; border: 1px solid #e4e4e4; padding: 6px; }
figure img { width: 100%; height: auto; display: block; image-rendering: auto; }
figcaption { font-size: 13px; margin-top: 4px; overflow-wrap: anywhere; }
figcaption .truth { color: #555; }
@media (max-width: 700px) { body { margin: 12px; } }
`;

/** What the page says about the run. */
export interface CamIndexMeta {
  model: string;
  /** "test" shards, or "images". */
  source: string;
  transform: string;
}

/** The index page of `cams` (in the order written), grouped by class. */
export function renderCamIndex(cams: readonly CamWritten[], meta: CamIndexMeta): string {
  const byClass = new Map<string, CamWritten[]>();
  for (const c of cams) byClass.set(c.className, [...(byClass.get(c.className) ?? []), c]);
  const title = `Class activation maps: ${meta.model.split("/").pop() ?? meta.model}`;
  const h: string[] = [
    ...htmlPageStart(title, CSS, "Class activation maps"),
    `<p class="note">Model ${escapeXml(meta.model)} on ${escapeXml(meta.source)} (` +
    `${escapeXml(meta.transform)}); ${cams.length} map${cams.length === 1 ? "" : "s"}. ` +
    `Each map is CheXNet's CAM of one class, min-max normalised per image: the colour bar runs ` +
    `from low (blue) to high (red) within that image.</p>`,
  ];
  for (const [name, list] of byClass) {
    h.push(`<h2 id="${escapeXml(name)}">${escapeXml(name)}</h2>`, `<div class="grid">`);
    for (const c of list) {
      const truth = truthText(c.truth);
      h.push(
        `<figure data-class="${escapeXml(name)}"><a href="${escapeXml(encodeURI(c.file))}">` +
          `<img src="${escapeXml(encodeURI(c.file))}" alt="${
            escapeXml(`${name} CAM of ${c.key}`)
          }"/></a><figcaption>#${c.rank} ${escapeXml(c.key)}: p = ` +
          `${c.probability.toFixed(4)}` +
          (truth ? `<br/><span class="truth">${escapeXml(truth)}</span>` : "") +
          `</figcaption></figure>`,
      );
    }
    h.push(`</div>`);
  }
  h.push(`</body>`, `</html>`);
  return h.join("\n") + "\n";
}

/** Writes {@link renderCamIndex} as `<dir>/index.html` (atomically); returns its path. */
export async function writeCamIndex(
  dir: string,
  cams: readonly CamWritten[],
  meta: CamIndexMeta,
): Promise<string> {
  const path = `${dir}/index.html`;
  await writeFileAtomic(path, renderCamIndex(cams, meta));
  return path;
}
