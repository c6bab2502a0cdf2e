/**
 * Speed of validate_model.ts's bootstrap (issue #23's goal: 1,000 resamples of NIH's test split,
 * 25,596 images × 14 classes, in under 10 s on 2 cores). Synthetic data of that shape: 6,161
 * patients (NIH's test split has about that many), NIH's class prevalences, float32 scores with
 * ties. Prints one JSON line per variant: AUROC intervals only, with F1 (`-f`), and with a second
 * model (`--compare`).
 *
 *     deno run bench/bootstrap.ts [--resamples 1000] [--images 25596] [--patients 6161]
 * @module
 */
import { NUM_CLASSES } from "../config.ts";
import { bootstrap, drawResamples, resampleUnits } from "../lib/eval/bootstrap.ts";
import { matrix } from "../lib/eval/metrics.ts";
import { parseFlags } from "../lib/util/cli.ts";
import { runMain } from "../lib/util/errors.ts";
import { Rng } from "../lib/util/rng.ts";

const SPECS = {
  resamples: { kind: "int", default: 1000, min: 1, help: "bootstrap resamples" },
  images: { kind: "int", default: 25596, min: 2, help: "test images" },
  patients: { kind: "int", default: 6161, min: 1, help: "patients" },
} as const;

/** NIH ChestX-ray14 prevalences, in config.ts's class order. */
const PREVALENCE = [
  0.103,
  0.025,
  0.119,
  0.178,
  0.051,
  0.056,
  0.012,
  0.047,
  0.042,
  0.021,
  0.022,
  0.015,
  0.030,
  0.002,
];

function synthetic(n: number, patients: number, rng: Rng) {
  const keys = Array.from(
    { length: n },
    (_, i) => `${String(i % patients).padStart(8, "0")}_${String(Math.floor(i / patients))}`,
  );
  const labels = new Float32Array(n * NUM_CLASSES);
  const a = new Float32Array(n * NUM_CLASSES), b = new Float32Array(n * NUM_CLASSES);
  for (let i = 0; i < n * NUM_CLASSES; i++) {
    const y = rng.bernoulli(PREVALENCE[i % NUM_CLASSES]) ? 1 : 0;
    labels[i] = y;
    // 3 decimals: ties, as float32 sigmoid outputs of a real model have.
    a[i] = Math.round(1000 / (1 + Math.exp(-(1.5 * y + rng.normal() - 2)))) / 1000;
    b[i] = Math.round(1000 / (1 + Math.exp(-(1.2 * y + rng.normal() - 2)))) / 1000;
  }
  return { keys, labels, a, b };
}

async function main(args: string[]): Promise<void> {
  const flags = parseFlags(args, SPECS, "bench/bootstrap.ts [options]", "Bootstrap speed.");
  const data = synthetic(flags.images, flags.patients, new Rng(1));
  const units = resampleUnits(data.keys);
  const labels = matrix(data.labels, NUM_CLASSES);
  const variants = [
    { name: "auroc", extra: {} },
    { name: "auroc+f1", extra: { thresholds: new Float64Array(NUM_CLASSES).fill(0.2) } },
    { name: "auroc+compare", extra: { scoresB: matrix(data.b, NUM_CLASSES) } },
  ];
  for (const v of variants) {
    const t0 = performance.now();
    const r = bootstrap({
      labels,
      scores: matrix(data.a, NUM_CLASSES),
      units,
      draws: drawResamples(units.count, flags.resamples, new Rng(42)),
      ci: 0.95,
      ...v.extra,
    });
    const seconds = (performance.now() - t0) / 1000;
    console.log(JSON.stringify({
      variant: v.name,
      resamples: r.resamples,
      images: flags.images,
      patients: units.count,
      classes: NUM_CLASSES,
      seconds: Number(seconds.toFixed(2)),
      mean_auroc_ci: r.meanAuroc.map((x) => Number(x.toFixed(4))),
    }));
  }
  await Promise.resolve();
}

if (import.meta.main) await runMain(main);
