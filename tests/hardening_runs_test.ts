/**
 * Issue 14, runs and exit paths: each case builds its bad input, runs the real script and
 * checks the exit code, the one error line (what, which file, what to do) and that nothing was
 * lost or overwritten.
 * @module
 */
import assert from "node:assert/strict";
import {
  fixtureDatasetDir,
  runScript,
  type ScriptResult,
  startScriptUntil,
  TINY_TRAIN_ARGS,
} from "./helpers/scripts.ts";
import { buildOriginalData, FIXTURE_SHARD } from "./helpers/original_data.ts";
import { readShard } from "../lib/data/webdataset.ts";
import { loadCheckpoint, writeCheckpoint } from "../lib/torch/torch_checkpoint.ts";
import type { Checkpoint } from "../lib/torch/state_dict.ts";
import { newestSavedModel, reserveRunPaths } from "../lib/util/saved_models.ts";
import { removeDeadTemps, tempPathFor } from "../lib/util/atomic_file.ts";
import { createDenseNet, disposeModel, TINY_DENSENET } from "../lib/model/densenet.ts";
import { loadStateDict } from "../lib/model/model_weights.ts";
import { initBackend } from "../lib/backends/backend.ts";

const TINY = new URL("./fixtures/torch/tiny_zip.pt", import.meta.url).pathname;
const TRAIN = [...TINY_TRAIN_ARGS, "-b", "25"];
const VALIDATE = ["--image_size", "48", "-b", "25"];

/** The single `error:` line of a failed run (asserts there is exactly one). */
function errorLine(r: ScriptResult, code: number): string {
  assert.equal(r.code, code, `exit ${r.code}, stderr:\n${r.stderr}`);
  const lines = r.stderr.trim().split("\n").filter((l) => l.startsWith("error:"));
  assert.equal(lines.length, 1, r.stderr);
  assert.ok(!/\n\s+at /.test(r.stderr), `no stack trace:\n${r.stderr}`);
  return lines[0];
}

async function tinyCheckpoint(edit: (c: Checkpoint) => void): Promise<string> {
  const c = await loadCheckpoint(TINY);
  c.thresholds = new Float64Array(14).fill(0.5);
  edit(c);
  const path = `${await Deno.makeTempDir({ prefix: "cxr_ckpt_" })}/bad_model.pt`;
  await writeCheckpoint(path, c);
  return path;
}

async function snapshot(dir: string): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for await (const e of Deno.readDir(dir)) out[e.name] = (await Deno.stat(`${dir}/${e.name}`)).size;
  return out;
}

Deno.test("class 1: runs started in the same second get distinct names; each pair matches", async () => {
  const save = await Deno.makeTempDir({ prefix: "cxr_names_" });
  const date = new Date(2026, 0, 2, 3, 4, 5);
  const paths = await Promise.all([1, 2, 3, 4].map(() => reserveRunPaths(save, date, false)));
  assert.deepEqual(paths.map((p) => p.stamp).sort(), [
    "2026_0102_030405",
    "2026_0102_030405_2",
    "2026_0102_030405_3",
    "2026_0102_030405_4",
  ]);
  // A model of an older run (e.g. copied from the original tool) also keeps its name.
  await Deno.writeTextFile(`${save}/2026_0102_030406_model.pt`, "x");
  const next = await reserveRunPaths(save, new Date(2026, 0, 2, 3, 4, 6), false);
  assert.equal(next.stamp, "2026_0102_030406_2");
  await Deno.remove(save, { recursive: true });

  // Two real trainings started together into one --save_dir: two runs, each results file
  // naming its own model, whose thresholds are that run's.
  const dataset = await fixtureDatasetDir(["train", "val"]);
  const dir = await Deno.makeTempDir({ prefix: "cxr_twin_" });
  const args = [...TRAIN, "-e", "1", "--dataset_dir", dataset, "--save_dir", dir];
  const runs = await Promise.all([
    runScript("train_model.ts", [...args, "--seed", "1"], [dir]),
    runScript("train_model.ts", [...args, "--seed", "2"], [dir]),
  ]);
  for (const r of runs) assert.equal(r.code, 0, r.stderr);
  const results = [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) =>
    n.endsWith("_results.json")
  );
  assert.equal(results.length, 2, results.join(", "));
  const seeds = new Set();
  for (const name of results) {
    const json = JSON.parse(await Deno.readTextFile(`${dir}/${name}`));
    assert.equal(json.model, `${dir}/${name.replace("_results.json", "_model.pt")}`);
    const ckpt = await loadCheckpoint(json.model);
    assert.deepEqual(Array.from(ckpt.thresholds!), json.best.thresholds);
    seeds.add(json.seed);
  }
  assert.equal(seeds.size, 2);
  await Deno.remove(dataset, { recursive: true });
  await Deno.remove(dir, { recursive: true });
});

