/**
 * oneDNN (libdnnl) through Deno's FFI: the convolutions of the `native` backend.
 *
 * Why oneDNN and not a CBLAS sgemm: it is what PyTorch runs on CPUs; it has convolution forward,
 * backward-data and backward-weights kernels for NHWC activations, so a 3×3 or the 7×7/2 stem
 * needs no im2col buffer and both gradients need no transposes of ours; and it picks AVX2 /
 * AVX-512 code by CPUID at run time (OpenBLAS has to be told the core type on CPU models it does
 * not know). Measured through this module at batch 16, 2 threads, on the 2-core AVX-512 VM while
 * other work loaded it (GFLOP/s; XNNPACK = tfjs wasm forward, "ours" = wasm_kernels.ts):
 *
 *     shape                 XNNPACK fwd | oneDNN fwd  bwd-weights (ours)  bwd-data
 *     1×1 256→128 at 56²       24.7     |   108.5       79.2   (15.3)       105.0
 *     3×3 128→32 at 56²        30.0     |   135.8      118.9   (13.7)       103.9
 *     1×1 1024→128 at 14²      24.6     |    56.1       19.2    (8.5)        57.7
 *     3×3 128→32 at 14²        16.6     |    16.6       14.6    (3.9)        18.4
 *     7×7/2 3→64 at 224²       10.2     |    81.2       49.6    (5.1)          —
 *
 * OpenBLAS's sgemm reaches 115–130 GFLOP/s on the 1×1 shapes when told the core type (issue
 * #12's measurement), about what oneDNN gives there, but would still need im2col for the rest.
 *
 * The C API is oneDNN v2's (Debian 12 and Ubuntu 22.04 ship 2.6/2.5): v3 made operation
 * descriptors opaque and changed primitive-descriptor creation, so a v3 library is reported as
 * unsupported (the backend then falls back to wasm). Struct sizes and enum values below are
 * v2's (`oneapi/dnnl/dnnl_types.h`); operation descriptors are written into buffers larger than
 * any v2 descriptor.
 *
 * Memory: tensors stay on the wasm heap. Each oneDNN memory object is created without a buffer
 * and pointed at the tensor's heap address just before each execution, so no copy is made;
 * weights (and weight gradients) go through a reorder when oneDNN's fastest layout for them is
 * not tfjs's `[kh, kw, in, out]` (`hwio`).
 *
 * bfloat16 (per call, `ConvPrecision`; `--precision bf16` through conv_kernels.ts): the
 * convolutions read bf16 activations and weights and write float32, the weights rounded by the
 * same reorder; the bf16 weight gradients keep a single-threaded twin (stall_guard.ts). Measured
 * with bench/bf16_convs.ts on the Zen 4 VM (avx512_core_bf16, no AMX): 1.4–2.7× float32 per
 * convolution at 1 thread, 1.93× over a DenseNet-121 training step's convolutions, as fast as
 * PyTorch's bf16; see that script's header for what it compares.
 * @module
 */

import { StallGuard } from "./stall_guard.ts";

/** Library names tried in order (Linux, macOS Homebrew). */
const LIBRARY_NAMES = [
  "libdnnl.so.2",
  "libdnnl.so",
  "/usr/lib/x86_64-linux-gnu/libdnnl.so.2",
  "libdnnl.2.dylib",
  "/opt/homebrew/lib/libdnnl.2.dylib",
  "/usr/local/lib/libdnnl.2.dylib",
];

/** Why oneDNN cannot be used; `install`: installing oneDNN 2.x would fix it. */
export class OneDnnUnavailable extends Error {
  constructor(message: string, readonly install: boolean) {
    super(message);
  }
}

/** `ONEDNN_LIBRARY` (a path) when set, else the usual names. */
function libraryNames(): string[] {
  let chosen: string | undefined;
  try {
    chosen = Deno.env.get("ONEDNN_LIBRARY");
  } catch {
    // no --allow-env: the usual names
  }
  return chosen ? [chosen] : LIBRARY_NAMES;
}

/** Where to get the library, per platform (the note of `auto`, the error of `--backend native`). */
export const ONEDNN_INSTALL_HINT =
  "install oneDNN 2.x: `apt install libdnnl2` (Debian 12, Ubuntu 22.04), or set " +
  "ONEDNN_LIBRARY to a libdnnl 2.x you built";

const SYMBOLS = {
  dnnl_version: { parameters: [], result: "pointer" },
  dnnl_get_effective_cpu_isa: { parameters: [], result: "i32" },
  dnnl_engine_create: { parameters: ["buffer", "i32", "usize"], result: "i32" },
  dnnl_stream_create: { parameters: ["buffer", "pointer", "u32"], result: "i32" },
  dnnl_stream_wait: { parameters: ["pointer"], result: "i32" },
  dnnl_memory_desc_init_by_tag: {
    parameters: ["buffer", "i32", "buffer", "i32", "i32"],
    result: "i32",
  },
  dnnl_memory_desc_init_by_strides: {
    parameters: ["buffer", "i32", "buffer", "i32", "buffer"],
    result: "i32",
  },
  dnnl_memory_desc_equal: { parameters: ["pointer", "pointer"], result: "i32" },
  dnnl_memory_desc_get_size: { parameters: ["pointer"], result: "usize" },
  dnnl_convolution_forward_desc_init: {
    parameters: [
      "buffer",
      "i32",
      "i32",
      "buffer",
      "buffer",
      "pointer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
    ],
    result: "i32",
  },
  dnnl_convolution_backward_data_desc_init: {
    parameters: ["buffer", "i32", "buffer", "buffer", "buffer", "buffer", "buffer", "buffer"],
    result: "i32",
  },
  dnnl_convolution_backward_weights_desc_init: {
    parameters: [
      "buffer",
      "i32",
      "buffer",
      "buffer",
      "pointer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
    ],
    result: "i32",
  },
  dnnl_batch_normalization_forward_desc_init: {
    parameters: ["buffer", "i32", "buffer", "f32", "u32"],
    result: "i32",
  },
  dnnl_pooling_forward_desc_init: {
    parameters: [
      "buffer",
      "i32",
      "i32",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
    ],
    result: "i32",
  },
  dnnl_pooling_backward_desc_init: {
    parameters: ["buffer", "i32", "buffer", "buffer", "buffer", "buffer", "buffer", "buffer"],
    result: "i32",
  },
  dnnl_eltwise_forward_desc_init: {
    parameters: ["buffer", "i32", "i32", "buffer", "f32", "f32"],
    result: "i32",
  },
  dnnl_eltwise_backward_desc_init: {
    parameters: ["buffer", "i32", "buffer", "buffer", "f32", "f32"],
    result: "i32",
  },
  dnnl_binary_desc_init: {
    parameters: ["buffer", "i32", "buffer", "buffer", "buffer"],
    result: "i32",
  },
  dnnl_post_ops_append_sum: { parameters: ["pointer", "f32"], result: "i32" },
  dnnl_primitive_attr_create: { parameters: ["buffer"], result: "i32" },
  dnnl_post_ops_create: { parameters: ["buffer"], result: "i32" },
  dnnl_post_ops_append_eltwise: {
    parameters: ["pointer", "f32", "i32", "f32", "f32"],
    result: "i32",
  },
  dnnl_primitive_attr_set_post_ops: { parameters: ["pointer", "pointer"], result: "i32" },
  dnnl_primitive_desc_create: {
    parameters: ["buffer", "buffer", "pointer", "pointer", "pointer"],
    result: "i32",
  },
  dnnl_primitive_desc_query_md: { parameters: ["pointer", "i32", "i32"], result: "pointer" },
  dnnl_primitive_desc_query: {
    parameters: ["pointer", "i32", "i32", "buffer"],
    result: "i32",
  },
  dnnl_reorder_primitive_desc_create: {
    parameters: ["buffer", "pointer", "pointer", "pointer", "pointer", "pointer"],
    result: "i32",
  },
  dnnl_primitive_create: { parameters: ["buffer", "pointer"], result: "i32" },
  dnnl_memory_create: { parameters: ["buffer", "pointer", "pointer", "pointer"], result: "i32" },
  dnnl_memory_set_data_handle: { parameters: ["pointer", "pointer"], result: "i32" },
  dnnl_primitive_execute: { parameters: ["pointer", "pointer", "i32", "buffer"], result: "i32" },
} as const;

