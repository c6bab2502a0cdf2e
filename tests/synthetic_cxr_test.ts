/**
 * Tests of the SYNTHETIC demo dataset: NIH layout and CSV format, determinism, PNG format and
 * labelling, prevalence and patient correlation, and that each finding changes the image.
 */
import assert from "node:assert/strict";
import { type Label, LABELS } from "../config.ts";
import { Rng } from "../lib/util/rng.ts";
import {
  DATA_ENTRY_HEADER,
  drawPatientAnatomy,
  generateSyntheticDataset,
  type PatientAnatomy,
  planSyntheticLabels,
  renderSyntheticCxr,
} from "../lib/data/synthetic_cxr.ts";

/** The header line of NIH's Data_Entry_2017_v2020.csv, as downloaded. */
const NIH_HEADER =
  "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]";

const SIZE = 256;
const COUNT = 20;

async function makeDataset(seed: number) {
  const dir = await Deno.makeTempDir({ prefix: "synthetic_cxr_test_" });
  const summary = await generateSyntheticDataset({
    outDir: dir,
    numImages: COUNT,
    seed,
    size: SIZE,
    workers: 2,
  });
  return { dir, summary };
}

/** PNG IHDR fields and tEXt chunks. */
function pngInfo(bytes: Uint8Array) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const texts: string[] = [];
  let off = 8;
  while (off < bytes.length) {
    const len = view.getUint32(off);
    const type = new TextDecoder().decode(bytes.subarray(off + 4, off + 8));
    if (type === "tEXt") {
      texts.push(new TextDecoder().decode(bytes.subarray(off + 8, off + 8 + len)));
    }
    if (type === "IEND") break;
    off += 12 + len;
  }
  return {
    width: view.getUint32(16),
    height: view.getUint32(20),
    bitDepth: bytes[24],
    colorType: bytes[25],
    texts,
  };
}

const run1 = makeDataset(42);
const run2 = makeDataset(42);

Deno.test("synthetic dataset: the CSV has NIH's exact header and 11 well-formed fields a row", async () => {
  const { dir } = await run1;
  const text = await Deno.readTextFile(`${dir}/meta_data/Data_Entry_2017_v2020.csv`);
  const lines = text.trimEnd().split("\n");
  assert.equal(lines[0], NIH_HEADER);
  assert.equal(DATA_ENTRY_HEADER, NIH_HEADER);
  assert.equal(lines[0].split(",").length, 11);
  assert.equal(lines.length - 1, COUNT);
  const known = new Set<string>(LABELS);
  for (const line of lines.slice(1)) {
    const f = line.split(",");
    assert.equal(f.length, 11, line);
    const m = /^(\d{8})_(\d{3})\.png$/.exec(f[0]);
    assert.ok(m, `file name ${f[0]}`);
    if (f[1] !== "No Finding") {
      const names = f[1].split("|");
      for (const n of names) assert.ok(known.has(n), `label ${n}`);
      assert.deepEqual(names, LABELS.filter((l) => names.includes(l)), "labels in LABELS order");
    }
    assert.equal(Number(f[2]), Number(m[2]), "Follow-up # matches the file name");
    assert.equal(Number(f[3]), Number(m[1]), "Patient ID matches the file name");
    assert.ok(Number.isInteger(Number(f[4])) && Number(f[4]) > 0 && Number(f[4]) < 100);
    assert.ok(f[5] === "M" || f[5] === "F");
    assert.ok(f[6] === "PA" || f[6] === "AP");
    assert.deepEqual([Number(f[7]), Number(f[8])], [SIZE, SIZE]);
    assert.ok(Number(f[9]) > 0 && f[9] === f[10]);
  }
});

Deno.test("synthetic dataset: patients and follow-ups are numbered like NIH", async () => {
  const { dir, summary } = await run1;
  const files = [...Deno.readDirSync(`${dir}/images`)].map((e) => e.name).sort();
  const csv = (await Deno.readTextFile(`${dir}/meta_data/Data_Entry_2017_v2020.csv`))
    .trimEnd().split("\n").slice(1).map((l) => l.split(",")[0]);
  assert.deepEqual(files, [...csv].sort(), "one image per CSV row, no temp files left");
  const followUps = new Map<string, number[]>();
  for (const name of files) {
    const [p, f] = name.replace(".png", "").split("_");
    followUps.set(p, [...(followUps.get(p) ?? []), Number(f)]);
  }
  assert.equal(followUps.size, summary.patients);
  assert.equal(summary.images, COUNT);
  for (const fs of followUps.values()) assert.deepEqual(fs, fs.map((_, i) => i));
  assert.ok([...followUps.values()].some((fs) => fs.length > 1), "some patients have follow-ups");
});

