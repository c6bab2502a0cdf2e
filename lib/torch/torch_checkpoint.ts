/**
 * Reads and writes PyTorch checkpoint files without Python: the zip format (PyTorch ≥ 1.6:
 * `<prefix>/data.pkl` plus one `<prefix>/data/<key>` member per storage) and the legacy format
 * (several pickles back to back, then the raw storages). Tensors become `HostTensor`s; the
 * original tool's checkpoint `{'model': state_dict, 'thresholds': ndarray}` becomes a
 * `Checkpoint`. Writing reproduces what `torch.save` (1.13) writes for such a checkpoint.
 * @module
 */

import { printable, UserError } from "../util/errors.ts";
import { writeFileAtomic } from "../util/atomic_file.ts";
import { refuseSpecialFile } from "../util/input_files.ts";
import { dtypeSize, TorchDType, TorchStorage, TorchStorageType, unpickleAt } from "./pickle.ts";
import type { Checkpoint, DType, HostTensor, StateDict } from "./state_dict.ts";
import { looksLikeZip, writeZip, ZipArchive, type ZipEntry } from "./zip_store.ts";

/** First pickle of a legacy torch file. */
const LEGACY_MAGIC = 0x1950a86a20f9469cfc6cn;

function storageFromPid(
  pid: unknown,
  source: string,
): { type: DType; key: string; numel: number; view: unknown } {
  if (!Array.isArray(pid) || pid[0] !== "storage" || pid.length < 5) {
    throw new UserError(`unexpected persistent id in ${source}: not a PyTorch tensor file`);
  }
  const [, type, key, , numel, view] = pid;
  let dtype: DType;
  if (type instanceof TorchStorageType || type instanceof TorchDType) dtype = type.dtype;
  else throw new UserError(`unknown storage type in ${source}`);
  if (
    !Number.isSafeInteger(numel) || numel < 0 ||
    (typeof key !== "string" && typeof key !== "number")
  ) {
    throw new UserError(`malformed storage reference in ${source}: the file is corrupt`);
  }
  return { type: dtype, key: String(key), numel, view };
}

/**
 * The most a checkpoint's pickle may inflate to. A state dict's pickle holds names and shapes
 * (DenseNet-121's: about 100 KB); the tensors' bytes live in their own members.
 */
const MAX_PICKLE_BYTES = 64 << 20;

/**
 * Reads a zip-format torch file. Only the members the pickle references are inflated, each to
 * exactly the bytes its storage declares (so the total is what the tensors need), after the
 * pickle has been read: a member nobody references, or one larger than its storage, never
 * costs memory.
 */
function readZipFormat(bytes: Uint8Array, source: string): unknown {
  const zip = new ZipArchive(bytes, source);
  const pkl = zip.names().find((n) => n === "data.pkl" || n.endsWith("/data.pkl"));
  if (pkl === undefined) {
    throw new UserError(`${source} is a zip archive but not a PyTorch checkpoint (no data.pkl)`);
  }
  const prefix = pkl.slice(0, pkl.length - "data.pkl".length);
  // PyTorch ≥ 2.1 records the writer's byte order; storages are read as little-endian.
  const orderName = `${prefix}byteorder`;
  const order = zip.has(orderName) ? zip.read(orderName, 16, "a byte-order record") : undefined;
  if (order !== undefined && new TextDecoder().decode(order).trim() === "big") {
    throw new UserError(`${source} was written on a big-endian machine; not supported`);
  }
  const storages = new Map<string, TorchStorage>();
  const persistentLoad = (pid: unknown) => {
    const { type, key, numel } = storageFromPid(pid, source);
    let s = storages.get(key);
    if (s === undefined) {
      s = new TorchStorage(type, numel, key);
      const name = `${prefix}data/${key}`;
      const size = zip.declaredSize(name);
      if (size === undefined) {
        throw new UserError(`${source} lacks storage ${printable(name)}: file is corrupt`);
      }
      if (size < numel * dtypeSize(type)) {
        throw new UserError(`storage ${printable(key)} of ${source} is shorter than declared`);
      }
      storages.set(key, s);
    }
    return s;
  };
  const { value } = unpickleAt(zip.read(pkl, MAX_PICKLE_BYTES, "a checkpoint's pickle"), 0, {
    source,
    persistentLoad,
  });
  for (const s of storages.values()) {
    const need = s.numel * dtypeSize(s.dtype);
    s.bytes = zip.read(`${prefix}data/${s.key}`, need, `storage ${printable(s.key)}`);
    s.materialize(source);
  }
  return value;
}

