/**
 * A safe Python pickle reader (protocols 0–5) and the `.pyd` label codec of the shards.
 *
 * The unpickler executes no code: a GLOBAL/STACK_GLOBAL opcode resolves only names on an
 * allow-list (numpy array reconstruction, `collections.OrderedDict`, `_codecs.encode`, the
 * torch tensor rebuild helpers and storage types); any other name is refused with a
 * `UserError`. Python values map to JavaScript as: dict/OrderedDict → `Map`, list/tuple →
 * array, str → string, int → number (bigint beyond ±2^53), float → number, bytes →
 * `Uint8Array`, None → null, set/frozenset → `Set`, numpy ndarray → `HostTensor`.
 * @module
 */

import { LABELS, NUM_CLASSES } from "../../config.ts";
import { printable, UserError } from "../util/errors.ts";
import type { DType, HostTensor } from "./state_dict.ts";

/** A Python callable made available to REDUCE/NEWOBJ by the allow-list. */
export class PyCallable {
  constructor(
    /** Dotted Python name, e.g. `collections.OrderedDict`. */
    readonly name: string,
    /** Called with the positional arguments (REDUCE, NEWOBJ). */
    readonly call: (args: unknown[], kwargs?: Map<unknown, unknown>) => unknown,
  ) {}
}

/** A torch storage class such as `torch.FloatStorage`, as it appears in persistent ids. */
export class TorchStorageType {
  constructor(readonly name: string, readonly dtype: DType) {}
}

/** A torch dtype object such as `torch.float32` (seen in newer persistent ids). */
export class TorchDType {
  constructor(readonly name: string, readonly dtype: DType) {}
}

/**
 * A tensor storage handed to the unpickler by `persistentLoad`. Its bytes (raw, little-endian)
 * may arrive after the pickle (legacy torch format): tensors built on it are recorded as
 * `views` and filled in by `materialize()`.
 */
export class TorchStorage {
  /** Raw little-endian bytes, once known. */
  bytes: Uint8Array | null = null;
  /** Tensors built on this storage, waiting for `materialize()`. */
  readonly views: {
    tensor: HostTensor;
    offset: number;
    shape: number[];
    stride: number[];
  }[] = [];
  constructor(
    readonly dtype: DType,
    /** Number of elements. */
    readonly numel: number,
    /** The storage key (`archive/data/<key>` or the legacy key). */
    readonly key: string,
    /** Element offset into a parent storage (legacy storage views), else 0. */
    readonly baseOffset = 0,
    readonly parent: TorchStorage | null = null,
  ) {}

  /** Fills every view's `data` from `bytes` (or the parent's). Call once the bytes are known. */
  materialize(source: string): void {
    const root = this.parent ?? this;
    if (this.views.length === 0) return;
    if (root.bytes === null) {
      throw new UserError(
        `storage ${printable(this.key)} has no data in ${source}: file is corrupt`,
      );
    }
    const size = dtypeSize(this.dtype);
    const start = this.baseOffset * size;
    const all = decodeElements(
      root.bytes.subarray(start, start + this.numel * size),
      this.dtype,
      true,
      source,
    );
    const lone = this.views.length === 1 ? this.views[0] : null;
    if (lone && lone.offset === 0 && isContiguous(lone) && numelOf(lone.shape) === all.length) {
      lone.tensor.data = all; // a lone view of the whole storage owns it: saves a copy
    } else {
      for (const v of this.views) {
        v.tensor.data = gather(all, v.offset, v.shape, v.stride, this.numel, source);
      }
    }
    this.views.length = 0;
  }
}

/** Options of `unpickle`. */
export interface UnpickleOptions {
  /** Resolves BINPERSID/PERSID ids (torch storages). Without it, persistent ids are refused. */
  persistentLoad?: (pid: unknown) => unknown;
  /** Extra allowed globals, by dotted name (`module.name`); they override the defaults. */
  globals?: Record<string, (...args: unknown[]) => unknown>;
  /** File name for error messages. */
  source?: string;
}

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

/** Python int → number when exactly representable, else bigint. */
function pyInt(v: bigint): number | bigint {
  return v <= MAX_SAFE && v >= -MAX_SAFE ? Number(v) : v;
}

/** Bytes per element of a dtype. */
export function dtypeSize(dtype: DType): number {
  switch (dtype) {
    case "float64":
    case "int64":
      return 8;
    case "float32":
    case "int32":
      return 4;
    case "float16":
    case "bfloat16":
    case "int16":
      return 2;
    default:
      return 1;
  }
}

function halfToFloat(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const f = h & 0x3ff;
  if (e === 0) return s * f * 2 ** -24;
  if (e === 31) return f ? NaN : s * Infinity;
  return s * (1 + f / 1024) * 2 ** (e - 15);
}