Deno.test("synthetic dataset: PNGs are square 8-bit grayscale and labelled SYNTHETIC", async () => {
  const { dir } = await run1;
  const names = [...Deno.readDirSync(`${dir}/images`)].map((e) => e.name).sort().slice(0, 5);
  for (const name of names) {
    const info = pngInfo(await Deno.readFile(`${dir}/images/${name}`));
    assert.deepEqual([info.width, info.height, info.bitDepth, info.colorType], [SIZE, SIZE, 8, 0]);
    assert.ok(info.texts.some((t) => t.startsWith("Comment\0SYNTHETIC")), info.texts.join());
  }
  const readme = await Deno.readTextFile(`${dir}/README_SYNTHETIC.txt`);
  assert.match(readme, /^SYNTHETIC DATA - NOT MEDICAL DATA/);
});

Deno.test("synthetic dataset: the same seed gives the same bytes", async () => {
  const [a, b] = await Promise.all([run1, run2]);
  const csvA = await Deno.readTextFile(`${a.dir}/meta_data/Data_Entry_2017_v2020.csv`);
  const csvB = await Deno.readTextFile(`${b.dir}/meta_data/Data_Entry_2017_v2020.csv`);
  assert.equal(csvA, csvB);
  for (const name of ["00000001_000.png", csvA.trimEnd().split("\n").at(-1)!.split(",")[0]]) {
    assert.deepEqual(
      await Deno.readFile(`${a.dir}/images/${name}`),
      await Deno.readFile(`${b.dir}/images/${name}`),
      name,
    );
  }
  assert.deepEqual(a.summary, b.summary);
  // A different seed gives a different dataset.
  const other = planSyntheticLabels(COUNT, 43).map((p) => [...p.findings].join("|")).join();
  const same = planSyntheticLabels(COUNT, 42).map((p) => [...p.findings].join("|")).join();
  assert.notEqual(other, same);
  await Deno.remove(a.dir, { recursive: true });
  await Deno.remove(b.dir, { recursive: true });
});

Deno.test("synthetic labels: prevalence ordered roughly like NIH, every class present", () => {
  const n = 20000;
  const plan = planSyntheticLabels(n, 7);
  const share: Record<string, number> = {};
  let noFinding = 0;
  for (const p of plan) {
    if (p.findings.size === 0) noFinding++;
    for (const l of p.findings) share[l] = (share[l] ?? 0) + 1 / n;
  }
  assert.ok(noFinding / n > 0.48 && noFinding / n < 0.6, `No Finding ${noFinding / n}`);
  const rest = LABELS.filter((l) => !["Infiltration", "Effusion", "Atelectasis"].includes(l));
  assert.ok(share.Infiltration > share.Effusion && share.Effusion > share.Atelectasis);
  for (const l of rest) assert.ok(share.Atelectasis > share[l] + 0.02, l);
  for (const l of LABELS) assert.ok(share[l] > 0.015 && share[l] < 0.22, `${l} ${share[l]}`);
  assert.ok(share.Hernia < 0.035 && share.Mass > share.Hernia && share.Nodule > share.Hernia);
  // Multi-label images exist.
  assert.ok(plan.filter((p) => p.findings.size > 1).length / n > 0.05);
});

Deno.test("synthetic labels: findings persist across a patient's follow-ups", () => {
  const plan = planSyntheticLabels(20000, 3);
  for (const label of ["Cardiomegaly", "Effusion"] as Label[]) {
    let prevPos = 0;
    let bothPos = 0;
    let total = 0;
    for (let i = 1; i < plan.length; i++) {
      if (plan[i].patientId !== plan[i - 1].patientId) continue;
      total++;
      if (plan[i - 1].findings.has(label)) {
        prevPos++;
        if (plan[i].findings.has(label)) bothPos++;
      }
    }
    const marginal = plan.filter((p) => p.findings.has(label)).length / plan.length;
    assert.ok(total > 1000);
    assert.ok(bothPos / prevPos > 3 * marginal, `${label}: ${bothPos / prevPos} vs ${marginal}`);
  }
});

