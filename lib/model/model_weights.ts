/**
 * Moving weights between a PyTorch state dict (torchvision names and layouts) and a DenseNet
 * from densenet.ts: key normalisation (legacy dense-layer names, plain vs Sequential classifier,
 * DataParallel's `module.` prefix), layout transposes (conv `[out,in,kh,kw]` ↔ `[kh,kw,in,out]`,
 * linear `[out,in]` ↔ `[in,out]`), and strict checking — a load either assigns every variable or
 * throws, never a partial load.
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import { UserError } from "../util/errors.ts";
import type { DenseNet } from "./densenet.ts";
import { type HostTensor, numel, type StateDict } from "../torch/state_dict.ts";

/** torchvision's legacy dense-layer names: `denselayer1.norm.1.weight` → `denselayer1.norm1.weight`. */
const LEGACY_DENSE_LAYER =
  /^(.*denselayer\d+\.(?:norm|relu|conv))\.([12])\.(weight|bias|running_mean|running_var|num_batches_tracked)$/;

/** Our classifier is the original tool's `Sequential(Linear, Sigmoid)`: keys `classifier.0.*`. */
const PLAIN_CLASSIFIER = /^classifier\.(weight|bias)$/;

const CLASSIFIER_KEYS = ["classifier.0.weight", "classifier.0.bias"];

/**
 * Returns a copy of `sd` under the names our model uses — the one place where naming variants
 * are reconciled: legacy `norm.1`/`conv.1`/`norm.2`/`conv.2` → `norm1`/`conv1`/`norm2`/`conv2`,
 * a plain-Linear classifier (`classifier.weight`, torchvision/ImageNet files) → `classifier.0.weight`
 * (original tool), and a `module.` prefix on every key (nn.DataParallel) removed.
 * Throws UserError when two keys normalise to the same name.
 */
export function normalizeStateDictKeys(sd: StateDict): StateDict {
  const keys = [...sd.keys()];
  const stripModule = keys.length > 0 && keys.every((k) => k.startsWith("module."));
  const out: StateDict = new Map();
  for (const [key, tensor] of sd) {
    let k = stripModule ? key.slice("module.".length) : key;
    k = k.replace(LEGACY_DENSE_LAYER, "$1$2.$3").replace(PLAIN_CLASSIFIER, "classifier.0.$1");
    if (out.has(k)) {
      throw new UserError(`state dict has two entries for '${k}' (one under a legacy name)`);
    }
    out.set(k, tensor);
  }
  return out;
}

/** A key whose tensor shape differs between the state dict and the model (torch layout). */
export interface ShapeMismatch {
  key: string;
  expected: number[];
  got: number[];
}

/** A state dict that does not fit the model; lists every offending key. */
export class StateDictMismatchError extends UserError {
  readonly missing: string[];
  readonly unexpected: string[];
  readonly mismatched: ShapeMismatch[];
  constructor(
    message: string,
    missing: string[],
    unexpected: string[],
    mismatched: ShapeMismatch[],
  ) {
    super(message);
    this.name = "StateDictMismatchError";
    this.missing = missing;
    this.unexpected = unexpected;
    this.mismatched = mismatched;
  }
}

/** Options of `loadStateDict`. */
export interface LoadOptions {
  /**
   * Keep the model's freshly initialised classifier when the state dict's has another size or
   * is absent (e.g. ImageNet weights with a 1000-way head); everything else must still match.
   */
  allowNewClassifier?: boolean;
  /** Where the state dict came from, for error messages (a file path). */
  source?: string;
}

/** What `loadStateDict` did. */
export interface LoadReport {
  /** Number of state-dict entries assigned (num_batches_tracked included). */
  loaded: number;
  /** True when the state dict's classifier was skipped and the fresh one kept. */
  newClassifier: boolean;
  /** Human-readable notes (classifier kept, num_batches_tracked absent), empty when none. */
  notes: string[];
}

/** torch shape of a model variable (tfjs layout → torch layout). */
function torchShape(v: tf.Variable): number[] {
  const s = v.shape;
  if (s.length === 4) return [s[3], s[2], s[0], s[1]];
  if (s.length === 2) return [s[1], s[0]];
  return [...s];
}

