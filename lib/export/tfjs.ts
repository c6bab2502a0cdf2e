/**
 * The export graph as a TF.js graph model: `model.json` (a TensorFlow GraphDef in its JSON
 * form, the signature, the weights manifest, `userDefinedMetadata`) and the weights in 4 MB
 * shards, as tfjs-converter writes them, so `tf.loadGraphModel` reads it in the browser, Deno
 * and Node. Layout NHWC: input `image` `[N, H, W, 3]`, outputs `probabilities` `[N, 14]`,
 * `class_activation_maps` `[N, h, w, 14]`, `features` `[N, h, w, C]`.
 * @module
 */
import { NUM_CLASSES } from "../../config.ts";
import { type ExportGraph, INPUT, OUTPUTS, type Step } from "./graph.ts";
import { featureMapSide } from "../model/topology.ts";

/** tfjs-converter's default shard size. */
export const SHARD_BYTES = 4 * 1024 * 1024;

type Attr = Record<string, unknown>;
interface TfNode {
  name: string;
  op: string;
  input: string[];
  attr: Attr;
}
interface WeightEntry {
  name: string;
  shape: number[];
  dtype: "float32" | "int32";
}

const b64 = (s: string) => btoa(s);
const FLOAT = { type: "DT_FLOAT" };
const intList = (values: number[]) => ({ list: { i: values.map(String) } });
const str = (s: string) => ({ s: b64(s) });
const tensorShape = (shape: number[]) => ({
  dim: shape.map((d) => ({ size: String(d) })),
});

/** torch `[out, in, kh, kw]` → TensorFlow `[kh, kw, in, out]`. */
export function toHwio(w: Float32Array, [o, i, kh, kw]: readonly number[]): Float32Array {
  const out = new Float32Array(w.length);
  for (let a = 0; a < o; a++) {
    for (let b = 0; b < i; b++) {
      for (let y = 0; y < kh; y++) {
        for (let x = 0; x < kw; x++) {
          out[((y * kw + x) * i + b) * o + a] = w[((a * i + b) * kh + y) * kw + x];
        }
      }
    }
  }
  return out;
}

/** Builds the nodes and weights of a graph model. */
class GraphModelBuilder {
  readonly nodes: TfNode[] = [];
  readonly weights: WeightEntry[] = [];
  readonly data: Uint8Array[] = [];

  node(name: string, op: string, input: string[], attr: Attr = {}): string {
    this.nodes.push({ name, op, input, attr });
    return name;
  }

  constant(name: string, shape: number[], values: Float32Array | Int32Array): string {
    const dtype = values instanceof Float32Array ? "float32" : "int32";
    const tfType = dtype === "float32" ? "DT_FLOAT" : "DT_INT32";
    this.node(name, "Const", [], {
      value: { tensor: { dtype: tfType, tensorShape: tensorShape(shape) } },
      dtype: { type: tfType },
    });
    this.weights.push({ name, shape, dtype });
    // Little-endian, as tfjs reads weights.
    const bytes = new Uint8Array(values.length * 4);
    const view = new DataView(bytes.buffer);
    values.forEach((v, k) =>
      dtype === "float32" ? view.setFloat32(k * 4, v, true) : view.setInt32(k * 4, v, true)
    );
    this.data.push(bytes);
    return name;
  }

  conv(
    name: string,
    input: string,
    filter: string,
    opts: { stride: number; pad: number; bias?: string; relu?: boolean },
  ): string {
    const attr: Attr = {
      T: FLOAT,
      strides: intList([1, opts.stride, opts.stride, 1]),
      data_format: str("NHWC"),
      dilations: intList([1, 1, 1, 1]),
      padding: str(opts.pad > 0 ? "EXPLICIT" : "VALID"),
    };
    if (opts.pad > 0) {
      const p = opts.pad;
      attr.explicit_paddings = intList([0, 0, p, p, p, p, 0, 0]);
    }
    if (!opts.bias) return this.node(name, "Conv2D", [input, filter], attr);
    const fused = opts.relu ? ["BiasAdd", "Relu"] : ["BiasAdd"];
    attr.fused_ops = { list: { s: fused.map(b64) } };
    attr.num_args = { i: "1" };
    return this.node(name, "_FusedConv2D", [input, filter, opts.bias], attr);
  }

