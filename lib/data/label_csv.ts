/**
 * Label tables: the NIH metadata file `Data_Entry_2017_v2020.csv` (and the 2017 file's header
 * variants) with its `Finding Labels` one-hot encoded, and the per-subset label CSVs
 * `{subset}_labels.csv` in the original tool's format (`Image Index` + 14 columns of 0/1).
 * @module
 */
import { LABELS, NUM_CLASSES, USE_COLUMNS } from "../../config.ts";
import { writeFileAtomic } from "../util/atomic_file.ts";
import { UserError } from "../util/errors.ts";
import { refuseSpecialFile } from "../util/input_files.ts";
import { formatCsv, parseCsv, readCell } from "../util/csv.ts";

/** An image and its 14 labels (0/1, in `LABELS` order). */
export interface ImageLabels {
  /** File name, e.g. `00000001_000.png`. */
  image: string;
  labels: Uint8Array;
}

/** A row of the NIH metadata: the image, its patient and its labels. */
export interface MetaEntry extends ImageLabels {
  patientId: string;
}

async function readText(path: string, what: string, hint: string): Promise<string> {
  try {
    // Stat'ed first: a device or a FIFO is refused instead of read forever.
    await refuseSpecialFile(path, what, "give a CSV file");
    return await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new UserError(`${what} not found: ${path}${hint}`);
    if (e instanceof Deno.errors.IsADirectory) {
      throw new UserError(`${what} is a directory, not a CSV file: ${path}`);
    }
    throw e;
  }
}

const LABEL_INDEX = new Map<string, number>(LABELS.map((l, i) => [l.toLowerCase(), i]));

/**
 * One-hot encodes a `Finding Labels` value (`A|B`; `No Finding` = all zero). Unknown names give
 * a `UserError` naming the label and `where` (file and row).
 */
export function encodeFindings(findings: string, where = "<findings>"): Uint8Array {
  const out = new Uint8Array(NUM_CLASSES);
  for (const raw of findings.split("|")) {
    const name = raw.trim();
    if (name === "" || name.toLowerCase() === "no finding") continue;
    // The NIH files spell it `Pleural_Thickening`; accept the spaced form too.
    const idx = LABEL_INDEX.get(name.toLowerCase().replace(/ /g, "_"));
    if (idx === undefined) {
      throw new UserError(
        `${where}: unknown label '${name}' in Finding Labels '${findings}' ` +
          `(known: ${LABELS.join(", ")}, No Finding)`,
      );
    }
    out[idx] = 1;
  }
  return out;
}

/** Finds the columns the metadata needs, accepting the 2017 and 2020 header variants. */
function metaColumns(header: string[], source: string) {
  const norm = header.map((h) => h.trim().toLowerCase().replace(/\s+/g, " "));
  const find = (...names: string[]) => norm.findIndex((h) => names.includes(h));
  const image = find("image index");
  const findings = find("finding labels");
  const patient = find("patient id", "patient_id", "patientid");
  const missing = [
    image < 0 ? "Image Index" : null,
    findings < 0 ? "Finding Labels" : null,
    patient < 0 ? "Patient ID" : null,
  ].filter((x) => x !== null);
  if (missing.length > 0) {
    throw new UserError(
      `${source}: missing column${missing.length > 1 ? "s" : ""} ${missing.join(", ")} ` +
        `(expected the NIH Data_Entry_2017_v2020.csv header)`,
    );
  }
  return { image, findings, patient };
}

/** Parses the NIH metadata CSV text into entries (see `readDataEntry`). */
export function parseDataEntry(text: string, source = "<metadata>"): MetaEntry[] {
  const rows = parseCsv(text, source);
  if (rows.length === 0) throw new UserError(`${source}: the file is empty`);
  const col = metaColumns(rows[0], source);
  const need = Math.max(col.image, col.findings, col.patient) + 1;
  const out: MetaEntry[] = [];
  const seen = new Set<string>();
  for (let r = 1; r < rows.length; r++) {
    const row = rows[r];
    const where = `${source} row ${r + 1}`;
    if (row.length < need) {
      throw new UserError(`${where}: ${row.length} fields, expected at least ${need}`);
    }
    const image = row[col.image].trim();
    const patientRaw = row[col.patient].trim();
    if (image === "") throw new UserError(`${where}: empty Image Index`);
    if (patientRaw === "") throw new UserError(`${where}: empty Patient ID for ${image}`);
    if (seen.has(image)) throw new UserError(`${where}: image ${image} is listed twice`);
    seen.add(image);
    // "1" and "00000001" are the same patient.
    const patientId = /^\d+$/.test(patientRaw) ? String(Number(patientRaw)) : patientRaw;
    out.push({
      image,
      patientId,
      labels: encodeFindings(row[col.findings], `${where} (${image})`),
    });
  }
  return out;
}

/** Reads the NIH metadata file (`Data_Entry_2017_v2020.csv` or the 2017 variant). */
export async function readDataEntry(path: string): Promise<MetaEntry[]> {
  const text = await readText(
    path,
    "metadata file",
    " (download Data_Entry_2017_v2020.csv from the NIH ChestX-ray14 site, or pass --meta_file)",
  );
  return parseDataEntry(text, path);
}

/**
 * Formats a label CSV as the original tool writes it (pandas `to_csv(index=False)`, which quotes
 * as RFC 4180 does), through the project's CSV writer: a name with a comma, quote or newline is
 * quoted, one that would start a formula is guarded (`parseLabelsCsv` reads both back).
 */
export function formatLabelsCsv(rows: readonly ImageLabels[]): string {
  return formatCsv([USE_COLUMNS, ...rows.map((r) => [r.image, ...Array.from(r.labels)])]);
}

/** Writes a label CSV atomically. */
export async function writeLabelsCsv(path: string, rows: readonly ImageLabels[]): Promise<void> {
  await writeFileAtomic(path, formatLabelsCsv(rows));
}

/** Parses a label CSV (`Image Index` + the 14 label columns, any column order). */
export function parseLabelsCsv(text: string, source = "<labels csv>"): ImageLabels[] {
  const rows = parseCsv(text, source);
  if (rows.length === 0) throw new UserError(`${source}: the file is empty`);
  const header = rows[0].map((h) => h.trim());
  const idx = USE_COLUMNS.map((c) => header.indexOf(c));
  const missing = USE_COLUMNS.filter((_, i) => idx[i] < 0);
  if (missing.length > 0) {
    throw new UserError(`${source}: missing column(s) ${missing.join(", ")}`);
  }
  return rows.slice(1).map((row, r) => {
    const labels = new Uint8Array(NUM_CLASSES);
    for (let k = 0; k < NUM_CLASSES; k++) {
      const v = Number(row[idx[k + 1]]);
      if (v !== 0 && v !== 1) {
        throw new UserError(
          `${source} row ${r + 2}: ${LABELS[k]} is '${row[idx[k + 1]]}', expected 0 or 1`,
        );
      }
      labels[k] = v;
    }
    return { image: readCell(row[idx[0]] ?? "").trim(), labels };
  });
}

/** Reads a label CSV written by this tool or the original. */
export async function readLabelsCsv(path: string): Promise<ImageLabels[]> {
  return parseLabelsCsv(await readText(path, "label file", ""), path);
}

/** Reads an NIH image list (`train_val_list.txt`, `test_list.txt`): one file name a line. */
export async function readImageList(path: string): Promise<Set<string>> {
  const text = await readText(
    path,
    "image list",
    " (download it from the NIH ChestX-ray14 site into the meta_data directory)",
  );
  return new Set(text.split(/\r?\n/).map((l) => l.trim()).filter((l) => l !== ""));
}
