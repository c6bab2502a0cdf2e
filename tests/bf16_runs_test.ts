/**
 * `--precision bf16` end to end (issue #21's numerics): validate_model.ts on the 50 real NIH
 * images with the original-format `seed_model.pt` stays close to its float32 run (predictions,
 * AUROC); a small train_model.ts run keeps its float32 run's validation loss; and bf16 where it
 * cannot run is refused in one line before any work. The bf16 runs skip, saying why, where
 * libdnnl is missing or the CPU has no bfloat16 instructions.
 */
import assert from "node:assert/strict";
import { bf16Missing } from "./helpers/bf16.ts";
import { nativeMissingFor } from "./helpers/native.ts";
import {
  fixtureDatasetDir,
  readPredictionsCsv,
  runScript,
  type ScriptResult,
  seedModelPath,
  TINY_TRAIN_ARGS,
} from "./helpers/scripts.ts";

const bf16Unavailable = bf16Missing("the bf16 validate/train runs");
const nativeMissing = nativeMissingFor("the bf16 refusal on a CPU without bfloat16");
const SEED = seedModelPath();
const PRECISIONS = ["f32", "bf16"] as const;

/** validate_model.ts --json and --predictions of seed_model.pt on the shard at `precision`. */
async function validateAt(dataset: string, out: string, precision: string) {
  const r = await runScript("validate_model.ts", [
    "-s",
    SEED!,
    "--dataset_dir",
    dataset,
    "--backend",
    "native",
    "--threads",
    "2",
    "--precision",
    precision,
    "-b",
    "25",
    "--bootstrap",
    "0",
    "--json",
    `${out}/${precision}.json`,
    "--predictions",
    `${out}/${precision}.csv`,
  ], [out]);
  assert.equal(r.code, 0, r.stderr);
  return {
    json: JSON.parse(await Deno.readTextFile(`${out}/${precision}.json`)) as {
      auroc: (number | null)[];
      mean_auroc_defined: number | null;
      n_images: number;
    },
    csv: readPredictionsCsv(await Deno.readTextFile(`${out}/${precision}.csv`)),
  };
}

Deno.test({
  name: "validate_model.ts --precision bf16 on seed_model.pt stays close to float32",
  ignore: bf16Unavailable != null || SEED === null,
  async fn(t) {
    const dataset = await fixtureDatasetDir(["test"]);
    const out = await Deno.makeTempDir({ prefix: "cxr_bf16_val_" });
    try {
      const [f32, bf16] = [
        await validateAt(dataset, out, "f32"),
        await validateAt(dataset, out, "bf16"),
      ];
      assert.equal(f32.json.n_images, 50);
      assert.deepEqual(bf16.csv.keys, f32.csv.keys);

      await t.step("predictions within 1e-2 of float32", () => {
        const a = f32.csv.rows.flat();
        const b = bf16.csv.rows.flat();
        const diffs = a.map((v, i) => Math.abs(b[i] - v));
        const worst = Math.max(...diffs);
        const mean = diffs.reduce((s, d) => s + d, 0) / diffs.length;
        console.log(
          `bf16 predictions: max |diff| ${worst.toExponential(2)}, mean ${mean.toExponential(2)}`,
        );
        assert.ok(b.every(Number.isFinite), "finite predictions");
        assert.ok(worst <= 1e-2, `a prediction ${worst} from float32's`);
      });

      await t.step("AUROC within 0.005 per class and 0.002 on the mean", () => {
        // Classes without both label values on these 50 images have no AUROC (null in both).
        assert.deepEqual(
          bf16.json.auroc.map((v) => v === null),
          f32.json.auroc.map((v) => v === null),
        );
        const defined = f32.json.auroc.flatMap((v, c) => v === null ? [] : [c]);
        assert.ok(defined.length > 0, "some class has an AUROC on the shard");
        const diffs = defined.map((c) => bf16.json.auroc[c]! - f32.json.auroc[c]!);
        const meanDiff = bf16.json.mean_auroc_defined! - f32.json.mean_auroc_defined!;
        console.log(
          `bf16 AUROC − float32, classes ${defined.join(",")}: ${
            diffs.map((d) => d.toFixed(4)).join(" ")
          }; mean over the ${defined.length} defined ${meanDiff.toFixed(4)}`,
        );
        const off = defined.filter((_, i) => Math.abs(diffs[i]) > 0.005);
        assert.deepEqual(off, [], `classes whose AUROC moved more than 0.005: ${off}`);
        assert.ok(Math.abs(meanDiff) <= 0.002, `mean AUROC ${meanDiff.toFixed(4)} off`);
      });
    } finally {
      await Deno.remove(out, { recursive: true });
      await Deno.remove(dataset, { recursive: true });
    }
  },
});