/** oneDNN v2 enum values (oneapi/dnnl/dnnl_types.h). */
const F32 = 3;
const BF16 = 2;
const TAG_ANY = 1;
const TAG_A = 2;
const TAG_NHWC = 20;
const TAG_HWIO = 30;
const CPU_ENGINE = 1;
const PROP_FORWARD_TRAINING = 64;
const PROP_FORWARD_INFERENCE = 96;
const BN_USE_GLOBAL_STATS = 0x1;
const BN_FUSE_NORM_RELU = 0x4;
const BN_USE_SCALE = 0x8;
const BN_USE_SHIFT = 0x10;
const BINARY_ADD = 0x1fff0;
const BINARY_MUL = 0x1fff1;
const ARG_SRC_1 = 2;
const ARG_MEAN = 49;
const ARG_VARIANCE = 50;
const ARG_SCALE = 51;
const ARG_SHIFT = 52;
const CONV_DIRECT = 1;
const ELTWISE_RELU = 31;
const ARG_SRC = 1;
const ARG_DST = 17;
const ARG_WEIGHTS = 33;
const ARG_BIAS = 41;
const ARG_DIFF_SRC = 129;
const ARG_DIFF_DST = 145;
const ARG_DIFF_WEIGHTS = 161;
const ARG_FROM = 1; // DNNL_ARG_FROM = DNNL_ARG_SRC
const ARG_TO = 17; // DNNL_ARG_TO = DNNL_ARG_DST
const QUERY_IMPL_INFO_STR = 8;
const QUERY_SRC_MD = 129;
const QUERY_DIFF_SRC_MD = 130;
const QUERY_WEIGHTS_MD = 131;
const QUERY_DIFF_WEIGHTS_MD = 132;
const QUERY_DST_MD = 133;
const QUERY_DIFF_DST_MD = 134;
const QUERY_WORKSPACE_MD = 135;
const ARG_WORKSPACE = 64;
const POOLING_MAX = 0x1ff;
const POOLING_AVG_EXCLUDE_PADDING = 0x3ff;
/** sizeof(dnnl_memory_desc_t) in v2 is 696; ops descriptors are at most ~6 KB. */
const MD_BYTES = 1024;
const MD_STRUCT_BYTES = 696;
const OP_DESC_BYTES = 16384;

const ISA_NAMES: Record<number, string> = {
  0x1: "sse41",
  0x3: "avx",
  0x7: "avx2",
  0x407: "avx2_vnni",
  0xf: "avx512_mic",
  0x1f: "avx512_mic_4ops",
  0x27: "avx512_core",
  0x67: "avx512_core_vnni",
  0xe7: "avx512_core_bf16",
  0x3e7: "avx512_core_amx",
};

type Lib = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];
type Ptr = Deno.PointerValue;

/** A raw pointer as a BigInt (for pointer arithmetic on the heap base). */
function addr(p: Ptr): bigint {
  return p == null ? 0n : BigInt(Deno.UnsafePointer.value(p));
}

/** A convolution, as tfjs's Conv2DInfo describes it (NHWC, dilation 1). */
export interface ConvShape {
  n: number;
  h: number;
  w: number;
  ci: number;
  oh: number;
  ow: number;
  co: number;
  fh: number;
  fw: number;
  sh: number;
  sw: number;
  /** Padding top, left, bottom, right. */
  pad: [number, number, number, number];
}

/** A 2-D pooling window over NHWC (tfjs's Pool2DInfo). */
export interface PoolShape {
  n: number;
  h: number;
  w: number;
  c: number;
  oh: number;
  ow: number;
  fh: number;
  fw: number;
  sh: number;
  sw: number;
  /** Padding top, left, bottom, right. */
  pad: [number, number, number, number];
}

/**
 * The element types of a convolution. `f32`: float32 throughout. `bf16`: the activations a
 * convolution reads (forward: the source; backward-data: the output gradient; backward-weights:
 * both) are bfloat16 on the heap, the weights are read from float32 `hwio` and rounded to
 * bfloat16 by the weight reorder, and everything it writes (the output, the input gradient, the
 * weight gradient) is float32, accumulated in float32 — PyTorch's autocast contract.
 */
export type ConvPrecision = "f32" | "bf16";

/** Post-ops of a forward convolution: bias add (a `[Co]` tensor) and ReLU. */
export interface ConvFusion {
  bias: boolean;
  relu: boolean;
}

/** A primitive with its memory objects, by argument id; weights may need a reorder. */
interface Prepared {
  prim: Ptr;
  /** Arguments whose memory points at a tfjs tensor (set before each execution). */
  mems: Map<number, Ptr>;
  /** Reorder from tfjs's hwio weights into the primitive's layout (forward, backward-data). */
  weightsIn?: { prim: Ptr; from: Ptr; to: Ptr };
  /** Reorder of the primitive's weight gradient into hwio (backward-weights). */
  weightsOut?: { prim: Ptr; from: Ptr; to: Ptr };
  args: Uint8Array;
  impl: string;
}

