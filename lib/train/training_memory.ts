/**
 * How much tensor memory a DenseNet training step needs, so a batch that cannot fit is refused
 * before the first step instead of aborting the backend mid-step (on the wasm heap an
 * out-of-memory abort leaves the process spinning). The estimate scales measured DenseNet-121
 * figures (live tensors of one training step at 224², per image, by backend and memory level)
 * by the network's activation count, computed from its configuration.
 * @module
 */
import { heapBudgetBytes } from "../backends/memory_efficient.ts";
import { UserError } from "../util/errors.ts";
import { DENSENET121 } from "../model/densenet.ts";
import { activationsPerImage, type DenseNetConfig, parameterCount } from "../model/topology.ts";

export { activationsPerImage, parameterCount } from "../model/topology.ts";

const MB = 2 ** 20;

/**
 * Live-tensor bytes per image of DenseNet-121 training at 224², by memory level, measured
 * (`tf.profile` peaks at several batch sizes, per added image) with ~10 % margin for the heap's
 * fragmentation. native's checkpointed dense blocks keep only their features and bottlenecks
 * (50 MB measured at batch 16–48: batch 48 peaked at 2.4 GB); its plain path 220 MB (batch
 * 4–12). wasm and cpu: the first measurements (465 / 120 MB, which reproduced their limits:
 * batch 24 checkpointed fits, 32 does not), checkpointed plus the bottlenecks its dense blocks
 * now keep (bn_size·growth channels a layer: 17 MB).
 */
const BYTES_PER_IMAGE_224: Record<string, { plain: number; checkpointed: number }> = {
  native: { plain: 240 * MB, checkpointed: 56 * MB },
  // The plain path's figure was measured on WebGPU (GPU memory) and holds for wasm/cpu.
  other: { plain: 465 * MB, checkpointed: 137 * MB },
};

/** Estimated live-tensor bytes of one training step of `batch` images of `imageSize`². */
export function trainingStepBytes(
  config: DenseNetConfig,
  batch: number,
  imageSize: number,
  memoryEfficient: boolean,
  backendName = "wasm",
): number {
  const measured = BYTES_PER_IMAGE_224[backendName] ?? BYTES_PER_IMAGE_224.other;
  const perImage = memoryEfficient ? measured.checkpointed : measured.plain;
  const scale = activationsPerImage(config, imageSize) / activationsPerImage(DENSENET121, 224);
  const params = parameterCount(config);
  // Weights, their gradients and Adam's two moments, float32.
  return batch * perImage * scale + 16 * params;
}

/**
 * Refuses, before the first step, a training step that cannot fit the backend's tensor heap
 * (`heapBudgetBytes`), naming the largest batch that fits. Backends without a hard limit pass.
 */
export function checkTrainingFits(
  backendName: string,
  config: DenseNetConfig,
  batch: number,
  imageSize: number,
  memoryEfficient: boolean,
): void {
  const budget = heapBudgetBytes(backendName);
  if (budget === null) return;
  const bytes = (n: number) =>
    trainingStepBytes(config, n, imageSize, memoryEfficient, backendName);
  const need = bytes(batch);
  if (need <= budget) return;
  const fixed = bytes(0);
  const perImage = bytes(1) - fixed;
  const fits = Math.floor((budget - fixed) / perImage);
  const gb = (b: number) => `${(b / 2 ** 30).toFixed(1)} GB`;
  throw new UserError(
    `a training step at batch ${batch}, ${imageSize}² needs ~${gb(need)} of tensor memory, more ` +
      `than the ${backendName} backend's ${gb(budget)} heap: ` +
      (fits >= 1 ? `use -b ${fits} or less` : `use a smaller --image_size`) +
      (memoryEfficient ? "" : " (or --memory_efficient on)") + ", or a GPU backend",
  );
}