/**
 * Assigns every variable of `model` from a torchvision-layout state dict (keys normalised with
 * `normalizeStateDictKeys`). Checks everything before assigning anything: missing keys,
 * unexpected keys and shape mismatches throw a `StateDictMismatchError` listing them.
 * `num_batches_tracked` may be absent (pre-0.4.1 files such as torchvision's ImageNet weights);
 * it is then set to 0, as torch does.
 */
export function loadStateDict(model: DenseNet, sd: StateDict, opts: LoadOptions = {}): LoadReport {
  const src = normalizeStateDictKeys(sd);
  const notes: string[] = [];
  const missing: string[] = [];
  const mismatched: ShapeMismatch[] = [];
  let missingCounters = 0;
  for (const key of model.stateDictKeys) {
    const t = src.get(key);
    const isCounter = key.endsWith(".num_batches_tracked");
    if (!t) {
      if (isCounter) missingCounters++;
      else missing.push(key);
      continue;
    }
    const expected = isCounter ? [] : torchShape(model.variables.get(key)!);
    const ok = isCounter ? numel(t.shape) === 1 : sameShape(t.shape, expected);
    if (!ok) mismatched.push({ key, expected, got: [...t.shape] });
  }
  const known = new Set(model.stateDictKeys);
  const unexpected = [...src.keys()].filter((k) => !known.has(k));

  let newClassifier = false;
  if (opts.allowNewClassifier) {
    const isHead = (k: string) => CLASSIFIER_KEYS.includes(k);
    const headProblems = missing.filter(isHead).length +
      mismatched.filter((m) => isHead(m.key)).length;
    if (headProblems > 0) {
      newClassifier = true;
      const old = src.get("classifier.0.weight");
      notes.push(
        old
          ? `classifier of shape [${old.shape}] not loaded; kept a new ${model.config.numClasses}-way classifier`
          : `no classifier in the state dict; kept a new ${model.config.numClasses}-way classifier`,
      );
      removeWhere(missing, isHead);
      removeWhere(mismatched, (m) => isHead(m.key));
    }
  }
  if (missingCounters > 0 && missingCounters < model.batchNorms.size) {
    // Either all counters (old files) or none may be absent; a partial set means a broken file.
    for (const key of model.stateDictKeys) {
      if (key.endsWith(".num_batches_tracked") && !src.has(key)) missing.push(key);
    }
  }
  if (missing.length || unexpected.length || mismatched.length) {
    throw mismatchError(model, opts.source, missing, unexpected, mismatched);
  }
  if (missingCounters > 0) notes.push("no num_batches_tracked in the state dict; set to 0");
  // NaN or infinite weights would train to NaN or validate to all-NaN metrics with exit 0.
  for (const key of model.stateDictKeys) {
    if (newClassifier && CLASSIFIER_KEYS.includes(key)) continue;
    const t = src.get(key);
    const bad = t ? firstNonFinite(t) : null;
    if (bad !== null) {
      throw new UserError(
        `weights${opts.source ? ` in ${opts.source}` : ""} are corrupt: '${key}' holds ${bad} ` +
          `(first non-finite tensor); use another checkpoint (e.g. an earlier run's _model.pt)`,
      );
    }
  }

  let loaded = 0;
  for (const [prefix, bn] of model.batchNorms) {
    const t = src.get(`${prefix}.num_batches_tracked`);
    bn.numBatchesTracked = t ? Number(t.data[0]) : 0;
    if (t) loaded++;
  }
  for (const [key, v] of model.variables) {
    if (newClassifier && CLASSIFIER_KEYS.includes(key)) continue;
    const t = src.get(key)!;
    const data = toTfLayout(toFloat32(t), t.shape);
    const value = tf.tensor(data, v.shape, "float32");
    v.assign(value);
    value.dispose();
    loaded++;
  }
  return { loaded, newClassifier, notes };
}

/**
 * The model's weights as a torchvision state dict: `state_dict()` key order and names
 * (`classifier.0.*`), torch layouts, float32 parameters and running statistics,
 * `num_batches_tracked` as an int64 scalar (shape []).
 */