/**
 * OpenMP threads that sleep between oneDNN calls (`OMP_WAIT_POLICY=PASSIVE`, unless the user set
 * a policy), read by libgomp when oneDNN loads it; the returned function restores the
 * environment once it has. By default they spin after each parallel
 * region, and here every oneDNN call alternates with XNNPACK's thread pool and JavaScript on the
 * same cores: a DenseNet-121 training step (batch 16, 2 threads) took 16 CPU-s spinning and
 * 6.4 CPU-s passive, measured back to back.
 */
function passiveOpenMp(): () => void {
  try {
    if (Deno.env.get("OMP_WAIT_POLICY") != null) return () => {};
    Deno.env.set("OMP_WAIT_POLICY", "PASSIVE");
    // Child processes (e.g. the benchmark's PyTorch) get the environment as it was.
    return () => Deno.env.delete("OMP_WAIT_POLICY");
  } catch {
    return () => {}; // no --allow-env: OpenMP's default
  }
}

/**
 * Keeps `names` mapped until the process ends (glibc: dlopen with RTLD_NODELETE). Deno closes
 * its FFI libraries when it tears down, while OpenMP's worker threads still wait inside
 * libgomp: unmapping it under them crashed about one exit in six (SIGSEGV, exit status 139).
 * Elsewhere, or where a name is not loaded, nothing happens.
 */
function pinLibraries(names: string[]): void {
  if (Deno.build.os !== "linux") return;
  const RTLD_NOW = 2;
  const RTLD_NOLOAD = 4;
  const RTLD_NODELETE = 0x1000;
  try {
    const libc = Deno.dlopen("libc.so.6", {
      dlopen: { parameters: ["buffer", "i32"], result: "pointer" },
    });
    for (const name of names) {
      // NOLOAD: only libraries already loaded (by Deno.dlopen or as a dependency) get pinned.
      libc.symbols.dlopen(
        new TextEncoder().encode(`${name}\0`),
        RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE,
      );
    }
  } catch {
    // not glibc: nothing to pin
  }
}

/** OpenMP runtimes oneDNN builds link (Debian's: libgomp), for the thread count. */
const OPENMP_LIBRARIES = ["libgomp.so.1", "libomp.so", "libomp.dylib", "libiomp5.so"];

/**
 * Sets the OpenMP thread count oneDNN computes with (it reads OpenMP's, as PyTorch's
 * `torch.set_num_threads` does); false when no OpenMP runtime is found (oneDNN then uses its
 * default, all cores).
 */
function setOpenMpThreads(threads: number): boolean {
  openMpSetter ??= findOpenMpSetter();
  if (openMpSetter === false) return false;
  openMpSetter(threads);
  return true;
}

/** `omp_set_num_threads` of the OpenMP runtime loaded, once found; false where there is none. */
let openMpSetter: ((threads: number) => void) | false | undefined;

function findOpenMpSetter(): ((threads: number) => void) | false {
  for (const name of OPENMP_LIBRARIES) {
    try {
      const omp = Deno.dlopen(name, {
        omp_set_num_threads: { parameters: ["i32"], result: "void" },
      });
      return (threads) => omp.symbols.omp_set_num_threads(threads);
    } catch {
      // not this runtime
    }
  }
  return false;
}

/** A primitive whose memories all have the caller's descriptors. */
interface Plain {
  prim: Ptr;
  mems: Ptr[];
  args: Uint8Array;
  impl: string;
}

/** The loaded library: an engine, a stream, and cached primitives. */
export class OneDnn {
  readonly version: string;
  readonly isa: string;
  /** Threads oneDNN runs on, or null when its runtime's count could not be set. */
  threads: number | null = null;
  /** When the bf16 backward-weights convolutions run on one thread (stall_guard.ts). */
  readonly bf16WeightGuard = new StallGuard();
  #lib: Lib;
  #engine: Ptr;
  #stream: Ptr;
  #cache = new Map<string, Prepared>();
  #plainCache = new Map<string, Plain>();
  /** Max pooling's forward outputs (dst, argmax workspace and its descriptor), by shape. */
  #poolBuffers = new Map<string, { dst: Uint8Array; workspace: Uint8Array; wsMd: Uint8Array }>();
  /** Keeps descriptor buffers alive as long as the primitives that may refer to them. */
  #keep: Uint8Array[] = [];

  private constructor(lib: Lib, version: string, isa: string, engine: Ptr, stream: Ptr) {
    this.#lib = lib;
    this.version = version;
    this.isa = isa;
    this.#engine = engine;
    this.#stream = stream;
  }

  /** Opens libdnnl v2 and its CPU engine; throws, saying why, when it cannot. */
  static open(): OneDnn {
    let dl: Deno.DynamicLibrary<typeof SYMBOLS> | null = null;
    const errors: string[] = [];
    const restoreEnv = passiveOpenMp();
    try {
      for (const name of libraryNames()) {
        try {
          dl = Deno.dlopen(name, SYMBOLS);
          break;
        } catch (err) {
          if (
            err instanceof Deno.errors.NotCapable || err instanceof Deno.errors.PermissionDenied
          ) {
            throw new OneDnnUnavailable("loading libdnnl (oneDNN) needs --allow-ffi", false);
          }
          errors.push((err as Error).message.split("\n")[0]);
        }
      }
    } finally {
      restoreEnv();
    }
    if (dl != null) pinLibraries(["libgomp.so.1", "libdnnl.so.2"]);
    if (dl == null) throw new OneDnnUnavailable(`libdnnl (oneDNN) not found (${errors[0]})`, true);
    const lib = dl.symbols;
    const v = new Deno.UnsafePointerView(lib.dnnl_version()!);
    const [major, minor, patch] = [v.getInt32(0), v.getInt32(4), v.getInt32(8)];
    const version = `${major}.${minor}.${patch}`;
    if (major !== 2) {
      dl.close();
      throw new OneDnnUnavailable(
        `oneDNN ${version} found, but only the 2.x C API is supported`,
        true,
      );
    }
    const isa = ISA_NAMES[lib.dnnl_get_effective_cpu_isa()] ?? "unknown ISA";
    const out = new BigUint64Array(1);
    check(lib.dnnl_engine_create(u8(out), CPU_ENGINE, 0n), "dnnl_engine_create");
    const engine = ptr(out[0]);
    check(lib.dnnl_stream_create(u8(out), engine, 1), "dnnl_stream_create");
    return new OneDnn(lib, version, isa, engine, ptr(out[0]));
  }

  /**
   * Whether the CPU computes bfloat16 dot products in hardware as oneDNN sees it
   * (`avx512_core_bf16`: AVX512_BF16; `avx512_core_amx`: AMX-BF16 tiles). Elsewhere oneDNN 2.x
   * still runs `bf16` convolutions, by emulation, slower than float32.
   */
  get bf16Instructions(): boolean {
    return this.isa === "avx512_core_bf16" || this.isa === "avx512_core_amx";
  }

