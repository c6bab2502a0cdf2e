/**
 * Issue 25 (part B), inputs that cost memory, data or a right answer: each case builds its bad
 * input, runs the real script and checks the exit code, the one line printed and that nothing
 * was lost (inputs byte-identical, the other images still predicted).
 * @module
 */
import assert from "node:assert/strict";
import { LABELS } from "../config.ts";
import {
  fixtureDatasetDir,
  runScript,
  type ScriptResult,
  TINY_TRAIN_ARGS,
} from "./helpers/scripts.ts";
import { FIXTURE_SHARD } from "./helpers/original_data.ts";
import { fixtureShardRenamed } from "./helpers/shards.ts";
import { readShard } from "../lib/data/webdataset.ts";
import { batches, lastBatchNote } from "../lib/data/dataset.ts";
import { resumedFlags } from "../lib/train/train_state.ts";
import { FLAGS as TRAIN_FLAGS } from "../train_model.ts";
import { shown } from "../lib/util/shown.ts";
import { assertClose } from "./assert.ts";
import "@tensorflow/tfjs-backend-cpu";
import { writeTopCams } from "../lib/eval/cam.ts";
import { loadModel } from "../lib/model/model_loading.ts";
import { disposeModel } from "../lib/model/densenet.ts";
import { paramsForImageSize, transformsTest } from "../transforms/augmented_transforms.ts";
import { nativeMissingFor } from "./helpers/native.ts";

const TORCH = new URL("./fixtures/torch/", import.meta.url).pathname;
const TINY = `${TORCH}tiny_zip.pt`;
const ROOT = new URL("../", import.meta.url).pathname;

/** The single `error:` line of a failed run (asserts there is exactly one, and no trace). */
function errorLine(r: ScriptResult, code: number): string {
  assert.equal(r.code, code, `exit ${r.code}, stderr:\n${r.stderr}`);
  const lines = r.stderr.trim().split("\n").filter((l) => l.startsWith("error:"));
  assert.equal(lines.length, 1, r.stderr);
  assert.ok(!/\n\s+at /.test(r.stderr), `no stack trace:\n${r.stderr}`);
  return lines[0];
}

async function sha(path: string): Promise<string> {
  const d = new Uint8Array(await crypto.subtle.digest("SHA-256", await Deno.readFile(path)));
  return Array.from(d, (b) => b.toString(16).padStart(2, "0")).join("");
}

const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

/** A run directory: the tiny checkpoint as `<stamp>_model.pt` beside its `_results.json`. */
async function modelWithResults(flags: Record<string, unknown> = {}) {
  const dir = await Deno.makeTempDir({ prefix: "cxr_in_" });
  const model = `${dir}/2026_0101_000000_model.pt`;
  const results = `${dir}/2026_0101_000000_results.json`;
  await Deno.copyFile(TINY, model);
  await Deno.writeTextFile(results, JSON.stringify({ status: "complete", flags }) + "\n");
  return { dir, model, results };
}

/** Two real fixture images as PNG files in a new directory. */
async function fixturePngs(count = 2): Promise<{ dir: string; files: string[] }> {
  const dir = await Deno.makeTempDir({ prefix: "cxr_imgs_" });
  const files: string[] = [];
  for await (const s of readShard(FIXTURE_SHARD)) {
    files.push(`${dir}/${s.key}.png`);
    await Deno.writeFile(files.at(-1)!, s.png);
    if (files.length === count) break;
  }
  return { dir, files };
}