/** Decodes raw element bytes of `dtype` (little- or big-endian) into a fresh typed array. */
export function decodeElements(
  bytes: Uint8Array,
  dtype: DType,
  littleEndian: boolean,
  source = "<bytes>",
): HostTensor["data"] {
  const size = dtypeSize(dtype);
  if (bytes.length % size !== 0) {
    throw new UserError(`array data of ${source} is not a whole number of ${dtype} elements`);
  }
  const n = bytes.length / size;
  // Copy into a fresh, aligned buffer (file bytes may sit at any offset).
  const copy = new Uint8Array(bytes);
  if (!littleEndian && size > 1) {
    for (let i = 0; i < copy.length; i += size) copy.subarray(i, i + size).reverse();
  }
  const buf = copy.buffer;
  switch (dtype) {
    case "float32":
      return new Float32Array(buf, 0, n);
    case "float64":
      return new Float64Array(buf, 0, n);
    case "int64":
      return new BigInt64Array(buf, 0, n);
    case "int32":
      return new Int32Array(buf, 0, n);
    case "int16":
      return new Int16Array(buf, 0, n);
    case "int8":
      return new Int8Array(buf, 0, n);
    case "uint8":
    case "bool":
      return copy;
    case "float16": {
      const h = new Uint16Array(buf, 0, n);
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = halfToFloat(h[i]);
      return out;
    }
    case "bfloat16": {
      const h = new Uint16Array(buf, 0, n);
      const u = new Uint32Array(n);
      for (let i = 0; i < n; i++) u[i] = h[i] << 16;
      return new Float32Array(u.buffer);
    }
  }
}

