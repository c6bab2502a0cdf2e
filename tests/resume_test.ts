/**
 * `--resume`: a tiny run killed (SIGKILL) during epoch 2 and resumed ends with the same
 * weights, thresholds and results as the same run left alone.
 * @module
 */
import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-cpu";
import { Adam } from "../lib/train/adam.ts";
import { ReduceLROnPlateau } from "../lib/train/scheduler.ts";
import { Rng } from "../lib/util/rng.ts";
import {
  fixtureDatasetDir,
  runScript,
  startScriptUntil,
  TINY_TRAIN_ARGS,
} from "./helpers/scripts.ts";
import { loadCheckpoint } from "../lib/torch/torch_checkpoint.ts";
import { checkAdamFits, readTrainState } from "../lib/train/train_state.ts";
import { createDenseNet, disposeModel, TINY_DENSENET } from "../lib/model/densenet.ts";

// Augmentation, a patience of 0 and factor 0.5 make the RNG and the scheduler matter.
const ARGS = [
  ...TINY_TRAIN_ARGS,
  "-b",
  "10",
  "-a",
  "-p",
  "0",
  "-f",
  "0.5",
];

function runFiles(dir: string): string[] {
  return [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) => !n.startsWith(".")).sort();
}

/** The results without wall-clock fields. */
function comparable(results: Record<string, unknown>) {
  const epochs = (results.epochs as Record<string, unknown>[]).map(
    ({ seconds: _s, train_images_per_s: _t, ...rest }) => rest,
  );
  return { status: results.status, best: results.best, epochs };
}

async function sameWeights(a: string, b: string): Promise<void> {
  const [ca, cb] = [await loadCheckpoint(a), await loadCheckpoint(b)];
  assert.deepEqual([...ca.stateDict.keys()], [...cb.stateDict.keys()]);
  for (const [key, t] of ca.stateDict) {
    assert.deepEqual(t.data, cb.stateDict.get(key)!.data, `${key} of ${a} vs ${b}`);
  }
  assert.deepEqual(ca.thresholds, cb.thresholds);
}

Deno.test("Adam, ReduceLROnPlateau and Rng continue exactly from their saved state", async () => {
  await tf.setBackend("cpu");
  const grads = [[0.3, -1, 2], [1, 0.5, -0.2], [-0.7, 0.1, 0.9], [0.2, 0.2, -2]];
  const run = async (split: boolean) => {
    const w = tf.tidy(() => tf.variable(tf.tensor1d([1, -2, 0.5]), true, `resume_w_${split}`));
    let adam = new Adam({ lr: 0.01 });
    for (const [i, g] of grads.entries()) {
      if (split && i === 2) {
        const state = await adam.getState();
        adam.dispose();
        adam = new Adam({ lr: 0.01 });
        adam.setState(JSON.parse(JSON.stringify({ ...state, m: null, v: null })));
        adam.setState(state);
      }
      const grad = tf.tensor1d(g);
      adam.apply([w], { [w.name]: grad });
      grad.dispose();
    }
    const out = Array.from(await w.data());
    adam.dispose();
    w.dispose();
    return out;
  };
  const before = tf.memory().numTensors;
  assert.deepEqual(await run(true), await run(false));
  assert.equal(tf.memory().numTensors, before, "no tensors leak");

  // A drop at loss 4, then a cooldown epoch that only a restored counter skips.
  const losses = [1, 0.9, 0.95, 0.97, 0.98, 0.99, 0.8, 0.85, 0.86, 0.87];
  const whole = new ReduceLROnPlateau(0.1, { factor: 0.5, patience: 1, cooldown: 1 });
  const first = new ReduceLROnPlateau(0.1, { factor: 0.5, patience: 1, cooldown: 1 });
  const lrs = losses.map((l) => (whole.step(l), whole.lr));
  losses.slice(0, 4).forEach((l) => first.step(l));
  const second = new ReduceLROnPlateau(0.1, { factor: 0.5, patience: 1, cooldown: 1 });
  second.restore(JSON.parse(JSON.stringify(first.toJSON())));
  assert.deepEqual(
    [...lrs.slice(0, 4), ...losses.slice(4).map((l) => (second.step(l), second.lr))],
    lrs,
  );

  // Moments of another model are refused with one line, not a tfjs broadcast error later.
  const model = createDenseNet(TINY_DENSENET, { seed: 1 });
  const layout = [...model.variables.values()].filter((v) => v.trainable).map((v) => v.name);
  const m = new Float32Array(10);
  assert.throws(
    () => checkAdamFits({ step: 3, layout, m, v: m }, model, "x_last.pt"),
    /x_last\.pt: Adam's moments \(10 values\) do not fit the model's \d+ parameters/,
  );
  disposeModel(model);

  const a = new Rng(7), b = new Rng(7);
  a.normal(); // leaves a spare normal draw in the state
  b.normal();
  const c = new Rng(0);
  c.setState(JSON.parse(JSON.stringify(a.getState())));
  assert.deepEqual([c.normal(), c.next(), c.normal()], [b.normal(), b.next(), b.normal()]);
});

