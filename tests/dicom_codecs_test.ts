/**
 * Compressed DICOM (lib/data/dicom_codecs.ts, dicom_rle.ts) and files without file meta, against
 * fixtures made from real radiographs by dcmtk, gdcm and OpenJPH (tests/fixtures/dicom/
 * make_codecs.py): stored values equal to the decoders of gdcm/OpenJPH (codecs_reference.json),
 * pixel equality with the uncompressed twin for every lossless syntax, predictions within 2e-2
 * for the lossy ones, the Modality LUT Sequence as pydicom applies it, the real files of
 * ../shared/fixtures/dicom_real (skipped where ../shared is absent), refusals, and damaged
 * codestreams of every syntax.
 */
import assert from "node:assert/strict";
import { assertClose } from "./assert.ts";
import { runScript } from "./helpers/scripts.ts";
import { decodeFixture, DICOM_DIR, every, maxDiff, readFixture } from "./helpers/dicom_fixtures.ts";
import { META_HEADER } from "./helpers/original_data.ts";
import { UserError } from "../lib/util/errors.ts";
import { decodeImage, isImageFile, resizeGrayPng } from "../lib/data/images.ts";
import {
  decodeStored,
  displayGrey,
  isDicom,
  modalityValues,
  readDicom,
  storedValues,
} from "../lib/data/dicom.ts";
import { listShards, readShard } from "../lib/data/webdataset.ts";
import { LABELS } from "../config.ts";

const DIR = DICOM_DIR;
const REAL = new URL("../../shared/fixtures/dicom_real/", import.meta.url).pathname;
const TINY = new URL("./fixtures/torch/tiny_zip.pt", import.meta.url).pathname;
const reference = JSON.parse(await Deno.readTextFile(`${DIR}codecs_reference.json`)) as Record<
  string,
  { syntax?: string; stored: number[]; modality?: number[]; every: number }
>;

const read = readFixture;
const decode = decodeFixture;

/** The lossless fixtures, by uncompressed twin, with the syntax each holds. */
const LOSSLESS: Record<string, [string, string][]> = {
  "cr16.dcm": [
    ["cr16_j2k.dcm", "1.2.840.10008.1.2.4.90"],
    ["cr16_htj2k.dcm", "1.2.840.10008.1.2.4.201"],
    ["cr16_htj2k_rpcl.dcm", "1.2.840.10008.1.2.4.202"],
    ["cr16_jls.dcm", "1.2.840.10008.1.2.4.80"],
    ["cr16_p14.dcm", "1.2.840.10008.1.2.4.57"],
    ["cr16_sv1.dcm", "1.2.840.10008.1.2.4.70"],
    ["cr16_rle.dcm", "1.2.840.10008.1.2.5"],
    ["acr_nema_implicit", "1.2.840.10008.1.2"],
    ["dicm_no_meta.dcm", "1.2.840.10008.1.2"],
  ],
  "signed16.dcm": [
    ["signed16_j2k.dcm", "1.2.840.10008.1.2.4.90"],
    ["signed16_jls.dcm", "1.2.840.10008.1.2.4.80"],
    ["signed16_p14.dcm", "1.2.840.10008.1.2.4.57"],
    ["signed16_sv1.dcm", "1.2.840.10008.1.2.4.70"],
    ["signed16_rle.dcm", "1.2.840.10008.1.2.5"],
  ],
  "mlut.dcm": [["mlut_sv1.dcm", "1.2.840.10008.1.2.4.70"]],
};

/** The lossy fixtures, by what they were made from. */
const LOSSY: Record<string, string[]> = {
  "cr16.dcm": [
    "cr16_j2k_lossy.dcm",
    "cr16_htj2k_lossy.dcm",
    "cr16_jls_near.dcm",
    "jpeg_extended12.dcm",
  ],
  "xray.png": [
    "xray_j2k_lossy.dcm",
    "xray_htj2k_lossy.dcm",
    "xray_jls_near.dcm",
    "xray_jpeg_extended8.dcm",
  ],
};