export async function stateDictFromModel(model: DenseNet): Promise<StateDict> {
  const sd: StateDict = new Map();
  for (const key of model.stateDictKeys) {
    if (key.endsWith(".num_batches_tracked")) {
      const bn = model.batchNorms.get(key.slice(0, -".num_batches_tracked".length))!;
      sd.set(key, {
        dtype: "int64",
        shape: [],
        data: BigInt64Array.of(BigInt(bn.numBatchesTracked)),
      });
      continue;
    }
    const v = model.variables.get(key)!;
    // Asynchronous read: WebGPU under Deno cannot read synchronously.
    const values = await v.data() as Float32Array;
    sd.set(key, { dtype: "float32", shape: torchShape(v), data: toTorchLayout(values, v.shape) });
  }
  return sd;
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

function removeWhere<T>(items: T[], pred: (item: T) => boolean): void {
  for (let i = items.length - 1; i >= 0; i--) if (pred(items[i])) items.splice(i, 1);
}

function mismatchError(
  model: DenseNet,
  source: string | undefined,
  missing: string[],
  unexpected: string[],
  mismatched: ShapeMismatch[],
): StateDictMismatchError {
  const c = model.config;
  const list = (items: string[]) =>
    items.slice(0, 5).join(", ") + (items.length > 5 ? `, … ${items.length - 5} more` : "");
  const plural = (n: number, word: string) =>
    `${n} ${word}${n === 1 ? "" : /(s|sh|ch|x)$/.test(word) ? "es" : "s"}`;
  const parts: string[] = [];
  if (missing.length) parts.push(`${plural(missing.length, "missing key")} (${list(missing)})`);
  if (unexpected.length) {
    parts.push(`${plural(unexpected.length, "unexpected key")} (${list(unexpected)})`);
  }
  if (mismatched.length) {
    const items = mismatched.map((m) => `${m.key}: [${m.got}] vs model [${m.expected}]`);
    parts.push(`${plural(mismatched.length, "shape mismatch")} (${list(items)})`);
  }
  const what =
    `DenseNet(growth ${c.growthRate}, blocks [${c.blockConfig}], init ${c.numInitFeatures}, ` +
    `bn_size ${c.bnSize}, ${c.numClasses} classes)`;
  const from = source ? ` in ${source}` : "";
  return new StateDictMismatchError(
    `weights${from} do not fit ${what}: ${parts.join("; ")}`,
    missing,
    unexpected,
    mismatched,
  );
}

/** "NaN" or "Infinity"/"-Infinity" for the first non-finite value of a float tensor, else null. */
function firstNonFinite(t: HostTensor): string | null {
  if (!(t.data instanceof Float32Array || t.data instanceof Float64Array)) return null;
  for (const v of t.data) if (!Number.isFinite(v)) return String(v);
  return null;
}

function toFloat32(t: HostTensor): Float32Array {
  if (t.data instanceof Float32Array) return t.data;
  if (t.data instanceof BigInt64Array) return Float32Array.from(t.data, (x) => Number(x));
  return Float32Array.from(t.data as ArrayLike<number>);
}

/** torch layout → tfjs layout (a new array for rank 2 and 4). */
function toTfLayout(src: Float32Array, torch: readonly number[]): Float32Array {
  if (torch.length === 4) {
    const [o, i, kh, kw] = torch;
    const dst = new Float32Array(src.length);
    let s = 0;
    for (let a = 0; a < o; a++) {
      for (let b = 0; b < i; b++) {
        for (let y = 0; y < kh; y++) {
          for (let x = 0; x < kw; x++) dst[((y * kw + x) * i + b) * o + a] = src[s++];
        }
      }
    }
    return dst;
  }
  if (torch.length === 2) return transpose2d(src, torch[0], torch[1]);
  return src;
}

/** tfjs layout → torch layout, always a fresh array (a backend read may alias backend memory). */
function toTorchLayout(src: Float32Array, shape: readonly number[]): Float32Array {
  if (shape.length === 4) {
    const [kh, kw, i, o] = shape;
    const dst = new Float32Array(src.length);
    let s = 0;
    for (let y = 0; y < kh; y++) {
      for (let x = 0; x < kw; x++) {
        for (let b = 0; b < i; b++) {
          for (let a = 0; a < o; a++) dst[((a * i + b) * kh + y) * kw + x] = src[s++];
        }
      }
    }
    return dst;
  }
  if (shape.length === 2) return transpose2d(src, shape[0], shape[1]);
  return src.slice();
}

/** Transposes a row-major [rows, cols] matrix. */
function transpose2d(src: Float32Array, rows: number, cols: number): Float32Array {
  const dst = new Float32Array(src.length);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) dst[c * rows + r] = src[r * cols + c];
  }
  return dst;
}
