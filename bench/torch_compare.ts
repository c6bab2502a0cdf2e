/**
 * `bench/bench.ts --compare-torch`'s comparison: what `bench/torch_bench.py` reports, and our
 * rates divided by each of its PyTorch variants (float32 NCHW as the original tool runs, float32
 * channels_last, bfloat16 autocast + channels_last), as JSON and as a table for stderr.
 * @module
 */

/** The PyTorch variants torch_bench.py runs, in its order, with the names used in tables. */
export const TORCH_VARIANTS = {
  f32_nchw: "f32 NCHW",
  f32_channels_last: "f32 channels_last",
  bf16_autocast_channels_last: "bf16 autocast + channels_last",
} as const;

export type TorchVariant = keyof typeof TORCH_VARIANTS;

/** Images/s of one PyTorch variant; per CPU-second of its process. */
export interface TorchRates {
  train_images_per_s: number;
  infer_images_per_s: number;
  train_images_per_cpu_s: number;
  infer_images_per_cpu_s: number;
}

/** What `bench/torch_bench.py` prints: the top-level rates are f32_nchw's. */
export interface TorchResult extends TorchRates {
  torch_version: string;
  threads: number;
  batch: number;
  image_size: number;
  steps: number;
  peak_rss_mb: number;
  variants: Partial<Record<TorchVariant, TorchRates>>;
}

/** Our images/s (`*Cpu`: per CPU-second of this process, null where unavailable). */
export interface OurRates {
  train: number;
  infer: number;
  trainCpu: number | null;
  inferCpu: number | null;
}

/** Ours / PyTorch: wall-clock rates, and per CPU-second where ours has CPU times. */
export interface Ratio {
  train: number;
  infer: number;
  train_per_cpu_s?: number;
  infer_per_cpu_s?: number;
}

const round = (v: number, digits = 3) => Number(v.toFixed(digits));

/** Ours / one PyTorch variant's rates. */
export function ratio(ours: OurRates, torch: TorchRates): Ratio {
  return {
    train: round(ours.train / torch.train_images_per_s),
    infer: round(ours.infer / torch.infer_images_per_s),
    ...(ours.trainCpu != null && ours.inferCpu != null
      ? {
        train_per_cpu_s: round(ours.trainCpu / torch.train_images_per_cpu_s),
        infer_per_cpu_s: round(ours.inferCpu / torch.infer_images_per_cpu_s),
      }
      : {}),
  };
}

/** Ours / each variant torch_bench.py ran, in TORCH_VARIANTS order. */
export function ratiosByVariant(
  ours: OurRates,
  torch: TorchResult,
): Partial<Record<TorchVariant, Ratio>> {
  const out: Partial<Record<TorchVariant, Ratio>> = {};
  for (const v of Object.keys(TORCH_VARIANTS) as TorchVariant[]) {
    const rates = torch.variants[v];
    if (rates) out[v] = ratio(ours, rates);
  }
  return out;
}

/**
 * The comparison as lines for stderr: our rates, then each PyTorch variant's rates with ours /
 * its (per CPU-second in brackets). `oursLabel` names our side, e.g. "native bf16".
 */
export function comparisonLines(oursLabel: string, ours: OurRates, torch: TorchResult): string[] {
  const rows: string[][] = [[
    "",
    "train img/s",
    "ours/torch",
    "infer img/s",
    "ours/torch",
  ]];
  const cpu = (v: number | null) => (v == null ? "" : ` (${v.toFixed(2)})`);
  rows.push([
    `ours, ${oursLabel}`,
    ours.train.toFixed(2) + cpu(ours.trainCpu),
    "",
    ours.infer.toFixed(2) + cpu(ours.inferCpu),
    "",
  ]);
  const ratios = ratiosByVariant(ours, torch);
  for (const v of Object.keys(TORCH_VARIANTS) as TorchVariant[]) {
    const rates = torch.variants[v], r = ratios[v];
    if (!rates || !r) continue;
    const x = (a: number, b?: number) =>
      `${a.toFixed(2)}×` + (b == null ? "" : ` (${b.toFixed(2)}×)`);
    rows.push([
      `torch ${TORCH_VARIANTS[v]}`,
      rates.train_images_per_s.toFixed(2) + cpu(rates.train_images_per_cpu_s),
      x(r.train, r.train_per_cpu_s),
      rates.infer_images_per_s.toFixed(2) + cpu(rates.infer_images_per_cpu_s),
      x(r.infer, r.infer_per_cpu_s),
    ]);
  }
  const widths = rows[0].map((_, i) => Math.max(...rows.map((row) => row[i].length)));
  return [
    `PyTorch ${torch.torch_version}, ${torch.threads} thread${torch.threads === 1 ? "" : "s"}, ` +
    `batch ${torch.batch}, ` +
    `${torch.image_size} px (per CPU-second in brackets):`,
    ...rows.map((row) =>
      ("  " + row.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join("  "))
        .trimEnd()
    ),
  ];
}
