import assert from "node:assert/strict";
import { UserError } from "../lib/util/errors.ts";
import { decodeImage, mapConcurrent, pngBitDepth, resizeGrayPng } from "../lib/data/images.ts";
import { readTar } from "../lib/data/tar.ts";
import { checkImageSize, MAX_IMAGE_PIXELS } from "../lib/data/image_size.ts";

const IMAGES = new URL("./fixtures/images/", import.meta.url);
const SHARD = new URL("./fixtures/nih_subset/ChestXray14_val_002.tar", import.meta.url).pathname;
const expected = JSON.parse(await Deno.readTextFile(new URL("expected.json", IMAGES))) as {
  images: Record<string, { width: number; height: number }>;
};

function maxDiff(a: Uint8Array, b: Uint8Array): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

for (const [name, size] of Object.entries(expected.images)) {
  Deno.test(`decodeImage matches OpenCV imread(IMREAD_COLOR) for ${name}`, async () => {
    const bytes = await Deno.readFile(new URL(name, IMAGES));
    const ref = await Deno.readFile(new URL(`${name}.rgb`, IMAGES));
    const img = await decodeImage(bytes, name);
    assert.equal(img.width, size.width);
    assert.equal(img.height, size.height);
    assert.equal(img.data.length, size.width * size.height * 3);
    // PNG decoding is lossless: exact. JPEG IDCTs may differ by a grey level.
    assert.ok(maxDiff(img.data, ref) <= (name.endsWith(".jpg") ? 2 : 0), name);
  });
}

Deno.test("decodeImage reads the original shard's RGB PNGs at 256×256", async () => {
  let n = 0;
  for await (const m of readTar(SHARD)) {
    if (!m.name.endsWith(".png")) continue;
    const img = await decodeImage(m.data, m.name);
    assert.equal(img.width, 256);
    assert.equal(img.height, 256);
    if (++n === 3) break;
  }
  assert.equal(n, 3);
});

Deno.test("decodeImage names the source of an undecodable image", async () => {
  const png = await Deno.readFile(new URL("rgb8.png", IMAGES));
  await assert.rejects(
    () => decodeImage(png.subarray(0, png.length / 2), "shard.tar:KEY.png"),
    (e: Error) =>
      e instanceof UserError && /^shard\.tar:KEY\.png: cannot decode image/.test(e.message),
  );
  await assert.rejects(
    () => decodeImage(new TextEncoder().encode("not an image"), "x.png"),
    (e: Error) => e instanceof UserError && e.message.startsWith("x.png: cannot decode image"),
  );
});

Deno.test("resizeGrayPng stores 8-bit grayscale PNGs of the requested size", async () => {
  for (const name of ["gray8.png", "rgba8.png", "gray16.png", "rgb16.png", "rgb.jpg"]) {
    const bytes = await Deno.readFile(new URL(name, IMAGES));
    const out = await resizeGrayPng(bytes, 8, name);
    assert.equal(pngBitDepth(out), 8, name);
    assert.equal(out[25], 0, `${name}: colour type must be grayscale`);
    const img = await decodeImage(out);
    assert.equal(img.width, 8);
    assert.equal(img.height, 8);
  }
});

Deno.test("resizeGrayPng of 16-bit input equals that of its OpenCV 8-bit reading", async () => {
  // gray16.png and gray16.png.rgb (OpenCV's 8-bit reading) must resize alike.
  const bytes16 = await Deno.readFile(new URL("gray16.png", IMAGES));
  const ref = await Deno.readFile(new URL("gray16.png.rgb", IMAGES));
  const { width, height } = expected.images["gray16.png"];
  const { default: sharp } = await import("sharp");
  const png8 = await sharp(ref, { raw: { width, height, channels: 3 } }).png().toBuffer();
  const a = await decodeImage(await resizeGrayPng(bytes16, 7));
  const b = await decodeImage(await resizeGrayPng(new Uint8Array(png8), 7));
  assert.deepEqual(a.data, b.data);
});

Deno.test("resizeGrayPng keeps a constant image constant", async () => {
  const { default: sharp } = await import("sharp");
  const flat = await sharp({
    create: { width: 64, height: 48, channels: 3, background: { r: 90, g: 90, b: 90 } },
  }).png().toBuffer();
  const img = await decodeImage(await resizeGrayPng(new Uint8Array(flat), 16));
  assert.ok(img.data.every((v) => v === 90));
});

Deno.test("mapConcurrent keeps order and bounds the calls in flight", async () => {
  let inFlight = 0;
  let peak = 0;
  const out: number[] = [];
  for await (
    const v of mapConcurrent([5, 1, 4, 2, 3, 0, 6, 7], 3, async (x) => {
      inFlight++;
      peak = Math.max(peak, inFlight);
      await new Promise((r) => setTimeout(r, x * 2));
      inFlight--;
      return x * 10;
    })
  ) out.push(v);
  assert.deepEqual(out, [50, 10, 40, 20, 30, 0, 60, 70]);
  assert.equal(peak, 3);
});

