/**
 * SYNTHETIC chest-radiograph-like images for the demo (`deno task demo`): a frontal chest scene
 * (body outline, two dark lung fields with vessel markings, mediastinum and spine, heart
 * silhouette, diaphragm domes, ribs, clavicles) in which each of the 14 NIH findings is drawn as
 * a visible, label-dependent change (wider heart, fluid at the lung base, round opacities, ...).
 * Patients keep their anatomy across follow-up images and findings persist with some
 * probability; every image gets its own position, rotation, exposure and noise.
 *
 * The dataset is written in the NIH ChestX-ray14 input format (`images/PPPPPPPP_FFF.png` and
 * `meta_data/Data_Entry_2017_v2020.csv`). It is NOT medical data: every image has "SYNTHETIC"
 * burned in and in a PNG tEXt chunk, and the folder gets a `README_SYNTHETIC.txt`.
 * Seeded with `Rng`: a seed gives the same bytes on every run.
 * @module
 */
import sharp from "sharp";
import { type Label, LABELS, META_FILE_NAME } from "../../config.ts";
import { writeFileAtomic } from "../util/atomic_file.ts";
import { Rng } from "../util/rng.ts";

/** The header line of the NIH `Data_Entry_2017_v2020.csv` (11 columns). */
export const DATA_ENTRY_HEADER =
  "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position," +
  "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]";

/**
 * Target share of images with each finding. NIH's order and rough size (Infiltration 18%,
 * Effusion 12%, Atelectasis 10%, ...) but with a floor of about 2.5% so that a demo of a few
 * hundred images still has a handful of positives of every class (NIH: Hernia 0.2%).
 */
export const DEMO_PREVALENCE: Readonly<Record<Label, number>> = {
  Infiltration: 0.18,
  Effusion: 0.12,
  Atelectasis: 0.10,
  Nodule: 0.06,
  Mass: 0.055,
  Pneumothorax: 0.05,
  Consolidation: 0.045,
  Pleural_Thickening: 0.04,
  Cardiomegaly: 0.037,
  Emphysema: 0.034,
  Edema: 0.032,
  Fibrosis: 0.03,
  Pneumonia: 0.028,
  Hernia: 0.025,
};

/** Share of images with at least one finding (NIH: 46%). */
const ABNORMAL_SHARE = 0.46;

/** Chronic findings persist across a patient's follow-ups more often than acute ones. */
const PERSISTENCE: Readonly<Record<Label, number>> = {
  Atelectasis: 0.5,
  Cardiomegaly: 0.9,
  Effusion: 0.5,
  Infiltration: 0.45,
  Mass: 0.85,
  Nodule: 0.85,
  Pneumonia: 0.35,
  Pneumothorax: 0.35,
  Consolidation: 0.4,
  Edema: 0.4,
  Emphysema: 0.9,
  Fibrosis: 0.9,
  Pleural_Thickening: 0.85,
  Hernia: 0.9,
};

/** Per-patient anatomy, shared by all of a patient's images. Lengths are fractions of the side. */
export interface PatientAnatomy {
  /** Patient number (1-based), as in the file names. */
  id: number;
  sex: "M" | "F";
  age: number;
  /** Half width of the torso. */
  bodyHalfWidth: number;
  /** Distance of each lung's centre from the midline. */
  lungOffset: number;
  /** Half width of each lung at its base. */
  lungHalfWidth: number;
  /** Top of the lung apices. */
  lungTop: number;
  /** Lowest point (costophrenic level) of the diaphragm. */
  diaphragmY: number;
  /** Height of the diaphragm domes above `diaphragmY`. */
  domeDepth: number;
  /** Heart half width as a fraction of the thoracic half width (cardiothoracic ratio). */
  cardiothoracicRatio: number;
  ribSpacing: number;
  ribPhase: number;
  /** Soft-tissue density (body habitus). */
  tissueDensity: number;
  /** Seed of the patient's vessel texture and of where chronic lesions sit. */
  textureSeed: number;
}

/** Draws a patient's anatomy. */
export function drawPatientAnatomy(id: number, rng: Rng): PatientAnatomy {
  const sex = rng.bernoulli(0.56) ? "M" : "F";
  const big = sex === "M" ? 0.01 : -0.01;
  return {
    id,
    sex,
    age: Math.round(Math.min(92, Math.max(2, rng.normal(47, 17)))),
    bodyHalfWidth: rng.uniform(0.4, 0.46) + big,
    lungOffset: rng.uniform(0.17, 0.2) + big / 2,
    lungHalfWidth: rng.uniform(0.13, 0.15) + big / 2,
    lungTop: rng.uniform(0.11, 0.15),
    diaphragmY: rng.uniform(0.72, 0.78),
    domeDepth: rng.uniform(0.06, 0.09),
    cardiothoracicRatio: rng.uniform(0.4, 0.47),
    ribSpacing: rng.uniform(0.068, 0.078),
    ribPhase: rng.uniform(0, 1),
    tissueDensity: rng.uniform(0.9, 1.1),
    textureSeed: Math.floor(rng.next() * 2 ** 31),
  };
}

// ---------------------------------------------------------------------------------------------
// Smooth noise (value noise from an integer hash): deterministic, no tables.

