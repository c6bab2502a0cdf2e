/**
 * Flags that train_model.ts and validate_model.ts share (batch, workers, backend, data
 * directories, input size, seed), defined once, and starting the backend they name.
 * @module
 */
import {
  BATCH_SIZE,
  DATASET_DIR,
  FINAL_IMAGE_SIZE,
  LABELS_DIR,
  NUM_WORKERS,
  RANDOM_SEED,
  SAVE_DIR,
} from "../config.ts";
import {
  type BackendInfo,
  type BackendName,
  BACKENDS,
  initBackend,
  type Precision,
  PRECISIONS,
} from "./backends/backend.ts";
import type { FlagSpecs } from "./util/cli.ts";

/** Flags of every script that runs the model over shards. */
export const RUN_FLAGS = {
  batch_size: { kind: "int", short: "b", default: BATCH_SIZE, min: 1, help: "batch size" },
  workers: {
    kind: "int",
    short: "w",
    default: NUM_WORKERS,
    min: 1,
    help: "image decoding workers",
  },
  backend: { kind: "string", default: "auto", choices: BACKENDS, help: "compute backend" },
  threads: { kind: "int", default: 0, min: 0, help: "wasm threads (0: all cores)" },
  precision: {
    kind: "string",
    default: "f32",
    choices: PRECISIONS,
    help: "convolution arithmetic: bf16 rounds what the convolutions read to bfloat16 " +
      "(native backend, CPUs with AVX512_BF16 or AMX; weights, BatchNorm, loss and optimizer " +
      "stay float32)",
  },
  // DenseNet halves its input five times (32 → 1×1 features); above 1024 (the NIH originals'
  // size) a batch's activations exceed what the wasm heap and most GPUs hold.
  image_size: {
    kind: "int",
    default: FINAL_IMAGE_SIZE,
    min: 32,
    max: 1024,
    help: "network input size",
  },
  seed: { kind: "int", default: RANDOM_SEED, help: "random seed" },
  dataset_dir: { kind: "string", default: DATASET_DIR, metavar: "DIR", help: "shard directory" },
  labels_dir: { kind: "string", default: LABELS_DIR, metavar: "DIR", help: "label CSV directory" },
  save_dir: { kind: "string", default: SAVE_DIR, metavar: "DIR", help: "saved model directory" },
} as const satisfies FlagSpecs;

/**
 * Starts the backend named by `--backend` / `--threads` at `--precision`, logging the choice on
 * stderr (with `detail`'s setting on the same line). The `note:` lines (why `auto` skipped a
 * backend, …) are for `--verbose` or an explicit backend; a precision that could not be had is
 * always said. `precisionOptional`: the precision was carried over from training, not asked for (bf16 then
 * falls back to float32 with a note where it cannot run).
 */
export function startBackend(
  flags: { backend: string; threads: number; precision: string; verbose?: boolean },
  detail?: (info: BackendInfo) => Promise<string | null>,
  precisionOptional = false,
): Promise<BackendInfo> {
  const notes = flags.verbose === true || flags.backend !== "auto";
  return initBackend(flags.backend as BackendName, {
    threads: flags.threads || undefined,
    log: (line) => (notes || !line.startsWith("note: ")) && console.error(line),
    detail,
    precision: flags.precision as Precision,
    precisionOptional,
  });
}
