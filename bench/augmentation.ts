/**
 * Throughput of the batch transforms: augmented training batches (and the plain pipelines) of
 * 256×256 inputs to 224×224 on a tfjs backend (wasm by default), warm-up excluded. Prints one
 * JSON line per pipeline: {pipeline, backend, batch, images_per_s, ms_per_batch, peak_rss_mb}.
 *
 *     deno run -A bench/augmentation.ts [--backend wasm|cpu] [-b 16] [--seconds 5]
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-cpu";
import "@tensorflow/tfjs-backend-wasm";
import { parseFlags } from "../lib/util/cli.ts";
import { runMain } from "../lib/util/errors.ts";
import { Rng } from "../lib/util/rng.ts";
import {
  type BatchTransform,
  transformsTest,
  transformsTestCentercrop,
  transformsTrain,
  transformsTrainAugmented,
} from "../transforms/augmented_transforms.ts";

const SPECS = {
  backend: {
    kind: "string",
    default: "wasm",
    choices: ["wasm", "cpu"],
    help: "tfjs backend to measure",
  },
  batch_size: { kind: "int", short: "b", default: 16, min: 1, help: "images per batch" },
  input_size: { kind: "int", default: 256, min: 224, help: "side of the square input images" },
  seconds: { kind: "float", default: 5, min: 0.1, help: "measuring time per pipeline" },
  warmup: { kind: "int", default: 2, min: 0, help: "untimed batches per pipeline" },
  seed: { kind: "int", default: 42, help: "seed of the augmentation draws" },
} as const;

/** Augmentation with every random op applied: the worst case. */
const augmentedAll: BatchTransform = (x, rng) =>
  transformsTrainAugmented(x, rng, { pTrain: 1, pHflip: 1 });

const PIPELINES: Record<string, BatchTransform> = {
  transformsTrainAugmented,
  "transformsTrainAugmented(p=1)": augmentedAll,
  transformsTrain,
  transformsTest,
  transformsTestCentercrop,
};

async function main(args: string[]) {
  const flags = parseFlags(
    args,
    SPECS,
    "deno run -A bench/augmentation.ts [options]",
    "Measures images/s of the batch transforms.",
  );
  await tf.setBackend(flags.backend);
  await tf.ready();
  const n = flags.batch_size, s = flags.input_size;
  const images = tf.randomUniform([n, s, s, 3], 0, 1, "float32", flags.seed) as tf.Tensor4D;
  const rng = new Rng(flags.seed);
  let peakRss = Deno.memoryUsage().rss;
  for (const [name, transform] of Object.entries(PIPELINES)) {
    const once = () => {
      const out = transform(images, rng);
      out.dataSync(); // wait for the backend to finish
      out.dispose();
      peakRss = Math.max(peakRss, Deno.memoryUsage().rss);
    };
    for (let k = 0; k < flags.warmup; k++) once();
    let batches = 0;
    const start = performance.now();
    while (performance.now() - start < flags.seconds * 1000) {
      once();
      batches++;
    }
    const ms = performance.now() - start;
    console.log(JSON.stringify({
      pipeline: name,
      backend: tf.getBackend(),
      batch: n,
      input: s,
      images_per_s: Math.round((batches * n) / (ms / 1000) * 10) / 10,
      ms_per_batch: Math.round(ms / batches * 10) / 10,
      peak_rss_mb: Math.round(peakRss / 2 ** 20),
    }));
  }
  images.dispose();
}

if (import.meta.main) await runMain(main);