function numelOf(shape: number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

function isContiguous(v: { shape: number[]; stride: number[] }): boolean {
  for (let d = v.shape.length - 1, s = 1; d >= 0; d--) {
    if (v.shape[d] !== 1 && v.stride[d] !== s) return false;
    s *= v.shape[d];
  }
  return true;
}

/** Elements a view may expand its storage to (through zero strides). */
const MAX_EXPANDED = 1 << 24;

/** Copies a strided view of `all` into a contiguous row-major array. */
function gather(
  all: HostTensor["data"],
  offset: number,
  shape: number[],
  stride: number[],
  storageNumel: number,
  source: string,
): HostTensor["data"] {
  const n = shape.reduce((a, b) => a * b, 1);
  if (n === 0) return all.slice(0, 0);
  if (n > storageNumel && n > MAX_EXPANDED) {
    // Zero strides can describe any size over a tiny storage: refuse rather than allocate it.
    throw new UserError(
      `tensor view of ${n} elements over a storage of ${storageNumel} in ${source}: refused`,
    );
  }
  let last = offset;
  for (let d = 0; d < shape.length; d++) last += (shape[d] - 1) * stride[d];
  if (offset < 0 || last >= storageNumel) {
    throw new UserError(`tensor view exceeds its storage in ${source}: file is corrupt`);
  }
  if (isContiguous({ shape, stride })) return all.slice(offset, offset + n);
  const out = all.slice(0, n);
  const idx = new Array(shape.length).fill(0);
  let src = offset;
  for (let i = 0; i < n; i++) {
    // deno-lint-ignore no-explicit-any
    (out as any)[i] = (all as any)[src];
    for (let d = shape.length - 1; d >= 0; d--) {
      idx[d]++;
      src += stride[d];
      if (idx[d] < shape[d]) break;
      src -= idx[d] * stride[d];
      idx[d] = 0;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// numpy support

const NUMPY_DTYPES: Record<string, DType> = {
  f2: "float16",
  f4: "float32",
  f8: "float64",
  i1: "int8",
  i2: "int16",
  i4: "int32",
  i8: "int64",
  u1: "uint8",
  b1: "bool",
};

/** A numpy dtype under construction (`numpy.dtype(...)` then BUILD with its state). */
class NumpyDType {
  littleEndian = true;
  constructor(readonly code: string, readonly dtype: DType | null) {}
}

/** numpy arrays being rebuilt: `_reconstruct` makes the object, BUILD fills it in. */
const pendingArrays = new WeakSet<object>();

function toShape(v: unknown, what: string): number[] {
  if (!Array.isArray(v) || !v.every((d) => Number.isSafeInteger(d) && (d as number) >= 0)) {
    throw new Error(`${what}: expected a tuple of sizes`);
  }
  return v as number[];
}

function buildNumpyArray(arr: HostTensor, state: unknown, source: string): void {
  if (!Array.isArray(state) || (state.length !== 5 && state.length !== 4)) {
    throw new UserError(`unsupported numpy array state in ${source}`);
  }
  const [shapeV, dt, fortran, raw] = state.length === 5 ? state.slice(1) : state;
  const shape = toShape(shapeV, "numpy array shape");
  if (!(dt instanceof NumpyDType) || dt.dtype === null) {
    const code = dt instanceof NumpyDType ? dt.code : String(dt);
    throw new UserError(`unsupported numpy dtype '${printable(code)}' in ${source}`);
  }
  let bytes: Uint8Array;
  if (raw instanceof Uint8Array) bytes = raw;
  else if (typeof raw === "string") bytes = latin1Bytes(raw);
  else throw new UserError(`numpy object arrays are not supported (${source})`);
  const n = shape.reduce((a, b) => a * b, 1);
  if (bytes.length !== n * dtypeSize(dt.dtype)) {
    throw new UserError(`numpy array data size does not match its shape in ${source}`);
  }
  let data = decodeElements(bytes, dt.dtype, dt.littleEndian, source);
  if (fortran === true && shape.length > 1) {
    // Column-major storage: stride 1 on the first axis.
    const stride: number[] = [];
    for (let d = 0, s = 1; d < shape.length; d++) {
      stride.push(s);
      s *= shape[d];
    }
    data = gather(data, 0, shape, stride, n, source);
  }
  arr.dtype = dt.dtype;
  arr.shape = shape;
  arr.data = data;
  pendingArrays.delete(arr);
}

function latin1Bytes(s: string): Uint8Array {
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c > 255) throw new Error("latin1 encode: character out of range");
    out[i] = c;
  }
  return out;
}

function numpyScalar(args: unknown[], source: string): unknown {
  const [dt, raw] = args;
  if (!(dt instanceof NumpyDType) || dt.dtype === null) {
    throw new UserError(`unsupported numpy scalar in ${source}`);
  }
  const bytes = raw instanceof Uint8Array ? raw : latin1Bytes(String(raw));
  const v = decodeElements(bytes, dt.dtype, dt.littleEndian, source)[0];
  if (typeof v === "bigint") return pyInt(v);
  if (dt.dtype === "bool") return v !== 0;
  return v;
}

// ---------------------------------------------------------------------------------------------
// torch support

const TORCH_STORAGES: Record<string, DType> = {
  FloatStorage: "float32",
  DoubleStorage: "float64",
  HalfStorage: "float16",
  BFloat16Storage: "bfloat16",
  LongStorage: "int64",
  IntStorage: "int32",
  ShortStorage: "int16",
  CharStorage: "int8",
  ByteStorage: "uint8",
  BoolStorage: "bool",
};

const TORCH_DTYPES: Record<string, DType> = {
  float32: "float32",
  float: "float32",
  float64: "float64",
  double: "float64",
  float16: "float16",
  half: "float16",
  bfloat16: "bfloat16",
  int64: "int64",
  long: "int64",
  int32: "int32",
  int: "int32",
  int16: "int16",
  int8: "int8",
  uint8: "uint8",
  bool: "bool",
};

function rebuildTensor(args: unknown[], source: string): HostTensor {
  const [storage, offset, size, stride] = args;
  if (!(storage instanceof TorchStorage)) {
    throw new UserError(`tensor without a storage in ${source}: not a PyTorch file`);
  }
  const shape = toShape(size, "tensor size");
  const strides = toShape(stride, "tensor stride");
  if (!Number.isSafeInteger(offset) || (offset as number) < 0 || strides.length !== shape.length) {
    throw new UserError(`malformed tensor in ${source}`);
  }
  const tensor: HostTensor = { dtype: storage.dtype, shape, data: new Float32Array(0) };
  storage.views.push({ tensor, offset: offset as number, shape, stride: strides });
  return tensor;
}

// ---------------------------------------------------------------------------------------------
// The allow-list

function defaultGlobals(source: string): Map<string, unknown> {
  const g = new Map<string, unknown>();
  const fn = (name: string, call: (args: unknown[]) => unknown) =>
    g.set(name, new PyCallable(name, call));
  const reconstruct = (args: unknown[]) => {
    const arr: HostTensor = { dtype: "float64", shape: [0], data: new Float64Array(0) };
    if (!(args[0] instanceof PyCallable) || args[0].name !== "numpy.ndarray") {
      throw new UserError(`unsupported numpy array subclass in ${source}`);
    }
    pendingArrays.add(arr);
    return arr;
  };
  const dtype = (args: unknown[]) => {
    const spec = String(args[0]);
    let code = spec;
    let little = true;
    if (/^[<>=|]/.test(code)) {
      little = code[0] !== ">";
      code = code.slice(1);
    }
    const d = new NumpyDType(code, NUMPY_DTYPES[code] ?? null);
    d.littleEndian = little;
    return d;
  };
  for (const mod of ["numpy.core.multiarray", "numpy._core.multiarray"]) {
    fn(`${mod}._reconstruct`, reconstruct);
    fn(`${mod}.scalar`, (a) => numpyScalar(a, source));
  }
  // Protocol 5 pickles arrays as `_frombuffer(buffer, dtype, shape, order)`.
  for (const mod of ["numpy.core.numeric", "numpy._core.numeric"]) {
    fn(`${mod}._frombuffer`, (args) => {
      const [buf, dt, shape, order] = args;
      const arr: HostTensor = { dtype: "float64", shape: [0], data: new Float64Array(0) };
      buildNumpyArray(arr, [1, shape, dt, order === "F", buf], source);
      return arr;
    });
  }
  fn("numpy.ndarray", () => {
    throw new UserError(`direct numpy.ndarray construction is not supported (${source})`);
  });
  fn("numpy.dtype", dtype);
  fn("_codecs.encode", (args) => {
    const [s, enc] = args;
    if (typeof s !== "string") throw new Error("_codecs.encode: expected a str");
    const e = String(enc ?? "utf-8").toLowerCase().replace(/[-_]/g, "");
    if (e === "latin1" || e === "iso88591") return latin1Bytes(s);
    if (e === "utf8") return new TextEncoder().encode(s);
    throw new UserError(`unsupported encoding '${printable(String(enc))}' in ${source}`);
  });
  fn("collections.OrderedDict", (args) => {
    const m = new Map<unknown, unknown>();
    const items = args[0];
    if (items instanceof Map) { for (const [k, v] of items) m.set(k, v); }
    else if (Array.isArray(items)) { for (const kv of items) m.set(kv[0], kv[1]); }
    return m;
  });
  // Python 3 writes builtins under their Python 2 module name for protocols < 3.
  for (const mod of ["builtins", "__builtin__"]) {
    fn(`${mod}.set`, (args) => new Set(Array.isArray(args[0]) ? args[0] : []));
    fn(`${mod}.frozenset`, (args) => new Set(Array.isArray(args[0]) ? args[0] : []));
    fn(`${mod}.bytes`, (args) => new Uint8Array(Array.isArray(args[0]) ? args[0] : []));
    fn(`${mod}.bytearray`, (args) => new Uint8Array(Array.isArray(args[0]) ? args[0] : []));
  }
  fn("torch._utils._rebuild_tensor_v2", (a) => rebuildTensor(a, source));
  fn("torch._utils._rebuild_tensor", (a) => rebuildTensor(a, source));
  fn("torch._utils._rebuild_parameter", (a) => a[0]);
  fn("torch._utils._rebuild_parameter_with_state", (a) => a[0]);
  for (const [name, dt] of Object.entries(TORCH_STORAGES)) {
    g.set(`torch.${name}`, new TorchStorageType(`torch.${name}`, dt));
  }
  g.set("torch.UntypedStorage", new TorchStorageType("torch.UntypedStorage", "uint8"));
  g.set("torch.storage.UntypedStorage", new TorchStorageType("torch.UntypedStorage", "uint8"));
  for (const [name, dt] of Object.entries(TORCH_DTYPES)) {
    g.set(`torch.${name}`, new TorchDType(`torch.${name}`, dt));
  }
  return g;
}

// ---------------------------------------------------------------------------------------------
// The virtual machine

class Truncated extends Error {}

/**
 * Unpickles `bytes` without executing code. Throws `UserError` (naming `opts.source`) for
 * truncated or corrupt input and for globals outside the allow-list.
 */
export function unpickle(bytes: Uint8Array, opts: UnpickleOptions = {}): unknown {
  return unpickleAt(bytes, 0, opts).value;
}

/**
 * Unpickles one pickle starting at `offset` and returns it with the offset just past its STOP
 * opcode (legacy torch files hold several pickles back to back).
 */
export function unpickleAt(
  bytes: Uint8Array,
  offset: number,
  opts: UnpickleOptions = {},
): { value: unknown; end: number } {
  const source = opts.source ?? "<pickle>";
  const at = { op: offset };
  try {
    return runVm(bytes, offset, opts, source, at);
  } catch (e) {
    if (e instanceof UserError) throw e;
    if (e instanceof Truncated) {
      throw new UserError(
        `${source} is truncated: pickle data ends early (opcode at byte ${at.op}); ` +
          `the file is incomplete or corrupt`,
      );
    }
    const msg = e instanceof Error ? e.message : String(e);
    throw new UserError(
      `corrupt pickle data in ${source} at byte ${at.op}: ${printable(msg)}; ` +
        `the file is damaged or not what it claims to be`,
    );
  }
}

function runVm(
  bytes: Uint8Array,
  start: number,
  opts: UnpickleOptions,
  source: string,
  /** The offset of the opcode being run, for error messages. */
  at: { op: number },
): { value: unknown; end: number } {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const allowed = defaultGlobals(source);
  for (const [name, f] of Object.entries(opts.globals ?? {})) {
    allowed.set(name, new PyCallable(name, (args) => f(...args)));
  }
  const utf8 = new TextDecoder("utf-8", { fatal: true });
  let pos = start;
  let stack: unknown[] = [];
  const metastack: unknown[][] = [];
  const memo = new Map<number, unknown>();

  const need = (n: number) => {
    if (n < 0 || pos + n > bytes.length) throw new Truncated();
  };
  const u8 = () => {
    need(1);
    return bytes[pos++];
  };
  const u16 = () => {
    need(2);
    const v = view.getUint16(pos, true);
    pos += 2;
    return v;
  };
  const i32 = () => {
    need(4);
    const v = view.getInt32(pos, true);
    pos += 4;
    return v;
  };
  const u32 = () => {
    need(4);
    const v = view.getUint32(pos, true);
    pos += 4;
    return v;
  };
  const u64 = () => {
    need(8);
    const v = view.getBigUint64(pos, true);
    pos += 8;
    if (v > MAX_SAFE) throw new Error("length too large");
    return Number(v);
  };
  const take = (n: number) => {
    need(n);
    const b = bytes.subarray(pos, pos + n);
    pos += n;
    return b;
  };
  const line = () => {
    const nl = bytes.indexOf(0x0a, pos);
    if (nl < 0) throw new Truncated();
    const s = latin1(bytes.subarray(pos, nl));
    pos = nl + 1;
    return s;
  };
  const pop = () => {
    if (stack.length === 0) throw new Error("stack underflow");
    return stack.pop();
  };
  const top = () => {
    if (stack.length === 0) throw new Error("stack underflow");
    return stack[stack.length - 1];
  };
  const popMark = () => {
    const items = stack;
    const prev = metastack.pop();
    if (prev === undefined) throw new Error("MARK missing");
    stack = prev;
    return items;
  };
  const resolve = (module: string, name: string) => {
    const full = `${module}.${name}`;
    const g = allowed.get(full);
    if (g === undefined) throw refusedGlobal(module, full, source);
    return g;
  };
  const call = (f: unknown, args: unknown, kwargs?: Map<unknown, unknown>) => {
    if (!(f instanceof PyCallable)) {
      throw new UserError(`cannot call ${describe(f)} in ${source}: not an allowed callable`);
    }
    if (!Array.isArray(args)) throw new Error("call arguments are not a tuple");
    return f.call(args, kwargs);
  };
  const persistent = (pid: unknown) => {
    if (!opts.persistentLoad) {
      throw new UserError(`${source} uses persistent ids, which this reader cannot resolve`);
    }
    return opts.persistentLoad(pid);
  };
  const setItems = (d: unknown, items: unknown[]) => {
    if (!(d instanceof Map)) throw new Error("SETITEM on a non-dict");
    if (items.length % 2) throw new Error("odd number of dict items");
    for (let i = 0; i < items.length; i += 2) d.set(items[i], items[i + 1]);
  };
  const build = (obj: unknown, state: unknown) => {
    if (obj !== null && typeof obj === "object" && pendingArrays.has(obj)) {
      buildNumpyArray(obj as HostTensor, state, source);
    } else if (obj instanceof NumpyDType) {
      if (Array.isArray(state) && typeof state[1] === "string") {
        if (state[1] === ">") obj.littleEndian = false;
        else if (state[1] === "<" || state[1] === "=") obj.littleEndian = true;
      }
      if (Array.isArray(state) && state[3] !== null && state[3] !== undefined) {
        throw new UserError(`numpy structured dtypes are not supported (${source})`);
      }
    } else if (obj instanceof Map || state === null) {
      // Instance attributes (e.g. a state_dict's `_metadata`) carry nothing we use.
    } else {
      throw new Error(`cannot BUILD ${describe(obj)}`);
    }
  };

  for (;;) {
    at.op = pos;
    const op = u8();
    switch (op) {
      case 0x80: // PROTO
        if (u8() > 5) throw new Error("unsupported pickle protocol");
        break;
      case 0x95: // FRAME: frames are only a buffering hint
        u64();
        break;
      case 0x2e: // STOP
        return { value: pop(), end: pos };
      case 0x28: // MARK
        metastack.push(stack);
        stack = [];
        break;
      case 0x30: // POP
        if (stack.length) stack.pop();
        else popMark();
        break;
      case 0x31: // POP_MARK
        popMark();
        break;
      case 0x32: // DUP
        stack.push(top());
        break;
      // Numbers
      case 0x4b: // BININT1
        stack.push(u8());
        break;
      case 0x4d: // BININT2
        stack.push(u16());
        break;
      case 0x4a: // BININT
        stack.push(i32());
        break;
      case 0x8a: // LONG1
        stack.push(decodeLong(take(u8())));
        break;
      case 0x8b: { // LONG4
        const n = i32();
        if (n < 0) throw new Error("negative LONG4 length");
        stack.push(decodeLong(take(n)));
        break;
      }
      case 0x49: { // INT (text); "00"/"01" are protocol-0 booleans
        const s = line().trim();
        if (s === "00") stack.push(false);
        else if (s === "01") stack.push(true);
        else stack.push(pyInt(parseBigInt(s)));
        break;
      }
      case 0x4c: // LONG (text, trailing L)
        stack.push(pyInt(parseBigInt(line().trim().replace(/L$/, ""))));
        break;
      case 0x46: { // FLOAT (text)
        const s = line().trim();
        const v = Number(s === "inf" ? "Infinity" : s === "-inf" ? "-Infinity" : s);
        if (Number.isNaN(v) && s.toLowerCase() !== "nan") throw new Error(`bad float '${s}'`);
        stack.push(v);
        break;
      }
      case 0x47: // BINFLOAT (big-endian)
        need(8);
        stack.push(view.getFloat64(pos, false));
        pos += 8;
        break;
      // Constants
      case 0x4e: // NONE
        stack.push(null);
        break;
      case 0x88: // NEWTRUE
        stack.push(true);
        break;
      case 0x89: // NEWFALSE
        stack.push(false);
        break;
      // Strings and bytes
      case 0x53: // STRING (quoted repr, Python 2 str)
        stack.push(unquote(line()));
        break;
      case 0x54: { // BINSTRING
        const n = i32();
        if (n < 0) throw new Error("negative BINSTRING length");
        stack.push(latin1(take(n)));
        break;
      }
      case 0x55: // SHORT_BINSTRING
        stack.push(latin1(take(u8())));
        break;
      case 0x56: // UNICODE (raw-unicode-escape line)
        stack.push(rawUnicodeEscape(line()));
        break;
      case 0x58: // BINUNICODE
        stack.push(utf8.decode(take(u32())));
        break;
      case 0x8c: // SHORT_BINUNICODE
        stack.push(utf8.decode(take(u8())));
        break;
      case 0x8d: // BINUNICODE8
        stack.push(utf8.decode(take(u64())));
        break;
      case 0x42: // BINBYTES
        stack.push(take(u32()).slice());
        break;
      case 0x43: // SHORT_BINBYTES
        stack.push(take(u8()).slice());
        break;
      case 0x8e: // BINBYTES8
        stack.push(take(u64()).slice());
        break;
      case 0x96: // BYTEARRAY8
        stack.push(take(u64()).slice());
        break;
      case 0x97: // NEXT_BUFFER
        throw new UserError(`${source} uses out-of-band pickle buffers, which are not supported`);
      case 0x98: // READONLY_BUFFER
        break;
      // Containers
      case 0x29: // EMPTY_TUPLE
        stack.push([]);
        break;
      case 0x85: // TUPLE1
        stack.push([pop()]);
        break;
      case 0x86: { // TUPLE2
        const b = pop();
        const a = pop();
        stack.push([a, b]);
        break;
      }
      case 0x87: { // TUPLE3
        const c = pop();
        const b = pop();
        const a = pop();
        stack.push([a, b, c]);
        break;
      }
      case 0x74: { // TUPLE
        const items = popMark();
        stack.push(items);
        break;
      }
      case 0x5d: // EMPTY_LIST
        stack.push([]);
        break;
      case 0x6c: { // LIST
        const items = popMark();
        stack.push(items);
        break;
      }
      case 0x61: { // APPEND
        const v = pop();
        const l = top();
        if (!Array.isArray(l)) throw new Error("APPEND to a non-list");
        l.push(v);
        break;
      }
      case 0x65: { // APPENDS
        const items = popMark();
        const l = top();
        if (!Array.isArray(l)) throw new Error("APPENDS to a non-list");
        for (const v of items) l.push(v);
        break;
      }
      case 0x7d: // EMPTY_DICT
        stack.push(new Map());
        break;
      case 0x64: { // DICT
        const items = popMark();
        const d = new Map();
        setItems(d, items);
        stack.push(d);
        break;
      }
      case 0x73: { // SETITEM
        const v = pop();
        const k = pop();
        setItems(top(), [k, v]);
        break;
      }
      case 0x75: { // SETITEMS
        const items = popMark();
        setItems(top(), items);
        break;
      }
      case 0x8f: // EMPTY_SET
        stack.push(new Set());
        break;
      case 0x90: { // ADDITEMS
        const items = popMark();
        const s = top();
        if (!(s instanceof Set)) throw new Error("ADDITEMS to a non-set");
        for (const v of items) s.add(v);
        break;
      }
      case 0x91: { // FROZENSET (pop the mark before touching `stack`)
        const items = popMark();
        stack.push(new Set(items));
        break;
      }
      // Memo
      case 0x67: // GET
        stack.push(memoGet(memo, Number(line())));
        break;
      case 0x68: // BINGET
        stack.push(memoGet(memo, u8()));
        break;
      case 0x6a: // LONG_BINGET
        stack.push(memoGet(memo, u32()));
        break;
      case 0x70: // PUT
        memo.set(Number(line()), top());
        break;
      case 0x71: // BINPUT
        memo.set(u8(), top());
        break;
      case 0x72: // LONG_BINPUT
        memo.set(u32(), top());
        break;
      case 0x94: // MEMOIZE
        memo.set(memo.size, top());
        break;
      // Objects
      case 0x63: { // GLOBAL
        const module = line();
        const name = line();
        stack.push(resolve(module, name));
        break;
      }
      case 0x93: { // STACK_GLOBAL
        const name = pop();
        const module = pop();
        if (typeof module !== "string" || typeof name !== "string") {
          throw new Error("STACK_GLOBAL needs two strings");
        }
        stack.push(resolve(module, name));
        break;
      }
      case 0x52: { // REDUCE
        const args = pop();
        const f = pop();
        stack.push(call(f, args));
        break;
      }
      case 0x81: { // NEWOBJ
        const args = pop();
        const cls = pop();
        stack.push(call(cls, args));
        break;
      }
      case 0x92: { // NEWOBJ_EX
        const kwargs = pop();
        const args = pop();
        const cls = pop();
        stack.push(call(cls, args, kwargs instanceof Map ? kwargs : undefined));
        break;
      }
      case 0x69: { // INST
        const module = line();
        const name = line();
        const args = popMark();
        stack.push(call(resolve(module, name), args));
        break;
      }
      case 0x6f: { // OBJ
        const items = popMark();
        const cls = items.shift();
        stack.push(call(cls, items));
        break;
      }
      case 0x62: { // BUILD
        const state = pop();
        build(top(), state);
        break;
      }
      case 0x51: // BINPERSID
        stack.push(persistent(pop()));
        break;
      case 0x50: // PERSID
        stack.push(persistent(line()));
        break;
      case 0x82:
      case 0x83:
      case 0x84: // EXT1/2/4: the extension registry is code we do not run
        throw new UserError(`refusing pickle extension codes in ${source}`);
      default:
        throw new Error(`unknown opcode 0x${op.toString(16)}`);
    }
  }
}

/**
 * The refusal of a global the safe VM does not load. A whole pickled model (`torch.save(model)`:
 * its class, e.g. `torchvision.models.densenet.DenseNet`, or a `torch.nn` module) and a
 * TorchScript file (`torch.jit.save`: classes under `__torch__`) say what to save instead: the
 * model's `state_dict()`, which holds only tensors.
 */
function refusedGlobal(module: string, full: string, source: string): UserError {
  if (module === "__torch__" || module.startsWith("__torch__.")) {
    return new UserError(
      `${source} is a TorchScript file (torch.jit.save), not a checkpoint: save its weights with ` +
        `torch.save(torch.jit.load(PATH).state_dict(), "model.pt") and pass that file`,
    );
  }
  if (/^(torch\.nn|torchvision\.models|__main__)(\.|$)/.test(module)) {
    return new UserError(
      `${source} holds a whole pickled model (torch.save(model): ${printable(full)}), which is ` +
        `never unpickled here (it could run any code): save model.state_dict() instead, with ` +
        `torch.save(model.state_dict(), "model.pt"), and pass that file`,
    );
  }
  return new UserError(`refusing to load ${printable(full)}: not an allowed global in ${source}`);
}

function memoGet(memo: Map<number, unknown>, i: number): unknown {
  if (!memo.has(i)) throw new Error(`memo key ${i} missing`);
  return memo.get(i);
}

function describe(v: unknown): string {
  if (v instanceof TorchStorageType || v instanceof TorchDType) return v.name;
  if (v === null) return "None";
  return typeof v === "object" ? (v.constructor?.name ?? "object") : typeof v;
}

function latin1(b: Uint8Array): string {
  let s = "";
  for (let i = 0; i < b.length; i += 8192) {
    s += String.fromCharCode(...b.subarray(i, i + 8192));
  }
  return s;
}

/** ASCII hex digit of each nibble. */
const HEX_DIGITS = new TextEncoder().encode("0123456789abcdef");
const latin1Decoder = new TextDecoder("latin1");

/**
 * Little-endian two's-complement integer (LONG1/LONG4), through one hex string: linear in the
 * length (byte-wise shifting is quadratic, minutes for a 1 MB LONG4).
 */
function decodeLong(b: Uint8Array): number | bigint {
  if (b.length === 0) return 0;
  const hex = new Uint8Array(2 + 2 * b.length);
  hex[0] = 0x30; // "0x", then the bytes most significant first
  hex[1] = 0x78;
  for (let i = 0, j = hex.length - 2; i < b.length; i++, j -= 2) {
    hex[j] = HEX_DIGITS[b[i] >> 4];
    hex[j + 1] = HEX_DIGITS[b[i] & 15];
  }
  let v = BigInt(latin1Decoder.decode(hex));
  if (b[b.length - 1] & 0x80) v -= 1n << BigInt(8 * b.length);
  return pyInt(v);
}

/** Python (3.11+) refuses longer decimal integers: their conversion is quadratic. */
const MAX_INT_DIGITS = 4300;

function parseBigInt(s: string): bigint {
  if (s.length > MAX_INT_DIGITS + 1) {
    throw new Error(`decimal integer of ${s.length} digits (Python's limit is ${MAX_INT_DIGITS})`);
  }
  if (!/^[+-]?\d+$/.test(s)) throw new Error(`bad integer '${s}'`);
  return s.startsWith("-") ? -BigInt(s.slice(1)) : BigInt(s.replace(/^\+/, ""));
}

/** Python 2 `repr(str)` as written by the STRING opcode. */
function unquote(s: string): string {
  const q = s[0];
  if ((q !== "'" && q !== '"') || s[s.length - 1] !== q || s.length < 2) {
    throw new Error("STRING opcode argument is not quoted");
  }
  return s.slice(1, -1).replace(
    /\\(x[0-9a-fA-F]{2}|[0-7]{1,3}|.)/g,
    (_m, e: string) => {
      if (e[0] === "x") return String.fromCharCode(parseInt(e.slice(1), 16));
      if (/^[0-7]/.test(e)) return String.fromCharCode(parseInt(e, 8));
      const map: Record<string, string> = { n: "\n", r: "\r", t: "\t", "\\": "\\", "'": "'" };
      return map[e] ?? `\\${e}`;
    },
  );
}

function rawUnicodeEscape(s: string): string {
  // The line (already latin-1 decoded) carries \uXXXX / \UXXXXXXXX escapes.
  return s.replace(
    /\\u([0-9a-fA-F]{4})|\\U([0-9a-fA-F]{8})/g,
    (_m, a?: string, b?: string) => String.fromCodePoint(parseInt((a ?? b)!, 16)),
  );
}

// ---------------------------------------------------------------------------------------------
// `.pyd` labels

// `pickle.dumps(numpy.array(labels, dtype=numpy.float64), protocol=4)` for a 1-D array of
// NUM_CLASSES values: a fixed prefix, SHORT_BINBYTES with the 8·14 data bytes, a fixed suffix.
const PYD_HEAD_HEX = "800495f8000000000000008c156e756d70792e636f72652e6d756c74696172726179948c" +
  "0c5f7265636f6e7374727563749493948c056e756d7079948c076e646172726179949394" +
  "4b0085944301629487945294284b014b0e859468038c0564747970659493948c02663894" +
  "898887945294284b038c013c944e4e4e4affffffff4affffffff4b0074946289";
const PYD_TAIL_HEX = "947494622e";

function hexBytes(h: string): Uint8Array {
  const out = new Uint8Array(h.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(h.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/**
 * The bytes Python writes for `pickle.dumps(numpy.array(labels, dtype=numpy.float64))` with
 * protocol 4, as the original tool stored each sample's `.pyd` member (259 bytes for 14 labels).
 */
export function encodeLabelsPyd(labels: ArrayLike<number>): Uint8Array {
  if (labels.length !== NUM_CLASSES) {
    throw new UserError(`expected ${NUM_CLASSES} labels, got ${labels.length}`);
  }
  const head = hexBytes(PYD_HEAD_HEX);
  const tail = hexBytes(PYD_TAIL_HEX);
  const dataLen = 8 * NUM_CLASSES;
  const out = new Uint8Array(head.length + 2 + dataLen + tail.length);
  out.set(head, 0);
  out[head.length] = 0x43; // SHORT_BINBYTES
  out[head.length + 1] = dataLen;
  const dv = new DataView(out.buffer, head.length + 2, dataLen);
  for (let i = 0; i < NUM_CLASSES; i++) dv.setFloat64(8 * i, labels[i], true);
  out.set(tail, head.length + 2 + dataLen);
  return out;
}

/**
 * Decodes a `.pyd` label member: a pickled 1-D numeric numpy array of NUM_CLASSES values, each
 * 0 or 1. Throws `UserError` naming `source` (shard and key) for anything else.
 */
export function decodeLabelsPyd(bytes: Uint8Array, source = "<labels>"): Float32Array {
  const v = unpickle(bytes, { source });
  const isArray = v !== null && typeof v === "object" && "shape" in v && "data" in v;
  if (!isArray) throw new UserError(`${source}: labels are not a numpy array`);
  const t = v as HostTensor;
  if (t.shape.length !== 1 || t.shape[0] !== NUM_CLASSES) {
    throw new UserError(
      `${source}: expected ${NUM_CLASSES} labels, got an array of shape [${t.shape.join(", ")}]`,
    );
  }
  const out = new Float32Array(NUM_CLASSES);
  for (let i = 0; i < NUM_CLASSES; i++) {
    const v = Number(t.data[i]);
    // As the label CSVs: anything but 0/1 (2, -1, NaN) would train and score silently wrong.
    if (v !== 0 && v !== 1) {
      throw new UserError(
        `${source}: label ${i + 1} (${LABELS[i]}) is ${v}, labels must be 0 or 1; ` +
          `re-create the shard`,
      );
    }
    out[i] = v;
  }
  return out;
}