for (const [name, ref] of Object.entries(reference)) {
  if (name.startsWith("real/") || ref.modality) continue;
  Deno.test(`${name}: stored values as gdcm/OpenJPH decode them`, async () => {
    const img = readDicom(await read(name), name);
    assert.equal(img.transferSyntax, ref.syntax);
    if (img.jpeg) {
      // 8-bit JPEG Extended goes to sharp: its grey (no window, no rescale) is the stored value.
      const rgb = await decodeImage(await read(name), name);
      assert.deepEqual(every(every(rgb.data, 3), ref.every), ref.stored);
      return;
    }
    assert.ok(img.encoded, "decoded by dicom_codecs.ts");
    const stored = await decodeStored(img, name);
    assert.equal(stored.length, img.width * img.height * img.samplesPerPixel);
    const got = every(stored, ref.every);
    // The reference holds every frame; the first is decoded.
    const want = ref.stored.slice(0, got.length);
    assert.equal(want.length, got.length);
    if (ref.syntax === "1.2.840.10008.1.2.4.51") {
      // Our DCT is computed in floating point, libjpeg's in integers: ±1, as decoders differ.
      assertClose(got, want, 1, name);
      assert.ok(got.filter((v, i) => v === want[i]).length > 0.9 * got.length);
    } else assert.deepEqual(got, want);
  });
}

Deno.test("lossless syntaxes and files without file meta: pixels equal to the uncompressed twin", async () => {
  for (const [twin, files] of Object.entries(LOSSLESS)) {
    const base = readDicom(await read(twin), twin);
    const baseStored = storedValues(base);
    const baseRgb = await decode(twin);
    for (const [name, syntax] of files) {
      const img = readDicom(await read(name), name);
      assert.equal(img.transferSyntax, syntax, name);
      const stored = img.encoded ? await decodeStored(img, name) : storedValues(img);
      assert.deepEqual(stored, baseStored, name);
      assert.equal(maxDiff(await decode(name), baseRgb), 0, name);
    }
  }
  // Not a vacuous comparison: the twins hold real, varied radiographs (15-bit, signed, 10-bit).
  const cr16 = storedValues(readDicom(await read("cr16.dcm")));
  assert.ok(Math.max(...cr16) - Math.min(...cr16) > 10000);
  const signed = storedValues(readDicom(await read("signed16.dcm")));
  assert.ok(Math.min(...signed) < -1000 && Math.max(...signed) > 1000);
});

Deno.test("two-frame JPEG 2000 (no offset table) and RLE files give their first frame", async () => {
  const png = await decode("small.png");
  const warn = console.warn;
  const warnings: string[] = [];
  console.warn = (m: string) => warnings.push(m);
  try {
    for (const name of ["two_frames_j2k.dcm", "two_frames_rle.dcm"]) {
      const img = readDicom(await read(name), name);
      assert.equal(img.frames, 2);
      assert.equal(maxDiff(await decode(name), png), 0, name);
    }
  } finally {
    console.warn = warn;
  }
  assert.equal(warnings.length, 2);
});

Deno.test("RLE colour decodes as the native RGB file it was made from", async () => {
  assert.equal(maxDiff(await decode("rgb_rle.dcm"), await decode("rgb.dcm")), 0);
});

Deno.test("the small dcmtk files (RLE, JPEG-LS, JPEG Lossless SV1) decode as their PNG", async () => {
  const png = await decode("small.png");
  for (const name of ["rle.dcm", "jpeg_ls.dcm", "jpeg_lossless.dcm"]) {
    assert.equal(maxDiff(await decode(name), png), 0, name);
  }
});

Deno.test("sequential DCT decoder: restart markers, 8-bit as libjpeg-turbo decodes it (±1)", async () => {
  const jpg = await read("xray_restart.jpg");
  const rst = jpg.findIndex((b, i) => b === 0xff && jpg[i + 1] >= 0xd0 && jpg[i + 1] <= 0xd7);
  assert.ok(rst > 0, "the fixture has restart markers");
  const { decodeSequentialJpeg } = await import("../lib/data/jpeg_sequential.ts");
  const ours = decodeSequentialJpeg(jpg);
  assert.deepEqual([ours.width, ours.height, ours.precision], [128, 128, 8]);
  const sharp = await decodeImage(jpg);
  const grey = every(sharp.data, 3);
  assertClose(Array.from(ours.samples), grey, 1, "vs sharp");
  // And close to the radiograph it was made from (quality 90).
  const png = every((await decode("xray.png")).data, 3);
  const mean = png.reduce((a, v, i) => a + Math.abs(v - ours.samples[i]), 0) / png.length;
  assert.ok(mean < 2, `mean error ${mean}`);
});

