import assert from "node:assert/strict";
import { assertClose } from "./assert.ts";
import { fixtureDatasetDir, runScript } from "./helpers/scripts.ts";

// The GPU code path, on whatever adapter this machine has (Mesa's lavapipe in CI).
const adapter = await navigator.gpu?.requestAdapter().catch(() => null);
if (!adapter) console.log("skipping WebGPU tests: no WebGPU adapter (install mesa-vulkan-drivers)");

const fixtures = new URL("./fixtures/torch/", import.meta.url).pathname;

Deno.test({
  name: "WebGPU: validate_model.ts reproduces PyTorch and train_model.ts trains an epoch",
  ignore: !adapter,
  async fn() {
    const dataset = await fixtureDatasetDir(["train", "val", "test"]);
    const out = await Deno.makeTempDir({ prefix: "cxr_wgpu_" });
    const val = await runScript("validate_model.ts", [
      "--backend",
      "webgpu",
      "-s",
      `${fixtures}tiny_zip.pt`,
      "--dataset_dir",
      dataset,
      "-b",
      "25",
      "--predictions",
      `${out}/p.csv`,
    ], [out]);
    assert.equal(val.code, 0, val.stderr);
    assert.match(val.stderr, /backend: webgpu/);
    const expected = JSON.parse(await Deno.readTextFile(`${fixtures}tiny_expected.json`));
    const rows = (await Deno.readTextFile(`${out}/p.csv`)).trim().split("\n").slice(1)
      .map((l) => l.split(",").slice(1).map(Number));
    assertClose(rows.flat(), expected.predictions.flat(), 2e-3, "webgpu predictions");

    const train = await runScript("train_model.ts", [
      "--backend",
      "webgpu",
      "--arch",
      "densenet_tiny",
      "--weights",
      "none",
      "--image_size",
      "32",
      "-e",
      "1",
      "-b",
      "25",
      "--dataset_dir",
      dataset,
      "--save_dir",
      out,
    ], [out]);
    assert.equal(train.code, 0, train.stderr);
    // auto decides per adapter (on for a software one such as lavapipe) and says which, on the
    // backend line.
    assert.match(train.stderr, /^backend: webgpu \(.*\); --memory_efficient auto: (on|off) \(/m);
    assert.ok([...Deno.readDirSync(out)].some((e) => e.name.endsWith("_model.pt")));
    await Deno.remove(dataset, { recursive: true });
    await Deno.remove(out, { recursive: true });
  },
});
