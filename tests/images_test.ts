import assert from "node:assert/strict";
import { UserError } from "../lib/util/errors.ts";
import { decodeImage, mapConcurrent, pngBitDepth, resizeGrayPng } from "../lib/data/images.ts";
import { readTar } from "../lib/data/tar.ts";

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