Deno.test("files without preamble or file meta are found by content", async () => {
  const acr = await read("acr_nema_implicit");
  assert.ok(isDicom(acr) && isDicom(acr.subarray(0, 132)));
  assert.ok(isDicom(await read("dicm_no_meta.dcm")));
  assert.ok(await isImageFile(`${DIR}acr_nema_implicit`));
  // Not everything starting with a zero byte or "DICM"-free is DICOM.
  assert.ok(!isDicom(await read("xray.png")));
  assert.ok(!isDicom(new TextEncoder().encode("Image Index,Finding Labels\n".repeat(10))));
  assert.ok(!isDicom(new Uint8Array(200)));
});

Deno.test("a dataset without preamble or file meta in explicit VR is read too", async () => {
  // cr16.dcm (explicit VR little endian) less its preamble, DICM and file meta group, whose
  // length is the first element's value.
  const file = await read("cr16.dcm");
  const metaEnd = 132 + 12 + new DataView(file.buffer).getUint32(132 + 8, true);
  const dataset = file.slice(metaEnd);
  assert.deepEqual([...dataset.subarray(0, 2)], [0x08, 0x00]);
  assert.ok(isDicom(dataset));
  const img = readDicom(dataset, "raw");
  assert.equal(img.transferSyntax, "1.2.840.10008.1.2.1");
  assert.deepEqual(storedValues(img), storedValues(readDicom(file)));
});