Deno.test("class 4: an output that is an input (or another output) is refused before any compute", async () => {
  const run = await modelWithResults({ image_size: 224 });
  const dataset = await fixtureDatasetDir(["test"]);
  const shard = `${dataset}/ChestXray14_test_000.tar`;
  const { dir: imgDir, files } = await fixturePngs(1);
  const img = files[0];
  await Deno.link(run.model, `${run.dir}/hardlink.pt`);
  await Deno.symlink(img, `${imgDir}/link.html`);
  const before = await Promise.all([run.model, run.results, shard, img].map(sha));
  const base = ["-s", run.model, "--dataset_dir", dataset];
  const cases: [string[], RegExp][] = [
    [["--json", run.model], /--json .*_model\.pt would overwrite an input of this run: the model/],
    [["--report", run.model], /--report .*_model\.pt would overwrite an input of this run/],
    [["--json", run.results], /--json .*_results\.json would overwrite .* training record/],
    [["--predictions", shard], /--predictions .*_test_000\.tar would overwrite .* a test shard/],
    [["--images", img, "--report", img], /--report .* would overwrite .* an image predicted/],
    // The same file by another name: a hard link, a symbolic link.
    [["--json", `${run.dir}/hardlink.pt`], /--json .*hardlink\.pt would overwrite .* the model/],
    [["--images", img, "--report", `${imgDir}/link.html`], /link\.html would overwrite/],
    [
      ["--json", `${run.dir}/out.txt`, "--predictions", `${run.dir}/./out.txt`],
      /--json and --predictions both name .*out\.txt/,
    ],
    [
      [
        "--images",
        img,
        "--cam",
        "1",
        "--cam_dir",
        `${run.dir}/cam`,
        "--report",
        `${run.dir}/cam/index.html`,
      ],
      /--report and --cam \(its index\.html\) both name .*cam\/index\.html/,
    ],
  ];
  for (const [args, want] of cases) {
    const t0 = performance.now();
    const r = await runScript("validate_model.ts", [...base, ...args], [run.dir, imgDir]);
    assert.match(errorLine(r, 2), want, args.join(" "));
    assert.ok(!/^backend:/m.test(r.stderr), "refused before the backend starts");
    assert.ok(performance.now() - t0 < 20_000);
  }
  assert.deepEqual(await Promise.all([run.model, run.results, shard, img].map(sha)), before);
  for (const d of [run.dir, dataset, imgDir]) await Deno.remove(d, { recursive: true });
});

Deno.test("class 6: one key in two shards is refused naming both; the shards are kept", async () => {
  const dataset = await fixtureDatasetDir(["test"]);
  await Deno.copyFile(FIXTURE_SHARD, `${dataset}/ChestXray14_test_001.tar`);
  const out = await Deno.makeTempDir({ prefix: "cxr_dup_" });
  const r = await runScript("validate_model.ts", [
    "-s",
    TINY,
    "--dataset_dir",
    dataset,
    "--predictions",
    `${out}/p.csv`,
    "--cam",
    "1",
    "--cam_dir",
    `${out}/cam`,
  ], [out]);
  assert.match(
    errorLine(r, 1),
    new RegExp(
      `sample '00029548_010' is in both ${esc(dataset)}/ChestXray14_test_000\\.tar and ` +
        `${esc(dataset)}/ChestXray14_test_001\\.tar: each image may appear once in a subset`,
    ),
  );
  assert.ok(!(await Deno.stat(`${out}/p.csv`).catch(() => null)), "no predictions written");
  assert.equal(await sha(`${dataset}/ChestXray14_test_001.tar`), await sha(FIXTURE_SHARD));
  // Distinct keys in two shards are one subset of 100.
  await fixtureShardRenamed(`${dataset}/ChestXray14_test_001.tar`, "_b");
  const ok = await runScript("validate_model.ts", [
    "-s",
    TINY,
    "--dataset_dir",
    dataset,
    "--predictions",
    `${out}/p.csv`,
    "-b",
    "50",
  ], [out]);
  assert.equal(ok.code, 0, ok.stderr);
  const rows = (await Deno.readTextFile(`${out}/p.csv`)).trim().split("\n").slice(1);
  assert.equal(rows.length, 100);
  assert.equal(new Set(rows.map((l) => l.split(",")[0])).size, 100);
  await Deno.remove(dataset, { recursive: true });
  await Deno.remove(out, { recursive: true });
});