  step(step: Step): void {
    switch (step.op) {
      case "conv": {
        const filter = this.constant(`${step.name}/filter`, [
          step.shape[2],
          step.shape[3],
          step.shape[1],
          step.shape[0],
        ], toHwio(step.weight, step.shape));
        const bias = step.bias
          ? this.constant(`${step.name}/bias`, [step.shape[0]], step.bias)
          : undefined;
        const out = this.conv(
          step.relu && !bias ? `${step.output}/linear` : step.output,
          step.input,
          filter,
          {
            stride: step.stride,
            pad: step.pad,
            bias,
            relu: step.relu,
          },
        );
        if (step.relu && !bias) this.node(step.output, "Relu", [out], { T: FLOAT });
        return;
      }
      case "batchnorm": {
        const c = step.gamma.length;
        const [scale, offset, mean, variance] = [
          ["scale", step.gamma],
          ["offset", step.beta],
          ["mean", step.mean],
          ["variance", step.variance],
        ].map(([s, v]) => this.constant(`${step.name}/${s}`, [c], v as Float32Array));
        const bn = this.node(
          `${step.output}/bn`,
          "FusedBatchNormV3",
          [step.input, scale, offset, mean, variance],
          { T: FLOAT, epsilon: { f: step.epsilon }, data_format: str("NHWC") },
        );
        this.node(step.output, "Relu", [bn], { T: FLOAT });
        return;
      }
      case "maxpool": {
        // Zero padding then VALID: TensorFlow's SAME pads asymmetrically, torch symmetrically.
        const p = step.pad;
        const paddings = this.constant(
          `${step.name}/paddings`,
          [4, 2],
          Int32Array.from([0, 0, p, p, p, p, 0, 0]),
        );
        const padded = this.node(`${step.name}/pad`, "Pad", [step.input, paddings], { T: FLOAT });
        this.node(step.output, "MaxPool", [padded], poolAttrs(step.kernel, step.stride));
        return;
      }
      case "avgpool":
        this.node(step.output, "AvgPool", [step.input], poolAttrs(step.kernel, step.stride));
        return;
      case "concat": {
        const axis = this.constant(`${step.name}/axis`, [], Int32Array.from([3]));
        this.node(step.output, "ConcatV2", [...step.inputs, axis], {
          T: FLOAT,
          N: { i: String(step.inputs.length) },
        });
        return;
      }
      case "head": {
        const axes = this.constant(`${step.name}/axes`, [2], Int32Array.from([1, 2]));
        const pooled = this.node(`${step.name}/pooled`, "Mean", [step.input, axes], {
          T: FLOAT,
          keep_dims: { b: false },
        });
        // torch's Linear weight [classes, features] as a [features, classes] matrix.
        const w = this.constant(
          `${step.name}/weight`,
          [step.features, step.classes],
          toHwio(step.weight, [step.classes, step.features, 1, 1]),
        );
        const b = this.constant(`${step.name}/bias`, [step.classes], step.bias);
        const mm = this.node(`${step.name}/matmul`, "MatMul", [pooled, w], {
          T: FLOAT,
          transpose_a: { b: false },
          transpose_b: { b: false },
        });
        const logits = this.node(`${step.name}/logits`, "BiasAdd", [mm, b], { T: FLOAT });
        this.node(step.output, "Sigmoid", [logits], { T: FLOAT });
        return;
      }
      case "cam": {
        const w = this.constant(
          `${step.name}/filter`,
          [1, 1, step.features, step.classes],
          toHwio(step.weight, [step.classes, step.features, 1, 1]),
        );
        this.conv(step.output, step.input, w, { stride: 1, pad: 0 });
        return;
      }
    }
  }
}

/** A graph model's files: `model.json` and its shards, by file name. */
export interface TfjsFiles {
  modelJson: string;
  shards: Map<string, Uint8Array>;
}

/** The TF.js graph model of `graph` for `imageSize`² inputs, with `metadata`. */
export function encodeTfjs(
  graph: ExportGraph,
  imageSize: number,
  metadata: Record<string, unknown>,
  generatedBy: string,
): TfjsFiles {
  const g = new GraphModelBuilder();
  g.node(INPUT, "Placeholder", [], {
    dtype: FLOAT,
    shape: { shape: tensorShape([-1, imageSize, imageSize, 3]) },
  });
  for (const step of graph.steps) g.step(step);

  const total = g.data.reduce((n, d) => n + d.length, 0);
  const all = new Uint8Array(total);
  let at = 0;
  for (const d of g.data) {
    all.set(d, at);
    at += d.length;
  }
  const count = Math.max(1, Math.ceil(total / SHARD_BYTES));
  const shards = new Map<string, Uint8Array>();
  for (let s = 0; s < count; s++) {
    shards.set(
      `group1-shard${s + 1}of${count}.bin`,
      all.subarray(s * SHARD_BYTES, Math.min(total, (s + 1) * SHARD_BYTES)),
    );
  }
  const h = featureMapSide(graph.config, imageSize), w = h;
  const sig = (name: string, shape: number[]) => ({
    name: `${name}:0`,
    dtype: "DT_FLOAT",
    tensorShape: tensorShape(shape),
  });
  const modelJson = {
    format: "graph-model",
    generatedBy,
    convertedBy: null,
    modelTopology: { node: g.nodes, library: {}, versions: { producer: 1 } },
    signature: {
      inputs: { [INPUT]: sig(INPUT, [-1, imageSize, imageSize, 3]) },
      outputs: {
        [OUTPUTS.probabilities]: sig(OUTPUTS.probabilities, [-1, NUM_CLASSES]),
        [OUTPUTS.cams]: sig(OUTPUTS.cams, [-1, h, w, NUM_CLASSES]),
        [OUTPUTS.features]: sig(OUTPUTS.features, [-1, h, w, graph.featureChannels]),
      },
    },
    userDefinedMetadata: metadata,
    weightsManifest: [{ paths: [...shards.keys()], weights: g.weights }],
  };
  return { modelJson: JSON.stringify(modelJson), shards };
}

/** A TensorFlow pooling node's attributes: k×k windows, stride s, NHWC, no padding. */
function poolAttrs(k: number, s: number) {
  return {
    T: FLOAT,
    ksize: intList([1, k, k, 1]),
    strides: intList([1, s, s, 1]),
    padding: str("VALID"),
    data_format: str("NHWC"),
  };
}
