/**
 * The tiny torchvision DenseNet of tests/fixtures/model/ (make_reference.py, torch 1.13 /
 * torchvision 0.14): its reference tensors, its weights as a model, its images, and tfjs ↔ torch
 * layouts, for the tests that compare with PyTorch.
 */
import * as tf from "@tensorflow/tfjs-core";
import assert from "node:assert/strict";
import { createDenseNet, type DenseNet, TINY_DENSENET } from "../../lib/model/densenet.ts";
import { loadStateDict } from "../../lib/model/model_weights.ts";
import type { StateDict } from "../../lib/torch/state_dict.ts";

export const FIXTURES = new URL("../fixtures/model/", import.meta.url);

export interface Reference {
  header: {
    bce_loss: number;
    num_batches_tracked: number;
    trainable_params: number;
    trainable_params_1000: number;
    running_stat_elements: number;
    densenet121: {
      trainable_params_1000: number;
      trainable_params_14: number;
      running_stat_elements: number;
      state_dict_keys_14: string[];
    };
    tiny_state_dict_keys: string[];
    tensors: Record<string, { shape: number[]; offset: number }>;
  };
  get(name: string): { shape: number[]; data: Float32Array };
}

export const ref: Reference = (() => {
  const header = JSON.parse(Deno.readTextFileSync(new URL("reference.json", FIXTURES)));
  const bytes = Deno.readFileSync(new URL("reference.bin", FIXTURES));
  const all = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
  return {
    header,
    get(name: string) {
      const e = header.tensors[name];
      assert.ok(e, `reference tensor ${name}`);
      const n = e.shape.reduce((a: number, b: number) => a * b, 1);
      return { shape: e.shape, data: all.slice(e.offset, e.offset + n) };
    },
  };
})();

/** The reference weights as a torch state dict (num_batches_tracked from the header). */
export function referenceStateDict(): StateDict {
  const sd: StateDict = new Map();
  for (const key of ref.header.tiny_state_dict_keys) {
    if (key.endsWith("num_batches_tracked")) {
      sd.set(key, {
        dtype: "int64",
        shape: [],
        data: BigInt64Array.of(BigInt(ref.header.num_batches_tracked)),
      });
    } else {
      const t = ref.get(`weights/${key}`);
      sd.set(key, { dtype: "float32", shape: t.shape, data: t.data });
    }
  }
  return sd;
}

export function referenceModel(): DenseNet {
  const model = createDenseNet(TINY_DENSENET, { seed: 5 });
  loadStateDict(model, referenceStateDict());
  return model;
}

/** NCHW reference images → NHWC tensor. */
export function referenceImages(name: string): tf.Tensor4D {
  const t = ref.get(name);
  return tf.tidy(() =>
    tf.transpose(tf.tensor4d(t.data, t.shape as [number, number, number, number]), [0, 2, 3, 1])
  );
}

/** torch layout of a tfjs-layout array (conv [kh,kw,in,out] → [out,in,kh,kw], linear transpose). */
export function torchLayout(t: tf.Tensor): Float32Array {
  return tf.tidy(() => {
    if (t.rank === 4) return tf.transpose(t, [3, 2, 0, 1]).dataSync() as Float32Array;
    if (t.rank === 2) return tf.transpose(t).dataSync() as Float32Array;
    return t.dataSync().slice() as Float32Array;
  });
}
