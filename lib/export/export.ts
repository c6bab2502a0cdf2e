/**
 * Exporting a checkpoint: reads it (ours or the original tool's), builds its inference graph,
 * and writes the ONNX file or the TF.js graph-model directory with the model card beside it,
 * every file under a temporary name and renamed when complete.
 * @module
 */
import { NUM_CLASSES } from "../../config.ts";
import { ensureDir, writeFileAtomic } from "../util/atomic_file.ts";
import { UserError } from "../util/errors.ts";
import { loadCheckpoint } from "../torch/torch_checkpoint.ts";
import { checkedThresholds } from "../model/model_loading.ts";
import { fileIdentity } from "../data/split_record.ts";
import { resultsPathFor } from "../eval/training_settings.ts";
import { buildGraph, type ExportGraph } from "./graph.ts";
import { encodeOnnx } from "./onnx.ts";
import { encodeTfjs } from "./tfjs.ts";
import { featureMapSide } from "../model/topology.ts";
import {
  type ExportFacts,
  exportMetadata,
  modelCardJson,
  modelCardMarkdown,
  onnxMetadataProps,
  readTrainingRecord,
  readTrainingSplit,
} from "./model_card.ts";

export type ExportFormat = "onnx" | "tfjs";
export const EXPORT_FORMATS = ["onnx", "tfjs"] as const;

/** The card's file names, beside the model. */
export const CARD_MD = "MODEL_CARD.md";
export const CARD_JSON = "model_card.json";
/** The TF.js directory's topology file. */
export const TFJS_MODEL_JSON = "model.json";

/** What an export is asked for. */
export interface ExportRequest {
  checkpoint: string;
  format: ExportFormat;
  /** The `.onnx` file, or the TF.js directory. */
  output: string;
  imageSize: number;
  transform: string;
  centerCrop: boolean;
  /** validate_model.ts --json output on the test set (for the card), or null. */
  metricsPath: string | null;
  producer: string;
  warn?: (line: string) => void;
}

/** What an export wrote. */
export interface ExportResult {
  files: Array<{ path: string; bytes: number }>;
  graph: ExportGraph;
  facts: ExportFacts;
}

/**
 * The checkpoint's thresholds as validate reads them (`checkedThresholds`: 14, non-finite ones
 * 0.5 with a warning), or 0.5 for every label where it has none.
 */
function thresholdsOf(
  t: Float64Array | null,
  source: string,
  warn: (line: string) => void,
): { thresholds: number[]; from: string } {
  if (t === null) {
    warn(`warning: ${source} has no thresholds; the export carries 0.5 for every label`);
    return { thresholds: new Array(NUM_CLASSES).fill(0.5), from: "0.5 (the checkpoint has none)" };
  }
  const checked = checkedThresholds(t, source, warn)!;
  const fixed = checked !== t;
  return {
    thresholds: [...checked],
    from: fixed ? "the checkpoint (non-finite ones 0.5)" : "the checkpoint",
  };
}

async function readMetrics(path: string | null): Promise<unknown> {
  if (path === null) return null;
  try {
    return JSON.parse(await Deno.readTextFile(path));
  } catch (e) {
    throw new UserError(
      `--metrics ${path}: not readable JSON (${e instanceof Error ? e.message : e}); pass the ` +
        `file validate_model.ts --json wrote`,
    );
  }
}

/** Exports `req.checkpoint` as asked; returns the files written. */
export async function exportModel(req: ExportRequest): Promise<ExportResult> {
  const warn = req.warn ?? ((line: string) => console.error(line));
  const ckpt = await loadCheckpoint(req.checkpoint);
  const graph = buildGraph(ckpt.stateDict, req.checkpoint);
  const { thresholds, from } = thresholdsOf(ckpt.thresholds, req.checkpoint, warn);
  const training = await readTrainingRecord(resultsPathFor(req.checkpoint));
  const h = featureMapSide(graph.config, req.imageSize), w = h;
  const facts: ExportFacts = {
    checkpoint: req.checkpoint.split("/").pop()!,
    sha256: (await fileIdentity(req.checkpoint)).sha256,
    config: graph.config,
    parameters: graph.parameters,
    imageSize: req.imageSize,
    transform: req.transform,
    centerCrop: req.centerCrop,
    thresholds,
    thresholdsSource: from,
    featureMap: [h, w, graph.featureChannels],
    training,
    split: await readTrainingSplit(training),
    testMetrics: await readMetrics(req.metricsPath),
    producer: req.producer,
  };
  const written: Array<{ path: string; bytes: number }> = [];
  const write = async (path: string, data: Uint8Array | string) => {
    await writeFileAtomic(path, data);
    written.push({
      path,
      bytes: typeof data === "string" ? new TextEncoder().encode(data).length : data.length,
    });
  };
  let dir: string;
  const names: string[] = [];
  if (req.format === "onnx") {
    const slash = req.output.lastIndexOf("/");
    dir = slash < 0 ? "." : req.output.slice(0, slash) || "/";
    await ensureDir(dir, "-o");
    const bytes = encodeOnnx(
      graph,
      req.imageSize,
      onnxMetadataProps(exportMetadata(facts, "NCHW")),
      req.producer,
    );
    await write(req.output, bytes);
    names.push(req.output.slice(slash + 1));
  } else {
    dir = req.output.replace(/\/+$/, "") || "/";
    await ensureDir(dir, "-o");
    const files = encodeTfjs(graph, req.imageSize, exportMetadata(facts, "NHWC"), req.producer);
    // Shards first, model.json last: a directory is loadable only once complete.
    for (const [name, data] of files.shards) await write(`${dir}/${name}`, data);
    await write(`${dir}/${TFJS_MODEL_JSON}`, files.modelJson);
    names.push(TFJS_MODEL_JSON, ...files.shards.keys());
    // Shards of an earlier export into the same directory that this one does not use.
    for await (const e of Deno.readDir(dir)) {
      if (/^group1-shard\d+of\d+\.bin$/.test(e.name) && !files.shards.has(e.name)) {
        await Deno.remove(`${dir}/${e.name}`);
      }
    }
  }
  await write(`${dir}/${CARD_MD}`, modelCardMarkdown(facts, req.format, names));
  await write(
    `${dir}/${CARD_JSON}`,
    JSON.stringify(modelCardJson(facts, req.format, names), null, 2) + "\n",
  );
  return { files: written, graph, facts };
}
