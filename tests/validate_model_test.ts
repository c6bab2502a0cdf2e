import assert from "node:assert/strict";
import { assertClose } from "./assert.ts";
import {
  fixtureDatasetDir,
  readPredictionsCsv,
  runScript,
  seedModelPath,
} from "./helpers/scripts.ts";
import { FIXTURE_SHARD } from "./helpers/original_data.ts";
import { readShard } from "../lib/data/webdataset.ts";
import { LABELS } from "../config.ts";

const fixtures = new URL("./fixtures/torch/", import.meta.url).pathname;
const expected = JSON.parse(await Deno.readTextFile(`${fixtures}expected.json`)) as {
  keys: string[];
  thresholds: number[];
  plain: { predictions: number[][]; auroc: (number | null)[]; f1: number[] };
  center_crop: { predictions: number[][]; auroc: (number | null)[]; f1: number[] };
};
const tinyExpected = JSON.parse(await Deno.readTextFile(`${fixtures}tiny_expected.json`)) as {
  keys: string[];
  predictions: number[][];
};
const SEED = seedModelPath();

const nullToNaN = (xs: (number | null)[]) => xs.map((x) => x ?? NaN);

async function validate(model: string, extra: string[]) {
  const dataset = await fixtureDatasetDir(["test"]);
  const out = await Deno.makeTempDir({ prefix: "cxr_val_" });
  const r = await runScript("validate_model.ts", [
    "-s",
    model,
    "--dataset_dir",
    dataset,
    "-b",
    "25",
    "--json",
    `${out}/out.json`,
    "--predictions",
    `${out}/p.csv`,
    ...extra,
  ], [out]);
  assert.equal(r.code, 0, r.stderr);
  const json = JSON.parse(await Deno.readTextFile(`${out}/out.json`));
  const csv = readPredictionsCsv(await Deno.readTextFile(`${out}/p.csv`));
  await Deno.remove(dataset, { recursive: true });
  return { r, json, csv, out };
}

for (const [mode, flags] of [["plain", []], ["center_crop", ["-c"]]] as const) {
  Deno.test({
    name: `validate_model.ts reproduces PyTorch/sklearn on seed_model.pt (${mode})`,
    ignore: SEED === null,
    async fn() {
      const { r, json, csv, out } = await validate(SEED!, [...flags, "-f"]);
      const ref = expected[mode];
      assert.deepEqual(csv.keys, expected.keys);
      assertClose(csv.rows.flat(), ref.predictions.flat(), 2e-3, "predictions");
      assert.deepEqual(
        json.auroc.map((v: number | null) => v === null),
        ref.auroc.map((v) => v === null),
      );
      assertClose(
        nullToNaN(json.auroc).filter((v) => !isNaN(v)),
        nullToNaN(ref.auroc).filter((v) => !isNaN(v)),
        2e-3,
        "AUROC",
      );
      assertClose(json.f1, ref.f1, 2e-3, "F1");
      assertClose(json.thresholds, expected.thresholds, 0, "thresholds");
      assert.equal(json.n_images, 50);
      assert.match(r.stdout, /^Loading from seed_model\.pt\.$/m);
      assert.match(r.stdout, /Validation complete\./);
      // AUROC and F1 with their bootstrap intervals (on by default), then ECE (with -f).
      const ci = "\\[\\d\\.\\d{4}, \\d\\.\\d{4}\\]";
      assert.match(
        r.stdout,
        new RegExp(`^Effusion\\s+0\\.\\d{4} ${ci}\\s+0\\.\\d{4} ${ci}\\s+0\\.\\d{4}$`, "m"),
      );
      assert.match(r.stdout, /Mean AUROC over 7 defined classes: 0\.\d{4}/);
      await Deno.remove(out, { recursive: true });
    },
  });
}

Deno.test("validate_model.ts on the tiny legacy checkpoint matches PyTorch (no ../shared needed)", async () => {
  const { csv, json, out } = await validate(`${fixtures}tiny_legacy.pth`, ["--tta", "tencrop"]);
  assert.deepEqual(csv.keys, tinyExpected.keys);
  assertClose(csv.rows.flat(), tinyExpected.predictions.flat(), 2e-3, "tiny predictions");
  assert.equal(json.tencrop.auroc.length, 14);
  assert.ok(json.tencrop.mean_auroc === null || Number.isFinite(json.tencrop.mean_auroc));
  await Deno.remove(out, { recursive: true });
});

Deno.test("--images gives the same probabilities as the image's row in --predictions", async () => {
  const { csv, out } = await validate(`${fixtures}tiny_zip.pt`, []);
  const dir = await Deno.makeTempDir({ prefix: "cxr_img_" });
  const keys: string[] = [];
  for await (const s of readShard(FIXTURE_SHARD)) {
    await Deno.writeFile(`${dir}/${s.key}.png`, s.png);
    keys.push(s.key);
    if (keys.length === 2) break;
  }
  const r = await runScript("validate_model.ts", [
    "-s",
    `${fixtures}tiny_zip.pt`,
    "--images",
    dir,
    "--json",
    `${dir}/single.json`,
  ], [dir]);
  assert.equal(r.code, 0, r.stderr);
  const records: { probabilities: Record<string, number> }[] =
    JSON.parse(await Deno.readTextFile(`${dir}/single.json`)).images;
  assert.equal(records.length, 2);
  records.forEach((rec, i) => {
    const row = csv.rows[csv.keys.indexOf(keys[i])];
    assertClose(LABELS.map((l) => rec.probabilities[l]), row, 1e-6, `image ${keys[i]}`);
  });
  assert.match(r.stdout, new RegExp(`${keys[0]}\\.png: `));
  await Deno.remove(dir, { recursive: true });
  await Deno.remove(out, { recursive: true });
});

Deno.test("validate_model.ts bad input: one line, non-zero exit", async () => {
  const dataset = await fixtureDatasetDir(["test"]);
  const empty = await Deno.makeTempDir();
  const notCkpt = `${empty}/notes_model.pt`;
  await Deno.writeTextFile(notCkpt, "not a checkpoint");
  const cases: [string[], RegExp][] = [
    [["--save_dir", empty + "/none"], /no saved model/],
    [["-s", `${empty}/missing.pt`], /saved model not found/],
    [["-s", notCkpt, "--dataset_dir", dataset], /notes_model\.pt/],
    [
      ["-s", `${fixtures}tiny_zip.pt`, "--dataset_dir", empty],
      /no .*test.* shards|ChestXray14_test/i,
    ],
    [["-b", "zero"], /--batch_size/],
  ];
  for (const [args, pattern] of cases) {
    const r = await runScript("validate_model.ts", [...args, "--backend", "cpu"], []);
    assert.notEqual(r.code, 0, args.join(" "));
    const lines = r.stderr.trim().split("\n").filter((l) => l.startsWith("error:"));
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0], pattern);
    assert.doesNotMatch(r.stderr, /^\s+at /m, "no stack trace");
  }
  await Deno.remove(dataset, { recursive: true });
  await Deno.remove(empty, { recursive: true });
});