Deno.test("the codecs are imported on first use only: no module imports them statically", async () => {
  const dir = new URL("../lib/data/", import.meta.url).pathname;
  const codecs = /@cornerstonejs\/|jpeg-lossless-decoder-js|jpeg_sequential\.ts/;
  let dynamic = 0;
  for await (const e of Deno.readDir(dir)) {
    if (!e.name.endsWith(".ts")) continue;
    const text = await Deno.readTextFile(`${dir}${e.name}`);
    for (const line of text.split("\n")) {
      if (/^\s*import\s.*from\s/.test(line) || /^\s*export\s.*from\s/.test(line)) {
        assert.ok(!codecs.test(line), `${e.name}: ${line}`);
      }
      if (/import\(\s*"/.test(line) && codecs.test(line)) dynamic++;
    }
  }
  assert.equal(dynamic, 5, "the five codecs, each by import()");
});

Deno.test("Modality LUT Sequence: applied as pydicom's apply_modality_lut, rescale ignored", async () => {
  const img = readDicom(await read("mlut_sv1.dcm"));
  assert.ok(img.modalityLut);
  assert.equal(img.modalityLut.data.length, 1024);
  const ref = reference["mlut.dcm"];
  const stored = await decodeStored(img, "mlut_sv1.dcm");
  assert.deepEqual(every(stored, ref.every), ref.stored);
  const modality = modalityValues(stored, img);
  assert.deepEqual(every(modality, ref.every), ref.modality);
  // Not the identity: the LUT changes values.
  assert.ok(ref.modality!.some((v, i) => v !== ref.stored[i]));
});

Deno.test("MONOCHROME1 with and without a window: inverted, the window spreading the range", async () => {
  // cr16: MONOCHROME1 with Window 15000/30000; the same pixels without the window span the whole
  // 15-bit range: both inverted (a high stored value is dark).
  const withWindow = readDicom(await read("cr16_j2k.dcm"));
  assert.equal(withWindow.photometric, "MONOCHROME1");
  assert.equal(withWindow.voi.kind, "window");
  const stored = await decodeStored(withWindow, "cr16_j2k.dcm");
  const grey = displayGrey(withWindow, stored);
  const noWindow = displayGrey({ ...withWindow, voi: { kind: "none" } }, stored);
  const argmax = stored.indexOf(Math.max(...stored));
  const argmin = stored.indexOf(Math.min(...stored));
  for (const g of [grey, noWindow]) assert.ok(g[argmax] < g[argmin], "MONOCHROME1 is inverted");
  // Window 15000/30000 maps 0..30000 to 255..0; no window maps 0..32767.
  for (const i of [argmax, argmin, 100, 2000]) {
    const v = stored[i];
    assert.equal(
      grey[i],
      255 - Math.round(Math.min(1, Math.max(0, (v - 14999.5) / 29999 + 0.5)) * 255),
    );
    assert.equal(noWindow[i], 255 - Math.round((v / 32767) * 255));
  }
  // MONOCHROME1 without a window, with a Modality LUT: the LUT's output range is shown.
  const mlut = readDicom(await read("mlut_sv1.dcm"));
  assert.equal(mlut.photometric, "MONOCHROME1");
  assert.equal(mlut.voi.kind, "none");
  const mStored = await decodeStored(mlut, "mlut_sv1.dcm");
  const mGrey = displayGrey(mlut, mStored);
  const lut = mlut.modalityLut!.data;
  const [lo, hi] = [Math.min(...lut), Math.max(...lut)];
  for (const i of [0, 500, 3000]) {
    const m =
      lut[Math.min(lut.length - 1, Math.max(0, mStored[i] - mlut.modalityLut!.firstMapped))];
    assert.equal(mGrey[i], 255 - Math.round(((m - lo) / (hi - lo)) * 255));
  }
});

/** Asserts `name` is refused with one line naming `syntax` (name and UID) and the remedy. */
async function assertRefused(name: string, syntax: string): Promise<void> {
  await assert.rejects(() => decode(name), (e: Error) => {
    assert.ok(e instanceof UserError, `${name}: ${e}`);
    assert.ok(e.message.startsWith(`${name}: DICOM transfer syntax ${syntax}`), e.message);
    assert.ok(e.message.includes("gdcmconv --raw"), e.message);
    assert.ok(!e.message.includes("\n"));
    return true;
  });
}

Deno.test("still-unsupported syntaxes: one line with the syntax, its UID and gdcmconv --raw", async () => {
  await assertRefused("mpeg2.dcm", "MPEG2 Main Profile / Main Level (1.2.840.10008.1.2.4.100)");
});

/** Decodes `bytes`; a failure must be one `UserError` line naming the source, within 10 s. */
async function decodesOrOneLine(bytes: Uint8Array, what: string): Promise<boolean> {
  const started = performance.now();
  try {
    await decodeImage(bytes, "bad.dcm");
    return true;
  } catch (e) {
    assert.ok(e instanceof UserError, `${what}: ${e}`);
    assert.ok(e.message.startsWith("bad.dcm: ") && !e.message.includes("\n"), e.message);
    return false;
  } finally {
    assert.ok(performance.now() - started < 10_000, `${what} took too long`);
  }
}

/** Where the first frame's codestream starts in `bytes` (after the first fragment's item tag). */
function codestreamOffset(bytes: Uint8Array): number {
  const img = readDicom(bytes);
  const frame = img.encoded ?? img.jpeg!;
  return frame.byteOffset - bytes.byteOffset;
}

Deno.test("truncated and corrupted codestreams of every syntax: one line, no hang", async () => {
  const files = [
    "cr16_j2k.dcm",
    "cr16_j2k_lossy.dcm",
    "cr16_htj2k.dcm",
    "cr16_htj2k_lossy.dcm",
    "cr16_jls.dcm",
    "cr16_jls_near.dcm",
    "cr16_p14.dcm",
    "cr16_sv1.dcm",
    "cr16_rle.dcm",
    "rgb_rle.dcm",
    "xray_jpeg_extended8.dcm",
    "jpeg_extended12.dcm",
    "acr_nema_implicit",
  ];
  let seed = 2024;
  const rand = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
  for (const name of files) {
    const bytes = await read(name);
    const start = name.endsWith("implicit") ? 0 : codestreamOffset(bytes);
    let failed = 0;
    // Truncated: the file cut inside its codestream (and its header, for the ACR-NEMA file).
    for (let k = 1; k <= 8; k++) {
      const n = start + Math.floor(((bytes.length - start) * k) / 9);
      if (!(await decodesOrOneLine(bytes.subarray(0, n), `${name}[:${n}]`))) failed++;
    }
    assert.ok(failed > 0, `${name}: some truncation must be refused`);
    // Corrupted: bytes of the codestream overwritten (its header and its body).
    for (let k = 0; k < 25; k++) {
      const bad = bytes.slice();
      const span = k < 12 ? Math.min(64, bytes.length - start) : bytes.length - start;
      for (let j = 0; j < 6; j++) bad[start + Math.floor(rand() * span)] = Math.floor(rand() * 256);
      await decodesOrOneLine(bad, `${name} corrupted #${k}`);
    }
  }
});

Deno.test("a codestream declaring another size than the header is refused before decoding", async () => {
  // J2K: SIZ's Xsiz (after SOC, SIZ marker, Lsiz, Rsiz) made huge; JPEG-LS: SOF55's width.
  const j2k = (await read("cr16_j2k.dcm")).slice();
  const p = codestreamOffset(j2k);
  assert.deepEqual([...j2k.subarray(p, p + 4)], [0xff, 0x4f, 0xff, 0x51]);
  new DataView(j2k.buffer).setUint32(p + 8, 60000);
  await assert.rejects(
    () => decodeImage(j2k, "big.dcm"),
    (e: Error) =>
      e instanceof UserError &&
      /^big\.dcm: cannot decode the DICOM JPEG 2000 Lossless Only frame \(the codestream is 60000×81×1, the DICOM header says 76×81×1\)$/
        .test(e.message),
  );
  const jls = (await read("cr16_jls.dcm")).slice();
  const q = codestreamOffset(jls);
  const sof = jls.subarray(q).findIndex((b, i, a) => b === 0xff && a[i + 1] === 0xf7);
  assert.ok(sof > 0);
  jls[q + sof + 7] = 0xff; // width high byte
  await assert.rejects(
    () => decodeImage(jls, "big.dcm"),
    (e: Error) => e instanceof UserError && /the codestream is \d+×81×1/.test(e.message),
  );
});

Deno.test("the real files of ../shared/fixtures/dicom_real decode as gdcmconv --raw does", async (t) => {
  const names = await Array.fromAsync(Deno.readDir(REAL)).catch(() => null);
  if (!names) {
    console.warn(`skipped: ${REAL} is absent (the shared fixtures are not checked out)`);
    return;
  }
  for (const [key, ref] of Object.entries(reference)) {
    if (!key.startsWith("real/")) continue;
    const name = key.slice(5);
    await t.step(name, async () => {
      const bytes = await Deno.readFile(`${REAL}${name}`);
      assert.ok(isDicom(bytes));
      const img = readDicom(bytes, name);
      const stored = img.encoded ? await decodeStored(img, name) : storedValues(img);
      assert.deepEqual(every(stored, ref.every), ref.stored);
      const rgb = await decodeImage(bytes, name);
      assert.equal(rgb.data.length, img.width * img.height * 3);
    });
  }
});

Deno.test("validate_model.ts --images: lossless DICOM predicts as its twin, lossy within 2e-2", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cxr_codecs_" });
  try {
    const names = [
      "xray.png",
      "cr16.dcm",
      ...LOSSY["cr16.dcm"],
      ...LOSSY["xray.png"],
      ...LOSSLESS["cr16.dcm"].map(([n]) => n),
    ];
    for (const f of names) await Deno.copyFile(`${DIR}${f}`, `${dir}/${f}`);
    const r = await runScript("validate_model.ts", [
      "-s",
      TINY,
      "--backend",
      "cpu",
      "--images",
      dir,
      "--json",
      `${dir}/p.json`,
    ], [dir]);
    assert.equal(r.code, 0, r.stderr);
    const doc = JSON.parse(await Deno.readTextFile(`${dir}/p.json`));
    const probs = new Map<string, number[]>();
    for (const rec of doc.images) {
      probs.set(rec.image.split("/").pop(), LABELS.map((l) => rec.probabilities[l] as number));
    }
    assert.equal(probs.size, names.length);
    for (const [name] of LOSSLESS["cr16.dcm"]) {
      assertClose(probs.get(name)!, probs.get("cr16.dcm")!, 1e-6, name);
    }
    for (const [twin, files] of Object.entries(LOSSY)) {
      for (const name of files) assertClose(probs.get(name)!, probs.get(twin)!, 2e-2, name);
    }
    // The two source images predict differently: the comparisons above can fail.
    const dist = (a: number[], b: number[]) => Math.max(...a.map((v, i) => Math.abs(v - b[i])));
    assert.ok(dist(probs.get("cr16.dcm")!, probs.get("xray.png")!) > 2e-2);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("preprocess_data.ts takes DICOM files named in the metadata CSV", async () => {
  const root = await Deno.makeTempDir({ prefix: "cxr_dicom_pre_" });
  try {
    const images = `${root}/images`;
    await Deno.mkdir(images);
    // Patient n's image n: DICOM of several syntaxes, their uncompressed twins, and a PNG.
    const files = [
      "cr16.dcm",
      "cr16_j2k.dcm",
      "cr16_htj2k.dcm",
      "cr16_jls.dcm",
      "cr16_p14.dcm",
      "cr16_rle.dcm",
      "acr_nema_implicit",
      "mono2_8bit.dcm",
      "xray.png",
      "mlut_sv1.dcm",
      "signed16_sv1.dcm",
      "signed16.dcm",
    ];
    const rows = files.map((f, i) => {
      const key = `${String(i + 1).padStart(8, "0")}_000`;
      return { file: f, image: `${key}.${f.endsWith(".png") ? "png" : "dcm"}`, key };
    });
    for (const r of rows) await Deno.copyFile(`${DIR}${r.file}`, `${images}/${r.image}`);
    const csv = rows.map((r, i) =>
      `${r.image},No Finding,0,${i + 1},40,M,PA,2500,2048,0.168,0.168`
    );
    await Deno.writeTextFile(`${root}/meta.csv`, [META_HEADER, ...csv].join("\n") + "\n");
    const r = await runScript("preprocess_data.ts", [
      "--image_dir",
      images,
      "--meta_file",
      `${root}/meta.csv`,
      "--labels_dir",
      `${root}/labels`,
      "--dataset_dir",
      `${root}/datasets`,
      "--workers",
      "2",
    ], [root]);
    assert.equal(r.code, 0, r.stderr);
    const pngs = new Map<string, Uint8Array>();
    for (const subset of ["train", "val", "test"]) {
      for (const shard of await listShards(`${root}/datasets`, subset)) {
        for await (const s of readShard(shard)) pngs.set(s.key, s.png);
      }
    }
    assert.equal(pngs.size, rows.length);
    const png = (file: string) => pngs.get(rows.find((r) => r.file === file)!.key)!;
    const pixels = async (file: string) => (await decodeImage(png(file))).data;
    const cr16 = await pixels("cr16.dcm");
    for (const f of ["cr16_j2k.dcm", "cr16_htj2k.dcm", "cr16_jls.dcm", "cr16_p14.dcm"]) {
      assert.deepEqual(await pixels(f), cr16, f);
    }
    assert.deepEqual(await pixels("cr16_rle.dcm"), cr16);
    assert.deepEqual(await pixels("acr_nema_implicit"), cr16);
    assert.deepEqual(await pixels("mono2_8bit.dcm"), await pixels("xray.png"));
    assert.deepEqual(await pixels("signed16_sv1.dcm"), await pixels("signed16.dcm"));
    // Each shard PNG is the resize of the DICOM file's own decode.
    const own = await resizeGrayPng(await read("mlut_sv1.dcm"), 256, "mlut_sv1.dcm");
    assert.deepEqual((await decodeImage(own)).data, await pixels("mlut_sv1.dcm"));
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