/** Reads a legacy (pre-1.6) torch file. */
function readLegacyFormat(bytes: Uint8Array, source: string): unknown {
  const notCheckpoint = () =>
    new UserError(
      `${source} is not a PyTorch checkpoint (neither a zip archive nor a legacy file)`,
    );
  let magic: unknown;
  let pos: number;
  try {
    ({ value: magic, end: pos } = unpickleAt(bytes, 0, { source }));
  } catch {
    throw notCheckpoint();
  }
  if (magic !== LEGACY_MAGIC) throw notCheckpoint();
  const proto = unpickleAt(bytes, pos, { source });
  if (proto.value !== 1001) {
    throw new UserError(
      `${source}: unsupported legacy torch protocol ${printable(String(proto.value))}`,
    );
  }
  const sys = unpickleAt(bytes, proto.end, { source });
  if (sys.value instanceof Map && sys.value.get("little_endian") === false) {
    throw new UserError(`${source} was written on a big-endian machine; not supported`);
  }
  const roots = new Map<string, TorchStorage>();
  const all: TorchStorage[] = [];
  const persistentLoad = (pid: unknown) => {
    const { type, key, numel, view } = storageFromPid(pid, source);
    let root = roots.get(key);
    if (root === undefined) {
      root = new TorchStorage(type, numel, key);
      roots.set(key, root);
      all.push(root);
    }
    if (view === null || view === undefined) return root;
    if (!Array.isArray(view) || view.length !== 3) {
      throw new UserError(`malformed storage view in ${source}`);
    }
    const [viewKey, offset, size] = view as [string, unknown, unknown];
    if (
      !Number.isSafeInteger(offset) || !Number.isSafeInteger(size) || (offset as number) < 0 ||
      (size as number) < 0 || (offset as number) + (size as number) > numel
    ) {
      throw new UserError(
        `storage view ${printable(String(viewKey))} exceeds its storage in ${source}`,
      );
    }
    const v = new TorchStorage(type, size as number, String(viewKey), offset as number, root);
    all.push(v);
    return v;
  };
  const main = unpickleAt(bytes, sys.end, { source, persistentLoad });
  const keysP = unpickleAt(bytes, main.end, { source });
  if (!Array.isArray(keysP.value)) throw new UserError(`${source}: storage key list is corrupt`);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  pos = keysP.end;
  for (const k of keysP.value) {
    const root = roots.get(String(k));
    if (root === undefined) {
      throw new UserError(`${source}: unknown storage key ${printable(String(k))}`);
    }
    if (pos + 8 > bytes.length) {
      throw new UserError(`${source} is truncated (storage ${printable(String(k))})`);
    }
    const numel = Number(dv.getBigInt64(pos, true));
    const len = numel * dtypeSize(root.dtype);
    pos += 8;
    if (numel < 0 || numel < root.numel) {
      throw new UserError(
        `${source}: storage ${printable(String(k))} at byte ${
          pos - 8
        } declares ${numel} elements, ` +
          `${root.numel} expected; the file is corrupt`,
      );
    }
    if (pos + len > bytes.length) {
      throw new UserError(`${source} is truncated (storage ${printable(String(k))})`);
    }
    root.bytes = bytes.subarray(pos, pos + len);
    pos += len;
  }
  for (const s of all) s.materialize(source);
  return main.value;
}

/**
 * Reads a torch file (zip or legacy format) into JavaScript values: dicts become `Map`s,
 * tensors `HostTensor`s (contiguous, row-major), numpy arrays `HostTensor`s.
 */
export function readTorchFile(bytes: Uint8Array, source: string): unknown {
  return looksLikeZip(bytes) ? readZipFormat(bytes, source) : readLegacyFormat(bytes, source);
}

function isTensor(v: unknown): v is HostTensor {
  return v !== null && typeof v === "object" && "dtype" in v && "shape" in v && "data" in v;
}