  /** Sets the thread count (OpenMP builds); records it in `threads` when it took. */
  setThreads(threads: number): void {
    this.threads = setOpenMpThreads(threads) ? threads : null;
  }

  /** Forward convolution `dst = conv(src, weights) (+ bias) (ReLU)`, pointers to the heap. */
  convForward(
    s: ConvShape,
    fusion: ConvFusion,
    src: Ptr,
    weights: Ptr,
    bias: Ptr,
    dst: Ptr,
    inference: boolean,
    precision: ConvPrecision = "f32",
  ): void {
    const key = `${precisionKey(precision)}f${inference ? "i" : "t"}${fusion.bias ? "b" : ""}` +
      `${fusion.relu ? "r" : ""}:${shapeKey(s)}`;
    const p = this.#cache.get(key) ??
      this.#prepare(key, () => this.#convForwardPd(s, fusion, inference, precision));
    this.#run(p, new Map([[ARG_SRC, src], [ARG_DST, dst], [ARG_BIAS, bias]]), weights);
  }

  /** Input gradient of a convolution (`diffDst` bfloat16 with `bf16`, see ConvPrecision). */
  convBackwardData(
    s: ConvShape,
    diffDst: Ptr,
    weights: Ptr,
    diffSrc: Ptr,
    precision: ConvPrecision = "f32",
  ): void {
    const key = `${precisionKey(precision)}d:${shapeKey(s)}`;
    const p = this.#cache.get(key) ?? this.#prepare(key, () => ({
      pd: this.#convBackwardPd("backward-data", s, precision, TAG_NHWC),
      userWeights: "in" as const,
    }));
    this.#run(p, new Map([[ARG_DIFF_DST, diffDst], [ARG_DIFF_SRC, diffSrc]]), weights);
  }

  /**
   * Weight gradient of a convolution, written as float32 hwio (`src` and `diffDst` bfloat16
   * with `bf16`, see ConvPrecision).
   */
  convBackwardWeights(
    s: ConvShape,
    src: Ptr,
    diffDst: Ptr,
    diffWeights: Ptr,
    precision: ConvPrecision = "f32",
  ): void {
    const key = `${precisionKey(precision)}w:${shapeKey(s)}`;
    const make = () => ({
      pd: this.#convBackwardPd("backward-weights", s, precision, TAG_NHWC),
      userWeights: "out" as const,
    });
    const args = new Map([[ARG_SRC, src], [ARG_DIFF_DST, diffDst]]);
    if (precision !== "bf16" || (this.threads ?? 1) === 1) {
      return this.#run(this.#cache.get(key) ?? this.#prepare(key, make), args, diffWeights);
    }
    // bf16: all threads unless they stall (stall_guard.ts), one primitive of each count.
    const single = this.bf16WeightGuard.singleThread(key);
    const k = single ? `1t-${key}` : key;
    const p = this.#cache.get(k) ?? this.#singleThreaded(single, () => this.#prepare(k, make));
    const start = performance.now();
    this.#run(p, args, diffWeights);
    this.bf16WeightGuard.record(key, single, performance.now() - start);
  }

  /**
   * `make()` with OpenMP at one thread when `single`: oneDNN fixes a primitive's thread count
   * when it creates it (and runs it on that many whatever OpenMP is set to later).
   */
  #singleThreaded<T>(single: boolean, make: () => T): T {
    const threads = this.threads ?? 1;
    if (!single || threads === 1) return make();
    setOpenMpThreads(1);
    try {
      return make();
    } finally {
      setOpenMpThreads(threads);
    }
  }

  /**
   * dst = γ·(src − mean)/√(var + ε) + β (then ReLU) with the given statistics, on [rows, c].
   */
  bnApply(
    rows: number,
    c: number,
    epsilon: number,
    relu: boolean,
    src: Ptr,
    mean: Ptr,
    variance: Ptr,
    gamma: Ptr,
    beta: Ptr,
    dst: Ptr,
  ): void {
    const flags = BN_USE_GLOBAL_STATS | BN_USE_SCALE | BN_USE_SHIFT |
      (relu ? BN_FUSE_NORM_RELU : 0);
    const key = `ba:${rows},${c},${epsilon},${flags}`;
    const args = [ARG_SRC, ARG_MEAN, ARG_VARIANCE, ARG_SCALE, ARG_SHIFT, ARG_DST];
    const p = this.#plain(key, args, () => {
      const data = this.#md([1, c, rows, 1], TAG_NHWC);
      const vec = this.#md([c], TAG_A);
      const desc = this.#keepBuf(OP_DESC_BYTES);
      check(
        this.#lib.dnnl_batch_normalization_forward_desc_init(
          desc,
          PROP_FORWARD_INFERENCE,
          data,
          epsilon,
          flags,
        ),
        "dnnl_batch_normalization_forward_desc_init",
      );
      return { pd: this.#pd(desc, null, null), mds: [data, vec, vec, vec, vec, data] };
    });
    this.#runPlain(p, [src, mean, variance, gamma, beta, dst]);
  }

  /** diffDst masked where src ≤ 0 (ReLU's gradient), into diffSrc (may alias diffDst). */
  reluBackward(size: number, src: Ptr, diffDst: Ptr, diffSrc: Ptr): void {
    const key = `rb:${size}`;
    const p = this.#plain(key, [ARG_SRC, ARG_DIFF_DST, ARG_DIFF_SRC], () => {
      const data = this.#md([size], TAG_A);
      const fwd = this.#keepBuf(OP_DESC_BYTES);
      check(
        this.#lib.dnnl_eltwise_forward_desc_init(
          fwd,
          PROP_FORWARD_TRAINING,
          ELTWISE_RELU,
          data,
          0,
          0,
        ),
        "dnnl_eltwise_forward_desc_init",
      );
      const hint = this.#pd(fwd, null, null);
      const desc = this.#keepBuf(OP_DESC_BYTES);
      check(
        this.#lib.dnnl_eltwise_backward_desc_init(desc, ELTWISE_RELU, data, data, 0, 0),
        "dnnl_eltwise_backward_desc_init",
      );
      return { pd: this.#pd(desc, null, { pd: hint }), mds: [data, data, data] };
    });
    this.#runPlain(p, [src, diffDst, diffSrc]);
  }

  /** dst = a + b over `size` float32 values (multi-threaded; dst may alias a or b). */
  add(size: number, a: Ptr, b: Ptr, dst: Ptr): void {
    const p = this.#plain(`add:${size}`, [ARG_SRC, ARG_SRC_1, ARG_DST], () => {
      const data = this.#md([size], TAG_A);
      const desc = this.#keepBuf(OP_DESC_BYTES);
      check(
        this.#lib.dnnl_binary_desc_init(desc, BINARY_ADD, data, data, data),
        "dnnl_binary_desc_init",
      );
      return { pd: this.#pd(desc, null, null), mds: [data, data, data] };
    });
    this.#runPlain(p, [a, b, dst]);
  }

  /**
   * `count` float32 values rounded to bfloat16 (to nearest, ties to even), or bfloat16 values
   * widened to float32 (`toFloat32`): one multi-threaded reorder, src and dst not aliased.
   */
  convertBf16(count: number, src: Ptr, dst: Ptr, toFloat32 = false): void {
    const key = `cv:${count},${toFloat32}`;
    const p = this.#plain(key, [ARG_FROM, ARG_TO], () => {
      const f32 = this.#md([count], TAG_A, F32);
      const bf16 = this.#md([count], TAG_A, BF16);
      const [from, to] = toFloat32 ? [bf16, f32] : [f32, bf16];
      const out = new BigUint64Array(1);
      check(
        this.#lib.dnnl_reorder_primitive_desc_create(
          u8(out),
          Deno.UnsafePointer.of(from),
          this.#engine,
          Deno.UnsafePointer.of(to),
          this.#engine,
          null,
        ),
        "dnnl_reorder_primitive_desc_create (bf16)",
      );
      return { pd: ptr(out[0]), mds: [from, to] };
    });
    this.#runPlain(p, [src, dst]);
  }

  /** dst += src0 · scale (per channel `scale`, [C]), over `rows` × `c`. */
  scaleAccumulate(rows: number, c: number, src0: Ptr, scale: Ptr, dst: Ptr): void {
    const p = this.#plain(`sa:${rows},${c}`, [ARG_SRC, ARG_SRC_1, ARG_DST], () => {
      const data = this.#md([1, c, rows, 1], TAG_NHWC);
      const perChannel = this.#md([1, c, 1, 1], TAG_NHWC);
      const desc = this.#keepBuf(OP_DESC_BYTES);
      check(
        this.#lib.dnnl_binary_desc_init(desc, BINARY_MUL, data, perChannel, data),
        "dnnl_binary_desc_init",
      );
      const out = new BigUint64Array(1);
      check(this.#lib.dnnl_post_ops_create(u8(out)), "dnnl_post_ops_create");
      const ops = ptr(out[0]);
      check(this.#lib.dnnl_post_ops_append_sum(ops, 1), "post-op sum");
      check(this.#lib.dnnl_primitive_attr_create(u8(out)), "dnnl_primitive_attr_create");
      const attr = ptr(out[0]);
      check(this.#lib.dnnl_primitive_attr_set_post_ops(attr, ops), "set_post_ops");
      return { pd: this.#pd(desc, attr, null), mds: [data, perChannel, data] };
    });
    this.#runPlain(p, [src0, scale, dst]);
  }

  /**
   * dst[r, 0..cols) = src[r, 0..cols), or += with `accumulate`, for `rows` float32 rows at row
   * strides `srcStride` and `dstStride` (elements): one multi-threaded reorder between strided
   * views. The copies of a channel concat or split in NHWC (rows = N·H·W).
   */
  copyRows(
    rows: number,
    cols: number,
    src: Ptr,
    srcStride: number,
    dst: Ptr,
    dstStride: number,
    accumulate = false,
  ): void {
    const key = `cr:${rows},${cols},${srcStride},${dstStride},${accumulate}`;
    const p = this.#plain(key, [ARG_FROM, ARG_TO], () => {
      const from = this.#stridedMd([rows, cols], [srcStride, 1]);
      const to = this.#stridedMd([rows, cols], [dstStride, 1]);
      const out = new BigUint64Array(1);
      let attr: Ptr = null;
      if (accumulate) {
        check(this.#lib.dnnl_post_ops_create(u8(out)), "dnnl_post_ops_create");
        const ops = ptr(out[0]);
        check(this.#lib.dnnl_post_ops_append_sum(ops, 1), "post-op sum");
        check(this.#lib.dnnl_primitive_attr_create(u8(out)), "dnnl_primitive_attr_create");
        attr = ptr(out[0]);
        check(this.#lib.dnnl_primitive_attr_set_post_ops(attr, ops), "set_post_ops");
      }
      const fromPtr = Deno.UnsafePointer.of(from);
      const toPtr = Deno.UnsafePointer.of(to);
      check(
        this.#lib.dnnl_reorder_primitive_desc_create(
          u8(out),
          fromPtr,
          this.#engine,
          toPtr,
          this.#engine,
          attr,
        ),
        "dnnl_reorder_primitive_desc_create",
      );
      return { pd: ptr(out[0]), mds: [from, to] };
    });
    this.#runPlain(p, [src, dst]);
  }

  /**
   * The gradient of a max pooling (`max`, padding ignored) or an average pooling over the
   * cells inside the input (padding excluded), as tfjs's MaxPoolGrad / AvgPoolGrad. Max
   * pooling's backward needs the forward's argmax workspace: the forward runs again first,
   * into buffers of its own (the ties of a window go to its first maximum either way).
   */
  poolBackward(kind: "max" | "avg", s: PoolShape, src: Ptr, diffDst: Ptr, diffSrc: Ptr): void {
    const alg = kind === "max" ? POOLING_MAX : POOLING_AVG_EXCLUDE_PADDING;
    const shape = JSON.stringify([
      s.n,
      s.h,
      s.w,
      s.c,
      s.oh,
      s.ow,
      s.fh,
      s.fw,
      s.sh,
      s.sw,
      ...s.pad,
    ]);
    const srcMd = () => this.#md([s.n, s.c, s.h, s.w], TAG_NHWC);
    const dstMd = () => this.#md([s.n, s.c, s.oh, s.ow], TAG_NHWC);
    const window = () => ({
      strides: dims([s.sh, s.sw]),
      kernel: dims([s.fh, s.fw]),
      pl: dims([s.pad[0], s.pad[1]]),
      pr: dims([s.pad[2], s.pad[3]]),
    });
    const forwardPd = (src: Uint8Array, dst: Uint8Array) => {
      const { strides, kernel, pl, pr } = window();
      const desc = this.#keepBuf(OP_DESC_BYTES);
      check(
        this.#lib.dnnl_pooling_forward_desc_init(
          desc,
          PROP_FORWARD_TRAINING,
          alg,
          src,
          dst,
          strides,
          kernel,
          pl,
          pr,
        ),
        "dnnl_pooling_forward_desc_init",
      );
      return this.#pd(desc, null, null);
    };
    let workspace: Ptr = null;
    if (kind === "max") {
      const buffers = this.#poolBuffers.get(shape) ?? (() => {
        const src = srcMd(), dst = dstMd();
        const pd = forwardPd(src, dst);
        const wsMd = this.#lib.dnnl_primitive_desc_query_md(pd, QUERY_WORKSPACE_MD, 0)!;
        const bytes = (md: Ptr) => Number(this.#lib.dnnl_memory_desc_get_size(md));
        const b = {
          dst: this.#keepBuf(bytes(Deno.UnsafePointer.of(dst))),
          workspace: this.#keepBuf(Math.max(1, bytes(wsMd))),
          wsMd: this.#keepBuf(MD_BYTES),
        };
        b.wsMd.set(
          new Uint8Array(new Deno.UnsafePointerView(wsMd).getArrayBuffer(MD_STRUCT_BYTES)),
        );
        this.#poolBuffers.set(shape, b);
        return b;
      })();
      workspace = Deno.UnsafePointer.of(buffers.workspace);
      const fwd = this.#plain(`pf:${shape}`, [ARG_SRC, ARG_DST, ARG_WORKSPACE], () => {
        const src = srcMd(), dst = dstMd();
        return { pd: forwardPd(src, dst), mds: [src, dst, buffers.wsMd] };
      });
      this.#runPlain(fwd, [src, Deno.UnsafePointer.of(buffers.dst), workspace]);
    }
    const args = kind === "max"
      ? [ARG_DIFF_DST, ARG_WORKSPACE, ARG_DIFF_SRC]
      : [ARG_DIFF_DST, ARG_DIFF_SRC];
    const bwd = this.#plain(`pb:${kind}:${shape}`, args, () => {
      const src = srcMd(), dst = dstMd();
      const hint = forwardPd(src, dst);
      const { strides, kernel, pl, pr } = window();
      const desc = this.#keepBuf(OP_DESC_BYTES);
      check(
        this.#lib.dnnl_pooling_backward_desc_init(desc, alg, src, dst, strides, kernel, pl, pr),
        "dnnl_pooling_backward_desc_init",
      );
      const mds = kind === "max" ? [dst, this.#poolBuffers.get(shape)!.wsMd, src] : [dst, src];
      return { pd: this.#pd(desc, null, { pd: hint }), mds };
    });
    this.#runPlain(bwd, kind === "max" ? [diffDst, workspace, diffSrc] : [diffDst, diffSrc]);
  }

  /** A cached primitive whose memories all have the caller's descriptors (no reorders). */
  #plain(
    key: string,
    args: number[],
    make: () => { pd: Ptr; mds: Uint8Array[] },
  ): Plain {
    const hit = this.#plainCache.get(key);
    if (hit) return hit;
    const { pd, mds } = make();
    const out = new BigUint64Array(1);
    check(this.#lib.dnnl_primitive_create(u8(out), pd), "dnnl_primitive_create");
    const prim = ptr(out[0]);
    const info = new BigUint64Array(1);
    check(this.#lib.dnnl_primitive_desc_query(pd, QUERY_IMPL_INFO_STR, 0, u8(info)), "query impl");
    const impl = new Deno.UnsafePointerView(ptr(info[0])!).getCString();
    const mems = mds.map((md) => {
      check(
        this.#lib.dnnl_memory_create(u8(out), Deno.UnsafePointer.of(md), this.#engine, null),
        "dnnl_memory_create",
      );
      return ptr(out[0]);
    });
    const p = { prim, mems, args: execArgs(args.map((a, i) => [a, mems[i]])), impl };
    this.#plainCache.set(key, p);
    return p;
  }

  #runPlain(p: Plain, handles: Ptr[]): void {
    p.mems.forEach((m, i) =>
      check(this.#lib.dnnl_memory_set_data_handle(m, handles[i]), "set handle")
    );
    this.#exec(p.prim, p.args);
    check(this.#lib.dnnl_stream_wait(this.#stream), "dnnl_stream_wait");
  }

  /** The implementation oneDNN chose for a cached primitive (e.g. `brg:avx512_core`). */
  implementations(): Map<string, string> {
    return new Map([...this.#cache, ...this.#plainCache].map(([k, p]) => [k, p.impl]));
  }

  /**
   * A convolution on buffers of its own, in the layouts oneDNN prefers for it (`any`: blocked
   * activations too) or NHWC, for measuring what a layout would gain: the implementation oneDNN
   * picked and a function that runs it once (inputs hold a fixed normal value). Not cached; its
   * primitive lives as long as the process.
   */
  convProbe(
    direction: ConvDirection,
    s: ConvShape,
    precision: ProbePrecision,
    activations: "nhwc" | "any",
  ): { impl: string; run: () => void } {
    const lib = this.#lib;
    const tag = activations === "any" ? TAG_ANY : TAG_NHWC;
    const pd = direction === "forward"
      ? this.#convForwardPd(s, { bias: false, relu: false }, false, precision, tag).pd
      : this.#convBackwardPd(direction, s, precision, tag);
    const out = new BigUint64Array(1);
    check(lib.dnnl_primitive_create(u8(out), pd), "dnnl_primitive_create");
    const prim = ptr(out[0]);
    check(lib.dnnl_primitive_desc_query(pd, QUERY_IMPL_INFO_STR, 0, u8(out)), "query impl");
    const impl = new Deno.UnsafePointerView(ptr(out[0])!).getCString();
    const args: Record<ConvDirection, [number, number][]> = {
      forward: [[ARG_SRC, QUERY_SRC_MD], [ARG_WEIGHTS, QUERY_WEIGHTS_MD], [ARG_DST, QUERY_DST_MD]],
      "backward-data": [
        [ARG_DIFF_DST, QUERY_DIFF_DST_MD],
        [ARG_WEIGHTS, QUERY_WEIGHTS_MD],
        [ARG_DIFF_SRC, QUERY_DIFF_SRC_MD],
      ],
      "backward-weights": [
        [ARG_SRC, QUERY_SRC_MD],
        [ARG_DIFF_DST, QUERY_DIFF_DST_MD],
        [ARG_DIFF_WEIGHTS, QUERY_DIFF_WEIGHTS_MD],
      ],
    };
    // 0x3e3e3e3e is ≈0.186 as float32 and 0x3e3e as bfloat16: no denormals, no NaNs.
    const buffers: Uint8Array[] = [];
    const entries = args[direction].map(([arg, query]): [number, Ptr] => {
      const md = lib.dnnl_primitive_desc_query_md(pd, query, 0)!;
      const buffer = new Uint8Array(Number(lib.dnnl_memory_desc_get_size(md))).fill(0x3e);
      buffers.push(buffer);
      check(
        lib.dnnl_memory_create(u8(out), md, this.#engine, Deno.UnsafePointer.of(buffer)),
        "dnnl_memory_create",
      );
      return [arg, ptr(out[0])];
    });
    const execution = execArgs(entries);
    return {
      impl,
      run: () => {
        this.#exec(prim, execution);
        check(lib.dnnl_stream_wait(this.#stream), "dnnl_stream_wait");
        if (buffers.length === 0) throw new Error("unreachable"); // keeps the buffers alive
      },
    };
  }

  /**
   * The descriptors of a convolution; `types`: oneDNN data types of src, weights, dst;
   * `activations`: the format tag of src and dst (weights are always `any`).
   */
  #convMds(
    s: ConvShape,
    types = { src: F32, weights: F32, dst: F32 },
    activations = TAG_NHWC,
  ) {
    const src = this.#md([s.n, s.ci, s.h, s.w], activations, types.src);
    const dst = this.#md([s.n, s.co, s.oh, s.ow], activations, types.dst);
    const wAny = this.#md([s.co, s.ci, s.fh, s.fw], TAG_ANY, types.weights);
    const bias = this.#md([s.co], TAG_A);
    const strides = dims([s.sh, s.sw]);
    const pl = dims([s.pad[0], s.pad[1]]);
    const pr = dims([s.pad[2], s.pad[3]]);
    return { src, dst, wAny, bias, strides, pl, pr };
  }

  #convForwardPd(
    s: ConvShape,
    fusion: ConvFusion,
    inference: boolean,
    precision: ProbePrecision = "f32",
    activations = TAG_NHWC,
  ) {
    const { src, dst, wAny, bias, strides, pl, pr } = this.#convMds(
      s,
      convTypes("forward", precision),
      activations,
    );
    const desc = this.#keepBuf(OP_DESC_BYTES);
    check(
      this.#lib.dnnl_convolution_forward_desc_init(
        desc,
        inference ? PROP_FORWARD_INFERENCE : PROP_FORWARD_TRAINING,
        CONV_DIRECT,
        src,
        wAny,
        fusion.bias ? Deno.UnsafePointer.of(bias) : null,
        dst,
        strides,
        pl,
        pr,
      ),
      "dnnl_convolution_forward_desc_init",
    );
    let attr: Ptr = null;
    if (fusion.relu) {
      const out = new BigUint64Array(1);
      check(this.#lib.dnnl_post_ops_create(u8(out)), "dnnl_post_ops_create");
      const ops = ptr(out[0]);
      check(this.#lib.dnnl_post_ops_append_eltwise(ops, 1, ELTWISE_RELU, 0, 0), "post-op relu");
      check(this.#lib.dnnl_primitive_attr_create(u8(out)), "dnnl_primitive_attr_create");
      attr = ptr(out[0]);
      check(this.#lib.dnnl_primitive_attr_set_post_ops(attr, ops), "set_post_ops");
    }
    return { pd: this.#pd(desc, attr, null), userWeights: "in" as const };
  }

  /** A backward convolution's primitive descriptor, with its forward as the hint. */
  #convBackwardPd(
    direction: "backward-data" | "backward-weights",
    s: ConvShape,
    precision: ProbePrecision,
    activations: number,
  ): Ptr {
    const { src, wAny, dst, strides, pl, pr } = this.#convMds(
      s,
      convTypes(direction, precision),
      activations,
    );
    const plain = { bias: false, relu: false };
    const hint = this.#convForwardPd(s, plain, false, precision, activations);
    const desc = this.#keepBuf(OP_DESC_BYTES);
    if (direction === "backward-data") {
      check(
        this.#lib.dnnl_convolution_backward_data_desc_init(
          desc,
          CONV_DIRECT,
          src,
          wAny,
          dst,
          strides,
          pl,
          pr,
        ),
        "dnnl_convolution_backward_data_desc_init",
      );
    } else {
      check(
        this.#lib.dnnl_convolution_backward_weights_desc_init(
          desc,
          CONV_DIRECT,
          src,
          wAny,
          null,
          dst,
          strides,
          pl,
          pr,
        ),
        "dnnl_convolution_backward_weights_desc_init",
      );
    }
    return this.#pd(desc, null, hint);
  }

  #pd(desc: Uint8Array, attr: Ptr, hint: { pd: Ptr } | null): Ptr {
    const out = new BigUint64Array(1);
    check(
      this.#lib.dnnl_primitive_desc_create(u8(out), desc, attr, this.#engine, hint?.pd ?? null),
      "dnnl_primitive_desc_create",
    );
    return ptr(out[0]);
  }

  /** Creates the primitive, its memories and the weight reorder, and caches them under `key`. */
  #prepare(key: string, make: () => { pd: Ptr; userWeights: "in" | "out" }): Prepared {
    const { pd, userWeights } = make();
    const lib = this.#lib;
    const out = new BigUint64Array(1);
    check(lib.dnnl_primitive_create(u8(out), pd), "dnnl_primitive_create");
    const prim = ptr(out[0]);
    const info = new BigUint64Array(1);
    check(lib.dnnl_primitive_desc_query(pd, QUERY_IMPL_INFO_STR, 0, u8(info)), "query impl");
    const impl = new Deno.UnsafePointerView(ptr(info[0])!).getCString();
    const mems = new Map<number, Ptr>();
    const mem = (md: Ptr, handle: Ptr = null): Ptr => {
      check(lib.dnnl_memory_create(u8(out), md, this.#engine, handle), "dnnl_memory_create");
      return ptr(out[0]);
    };
    const args: [number, number][] = [
      [ARG_SRC, QUERY_SRC_MD],
      [ARG_DST, QUERY_DST_MD],
      [ARG_DIFF_SRC, QUERY_DIFF_SRC_MD],
      [ARG_DIFF_DST, QUERY_DIFF_DST_MD],
    ];
    for (const [arg, query] of args) {
      const md = lib.dnnl_primitive_desc_query_md(pd, query, 0);
      if (md != null && lib.dnnl_memory_desc_get_size(md) > 0n) mems.set(arg, mem(md));
    }
    const biasMd = lib.dnnl_primitive_desc_query_md(pd, QUERY_WEIGHTS_MD, 1);
    if (biasMd != null && lib.dnnl_memory_desc_get_size(biasMd) > 0n) {
      mems.set(ARG_BIAS, mem(biasMd));
    }
    const prepared: Prepared = { prim, mems, args: new Uint8Array(0), impl };
    const weightsArg = userWeights === "in" ? ARG_WEIGHTS : ARG_DIFF_WEIGHTS;
    const wQuery = userWeights === "in" ? QUERY_WEIGHTS_MD : QUERY_DIFF_WEIGHTS_MD;
    const wMd = lib.dnnl_primitive_desc_query_md(pd, wQuery, 0)!;
    const wDims = this.#weightDims(key);
    const hwio = this.#md(wDims, TAG_HWIO);
    const hwioPtr = Deno.UnsafePointer.of(hwio);
    if (lib.dnnl_memory_desc_equal(wMd, hwioPtr) === 1) {
      mems.set(weightsArg, mem(wMd));
    } else {
      // oneDNN's own layout: a buffer it allocates, filled (or read) by a reorder.
      const internal = mem(wMd, ptr(BigInt.asUintN(64, -1n))); // DNNL_MEMORY_ALLOCATE
      mems.set(weightsArg, internal);
      const user = mem(hwioPtr);
      const reorder = (from: Ptr, to: Ptr, fromMd: Ptr, toMd: Ptr) => {
        check(
          lib.dnnl_reorder_primitive_desc_create(
            u8(out),
            fromMd,
            this.#engine,
            toMd,
            this.#engine,
            null,
          ),
          "dnnl_reorder_primitive_desc_create",
        );
        const rpd = ptr(out[0]);
        check(lib.dnnl_primitive_create(u8(out), rpd), "dnnl_primitive_create (reorder)");
        return { prim: ptr(out[0]), from, to };
      };
      if (userWeights === "in") prepared.weightsIn = reorder(user, internal, hwioPtr, wMd);
      else prepared.weightsOut = reorder(internal, user, wMd, hwioPtr);
    }
    prepared.args = execArgs([...mems]);
    this.#cache.set(key, prepared);
    return prepared;
  }

  /** Weight dims {O, I, KH, KW} from a cache key's shape part. */
  #weightDims(key: string): number[] {
    const s = JSON.parse(key.slice(key.indexOf(":") + 1)) as number[];
    // shapeKey order: n h w ci oh ow co fh fw ...
    return [s[6], s[3], s[7], s[8]];
  }

  /** Runs a prepared primitive with tensor pointers; `weights` is hwio on the heap. */
  #run(p: Prepared, ptrs: Map<number, Ptr>, weights: Ptr): void {
    const lib = this.#lib;
    for (const [arg, m] of p.mems) {
      const handle = ptrs.get(arg);
      if (handle !== undefined) check(lib.dnnl_memory_set_data_handle(m, handle), "set handle");
    }
    if (p.weightsIn != null) {
      check(lib.dnnl_memory_set_data_handle(p.weightsIn.from, weights), "set handle");
      this.#exec(
        p.weightsIn.prim,
        execArgs([[ARG_FROM, p.weightsIn.from], [
          ARG_TO,
          p.weightsIn.to,
        ]]),
      );
    } else if (p.weightsOut != null) {
      check(lib.dnnl_memory_set_data_handle(p.weightsOut.to, weights), "set handle");
    } else {
      const arg = p.mems.has(ARG_WEIGHTS) ? ARG_WEIGHTS : ARG_DIFF_WEIGHTS;
      check(lib.dnnl_memory_set_data_handle(p.mems.get(arg)!, weights), "set handle");
    }
    this.#exec(p.prim, p.args);
    if (p.weightsOut != null) {
      this.#exec(
        p.weightsOut.prim,
        execArgs([[ARG_FROM, p.weightsOut.from], [
          ARG_TO,
          p.weightsOut.to,
        ]]),
      );
    }
    check(lib.dnnl_stream_wait(this.#stream), "dnnl_stream_wait");
  }

  #exec(prim: Ptr, args: Uint8Array): void {
    check(
      this.#lib.dnnl_primitive_execute(prim, this.#stream, args.length / 16, args),
      "dnnl_primitive_execute",
    );
  }

  #md(d: number[], tag: number, type = F32): Uint8Array {
    const md = this.#keepBuf(MD_BYTES);
    check(
      this.#lib.dnnl_memory_desc_init_by_tag(md, d.length, dims(d), type, tag),
      "dnnl_memory_desc_init_by_tag",
    );
    return md;
  }

  #stridedMd(d: number[], strides: number[]): Uint8Array {
    const md = this.#keepBuf(MD_BYTES);
    check(
      this.#lib.dnnl_memory_desc_init_by_strides(md, d.length, dims(d), F32, dims(strides)),
      "dnnl_memory_desc_init_by_strides",
    );
    return md;
  }

  #keepBuf(bytes: number): Uint8Array {
    const b = new Uint8Array(bytes);
    this.#keep.push(b);
    return b;
  }
}

