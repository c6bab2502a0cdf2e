/**
 * The three entry scripts give the same results whatever the working directory: run once from
 * an unrelated temporary directory and once from the repository root, with absolute data paths,
 * their outputs must be byte-identical (shards, label CSVs, predictions) or equal (JSON results).
 * This is what a compiled executable, started from anywhere, relies on.
 * @module
 */
import assert from "node:assert/strict";
import { buildOriginalData } from "./helpers/original_data.ts";
import { fixtureDatasetDir, runScript } from "./helpers/scripts.ts";
import { readTar } from "../lib/data/tar.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const TINY_MODEL = new URL("fixtures/torch/tiny_zip.pt", import.meta.url).pathname;

/**
 * Name → bytes of every file under `dir` (recursively). A tar shard stands for its members'
 * names and contents: the writer stamps member headers with the time of writing, as Python's
 * webdataset does, so two runs' shards differ in those header bytes only.
 */
async function filesUnder(dir: string, prefix = ""): Promise<Map<string, Uint8Array>> {
  const out = new Map<string, Uint8Array>();
  for await (const e of Deno.readDir(dir)) {
    const rel = `${prefix}${e.name}`;
    if (e.isDirectory) {
      for (const [k, v] of await filesUnder(`${dir}/${e.name}`, `${rel}/`)) out.set(k, v);
    } else if (e.name.endsWith(".tar")) out.set(rel, await tarContent(`${dir}/${e.name}`));
    else out.set(rel, await Deno.readFile(`${dir}/${e.name}`));
  }
  return out;
}

/** A tar file's member names, types and data, without header timestamps. */
async function tarContent(path: string): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  for await (const m of readTar(path)) {
    parts.push(new TextEncoder().encode(`${m.name}\0${m.type}\0${m.data.length}\0`), m.data);
  }
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let offset = 0;
  for (const p of parts) {
    out.set(p, offset);
    offset += p.length;
  }
  return out;
}

function assertSameFiles(a: Map<string, Uint8Array>, b: Map<string, Uint8Array>, what: string) {
  assert.deepEqual([...a.keys()].sort(), [...b.keys()].sort(), `${what}: file names`);
  for (const [name, bytes] of a) {
    assert.ok(bytes.length > 0, `${what}: ${name} is empty`);
    assert.deepEqual(bytes, b.get(name), `${what}: ${name} differs`);
  }
}

/** Runs `script` in `cwd`, writing only under `outDir` (a fresh temp dir per run). */
async function runIn(cwd: string, script: string, args: (out: string) => string[]) {
  const out = await Deno.makeTempDir({ prefix: "cxr_cwd_out_" });
  const r = await runScript(script, args(out), [out], { cwd });
  assert.equal(r.code, 0, `${script} from ${cwd}: ${r.stderr}`);
  return { out, r };
}

Deno.test("entry scripts give identical results from any working directory", async (t) => {
  const elsewhere = await Deno.makeTempDir({ prefix: "cxr_cwd_" });
  const cleanup: string[] = [elsewhere];
  try {
    await t.step("preprocess_data.ts: same label CSVs and shard contents", async () => {
      const data = await buildOriginalData(20);
      cleanup.push(data.root);
      const args = (out: string) => [
        "--image_dir",
        data.imageDir,
        "--meta_file",
        data.metaFile,
        "--labels_dir",
        `${out}/labels`,
        "--dataset_dir",
        `${out}/datasets`,
        "--image_size",
        "64",
      ];
      const a = await runIn(elsewhere, "preprocess_data.ts", args);
      const b = await runIn(ROOT, "preprocess_data.ts", args);
      cleanup.push(a.out, b.out);
      const filesA = await filesUnder(a.out);
      assert.ok([...filesA.keys()].some((k) => k.endsWith(".tar")), "no shard written");
      assert.ok([...filesA.keys()].some((k) => k.endsWith("_labels.csv")), "no label CSV");
      assertSameFiles(filesA, await filesUnder(b.out), "preprocess");
      assert.deepEqual(await Array.fromAsync(Deno.readDir(elsewhere)), [], "wrote into the cwd");
    });

    await t.step("train_model.ts: same checkpoint and per-epoch results", async () => {
      const dataset = await fixtureDatasetDir(["train", "val"]);
      cleanup.push(dataset);
      const args = (out: string) => [
        ...["--arch", "densenet_tiny", "--weights", "none", "--image_size", "32", "-e", "1"],
        ...["-b", "25", "--backend", "wasm", "--dataset_dir", dataset, "--save_dir", out],
      ];
      const a = await runIn(elsewhere, "train_model.ts", args);
      const b = await runIn(ROOT, "train_model.ts", args);
      cleanup.push(a.out, b.out);
      const [filesA, filesB] = [await filesUnder(a.out), await filesUnder(b.out)];
      const model = (m: Map<string, Uint8Array>) =>
        [...m.keys()].find((k) => k.endsWith("_model.pt"));
      const results = (m: Map<string, Uint8Array>) =>
        JSON.parse(
          new TextDecoder().decode(m.get(model(m)!.replace("_model.pt", "_results.json"))),
        );
      const [ra, rb] = [results(filesA), results(filesB)];
      assert.equal(ra.epochs.length, 1);
      assert.deepEqual(ra.epochs.map(withoutTimes), rb.epochs.map(withoutTimes));
      assert.deepEqual(ra.best.thresholds, rb.best.thresholds);
      assert.deepEqual(
        filesA.get(model(filesA)!),
        filesB.get(model(filesB)!),
        "checkpoints differ",
      );
      assert.deepEqual(await Array.fromAsync(Deno.readDir(elsewhere)), [], "wrote into the cwd");
    });

    await t.step("validate_model.ts: same JSON results and predictions", async () => {
      const dataset = await fixtureDatasetDir(["test"]);
      cleanup.push(dataset);
      const args = (out: string) => [
        ...["-s", TINY_MODEL, "--dataset_dir", dataset, "-b", "25", "--backend", "wasm"],
        ...["--json", `${out}/results.json`, "--predictions", `${out}/predictions.csv`],
      ];
      const a = await runIn(elsewhere, "validate_model.ts", args);
      const b = await runIn(ROOT, "validate_model.ts", args);
      cleanup.push(a.out, b.out);
      const json = async (dir: string) =>
        withoutTimes(JSON.parse(await Deno.readTextFile(`${dir}/results.json`)));
      const ja = await json(a.out);
      assert.equal(ja.n_images, 50);
      assert.deepEqual(ja, await json(b.out));
      assertSameFiles(
        new Map([["p", await Deno.readFile(`${a.out}/predictions.csv`)]]),
        new Map([["p", await Deno.readFile(`${b.out}/predictions.csv`)]]),
        "validate predictions",
      );
    });
  } finally {
    for (const dir of cleanup) await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});

/** Keys of wall-clock figures (durations, rates, timestamps), which differ run to run. */
const WALL_CLOCK = /time|seconds|date|stamp|elapsed|per_s$/i;

/** A copy of `o` without wall-clock fields. */
function withoutTimes<T>(o: T): T {
  return JSON.parse(JSON.stringify(o, (k, v) => WALL_CLOCK.test(k) ? undefined : v));
}
