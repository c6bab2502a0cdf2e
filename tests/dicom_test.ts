/**
 * DICOM input: the pixel pipeline of lib/data/dicom.ts against pydicom 2.3's stored values,
 * `apply_modality_lut` and `apply_voi_lut` (tests/fixtures/dicom/reference.json), decoding
 * through lib/data/images.ts against the PNG/JPEG each file was made from, refusals, damaged
 * files, and validate_model.ts --images (and --cam) on DICOM files end to end.
 */
import assert from "node:assert/strict";
import { assertClose } from "./assert.ts";
import { runScript } from "./helpers/scripts.ts";
import { decodeFixture, DICOM_DIR, every, maxDiff, readFixture } from "./helpers/dicom_fixtures.ts";
import { UserError } from "../lib/util/errors.ts";
import { decodeImage, isImageFile } from "../lib/data/images.ts";
import {
  displayGrey,
  isDicom,
  modalityValues,
  readDicom,
  storedValues,
  voiValues,
} from "../lib/data/dicom.ts";
import { expandImagePaths } from "../lib/eval/single_image.ts";
import { LABELS } from "../config.ts";

const DIR = DICOM_DIR;
const TINY = new URL("./fixtures/torch/tiny_zip.pt", import.meta.url).pathname;
const reference = JSON.parse(await Deno.readTextFile(`${DIR}reference.json`)) as Record<
  string,
  { stored: number[]; modality?: number[]; voi?: number[]; voi_range?: number[]; every: number }
>;

const read = readFixture;
const decode = decodeFixture;

for (const [name, ref] of Object.entries(reference)) {
  Deno.test(`${name}: stored values, modality and VOI LUT as pydicom`, async () => {
    const img = readDicom(await read(name), name);
    const stored = storedValues(img);
    assert.deepEqual(every(stored, ref.every), ref.stored);
    if (!ref.modality) return;
    const modality = modalityValues(stored, img);
    assertClose(every(modality, ref.every), ref.modality, 1e-9, "modality LUT");
    // pydicom's VOI output spans voi_range; ours is the same scaled to [0, 1].
    const [lo, hi] = ref.voi_range!;
    const expected = ref.voi!.map((v) => (v - lo) / (hi - lo));
    assertClose(every(voiValues(modality, img), ref.every), expected, 1e-12, "VOI LUT");
  });
}

Deno.test("Rescale Slope/Intercept and the first of two windows are applied", async () => {
  const img = readDicom(await read("rescale_window.dcm"));
  assert.deepEqual([img.slope, img.intercept], [0.5, -100]);
  assert.deepEqual(img.voi, { kind: "window", center: 900, width: 1800, fn: "LINEAR" });
  const ref = reference["rescale_window.dcm"];
  const [lo, hi] = ref.voi_range!;
  const grey = every(displayGrey(img), ref.every);
  assert.deepEqual(grey, ref.voi!.map((v) => Math.round((v - lo) / (hi - lo) * 255)));
  // Not a no-op: the window spreads the values over the whole 8-bit range.
  assert.equal(Math.min(...grey), 0);
  assert.equal(Math.max(...grey), 255);
});

Deno.test("a VOI LUT Sequence wins over the window, as in pydicom", async () => {
  const img = readDicom(await read("voi_lut.dcm"));
  assert.equal(img.voi.kind, "lut");
  const grey = displayGrey(img);
  const ref = reference["voi_lut.dcm"];
  assert.deepEqual(every(grey, ref.every), ref.voi!.map((v) => Math.round(v / 65535 * 255)));
});

Deno.test("MONOCHROME2 8-bit DICOM (explicit, implicit, deflated) decodes as its PNG", async () => {
  const png = await decode("xray.png");
  for (const name of ["mono2_8bit.dcm", "mono2_implicit", "mono2_deflated.dcm"]) {
    assert.equal(maxDiff(await decode(name), png), 0, name);
  }
});

Deno.test("MONOCHROME1 12-bit DICOM of the inverted pixels decodes as the original", async () => {
  const png = await decode("xray.png");
  const mono1 = await decode("mono1_12bit.dcm");
  assert.ok(maxDiff(mono1, png) <= 1, `${maxDiff(mono1, png)}`);
  assert.equal(maxDiff(await decode("mono1_12bit_big_endian.dcm"), mono1), 0, "big endian");
});

