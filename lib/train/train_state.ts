/**
 * The resumable state of a training run, `<stamp>_last.pt`, rewritten atomically after every
 * epoch so that `--resume` continues a killed run exactly: a torch checkpoint
 * (`{'model': state_dict, 'thresholds': …}`, loadable by torch.load and by our loader) whose zip
 * also holds `resume/state.json` (epoch, flags, scheduler, RNG, best-so-far record, epoch
 * records, Adam's step) and Adam's moments as raw little-endian float32 (`resume/exp_avg`,
 * `resume/exp_avg_sq`), members torch ignores.
 * @module
 */
import { UserError } from "../util/errors.ts";
import { writeFileAtomic } from "../util/atomic_file.ts";
import { refuseSpecialFile } from "../util/input_files.ts";
import { checkFlagValueFromFile, type FlagSpecs } from "../util/cli.ts";
import { encodeCheckpoint } from "../torch/torch_checkpoint.ts";
import { readZip, writeZip, ZipArchive, type ZipEntry } from "../torch/zip_store.ts";
import type { StateDict } from "../torch/state_dict.ts";
import { type DenseNet, trainableVariables } from "../model/densenet.ts";
import type { AdamState } from "./adam.ts";
import type { PlateauState } from "./scheduler.ts";

const STATE = "archive/resume/state.json";
const EXP_AVG = "archive/resume/exp_avg";
const EXP_AVG_SQ = "archive/resume/exp_avg_sq";
const VERSION = 1;

/** The best epoch so far: the one whose weights `_model.pt` holds. */
export interface BestRecord {
  epoch: number;
  val_loss: number;
  thresholds: number[];
}

/** Everything but the weights and Adam's moments, as JSON. */
export interface TrainProgress<E> {
  /** Epochs completed. */
  epoch: number;
  /** The run's flags; a resumed run uses them (see `resumedFlags`). */
  flags: Record<string, unknown>;
  started: string;
  dataset: { train: number; val: number };
  weights: unknown;
  scheduler: PlateauState;
  rng: { state: number; spare: number | null };
  best: BestRecord | null;
  /** The thresholds of the last epoch (also the checkpoint's). */
  thresholds: number[];
  epochs: E[];
  /** Earlier resumptions of this run. */
  resumes?: { after_epoch: number; at: string }[];
  adam: { step: number; layout: string[] };
}

/** Writes the state atomically (temp name + rename): a kill leaves the previous one intact. */
export async function writeTrainState<E>(
  path: string,
  s: { stateDict: StateDict; adam: AdamState; progress: Omit<TrainProgress<E>, "adam"> },
): Promise<void> {
  const ckpt = encodeCheckpoint({
    stateDict: s.stateDict,
    thresholds: Float64Array.from(s.progress.thresholds),
  });
  const entries: ZipEntry[] = [...readZip(ckpt, path)].map(([name, data]) => ({ name, data }));
  const json = {
    version: VERSION,
    ...s.progress,
    adam: { step: s.adam.step, layout: s.adam.layout },
  };
  entries.push({ name: STATE, data: new TextEncoder().encode(JSON.stringify(json)) });
  if (s.adam.m && s.adam.v) {
    entries.push({ name: EXP_AVG, data: bytesOf(s.adam.m) });
    entries.push({ name: EXP_AVG_SQ, data: bytesOf(s.adam.v) });
  }
  await writeFileAtomic(path, writeZip(entries));
}