/**
 * A ConvPrecision, or `bf16-out`: bf16 also for what forward and backward-data write (as
 * PyTorch's autocast does), for measuring it with `convProbe` only.
 */
export type ProbePrecision = ConvPrecision | "bf16-out";

/** Which pass of a convolution. */
export type ConvDirection = "forward" | "backward-data" | "backward-weights";

/**
 * oneDNN data types of a convolution's src, weights and dst descriptors (the diff_ ones for a
 * backward pass) at a precision (see ConvPrecision): bf16 for what it reads but the float32
 * master weights of the weight gradient, f32 for what it writes.
 */
function convTypes(direction: ConvDirection, precision: ProbePrecision) {
  // bf16-out: forward's dst and backward-data's diff_src bf16 as well (measured by convProbe).
  const out = precision === "bf16-out" ? BF16 : F32;
  if (precision === "f32") return { src: F32, weights: F32, dst: F32 };
  if (direction === "forward") return { src: BF16, weights: BF16, dst: out };
  if (direction === "backward-data") return { src: out, weights: BF16, dst: BF16 };
  return { src: BF16, weights: F32, dst: BF16 };
}

/** The cache-key prefix of a precision: none for float32, so its keys are as before. */
function precisionKey(precision: ConvPrecision): string {
  return precision === "f32" ? "" : `${precision}-`;
}

