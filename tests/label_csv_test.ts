import assert from "node:assert/strict";
import { LABELS } from "../config.ts";
import { UserError } from "../lib/util/errors.ts";
import { formatCsv, parseCsv, readCell } from "../lib/util/csv.ts";
import {
  encodeFindings,
  formatLabelsCsv,
  parseDataEntry,
  parseLabelsCsv,
  readDataEntry,
  readLabelsCsv,
  writeLabelsCsv,
} from "../lib/data/label_csv.ts";

const LABELS_CSV = new URL("./fixtures/nih_subset/labels.csv", import.meta.url).pathname;

Deno.test("parseCsv handles quotes, escaped quotes, CRLF, a BOM and blank lines", () => {
  const text = '\ufeffa,"b,c","say ""hi"""\r\n1,"multi\nline",3\r\n\r\nx,,\n';
  assert.deepEqual(parseCsv(text), [
    ["a", "b,c", 'say "hi"'],
    ["1", "multi\nline", "3"],
    ["x", "", ""],
  ]);
  assert.throws(() => parseCsv('a,"open\n', "f.csv"), /f\.csv: unterminated quoted field/);
});

Deno.test("the original label CSV format round-trips byte for byte", async () => {
  const text = await Deno.readTextFile(LABELS_CSV);
  const rows = await readLabelsCsv(LABELS_CSV);
  assert.equal(rows.length, 50);
  assert.equal(rows[0].image, "00029548_010.png");
  assert.equal(formatLabelsCsv(rows), text);
  const dir = await Deno.makeTempDir();
  try {
    await writeLabelsCsv(`${dir}/val_labels.csv`, rows);
    assert.equal(await Deno.readTextFile(`${dir}/val_labels.csv`), text);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("parseLabelsCsv rejects missing columns and non-0/1 values", () => {
  assert.throws(() => parseLabelsCsv("Image Index,Atelectasis\na.png,1\n", "l.csv"), /Hernia/);
  const header = ["Image Index", ...LABELS].join(",");
  const row = ["a.png", ...LABELS.map(() => "0")];
  row[2] = "2";
  assert.throws(
    () => parseLabelsCsv(`${header}\n${row.join(",")}\n`, "l.csv"),
    /row 2.*Cardiomegaly/,
  );
});

Deno.test("encodeFindings one-hot encodes A|B and No Finding; unknown names fail", () => {
  const v = encodeFindings("Effusion|Hernia|Pleural_Thickening");
  assert.deepEqual(Array.from(v), [0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1]);
  assert.ok(encodeFindings("No Finding").every((x) => x === 0));
  assert.throws(
    () => encodeFindings("Effusion|Covid", "meta.csv row 7 (x.png)"),
    (e: Error) =>
      e instanceof UserError && e.message.includes("'Covid'") && e.message.includes("row 7"),
  );
});

const V2020 =
  "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position," +
  "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n" +
  "00000001_000.png,Cardiomegaly,0,1,57,M,PA,2682,2749,0.143,0.143\n" +
  "00000001_001.png,Cardiomegaly|Emphysema,1,1,58,M,PA,2894,2729,0.143,0.143\n" +
  "00000003_000.png,No Finding,0,3,81,F,PA,2582,2991,0.143,0.143\n";

Deno.test("parseDataEntry reads the 2020 header and one-hot encodes the findings", () => {
  const e = parseDataEntry(V2020, "Data_Entry_2017_v2020.csv");
  assert.deepEqual(e.map((x) => [x.image, x.patientId]), [
    ["00000001_000.png", "1"],
    ["00000001_001.png", "1"],
    ["00000003_000.png", "3"],
  ]);
  assert.deepEqual(Array.from(e[1].labels), [0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
  assert.ok(e[2].labels.every((x) => x === 0));
});

Deno.test("parseDataEntry accepts the 2017 file's header variants", () => {
  // 2017: ages as 058Y, a trailing empty column, zero-padded patient IDs.
  const v2017 =
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position," +
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],\r\n" +
    "00000001_000.png,Cardiomegaly,0,00000001,058Y,M,PA,2682,2749,0.143,0.143,\r\n" +
    "00000003_000.png,Hernia,0,3,081Y,F,PA,2582,2991,0.143,0.143,\r\n";
  const quoted = "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender," +
    'View Position,"OriginalImage[Width,Height]","OriginalImagePixelSpacing[x,y]"\n' +
    '00000001_000.png,"Cardiomegaly",0,1,57,M,PA,2682,2749,0.143,0.143\n';
  const a = parseDataEntry(v2017);
  assert.deepEqual(a.map((x) => x.patientId), ["1", "3"]);
  assert.equal(a[1].labels[13], 1);
  const b = parseDataEntry(quoted);
  assert.equal(b[0].labels[1], 1);
});

Deno.test("parseDataEntry errors name the file, the row and the problem", async () => {
  assert.throws(
    () => parseDataEntry("Image Index,Labels,Patient\na.png,x,1\n", "meta.csv"),
    (e: Error) =>
      e instanceof UserError &&
      /^meta\.csv: missing columns Finding Labels, Patient ID/.test(e.message),
  );
  assert.throws(
    () => parseDataEntry(V2020.replace("No Finding", "Flu"), "meta.csv"),
    /meta\.csv row 4 \(00000003_000\.png\): unknown label 'Flu'/,
  );
  assert.throws(() => parseDataEntry(V2020 + "00000001_000.png,Mass,0,1\n", "m"), /listed twice/);
  assert.throws(() => parseDataEntry("", "m.csv"), /m\.csv: the file is empty/);
  await assert.rejects(() => readDataEntry("/nonexistent/meta.csv"), /metadata file not found/);
});

Deno.test("issue 25 class 2: the CSV writer quotes per RFC 4180 and guards formula cells", () => {
  const hostile = [
    '=HYPERLINK("http://evil.example","x")',
    "+1+1",
    "-2+3",
    "@SUM(1)",
    "\tTAB",
    'a"b,c',
    "new\nline",
    "cr\rname",
    "'=already",
    "'plain",
    "ok.png",
  ];
  const text = formatCsv([["Image Index", "p"], ...hostile.map((h, i) => [h, i / 10])]);
  // Every cell that would start a formula starts with a quote mark as written.
  const rows = parseCsv(text);
  assert.equal(rows.length, hostile.length + 1);
  for (const r of rows) assert.equal(r.length, 2, JSON.stringify(r));
  assert.deepEqual(rows.slice(1).map((r) => r[0]), [
    `'=HYPERLINK("http://evil.example","x")`,
    "'+1+1",
    "'-2+3",
    "'@SUM(1)",
    "'\tTAB",
    'a"b,c',
    "new\nline",
    "cr\rname",
    "''=already",
    "''plain",
    "ok.png",
  ]);
  // readCell gives back exactly what was written; numbers are written as numbers.
  assert.deepEqual(rows.slice(1).map((r) => readCell(r[0])), hostile);
  assert.deepEqual(rows.slice(1).map((r) => Number(r[1])), hostile.map((_, i) => i / 10));
  assert.equal(formatCsv([["-1", -1]]), "'-1,-1\n");
  assert.ok(text.includes('"a""b,c"'), text);
});

Deno.test("issue 25 class 2: label CSVs quote and guard names and read them back", async () => {
  const names = ["a,b.png", '=cmd|"/c calc"!A0.png', "-x.png", 'q"uote.png', "00000001_000.png"];
  const rows = names.map((image, i) => ({
    image,
    labels: Uint8Array.from(LABELS, (_, k) => (k === i ? 1 : 0)),
  }));
  const dir = await Deno.makeTempDir();
  try {
    await writeLabelsCsv(`${dir}/train_labels.csv`, rows);
    const text = await Deno.readTextFile(`${dir}/train_labels.csv`);
    for (const line of parseCsv(text)) assert.equal(line.length, 15);
    assert.match(text, /\n"'=cmd\|""\/c calc""!A0\.png",0,1,0,/);
    assert.match(text, /\n"a,b\.png",1,0,/);
    const back = await readLabelsCsv(`${dir}/train_labels.csv`);
    assert.deepEqual(back.map((r) => r.image), names);
    assert.deepEqual(back.map((r) => Array.from(r.labels)), rows.map((r) => Array.from(r.labels)));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