Deno.test("JPEG Baseline DICOM decodes as its JPEG, one fragment or several", async () => {
  const jpg = await decode("xray.jpg");
  assert.equal(maxDiff(await decode("jpeg_baseline.dcm"), jpg), 0);
  // dcmtk's own encoder, in 1 KB fragments: close to the PNG it was made from.
  const png = await decode("xray.png");
  const frag = await decode("jpeg_baseline_fragments.dcm");
  let sum = 0;
  for (let i = 0; i < png.data.length; i++) sum += Math.abs(png.data[i] - frag.data[i]);
  assert.ok(sum / png.data.length < 2, `mean error ${sum / png.data.length}`);
  assert.ok(readDicom(await read("jpeg_baseline_fragments.dcm")).jpeg!.length > 4096);
  // A colour JPEG (YBR_FULL_422) decodes as the JPEG file it was made from.
  const rgbJpg = await decodeImage(await Deno.readFile(`${DIR}../images/rgb.jpg`));
  assert.equal(maxDiff(await decode("jpeg_baseline_rgb.dcm"), rgbJpg), 0);
});

Deno.test("native RGB DICOM decodes as its PNG; a 2-frame file gives its first frame", async () => {
  assert.equal(maxDiff(await decode("rgb.dcm"), await decode("rgb_small.png")), 0);
  const warnings: string[] = [];
  const warn = console.warn;
  console.warn = (m: string) => warnings.push(m);
  try {
    assert.equal(maxDiff(await decode("two_frames.dcm"), await decode("small.png")), 0);
  } finally {
    console.warn = warn;
  }
  assert.deepEqual(warnings, ["note: two_frames.dcm: 2 frames, using the first"]);
});

