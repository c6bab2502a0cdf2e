/**
 * Reading the DICOM fixtures of tests/fixtures/dicom/ (see its README) and comparing decodes.
 * @module
 */
import assert from "node:assert/strict";
import { decodeImage, type RgbImage } from "../../lib/data/images.ts";

/** The fixture folder, with a trailing slash. */
export const DICOM_DIR = new URL("../fixtures/dicom/", import.meta.url).pathname;

/** A fixture's bytes. */
export const readFixture = (name: string) => Deno.readFile(`${DICOM_DIR}${name}`);
/** A fixture decoded as the tool decodes any image. */
export const decodeFixture = async (name: string) => decodeImage(await readFixture(name), name);
/** Every `step`-th value (the references store a subsample). */
export const every = <T>(a: ArrayLike<T>, step: number) =>
  Array.from(a).filter((_, i) => i % step === 0);

/** The largest difference between two decodes of one size. */
export function maxDiff(a: RgbImage, b: RgbImage): number {
  assert.equal(a.width, b.width);
  assert.equal(a.height, b.height);
  let m = 0;
  for (let i = 0; i < a.data.length; i++) m = Math.max(m, Math.abs(a.data[i] - b.data[i]));
  return m;
}