function hash2(ix: number, iy: number, seed: number): number {
  let h = Math.imul(ix, 0x27d4eb2d) ^ Math.imul(iy, 0x165667b1) ^ seed;
  h = Math.imul(h ^ (h >>> 15), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return ((h ^ (h >>> 16)) >>> 0) / 4294967296;
}

function valueNoise(x: number, y: number, seed: number): number {
  const ix = Math.floor(x);
  const iy = Math.floor(y);
  const fx = x - ix;
  const fy = y - iy;
  const sx = fx * fx * (3 - 2 * fx);
  const sy = fy * fy * (3 - 2 * fy);
  const a = hash2(ix, iy, seed);
  const b = hash2(ix + 1, iy, seed);
  const c = hash2(ix, iy + 1, seed);
  const d = hash2(ix + 1, iy + 1, seed);
  return a + (b - a) * sx + (c - a) * sy + (a - b - c + d) * sx * sy;
}

/** Fractal noise in [0, 1): `octaves` layers starting at `freq` cycles per unit. */
function fbm(x: number, y: number, freq: number, octaves: number, seed: number): number {
  let sum = 0;
  let amp = 0.5;
  let norm = 0;
  for (let o = 0; o < octaves; o++) {
    sum += amp * valueNoise(x * freq, y * freq, seed + o * 1013);
    norm += amp;
    amp *= 0.5;
    freq *= 2.03;
  }
  return sum / norm;
}

/** Ridged noise: thin bright lines where the noise crosses 0.5 (vessels, reticulation). */
function ridge(x: number, y: number, freq: number, seed: number, sharpness: number): number {
  const n = fbm(x, y, freq, 2, seed);
  const r = 1 - Math.abs(2 * n - 1);
  return r ** sharpness;
}

const sigmoid = (t: number) => 1 / (1 + Math.exp(-t));
const smoothstep = (a: number, b: number, t: number) => {
  const u = Math.min(1, Math.max(0, (t - a) / (b - a)));
  return u * u * (3 - 2 * u);
};

// ---------------------------------------------------------------------------------------------
// Scene description: the anatomy after findings changed it, and the lesions to draw.

interface Blob {
  x: number;
  y: number;
  r: number;
  density: number;
}

interface Scene {
  cx: number;
  /** Per side (0 = image left = patient's right, 1 = image right). */
  lungCx: [number, number];
  lungA: [number, number];
  lungTop: number;
  diaphragm: [number, number];
  domeDepth: [number, number];
  heartCx: number;
  heartCy: number;
  heartHw: number;
  heartHh: number;
  lungDensity: number;
  markings: number;
  effusion: [number, number];
  pleuralRim: [number, number];
  pneumothorax: [number, number];
  /** Plate-like atelectasis band above the raised dome, per side (0 = none). */
  plate: [number, number];
  edema: number;
  infiltration: [number, number];
  pneumonia: Blob | null;
  consolidation: { side: number; upper: boolean; tilt: number; level: number } | null;
  fibrosis: number;
  blobs: Blob[];
  hernia: Blob | null;
}

/** Applies findings to the anatomy and places lesions (chronic ones from the patient's seed). */
function buildScene(findings: ReadonlySet<Label>, p: PatientAnatomy, rng: Rng): Scene {
  // Where a finding sits (side, lesion sites) comes from the patient and the label, so it stays
  // put across follow-ups; how severe it is comes from the image's `rng`.
  const site = (l: Label) =>
    new Rng((p.textureSeed ^ Math.imul(LABELS.indexOf(l) + 1, 0x9e3779b1)) >>> 0);
  const sideOf = (l: Label) => (site(l).bernoulli(0.5) ? 1 : 0);
  const cx = 0.5;
  const s: Scene = {
    cx,
    lungCx: [cx - p.lungOffset, cx + p.lungOffset],
    lungA: [p.lungHalfWidth, p.lungHalfWidth * 0.97],
    lungTop: p.lungTop,
    diaphragm: [p.diaphragmY - 0.015, p.diaphragmY],
    domeDepth: [p.domeDepth, p.domeDepth],
    heartCx: cx + 0.035,
    heartCy: p.diaphragmY - 0.1,
    heartHw: p.cardiothoracicRatio * (p.lungOffset + p.lungHalfWidth),
    heartHh: 0.12,
    lungDensity: 0.25,
    markings: 1,
    effusion: [0, 0],
    pleuralRim: [0, 0],
    pneumothorax: [0, 0],
    plate: [0, 0],
    edema: 0,
    infiltration: [0, 0],
    pneumonia: null,
    consolidation: null,
    fibrosis: 0,
    blobs: [],
    hernia: null,
  };
  const has = (l: Label) => findings.has(l);
  if (has("Emphysema")) {
    // Hyperinflated, hyperlucent lungs; flat, low diaphragm; narrow heart.
    for (const k of [0, 1]) {
      s.diaphragm[k] += rng.uniform(0.05, 0.07);
      s.domeDepth[k] *= 0.25;
      s.lungA[k] *= 1.08;
    }
    s.lungTop -= 0.02;
    s.lungDensity -= 0.12;
    s.markings *= 0.35;
    s.heartHw *= 0.85;
    s.heartCy += 0.04;
  }
  if (has("Cardiomegaly")) {
    s.heartHw *= rng.uniform(1.35, 1.5);
    s.heartHh *= 1.15;
  }
  if (has("Atelectasis")) {
    // Volume loss: raised hemidiaphragm, a plate-like band, heart pulled to that side.
    const k = sideOf("Atelectasis");
    s.diaphragm[k] -= rng.uniform(0.07, 0.1);
    s.domeDepth[k] *= 1.2;
    s.plate[k] = rng.uniform(0.5, 0.8);
    s.heartCx += (k === 0 ? -1 : 1) * 0.02;
  }
  if (has("Fibrosis")) {
    s.fibrosis = rng.uniform(0.8, 1.1);
    s.diaphragm[0] -= 0.02;
    s.diaphragm[1] -= 0.02;
  }
  if (has("Effusion")) {
    const both = rng.bernoulli(0.35);
    const k = sideOf("Effusion");
    s.effusion[k] = rng.uniform(0.1, 0.17);
    if (both) s.effusion[1 - k] = rng.uniform(0.07, 0.13);
  }
  if (has("Pleural_Thickening")) {
    const where = site("Pleural_Thickening");
    const k = where.bernoulli(0.5) ? 1 : 0;
    s.pleuralRim[k] = where.uniform(0.022, 0.034);
    if (where.bernoulli(0.4)) s.pleuralRim[1 - k] = where.uniform(0.018, 0.028);
  }
  if (has("Pneumothorax")) s.pneumothorax[sideOf("Pneumothorax")] = rng.uniform(0.06, 0.09);
  if (has("Edema")) s.edema = rng.uniform(0.8, 1.1);
  if (has("Infiltration")) {
    const k = sideOf("Infiltration");
    s.infiltration[k] = rng.uniform(0.8, 1.1);
    if (rng.bernoulli(0.6)) s.infiltration[1 - k] = rng.uniform(0.6, 1);
  }
  const lungPoint = (zoneLo: number, zoneHi: number, g: Rng, margin: number) => {
    for (let tries = 0; tries < 50; tries++) {
      const k = g.bernoulli(0.5) ? 1 : 0;
      const x = s.lungCx[k] + g.uniform(-0.7, 0.7) * s.lungA[k];
      const top = s.lungTop;
      const y = top + g.uniform(zoneLo, zoneHi) * (s.diaphragm[k] - top);
      if (lungDistance(s, k, x, y) > margin) return { x, y };
    }
    return { x: s.lungCx[0], y: 0.45 };
  };
  if (has("Pneumonia")) {
    const c = lungPoint(0.35, 0.75, site("Pneumonia"), 0.04);
    s.pneumonia = { x: c.x, y: c.y, r: rng.uniform(0.09, 0.13), density: rng.uniform(0.6, 0.8) };
  }
  if (has("Consolidation")) {
    s.consolidation = {
      side: sideOf("Consolidation"),
      upper: rng.bernoulli(0.5),
      tilt: rng.uniform(-0.25, 0.25),
      level: rng.uniform(0.42, 0.55),
    };
  }
  if (has("Mass")) {
    const where = site("Mass");
    const c = lungPoint(0.2, 0.8, where, 0.06);
    s.blobs.push({ x: c.x, y: c.y, r: where.uniform(0.05, 0.075), density: 0.75 });
  }
  if (has("Nodule")) {
    const where = site("Nodule");
    const n = 4 + where.int(4);
    for (let i = 0; i < n; i++) {
      const c = lungPoint(0.1, 0.9, where, 0.03);
      s.blobs.push({ x: c.x, y: c.y, r: where.uniform(0.022, 0.032), density: 1 });
    }
  }
  if (has("Hernia")) {
    const where = site("Hernia");
    s.hernia = {
      x: cx + where.uniform(-0.01, 0.04),
      y: s.diaphragm[1] - s.domeDepth[1] - where.uniform(0.03, 0.06),
      r: where.uniform(0.055, 0.075),
      density: 0.55,
    };
  }
  return s;
}

/** Signed distance-like value inside lung `k` (positive inside, in side units). */
function lungDistance(s: Scene, k: number, x: number, y: number): number {
  const top = s.lungTop;
  const base = s.diaphragm[k];
  const t = (y - top) / (base - top);
  // Rounded apex, lateral edge bulging out down to the costophrenic angle.
  const tc = Math.min(1, Math.max(0, t));
  const widthT = t <= 0 ? 0 : Math.sin(Math.min(1, tc / 0.8) * Math.PI / 2) ** 0.8;
  const lateral = (k === 0 ? -1 : 1) * (x - s.lungCx[k]) > 0;
  // The medial edge is straighter (mediastinum); the lateral one follows the ribs.
  const half = lateral ? s.lungA[k] * widthT : s.lungA[k] * widthT ** 0.35;
  const dx = half - Math.abs(x - s.lungCx[k]);
  const q = Math.min(
    1,
    Math.abs((x - (s.lungCx[k] + (k === 0 ? 0.02 : -0.02))) / (s.lungA[k] * 1.1)),
  );
  const dome = base - s.domeDepth[k] * (1 - q * q);
  const dBottom = dome - y;
  return Math.min(dx, dBottom, y - top + 0.01);
}

// ---------------------------------------------------------------------------------------------
// Rendering.

/** Per-image acquisition nuisance: position, rotation, exposure, noise. */
interface Nuisance {
  dx: number;
  dy: number;
  cos: number;
  sin: number;
  scale: number;
  exposure: number;
  offset: number;
  gamma: number;
  noise: number;
  gradX: number;
  gradY: number;
  seed: number;
}

function drawNuisance(rng: Rng): Nuisance {
  const angle = rng.uniform(-3.5, 3.5) * Math.PI / 180;
  return {
    dx: rng.uniform(-0.03, 0.03),
    dy: rng.uniform(-0.03, 0.03),
    cos: Math.cos(angle),
    sin: Math.sin(angle),
    scale: rng.uniform(0.95, 1.05),
    exposure: rng.uniform(0.95, 1.25),
    offset: rng.uniform(-0.04, 0.04),
    gamma: rng.uniform(0.85, 1.15),
    noise: rng.uniform(0.01, 0.03),
    gradX: rng.uniform(-0.08, 0.08),
    gradY: rng.uniform(-0.06, 0.06),
    seed: Math.floor(rng.next() * 2 ** 31),
  };
}

/** Attenuation (higher = brighter on the film) at anatomical point (x, y). */
function attenuation(s: Scene, p: PatientAnatomy, x: number, y: number, seed: number): number {
  const edge = 0.006;
  const cx = s.cx;
  const dxMid = x - cx;
  // Torso: a superellipse reaching below the image, shoulders near the top, a neck above.
  const bx = dxMid / p.bodyHalfWidth;
  const by = (y - 0.62) / 0.62;
  const torso = sigmoid((1 - (bx ** 4 + by ** 4)) * 12);
  const neck = sigmoid((0.075 - Math.abs(dxMid)) / 0.01) * sigmoid((0.12 - y) / 0.01);
  const body = Math.max(torso, neck);
  let a = 0.02 + body * (0.95 * p.tissueDensity + 0.12 * (1 - Math.abs(bx)));
  if (p.sex === "F") {
    // Breast shadows over the lower lung zones.
    const bs = Math.exp(-(((Math.abs(dxMid) - 0.22) / 0.12) ** 2 + ((y - 0.66) / 0.09) ** 2));
    a += 0.12 * bs;
  }

  // Heart (in front of the lungs) and mediastinum.
  const hx = (x - s.heartCx) / s.heartHw;
  const hy = (y - s.heartCy) / s.heartHh;
  const heartUpper = hy < 0 ? hy * 0.7 : hy;
  const heart = sigmoid((1 - Math.sqrt(hx * hx + heartUpper * heartUpper)) / 0.05);
  const mediastinum = sigmoid((0.05 - Math.abs(dxMid - 0.005)) / 0.008) *
    sigmoid((y - 0.1) / 0.01);
  const aorta = Math.exp(-(((x - cx - 0.065) / 0.03) ** 2 + ((y - 0.3) / 0.03) ** 2));

  // Lungs.
  let lungSum = 0;
  let lesion = 0;
  for (let k = 0; k < 2; k++) {
    const d = lungDistance(s, k, x, y);
    if (d < -0.03) continue;
    const m = sigmoid(d / edge) * (1 - 0.85 * heart) * (1 - 0.9 * mediastinum);
    if (m < 1e-4) continue;
    const top = s.lungTop;
    const t = (y - top) / (s.diaphragm[k] - top); // 0 apex .. 1 base
    const lat = Math.abs(x - s.lungCx[k]) / s.lungA[k]; // 0 centre .. 1 edge
    const lateralSide = (k === 0 ? -1 : 1) * (x - s.lungCx[k]) > 0;
    // Vessel markings: branching lines, denser near the hilum, fading to the periphery.
    const hx0 = x - (cx + (k === 0 ? -0.08 : 0.08));
    const hy0 = y - 0.45;
    const hilumDist = Math.hypot(hx0, hy0 * 0.8);
    // Streaks fanning out from the hilum, branching and thinning towards the periphery.
    const theta = Math.atan2(hy0, hx0);
    let vessels = s.markings * 0.2 *
      ridge(theta * 1.6 + 0.4 * fbm(x, y, 5, 1, seed + 3), hilumDist * 1.6, 5, seed + k, 5) *
      Math.max(0, 1 - hilumDist / 0.3);
    vessels += s.markings * 0.1 * Math.exp(-((hilumDist / 0.05) ** 2));
    let air = 0.78 - (s.lungDensity - 0.25);
    let extra = 0;
    if (s.pneumothorax[k] > 0) {
      // Air between chest wall and the collapsed lung: no markings, a thin visceral line.
      const w = s.pneumothorax[k] * (1.2 - 0.6 * t);
      const collapsed = sigmoid((d - w) / edge);
      const outer = (1 - collapsed) * (lateralSide || t < 0.25 ? 1 : 0.2) * (t < 0.8 ? 1 : 0);
      vessels *= 1 - outer;
      air += 0.3 * outer;
      extra += 0.45 * Math.exp(-(((d - w) / 0.004) ** 2)) * (lateralSide || t < 0.25 ? 1 : 0.2) *
        (t < 0.8 ? 1 : 0);
    }
    if (s.effusion[k] > 0) {
      // Fluid layering at the base with a meniscus rising laterally: blunted angle.
      const level = s.diaphragm[k] - s.effusion[k] - (lateralSide ? 0.12 * lat ** 3 : 0);
      extra += 0.8 * sigmoid((y - level) / 0.008);
    }
    if (s.pleuralRim[k] > 0) {
      const rim = sigmoid(d / edge) - sigmoid((d - s.pleuralRim[k]) / 0.005);
      extra += 0.9 * rim * (lateralSide || t < 0.2 ? 1 : 0.3);
    }
    if (s.plate[k] > 0) {
      const py = s.diaphragm[k] - s.domeDepth[k] - 0.05 + 0.25 * (x - s.lungCx[k]) * 0.2;
      extra += s.plate[k] * 0.6 * Math.exp(-(((y - py) / 0.012) ** 2)) * (lat < 0.8 ? 1 : 0);
      extra += 0.15 * s.plate[k] * smoothstep(0.6, 1, t);
    }
    if (s.edema > 0) {
      // Bat-wing perihilar haze, both sides.
      extra += s.edema * 0.5 * Math.exp(-((hilumDist / 0.13) ** 2)) *
        (0.7 + 0.3 * fbm(x, y, 9, 2, seed + 77));
    }
    if (s.infiltration[k] > 0) {
      // Patchy ill-defined blotches in the upper and middle zones.
      const patch = smoothstep(0.5, 0.72, fbm(x, y, 14, 3, seed + 31 + k));
      extra += s.infiltration[k] * 0.55 * patch * (1 - smoothstep(0.55, 0.85, t));
    }
    if (s.fibrosis > 0) {
      // Coarse reticular net at the bases.
      const net = Math.max(
        ridge(x, y, 22, p.textureSeed + 5, 4),
        ridge(y, x, 19, p.textureSeed + 9, 4),
      );
      extra += s.fibrosis * (0.7 * net + 0.2) * smoothstep(0.4, 0.85, t);
    }
    if (s.consolidation && s.consolidation.side === k) {
      // Dense homogeneous lobe bounded by a straight fissure, with air bronchograms.
      const c = s.consolidation;
      const fiss = top + c.level * (s.diaphragm[k] - top) + c.tilt * (x - s.lungCx[k]);
      const inLobe = c.upper ? sigmoid((fiss - y) / 0.004) : sigmoid((y - fiss) / 0.004);
      const bronchi = ridge(theta * 4, hilumDist * 4, 3, seed + 53, 12);
      extra += inLobe * (0.8 - 0.3 * bronchi);
      vessels *= 1 - inLobe;
    }
    if (s.pneumonia) {
      const pn = s.pneumonia;
      const r = Math.hypot(x - pn.x, y - pn.y) / pn.r;
      const cloud = (1 - smoothstep(0.5, 1.3, r + 0.5 * (fbm(x, y, 18, 2, seed + 91) - 0.5))) *
        (0.55 + 0.45 * fbm(x, y, 30, 2, seed + 97));
      extra += pn.density * cloud;
    }
    lungSum += m * air;
    lesion += m * (vessels + extra);
  }
  a -= lungSum;
  a += lesion;
  for (const b of s.blobs) {
    const r = Math.hypot(x - b.x, y - b.y) / b.r;
    if (r < 1.6) {
      a += b.density * sigmoid((1 - r) * 8) * (0.8 + 0.2 * Math.sqrt(Math.max(0, 1 - r * r)));
    }
  }

  a += 0.32 * heart + 0.22 * mediastinum * (1 - heart) + 0.15 * aorta;
  if (s.hernia) {
    // Gas-filled stomach behind the heart, with an air-fluid level.
    const h = s.hernia;
    const r = Math.hypot(x - h.x, (y - h.y) * 1.15) / h.r;
    const inside = sigmoid((1 - r) / 0.06);
    const gas = inside * sigmoid((h.y + h.r * 0.25 - y) / 0.006);
    a += -0.55 * gas + 0.25 * Math.exp(-(((r - 1) / 0.08) ** 2));
  }
  // Gastric bubble under the left hemidiaphragm (normal anatomy).
  const gb = Math.hypot((x - (s.lungCx[1] + 0.02)) / 0.05, (y - (s.diaphragm[1] + 0.03)) / 0.03);
  a -= 0.25 * sigmoid((1 - gb) / 0.15) * torso;

  // Spine: a bright column with vertebral bodies, seen through the mediastinum.
  const spine = sigmoid((0.035 - Math.abs(dxMid)) / 0.006);
  if (spine > 1e-3) {
    const vert = 0.5 + 0.5 * Math.cos(((y - 0.1) / 0.045) * 2 * Math.PI);
    a += spine * (0.1 + 0.08 * vert);
  }
  // Ribs: posterior arcs sloping down from the spine, faint over the lungs.
  const ad = Math.abs(dxMid);
  if (ad > 0.03 && ad < p.bodyHalfWidth) {
    // Posterior ribs rise a little from the spine, then curve down along the chest wall.
    const yr = y - (-0.25 * ad + 1.3 * ad * ad) - 0.07;
    const ph = yr / p.ribSpacing + p.ribPhase;
    const f = ph - Math.floor(ph);
    const band = Math.exp(-(((f - 0.5) / 0.13) ** 2));
    const ribZone = sigmoid((y - 0.07) / 0.01) * sigmoid((s.diaphragm[0] + 0.02 - y) / 0.02) *
      sigmoid((p.bodyHalfWidth - 0.01 - ad) / 0.01);
    a += 0.09 * band * ribZone;
  }
  // Clavicles.
  const cy = 0.13 + 0.25 * (ad - 0.06) * (ad - 0.06) * 4 - 0.06 * (ad - 0.06);
  if (ad > 0.04 && ad < 0.3) a += 0.28 * Math.exp(-(((y - cy) / 0.013) ** 2)) * body;
  return a;
}

/** A 5×7 bitmap font for the "SYNTHETIC" mark. */
const GLYPHS: Record<string, string[]> = {
  S: ["01111", "10000", "10000", "01110", "00001", "00001", "11110"],
  Y: ["10001", "10001", "01010", "00100", "00100", "00100", "00100"],
  N: ["10001", "11001", "10101", "10011", "10001", "10001", "10001"],
  T: ["11111", "00100", "00100", "00100", "00100", "00100", "00100"],
  H: ["10001", "10001", "10001", "11111", "10001", "10001", "10001"],
  E: ["11111", "10000", "10000", "11110", "10000", "10000", "11111"],
  I: ["01110", "00100", "00100", "00100", "00100", "00100", "01110"],
  C: ["01111", "10000", "10000", "10000", "10000", "10000", "01111"],
};

/** The text burned into every image. */
export const SYNTHETIC_MARK = "SYNTHETIC";

/** Burns `text` in white on a black box at the top-left corner of a square gray image. */
function burnText(img: Uint8Array, size: number, text: string): void {
  const scale = Math.max(1, Math.round(size / 256));
  const x0 = 3 * scale;
  const y0 = 3 * scale;
  const w = text.length * 6 * scale + scale;
  const h = 9 * scale;
  for (let y = y0 - scale; y < y0 - scale + h && y < size; y++) {
    for (let x = x0 - scale; x < x0 - scale + w && x < size; x++) img[y * size + x] = 0;
  }
  for (let c = 0; c < text.length; c++) {
    const g = GLYPHS[text[c]];
    if (!g) continue;
    for (let gy = 0; gy < 7; gy++) {
      for (let gx = 0; gx < 5; gx++) {
        if (g[gy][gx] !== "1") continue;
        for (let sy = 0; sy < scale; sy++) {
          for (let sx = 0; sx < scale; sx++) {
            const x = x0 + (c * 6 + gx) * scale + sx;
            const y = y0 + gy * scale + sy;
            if (x < size && y < size) img[y * size + x] = 255;
          }
        }
      }
    }
  }
}

/**
 * Renders one SYNTHETIC frontal chest image of `size`×`size` 8-bit gray pixels (row-major)
 * showing `findings` on `patient`'s anatomy; `rng` draws the lesion details and the
 * acquisition nuisance. "SYNTHETIC" is burned into the top-left corner.
 */
export function renderSyntheticCxr(
  findings: ReadonlySet<Label>,
  patient: PatientAnatomy,
  rng: Rng,
  size: number,
): Uint8Array {
  // Nuisance first: the same `rng` seed gives the same acquisition whatever the findings.
  const nz = drawNuisance(rng);
  const noise = rng.fork();
  const scene = buildScene(findings, patient, rng);
  const out = new Uint8Array(size * size);
  const inv = 1 / size;
  const texSeed = patient.textureSeed;
  for (let j = 0; j < size; j++) {
    const v = (j + 0.5) * inv - 0.5;
    for (let i = 0; i < size; i++) {
      const u = (i + 0.5) * inv - 0.5;
      // Image → anatomy: undo the shift, rotation and magnification.
      const ru = (u - nz.dx) / nz.scale;
      const rv = (v - nz.dy) / nz.scale;
      const x = nz.cos * ru + nz.sin * rv + 0.5;
      const y = -nz.sin * ru + nz.cos * rv + 0.5;
      const a = attenuation(scene, patient, x, y, texSeed);
      let g = 1 - Math.exp(-nz.exposure * Math.max(0, a));
      g = g + nz.offset + nz.gradX * u + nz.gradY * v;
      g = Math.max(0, Math.min(1, g)) ** nz.gamma;
      g += nz.noise * noise.normal();
      out[j * size + i] = Math.max(0, Math.min(255, Math.round(g * 255)));
    }
  }
  burnText(out, size, SYNTHETIC_MARK);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Labels of a patient's series of images.

/**
 * Scale of each label's rate in a fresh draw, calibrated by simulation (10^5 images) so that,
 * with persistence and co-occurrence, the image-level shares land on `DEMO_PREVALENCE`.
 */
export const FRESH_SCALE: Readonly<Record<Label, number>> = {
  Atelectasis: 0.767,
  Cardiomegaly: 0.662,
  Effusion: 0.823,
  Infiltration: 1.004,
  Mass: 0.714,
  Nodule: 0.723,
  Pneumonia: 1.037,
  Pneumothorax: 1.04,
  Consolidation: 1.026,
  Edema: 0.998,
  Emphysema: 0.663,
  Fibrosis: 0.658,
  Pleural_Thickening: 0.71,
  Hernia: 0.652,
};

function drawFreshFindings(rng: Rng): Set<Label> {
  const out = new Set<Label>();
  if (!rng.bernoulli(ABNORMAL_SHARE)) return out;
  for (const l of LABELS) {
    if (rng.bernoulli(Math.min(0.9, DEMO_PREVALENCE[l] / ABNORMAL_SHARE * FRESH_SCALE[l]))) {
      out.add(l);
    }
  }
  if (out.has("Edema") && rng.bernoulli(0.4)) out.add("Effusion");
  if (out.has("Cardiomegaly") && rng.bernoulli(0.3)) out.add("Effusion");
  if (out.has("Effusion") && rng.bernoulli(0.2)) out.add("Atelectasis");
  if (out.size === 0) {
    let r = rng.next() * LABELS.reduce((t, l) => t + DEMO_PREVALENCE[l], 0);
    for (const l of LABELS) {
      r -= DEMO_PREVALENCE[l];
      if (r <= 0) {
        out.add(l);
        break;
      }
    }
    if (out.size === 0) out.add(LABELS[0]);
  }
  return out;
}

/** Findings of each of a patient's `count` images: follow-ups keep findings with some chance. */
export function drawPatientFindings(count: number, rng: Rng): Set<Label>[] {
  const series: Set<Label>[] = [];
  for (let f = 0; f < count; f++) {
    if (f === 0) {
      series.push(drawFreshFindings(rng));
      continue;
    }
    const prev = series[f - 1];
    const next = new Set<Label>();
    for (const l of prev) if (rng.bernoulli(PERSISTENCE[l])) next.add(l);
    if (rng.bernoulli(0.45)) { for (const l of drawFreshFindings(rng)) next.add(l); }
    series.push(next);
  }
  return series;
}

/** Number of images of each patient: mostly one to three, a few long series (like NIH). */
function drawFollowUpCounts(numImages: number, rng: Rng): number[] {
  const counts: number[] = [];
  let left = numImages;
  while (left > 0) {
    let k = 1;
    while (k < 10 && rng.bernoulli(0.5)) k++;
    k = Math.min(k, left);
    counts.push(k);
    left -= k;
  }
  return counts;
}

// ---------------------------------------------------------------------------------------------
// Dataset writing.

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

function crc32(bytes: Uint8Array): number {
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** Inserts a PNG `tEXt` chunk (`keyword`, `text`, Latin-1) right after the IHDR chunk. */
export function addPngText(png: Uint8Array, keyword: string, text: string): Uint8Array {
  const body = new TextEncoder().encode(`${keyword}\0${text}`);
  const chunk = new Uint8Array(12 + body.length);
  const view = new DataView(chunk.buffer);
  view.setUint32(0, body.length);
  chunk.set([0x74, 0x45, 0x58, 0x74], 4); // "tEXt"
  chunk.set(body, 8);
  view.setUint32(8 + body.length, crc32(chunk.subarray(4, 8 + body.length)));
  const ihdrEnd = 8 + 8 + 13 + 4;
  const out = new Uint8Array(png.length + chunk.length);
  out.set(png.subarray(0, ihdrEnd), 0);
  out.set(chunk, ihdrEnd);
  out.set(png.subarray(ihdrEnd), ihdrEnd + chunk.length);
  return out;
}

/** Text of the PNG comment and the first line of the README. */
export const SYNTHETIC_NOTICE =
  "SYNTHETIC image generated by the augmented-chest-xray demo (lib/data/synthetic_cxr.ts). " +
  "Not medical data: not a radiograph of any person.";

const README_TEXT = `SYNTHETIC DATA - NOT MEDICAL DATA
=================================

Every image in this folder was drawn by a program (lib/data/synthetic_cxr.ts of the
augmented-chest-xray Deno port) for \`deno task demo\`. None of them is a radiograph of
any person, and none may be used for any medical purpose. Each image has "SYNTHETIC"
burned into its top-left corner and a PNG text comment saying so.

The folder mimics the layout of the NIH ChestX-ray14 download
(images/PPPPPPPP_FFF.png = patient + follow-up number, and
meta_data/${META_FILE_NAME} with the real column header) so that the real
preprocess_data.ts, train_model.ts and validate_model.ts can run on it unchanged.

Findings are drawn as simple, deliberately exaggerated cartoons of their radiographic signs
(e.g. Cardiomegaly = a wider heart, Effusion = fluid at a lung base, Nodule = small round
opacities). Prevalences follow NIH's order but rare classes get at least about 2.5% of the
images so that a small demo still has a few positives of each class.
`;

/** Options of `generateSyntheticDataset`. */
export interface SyntheticDatasetOptions {
  /** Output folder (gets `images/`, `meta_data/`, `README_SYNTHETIC.txt`). */
  outDir: string;
  numImages: number;
  seed: number;
  /** Side of the written PNGs (1024 like NIH). Rendered at up to 256 px and upsampled. */
  size: number;
  /** Images encoded concurrently (sharp runs them on its thread pool). */
  workers?: number;
  /** Called after each image is written, with the number written so far. */
  onImage?: (done: number) => void;
}

/** What `generateSyntheticDataset` wrote. */
export interface SyntheticDatasetSummary {
  images: number;
  patients: number;
  /** Share of images with each label (and "No Finding"). */
  prevalence: Record<string, number>;
}

/** Side at which images are drawn before upsampling to the requested size. */
export const RENDER_SIZE = 256;

interface PlannedImage {
  name: string;
  patient: PatientAnatomy;
  followUp: number;
  findings: Set<Label>;
  seed: number;
  view: "PA" | "AP";
  age: number;
}

/** Plans every image (patients, follow-ups, findings, per-image seeds) from `seed`. */
function planDataset(numImages: number, seed: number): PlannedImage[] {
  const rng = new Rng(seed);
  const counts = drawFollowUpCounts(numImages, rng.fork());
  const anatomyRng = rng.fork();
  const findingRng = rng.fork();
  const imageRng = rng.fork();
  const plan: PlannedImage[] = [];
  counts.forEach((count, p) => {
    const patient = drawPatientAnatomy(p + 1, anatomyRng);
    const series = drawPatientFindings(count, findingRng);
    let age = patient.age;
    series.forEach((findings, f) => {
      if (f > 0) age = Math.min(95, age + (imageRng.bernoulli(0.3) ? 1 : 0));
      const sick = findings.size > 0;
      plan.push({
        name: `${String(p + 1).padStart(8, "0")}_${String(f).padStart(3, "0")}.png`,
        patient,
        followUp: f,
        findings,
        seed: Math.floor(imageRng.next() * 2 ** 31),
        view: imageRng.bernoulli(sick ? 0.5 : 0.3) ? "AP" : "PA",
        age,
      });
    });
  });
  return plan;
}

/** `Finding Labels` value: labels in `LABELS` order joined by `|`, or `No Finding`. */
export function formatFindings(findings: ReadonlySet<Label>): string {
  const names = LABELS.filter((l) => findings.has(l));
  return names.length > 0 ? names.join("|") : "No Finding";
}

async function encodePng(gray: Uint8Array, from: number, size: number): Promise<Uint8Array> {
  let pipeline = sharp(gray, { raw: { width: from, height: from, channels: 1 } });
  if (from !== size) pipeline = pipeline.resize(size, size, { kernel: "cubic" });
  const buf = await pipeline.toColourspace("b-w").png({ compressionLevel: 4 }).toBuffer();
  return addPngText(
    new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength),
    "Comment",
    SYNTHETIC_NOTICE,
  );
}

/**
 * Writes a SYNTHETIC dataset in the NIH ChestX-ray14 input layout: `outDir/images/*.png`
 * (`size`×`size` 8-bit gray), `outDir/meta_data/Data_Entry_2017_v2020.csv` and
 * `outDir/README_SYNTHETIC.txt`. Same seed, same bytes.
 */
export async function generateSyntheticDataset(
  opts: SyntheticDatasetOptions,
): Promise<SyntheticDatasetSummary> {
  const { outDir, numImages, seed, size } = opts;
  if (!Number.isInteger(numImages) || numImages < 1) {
    throw new RangeError(`numImages must be a positive integer, got ${numImages}`);
  }
  if (!Number.isInteger(size) || size < 64) {
    throw new RangeError(`size must be an integer of at least 64, got ${size}`);
  }
  const workers = Math.max(1, Math.floor(opts.workers ?? 4));
  const plan = planDataset(numImages, seed);
  const imageDir = `${outDir}/images`;
  const metaDir = `${outDir}/meta_data`;
  await Deno.mkdir(imageDir, { recursive: true });
  await Deno.mkdir(metaDir, { recursive: true });
  await writeFileAtomic(`${outDir}/README_SYNTHETIC.txt`, README_TEXT);

  const renderSize = Math.min(size, RENDER_SIZE);
  let next = 0;
  let done = 0;
  const worker = async () => {
    while (next < plan.length) {
      const item = plan[next++];
      const gray = renderSyntheticCxr(item.findings, item.patient, new Rng(item.seed), renderSize);
      const png = await encodePng(gray, renderSize, size);
      await writeFileAtomic(`${imageDir}/${item.name}`, png);
      opts.onImage?.(++done);
    }
  };
  await Promise.all(Array.from({ length: workers }, worker));

  const spacing = (430 / size).toFixed(3); // a ~43 cm detector
  const lines = [DATA_ENTRY_HEADER];
  for (const it of plan) {
    lines.push(
      [
        it.name,
        formatFindings(it.findings),
        it.followUp,
        it.patient.id,
        it.age,
        it.patient.sex,
        it.view,
        size,
        size,
        spacing,
        spacing,
      ].join(","),
    );
  }
  await writeFileAtomic(`${metaDir}/${META_FILE_NAME}`, lines.join("\n") + "\n");

  const prevalence: Record<string, number> = { "No Finding": 0 };
  for (const l of LABELS) prevalence[l] = 0;
  for (const it of plan) {
    if (it.findings.size === 0) prevalence["No Finding"]++;
    for (const l of it.findings) prevalence[l]++;
  }
  for (const k of Object.keys(prevalence)) prevalence[k] /= plan.length;
  return { images: plan.length, patients: plan[plan.length - 1].patient.id, prevalence };
}

/** Plans a dataset without rendering it: the findings of each image, for statistics. */
export function planSyntheticLabels(
  numImages: number,
  seed: number,
): { name: string; patientId: number; findings: Set<Label> }[] {
  return planDataset(numImages, seed).map((p) => ({
    name: p.name,
    patientId: p.patient.id,
    findings: p.findings,
  }));
}
