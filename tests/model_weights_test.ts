/** State dict ↔ DenseNet: names, layouts, order, strict checks, torch fixture files. */
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-cpu";
import assert from "node:assert/strict";
import {
  createDenseNet,
  type DenseNet,
  disposeModel,
  forward,
  TINY_DENSENET,
} from "../lib/model/densenet.ts";
import {
  loadStateDict,
  normalizeStateDictKeys,
  stateDictFromModel,
  StateDictMismatchError,
} from "../lib/model/model_weights.ts";
import type { HostTensor, StateDict } from "../lib/torch/state_dict.ts";
import { UserError } from "../lib/util/errors.ts";
import { loadCheckpoint } from "../lib/torch/torch_checkpoint.ts";

await tf.setBackend("cpu");

const reference = JSON.parse(
  Deno.readTextFileSync(new URL("./fixtures/model/reference.json", import.meta.url)),
);
const TORCH = new URL("./fixtures/torch/", import.meta.url);

/** A model whose every value differs from a fresh one: trained-looking BN stats and counters. */
function modelWithState(seed: number): DenseNet {
  const model = createDenseNet(TINY_DENSENET, { seed });
  const x = tf.randomNormal([2, 32, 32, 3], 0, 1, "float32", seed) as tf.Tensor4D;
  tf.tidy(() => forward(model, x, { training: true }));
  x.dispose();
  return model;
}

function copyStateDict(sd: StateDict): StateDict {
  return new Map([...sd].map(([k, t]) => [k, { ...t, shape: [...t.shape], data: t.data.slice() }]));
}

function assertSameStateDict(a: StateDict, b: StateDict): void {
  assert.deepEqual([...a.keys()], [...b.keys()]);
  for (const [k, t] of a) {
    const u = b.get(k)!;
    assert.equal(u.dtype, t.dtype, k);
    assert.deepEqual(u.shape, t.shape, k);
    assert.deepEqual(u.data, t.data, k);
  }
}

Deno.test("stateDictFromModel: torchvision names, order, layouts and dtypes", async () => {
  const model = modelWithState(1);
  try {
    const sd = await stateDictFromModel(model);
    assert.deepEqual([...sd.keys()], reference.tiny_state_dict_keys);
    assert.deepEqual(sd.get("features.conv0.weight")!.shape, [16, 3, 7, 7]);
    assert.deepEqual(sd.get("features.denseblock1.denselayer1.conv1.weight")!.shape, [
      32,
      16,
      1,
      1,
    ]);
    assert.deepEqual(sd.get("features.denseblock1.denselayer1.conv2.weight")!.shape, [8, 32, 3, 3]);
    assert.deepEqual(sd.get("classifier.0.weight")!.shape, [14, 32]);
    const nbt = sd.get("features.norm0.num_batches_tracked")!;
    assert.equal(nbt.dtype, "int64");
    assert.deepEqual(nbt.shape, []);
    assert.deepEqual(nbt.data, BigInt64Array.of(1n));
    // conv layout: torch [o, i, y, x] is tfjs [y, x, i, o].
    const w = sd.get("features.conv0.weight")!.data as Float32Array;
    const v = model.conv0.arraySync();
    assert.equal(w[((5 * 3 + 2) * 7 + 1) * 7 + 4], v[1][4][2][5]);
    const c = sd.get("classifier.0.weight")!.data as Float32Array;
    assert.equal(c[3 * 32 + 10], model.classifier.weight.arraySync()[10][3]);
    assert.ok(sd.get("features.norm5.running_var")!.data.every((x) => x !== 1));
  } finally {
    disposeModel(model);
  }
});

Deno.test("stateDictFromModel → loadStateDict round trip is exact", async () => {
  const a = modelWithState(1);
  const b = createDenseNet(TINY_DENSENET, { seed: 2 });
  try {
    const sd = await stateDictFromModel(a);
    const report = loadStateDict(b, sd);
    assert.equal(report.loaded, sd.size);
    assert.equal(report.newClassifier, false);
    assert.deepEqual(report.notes, []);
    assertSameStateDict(await stateDictFromModel(b), sd);
    const x = tf.randomNormal([2, 32, 32, 3], 0, 1, "float32", 9) as tf.Tensor4D;
    const pa = tf.tidy(() => forward(a, x, { training: false }).dataSync());
    const pb = tf.tidy(() => forward(b, x, { training: false }).dataSync());
    assert.deepEqual(pb, pa);
    x.dispose();
  } finally {
    disposeModel(a);
    disposeModel(b);
  }
});

Deno.test("legacy names, plain classifier and DataParallel prefix normalise", async () => {
  const model = modelWithState(3);
  try {
    const sd = await stateDictFromModel(model);
    const legacy: StateDict = new Map();
    for (const [k, t] of sd) {
      const old = k.replace(/(denselayer\d+\.(?:norm|conv))([12])\./, "$1.$2.")
        .replace(/^classifier\.0\./, "classifier.");
      legacy.set(`module.${old}`, t);
    }
    assert.ok(legacy.has("module.features.denseblock1.denselayer1.norm.1.weight"));
    assert.ok(legacy.has("module.features.denseblock2.denselayer2.conv.2.weight"));
    assert.ok(legacy.has("module.classifier.weight"));
    assert.deepEqual([...normalizeStateDictKeys(legacy).keys()], [...sd.keys()]);
    const fresh = createDenseNet(TINY_DENSENET, { seed: 4 });
    loadStateDict(fresh, legacy);
    assertSameStateDict(await stateDictFromModel(fresh), sd);
    disposeModel(fresh);
    // The same name twice (legacy and new) is an error, not a silent pick.
    const dup = new Map(sd);
    dup.set("classifier.weight", sd.get("classifier.0.weight")!);
    assert.throws(() => normalizeStateDictKeys(dup), UserError);
  } finally {
    disposeModel(model);
  }
});

