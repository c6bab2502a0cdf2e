/**
 * Smoke test of `demo.ts`: a tiny run (40 synthetic images, one epoch, 32 px) from an unrelated
 * working directory prints the AUROC table and writes every output; a second run reuses the
 * synthetic data. The demo's AUROC bar is checked by running `deno task demo` itself (minutes).
 * @module
 */
import assert from "node:assert/strict";
import { LABELS, META_FILE_NAME } from "../config.ts";
import { BELOW_BAR_EXIT_CODE, SETTINGS_FILE } from "../demo.ts";
import { runScript } from "./helpers/scripts.ts";

const SMALL = ["--images", "40", "--epochs", "1", "--arch", "densenet_tiny", "--image_size", "32"];

const runDemo = (cwd: string, args: string[]) =>
  runScript("demo.ts", args, [cwd], { cwd, permissions: ["--allow-run"] });

async function files(dir: string, suffix: string): Promise<string[]> {
  const names: string[] = [];
  for await (const e of Deno.readDir(dir)) if (e.name.endsWith(suffix)) names.push(e.name);
  return names.sort();
}

Deno.test("demo: a tiny run from another directory prints the table and writes its outputs", async () => {
  const cwd = await Deno.makeTempDir({ prefix: "cxr_demo_" });
  try {
    const first = await runDemo(cwd, [...SMALL, "--out", "demo"]);
    // 40 images cannot promise the bar: a run below it exits BELOW_BAR_EXIT_CODE.
    assert.ok(
      first.code === 0 || first.code === BELOW_BAR_EXIT_CODE,
      `exit ${first.code}\n${first.stderr.slice(-2000)}`,
    );
    const out = first.stdout;
    assert.match(out, /SYNTHETIC/);
    assert.match(out, /Weights: random initialisation \(--weights none\)/);
    assert.match(out, /Demo result on the SYNTHETIC test set \(\d+ images/);
    for (const label of LABELS) {
      assert.match(out, new RegExp(`^${label} +(\\d\\.\\d{4}|n/a) +\\d+$`, "m"));
    }
    assert.match(out, /Mean AUROC over \d+ classes with a defined AUROC: (\d\.\d{4}|n\/a) — /);
    assert.match(out, /total \d+\.\d s\.$/m);
    assert.match(out, /Phases: synthetic data [\d.]+ s, preprocess [\d.]+ s, train [\d.]+ s/);

    const demo = `${cwd}/demo`;
    assert.equal((await files(`${demo}/original_data/images`, ".png")).length, 40);
    const meta = await Deno.readTextFile(`${demo}/original_data/meta_data/${META_FILE_NAME}`);
    assert.equal(meta.trim().split("\n").length, 41);
    const settings = JSON.parse(await Deno.readTextFile(`${demo}/original_data/${SETTINGS_FILE}`));
    assert.equal(settings.images, 40);
    assert.equal(settings.seed, 42);
    for (const subset of ["train", "val", "test"]) {
      assert.deepEqual(await files(`${demo}/datasets`, `_${subset}_000.tar`), [
        `ChestXray14_${subset}_000.tar`,
      ]);
      await Deno.stat(`${demo}/labels/${subset}_labels.csv`);
    }
    assert.equal((await files(`${demo}/saved_models`, "_model.pt")).length, 1);
    const results = JSON.parse(await Deno.readTextFile(`${demo}/demo_results.json`));
    assert.equal(results.auroc.length, LABELS.length);
    assert.ok(results.n_images > 0);
    assert.match(await Deno.readTextFile(`${demo}/demo_report.html`), /<svg/);

    // Same settings: the synthetic images are reused, not regenerated.
    const second = await runDemo(cwd, [...SMALL, "--out", "demo"]);
    assert.ok(second.code === 0 || second.code === BELOW_BAR_EXIT_CODE, second.stderr);
    assert.match(second.stdout, /Using the SYNTHETIC dataset in demo\/original_data/);
    assert.equal((await files(`${demo}/saved_models`, "_model.pt")).length, 2);
  } finally {
    await Deno.remove(cwd, { recursive: true });
  }
});

Deno.test("demo: bad flags and unwritable outputs are one-line errors", async () => {
  const cwd = await Deno.makeTempDir({ prefix: "cxr_demo_" });
  try {
    const bad = await runDemo(cwd, ["--arch", "resnet"]);
    assert.equal(bad.code, 2);
    assert.equal(bad.stderr.trim().split("\n").length, 1);
    assert.match(bad.stderr, /^error: invalid value for --arch: 'resnet'/);

    const elsewhere = await Deno.makeTempDir({ prefix: "cxr_demo_ro_" });
    try {
      const denied = await runDemo(cwd, [...SMALL, "--out", `${elsewhere}/demo`]);
      assert.equal(denied.code, 1);
      const line = denied.stderr.trim();
      assert.equal(line.split("\n").length, 1, denied.stderr);
      assert.match(
        line,
        /^error: no write access for --out .*cxr_demo_ro_.*\/demo .*run instead: /,
      );
      assert.doesNotMatch(denied.stdout, /synthetic images/i, "stopped before any work");
      // The command works from where the demo was started: script and data/ named absolutely.
      const command = line.split("run instead: ")[1];
      assert.match(command, new RegExp(`--allow-write=/\\S+/data,${elsewhere}/demo `));
      assert.match(command, /--allow-run \/\S+\/demo\.ts /);
    } finally {
      await Deno.remove(elsewhere, { recursive: true });
    }
  } finally {
    await Deno.remove(cwd, { recursive: true });
  }
});
