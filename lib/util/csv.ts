/**
 * The project's one CSV reader and writer. Writing follows RFC 4180 (a field holding a quote, a
 * comma, CR or LF is quoted, its quotes doubled) and OWASP's rule against formula injection: a
 * text cell beginning with `=`, `+`, `-`, `@`, tab or CR gets a leading `'`, so a spreadsheet
 * shows it as text instead of running it. A text cell beginning with `'` gets one too, so that
 * reading undoes the guard exactly (`readCell`). Numbers are written as numbers, unguarded.
 * @module
 */
import { UserError } from "./errors.ts";

/** Characters that start a formula in Excel, LibreOffice or Google Sheets (OWASP). */
const FORMULA_START = new Set(["=", "+", "-", "@", "\t", "\r"]);

/** A cell to write: text (guarded and quoted as needed) or a number (written as is). */
export type CsvCell = string | number;

/** A text cell as it is stored: guarded against formulas, then quoted if RFC 4180 needs it. */
function writeCell(cell: CsvCell): string {
  if (typeof cell === "number") return String(cell);
  const guarded = FORMULA_START.has(cell[0]) || cell[0] === "'" ? `'${cell}` : cell;
  return /[",\r\n]/.test(guarded) ? `"${guarded.replaceAll('"', '""')}"` : guarded;
}

/** One CSV line (no line end) of `cells`. */
export function csvLine(cells: readonly CsvCell[]): string {
  return cells.map(writeCell).join(",");
}

/** CSV text of `rows`, LF line ends, ending with one. */
export function formatCsv(rows: readonly (readonly CsvCell[])[]): string {
  return rows.map(csvLine).join("\n") + "\n";
}

/**
 * The text a written cell stood for: the formula guard (a `'` before `= + - @`, tab, CR or `'`)
 * removed. A cell written by another program that starts with `'` and anything else is kept.
 */
export function readCell(field: string): string {
  return field[0] === "'" && field.length > 1 && (FORMULA_START.has(field[1]) || field[1] === "'")
    ? field.slice(1)
    : field;
}

/**
 * Parses CSV text (RFC 4180: quoted fields, `""` escapes, CRLF or LF) into rows of raw fields
 * (`readCell` removes the formula guard from a text field).
 */
export function parseCsv(text: string, source = "<csv>"): string[][] {
  const rows: string[][] = [];
  let row: string[] = [];
  let field = "";
  let quoted = false;
  let i = text.charCodeAt(0) === 0xfeff ? 1 : 0;
  let line = 1;
  let quoteLine = 0;
  const n = text.length;
  while (i < n) {
    const c = text[i];
    if (quoted) {
      if (c === '"') {
        if (text[i + 1] === '"') {
          field += '"';
          i += 2;
          continue;
        }
        quoted = false;
        i++;
        continue;
      }
      if (c === "\n") line++;
      field += c;
      i++;
      continue;
    }
    if (c === '"' && field === "") {
      quoted = true;
      quoteLine = line;
      i++;
    } else if (c === ",") {
      row.push(field);
      field = "";
      i++;
    } else if (c === "\n" || c === "\r") {
      row.push(field);
      rows.push(row);
      row = [];
      field = "";
      i += c === "\r" && text[i + 1] === "\n" ? 2 : 1;
      line++;
    } else {
      field += c;
      i++;
    }
  }
  if (quoted) {
    throw new UserError(`${source}: unterminated quoted field starting on line ${quoteLine}`);
  }
  if (field !== "" || row.length > 0) {
    row.push(field);
    rows.push(row);
  }
  // Blank lines carry nothing.
  return rows.filter((r) => !(r.length === 1 && r[0].trim() === ""));
}