Deno.test({
  name: "train_model.ts --precision bf16 keeps float32's validation loss within 1 %",
  ignore: bf16Unavailable != null,
  async fn() {
    const dataset = await fixtureDatasetDir(["train", "val"]);
    const save = await Deno.makeTempDir({ prefix: "cxr_bf16_train_" });
    try {
      const losses: Record<string, number[]> = {};
      for (const precision of PRECISIONS) {
        const dir = `${save}/${precision}`;
        await Deno.mkdir(dir);
        const r = await runScript("train_model.ts", [
          ...TINY_TRAIN_ARGS,
          "-b",
          "25",
          "-e",
          "2",
          "--backend",
          "native",
          "--threads",
          "2",
          "--precision",
          precision,
          "--dataset_dir",
          dataset,
          "--save_dir",
          dir,
        ], [dir]);
        assert.equal(r.code, 0, r.stderr);
        const name = [...Deno.readDirSync(dir)].find((e) => e.name.endsWith("_results.json"))!;
        const results = JSON.parse(await Deno.readTextFile(`${dir}/${name.name}`));
        assert.equal(results.flags.precision, precision);
        losses[precision] = results.epochs.map((e: { val_loss: number }) => e.val_loss);
      }
      const rel = losses.bf16.map((l, i) => Math.abs(l - losses.f32[i]) / losses.f32[i]);
      console.log(
        `val loss f32 ${losses.f32.map((l) => l.toFixed(5))}, bf16 ${
          losses.bf16.map((l) => l.toFixed(5))
        }; relative diff ${rel.map((d) => d.toExponential(2))}`,
      );
      assert.equal(losses.bf16.length, 2);
      assert.ok(losses.bf16.every(Number.isFinite), `bf16 val losses ${losses.bf16}`);
      rel.forEach((d, i) => assert.ok(d <= 0.01, `epoch ${i + 1}: val loss ${d} off float32's`));
    } finally {
      await Deno.remove(save, { recursive: true });
      await Deno.remove(dataset, { recursive: true });
    }
  },
});

/** Asserts a refusal: exit 2, one line on stderr and nothing else, matching `why`. */
function assertRefused(r: ScriptResult, why: RegExp): void {
  assert.equal(r.code, 2, r.stderr);
  assert.equal(r.stdout, "");
  const lines = r.stderr.trim().split("\n");
  assert.equal(lines.length, 1, r.stderr);
  assert.match(lines[0], why);
}

/** Runs train_model.ts and validate_model.ts at bf16 with `args`, expecting `why` and no files. */
async function assertBothRefuse(
  args: string[],
  why: RegExp,
  env?: Record<string, string>,
): Promise<void> {
  const dataset = await fixtureDatasetDir(["train", "val", "test"]);
  const save = await Deno.makeTempDir({ prefix: "cxr_bf16_refused_" });
  try {
    const common = ["--precision", "bf16", ...args, "--dataset_dir", dataset];
    const train = await runScript(
      "train_model.ts",
      [
        ...TINY_TRAIN_ARGS,
        ...common,
        "--save_dir",
        save,
      ],
      [save],
      { env },
    );
    assertRefused(train, why);
    const validate = await runScript(
      "validate_model.ts",
      [
        "-s",
        new URL("./fixtures/torch/tiny_zip.pt", import.meta.url).pathname,
        ...common,
        "--json",
        `${save}/out.json`,
        "--predictions",
        `${save}/p.csv`,
      ],
      [save],
      { env },
    );
    assertRefused(validate, why);
    assert.deepEqual([...Deno.readDirSync(save)].map((e) => e.name), [], "files written");
  } finally {
    await Deno.remove(save, { recursive: true });
    await Deno.remove(dataset, { recursive: true });
  }
}

Deno.test("--precision bf16 on the wasm backend is refused in one line (exit 2)", async () => {
  await assertBothRefuse(["--backend", "wasm"], /bf16 runs on the native backend .* not wasm/);
});

Deno.test({
  name: "--precision bf16 without bfloat16 instructions is refused in one line (exit 2)",
  ignore: nativeMissing != null,
  async fn() {
    // oneDNN capped below avx512_core_bf16 reports what a CPU without them would.
    await assertBothRefuse(
      ["--backend", "native"],
      /needs a CPU with bfloat16 instructions \(AVX512_BF16 or AMX\)/,
      { ONEDNN_MAX_CPU_ISA: "AVX512_CORE" },
    );
  },
});