Deno.test("mapConcurrent throws the first failure in order and pulls lazily", async () => {
  let pulled = 0;
  async function* source() {
    for (let i = 0; i < 100; i++) {
      pulled++;
      yield i;
    }
  }
  const seen: number[] = [];
  await assert.rejects(async () => {
    for await (
      const v of mapConcurrent(source(), 2, async (x) => {
        await Promise.resolve();
        if (x === 3) throw new Error("bad 3");
        if (x === 4) throw new Error("bad 4");
        return x;
      })
    ) seen.push(v);
  }, /bad 3/);
  assert.deepEqual(seen, [0, 1, 2]);
  assert.ok(pulled <= 8, `pulled ${pulled}`); // a window of 2 * workers, not all 100
});

/** CRC-32 of PNG chunks (ISO 3309). */
function crc32(bytes: Uint8Array): number {
  let c = ~0;
  for (const b of bytes) {
    c ^= b;
    for (let k = 0; k < 8; k++) c = (c >>> 1) ^ (0xedb88320 & -(c & 1));
  }
  return ~c >>> 0;
}

/** A valid, tiny PNG whose IHDR declares `width`×`height` (grey, `depth` bits): a few rows of
 * zeros follow, so only a decoder that trusts the header would allocate the canvas. */
async function hugeCanvasPng(width: number, height: number, depth: 8 | 16): Promise<Uint8Array> {
  const { deflateSync } = await import("node:zlib");
  const chunk = (type: string, data: Uint8Array) => {
    const body = new Uint8Array([...new TextEncoder().encode(type), ...data]);
    const out = new Uint8Array(body.length + 8);
    const view = new DataView(out.buffer);
    view.setUint32(0, data.length);
    out.set(body, 4);
    view.setUint32(out.length - 4, crc32(body));
    return out;
  };
  const ihdr = new Uint8Array(13);
  const v = new DataView(ihdr.buffer);
  v.setUint32(0, width);
  v.setUint32(4, height);
  ihdr.set([depth, 0, 0, 0, 0], 8);
  const rows = new Uint8Array(4 * (1 + width * depth / 8)); // four rows of filter 0, zeros
  const parts = [
    new Uint8Array([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", ihdr),
    chunk("IDAT", new Uint8Array(deflateSync(rows))),
    chunk("IEND", new Uint8Array()),
  ];
  return new Uint8Array(parts.flatMap((p) => [...p]));
}

Deno.test("a small PNG declaring a huge canvas is refused from its header, naming its size", async () => {
  // 60000² overflows any bound; 16384² (256 Mpx) is what the old 2^28-pixel limit let through.
  for (const [side, depth] of [[60000, 8], [60000, 16], [16384, 8]] as const) {
    const png = await hugeCanvasPng(side, side, depth);
    assert.ok(png.length < 1000, `${png.length} bytes`);
    assert.equal(pngBitDepth(png), depth);
    const refused = (e: Error) =>
      e instanceof UserError &&
      e.message.startsWith(`huge.png: image is ${side}×${side} pixels, over the bound of 36 `);
    await assert.rejects(() => decodeImage(png, "huge.png"), refused);
    await assert.rejects(() => resizeGrayPng(png, 256, "huge.png"), refused);
  }
  // A JPEG whose SOF0 says 30000×30000 (patched from a real 19×13 one).
  const jpg = (await Deno.readFile(new URL("gray.jpg", IMAGES))).slice();
  const sof = jpg.findIndex((b, i) => b === 0xff && jpg[i + 1] === 0xc0);
  new DataView(jpg.buffer).setUint16(sof + 5, 30000);
  new DataView(jpg.buffer).setUint16(sof + 7, 30000);
  await assert.rejects(
    () => decodeImage(jpg, "huge.jpg"),
    (e: Error) =>
      e instanceof UserError && /^huge\.jpg: image is 30000×30000 pixels/.test(e.message),
  );
});

Deno.test("checkImageSize admits the largest chest radiographs and refuses above 36 Mpx", () => {
  for (const [w, h] of [[1024, 1024], [4300, 3500], [4300, 4300], [6000, 6000], [1, 36e6]]) {
    checkImageSize(w, h, "x.png");
  }
  assert.equal(MAX_IMAGE_PIXELS, 36e6);
  assert.throws(
    () => checkImageSize(6000, 6001, "x.png"),
    /^UserError: x\.png: image is 6000×6001 pixels/,
  );
  assert.throws(() => checkImageSize(6001, 6000, "x.png"), UserError);
});