Deno.test("class 3: NaN weights refused at load; NaN thresholds warned once; -s '' and stray words refused", async () => {
  const nan = await tinyCheckpoint((c) => {
    (c.stateDict.get("features.denseblock2.denselayer1.conv1.weight")!.data as Float32Array)[7] =
      NaN;
  });
  const test = await fixtureDatasetDir(["test", "train", "val"]);
  const nanRuns: [string, string[]][] = [
    ["validate_model.ts", [...VALIDATE, "-s", nan]],
    ["validate_model.ts", [...VALIDATE, "-s", nan, "--images", TINY]],
    ["train_model.ts", [...TRAIN, "-s", nan]],
    ["train_model.ts", [...TRAIN, "--weights", nan]],
  ];
  await Promise.all(nanRuns.map(async ([script, args]) => {
    const save = await Deno.makeTempDir();
    const line = errorLine(
      await runScript(script, [...args, "--dataset_dir", test, "--save_dir", save], [save]),
      1,
    );
    assert.ok(line.includes(nan), line);
    assert.match(line, /'features\.denseblock2\.denselayer1\.conv1\.weight' holds NaN/);
    assert.match(line, /use another checkpoint/);
    assert.deepEqual(await snapshot(save), {}, "nothing written");
    await Deno.remove(save, { recursive: true });
  }));

  const nanThresholds = await tinyCheckpoint((c) => {
    c.thresholds![2] = NaN;
    c.thresholds![5] = Infinity;
  });
  const r = await runScript("validate_model.ts", [
    ...VALIDATE,
    "-f",
    "-s",
    nanThresholds,
    "--dataset_dir",
    test,
  ], []);
  assert.equal(r.code, 0, r.stderr);
  const warnings = r.stderr.split("\n").filter((l) => l.startsWith("warning:"));
  assert.equal(warnings.length, 1, r.stderr);
  assert.match(warnings[0], /not finite for Effusion, Nodule; F1 there uses 0\.5/);

  await Promise.all([
    ...["train_model.ts", "validate_model.ts"].map(async (script) => {
      const line = errorLine(await runScript(script, ["-s", ""], []), 2);
      assert.match(line, /empty value for --saved_model: give a PATH or leave the flag out/);
    }),
    ...["train_model.ts", "preprocess_data.ts"].map(async (script) => {
      const line = errorLine(await runScript(script, ["data/x"], []), 2);
      assert.match(line, /unexpected argument 'data\/x': \S+ takes only options/);
    }),
  ]);
  await Deno.remove(test, { recursive: true });
});

