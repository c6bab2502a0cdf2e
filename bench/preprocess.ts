/**
 * Preprocessing throughput: 1024×1024 8-bit grey PNGs (like the NIH release) in, 256×256 shards
 * out, through the real `preprocess()` pipeline. Prints one JSON line with images/s and peak RSS.
 *
 *   deno run --allow-read --allow-write --allow-env --allow-ffi bench/preprocess.ts [-n 300] [-w 2]
 * @module
 */
import { parseFlags } from "../lib/util/cli.ts";
import { runMain } from "../lib/util/errors.ts";
import { readShard } from "../lib/data/webdataset.ts";
import { preprocess } from "../preprocess_data.ts";

const FIXTURE_SHARD =
  new URL("../tests/fixtures/nih_subset/ChestXray14_val_002.tar", import.meta.url)
    .pathname;

/** Tracks the peak resident set size by sampling (Deno needs -A to read /proc/self/status). */
class PeakRss {
  peak = Deno.memoryUsage().rss;
  #timer = setInterval(() => this.sample(), 20);
  sample(): void {
    this.peak = Math.max(this.peak, Deno.memoryUsage().rss);
  }
  stop(): number {
    clearInterval(this.#timer);
    this.sample();
    return this.peak / (1 << 20);
  }
}

/** Writes `n` NIH-like 1024×1024 grey PNGs (the 50 fixture X-rays, upscaled, cycled). */
async function makeImages(dir: string, n: number): Promise<string> {
  const { default: sharp } = await import("sharp");
  const bases: Uint8Array[] = [];
  for await (const s of readShard(FIXTURE_SHARD)) {
    const big = await sharp(s.png).resize(1024, 1024).toColourspace("b-w").png().toBuffer();
    bases.push(new Uint8Array(big));
  }
  const rows = [
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position," +
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]",
  ];
  for (let i = 0; i < n; i++) {
    const patient = 1 + Math.floor(i / 3);
    const image = `${String(patient).padStart(8, "0")}_${String(i % 3).padStart(3, "0")}.png`;
    await Deno.writeFile(`${dir}/images/${image}`, bases[i % bases.length]);
    rows.push(
      `${image},${i % 4 ? "No Finding" : "Effusion|Mass"},0,${patient},50,M,PA,1024,1024,0.14,0.14`,
    );
  }
  const meta = `${dir}/Data_Entry_2017_v2020.csv`;
  await Deno.writeTextFile(meta, rows.join("\n") + "\n");
  return meta;
}

async function main(args: string[]): Promise<void> {
  const f = parseFlags(
    args,
    {
      images: { kind: "int", short: "n", default: 300, min: 10, help: "images to preprocess" },
      workers: {
        kind: "int",
        short: "w",
        default: navigator.hardwareConcurrency || 1,
        min: 1,
        help: "concurrent resizes",
      },
    },
    "bench/preprocess.ts [options]",
    "Measure preprocessing throughput (1024×1024 grey PNG in → 256×256 shards out).",
  );
  const dir = await Deno.makeTempDir({ prefix: "axr_bench_" });
  try {
    await Deno.mkdir(`${dir}/images`);
    const metaFile = await makeImages(dir, f.images);
    const inputFiles = (await Array.fromAsync(Deno.readDir(`${dir}/images`))).length;
    const rss = new PeakRss();
    const start = performance.now();
    const report = await preprocess(
      {
        seed: 42,
        subsetSize: null,
        imageDir: `${dir}/images`,
        metaFile,
        labelsDir: `${dir}/labels`,
        datasetDir: `${dir}/datasets`,
        imageSize: 256,
        shardSize: 1000,
        officialSplit: false,
        workers: f.workers,
        skipMissing: false,
        quiet: true,
      },
      () => {},
    );
    const seconds = (performance.now() - start) / 1000;
    const peakRss = rss.stop();
    const written = report.subsets.train.written + report.subsets.val.written +
      report.subsets.test.written;
    console.log(JSON.stringify({
      bench: "preprocess",
      input: "1024x1024 8-bit grey PNG",
      output: "256x256 8-bit grey PNG in WebDataset shards",
      images: written,
      input_files: inputFiles,
      workers: f.workers,
      cores: navigator.hardwareConcurrency,
      seconds: Number(seconds.toFixed(3)),
      images_per_s: Number((written / seconds).toFixed(1)),
      peak_rss_mib: Number(peakRss.toFixed(1)),
    }));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

if (import.meta.main) await runMain(main);
