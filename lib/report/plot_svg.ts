/**
 * A tiny, dependency-free SVG line-chart renderer: linear axes with "nice" ticks, grid, legend,
 * series as polylines with optional point markers, vertical dashed markers with labels, and
 * highlighted points. Charts are returned as `<g>` fragments so several can be placed in one
 * SVG (a standalone file via {@link svgDocument}, or inline in HTML via {@link inlineSvg}).
 *
 * Elements carry classes and `data-*` attributes (`series` polylines with `data-series`,
 * `tick-x`/`tick-y` lines with `data-value`, `vline`, `point`) so tests and readers can find them.
 * @module
 */

/** One line of a chart. Non-finite or null y values are skipped (the line joins across them). */
export interface Series {
  /** Legend text, also written as `data-series`. */
  name: string;
  x: ArrayLike<number>;
  y: ArrayLike<number | null>;
  color: string;
  /** SVG `stroke-dasharray`, e.g. "6 4". */
  dash?: string;
  /** Stroke width in px (default 2). */
  width?: number;
  /** Draw a circle at every point (default false). */
  markers?: boolean;
  /** Extra class on the polyline (always also "series"). */
  cls?: string;
  /** Leave out of the legend. */
  hideInLegend?: boolean;
  /** Legend symbol: a line stroke (default) or a dot, for an entry that explains a point. */
  legendSymbol?: "line" | "dot";
}

/** A vertical dashed line across the plot area at data coordinate `x`, with a label on top. */
export interface VerticalMarker {
  x: number;
  label?: string;
  color?: string;
  /** SVG `stroke-dasharray` (default "5 4"). */
  dash?: string;
  cls?: string;
  /** Where the label sits along the line (default "top"). */
  labelAt?: "top" | "bottom";
}

/** A highlighted point at data coordinates, with an optional label beside it. */
export interface PointMarker {
  x: number;
  y: number;
  color?: string;
  radius?: number;
  label?: string;
  cls?: string;
  /** Where the label goes relative to the point (default "right"). */
  labelSide?: "left" | "right";
}

/** A linear axis over [min, max]. */
export interface AxisSpec {
  min: number;
  max: number;
  label?: string;
  /** Tick values; default {@link niceTicks}(min, max, 6). */
  ticks?: number[];
  format?: (v: number) => string;
}

/** Space around the plot area, in px. */
export interface Margins {
  top: number;
  right: number;
  bottom: number;
  left: number;
}

/**
 * Legend corner inside the plot area, "above" (one row between title and plot area; the top
 * margin grows to make room), or none.
 */
export type LegendPosition =
  | "top-right"
  | "bottom-right"
  | "top-left"
  | "bottom-left"
  | "above"
  | "none";

/** Everything one chart draws. */
export interface ChartSpec {
  width: number;
  height: number;
  margin?: Partial<Margins>;
  title?: string;
  x: AxisSpec;
  y: AxisSpec;
  series: Series[];
  vlines?: VerticalMarker[];
  points?: PointMarker[];
  legend?: LegendPosition;
  /** Draw the grid lines at the ticks (default true). */
  grid?: boolean;
  /** Font size of tick labels in px (default 12); titles and labels scale from it. */
  fontSize?: number;
}

/** The pixel geometry of a chart: plot area and the data → px mappings. */
export interface ChartLayout {
  left: number;
  top: number;
  right: number;
  bottom: number;
  xToPx: (v: number) => number;
  yToPx: (v: number) => number;
}

const DEFAULT_MARGIN: Margins = { top: 34, right: 16, bottom: 46, left: 70 };

/** Escapes text for XML/HTML content and attribute values. */
export function escapeXml(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;").replace(/'/g, "&#39;");
}

/** A pixel coordinate with at most 2 decimals (short output, sub-pixel exact enough). */
export function px(v: number): string {
  return String(Math.round(v * 100) / 100);
}

/** The linear map from [d0, d1] to [r0, r1] (a degenerate domain maps to the range's middle). */
export function linearScale(d0: number, d1: number, r0: number, r1: number): (v: number) => number {
  if (d1 === d0) return () => (r0 + r1) / 2;
  const k = (r1 - r0) / (d1 - d0);
  return (v) => r0 + (v - d0) * k;
}

/** The step 1, 2 or 5 × 10^k that splits [min, max] into at most about `count` intervals. */
export function niceStep(min: number, max: number, count: number): number {
  const span = Math.abs(max - min);
  if (!(span > 0) || !Number.isFinite(span)) return 1;
  const raw = span / Math.max(1, count);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const f = raw / mag * (1 - 1e-9); // 5.000000001 from rounding still counts as 5
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * mag;
}