/** Reads the resumable part of a `_last.pt` (the weights load with `loadModel`). */
export async function readTrainState<E>(
  path: string,
): Promise<{ progress: TrainProgress<E>; adam: AdamState }> {
  let bytes: Uint8Array;
  await refuseSpecialFile(path, "resumable state", "pass a run's _last.pt");
  try {
    bytes = await Deno.readFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new UserError(
        `no resumable state ${path}: the run was written before --resume existed or its ` +
          `first epoch never finished; continue from its model with -s instead`,
      );
    }
    throw e;
  }
  // Only the three resume members are inflated: the state JSON (small), and Adam's moments, one
  // float32 per weight, so neither can be larger than the weights' storages together.
  const zip = new ZipArchive(bytes, path);
  if (!zip.has(STATE)) {
    throw new UserError(`${path} holds no training state (${STATE}): pass a run's _last.pt`);
  }
  const state = zip.read(STATE, 64 << 20, "a training state");
  const weightBytes = zip.names().filter((n) => n.startsWith("archive/data/"))
    .reduce((sum, n) => sum + zip.declaredSize(n)!, 0);
  const moment = (name: string) =>
    zip.has(name) ? zip.read(name, weightBytes, "the weights' Adam moments") : undefined;
  let progress: TrainProgress<E> & { version?: number };
  try {
    progress = JSON.parse(new TextDecoder().decode(state));
  } catch {
    throw new UserError(`${path}: the training state is corrupt (not JSON)`);
  }
  if (progress.version !== VERSION || !Array.isArray(progress.epochs)) {
    throw new UserError(`${path}: unsupported training state version ${progress.version}`);
  }
  const m = moment(EXP_AVG), v = moment(EXP_AVG_SQ);
  const adam: AdamState = {
    step: progress.adam.step,
    layout: progress.adam.layout,
    m: m ? floatsOf(m) : null,
    v: v ? floatsOf(v) : null,
  };
  if ((adam.m === null) !== (adam.v === null) || (adam.m && adam.m.length !== adam.v!.length)) {
    throw new UserError(`${path}: Adam's moments are incomplete; the file is corrupt`);
  }
  return { progress, adam };
}

/** Refuses Adam moments that do not belong to `model`'s variables (a corrupt or foreign file). */
export function checkAdamFits(adam: AdamState, model: DenseNet, source: string): void {
  if (adam.m === null) return;
  const vars = trainableVariables(model);
  const total = vars.reduce((n, v) => n + v.size, 0);
  const names = vars.map((v) => v.name).join("\n");
  if (adam.layout.join("\n") !== names || adam.m.length !== total) {
    throw new UserError(
      `${source}: Adam's moments (${adam.m.length} values) do not fit the model's ${total} ` +
        `parameters; the file is corrupt or from another run`,
    );
  }
}

/**
 * Flags a resumed run may change: how and where it runs, and how many epochs in all; the
 * rest (batch, size, learning rate, seed, augmentation, …) decide the numbers and come from
 * the run.
 */
const CHANGEABLE_ON_RESUME = new Set([
  "epochs",
  "backend",
  "threads",
  "workers",
  "dataset_dir",
  "labels_dir",
  "save_dir",
  "resume",
  "verbose",
  "help",
]);

/**
 * The flags of a resumed run: the saved run's, with the changeable ones taken from the
 * command line where given there. A numerics flag given with another value than the run's is
 * refused. With `specs`, every saved value is checked as the command line checks it.
 */
export function resumedFlags<F extends Record<string, unknown>>(
  saved: Record<string, unknown>,
  current: F,
  given: ReadonlySet<string>,
  source: string,
  specs?: FlagSpecs,
): F {
  const out: Record<string, unknown> = { ...current };
  for (const [name, value] of Object.entries(saved)) {
    if (!(name in current) || name === "resume") continue;
    // Each saved setting passes its flag's own validation, as on the command line.
    const spec = specs?.[name];
    if (spec && !(CHANGEABLE_ON_RESUME.has(name) && given.has(name))) {
      checkFlagValueFromFile(name, spec, value, source, "the run's state is damaged: start anew");
    }
    if (CHANGEABLE_ON_RESUME.has(name)) {
      if (!given.has(name)) out[name] = value;
      continue;
    }
    if (given.has(name) && JSON.stringify(current[name]) !== JSON.stringify(value)) {
      throw new UserError(
        `--${name} ${JSON.stringify(current[name])} differs from the run being resumed ` +
          `(${source}: ${JSON.stringify(value)}); a resumed run keeps its settings: drop --${name}`,
      );
    }
    out[name] = value;
  }
  return out as F;
}

function bytesOf(a: Float32Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

function floatsOf(b: Uint8Array): Float32Array {
  if (b.length % 4 !== 0) throw new UserError("Adam moments: length is not a multiple of 4");
  const copy = b.slice();
  return new Float32Array(copy.buffer, 0, copy.length / 4);
}
