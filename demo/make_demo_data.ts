/**
 * Writes the SYNTHETIC demo dataset (not medical data) in the NIH ChestX-ray14 input layout:
 * `<out>/images/*.png`, `<out>/meta_data/Data_Entry_2017_v2020.csv`, `<out>/README_SYNTHETIC.txt`.
 *
 *   deno run --allow-read --allow-write --allow-env --allow-ffi demo/make_demo_data.ts \
 *     --out data/demo/original_data --images 400 --seed 42 --size 1024
 * @module
 */
import { LABELS } from "../config.ts";
import { parseFlags } from "../lib/util/cli.ts";
import { runMain } from "../lib/util/errors.ts";
import { Progress } from "../lib/util/progress.ts";
import { generateSyntheticDataset } from "../lib/data/synthetic_cxr.ts";

const FLAGS = {
  out: {
    kind: "string",
    default: "data/demo/original_data",
    metavar: "DIR",
    help: "output folder (gets images/, meta_data/ and README_SYNTHETIC.txt)",
  },
  images: { kind: "int", default: 400, min: 1, max: 1_000_000, help: "number of images" },
  seed: { kind: "int", default: 42, min: 0, max: 2 ** 32 - 1, help: "random seed" },
  size: { kind: "int", default: 1024, min: 64, max: 4096, help: "side of the PNG images" },
  workers: { kind: "int", default: 4, min: 1, max: 64, help: "images encoded concurrently" },
  quiet: { kind: "boolean", default: false, help: "no progress bar or summary" },
} as const;

async function main(args: string[]): Promise<void> {
  const flags = parseFlags(
    args,
    FLAGS,
    "make_demo_data.ts [options]",
    "Generates a SYNTHETIC chest-radiograph-like dataset (not medical data) for the demo.",
  );
  const progress = new Progress("synthetic images", flags.images, {
    unit: "img",
    silent: flags.quiet,
  });
  const start = performance.now();
  const summary = await generateSyntheticDataset({
    outDir: flags.out,
    numImages: flags.images,
    seed: flags.seed,
    size: flags.size,
    workers: flags.workers,
    onImage: () => progress.tick(),
  });
  progress.finish();
  if (flags.quiet) return;
  const secs = ((performance.now() - start) / 1000).toFixed(1);
  console.log(
    `Wrote ${summary.images} SYNTHETIC images of ${summary.patients} patients ` +
      `(${flags.size}×${flags.size}) to ${flags.out} in ${secs} s — not medical data.`,
  );
  const row = (name: string) => {
    const share = summary.prevalence[name];
    return `  ${name.padEnd(20)}${String(Math.round(share * summary.images)).padStart(6)}` +
      `  ${(share * 100).toFixed(1).padStart(5)}%`;
  };
  console.log(["Images per finding:", row("No Finding"), ...LABELS.map(row)].join("\n"));
}

if (import.meta.main) await runMain(main);
