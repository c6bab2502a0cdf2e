/**
 * Output paths outside data/ through the scoped `deno task`s (issue 15 friction 1, issue 14
 * class 4): a missing write permission or an unwritable path stops the run before any compute,
 * in one line that names the flag and the path (never a temp file), and the command the
 * message gives works as printed.
 */
import assert from "node:assert/strict";
import { fixtureDatasetDir } from "./helpers/scripts.ts";
import { commandWithWriteAccess, outputDir, shellQuote } from "../lib/util/output_paths.ts";
import { tempPathFor, writeFileAtomic } from "../lib/util/atomic_file.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const TINY = `${ROOT}tests/fixtures/torch/tiny_zip.pt`;
const dec = new TextDecoder();

async function run(cmd: string, args: string[]) {
  const out = await new Deno.Command(cmd, {
    args,
    cwd: ROOT,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

const task = (name: string, args: string[]) => run(Deno.execPath(), ["task", name, "--", ...args]);

function errorLine(stderr: string): string {
  const lines = stderr.split("\n").filter((l) => l.startsWith("error:"));
  assert.equal(lines.length, 1, stderr);
  assert.doesNotMatch(stderr, /^\s+at /m, "no stack trace");
  assert.doesNotMatch(lines[0], /\.tmp\b|write-check/, "no temp file named");
  return lines[0];
}

Deno.test("deno task validate: outputs outside data/ fail at start with a command that works", async () => {
  const out = await Deno.makeTempDir({ prefix: "cxr_out_" });
  const dataset = await fixtureDatasetDir(["test"]);
  const args = [
    "-s",
    TINY,
    "--dataset_dir",
    dataset,
    "--image_size",
    "64",
    "--json",
    `${out}/sub dir/r.json`,
    "--report",
    `${out}/r.html`,
    "--predictions",
    `${out}/p.csv`,
  ];
  const denied = await task("validate", args);
  assert.equal(denied.code, 1);
  assert.doesNotMatch(denied.stdout, /Loading from|Validation/, "stopped before any compute");
  const line = errorLine(denied.stderr);
  assert.match(line, /--json .*r\.json/);
  assert.match(line, /--report .*r\.html/);
  const command = line.split("run instead: ")[1];
  assert.ok(command, line);
  assert.match(command, new RegExp(`--allow-write=data,${out}( |$)`), "outermost dir only");
  for await (const _ of Deno.readDir(out)) assert.fail("nothing written before the check");

  const ok = await run("sh", ["-c", command]);
  assert.equal(ok.code, 0, ok.stderr);
  const json = JSON.parse(await Deno.readTextFile(`${out}/sub dir/r.json`));
  assert.equal(json.n_images, 50);
  assert.match(await Deno.readTextFile(`${out}/r.html`), /<!DOCTYPE html>/);
  assert.equal((await Deno.readTextFile(`${out}/p.csv`)).trim().split("\n").length, 51);
  await Deno.remove(out, { recursive: true });
  await Deno.remove(dataset, { recursive: true });
});

Deno.test("deno task train: --save_dir outside data/ fails before the model is built", async () => {
  const out = await Deno.makeTempDir({ prefix: "cxr_save_" });
  const dataset = await fixtureDatasetDir(["train", "val"]);
  const r = await task("train", ["--save_dir", `${out}/models`, "--dataset_dir", dataset]);
  assert.doesNotMatch(r.stdout + r.stderr, /Starting from|Epoch 1/, "stopped before the model");
  assert.equal(r.code, 1);
  const line = errorLine(r.stderr);
  assert.match(line, new RegExp(`--save_dir ${out}/models`));
  assert.match(
    line,
    new RegExp(`--allow-write=data,\\$HOME/\\.cache/augmented-chest-xray,${out}/models `),
  );
  assert.match(line, /--allow-net=download\.pytorch\.org train_model\.ts --save_dir/);
  await Deno.remove(out, { recursive: true });
  await Deno.remove(dataset, { recursive: true });
});

Deno.test("unwritable outputs: one line naming the flag, before any compute", async () => {
  const out = await Deno.makeTempDir({ prefix: "cxr_bad_" });
  await Deno.writeTextFile(`${out}/a_file`, "x");
  const cases: [string[], RegExp][] = [
    [
      ["--predictions", `${out}/a_file/p.csv`],
      /--predictions .*a_file: .*a_file is a file, not a directory/,
    ],
    [["--report", out], /--report .*: it is a directory; give a file name$/],
  ];
  for (const [extra, pattern] of cases) {
    const r = await run(Deno.execPath(), [
      "run",
      "--allow-read",
      "--allow-env",
      "--allow-ffi",
      "--allow-sys",
      `--allow-write=${out}`,
      "validate_model.ts",
      "-s",
      TINY,
      "--json",
      `${out}/r.json`,
      ...extra,
    ]);
    assert.equal(r.code, 1, extra.join(" "));
    assert.match(errorLine(r.stderr), pattern);
    assert.doesNotMatch(r.stdout, /Loading from/);
  }
  await Deno.remove(out, { recursive: true });
});

Deno.test("output path helpers: directories, quoting, the command from deno.json", async () => {
  assert.equal(outputDir({ path: "r.json", kind: "file" }), ".");
  assert.equal(outputDir({ path: "/r.json", kind: "file" }), "/");
  assert.equal(outputDir({ path: "a/b/r.json", kind: "file" }), "a/b");
  assert.equal(outputDir({ path: "a/cam/", kind: "dir" }), "a/cam");
  assert.equal(shellQuote("/tmp/x y"), `'/tmp/x y'`);
  assert.equal(shellQuote("it's"), `'it'\\''s'`);
  assert.equal(shellQuote("--json"), "--json");
  const cmd = await commandWithWriteAccess("validate_model.ts", ["--", "--json", "/o/r.json"], [
    "/o",
  ]);
  assert.match(
    cmd,
    /^(cd \S+ && )?deno run --allow-read .*--allow-write=data,\/o validate_model\.ts --json \/o\/r\.json$/,
  );
});

Deno.test("a write that fails late names the user's path, not the temp file", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cxr_late_" });
  const path = `${dir}/r.html`;
  await Deno.mkdir(tempPathFor(path)); // a directory in the way makes the temp write fail
  const err = await writeFileAtomic(path, "x").catch((e) => e as Error);
  assert.ok(err instanceof Error, "the write fails");
  assert.doesNotMatch(err.message, /\.r\.html\.\d+\.tmp/);
  assert.ok(err.message.includes(path), err.message);
  await Deno.remove(dir, { recursive: true });
});