Deno.test("class 6: --cam finds its images by position, so one key in two shards keeps its own truth", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cxr_campos_" });
  const other = `${dir}/relabelled.tar`;
  await fixtureShardRenamed(other, "", new Array(14).fill(0)); // same keys, "No Finding"
  const first: { key: string; labels: Float32Array }[] = [];
  for await (const s of readShard(FIXTURE_SHARD)) first.push({ key: s.key, labels: s.labels });
  const at = first.findIndex((s) => s.labels.some((v) => v === 1)); // a sample with findings
  const n = 2 * first.length;
  const probs = new Float32Array(n * 14).fill(0.1);
  probs.fill(0.9, (first.length + at) * 14, (first.length + at + 1) * 14); // its relabelled twin
  const { model } = await loadModel(TINY);
  try {
    const written = await writeTopCams(
      model,
      [FIXTURE_SHARD, other],
      { keys: [...first, ...first].map((s) => s.key), probs, n },
      1,
      { dir: `${dir}/cam`, transform: (x, r) => transformsTest(x, r, paramsForImageSize(64)) },
    );
    assert.equal(written.length, 14);
    for (const w of written) {
      assert.equal(w.key, first[at].key);
      assert.deepEqual(w.truth, [], "the relabelled twin's truth, not the first shard's");
      assert.equal(w.probability, Math.fround(0.9));
    }
  } finally {
    disposeModel(model);
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("class 7 and one unreadable file: links count, failures are named, the rest predicted", async () => {
  const { dir, files } = await fixturePngs(1);
  const real = files[0].split("/").pop()!;
  for (const n of ["b", "c", "d"]) await Deno.symlink(real, `${dir}/${n}_link.png`);
  await Deno.symlink("gone.png", `${dir}/dangling.png`);
  await Deno.symlink("loop.png", `${dir}/loop.png`);
  await Deno.writeTextFile(`${dir}/corrupt.png`, "not a png");
  const out = await Deno.makeTempDir({ prefix: "cxr_out_" });
  const r = await runScript("validate_model.ts", [
    "-s",
    TINY,
    "--images",
    dir,
    "--json",
    `${out}/r.json`,
    "--predictions",
    `${out}/p.csv`,
  ], [out]);
  assert.match(
    errorLine(r, 1),
    /error: 3 of 7 images could not be predicted \(each named on a 'failed:' line above\); the other 4 were predicted and written/,
  );
  const failed = r.stderr.split("\n").filter((l) => l.startsWith("failed: "));
  assert.deepEqual(failed.map((l) => l.split(" ").slice(1, 3).join(" ")), [
    `image ${dir}/dangling.png`,
    `image ${dir}/loop.png`,
    `${dir}/corrupt.png: cannot`,
  ]);
  assert.match(failed[0], /is a symbolic link to gone\.png, which does not exist/);
  assert.match(failed[1], /is a loop of symbolic links/);
  const json = JSON.parse(await Deno.readTextFile(`${out}/r.json`));
  assert.equal(json.n_images, 4);
  assert.deepEqual(json.images.map((i: { image: string }) => i.image.split("/").pop()), [
    real,
    "b_link.png",
    "c_link.png",
    "d_link.png",
  ]);
  assert.deepEqual(
    json.failures.map((f: { image: string }) => f.image.split("/").pop()),
    ["dangling.png", "loop.png", "corrupt.png"],
  );
  // A link predicts exactly as its target.
  const p = json.images.map((i: { probabilities: Record<string, number> }) =>
    LABELS.map((l) => i.probabilities[l])
  );
  for (const q of p.slice(1)) assert.deepEqual(q, p[0]);
  assert.equal((await Deno.readTextFile(`${out}/p.csv`)).trim().split("\n").length, 5);
  await Deno.remove(dir, { recursive: true });
  await Deno.remove(out, { recursive: true });
});

Deno.test("class 8: devices and FIFOs are refused with one line, without reading or hanging", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cxr_special_" });
  const fifo = `${dir}/fifo.png`;
  const mk = await new Deno.Command("mkfifo", { args: [fifo] }).output();
  assert.equal(mk.code, 0);
  await Deno.symlink("/dev/zero", `${dir}/zero_model.pt`);
  const cases: [string[], RegExp][] = [
    [["-s", "/dev/zero"], /model \/dev\/zero is a character device, not a regular file/],
    [["-s", `${dir}/zero_model.pt`], /zero_model\.pt is a character device, not a regular file/],
    [["--images", "/dev/zero"], /image \/dev\/zero is a character device, not a regular file/],
    [["--images", "/dev/urandom"], /image \/dev\/urandom is a character device/],
    [["--images", fifo], /image .*fifo\.png is a named pipe \(FIFO\), not a regular file/],
  ];
  for (const [args, want] of cases) {
    const t0 = performance.now();
    const r = await runScript(
      "validate_model.ts",
      [...(args[0] === "-s" ? [] : ["-s", TINY]), ...args],
      [],
      {
        timeoutMs: 60_000,
      },
    );
    assert.match(errorLine(r, 1), want, args.join(" "));
    assert.ok(performance.now() - t0 < 30_000, "answers at once");
  }
  // The other scripts' inputs: training's weights and state, preprocessing's metadata.
  const { dir: imgsDir } = await fixturePngs(1);
  const others: [string, string[], RegExp][] = [
    ["train_model.ts", ["--weights", "/dev/zero"], /checkpoint \/dev\/zero is a character device/],
    ["train_model.ts", ["--resume", "/dev/zero"], /model \/dev\/zero is a character device/],
    [
      "preprocess_data.ts",
      ["--image_dir", imgsDir, "--meta_file", "/dev/zero"],
      /metadata file \/dev\/zero is a character device, not a regular file; give a CSV file/,
    ],
    [
      "preprocess_data.ts",
      ["--image_dir", imgsDir, "--meta_file", fifo],
      /metadata file .*fifo\.png is a named pipe \(FIFO\)/,
    ],
  ];
  const trainSet = await fixtureDatasetDir(["train", "val"]);
  for (const [script, args, want] of others) {
    const out = `${dir}/out`;
    const training = script === "train_model.ts";
    const r = await runScript(
      script,
      [
        ...args,
        "--dataset_dir",
        training ? trainSet : `${out}/ds`,
        "--labels_dir",
        `${out}/labels`,
        ...(training ? ["--save_dir", `${out}/save`] : []),
      ],
      [dir],
      { timeoutMs: 60_000 },
    );
    assert.match(errorLine(r, 1), want, `${script} ${args.join(" ")}`);
  }
  await Deno.remove(imgsDir, { recursive: true });
  await Deno.remove(trainSet, { recursive: true });
  // A FIFO in an --images folder is a failure of its own; the real image is predicted.
  const { dir: imgs } = await fixturePngs(1);
  await new Deno.Command("mkfifo", { args: [`${imgs}/pipe.png`] }).output();
  const r = await runScript("validate_model.ts", ["-s", TINY, "--images", imgs], [], {
    timeoutMs: 60_000,
  });
  assert.match(errorLine(r, 1), /1 of 2 images could not be predicted/);
  assert.match(r.stderr, /^failed: image .*pipe\.png is a named pipe \(FIFO\)/m);
  assert.match(r.stdout, /00029548_010\.png: /);
  await Deno.remove(dir, { recursive: true });
  await Deno.remove(imgs, { recursive: true });
});

Deno.test("class 9: settings read back from _results.json pass the flag's own validation", async () => {
  const { files, dir: imgs } = await fixturePngs(1);
  for (
    const [value, want] of [
      [3, /setting image_size = 3 is not a valid --image_size \(must be in 32\.\.1024\)/],
      [100000, /setting image_size = 100000 is not a valid --image_size \(must be in 32\.\.1024\)/],
      [64.5, /setting image_size = 64\.5 is not a valid --image_size \(expected an integer\)/],
      [
        "64",
        /setting image_size = "64" is not a valid --image_size \(expected a number, got "64"\)/,
      ],
      [
        null,
        /setting image_size = null is not a valid --image_size \(expected a value, got null\)/,
      ],
    ] as const
  ) {
    const run = await modelWithResults({ image_size: value });
    const before = await sha(run.results);
    const r = await runScript("validate_model.ts", ["-s", run.model, "--images", files[0]], []);
    const line = errorLine(r, 1);
    assert.match(line, want);
    assert.match(
      line,
      /_results\.json: .*; repair 2026_0101_000000_results\.json or pass --image_size/,
    );
    assert.equal(await sha(run.results), before);
    // The flag given on the command line wins over the damaged value.
    const ok = await runScript("validate_model.ts", [
      "-s",
      run.model,
      "--images",
      files[0],
      "--image_size",
      "64",
    ], []);
    assert.equal(ok.code, 0, ok.stderr);
    await Deno.remove(run.dir, { recursive: true });
  }
  // A resumed run's saved flags too: the same checks as the command line.
  assert.throws(
    () => resumedFlags({ image_size: 3 }, { image_size: 224 }, new Set(), "x_last.pt", TRAIN_FLAGS),
    /x_last\.pt: setting image_size = 3 is not a valid --image_size \(must be in 32\.\.1024\)/,
  );
  assert.throws(
    () => resumedFlags({ arch: "resnet" }, { arch: "densenet121" }, new Set(), "x", TRAIN_FLAGS),
    /setting arch = "resnet" is not a valid --arch \(expected one of densenet121/,
  );
  assert.equal(
    resumedFlags({ image_size: 64 }, { image_size: 224 }, new Set(), "x", TRAIN_FLAGS).image_size,
    64,
  );
  await Deno.remove(imgs, { recursive: true });
});

Deno.test("class 10: a last batch of one image joins the batch before it", async () => {
  const sizes = async (n: number, b: number, merge: boolean) => {
    async function* samples() {
      let i = 0;
      for await (const s of readShard(FIXTURE_SHARD)) if (i++ < n) yield s;
    }
    const out: number[] = [];
    for await (
      const batch of batches(samples(), { batchSize: b, workers: 2, mergeLastSingle: merge })
    ) {
      out.push(batch.n);
    }
    return out;
  };
  assert.deepEqual(await sizes(50, 7, false), [7, 7, 7, 7, 7, 7, 7, 1]);
  assert.deepEqual(await sizes(50, 7, true), [7, 7, 7, 7, 7, 7, 8]);
  assert.deepEqual(await sizes(15, 7, true), [7, 8]);
  assert.deepEqual(await sizes(16, 7, true), [7, 7, 2]);
  assert.deepEqual(await sizes(8, 7, true), [8]);
  assert.deepEqual(await sizes(1, 7, true), [1]);
  assert.deepEqual(await sizes(5, 1, true), [1, 1, 1, 1, 1]);
  assert.equal(lastBatchNote(50, 8), null);
  assert.match(lastBatchNote(50, 7)!, /50 images at batch size 7 leave a last batch of 1/);

  // The real run: 50 images at -b 7 and 40 px (1×1 final feature map) trains and saves.
  const dataset = await fixtureDatasetDir(["train", "val"]);
  const save = await Deno.makeTempDir({ prefix: "cxr_last1_" });
  const r = await runScript("train_model.ts", [
    ...TINY_TRAIN_ARGS,
    "-b",
    "7",
    "-e",
    "1",
    "--dataset_dir",
    dataset,
    "--save_dir",
    save,
  ], [save]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(
    r.stdout,
    /^note: 50 images at batch size 7 leave a last batch of 1, which BatchNorm cannot train on: it joins the batch before it \(8 images\)$/m,
  );
  const names = [...Deno.readDirSync(save)].map((e) => e.name);
  assert.ok(names.some((n) => n.endsWith("_model.pt")), names.join(" "));
  const results = JSON.parse(
    await Deno.readTextFile(`${save}/${names.find((n) => n.endsWith("_results.json"))}`),
  );
  assert.equal(results.status, "complete");
  assert.equal(results.epochs.length, 1);
  await Deno.remove(dataset, { recursive: true });
  await Deno.remove(save, { recursive: true });

  // Evaluation takes a single value per channel (running statistics): one image at 48 px (a 1×1
  // last feature map) gives the same probabilities on the native backend as on tfjs's cpu.
  const { dir, files } = await fixturePngs(1);
  const probs: number[][] = [];
  const backends = nativeMissingFor("the native 1×1 evaluation check") ? [] : ["native", "cpu"];
  for (const backend of backends) {
    const json = `${dir}/${backend}.json`;
    const v = await runScript("validate_model.ts", [
      "-s",
      TINY,
      "--image_size",
      "48",
      "--backend",
      backend,
      "--images",
      files[0],
      "--json",
      json,
    ], [dir]);
    assert.equal(v.code, 0, v.stderr);
    const rec = JSON.parse(await Deno.readTextFile(json)).images[0];
    probs.push(LABELS.map((l) => rec.probabilities[l]));
  }
  if (backends.length) assertClose(probs[0], probs[1], 1e-5, "native vs cpu, 1×1 map");
  await Deno.remove(dir, { recursive: true });
});

/** Runs train_model.ts, interrupts it when stdout matches `until`, returns all its output. */
async function interruptTraining(args: string[], save: string, until: RegExp) {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-read",
      "--allow-env",
      "--allow-ffi",
      "--allow-sys",
      `--allow-write=${save}`,
      `${ROOT}train_model.ts`,
      ...args,
    ],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  const stderr = new Response(child.stderr).text();
  let stdout = "";
  let sent = false;
  while (true) {
    const { value, done } = await reader.read();
    if (done) break;
    stdout += value;
    if (!sent && until.test(stdout)) {
      child.kill("SIGINT");
      sent = true;
    }
  }
  return { code: (await child.status).code, stdout, stderr: await stderr };
}

Deno.test("Ctrl-C says what was kept and how to continue", async () => {
  const dataset = await fixtureDatasetDir(["train", "val"]);
  const save = await Deno.makeTempDir({ prefix: "cxr_int_" });
  const args = [
    ...TINY_TRAIN_ARGS,
    "-b",
    "5",
    "-e",
    "20",
    "--dataset_dir",
    dataset,
    "--save_dir",
    save,
  ];
  const first = await interruptTraining(args, save, /Epoch 1\//);
  assert.equal(first.code, 130, first.stderr);
  assert.match(
    first.stdout,
    /^Training interrupted in epoch 1, before any epoch finished: no model was saved and there is nothing to resume \(--resume needs a finished epoch\); run the same command again to start anew\. The run's record: .*_results\.json\.$/m,
  );
  assert.ok(!/0 epochs/.test(first.stdout));
  const second = await interruptTraining(args, save, /Epoch 2\//);
  assert.equal(second.code, 130, second.stderr);
  const line = second.stdout.split("\n").find((l) => l.startsWith("Training interrupted"))!;
  assert.match(
    line,
    /^Training interrupted in epoch 2: kept 1 finished epoch, the best model \(epoch 1\) in .*_model\.pt and the state after epoch 1 in (.*_last\.pt); the unfinished epoch 2 is not kept\. Continue with: --resume last \(or --resume .*_last\.pt\)\.$/,
  );
  // What the line names exists and continues.
  const last = /state after epoch 1 in (\S+_last\.pt);/.exec(line)![1];
  assert.ok((await Deno.stat(last)).isFile);
  await Deno.remove(dataset, { recursive: true });
  await Deno.remove(save, { recursive: true });
});

Deno.test("torch.save(model) and TorchScript files: the refusal says to save model.state_dict()", async () => {
  const cases: [string, RegExp][] = [
    [
      "whole_module.pt",
      /whole_module\.pt holds a whole pickled model \(torch\.save\(model\): torch\.nn\.modules\.container\.Sequential\), which is never unpickled here \(it could run any code\): save model\.state_dict\(\) instead, with torch\.save\(model\.state_dict\(\), "model\.pt"\), and pass that file/,
    ],
    [
      "torchscript.pt",
      /torchscript\.pt is a TorchScript file \(torch\.jit\.save\), not a checkpoint: save its weights with torch\.save\(torch\.jit\.load\(PATH\)\.state_dict\(\), "model\.pt"\) and pass that file/,
    ],
  ];
  const { dir, files } = await fixturePngs(1);
  for (const [name, want] of cases) {
    const r = await runScript(
      "validate_model.ts",
      ["-s", `${TORCH}${name}`, "--images", files[0]],
      [],
    );
    assert.match(errorLine(r, 1), want);
  }
  await Deno.remove(dir, { recursive: true });
});

Deno.test("escape, bell and other control characters in --images names never reach the terminal raw", async () => {
  const { dir, files } = await fixturePngs(1);
  const evil = `${dir}/x\x1b[31mred\x07\r\u202egnp.png`;
  await Deno.copyFile(files[0], evil);
  const out = await Deno.makeTempDir({ prefix: "cxr_esc_" });
  const r = await runScript("validate_model.ts", [
    "-s",
    TINY,
    "--images",
    dir,
    "--json",
    `${out}/r.json`,
  ], [out]);
  assert.equal(r.code, 0, r.stderr);
  // deno-lint-ignore no-control-regex -- looking for raw control characters
  const raw = /[\x00-\x08\x0b-\x1f\x7f\u202e]/; // everything but \t and \n
  assert.ok(!raw.test(r.stdout), JSON.stringify(r.stdout.slice(0, 400)));
  assert.ok(!raw.test(r.stderr), JSON.stringify(r.stderr));
  assert.match(r.stdout, new RegExp(esc(`x\\x1b[31mred\\x07\\r\\u{202e}gnp.png: `)));
  // The data keeps the real name.
  const json = JSON.parse(await Deno.readTextFile(`${out}/r.json`));
  assert.ok(json.images.some((i: { image: string }) => i.image === evil));
  // Error lines too: a missing file named with an escape.
  const missing = await runScript("validate_model.ts", [
    "-s",
    TINY,
    "--images",
    `${dir}/\x1b]0;t\x07.png`,
  ], []);
  const line = errorLine(missing, 1);
  assert.ok(!raw.test(missing.stderr));
  assert.ok(line.endsWith(`image not found: ${dir}/\\x1b]0;t\\x07.png`), line);
  assert.equal(shown("Pleural-Thickening é 中"), "Pleural-Thickening é 中");
  assert.equal(shown(shown("a\x1bb")), "a\\x1bb");
  await Deno.remove(dir, { recursive: true });
  await Deno.remove(out, { recursive: true });
});

Deno.test("demo.ts --help lists every backend, native included", async () => {
  const r = await runScript("demo.ts", ["--help"], []);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /--backend .*\{auto,tensorflow,webgpu,native,wasm,cpu\}/);
});

// ---------------------------------------------------------------------------------------------
// Class 11: real NIH radiographs at 1024 px (../shared/fixtures/nih_1024).

const NIH = new URL("../../shared/fixtures/nih_1024/", import.meta.url).pathname;
const haveNih = (() => {
  try {
    return Deno.statSync(`${NIH}images`).isDirectory;
  } catch {
    console.log(`skipping the nih_1024 test: ${NIH}images is absent`);
    return false;
  }
})();

Deno.test({
  name:
    "class 11: a 1024 px NIH image gives the same probabilities and findings by --images as by its shard",
  ignore: !haveNih,
  async fn() {
    const root = await Deno.makeTempDir({ prefix: "cxr_nih_" });
    const datasetDir = `${root}/datasets`;
    const labelsDir = `${root}/labels`;
    const pre = await runScript("preprocess_data.ts", [
      "--image_dir",
      `${NIH}images`,
      "--meta_file",
      `${NIH}Data_Entry_2017_v2020.csv`,
      "--dataset_dir",
      datasetDir,
      "--labels_dir",
      labelsDir,
    ], [root]);
    assert.equal(pre.code, 0, pre.stderr);
    const keys: string[] = [];
    for await (const s of readShard(`${datasetDir}/ChestXray14_test_000.tar`)) keys.push(s.key);
    assert.ok(keys.length >= 10, `${keys.length} test images`);
    const model = await modelWithResults({ image_size: 224 });
    const thresholds = ["-s", model.model];
    const shardRun = await runScript("validate_model.ts", [
      ...thresholds,
      "--dataset_dir",
      datasetDir,
      "--predictions",
      `${root}/shards.csv`,
      "-b",
      "16",
    ], [root]);
    assert.equal(shardRun.code, 0, shardRun.stderr);
    const csv = (await Deno.readTextFile(`${root}/shards.csv`)).trim().split("\n").slice(1)
      .map((l) => l.split(","));
    const byShard = new Map(csv.map((r) => [r[0], r.slice(1).map(Number)]));
    const imgRun = await runScript("validate_model.ts", [
      ...thresholds,
      "--images",
      ...keys.map((k) => `${NIH}images/${k}.png`),
      "--json",
      `${root}/images.json`,
    ], [root]);
    assert.equal(imgRun.code, 0, imgRun.stderr);
    assert.match(imgRun.stderr, /note: images larger than 256 px are first resized to 256/);
    const json = JSON.parse(await Deno.readTextFile(`${root}/images.json`));
    const thr: number[] = json.thresholds;
    let maxDiff = 0;
    for (const rec of json.images) {
      const name = rec.image.split("/").pop();
      const p = LABELS.map((l) => rec.probabilities[l]);
      const q = byShard.get(name)!;
      assert.ok(q, name);
      assert.deepEqual(rec.resized_from, [1024, 1024]);
      assertClose(p, q, 1e-5, name);
      maxDiff = Math.max(maxDiff, ...p.map((v, i) => Math.abs(v - q[i])));
      const findings = (x: number[]) => LABELS.filter((_, c) => x[c] > thr[c]);
      assert.deepEqual(rec.findings, findings(q), name);
    }
    console.log(`  ${json.images.length} NIH images: max |Δp| ${maxDiff.toExponential(2)}`);
    await Deno.remove(root, { recursive: true });
    await Deno.remove(model.dir, { recursive: true });
  },
});
