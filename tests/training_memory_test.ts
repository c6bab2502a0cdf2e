/**
 * The training-memory estimate (lib/train/training_memory.ts): its parameter count is the model's,
 * it reproduces the measured wasm-heap limits of DenseNet-121 (batch 24 trains at 224² with
 * checkpointing, 32 does not; plain batch 8 does not), and a step that cannot fit the heap is
 * refused before the first batch with one line naming the batch that fits.
 */
import assert from "node:assert/strict";
import {
  ARCHITECTURES,
  countParams,
  createDenseNet,
  DENSENET121,
  disposeModel,
  TINY_DENSENET,
} from "../lib/model/densenet.ts";
import { checkTrainingFits, parameterCount } from "../lib/train/training_memory.ts";
import { UserError } from "../lib/util/errors.ts";
import { fixtureDatasetDir, runScript } from "./helpers/scripts.ts";

Deno.test("training memory: parameter count equals the model's", () => {
  for (const { config } of Object.values(ARCHITECTURES)) {
    const model = createDenseNet(config);
    assert.equal(parameterCount(config), countParams(model), JSON.stringify(config));
    disposeModel(model);
  }
});

Deno.test("training memory: the measured wasm-heap limits of DenseNet-121", () => {
  checkTrainingFits("wasm", DENSENET121, 24, 224, true);
  // native: batch 48 checkpointed measured at 2.4 GB of tensors; 64 is past the heap.
  checkTrainingFits("native", DENSENET121, 48, 224, true);
  assert.throws(
    () => checkTrainingFits("native", DENSENET121, 64, 224, true),
    /batch 64, 224² needs ~[\d.]+ GB .*use -b \d+ or less/,
  );
  checkTrainingFits("native", DENSENET121, 12, 224, false);
  assert.throws(
    () => checkTrainingFits("wasm", DENSENET121, 32, 224, true),
    (e: Error) =>
      e instanceof UserError &&
      /batch 32, 224² needs ~[\d.]+ GB .*use -b \d+ or less/.test(e.message),
  );
  assert.throws(
    () => checkTrainingFits("native", DENSENET121, 16, 224, false),
    /--memory_efficient on/,
  );
  assert.throws(
    () => checkTrainingFits("wasm", TINY_DENSENET, 50, 1024, true),
    /use -b \d+ or less/,
  );
  // No hard heap limit on these backends.
  checkTrainingFits("webgpu", DENSENET121, 64, 224, false);
  checkTrainingFits("cpu", DENSENET121, 64, 224, true);
});

Deno.test("train_model.ts refuses a batch the wasm heap cannot hold, before the first step", async () => {
  const dataset = await fixtureDatasetDir(["train", "val"]);
  const save = await Deno.makeTempDir({ prefix: "cxr_heap_" });
  try {
    const r = await runScript(
      "train_model.ts",
      [
        ...["--arch", "densenet_tiny", "--weights", "none", "--backend", "wasm"],
        ...[
          "--image_size",
          "1024",
          "-b",
          "50",
          "-e",
          "1",
          "--dataset_dir",
          dataset,
          "--save_dir",
          save,
        ],
      ],
      [save],
      { timeoutMs: 120_000 },
    );
    assert.equal(r.code, 1, r.stderr);
    const errors = r.stderr.split("\n").filter((l) => l.startsWith("error: "));
    assert.equal(errors.length, 1, r.stderr);
    assert.match(
      errors[0],
      /batch 50, 1024² needs ~[\d.]+ GB of tensor memory, more than the wasm backend's 3\.6 GB heap: use -b \d+ or less/,
    );
    assert.ok(!/Epoch 1\//.test(r.stdout), "no training step ran");
  } finally {
    await Deno.remove(dataset, { recursive: true });
    await Deno.remove(save, { recursive: true });
  }
});