/** Round tick values (multiples of {@link niceStep}) within [min, max]. */
export function niceTicks(min: number, max: number, count = 6): number[] {
  const step = niceStep(min, max, count);
  const first = Math.ceil(min / step - 1e-9);
  const last = Math.floor(max / step + 1e-9);
  const out: number[] = [];
  for (let i = first; i <= last; i++) out.push(cleanFloat(i * step));
  return out;
}

/** [min, max] widened outwards to multiples of the nice step (so end ticks sit on the axes). */
export function niceDomain(min: number, max: number, count = 6): [number, number] {
  if (!(max > min)) {
    const pad = min === 0 ? 1 : Math.abs(min) * 0.1;
    return niceDomain(min - pad, max + pad, count);
  }
  const step = niceStep(min, max, count);
  return [cleanFloat(Math.floor(min / step) * step), cleanFloat(Math.ceil(max / step) * step)];
}

/** Removes binary floating-point noise (0.30000000000000004 → 0.3). */
function cleanFloat(v: number): number {
  return Number(v.toPrecision(12));
}

/** Default tick label: the shortest decimal form, no exponent for ordinary magnitudes. */
export function formatTick(v: number): string {
  const c = cleanFloat(v);
  return Object.is(c, -0) ? "0" : String(c);
}

/** The plot-area geometry of `spec` placed with its top-left corner at (0, 0). */
export function chartLayout(spec: ChartSpec): ChartLayout {
  const m = { ...DEFAULT_MARGIN, ...spec.margin };
  if (spec.legend === "above" && spec.margin?.top === undefined) m.top += 22;
  const left = m.left, top = m.top;
  const right = spec.width - m.right, bottom = spec.height - m.bottom;
  return {
    left,
    top,
    right,
    bottom,
    xToPx: linearScale(spec.x.min, spec.x.max, left, right),
    yToPx: linearScale(spec.y.min, spec.y.max, bottom, top),
  };
}