Deno.test("class 4: a head that is not 14 classes is refused before any batch", async () => {
  const heads: [string, (c: Checkpoint) => void, RegExp][] = [
    [
      "15 classes",
      (c) => {
        c.stateDict.set("classifier.0.weight", {
          dtype: "float32",
          shape: [15, 32],
          data: new Float32Array(15 * 32),
        });
        c.stateDict.set("classifier.0.bias", {
          dtype: "float32",
          shape: [15],
          data: new Float32Array(15),
        });
        c.thresholds = null;
      },
      /has the head classifier\.0\.weight \[15,32\], classifier\.0\.bias \[15\], not a 14-class Linear\(32, 14\)/,
    ],
    ["transposed", (c) => {
      const w = c.stateDict.get("classifier.0.weight")!;
      c.stateDict.set("classifier.0.weight", { ...w, shape: [32, 14] });
    }, /classifier\.0\.weight \[32,14\]/],
    ["no head", (c) => {
      c.stateDict.delete("classifier.0.weight");
      c.stateDict.delete("classifier.0.bias");
    }, /has no classifier, not a 14-class/],
  ];
  const dataset = await fixtureDatasetDir(["test", "train", "val"]);
  // A real image for --images (the inputs are listed before the model loads since issue 25).
  const images = await Deno.makeTempDir({ prefix: "cxr_head_imgs_" });
  for await (const s of readShard(FIXTURE_SHARD)) {
    await Deno.writeFile(`${images}/${s.key}.png`, s.png);
    break;
  }
  for (const [what, edit, pattern] of heads) {
    const path = await tinyCheckpoint(edit);
    const save = await Deno.makeTempDir();
    const runs: [string, string[]][] = [
      ["validate_model.ts", [...VALIDATE, "-s", path]],
      ["validate_model.ts", [...VALIDATE, "-s", path, "--images", images]],
      ["train_model.ts", [...TRAIN, "-s", path]],
    ];
    await Promise.all(runs.map(async ([script, args]) => {
      const r = await runScript(script, [...args, "--dataset_dir", dataset, "--save_dir", save], [
        save,
      ]);
      const line = errorLine(r, 1);
      assert.ok(line.includes(path), `${what}: ${line}`);
      assert.match(line, pattern, what);
      assert.ok(!/Validation complete|Epoch 1|\.png: /.test(r.stdout), `${what}: ran batches`);
    }));
    assert.deepEqual(await snapshot(save), {}, "train wrote nothing");
  }
  await Deno.remove(images, { recursive: true });
  await Deno.remove(dataset, { recursive: true });
});

