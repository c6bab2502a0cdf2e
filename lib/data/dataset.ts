/**
 * Batches for training and validation: samples from the shards are decoded concurrently (a
 * bounded queue of `workers` images) and packed into `[n, h, w, 3]` RGB8 buffers with their
 * `[n, 14]` labels, ready to become tensors.
 * @module
 */
import { NUM_CLASSES, type Subset } from "../../config.ts";
import { UserError } from "../util/errors.ts";
import { decodeImage, mapConcurrent, type RgbImage } from "./images.ts";
import type { Rng } from "../util/rng.ts";
import { checkShards, listShards, readShards, type Sample } from "./webdataset.ts";

/** A batch of decoded samples; all images share one size. */
export interface Batch {
  keys: string[];
  /** `n * height * width * 3` bytes, RGB8, row-major. */
  images: Uint8Array;
  height: number;
  width: number;
  /** `n * 14` labels. */
  labels: Float32Array;
  n: number;
}

/** Options of `batches`. */
export interface BatchOptions {
  batchSize: number;
  /** Images decoded concurrently. */
  workers: number;
  /** Stop after this many samples. */
  limit?: number;
  /**
   * A last batch of a single image joins the batch before it (`batchSize + 1` images): training
   * mode BatchNorm cannot normalise one value per channel (a 1×1 feature map below 64 px), and
   * merging keeps every image in every epoch, where PyTorch's `drop_last` would drop it.
   */
  mergeLastSingle?: boolean;
}

/**
 * What a training epoch does with `count` images at `batchSize` (see `mergeLastSingle`): a line
 * to print when the last batch would hold a single image, else null.
 */
export function lastBatchNote(count: number, batchSize: number): string | null {
  if (batchSize < 2 || count < batchSize + 1 || count % batchSize !== 1) return null;
  return `note: ${count} images at batch size ${batchSize} leave a last batch of 1, which ` +
    `BatchNorm cannot train on: it joins the batch before it (${batchSize + 1} images)`;
}

async function* take<T>(items: AsyncIterable<T>, limit: number | undefined): AsyncGenerator<T> {
  if (limit === undefined) {
    yield* items;
    return;
  }
  if (limit <= 0) return;
  let n = 0;
  for await (const item of items) {
    yield item;
    if (++n >= limit) return;
  }
}

/**
 * Decodes `samples` concurrently and groups them into batches of `batchSize` (the last batch
 * may be smaller; with `mergeLastSingle`, never a single image after a full batch). A batch
 * whose images differ in size gives a `UserError` naming the sample.
 */
export async function* batches(
  samples: AsyncIterable<Sample>,
  opts: BatchOptions,
): AsyncGenerator<Batch> {
  const size = Math.max(1, Math.floor(opts.batchSize));
  const decoded = mapConcurrent(
    take(samples, opts.limit),
    opts.workers,
    async (s: Sample) => ({ sample: s, image: await decodeImage(s.png, s.source ?? s.key) }),
  );
  let pending: { sample: Sample; image: RgbImage }[] = [];
  // With mergeLastSingle a full batch is held until two more images arrive, so that a lone
  // last image can still join it.
  const hold = opts.mergeLastSingle && size > 1 ? 2 : 0;
  const pack = (count = pending.length): Batch => {
    const rest = pending.slice(count);
    pending = pending.slice(0, count);
    const { width, height } = pending[0].image;
    const pixels = width * height * 3;
    const images = new Uint8Array(pending.length * pixels);
    const labels = new Float32Array(pending.length * NUM_CLASSES);
    pending.forEach(({ image, sample }, i) => {
      images.set(image.data, i * pixels);
      labels.set(sample.labels, i * NUM_CLASSES);
    });
    const batch = {
      keys: pending.map((p) => p.sample.key),
      images,
      height,
      width,
      labels,
      n: pending.length,
    };
    pending = rest;
    return batch;
  };
  for await (const item of decoded) {
    if (item.sample.labels.length !== NUM_CLASSES) {
      throw new UserError(
        `${item.sample.source ?? item.sample.key}: expected ${NUM_CLASSES} labels, ` +
          `got ${item.sample.labels.length}`,
      );
    }
    if (pending.length > 0) {
      const first = pending[0].image;
      if (item.image.width !== first.width || item.image.height !== first.height) {
        throw new UserError(
          `${item.sample.source ?? item.sample.key}: image is ${item.image.width}×` +
            `${item.image.height} but '${pending[0].sample.key}' in the same batch is ` +
            `${first.width}×${first.height}; all images must share one size (re-run preprocessing)`,
        );
      }
    }
    pending.push(item);
    if (pending.length >= size + hold) yield pack(size);
  }
  if (pending.length > 0) yield pack();
}

/** Options of `loadSubset`. */
export interface SubsetOptions {
  datasetDir: string;
  subset: Subset;
  /** Use at most this many samples (e.g. `--debug`). */
  limit?: number;
}

/** The shards of a subset and its sample count. */
export interface SubsetInfo {
  subset: Subset;
  shards: string[];
  /** Samples that one pass yields (the limit applied). */
  size: number;
  /** One pass over the subset in batches; pass a fresh `shuffle` generator per epoch. */
  batches(
    opts: Omit<BatchOptions, "limit"> & { shuffle?: Rng; shuffleBuffer?: number },
  ): AsyncGenerator<Batch>;
}

/**
 * Finds a subset's shards, checks them (headers, sample members, labels; no image decoding) and
 * counts their samples, for a training or validation loop: damage is found before any work.
 */
export async function loadSubset(opts: SubsetOptions): Promise<SubsetInfo> {
  const shards = await listShards(opts.datasetDir, opts.subset);
  const total = await checkShards(shards);
  const size = opts.limit === undefined ? total : Math.min(total, opts.limit);
  return {
    subset: opts.subset,
    shards,
    size,
    batches: (b) =>
      batches(readShards(shards, { shuffle: b.shuffle, shuffleBuffer: b.shuffleBuffer }), {
        batchSize: b.batchSize,
        workers: b.workers,
        limit: opts.limit,
        mergeLastSingle: b.mergeLastSingle,
      }),
  };
}