/** Mean gray level in a box given in fractions of the side. */
function boxMean(img: Uint8Array, size: number, x0: number, x1: number, y0: number, y1: number) {
  let sum = 0;
  let n = 0;
  for (let y = Math.floor(y0 * size); y < Math.ceil(y1 * size); y++) {
    for (let x = Math.floor(x0 * size); x < Math.ceil(x1 * size); x++) {
      sum += img[y * size + x];
      n++;
    }
  }
  return sum / n;
}

const S = 128;
const patients: PatientAnatomy[] = [1, 2, 3].map((i) => drawPatientAnatomy(i, new Rng(1000 + i)));
const render = (p: PatientAnatomy, findings: Label[], seed: number) =>
  renderSyntheticCxr(new Set(findings), p, new Rng(seed), S);

Deno.test("renderSyntheticCxr: deterministic, marked SYNTHETIC, every finding changes the image", () => {
  const p = patients[0];
  assert.deepEqual(render(p, ["Mass"], 5), render(p, ["Mass"], 5));
  assert.notDeepEqual(render(p, [], 5), render(p, [], 6), "nuisance varies per image");
  const img = render(p, [], 5);
  assert.equal(img.length, S * S);
  // The burned-in mark: white text on a black box in the top-left corner.
  const corner = Array.from({ length: 8 }, (_, y) => img.subarray((y + 2) * S, (y + 2) * S + 40));
  assert.ok(corner.some((row) => row.includes(255)) && corner.some((row) => row.includes(0)));
  for (const label of LABELS) {
    let diff = 0;
    for (const [k, pt] of patients.entries()) {
      const a = render(pt, [], 10 + k);
      const b = render(pt, [label], 10 + k);
      for (let i = 0; i < a.length; i++) diff += Math.abs(a[i] - b[i]) / a.length / patients.length;
    }
    assert.ok(diff > 0.15, `${label} changes the image by ${diff.toFixed(3)} gray levels`);
  }
});

Deno.test("renderSyntheticCxr: Cardiomegaly widens the heart, Effusion brightens the lung bases", () => {
  for (const [k, p] of patients.entries()) {
    const normal = render(p, [], 20 + k);
    // The heart band: beside the normal heart's right border (image right), at heart level.
    const heartHw = p.cardiothoracicRatio * (p.lungOffset + p.lungHalfWidth);
    const hx = 0.5 + 0.035 + heartHw;
    const hy = p.diaphragmY - 0.1;
    const band = (img: Uint8Array) => boxMean(img, S, hx + 0.01, hx + 0.05, hy - 0.03, hy + 0.03);
    const cardio = render(p, ["Cardiomegaly"], 20 + k);
    assert.ok(band(cardio) > band(normal) + 10, `heart band ${band(normal)} → ${band(cardio)}`);
    // Lung bases: just above the costophrenic angles, both sides.
    const base = (img: Uint8Array) =>
      boxMean(
        img,
        S,
        0.5 - p.lungOffset - 0.1,
        0.5 - p.lungOffset,
        p.diaphragmY - 0.1,
        p.diaphragmY - 0.04,
      ) +
      boxMean(
        img,
        S,
        0.5 + p.lungOffset,
        0.5 + p.lungOffset + 0.1,
        p.diaphragmY - 0.1,
        p.diaphragmY - 0.04,
      );
    const effusion = render(p, ["Effusion"], 20 + k);
    assert.ok(base(effusion) > base(normal) + 10, `lung bases ${base(normal)} → ${base(effusion)}`);
    // Emphysema: hyperlucent (darker) lungs at mid-zone.
    const mid = (img: Uint8Array) =>
      boxMean(img, S, 0.5 - p.lungOffset - 0.05, 0.5 - p.lungOffset + 0.05, 0.35, 0.5);
    const emphysema = render(p, ["Emphysema"], 20 + k);
    assert.ok(mid(emphysema) < mid(normal) - 5, `mid lung ${mid(normal)} → ${mid(emphysema)}`);
  }
});
