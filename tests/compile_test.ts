/**
 * The single-file `validate_model` executable (built as `deno task compile` builds it) evaluates
 * seed_model.pt on the fixture shard like PyTorch. Skipped, saying why, where it cannot be built:
 * `deno compile` downloads its runtime (denort) from dl.deno.land, which offline machines cannot
 * reach (that attempt fails within seconds), or when seed_model.pt is absent.
 * @module
 */
import assert from "node:assert/strict";
import { assertClose } from "./assert.ts";
import { fixtureDatasetDir, seedModelPath } from "./helpers/scripts.ts";
import { compileScript, embeddedFiles, isRuntimeDownloadFailure } from "../scripts/compile.ts";

const fixtures = new URL("./fixtures/torch/", import.meta.url).pathname;
const DICOM = new URL("./fixtures/dicom/", import.meta.url).pathname;
const SEED = seedModelPath();

Deno.test("compile embeds files that exist (wasm binaries, the threaded build and its worker, the DICOM codecs)", async () => {
  const root = new URL("../", import.meta.url).pathname;
  const files = embeddedFiles();
  assert.ok(files.some((f) => f.endsWith("lib/backends/wasm_threads_worker.cjs")), files.join());
  for (const codec of ["openjpegwasm_decode.wasm", "openjphjs.wasm", "charlswasm_decode.wasm"]) {
    assert.ok(files.some((f) => f.endsWith(`/${codec}`)), `${codec} not embedded`);
  }
  for (const f of files) {
    const stat = await Deno.stat(f.startsWith("/") ? f : root + f);
    assert.ok(stat.isFile && stat.size > 0, `${f} is missing or empty`);
  }
});

/** Builds dist-like `validate_model` in a temp dir; the path, or why it cannot be built. */
async function buildValidateModel(): Promise<{ exe: string } | { skip: string }> {
  const outDir = await Deno.makeTempDir({ prefix: "cxr_compile_" });
  const result = await compileScript("validate_model.ts", {
    outDir,
    check: false, // `deno task check` type-checks; this test is about the executable
    downloadTimeoutMs: 20_000,
    timeoutMs: 240_000,
  });
  if (!result.ok) {
    await Deno.remove(outDir, { recursive: true });
    if (result.runtimeUnavailable || isRuntimeDownloadFailure(result.stderr)) {
      return { skip: result.message };
    }
    throw new Error(`${result.message}\n${result.stderr}`);
  }
  const exe = `${outDir}/validate_model`;
  // A DENORT_BIN pointing at the full deno CLI "compiles" but yields deno itself.
  const help = await new Deno.Command(exe, { args: ["-h"], stdout: "piped", stderr: "piped" })
    .output();
  if (!new TextDecoder().decode(help.stdout).includes("usage: validate_model")) {
    await Deno.remove(outDir, { recursive: true });
    return { skip: `the built executable is not our program (is DENORT_BIN the deno CLI?)` };
  }
  return { exe };
}

const built = SEED === null ? { skip: "seed_model.pt is absent" } : await buildValidateModel();
if ("skip" in built) console.log(`skipping compiled validate_model test: ${built.skip}`);

Deno.test({
  name: "compiled validate_model reproduces PyTorch on seed_model.pt from an unrelated cwd",
  ignore: "skip" in built,
  async fn() {
    const exe = (built as { exe: string }).exe;
    const expected = JSON.parse(await Deno.readTextFile(`${fixtures}expected.json`)) as {
      keys: string[];
      plain: { predictions: number[][]; auroc: (number | null)[] };
    };
    const dataset = await fixtureDatasetDir(["test"]);
    const cwd = await Deno.makeTempDir({ prefix: "cxr_compiled_run_" });
    // The executable may write under data/ of its working directory only (its task's grant).
    const outDir = `${cwd}/data`;
    await Deno.mkdir(outDir);
    try {
      const out = await new Deno.Command(exe, {
        args: [
          ...["-s", SEED!, "--dataset_dir", dataset, "-b", "25", "--backend", "wasm"],
          ...["--json", `${outDir}/results.json`, "--predictions", `${outDir}/p.csv`],
        ],
        cwd,
        stdout: "piped",
        stderr: "piped",
        env: { NO_COLOR: "1" },
      }).output();
      const stderr = new TextDecoder().decode(out.stderr);
      assert.equal(out.code, 0, stderr);
      const json = JSON.parse(await Deno.readTextFile(`${outDir}/results.json`));
      assert.equal(json.n_images, 50);
      assert.equal(json.backend, "wasm");
      const [header, ...rows] = (await Deno.readTextFile(`${outDir}/p.csv`)).trim().split("\n");
      assert.ok(header.startsWith("Image Index,"));
      assert.deepEqual(rows.map((r) => r.split(",")[0].replace(/\.png$/, "")), expected.keys);
      const predictions = rows.flatMap((r) => r.split(",").slice(1).map(Number));
      assertClose(predictions, expected.plain.predictions.flat(), 2e-3, "predictions");
      const defined = (xs: (number | null)[]) => xs.filter((x): x is number => x !== null);
      assertClose(defined(json.auroc), defined(expected.plain.auroc), 2e-3, "AUROC");

      // DICOM through each codec (the embedded wasm of JPEG 2000, HTJ2K and JPEG-LS; JPEG
      // Lossless in JavaScript): each predicts as the uncompressed twin.
      const dicom = ["cr16.dcm", "cr16_j2k.dcm", "cr16_htj2k.dcm", "cr16_jls.dcm", "cr16_sv1.dcm"];
      const images = await Deno.makeTempDir({ dir: cwd });
      for (const f of dicom) await Deno.copyFile(`${DICOM}${f}`, `${images}/${f}`);
      const run = await new Deno.Command(exe, {
        args: ["-s", SEED!, "--backend", "wasm", "--images", images, "--json", `${outDir}/i.json`],
        cwd,
        stdout: "piped",
        stderr: "piped",
        env: { NO_COLOR: "1" },
      }).output();
      assert.equal(run.code, 0, new TextDecoder().decode(run.stderr));
      const doc = JSON.parse(await Deno.readTextFile(`${outDir}/i.json`));
      const probs = new Map<string, number[]>(
        doc.images.map((r: { image: string; probabilities: Record<string, number> }) => [
          r.image.split("/").pop(),
          Object.values(r.probabilities),
        ]),
      );
      assert.equal(probs.size, dicom.length);
      for (const f of dicom) assertClose(probs.get(f)!, probs.get("cr16.dcm")!, 1e-6, f);
    } finally {
      await Deno.remove(dataset, { recursive: true });
      await Deno.remove(cwd, { recursive: true });
      await Deno.remove(exe.slice(0, exe.lastIndexOf("/")), { recursive: true });
    }
  },
});