Deno.test("class 6: SIGTERM and SIGHUP end training like Ctrl-C; dead runs' temp files are removed", async () => {
  const dataset = await fixtureDatasetDir(["train", "val"]);
  for (const [signal, code] of [["SIGTERM", 143], ["SIGHUP", 129]] as const) {
    const save = await Deno.makeTempDir({ prefix: "cxr_sig_" });
    const run = await startScriptUntil(
      "train_model.ts",
      [...TRAIN, "-b", "5", "-e", "50", "--dataset_dir", dataset, "--save_dir", save],
      [save],
      /Epoch 2\//,
    );
    if (signal === "SIGTERM") {
      // A run still going on is not resumed by a second process.
      const last = [...Deno.readDirSync(save)].map((e) => e.name).find((n) =>
        n.endsWith("_last.pt")
      );
      const again = await runScript("train_model.ts", ["--resume", `${save}/${last}`], []);
      assert.match(
        errorLine(again, 1),
        /_last\.pt: the run is still going on in another process; stop it first/,
      );
      const newest = await runScript(
        "train_model.ts",
        ["--resume", "last", "--save_dir", save],
        [],
      );
      assert.match(errorLine(newest, 1), /no unfinished run in/);
    }
    run.child.kill(signal);
    assert.equal((await run.finish()).code, code, signal);
    const name = [...Deno.readDirSync(save)].map((e) => e.name).find((n) =>
      n.endsWith("_results.json")
    )!;
    const results = JSON.parse(await Deno.readTextFile(`${save}/${name}`));
    assert.equal(results.status, "interrupted", signal);
    assert.equal(results.signal, signal);
    assert.ok(results.epochs.length >= 1);
    const left = [...Deno.readDirSync(save)].map((e) => e.name).filter((n) => n.startsWith("."));
    assert.deepEqual(left, [], "no temp or lock files left");
    await Deno.remove(save, { recursive: true });
  }

  // Temp files: one of a writer killed with SIGKILL mid-write, one of a live writer (this test).
  const save = await Deno.makeTempDir({ prefix: "cxr_tmp_" });
  const module = new URL("../lib/util/atomic_file.ts", import.meta.url).href;
  const writer = new Deno.Command(Deno.execPath(), {
    args: [
      "eval",
      `import { tempPathFor } from "${module}";
      const tmp = tempPathFor("${save}/2026_0101_000000_model.pt");
      Deno.writeFileSync(tmp, new Uint8Array(1000));
      console.log(tmp);
      await new Promise(() => {});`,
    ],
    stdout: "piped",
  }).spawn();
  const line = await writer.stdout.pipeThrough(new TextDecoderStream()).getReader().read();
  const deadTemp = line.value!.trim().split("/").pop()!;
  writer.kill("SIGKILL");
  await writer.status;
  const deadAlive = `.${writer.pid}.alive`;
  assert.deepEqual((await snapshot(save))[deadTemp], 1000);
  // An alive file is removed only once older than a minute (its owner may be locking it).
  const old = new Date(Date.now() - 120_000);
  await Deno.utime(`${save}/${deadAlive}`, old, old);
  const liveTemp = tempPathFor(`${save}/2026_0101_000000_last.pt`).split("/").pop()!;
  await Deno.writeTextFile(`${save}/${liveTemp}`, "being written");
  await Deno.writeTextFile(`${save}/.notes.txt`, "not ours");
  const r = await runScript("train_model.ts", [
    ...TRAIN,
    "-e",
    "1",
    "--dataset_dir",
    dataset,
    "--save_dir",
    save,
  ], [save]);
  assert.equal(r.code, 0, r.stderr);
  const names = new Set([...Deno.readDirSync(save)].map((e) => e.name));
  assert.ok(!names.has(deadTemp), "dead writer's temp removed");
  assert.ok(!names.has(deadAlive), "dead writer's alive file removed");
  assert.ok(names.has(liveTemp), "live process's temp kept");
  assert.ok(names.has(`.${Deno.pid}.alive`), "live process's alive file kept");
  assert.ok(names.has(".notes.txt"));
  assert.ok(![...names].some((n) => /_results\.json$/.test(n) && n.startsWith(".")));
  assert.deepEqual(removeDeadTemps(save), [], "nothing more to remove");
  await Deno.remove(save, { recursive: true });
  await Deno.remove(dataset, { recursive: true });
});

