/**
 * Validation as users meet it (issue 15 frictions 2, 4, 5, 6): the training run's image size
 * reaches validation (and a user override is said), augmentation without -c gets a note, the
 * report's transform line tells the settings used, `--images` writes real JSON, CSV and a
 * report and refuses what it cannot do at start, and backend notes appear only with --verbose.
 */
import assert from "node:assert/strict";
import { fixtureDatasetDir, runScript } from "./helpers/scripts.ts";
import { LABELS } from "../config.ts";
import { readShard } from "../lib/data/webdataset.ts";
import { FIXTURE_SHARD } from "./helpers/original_data.ts";
import { flagGiven, validationSettings } from "../lib/eval/training_settings.ts";

const TINY = new URL("./fixtures/torch/tiny_zip.pt", import.meta.url).pathname;
const STAMP = "2025_0101_120000";

/** A save dir holding the tiny checkpoint as a run of ours, with its results file. */
async function trainedRun(flags: Record<string, unknown>): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "cxr_run_" });
  await Deno.copyFile(TINY, `${dir}/${STAMP}_model.pt`);
  await Deno.writeTextFile(
    `${dir}/${STAMP}_results.json`,
    JSON.stringify({ status: "complete", flags, epochs: [] }),
  );
  return dir;
}

async function validate(args: string[], writeDir: string) {
  const r = await runScript("validate_model.ts", ["-b", "25", ...args], [writeDir]);
  assert.equal(r.code, 0, r.stderr);
  return r;
}

Deno.test("the training image size and augmentation reach validation; overrides are said", async () => {
  const dataset = await fixtureDatasetDir(["test"]);
  const run = await trainedRun({ image_size: 64, arch: "densenet_tiny", augmentation: true });
  const model = `${run}/${STAMP}_model.pt`;
  const out = (
    name: string,
  ) => ["--json", `${run}/${name}.json`, "--predictions", `${run}/${name}.csv`];

  const carried = await validate(
    ["-s", model, "--dataset_dir", dataset, ...out("carried"), "--report", `${run}/r.html`],
    run,
  );
  assert.match(
    carried.stdout,
    new RegExp(
      `^Settings from ${STAMP}_results\\.json: image size 64, architecture densenet_tiny ` +
        `\\(override with --image_size\\)\\.$`,
      "m",
    ),
  );
  assert.match(carried.stdout, /^note: the model was trained with augmentation \(-a\).* -c /m);
  const json = JSON.parse(await Deno.readTextFile(`${run}/carried.json`));
  assert.equal(json.image_size, 64);
  assert.equal(json.transform, "resize 64");
  assert.equal(json.auroc_defined_classes, 7);
  assert.match(await Deno.readTextFile(`${run}/r.html`), /<td>resize 64<\/td>/);

  // The same predictions as asking for 64 px on a checkpoint without a results file.
  const plain = await validate(
    ["-s", TINY, "--image_size", "64", "--dataset_dir", dataset, ...out("explicit")],
    run,
  );
  assert.doesNotMatch(plain.stdout, /Settings from|note:/);
  assert.equal(
    await Deno.readTextFile(`${run}/carried.csv`),
    await Deno.readTextFile(`${run}/explicit.csv`),
  );

  // An explicit size wins, and is said; -c silences the augmentation note.
  const over = await validate(
    [
      "-s",
      model,
      "--image_size",
      "48",
      "-c",
      "--dataset_dir",
      dataset,
      "--report",
      `${run}/o.html`,
    ],
    run,
  );
  assert.match(
    over.stdout,
    /^--image_size 48 overrides the training image size 64 \(2025_0101_120000_results\.json\)\.$/m,
  );
  assert.doesNotMatch(over.stdout, /^note:/m);
  assert.match(await Deno.readTextFile(`${run}/o.html`), /<td>resize 55, center crop 48<\/td>/);
  await Deno.remove(run, { recursive: true });
  await Deno.remove(dataset, { recursive: true });
});