function asStateDict(v: unknown, source: string): StateDict | null {
  if (!(v instanceof Map) || v.size === 0) return null;
  const sd: StateDict = new Map();
  for (const [k, t] of v) {
    if (typeof k !== "string" || !isTensor(t)) return null;
    sd.set(k, t);
  }
  if (sd.size === 0) throw new UserError(`${source}: the state_dict is empty`);
  return sd;
}

/**
 * Interprets a torch file's top-level value as a checkpoint: the original tool's
 * `{'model': state_dict, 'thresholds': ndarray}`, `{'state_dict': ...}`, or a bare state_dict.
 * Keys are returned as stored.
 */
export function checkpointFromValue(value: unknown, source: string): Checkpoint {
  const notCkpt = new UserError(
    `${source} is not a model checkpoint: expected a state_dict or {'model': state_dict, ...}`,
  );
  if (!(value instanceof Map)) throw notCkpt;
  const wrapped = value.get("model") ?? value.get("state_dict");
  const stateDict = asStateDict(wrapped ?? value, source);
  if (stateDict === null) throw notCkpt;
  let thresholds: Float64Array | null = null;
  const t = wrapped !== undefined ? value.get("thresholds") : undefined;
  if (isTensor(t)) {
    if (t.shape.length !== 1) throw new UserError(`${source}: thresholds must be a 1-D array`);
    thresholds = Float64Array.from(t.data as ArrayLike<number>, Number);
  } else if (Array.isArray(t) && t.every((x) => typeof x === "number")) {
    thresholds = Float64Array.from(t);
  } else if (t !== undefined && t !== null) {
    throw new UserError(`${source}: thresholds are not a numeric array`);
  }
  return { stateDict, thresholds };
}

/** Loads a checkpoint file (zip or legacy torch format). */
export async function loadCheckpoint(path: string): Promise<Checkpoint> {
  let bytes: Uint8Array;
  // Stat'ed before any read: a device or a FIFO is one line, not an endless read.
  await refuseSpecialFile(path, "checkpoint", "pass a model file (*.pt)");
  try {
    bytes = await Deno.readFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new UserError(`checkpoint not found: ${path}`);
    }
    if (e instanceof Deno.errors.IsADirectory) {
      throw new UserError(`checkpoint path is a directory: ${path}`);
    }
    throw e;
  }
  return checkpointFromValue(readTorchFile(bytes, path), path);
}

// ---------------------------------------------------------------------------------------------
// Writing: a pickler (protocol 2) that emits exactly what Python's pickler emits for torch.save

const STORAGE_TYPES: [new (...a: never[]) => HostTensor["data"], string][] = [
  [Float32Array, "FloatStorage"],
  [Float64Array, "DoubleStorage"],
  [BigInt64Array, "LongStorage"],
  [Int32Array, "IntStorage"],
  [Int16Array, "ShortStorage"],
  [Int8Array, "CharStorage"],
];

/** The protocol-2 pickler `torch.save` output is made with (also used by results_pt.ts). */
export class Pickler {
  private out: number[] = [];
  private memo = new Map<string, number>();
  private enc = new TextEncoder();
  /** Storages in persistent-id order: key = index. */
  readonly storages: Uint8Array[] = [];