function shapeKey(s: ConvShape): string {
  return JSON.stringify([s.n, s.h, s.w, s.ci, s.oh, s.ow, s.co, s.fh, s.fw, s.sh, s.sw, ...s.pad]);
}

/** A dnnl_dims_t (int64[12]). */
function dims(d: number[]): Uint8Array {
  const a = new BigInt64Array(12);
  d.forEach((v, i) => (a[i] = BigInt(v)));
  return u8(a);
}

/** dnnl_exec_arg_t[] ({int arg; dnnl_memory_t memory;}, 16 bytes each). */
function execArgs(entries: [number, Ptr][]): Uint8Array {
  const buf = new ArrayBuffer(16 * entries.length);
  const view = new DataView(buf);
  entries.forEach(([arg, mem], i) => {
    view.setInt32(16 * i, arg, true);
    view.setBigUint64(16 * i + 8, addr(mem), true);
  });
  return new Uint8Array(buf);
}

function u8(a: ArrayBufferView): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

function ptr(v: bigint): Ptr {
  return Deno.UnsafePointer.create(v);
}

function check(status: number, what: string): void {
  if (status !== 0) throw new Error(`oneDNN ${what} failed (status ${status})`);
}

/** A pointer `offset` bytes past `base`. */
export function offsetPointer(base: Ptr, offset: number): Ptr {
  return ptr(addr(base) + BigInt(offset));
}
