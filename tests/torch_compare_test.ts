import assert from "node:assert/strict";
import { runScript } from "./helpers/scripts.ts";
import {
  comparisonLines,
  ratio,
  ratiosByVariant,
  TORCH_VARIANTS,
  type TorchRates,
  type TorchResult,
  type TorchVariant,
} from "../bench/torch_compare.ts";

const VARIANTS = Object.keys(TORCH_VARIANTS) as TorchVariant[];

/** A torch_bench.py result whose variants run at different rates, some variants left out. */
function torchResult(variants: TorchVariant[]): TorchResult {
  const rates = (k: number): TorchRates => ({
    train_images_per_s: 4 * k,
    infer_images_per_s: 20 * k,
    train_images_per_cpu_s: 2 * k,
    infer_images_per_cpu_s: 11 * k,
  });
  const byVariant = Object.fromEntries(variants.map((v, i) => [v, rates(1 + i)]));
  return {
    torch_version: "test",
    threads: 2,
    batch: 16,
    image_size: 224,
    steps: 3,
    peak_rss_mb: 1,
    ...rates(1),
    variants: byVariant,
  };
}

Deno.test("torch comparison: ours / each PyTorch variant, in order, per CPU-s when ours has it", () => {
  const ours = { train: 6.5, infer: 27, trainCpu: 3.5, inferCpu: 14 };
  const torch = torchResult(VARIANTS);
  const ratios = ratiosByVariant(ours, torch);
  assert.deepEqual(Object.keys(ratios), VARIANTS);
  for (const v of VARIANTS) {
    const t = torch.variants[v]!;
    const r = ratios[v]!;
    assert.ok(Math.abs(r.train - ours.train / t.train_images_per_s) < 1e-3);
    assert.ok(Math.abs(r.infer - ours.infer / t.infer_images_per_s) < 1e-3);
    assert.ok(Math.abs(r.train_per_cpu_s! - ours.trainCpu / t.train_images_per_cpu_s) < 1e-3);
    assert.ok(Math.abs(r.infer_per_cpu_s! - ours.inferCpu / t.infer_images_per_cpu_s) < 1e-3);
  }
  // Without our CPU times there is no per-CPU-s ratio; a variant not run has no ratio or row.
  const noCpu = ratio({ ...ours, trainCpu: null, inferCpu: null }, torch);
  assert.deepEqual(Object.keys(noCpu), ["train", "infer"]);
  const partial = torchResult(["f32_nchw", "bf16_autocast_channels_last"]);
  assert.deepEqual(Object.keys(ratiosByVariant(ours, partial)), [
    "f32_nchw",
    "bf16_autocast_channels_last",
  ]);
  const lines = comparisonLines("native bf16", ours, partial);
  assert.ok(lines.some((l) => l.includes("ours, native bf16")));
  assert.ok(lines.some((l) => l.includes(`torch ${TORCH_VARIANTS.bf16_autocast_channels_last}`)));
  assert.ok(!lines.some((l) => l.includes(`torch ${TORCH_VARIANTS.f32_channels_last} `)));
  // Each variant's row shows its train ratio.
  const bf16Row = lines.find((l) => l.includes("bf16 autocast"))!;
  const r = ratiosByVariant(ours, partial).bf16_autocast_channels_last!;
  assert.ok(bf16Row.includes(`${r.train.toFixed(2)}×`), bf16Row);
});

const hasTorch = (() => {
  try {
    return new Deno.Command("/usr/bin/python3", {
      args: ["-c", "import torch, torchvision"],
      stdout: "null",
      stderr: "null",
    }).outputSync().success;
  } catch {
    return false;
  }
})();
if (!hasTorch) {
  console.log("skipping bench.ts --compare-torch: `/usr/bin/python3 -c 'import torch'` fails");
}

Deno.test({
  name: "bench.ts --compare-torch runs PyTorch's three variants and reports ours / each",
  ignore: !hasTorch,
  async fn() {
    const run = await runScript(
      "bench/bench.ts",
      [
        ...["--backend", "wasm", "--image_size", "32", "--batch", "2", "--steps", "1"],
        ...["--threads", "1", "--model_only", "--compare-torch"],
      ],
      [],
      { permissions: ["--allow-run"], timeoutMs: 120_000 },
    );
    assert.equal(run.code, 0, run.stderr);
    const out = JSON.parse(run.stdout.trim().split("\n").pop()!);
    assert.equal(out.precision, "f32");
    assert.deepEqual(Object.keys(out.torch.variants), VARIANTS);
    // The top-level PyTorch rates stay float32 NCHW's, and so does `ratio`.
    for (const key of ["train_images_per_s", "infer_images_per_s"]) {
      assert.equal(out.torch[key], out.torch.variants.f32_nchw[key]);
    }
    assert.deepEqual(out.ratio, out.ratio_by_variant.f32_nchw);
    for (const v of VARIANTS) {
      const t = out.torch.variants[v];
      assert.ok(t.train_images_per_s > 0 && t.infer_images_per_s > 0, `${v}: ${JSON.stringify(t)}`);
      const r = out.ratio_by_variant[v];
      // Ours over this variant, both as the JSON reports them (ours rounded to 3 decimals).
      const expect = out.train_images_per_s / t.train_images_per_s;
      assert.ok(Math.abs(r.train - expect) <= 2e-3 * Math.max(1, expect), `${v}: ${r.train}`);
      assert.ok(r.infer > 0);
      const row = run.stderr.split("\n").find((l) => l.includes(`torch ${TORCH_VARIANTS[v]} `));
      assert.match(row ?? "", /×/, `no ratio row for ${v}`);
    }
    assert.match(run.stderr, /ours, wasm f32/);
  },
});