  bytes(): Uint8Array {
    return Uint8Array.from(this.out);
  }
  private op(...b: number[]): void {
    for (const x of b) this.out.push(x);
  }
  private u32(n: number): void {
    this.op(n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, (n >>> 24) & 0xff);
  }
  private put(key: string | null): void {
    const i = this.memo.size;
    this.memo.set(key ?? `#${i}`, i);
    if (i < 256) {
      this.op(0x71, i); // BINPUT
    } else {
      this.op(0x72); // LONG_BINPUT
      this.u32(i);
    }
  }
  private get(key: string): boolean {
    const i = this.memo.get(key);
    if (i === undefined) return false;
    if (i < 256) {
      this.op(0x68, i); // BINGET
    } else {
      this.op(0x6a); // LONG_BINGET
      this.u32(i);
    }
    return true;
  }
  proto(): void {
    this.op(0x80, 2);
  }
  stop(): void {
    this.op(0x2e);
  }
  mark(): void {
    this.op(0x28);
  }
  int(n: number): void {
    if (n >= 0 && n <= 0xff) this.op(0x4b, n);
    else if (n >= 0 && n <= 0xffff) this.op(0x4d, n & 0xff, n >> 8);
    else if (n >= -0x80000000 && n <= 0x7fffffff) {
      this.op(0x4a); // BININT
      this.u32(n);
    } else {
      // LONG1, as Python's encode_long: (bit_length >> 3) + 1 bytes, one 0xff trimmed.
      const x = BigInt(n);
      const bits = (x < 0n ? -x - 1n : x).toString(2).length;
      let nbytes = (bits >> 3) + 1;
      const b: number[] = [];
      for (let i = 0, v = BigInt.asUintN(8 * nbytes, x); i < nbytes; i++, v >>= 8n) {
        b.push(Number(v & 0xffn));
      }
      if (x < 0n && nbytes > 1 && b[nbytes - 1] === 0xff && (b[nbytes - 2] & 0x80) !== 0) {
        b.pop();
        nbytes--;
      }
      this.op(0x8a, b.length, ...b);
    }
  }
  bool(b: boolean): void {
    this.op(b ? 0x88 : 0x89);
  }
  none(): void {
    this.op(0x4e);
  }
  /** A str; equal strings share one memo entry (Python interns the constants torch uses). */
  str(s: string): void {
    if (this.get(`s:${s}`)) return;
    const b = this.enc.encode(s);
    this.op(0x58);
    this.u32(b.length);
    for (const x of b) this.out.push(x);
    this.put(`s:${s}`);
  }
  global(module: string, name: string): void {
    if (this.get(`g:${module}.${name}`)) return;
    this.op(0x63);
    for (const x of this.enc.encode(`${module}\n${name}\n`)) this.out.push(x);
    this.put(`g:${module}.${name}`);
  }
  /** A tuple whose items are written by `items`; `n` is its length. */
  tuple(n: number, items: () => void): void {
    if (n === 0) return this.op(0x29); // EMPTY_TUPLE, not memoized
    if (n > 3) this.mark();
    items();
    this.op(n === 1 ? 0x85 : n === 2 ? 0x86 : n === 3 ? 0x87 : 0x74);
    this.put(null);
  }
  intTuple(v: number[]): void {
    this.tuple(v.length, () => v.forEach((x) => this.int(x)));
  }
  reduce(): void {
    this.op(0x52);
    this.put(null);
  }
  /** `bytes` under protocol 2: `_codecs.encode(latin1 str, 'latin1')`. */
  pyBytes(b: Uint8Array): void {
    this.global("_codecs", "encode");
    let s = "";
    for (let i = 0; i < b.length; i += 8192) s += String.fromCharCode(...b.subarray(i, i + 8192));
    this.tuple(2, () => {
      this.str(s);
      this.str("latin1");
    });
    this.reduce();
  }
  /** dict items in Python's batches of 1000 (SETITEM for a batch of one). */
  setItems(items: [string, () => void][]): void {
    for (let i = 0; i < items.length; i += 1000) {
      const batch = items.slice(i, i + 1000);
      if (batch.length > 1) this.mark();
      for (const [k, v] of batch) {
        this.str(k);
        v();
      }
      this.op(batch.length > 1 ? 0x75 : 0x73);
    }
  }
  emptyDict(): void {
    this.op(0x7d);
    this.put(null);
  }
  orderedDict(items: [string, () => void][]): void {
    this.global("collections", "OrderedDict");
    this.op(0x29); // ()
    this.reduce();
    this.setItems(items);
  }
  /** A tensor as `torch._utils._rebuild_tensor_v2(storage, 0, size, stride, False, {})`. */
  tensor(t: HostTensor, name: string): void {
    const entry = STORAGE_TYPES.find(([cls]) => t.data instanceof cls);
    let data = t.data;
    let type = entry?.[1];
    if (t.data instanceof Uint8Array) type = t.dtype === "bool" ? "BoolStorage" : "ByteStorage";
    if (type === undefined) throw new UserError(`cannot write tensor ${name}: unsupported data`);
    if (t.dtype === "float16" || t.dtype === "bfloat16") type = "FloatStorage"; // widened
    const n = t.shape.reduce((a, b) => a * b, 1);
    if (data.length !== n) {
      throw new UserError(
        `cannot write tensor ${name}: ${data.length} values for shape [${t.shape}]`,
      );
    }
    if (data.byteOffset !== 0 || data.byteLength !== data.buffer.byteLength) data = data.slice();
    const key = this.storages.length;
    this.storages.push(new Uint8Array(data.buffer, 0, data.byteLength));
    const stride: number[] = [];
    for (let d = t.shape.length - 1, s = 1; d >= 0; d--) {
      stride.unshift(s);
      s *= t.shape[d];
    }
    this.global("torch._utils", "_rebuild_tensor_v2");
    this.tuple(6, () => {
      this.tuple(5, () => {
        this.str("storage");
        this.global("torch", type!);
        this.str(String(key));
        this.str("cpu");
        this.int(n);
      });
      this.op(0x51); // BINPERSID
      this.int(0);
      this.intTuple(t.shape);
      this.intTuple(stride);
      this.bool(false);
      this.orderedDict([]);
    });
    this.reduce();
  }
  /** A 1-D float64 numpy array, as numpy's `ndarray.__reduce__` pickles it. */
  float64Array(v: Float64Array): void {
    this.global("numpy.core.multiarray", "_reconstruct");
    this.tuple(3, () => {
      this.global("numpy", "ndarray");
      this.intTuple([0]);
      this.pyBytes(new Uint8Array([0x62])); // b'b'
    });
    this.reduce();
    this.tuple(5, () => {
      this.int(1);
      this.intTuple([v.length]);
      this.float64Dtype();
      this.bool(false);
      const copy = Float64Array.from(v);
      this.pyBytes(new Uint8Array(copy.buffer));
    });
    this.op(0x62); // BUILD
  }
  /** A numpy float64 scalar (`np.float64`), as `numpy.core.multiarray.scalar` pickles it. */
  float64Scalar(x: number): void {
    this.global("numpy.core.multiarray", "scalar");
    this.tuple(2, () => {
      this.float64Dtype();
      this.pyBytes(new Uint8Array(Float64Array.of(x).buffer));
    });
    this.reduce();
  }
  /** `numpy.dtype('f8')` with its little-endian state. */
  private float64Dtype(): void {
    this.global("numpy", "dtype");
    this.tuple(3, () => {
      this.str("f8");
      this.bool(false);
      this.bool(true);
    });
    this.reduce();
    this.tuple(8, () => {
      this.int(3);
      this.str("<");
      this.none();
      this.none();
      this.none();
      this.int(-1);
      this.int(-1);
      this.int(0);
    });
    this.op(0x62); // BUILD
  }
}