Deno.test("--resume after a SIGKILL in epoch 2 (run directory moved) ends as the run left alone", async () => {
  const dataset = await fixtureDatasetDir(["train", "val"]);
  const alone = await Deno.makeTempDir({ prefix: "cxr_alone_" });
  const killed = await Deno.makeTempDir({ prefix: "cxr_killed_" });
  const common = [...ARGS, "-e", "3", "--dataset_dir", dataset];

  const full = await runScript("train_model.ts", [...common, "--save_dir", alone], [alone]);
  assert.equal(full.code, 0, full.stderr);

  const run = await startScriptUntil(
    "train_model.ts",
    [...common, "--save_dir", killed],
    [killed],
    /Epoch 2\//,
  );
  run.child.kill("SIGKILL");
  await run.finish();
  const [stamp] = runFiles(killed)[0].split(/_(?:curves|last|model|results)\b/);
  let base = `${killed}/${stamp}`;
  const interrupted = JSON.parse(await Deno.readTextFile(`${base}_results.json`));
  assert.equal(interrupted.status, "running");
  assert.equal(interrupted.epochs.length, 1);
  assert.equal((await readTrainState(`${base}_last.pt`)).progress.epoch, 1);

  // Settings that decide the numbers cannot change on resume.
  const changed = await runScript("train_model.ts", [
    "--resume",
    "last",
    "-b",
    "5",
    "--save_dir",
    killed,
    "--dataset_dir",
    dataset,
  ], [killed]);
  assert.equal(changed.code, 1);
  assert.match(changed.stderr, /error: --batch_size 5 differs from the run being resumed .*: drop/);

  // The run's directory may move (a new disk): resumed in place, given any of its files.
  const moved = `${killed}_moved`;
  await Deno.rename(killed, moved);
  // Two processes resuming it at once: one continues the run, the other is refused.
  const resume = () =>
    runScript("train_model.ts", [
      "--resume",
      `${moved}/${stamp}_results.json`,
      "--dataset_dir",
      dataset,
    ], [moved]);
  const both = await Promise.all([resume(), resume()]);
  const resumed = both.find((r) => r.code === 0)!;
  const refused = both.find((r) => r !== resumed)!;
  assert.ok(resumed, both.map((r) => r.stderr).join("\n"));
  assert.equal(refused.code, 1, refused.stderr);
  assert.match(
    refused.stderr,
    /error: .*_last\.pt: the run (is still going on in another process|already has 3 of 3)/,
  );
  assert.match(resumed.stderr, new RegExp(`Resuming run ${stamp} after epoch 1`));
  assert.match(resumed.stdout, /Epoch 2\/3/);
  assert.ok(!/Epoch 1\//.test(resumed.stdout));

  base = `${moved}/${stamp}`;
  // One run, same stamp, same results file, epochs appended; no temp or new files.
  assert.deepEqual(runFiles(moved), [
    `${stamp}_curves.svg`,
    `${stamp}_last.pt`,
    `${stamp}_model.pt`,
    `${stamp}_results.json`,
    `${stamp}_results.pt`,
  ]);
  const hidden = [...Deno.readDirSync(moved)].map((e) => e.name).filter((n) => n.startsWith("."));
  assert.ok(!hidden.some((n) => n.endsWith(".tmp")), hidden.join(", "));
  const [aloneStamp] = runFiles(alone)[0].split(/_(?:curves|last|model|results)\b/);
  const a = JSON.parse(await Deno.readTextFile(`${alone}/${aloneStamp}_results.json`));
  const b = JSON.parse(await Deno.readTextFile(`${base}_results.json`));
  assert.deepEqual(comparable(b), comparable(a));
  assert.equal(b.status, "complete");
  assert.equal(b.started, interrupted.started);
  assert.equal(b.resumed.length, 1);
  assert.equal(b.model, `${base}_model.pt`);
  assert.equal(b.flags.save_dir, moved);
  assert.ok(a.epochs.some((e: { lr_lowered: boolean }) => e.lr_lowered), "scheduler acted");
  await sameWeights(`${alone}/${aloneStamp}_model.pt`, `${base}_model.pt`);
  await sameWeights(`${alone}/${aloneStamp}_last.pt`, `${base}_last.pt`);
  const [sa, sb] = [
    await readTrainState(`${alone}/${aloneStamp}_last.pt`),
    await readTrainState(`${base}_last.pt`),
  ];
  assert.deepEqual(sb.adam, sa.adam);
  assert.deepEqual(sb.progress.rng, sa.progress.rng);
  assert.deepEqual(sb.progress.scheduler, sa.progress.scheduler);

  // A complete run is not "last"; extending it needs a larger -e.
  const none = await runScript("train_model.ts", ["--resume", "last", "--save_dir", moved], []);
  assert.equal(none.code, 1);
  assert.match(none.stderr, /error: no unfinished run in .*: pass --resume PATH/);
  const done = await runScript("train_model.ts", ["--resume", `${base}_results.json`], []);
  assert.match(done.stderr, /error: .*_last\.pt: the run already has 3 of 3 epochs; pass -e N/);
  await Deno.remove(dataset, { recursive: true });
  await Deno.remove(alone, { recursive: true });
  await Deno.remove(moved, { recursive: true });
});