/** Renders one chart as a `<g>` fragment translated to (`atX`, `atY`). */
export function renderChart(spec: ChartSpec, atX = 0, atY = 0): string {
  const L = chartLayout(spec);
  const fs = spec.fontSize ?? 12;
  const out: string[] = [];
  const xFmt = spec.x.format ?? formatTick;
  const yFmt = spec.y.format ?? formatTick;
  const xTicks = spec.x.ticks ?? niceTicks(spec.x.min, spec.x.max, 6);
  const yTicks = spec.y.ticks ?? niceTicks(spec.y.min, spec.y.max, 6);
  const grid = spec.grid ?? true;

  out.push(`<g class="chart" transform="translate(${px(atX)},${px(atY)})">`);
  out.push(
    `<rect class="plot-area" x="${px(L.left)}" y="${px(L.top)}" width="${px(L.right - L.left)}" ` +
      `height="${px(L.bottom - L.top)}" fill="#ffffff" stroke="none"/>`,
  );

  // Ticks and grid: the tick line carries the data value so the mapping can be checked.
  for (const t of xTicks) {
    const x = px(L.xToPx(t));
    if (grid) {
      out.push(
        `<line class="grid" x1="${x}" y1="${px(L.top)}" x2="${x}" y2="${px(L.bottom)}" ` +
          `stroke="#e3e3e3" stroke-width="1"/>`,
      );
    }
    out.push(
      `<line class="tick-x" data-value="${t}" x1="${x}" y1="${px(L.bottom)}" x2="${x}" ` +
        `y2="${px(L.bottom + 5)}" stroke="#444" stroke-width="1"/>`,
    );
    out.push(
      `<text x="${x}" y="${px(L.bottom + 7 + fs)}" font-size="${fs}" text-anchor="middle" ` +
        `fill="#333">${escapeXml(xFmt(t))}</text>`,
    );
  }
  for (const t of yTicks) {
    const y = px(L.yToPx(t));
    if (grid) {
      out.push(
        `<line class="grid" x1="${px(L.left)}" y1="${y}" x2="${px(L.right)}" y2="${y}" ` +
          `stroke="#e3e3e3" stroke-width="1"/>`,
      );
    }
    out.push(
      `<line class="tick-y" data-value="${t}" x1="${px(L.left - 5)}" y1="${y}" ` +
        `x2="${px(L.left)}" y2="${y}" stroke="#444" stroke-width="1"/>`,
    );
    out.push(
      `<text x="${px(L.left - 8)}" y="${px(L.yToPx(t) + fs * 0.35)}" font-size="${fs}" ` +
        `text-anchor="end" fill="#333">${escapeXml(yFmt(t))}</text>`,
    );
  }
  out.push(
    `<path class="axes" d="M${px(L.left)},${px(L.top)}V${px(L.bottom)}H${px(L.right)}" ` +
      `fill="none" stroke="#444" stroke-width="1"/>`,
  );

  if (spec.x.label) {
    out.push(
      `<text class="axis-label" x="${px((L.left + L.right) / 2)}" y="${px(spec.height - 8)}" ` +
        `font-size="${fs + 1}" text-anchor="middle" fill="#222">${escapeXml(spec.x.label)}</text>`,
    );
  }
  if (spec.y.label) {
    const cx = 14, cy = (L.top + L.bottom) / 2;
    out.push(
      `<text class="axis-label" x="${px(cx)}" y="${px(cy)}" font-size="${fs + 1}" ` +
        `text-anchor="middle" fill="#222" transform="rotate(-90 ${px(cx)} ${px(cy)})">${
          escapeXml(spec.y.label)
        }</text>`,
    );
  }
  if (spec.title) {
    const ty = spec.legend === "above" ? L.top - 34 : L.top - 12;
    out.push(
      `<text class="chart-title" x="${px((L.left + L.right) / 2)}" y="${px(ty)}" ` +
        `font-size="${fs + 3}" font-weight="bold" text-anchor="middle" fill="#111">${
          escapeXml(spec.title)
        }</text>`,
    );
  }

  for (const v of spec.vlines ?? []) {
    const x = px(L.xToPx(v.x));
    const color = v.color ?? "#7a7a7a";
    out.push(
      `<line class="vline${v.cls ? " " + v.cls : ""}" data-x="${v.x}" x1="${x}" ` +
        `y1="${px(L.top)}" x2="${x}" y2="${px(L.bottom)}" stroke="${color}" stroke-width="1.5" ` +
        `stroke-dasharray="${v.dash ?? "5 4"}"/>`,
    );
    if (v.label) {
      // Written upwards along the line, inside the plot area, so labels never collide.
      const atTop = (v.labelAt ?? "top") === "top";
      const lx = L.xToPx(v.x) - 4, ly = atTop ? L.top + 6 : L.bottom - 6;
      out.push(
        `<text class="vline-label" x="${px(lx)}" y="${px(ly)}" font-size="${fs - 1}" ` +
          `text-anchor="${atTop ? "end" : "start"}" fill="${color}" ` +
          `transform="rotate(-90 ${px(lx)} ${px(ly)})">${escapeXml(v.label)}</text>`,
      );
    }
  }

  for (const s of spec.series) {
    const pts: string[] = [];
    const marks: string[] = [];
    const n = Math.min(s.x.length, s.y.length);
    for (let i = 0; i < n; i++) {
      const yv = s.y[i];
      if (yv === null || !Number.isFinite(yv) || !Number.isFinite(s.x[i])) continue;
      const x = px(L.xToPx(s.x[i])), y = px(L.yToPx(yv));
      if (pts.length > 0 && pts[pts.length - 1] === `${x},${y}`) continue;
      pts.push(`${x},${y}`);
      if (s.markers) {
        marks.push(`<circle cx="${x}" cy="${y}" r="3" fill="${s.color}"/>`);
      }
    }
    out.push(
      `<polyline class="series${s.cls ? " " + s.cls : ""}" data-series="${escapeXml(s.name)}" ` +
        `points="${pts.join(" ")}" fill="none" stroke="${s.color}" ` +
        `stroke-width="${s.width ?? 2}" stroke-linejoin="round" stroke-linecap="round"` +
        `${s.dash ? ` stroke-dasharray="${s.dash}"` : ""}/>`,
    );
    if (marks.length > 0) out.push(`<g class="markers">${marks.join("")}</g>`);
  }

  for (const p of spec.points ?? []) {
    if (!Number.isFinite(p.x) || !Number.isFinite(p.y)) continue;
    const x = L.xToPx(p.x), y = L.yToPx(p.y);
    const color = p.color ?? "#d62728";
    out.push(
      `<circle class="point${p.cls ? " " + p.cls : ""}" data-x="${p.x}" data-y="${p.y}" ` +
        `cx="${px(x)}" cy="${px(y)}" r="${p.radius ?? 5}" fill="${color}" stroke="#ffffff" ` +
        `stroke-width="1.5"/>`,
    );
    if (p.label) {
      const right = (p.labelSide ?? "right") === "right";
      out.push(
        `<text class="point-label" x="${px(x + (right ? 8 : -8))}" y="${px(y - 6)}" ` +
          `font-size="${fs - 1}" text-anchor="${right ? "start" : "end"}" fill="${color}">${
            escapeXml(p.label)
          }</text>`,
      );
    }
  }

  const legend = spec.legend ?? "top-right";
  const entries = spec.series.filter((s) => !s.hideInLegend);
  if (legend !== "none" && entries.length > 0) {
    out.push(renderLegend(entries, legend, L, fs));
  }
  out.push(`</g>`);
  return out.join("\n");
}