Deno.test("a damaged JPEG 2000 frame (a stub codestream) gives one line naming the syntax", async () => {
  await assert.rejects(() => decode("jpeg2000.dcm"), (e: Error) => {
    assert.ok(e instanceof UserError, String(e));
    assert.match(
      e.message,
      /^jpeg2000\.dcm: cannot decode the DICOM JPEG 2000 Lossless Only frame \(/,
    );
    assert.ok(!e.message.includes("\n"));
    return true;
  });
});

/** Decodes `bytes`; a failure must be one `UserError` line naming the source. */
async function decodesOrOneLine(bytes: Uint8Array, what: string): Promise<boolean> {
  try {
    await decodeImage(bytes, "bad.dcm");
    return true;
  } catch (e) {
    assert.ok(e instanceof UserError, `${what}: ${e}`);
    assert.ok(e.message.startsWith("bad.dcm: ") && !e.message.includes("\n"), e.message);
    return false;
  }
}

Deno.test("truncated or corrupted DICOM gives one clean line, never a raw error", async () => {
  for (const name of ["mono2_8bit.dcm", "jpeg_baseline.dcm", "voi_lut.dcm"]) {
    const bytes = await read(name);
    let failed = 0;
    for (let n = 132; n < bytes.length; n += 97) {
      if (!(await decodesOrOneLine(bytes.subarray(0, n), `${name}[:${n}]`))) failed++;
    }
    assert.ok(failed > 0, name);
    // Corrupted bytes in the header (seeded), where lengths, VRs and tags live.
    let seed = 12345;
    const rand = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
    for (let k = 0; k < 150; k++) {
      const bad = bytes.slice();
      for (let j = 0; j < 4; j++) bad[132 + Math.floor(rand() * 600)] = Math.floor(rand() * 256);
      await decodesOrOneLine(bad, `${name} corrupted #${k}`);
    }
  }
  await assert.rejects(
    () => decodeImage(new Uint8Array([...new Uint8Array(128), 0x44, 0x49, 0x43, 0x4d]), "x"),
    (e: Error) =>
      e instanceof UserError && /^x: cannot read DICOM file, truncated or damaged/.test(e.message),
  );
});

Deno.test("DICOM declaring a huge image is refused from its header", async () => {
  const bytes = (await read("mono2_8bit.dcm")).slice();
  const img = readDicom(bytes);
  assert.equal(img.width, 128);
  // Rows and Columns (US) patched to 65535 in place, found by their tags in the dataset.
  const view = new DataView(bytes.buffer);
  let patched = 0;
  for (let i = 132; i + 10 < bytes.length; i++) {
    if (
      view.getUint16(i, true) === 0x0028 && [0x0010, 0x0011].includes(view.getUint16(i + 2, true))
    ) {
      view.setUint16(i + 8, 65535, true); // tag, "US", length 2, value
      patched++;
    }
    if (patched === 2) break;
  }
  assert.equal(patched, 2);
  await assert.rejects(
    () => decodeImage(bytes, "big.dcm"),
    (e: Error) =>
      e instanceof UserError && /^big\.dcm: image is 65535×65535 pixels/.test(e.message),
  );
});

Deno.test("isDicom and --images directories find DICOM by extension or content", async () => {
  assert.ok(isDicom(await read("mono2_implicit")));
  assert.ok(!isDicom(await read("xray.png")));
  assert.ok(await isImageFile(`${DIR}mono2_implicit`));
  assert.ok(!(await isImageFile(`${DIR}make_dicom.py`)));
  const found = (await expandImagePaths([DIR.replace(/\/$/, "")])).map((p) => p.split("/").pop());
  assert.ok(found.includes("mono2_implicit") && found.includes("rle.dcm"), found.join(" "));
  assert.ok(found.includes("xray.png") && found.includes("xray.jpg"));
  assert.ok(!found.includes("reference.json") && !found.includes("make_dicom.py"));
});

Deno.test("validate_model.ts --images predicts DICOM files as the images they hold", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cxr_dicom_" });
  try {
    const files = ["xray.png", "xray.jpg", "mono2_8bit.dcm", "mono2_implicit", "mono1_12bit.dcm"];
    for (const f of [...files, "jpeg_baseline.dcm"]) {
      await Deno.copyFile(`${DIR}${f}`, `${dir}/${f}`);
    }
    // The inverted image, which a MONOCHROME1 file read without its inversion would look like.
    const { default: sharp } = await import("sharp");
    await sharp(`${DIR}xray.png`).negate().png().toFile(`${dir}/inverted.png`);
    const r = await runScript("validate_model.ts", [
      "-s",
      TINY,
      "--backend",
      "cpu",
      "--images",
      dir,
      "--json",
      `${dir}/p.json`,
      "--cam",
      "1",
      "--cam_dir",
      `${dir}/cam`,
    ], [dir]);
    assert.equal(r.code, 0, r.stderr);
    const probs = new Map<string, number[]>();
    const doc = JSON.parse(await Deno.readTextFile(`${dir}/p.json`));
    for (const rec of doc.images) {
      probs.set(rec.image.split("/").pop(), LABELS.map((l) => rec.probabilities[l] as number));
    }
    assert.equal(probs.size, 7);
    const png = probs.get("xray.png")!;
    assertClose(probs.get("mono2_8bit.dcm")!, png, 1e-5, "MONOCHROME2 8-bit");
    assertClose(probs.get("mono2_implicit")!, png, 1e-5, "implicit VR, no extension");
    assertClose(probs.get("jpeg_baseline.dcm")!, probs.get("xray.jpg")!, 1e-5, "JPEG Baseline");
    const mono1 = probs.get("mono1_12bit.dcm")!;
    assertClose(mono1, png, 2e-2, "MONOCHROME1 12-bit");
    const inverted = probs.get("inverted.png")!;
    const dist = (a: number[], b: number[]) => Math.max(...a.map((v, i) => Math.abs(v - b[i])));
    assert.ok(dist(png, inverted) > 2e-2, `the model must tell them apart: ${dist(png, inverted)}`);
    assert.ok(dist(mono1, png) < dist(mono1, inverted) / 10);
    const cams: string[] = [];
    for await (const e of Deno.readDir(`${dir}/cam`)) cams.push(e.name);
    assert.ok(cams.some((n) => n.includes("_mono1_12bit_p")), cams.join(" "));
    assert.ok(cams.some((n) => n.includes("_mono2_implicit_p")), cams.join(" "));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("validate_model.ts --images on an unsupported DICOM: one line, non-zero exit", async () => {
  const r = await runScript("validate_model.ts", [
    "-s",
    TINY,
    "--backend",
    "cpu",
    "--images",
    `${DIR}mpeg2.dcm`,
  ], []);
  assert.notEqual(r.code, 0);
  const lines = r.stderr.trim().split("\n").filter((l) => l.startsWith("error:"));
  assert.equal(lines.length, 1, r.stderr);
  assert.match(
    lines[0],
    /mpeg2\.dcm: DICOM transfer syntax MPEG2 Main Profile \/ Main Level \(1\.2\.840\.10008\.1\.2\.4\.100\) is not supported: .*gdcmconv --raw/,
  );
  assert.doesNotMatch(r.stderr, /^\s+at /m, "no stack trace");
});

Deno.test("a deflated DICOM that inflates past 256 MiB is refused, not inflated", async () => {
  const { deflateRawSync } = await import("node:zlib");
  const file = await read("mono2_deflated.dcm");
  // The dataset after the file meta group (whose length is its first element) is deflated.
  const metaEnd = 132 + 12 + new DataView(file.buffer).getUint32(132 + 8, true);
  const bomb = deflateRawSync(new Uint8Array(257 << 20));
  const bytes = new Uint8Array(metaEnd + bomb.length);
  bytes.set(file.subarray(0, metaEnd));
  bytes.set(bomb, metaEnd);
  await assert.rejects(
    () => decodeImage(bytes, "bomb.dcm"),
    (e: Error) =>
      e instanceof UserError && /^bomb\.dcm: .*inflates past 256 MiB\)$/.test(e.message),
  );
});
