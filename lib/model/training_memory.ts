/**
 * How much tensor memory a DenseNet training step needs, so a batch that cannot fit is refused
 * before the first step instead of aborting the backend mid-step (on the wasm heap an
 * out-of-memory abort leaves the process spinning). The estimate scales measured DenseNet-121
 * figures (live tensors of one training step at 224²: 465 MB per image on the plain path,
 * 120 MB checkpointed) by the network's activation count, computed from its configuration.
 * @module
 */
import { heapBudgetBytes, PLAIN_BYTES_PER_IMAGE_224 } from "../backends/memory_efficient.ts";
import { UserError } from "../util/errors.ts";
import { DENSENET121, type DenseNetConfig } from "./densenet.ts";

/** Measured live-tensor bytes per image of DenseNet-121 training at 224², by memory level. */
const BYTES_PER_IMAGE_224 = { plain: PLAIN_BYTES_PER_IMAGE_224, checkpointed: 120 * 2 ** 20 };

/**
 * Activation values one image produces in a forward pass (every conv, BatchNorm, ReLU, concat
 * and pooling output), the quantity training memory grows with.
 */
export function activationsPerImage(config: DenseNetConfig, imageSize: number): number {
  const { growthRate: k, bnSize, numInitFeatures: f0, blockConfig } = config;
  let r = Math.floor((imageSize - 1) / 2) + 1; // conv0: 7×7, stride 2, padding 3
  let total = 3 * f0 * r * r; // conv0, norm0, relu0
  r = Math.floor((r - 1) / 2) + 1; // pool0: 3×3, stride 2, padding 1
  total += f0 * r * r;
  let c = f0;
  blockConfig.forEach((layers, b) => {
    for (let l = 0; l < layers; l++) {
      const cin = c + l * k;
      // concat, norm1, relu1 over cin; conv1, norm2, relu2 over bnSize·k; conv2 over k.
      total += (3 * cin + 3 * bnSize * k + k) * r * r;
    }
    c += layers * k;
    if (b === blockConfig.length - 1) return;
    total += (2 * c + Math.floor(c / 2)) * r * r; // norm, relu, conv of the transition
    r = Math.floor(r / 2);
    c = Math.floor(c / 2);
    total += c * r * r; // its average pool
  });
  return total;
}

/** Estimated live-tensor bytes of one training step of `batch` images of `imageSize`². */
export function trainingStepBytes(
  config: DenseNetConfig,
  batch: number,
  imageSize: number,
  memoryEfficient: boolean,
): number {
  const perImage = memoryEfficient ? BYTES_PER_IMAGE_224.checkpointed : BYTES_PER_IMAGE_224.plain;
  const scale = activationsPerImage(config, imageSize) / activationsPerImage(DENSENET121, 224);
  const params = parameterCount(config);
  // Weights, their gradients and Adam's two moments, float32.
  return batch * perImage * scale + 16 * params;
}

/** Trainable parameters of the configuration (convolutions, BatchNorm affine, classifier). */
export function parameterCount(config: DenseNetConfig): number {
  const { growthRate: k, bnSize, numInitFeatures: f0, blockConfig, numClasses } = config;
  let n = 49 * 3 * f0 + 2 * f0;
  let c = f0;
  blockConfig.forEach((layers, b) => {
    for (let l = 0; l < layers; l++) {
      const cin = c + l * k;
      n += 2 * cin + cin * bnSize * k + 2 * bnSize * k + 9 * bnSize * k * k;
    }
    c += layers * k;
    if (b === blockConfig.length - 1) return;
    n += 2 * c + c * Math.floor(c / 2);
    c = Math.floor(c / 2);
  });
  return n + 2 * c + c * numClasses + numClasses;
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
  const need = trainingStepBytes(config, batch, imageSize, memoryEfficient);
  if (need <= budget) return;
  const fixed = trainingStepBytes(config, 0, imageSize, memoryEfficient);
  const perImage = trainingStepBytes(config, 1, imageSize, memoryEfficient) - fixed;
  const fits = Math.floor((budget - fixed) / perImage);
  const gb = (b: number) => `${(b / 2 ** 30).toFixed(1)} GB`;
  throw new UserError(
    `a training step at batch ${batch}, ${imageSize}² needs ~${gb(need)} of tensor memory, more ` +
      `than the ${backendName} backend's ${gb(budget)} heap: ` +
      (fits >= 1 ? `use -b ${fits} or less` : `use a smaller --image_size`) +
      (memoryEfficient ? "" : " (or --memory_efficient on)") + ", or a GPU backend",
  );
}