/** Rough text width for layout (no font metrics without a browser): 0.6 em per character. */
function textWidth(s: string, fs: number): number {
  return s.length * fs * 0.6;
}

function renderLegend(
  entries: Series[],
  pos: Exclude<LegendPosition, "none">,
  L: ChartLayout,
  fs: number,
): string {
  if (pos === "above") return renderLegendRow(entries, L, fs);
  const lineH = fs + 6;
  const w = 34 + Math.max(...entries.map((e) => textWidth(e.name, fs - 1)));
  const h = entries.length * lineH + 8;
  const x = pos.endsWith("right") ? L.right - w - 8 : L.left + 8;
  const y = pos.startsWith("top") ? L.top + 8 : L.bottom - h - 8;
  const out = [
    `<g class="legend">`,
    `<rect x="${px(x)}" y="${px(y)}" width="${px(w)}" height="${px(h)}" fill="#ffffff" ` +
    `fill-opacity="0.88" stroke="#bbbbbb" rx="3"/>`,
  ];
  entries.forEach((e, i) => {
    const cy = y + 4 + lineH * (i + 0.5);
    out.push(legendSymbol(e, x + 6, x + 26, cy));
    out.push(
      `<text x="${px(x + 30)}" y="${px(cy + (fs - 1) * 0.35)}" font-size="${fs - 1}" ` +
        `fill="#222">${escapeXml(e.name)}</text>`,
    );
  });
  out.push(`</g>`);
  return out.join("\n");
}

/** The legend's sample of a series, between x0 and x1 at height cy. */
function legendSymbol(e: Series, x0: number, x1: number, cy: number): string {
  if (e.legendSymbol === "dot") {
    return `<circle cx="${px((x0 + x1) / 2)}" cy="${px(cy)}" r="4.5" fill="${e.color}"/>`;
  }
  return `<line x1="${px(x0)}" y1="${px(cy)}" x2="${px(x1)}" y2="${px(cy)}" ` +
    `stroke="${e.color}" stroke-width="${e.width ?? 2}"` +
    `${e.dash ? ` stroke-dasharray="${e.dash}"` : ""}/>`;
}

/** One centred row of legend entries just above the plot area. */
function renderLegendRow(entries: Series[], L: ChartLayout, fs: number): string {
  const widths = entries.map((e) => 30 + textWidth(e.name, fs - 1) + 16);
  const total = widths.reduce((a, b) => a + b, 0) - 16;
  let x = (L.left + L.right - total) / 2;
  const cy = L.top - 12;
  const out = [`<g class="legend">`];
  entries.forEach((e, i) => {
    out.push(legendSymbol(e, x, x + 22, cy));
    out.push(
      `<text x="${px(x + 28)}" y="${px(cy + (fs - 1) * 0.35)}" font-size="${fs - 1}" ` +
        `fill="#222">${escapeXml(e.name)}</text>`,
    );
    x += widths[i];
  });
  out.push(`</g>`);
  return out.join("\n");
}

/** Font stack that needs no downloaded font (system fonts only). */
export const FONT_FAMILY = "DejaVu Sans, Liberation Sans, Arial, Helvetica, sans-serif";

/** A standalone SVG file (with XML declaration and namespace) around `content`. */
export function svgDocument(
  width: number,
  height: number,
  content: string,
  title?: string,
): string {
  return `<?xml version="1.0" encoding="UTF-8"?>\n` +
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" ` +
    `viewBox="0 0 ${width} ${height}" font-family="${FONT_FAMILY}">\n` +
    (title ? `<title>${escapeXml(title)}</title>\n` : "") +
    `<rect width="100%" height="100%" fill="#ffffff"/>\n${content}\n</svg>\n`;
}

/**
 * An `<svg>` element for inline use in HTML: no namespace attribute (the HTML parser supplies
 * it, and the page then holds no URL at all), scalable through its viewBox.
 */
export function inlineSvg(
  width: number,
  height: number,
  content: string,
  attrs: Record<string, string> = {},
): string {
  const extra = Object.entries(attrs).map(([k, v]) => ` ${k}="${escapeXml(v)}"`).join("");
  return `<svg width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" ` +
    `font-family="${FONT_FAMILY}"${extra}>\n${content}\n</svg>`;
}
