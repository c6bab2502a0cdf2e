/**
 * Builds an NIH-like `original_data` tree in a temporary directory from the 50 fixture images:
 * 1024×1024 8-bit grey PNGs (upscaled), and a `Data_Entry_2017_v2020.csv` with their real labels
 * and patient IDs taken from the file-name prefix.
 * @module
 */
import sharp from "sharp";
import { LABELS } from "../../config.ts";
import { readShard } from "../../lib/data/webdataset.ts";

export const FIXTURE_SHARD =
  new URL("../fixtures/nih_subset/ChestXray14_val_002.tar", import.meta.url).pathname;

/** The header of the real 2020 metadata file. */
export const META_HEADER =
  "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position," +
  "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]";

/** One fixture image as the NIH release holds it. */
export interface NihImage {
  image: string;
  patientId: string;
  findings: string;
  labels: number[];
  /** 1024×1024 grey PNG. */
  png: Uint8Array;
}

let cache: Promise<NihImage[]> | null = null;

/** The 50 fixture images upscaled to `size` (computed once per test module). */
export function nihImages(size = 1024): Promise<NihImage[]> {
  cache ??= (async () => {
    const out: NihImage[] = [];
    for await (const s of readShard(FIXTURE_SHARD)) {
      const png = await sharp(s.png).resize(size, size).toColourspace("b-w")
        .png({ compressionLevel: 1 }).toBuffer();
      const labels = Array.from(s.labels);
      const names = LABELS.filter((_, i) => labels[i] === 1);
      out.push({
        image: `${s.key}.png`,
        patientId: String(Number(s.key.split("_")[0])),
        findings: names.length ? names.join("|") : "No Finding",
        labels,
        png: new Uint8Array(png),
      });
    }
    return out;
  })();
  return cache;
}

/** Metadata CSV text for `images`, in the real file's format. */
export function metaCsv(images: readonly NihImage[]): string {
  const rows = images.map((m, i) =>
    `${m.image},${m.findings},${i % 7},${m.patientId},${40 + (i % 30)},${i % 2 ? "F" : "M"},PA,` +
    `2500,2048,0.168,0.168`
  );
  return [META_HEADER, ...rows].join("\n") + "\n";
}

/** Paths of a built tree. */
export interface OriginalData {
  root: string;
  imageDir: string;
  metaDir: string;
  metaFile: string;
  labelsDir: string;
  datasetDir: string;
  images: NihImage[];
}

/** Writes `original_data/{images,meta_data}` under a new temp dir (labels/datasets empty). */
export async function buildOriginalData(count = 50): Promise<OriginalData> {
  const images = (await nihImages()).slice(0, count);
  const root = await Deno.makeTempDir({ prefix: "axr_data_" });
  const imageDir = `${root}/original_data/images`;
  const metaDir = `${root}/original_data/meta_data`;
  await Deno.mkdir(imageDir, { recursive: true });
  await Deno.mkdir(metaDir, { recursive: true });
  await Promise.all(images.map((m) => Deno.writeFile(`${imageDir}/${m.image}`, m.png)));
  const metaFile = `${metaDir}/Data_Entry_2017_v2020.csv`;
  await Deno.writeTextFile(metaFile, metaCsv(images));
  return {
    root,
    imageDir,
    metaDir,
    metaFile,
    labelsDir: `${root}/labels`,
    datasetDir: `${root}/datasets`,
    images,
  };
}
