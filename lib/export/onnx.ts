/**
 * The export graph as an ONNX model (opset 13, IR version 7), encoded with onnx-proto (the
 * ONNX schema compiled by protobufjs). Input `image` `[N, 3, H, W]` with N dynamic; outputs
 * `probabilities` `[N, 14]` (after the sigmoid), `class_activation_maps` `[N, 14, h, w]` and
 * `features` `[N, C, h, w]` (the last feature map); the metadata as `metadata_props`.
 * @module
 */
import onnxProto from "onnx-proto";
import { NUM_CLASSES } from "../../config.ts";
import { type ExportGraph, INPUT, OUTPUTS, type Step } from "./graph.ts";
import { featureMapSide } from "../model/topology.ts";

const { onnx } = onnxProto;

export const ONNX_OPSET = 13;
const IR_VERSION = 7; // the IR of ONNX 1.8, the release of opset 13

type Node = ReturnType<typeof onnx.NodeProto.create>;
type Tensor = ReturnType<typeof onnx.TensorProto.create>;

const ints = (name: string, values: number[]) =>
  onnx.AttributeProto.create({ name, type: onnx.AttributeProto.AttributeType.INTS, ints: values });
const int = (name: string, value: number) =>
  onnx.AttributeProto.create({ name, type: onnx.AttributeProto.AttributeType.INT, i: value });
const float = (name: string, value: number) =>
  onnx.AttributeProto.create({ name, type: onnx.AttributeProto.AttributeType.FLOAT, f: value });

function initializer(name: string, dims: number[], data: Float32Array): Tensor {
  // raw_data is little-endian: copy so a big-endian host would still write the right bytes.
  const bytes = new Uint8Array(data.length * 4);
  const view = new DataView(bytes.buffer);
  data.forEach((v, i) => view.setFloat32(i * 4, v, true));
  return onnx.TensorProto.create({
    name,
    dims,
    dataType: onnx.TensorProto.DataType.FLOAT,
    rawData: bytes,
  });
}

function valueInfo(name: string, dims: (number | string)[]) {
  return onnx.ValueInfoProto.create({
    name,
    type: {
      tensorType: {
        elemType: onnx.TensorProto.DataType.FLOAT,
        shape: {
          dim: dims.map((d) => (typeof d === "number" ? { dimValue: d } : { dimParam: d })),
        },
      },
    },
  });
}

/** The ONNX nodes and initializers of one step. */
function translate(step: Step, nodes: Node[], inits: Tensor[]): void {
  const node = (opType: string, input: string[], output: string, attribute: unknown[] = []) =>
    nodes.push(
      onnx.NodeProto.create({
        opType,
        input,
        output: [output],
        name: `${step.name}_${opType}`,
        attribute: attribute as never,
      }),
    );
  switch (step.op) {
    case "conv": {
      const [o, i, kh, kw] = step.shape;
      inits.push(initializer(`${step.name}.weight`, [o, i, kh, kw], step.weight));
      const inputs = [step.input, `${step.name}.weight`];
      if (step.bias) {
        inits.push(initializer(`${step.name}.bias`, [o], step.bias));
        inputs.push(`${step.name}.bias`);
      }
      const out = step.relu ? `${step.output}_linear` : step.output;
      node("Conv", inputs, out, [
        ints("kernel_shape", [kh, kw]),
        ints("strides", [step.stride, step.stride]),
        ints("pads", [step.pad, step.pad, step.pad, step.pad]),
      ]);
      if (step.relu) node("Relu", [out], step.output);
      return;
    }
    case "batchnorm": {
      const c = step.gamma.length;
      const names = ["scale", "bias", "mean", "var"].map((s) => `${step.name}.${s}`);
      [step.gamma, step.beta, step.mean, step.variance].forEach((d, k) =>
        inits.push(initializer(names[k], [c], d))
      );
      node("BatchNormalization", [step.input, ...names], `${step.output}_bn`, [
        float("epsilon", step.epsilon),
      ]);
      node("Relu", [`${step.output}_bn`], step.output);
      return;
    }
    case "maxpool":
      node("MaxPool", [step.input], step.output, [
        ints("kernel_shape", [step.kernel, step.kernel]),
        ints("strides", [step.stride, step.stride]),
        ints("pads", [step.pad, step.pad, step.pad, step.pad]),
      ]);
      return;
    case "avgpool":
      node("AveragePool", [step.input], step.output, [
        ints("kernel_shape", [step.kernel, step.kernel]),
        ints("strides", [step.stride, step.stride]),
      ]);
      return;
    case "concat":
      node("Concat", step.inputs, step.output, [int("axis", 1)]);
      return;
    case "head": {
      inits.push(initializer(`${step.name}.weight`, [step.classes, step.features], step.weight));
      inits.push(initializer(`${step.name}.bias`, [step.classes], step.bias));
      node("GlobalAveragePool", [step.input], `${step.name}_pooled`);
      node("Flatten", [`${step.name}_pooled`], `${step.name}_flat`, [int("axis", 1)]);
      node(
        "Gemm",
        [`${step.name}_flat`, `${step.name}.weight`, `${step.name}.bias`],
        `${step.name}_logits`,
        [int("transB", 1)],
      );
      node("Sigmoid", [`${step.name}_logits`], step.output);
      return;
    }
    case "cam":
      inits.push(
        initializer(`${step.name}.weight`, [step.classes, step.features, 1, 1], step.weight),
      );
      node("Conv", [step.input, `${step.name}.weight`], step.output, [
        ints("kernel_shape", [1, 1]),
      ]);
      return;
  }
}

/** Encodes `graph` as an ONNX model for `imageSize`² inputs with `metadata` as its props. */
export function encodeOnnx(
  graph: ExportGraph,
  imageSize: number,
  metadata: Record<string, string>,
  producerVersion: string,
): Uint8Array {
  const nodes: Node[] = [];
  const inits: Tensor[] = [];
  for (const step of graph.steps) translate(step, nodes, inits);
  const h = featureMapSide(graph.config, imageSize), w = h;
  const model = onnx.ModelProto.create({
    irVersion: IR_VERSION,
    opsetImport: [{ domain: "", version: ONNX_OPSET }],
    producerName: "augmented-chest-xray",
    producerVersion,
    docString: "DenseNet chest X-ray classifier (ChestX-ray14, 14 labels); see metadata_props",
    graph: {
      name: "densenet_chestxray14",
      node: nodes,
      initializer: inits,
      input: [valueInfo(INPUT, ["N", 3, imageSize, imageSize])],
      output: [
        valueInfo(OUTPUTS.probabilities, ["N", NUM_CLASSES]),
        valueInfo(OUTPUTS.cams, ["N", NUM_CLASSES, h, w]),
        valueInfo(OUTPUTS.features, ["N", graph.featureChannels, h, w]),
      ],
    },
    metadataProps: Object.entries(metadata).map(([key, value]) => ({ key, value })),
  });
  return onnx.ModelProto.encode(model).finish();
}