Deno.test("classes 7 and 8: bounded --image_size; clear lines for a file as a directory, -b -3, -s DIR", async () => {
  const cases: [string, string[], RegExp][] = [
    ["train_model.ts", ["--image_size", "5000"], /--image_size: 5000 \(must be in 32\.\.1024\)/],
    ["validate_model.ts", ["--image_size", "16"], /--image_size: 16 \(must be in 32\.\.1024\)/],
    ["train_model.ts", ["-b", "-3"], /invalid value for --batch_size: -3 \(must be ≥ 1\)/],
    ["validate_model.ts", ["-b", "-3"], /--batch_size: -3 \(must be ≥ 1\)/],
    ["train_model.ts", ["-l", "-0.5"], /--learning_rate: -0\.5 \(must be ≥ 0\)/],
  ];
  await Promise.all(cases.map(async ([script, args, pattern]) => {
    assert.match(errorLine(await runScript(script, args, []), 2), pattern, args.join(" "));
  }));

  const dir = await Deno.makeTempDir({ prefix: "cxr_dirs_" });
  await Deno.writeTextFile(`${dir}/file`, "keep me");
  const dataset = await fixtureDatasetDir(["train", "val"]);
  const line = errorLine(
    await runScript("train_model.ts", [
      ...TRAIN,
      "--dataset_dir",
      dataset,
      "--save_dir",
      `${dir}/file/models`,
    ], [dir]),
    1,
  );
  assert.match(
    line,
    /--save_dir .*\/file\/models: .*\/file is a file, not a directory; pass a directory/,
  );
  assert.equal(await Deno.readTextFile(`${dir}/file`), "keep me");

  const data = await buildOriginalData(8);
  const pre = errorLine(
    await runScript("preprocess_data.ts", [
      "--image_dir",
      data.imageDir,
      "--meta_file",
      data.metaFile,
      "--labels_dir",
      data.labelsDir,
      "--dataset_dir",
      `${dir}/file`,
    ], [data.root, dir]),
    1,
  );
  assert.match(pre, /--dataset_dir .*\/file: .*\/file is a file, not a directory/);
  assert.equal(await Deno.readTextFile(`${dir}/file`), "keep me");

  for (const script of ["train_model.ts", "validate_model.ts"]) {
    const r = await runScript(script, ["-s", dir, "--dataset_dir", dataset], []);
    assert.match(
      errorLine(r, 1),
      /is a directory, not a model file: pass a checkpoint in it, such as .*<stamp>_model\.pt/,
    );
  }

  // Shape mismatches are counted in correct English.
  await initBackend("cpu");
  const model = createDenseNet(TINY_DENSENET, { seed: 1 });
  const ckpt = await loadCheckpoint(TINY);
  for (const key of ["features.conv0.weight", "features.norm0.weight"]) {
    const t = ckpt.stateDict.get(key)!;
    ckpt.stateDict.set(key, { ...t, shape: [1, ...t.shape], data: t.data });
  }
  assert.throws(() => loadStateDict(model, ckpt.stateDict), /2 shape mismatches \(/);
  disposeModel(model);
  await Deno.remove(data.root, { recursive: true });
  await Deno.remove(dataset, { recursive: true });
  await Deno.remove(dir, { recursive: true });
});

Deno.test("class 9: a symlinked checkpoint loads, as given and as the newest in --save_dir", async () => {
  const save = await Deno.makeTempDir({ prefix: "cxr_link_" });
  const target = await tinyCheckpoint(() => {});
  await Deno.symlink(target, `${save}/2026_0101_000000_model.pt`);
  assert.equal(await newestSavedModel(save), `${save}/2026_0101_000000_model.pt`);
  const dataset = await fixtureDatasetDir(["test"]);
  const r = await runScript("validate_model.ts", [
    ...VALIDATE,
    "--save_dir",
    save,
    "--dataset_dir",
    dataset,
  ], []);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /Loading from 2026_0101_000000_model\.pt\.[\s\S]*Mean AUROC/);
  // As given (a relative link name resolved in --save_dir), to validate and to train from.
  await Deno.symlink(target, `${save}/linked.pt`);
  await Deno.copyFile(
    `${dataset}/ChestXray14_test_000.tar`,
    `${dataset}/ChestXray14_train_000.tar`,
  );
  await Deno.copyFile(`${dataset}/ChestXray14_test_000.tar`, `${dataset}/ChestXray14_val_000.tar`);
  const out = await Deno.makeTempDir({ prefix: "cxr_link_out_" });
  const [v, t] = await Promise.all([
    runScript("validate_model.ts", [
      ...VALIDATE,
      "-s",
      "linked.pt",
      "--save_dir",
      save,
      "--dataset_dir",
      dataset,
    ], []),
    runScript("train_model.ts", [
      ...TRAIN,
      "-e",
      "1",
      "-s",
      `${save}/linked.pt`,
      "--dataset_dir",
      dataset,
      "--save_dir",
      out,
    ], [out]),
  ]);
  assert.equal(v.code, 0, v.stderr);
  assert.match(v.stdout, /Loading from linked\.pt\./);
  assert.equal(t.code, 0, t.stderr);
  assert.match(t.stderr, /Starting from the weights of .*linked\.pt/);
  assert.equal(Deno.lstatSync(`${save}/linked.pt`).isSymlink, true, "the link is kept");
  await Deno.remove(save, { recursive: true });
  await Deno.remove(out, { recursive: true });
  await Deno.remove(dataset, { recursive: true });
});