Deno.test("missing, unexpected and wrong-shape keys are listed; nothing is loaded", async () => {
  const source = modelWithState(5);
  const target = createDenseNet(TINY_DENSENET, { seed: 6 });
  try {
    const before = await stateDictFromModel(target);
    const sd = copyStateDict(await stateDictFromModel(source));
    sd.delete("features.norm5.weight");
    sd.delete("features.denseblock2.denselayer1.conv1.weight");
    sd.set("features.extra.weight", { dtype: "float32", shape: [2], data: new Float32Array(2) });
    const bad: HostTensor = { dtype: "float32", shape: [8, 32, 1, 3], data: new Float32Array(768) };
    sd.set("features.denseblock1.denselayer1.conv2.weight", bad);
    let err: unknown;
    try {
      loadStateDict(target, sd, { source: "bad.pt" });
    } catch (e) {
      err = e;
    }
    assert.ok(err instanceof StateDictMismatchError);
    assert.ok(err instanceof UserError);
    assert.deepEqual(err.missing, [
      "features.denseblock2.denselayer1.conv1.weight",
      "features.norm5.weight",
    ]);
    assert.deepEqual(err.unexpected, ["features.extra.weight"]);
    assert.deepEqual(err.mismatched, [{
      key: "features.denseblock1.denselayer1.conv2.weight",
      expected: [8, 32, 3, 3],
      got: [8, 32, 1, 3],
    }]);
    assert.ok(!err.message.includes("\n"));
    for (const s of ["bad.pt", "features.norm5.weight", "features.extra.weight", "[8,32,1,3]"]) {
      assert.ok(err.message.includes(s), `message mentions ${s}: ${err.message}`);
    }
    assertSameStateDict(await stateDictFromModel(target), before);
    // A 1000-way classifier is a mismatch unless a new classifier is allowed.
    const imagenet = copyStateDict(await stateDictFromModel(source));
    imagenet.delete("classifier.0.weight");
    imagenet.delete("classifier.0.bias");
    imagenet.set("classifier.weight", {
      dtype: "float32",
      shape: [1000, 32],
      data: new Float32Array(32000).fill(0.5),
    });
    imagenet.set("classifier.bias", {
      dtype: "float32",
      shape: [1000],
      data: new Float32Array(1000),
    });
    assert.throws(
      () => loadStateDict(target, imagenet),
      (e: unknown) =>
        e instanceof StateDictMismatchError &&
        e.mismatched.map((m) => m.key).join() === "classifier.0.weight,classifier.0.bias",
    );
    assertSameStateDict(await stateDictFromModel(target), before);
  } finally {
    disposeModel(source);
    disposeModel(target);
  }
});

Deno.test("allowNewClassifier keeps a fresh head for a 1000-way state dict", async () => {
  const source = createDenseNet({ ...TINY_DENSENET, numClasses: 1000 }, { seed: 7 });
  const target = createDenseNet(TINY_DENSENET, { seed: 8 });
  try {
    const head = target.classifier.weight.dataSync().slice();
    // Old torchvision files: plain Linear head, no num_batches_tracked.
    const sd: StateDict = new Map();
    for (const [k, t] of await stateDictFromModel(source)) {
      if (k.endsWith("num_batches_tracked")) continue;
      sd.set(k.replace(/^classifier\.0\./, "classifier."), t);
    }
    const report = loadStateDict(target, sd, { allowNewClassifier: true });
    assert.equal(report.newClassifier, true);
    assert.equal(report.notes.length, 2);
    assert.match(report.notes[0], /\[1000,32\].*new 14-way classifier/);
    assert.match(report.notes[1], /num_batches_tracked/);
    assert.deepEqual(target.classifier.weight.dataSync(), head);
    assert.deepEqual(target.conv0.dataSync(), source.conv0.dataSync());
    assert.equal(target.norm0.numBatchesTracked, 0);
    // Everything but the head must still match.
    sd.delete("features.norm0.bias");
    assert.throws(
      () => loadStateDict(target, sd, { allowNewClassifier: true }),
      (e: unknown) =>
        e instanceof StateDictMismatchError && e.missing.join() === "features.norm0.bias",
    );
  } finally {
    disposeModel(source);
    disposeModel(target);
  }
});

Deno.test("torch fixtures tiny_zip.pt and tiny_legacy.pth load into TINY_DENSENET alike", async () => {
  const zip = await loadCheckpoint(new URL("tiny_zip.pt", TORCH).pathname);
  const legacy = await loadCheckpoint(new URL("tiny_legacy.pth", TORCH).pathname);
  const a = createDenseNet(TINY_DENSENET, { seed: 1 });
  const b = createDenseNet(TINY_DENSENET, { seed: 2 });
  try {
    const ra = loadStateDict(a, zip.stateDict, { source: "tiny_zip.pt" });
    const rb = loadStateDict(b, legacy.stateDict, { source: "tiny_legacy.pth" });
    assert.equal(ra.loaded, reference.tiny_state_dict_keys.length);
    assert.equal(rb.newClassifier, false);
    const sa = await stateDictFromModel(a);
    assertSameStateDict(await stateDictFromModel(b), sa);
    // The zip file's tensors come back bit-exact through our layouts.
    for (const [k, t] of zip.stateDict) {
      const ours = sa.get(k)!;
      assert.deepEqual(ours.shape, t.shape, k);
      if (t.dtype === "int64") assert.deepEqual(ours.data, t.data, k);
      else assert.deepEqual(ours.data, Float32Array.from(t.data as Float32Array), k);
    }
  } finally {
    disposeModel(a);
    disposeModel(b);
  }
});
