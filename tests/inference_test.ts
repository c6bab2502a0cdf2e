import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import { initBackend } from "../lib/backends/backend.ts";
import { batches } from "../lib/data/dataset.ts";
import { batchToTensor, predictBatches } from "../lib/eval/inference.ts";
import { disposeModel, predict } from "../lib/model/densenet.ts";
import { loadModel } from "../lib/model/model_loading.ts";
import { Rng } from "../lib/util/rng.ts";
import { readShard } from "../lib/data/webdataset.ts";
import { transformsTest, transformsTestTenCrop } from "../transforms/augmented_transforms.ts";
import { FIXTURE_SHARD } from "./helpers/original_data.ts";
import { assertClose } from "./assert.ts";

async function* firstSamples(n: number) {
  let i = 0;
  for await (const s of readShard(FIXTURE_SHARD)) {
    if (i++ >= n) return;
    yield s;
  }
}

Deno.test("ten-crop TTA equals the mean over ten hand-made crops (corners, centre, mirrors)", async () => {
  await initBackend("wasm");
  const { model } = await loadModel(
    new URL("./fixtures/torch/tiny_zip.pt", import.meta.url).pathname,
  );
  const before = tf.memory().numTensors;
  const tta = await predictBatches(
    model,
    batches(firstSamples(3), { batchSize: 3, workers: 2 }),
    transformsTestTenCrop,
    new Rng(0),
    { views: 10 },
  );
  assert.equal(tta.n, 3);
  // By hand: the five 224 crops of the 256 image and their horizontal mirrors.
  const manual = new Float32Array(3 * 14);
  for await (const b of batches(firstSamples(3), { batchSize: 3, workers: 2 })) {
    const offsets = [[0, 0], [0, 32], [32, 0], [32, 32], [16, 16]];
    const probs = tf.tidy(() => {
      const x = batchToTensor(b);
      const views = offsets.flatMap(([y, xo]) => {
        const crop = tf.slice(x, [0, y, xo, 0], [3, 224, 224, 3]);
        return [crop, tf.reverse(crop, 2)];
      });
      const outs = views.map((v) => predict(model, transformsTest(v as tf.Tensor4D)));
      return tf.div(tf.addN(outs), outs.length);
    });
    manual.set(await probs.data());
    probs.dispose();
  }
  assertClose(tta.probs, manual, 1e-5, "ten-crop probabilities");
  assert.equal(tf.memory().numTensors, before);
  disposeModel(model);
});