Deno.test("validationSettings and flagGiven", () => {
  const trained = {
    path: "/m/x_results.json",
    imageSize: 112,
    architecture: null,
    augmentation: false,
    precision: null,
  };
  const f32 = { precision: "f32", precisionCarried: false };
  assert.deepEqual(
    validationSettings(trained, { imageSize: 224, imageSizeGiven: false, centerCrop: false }),
    {
      imageSize: 112,
      ...f32,
      lines: ["Settings from x_results.json: image size 112 (override with --image_size)."],
    },
  );
  assert.deepEqual(
    validationSettings(trained, { imageSize: 112, imageSizeGiven: true, centerCrop: false }),
    { imageSize: 112, ...f32, lines: [] },
  );
  assert.deepEqual(
    validationSettings(null, { imageSize: 224, imageSizeGiven: false, centerCrop: true }),
    { imageSize: 224, ...f32, lines: [] },
  );
  // A bf16 training run's precision is carried (optional: float32 where bf16 cannot run)
  // unless --precision is given; a float32 one's changes nothing.
  const bf16 = { ...trained, precision: "bf16" };
  const user = { imageSize: 112, imageSizeGiven: true, centerCrop: false };
  assert.deepEqual(validationSettings(bf16, user), {
    imageSize: 112,
    precision: "bf16",
    precisionCarried: true,
    lines: [
      "Precision from x_results.json: bf16 (override with --precision; float32 where this " +
      "machine has no bf16).",
    ],
  });
  assert.deepEqual(
    validationSettings(bf16, { ...user, precision: "f32", precisionGiven: true }),
    { imageSize: 112, ...f32, lines: [] },
  );
  assert.deepEqual(
    validationSettings({ ...trained, precision: "f32" }, {
      ...user,
      precision: "bf16",
      precisionGiven: true,
    }),
    { imageSize: 112, precision: "bf16", precisionCarried: false, lines: [] },
  );
  assert.ok(flagGiven(["--", "--image_size", "64"], "image_size"));
  assert.ok(flagGiven(["--image_size=64"], "image_size"));
  assert.ok(!flagGiven(["--image_sizes", "64"], "image_size"));
});

Deno.test("--images: real JSON (json.load reads it), a CSV, a report; shard-only flags refused; notes with --verbose", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cxr_imgs_" });
  const keys: string[] = [];
  for await (const s of readShard(FIXTURE_SHARD)) {
    await Deno.writeFile(`${dir}/${s.key}.png`, s.png);
    keys.push(s.key);
    if (keys.length === 3) break;
  }
  const r = await validate([
    "-s",
    TINY,
    "--image_size",
    "64",
    "--images",
    dir,
    "--json",
    `${dir}/out.json`,
    "--predictions",
    `${dir}/p.csv`,
    "--report",
    `${dir}/r.html`,
    "--verbose",
  ], dir);
  assert.match(r.stderr, /^note: tensorflow skipped/m, "--verbose shows the backend notes");
  const text = await Deno.readTextFile(`${dir}/out.json`);
  const json = JSON.parse(text);
  assert.equal(json.n_images, 3);
  assert.deepEqual(
    json.images.map((i: { image: string }) => i.image),
    keys.map((k) => `${dir}/${k}.png`),
  );
  assert.equal(json.image_size, 64);
  const py = await new Deno.Command("python3", {
    args: [
      "-c",
      "import json,sys; d = json.load(open(sys.argv[1])); print(len(d['images']))",
      `${dir}/out.json`,
    ],
    stdout: "piped",
  }).output().catch(() => null);
  if (py === null) console.log("skipping json.load: no python3");
  else assert.equal(new TextDecoder().decode(py.stdout).trim(), "3");
  const csv = (await Deno.readTextFile(`${dir}/p.csv`)).trim().split("\n");
  assert.equal(csv[0], ["Image Index", ...LABELS].join(","));
  assert.equal(csv.length, 4);
  const first = csv[1].split(",");
  assert.equal(first[0], `${dir}/${keys[0]}.png`);
  LABELS.forEach((l, c) => assert.equal(Number(first[c + 1]), json.images[0].probabilities[l]));

  // The report: one row per image, probabilities above the threshold marked, as in the JSON.
  const html = await Deno.readTextFile(`${dir}/r.html`);
  assert.match(html, /<h1>Predictions: tiny_zip\.pt on 3 images<\/h1>/);
  assert.equal(html.match(/<tr data-image=/g)?.length, 3);
  const above =
    json.images.flatMap((i: { probabilities: Record<string, number> }) =>
      LABELS.filter((l, c) => i.probabilities[l] > json.thresholds[c])
    ).length;
  assert.equal(html.match(/class="num above"/g)?.length ?? 0, above);
  assert.match(html, /<td>resize 64<\/td>/);

  for (const extra of [["--tta", "tencrop"], ["--subset", "val"], ["-d"]]) {
    const refused = await runScript("validate_model.ts", ["-s", TINY, "--images", dir, ...extra], [
      dir,
    ]);
    assert.equal(refused.code, 2, extra.join(" "));
    const lines = refused.stderr.trim().split("\n");
    assert.equal(lines.length, 1, refused.stderr);
    const flag = extra[0] === "-d" ? "--debug" : extra[0];
    assert.match(lines[0], new RegExp(`^error: ${flag} applies to the labelled test shards`));
    assert.doesNotMatch(refused.stdout, /Loading from/);
  }
  const quiet = await runScript("validate_model.ts", [
    "-s",
    TINY,
    "--image_size",
    "64",
    `${dir}/${keys[0]}.png`,
  ], []);
  assert.equal(quiet.code, 0, quiet.stderr);
  assert.doesNotMatch(quiet.stderr, /^note:/m, "no backend notes without --verbose");
  await Deno.remove(dir, { recursive: true });
});