/**
 * Serializes a checkpoint as `torch.save({'model': state_dict, 'thresholds': ndarray})` does
 * (zip format, archive prefix `archive/`). A null `thresholds` is left out of the dict.
 */
export function encodeCheckpoint(ckpt: Checkpoint): Uint8Array {
  const p = new Pickler();
  p.proto();
  p.emptyDict();
  const top: [string, () => void][] = [[
    "model",
    () => p.orderedDict([...ckpt.stateDict].map(([k, t]) => [k, () => p.tensor(t, k)])),
  ]];
  const th = ckpt.thresholds;
  if (th !== null) top.push(["thresholds", () => p.float64Array(th)]);
  p.setItems(top);
  p.stop();
  const entries: ZipEntry[] = [{ name: "archive/data.pkl", data: p.bytes() }];
  // torch writes storages sorted by key as strings ("0", "1", "10", ...).
  const keys = p.storages.map((_, i) => String(i)).sort();
  for (const k of keys) entries.push({ name: `archive/data/${k}`, data: p.storages[Number(k)] });
  entries.push({ name: "archive/version", data: new TextEncoder().encode("3\n") });
  return writeZip(entries);
}

/** Writes a checkpoint atomically in the zip format `torch.load` (PyTorch ≥ 1.6) reads. */
export async function writeCheckpoint(path: string, ckpt: Checkpoint): Promise<void> {
  await writeFileAtomic(path, encodeCheckpoint(ckpt));
}
