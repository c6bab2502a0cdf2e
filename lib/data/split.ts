/**
 * Patient-level train/val/test split: no patient has images in two subsets. Seeded with `Rng`,
 * so a seed gives the same split on every machine. Sizes follow scikit-learn's
 * `GroupShuffleSplit` (test = ceil(20% of patients), val = ceil(0.1/0.8 of the rest)).
 * @module
 */
import { type Subset, TRAIN_VAL_TEST_RATIO } from "../../config.ts";
import { UserError } from "../util/errors.ts";
import { Rng } from "../util/rng.ts";

/** Anything that belongs to a patient. */
export interface HasPatient {
  patientId: string;
}

/** Entries of each subset, in input order. */
export type Split<T> = Record<Subset, T[]>;

/** Options of the splits. */
export interface SplitOptions {
  seed: number;
  /** Draw this many patients first (`--subset_size`). */
  subsetSize?: number | null;
  /** Fractions of train, val, test (default `TRAIN_VAL_TEST_RATIO`). */
  ratio?: readonly [number, number, number];
}

/** Distinct patients in a stable order (numeric IDs numerically, others after, sorted). */
export function patientsOf(entries: readonly HasPatient[]): string[] {
  const ids = [...new Set(entries.map((e) => e.patientId))];
  const num = (s: string) => (/^\d+$/.test(s) ? Number(s) : NaN);
  return ids.sort((a, b) => {
    const na = num(a);
    const nb = num(b);
    if (!Number.isNaN(na) && !Number.isNaN(nb)) return na - nb;
    if (!Number.isNaN(na)) return -1;
    if (!Number.isNaN(nb)) return 1;
    return a < b ? -1 : a > b ? 1 : 0;
  });
}

function drawPatients(patients: string[], n: number | null | undefined, rng: Rng): string[] {
  if (n === undefined || n === null) return patients;
  if (!Number.isInteger(n) || n < 1) {
    throw new UserError(`--subset_size must be a positive number of patients, got ${n}`, 2);
  }
  if (n > patients.length) {
    throw new UserError(
      `--subset_size ${n} is larger than the ${patients.length} patients in the metadata`,
      2,
    );
  }
  return rng.shuffle([...patients]).slice(0, n);
}

/** Splits patients into [first, rest] with `ceil(fraction * n)` in first, after shuffling. */
function groupShuffle(patients: string[], fraction: number, rng: Rng): [string[], string[]] {
  const order = rng.shuffle([...patients]);
  const n = Math.ceil(fraction * order.length - 1e-9);
  return [order.slice(0, n), order.slice(n)];
}

function assign<T extends HasPatient>(
  entries: readonly T[],
  subsetOf: Map<string, Subset>,
): Split<T> {
  const out: Split<T> = { train: [], val: [], test: [] };
  for (const e of entries) {
    const s = subsetOf.get(e.patientId);
    if (s) out[s].push(e);
  }
  return out;
}

/**
 * Random patient split: test = 20% of patients, val = 0.1/0.8 of the remaining patients,
 * train the rest. With `subsetSize`, that many patients are drawn first.
 */
export function patientSplit<T extends HasPatient>(
  entries: readonly T[],
  opts: SplitOptions,
): Split<T> {
  const [, valRatio, testRatio] = opts.ratio ?? TRAIN_VAL_TEST_RATIO;
  const rng = new Rng(opts.seed);
  const patients = drawPatients(patientsOf(entries), opts.subsetSize, rng);
  if (patients.length < 3) {
    throw new UserError(
      `only ${patients.length} patient(s): need at least 3 to split into train, val and test`,
    );
  }
  const [test, rest] = groupShuffle(patients, testRatio, rng);
  const [val, train] = groupShuffle(rest, valRatio / (1 - testRatio), rng);
  if (train.length === 0) {
    throw new UserError(`too few patients (${patients.length}) to leave any for training`);
  }
  const subsetOf = new Map<string, Subset>();
  for (const p of train) subsetOf.set(p, "train");
  for (const p of val) subsetOf.set(p, "val");
  for (const p of test) subsetOf.set(p, "test");
  return assign(entries, subsetOf);
}

/** An official split and what it had to leave out. */
export interface OfficialSplit<T> extends Record<Subset, T[]> {
  /** Images in neither list. */
  unlisted: number;
  /** Train/val images dropped because their patient has test images. */
  overlapping: number;
}

/**
 * NIH's official split: test = the images of `test_list.txt`; the images of
 * `train_val_list.txt` are split by patient into val (0.1/0.8 of their patients) and train.
 * With `subsetSize`, that many patients are drawn first from all patients.
 */
export function officialSplit<T extends HasPatient & { image: string }>(
  entries: readonly T[],
  lists: { trainVal: Set<string>; test: Set<string> },
  opts: SplitOptions,
): OfficialSplit<T> {
  const [, valRatio, testRatio] = opts.ratio ?? TRAIN_VAL_TEST_RATIO;
  const rng = new Rng(opts.seed);
  const chosen = new Set(drawPatients(patientsOf(entries), opts.subsetSize, rng));
  const pool = entries.filter((e) => chosen.has(e.patientId));
  const test = pool.filter((e) => lists.test.has(e.image));
  const testPatients = new Set(test.map((e) => e.patientId));
  const listed = pool.filter((e) => lists.trainVal.has(e.image) && !lists.test.has(e.image));
  const trainVal = listed.filter((e) => !testPatients.has(e.patientId));
  const unlisted = pool.length - test.length - listed.length;
  const [val] = groupShuffle(patientsOf(trainVal), valRatio / (1 - testRatio), rng);
  const subsetOf = new Map<string, Subset>();
  for (const e of trainVal) subsetOf.set(e.patientId, "train");
  for (const p of val) subsetOf.set(p, "val");
  const rest = assign(trainVal, subsetOf);
  return {
    train: rest.train,
    val: rest.val,
    test,
    unlisted,
    overlapping: listed.length - trainVal.length,
  };
}
