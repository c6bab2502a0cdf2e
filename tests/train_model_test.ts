import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import {
  fixtureDatasetDir,
  runScript,
  startScriptUntil,
  TINY_TRAIN_ARGS,
} from "./helpers/scripts.ts";
import { initBackend } from "../lib/backends/backend.ts";
import { Adam } from "../lib/train/adam.ts";
import { loadSubset } from "../lib/data/dataset.ts";
import { batchToTensor } from "../lib/eval/inference.ts";
import { bceWithLogits } from "../lib/train/loss.ts";
import { createDenseNet, disposeModel, forward, TINY_DENSENET } from "../lib/model/densenet.ts";
import { loadModel } from "../lib/model/model_loading.ts";
import { Rng } from "../lib/util/rng.ts";
import { trainEpoch } from "../lib/train/training.ts";
import { loadCheckpoint, writeCheckpoint } from "../lib/torch/torch_checkpoint.ts";
import { paramsForImageSize, transformsTest } from "../transforms/augmented_transforms.ts";
import { LABELS } from "../config.ts";

const SIZE = paramsForImageSize(48);
const test = (x: tf.Tensor4D, r: Rng) => transformsTest(x, r, SIZE);

Deno.test("a training epoch on the fixture shard lowers the loss and leaks no tensors", async () => {
  await initBackend("wasm");
  const dir = await fixtureDatasetDir(["train"]);
  const train = await loadSubset({ datasetDir: dir, subset: "train" });
  const model = createDenseNet(TINY_DENSENET, { seed: 1 });
  const adam = new Adam({ lr: 0.003 });
  const evalLoss = async () => {
    let sum = 0, n = 0;
    for await (const b of train.batches({ batchSize: 25, workers: 2 })) {
      const l = tf.tidy(() =>
        bceWithLogits(
          forward(model, test(batchToTensor(b), new Rng(0)), { training: false }),
          tf.tensor2d(b.labels, [b.n, 14]),
        )
      );
      sum += (await l.data())[0] * b.n;
      n += b.n;
      l.dispose();
    }
    return sum / n;
  };
  const before = await evalLoss();
  const rng = new Rng(3);
  const counts: number[] = [];
  for (let epoch = 0; epoch < 3; epoch++) {
    const r = await trainEpoch(
      model,
      adam,
      train.batches({ batchSize: 10, workers: 2 }),
      test,
      rng,
      {
        memoryEfficient: epoch % 2 === 0,
      },
    );
    assert.equal(r.n, 50);
    assert.equal(r.probs.length, 50 * 14);
    assert.ok(Number.isFinite(r.loss));
    counts.push(tf.memory().numTensors);
  }
  const after = await evalLoss();
  assert.ok(after < before, `loss ${before} -> ${after}`);
  assert.equal(counts[1], counts[0], `tensors per epoch ${counts}`);
  assert.equal(counts[2], counts[0], `tensors per epoch ${counts}`);
  adam.dispose();
  disposeModel(model);
  await Deno.remove(dir, { recursive: true });
});

const TRAIN_ARGS = [
  ...TINY_TRAIN_ARGS,
  "-b",
  "25",
];

Deno.test("train_model.ts writes a reloadable checkpoint, results and curves; resumes", async () => {
  const dataset = await fixtureDatasetDir(["train", "val"]);
  const save = await Deno.makeTempDir({ prefix: "cxr_save_" });
  const r = await runScript("train_model.ts", [
    ...TRAIN_ARGS,
    "-e",
    "2",
    "--dataset_dir",
    dataset,
    "--save_dir",
    save,
  ], [save]);
  assert.equal(r.code, 0, r.stderr);
  const files = [...Deno.readDirSync(save)].map((e) => e.name).sort();
  const stamp = files[0].replace(/_curves\.svg$|_last\.pt$|_model\.pt$|_results\.(json|pt)$/, "");
  assert.deepEqual(files, [
    `${stamp}_curves.svg`,
    `${stamp}_last.pt`,
    `${stamp}_model.pt`,
    `${stamp}_results.json`,
    `${stamp}_results.pt`,
  ]);
  const results = JSON.parse(await Deno.readTextFile(`${save}/${stamp}_results.json`));
  assert.equal(results.status, "complete");
  assert.equal(results.epochs.length, 2);
  assert.equal(results.dataset.train.images, 50);
  assert.equal(results.flags.batch_size, 25);
  assert.equal(results.seed, 42);
  assert.ok(results.versions.deno && results.versions.tfjs);
  assert.ok(results.epochs.every((e: { val_loss: number }) => Number.isFinite(e.val_loss)));
  const ckpt = await loadCheckpoint(`${save}/${stamp}_model.pt`);
  assert.equal(ckpt.thresholds?.length, 14);
  assert.deepEqual(Array.from(ckpt.thresholds!), results.best.thresholds);
  assert.equal(ckpt.stateDict.get("features.norm0.num_batches_tracked")?.dtype, "int64");
  const loaded = await loadModel(`${save}/${stamp}_model.pt`);
  assert.deepEqual(loaded.config.blockConfig, [2, 2, 2, 2]);
  disposeModel(loaded.model);
  assert.match(r.stdout, /^Best model results:\n {2}Epoch: +\d$/m);
  for (const label of ["train loss", "val loss", "val mean AUROC"]) {
    assert.ok(r.stdout.includes(label));
  }

  const resumed = await runScript("train_model.ts", [
    ...TRAIN_ARGS,
    "-e",
    "1",
    "-s",
    `${stamp}_model.pt`,
    "--dataset_dir",
    dataset,
    "--save_dir",
    save,
  ], [save]);
  assert.equal(resumed.code, 0, resumed.stderr);
  assert.match(resumed.stderr, /Starting from the weights of .*_model\.pt/);
  await Deno.remove(dataset, { recursive: true });
  await Deno.remove(save, { recursive: true });
});

Deno.test("train_model.ts: Ctrl-C finishes cleanly; non-finite loss stops with a message", async () => {
  const dataset = await fixtureDatasetDir(["train", "val"]);
  const save = await Deno.makeTempDir({ prefix: "cxr_sig_" });
  // Wait for the second epoch, so a checkpoint exists, then interrupt.
  const run = await startScriptUntil(
    "train_model.ts",
    [
      ...TRAIN_ARGS,
      "-b",
      "5",
      "-e",
      "50",
      "--dataset_dir",
      dataset,
      "--save_dir",
      save,
    ],
    [save],
    /Epoch 2\//,
  );
  run.child.kill("SIGINT");
  const status = await run.finish();
  assert.equal(status.code, 130);
  const name = [...Deno.readDirSync(save)].map((e) => e.name).find((n) =>
    n.endsWith("_results.json")
  )!;
  const results = JSON.parse(await Deno.readTextFile(`${save}/${name}`));
  assert.equal(results.status, "interrupted");
  assert.ok(results.epochs.length >= 1);
  assert.ok(![...Deno.readDirSync(save)].some((e) => e.name.endsWith(".tmp")), "no temp files");

  // A starting checkpoint with a huge (finite) classifier overflows the logits: the first
  // batch loss is not finite. (NaN weights are refused at load, see hardening_runs_test.ts.)
  const ckpt = await loadCheckpoint(
    new URL("./fixtures/torch/tiny_zip.pt", import.meta.url).pathname,
  );
  (ckpt.stateDict.get("classifier.0.weight")!.data as Float32Array).fill(3e38);
  await writeCheckpoint(`${save}/nan.pt`, ckpt);
  const nan = await runScript("train_model.ts", [
    ...TRAIN_ARGS,
    "--weights",
    `${save}/nan.pt`,
    "-b",
    "5",
    "-e",
    "3",
    "--dataset_dir",
    dataset,
    "--save_dir",
    save,
  ], [save]);
  assert.notEqual(nan.code, 0);
  assert.match(nan.stderr, /error: training loss became (NaN|-?Infinity) at batch 1 of epoch 1/);
  await Deno.remove(dataset, { recursive: true });
  await Deno.remove(save, { recursive: true });
});

Deno.test("train_model.ts bad input: one line, non-zero exit", async () => {
  const empty = await Deno.makeTempDir();
  const trainOnly = await fixtureDatasetDir(["train"]);
  const cases: [string[], RegExp, number][] = [
    [["--dataset_dir", empty], /ChestXray14_train|no .*train/i, 1],
    [["--dataset_dir", trainOnly], /ChestXray14_val|no .*val/i, 1],
    [["-b", "0"], /--batch_size/, 2],
    [["--bogus"], /bogus/, 2],
    [
      ["--arch", "densenet_tiny", "--dataset_dir", trainOnly],
      /no ImageNet weights|ChestXray14_val/,
      1,
    ],
  ];
  for (const [args, pattern, code] of cases) {
    const r = await runScript("train_model.ts", [...args, "--backend", "cpu"], []);
    assert.equal(r.code, code, `${args.join(" ")}: ${r.stderr}`);
    const lines = r.stderr.trim().split("\n").filter((l) => l.startsWith("error:"));
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0], pattern);
  }
  assert.equal(LABELS.length, 14);
  await Deno.remove(empty, { recursive: true });
  await Deno.remove(trainOnly, { recursive: true });
});
