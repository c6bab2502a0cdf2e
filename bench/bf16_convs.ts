/**
 * oneDNN's float32 against its bfloat16 convolutions (onednn.ts, issue #21's groundwork) on
 * DenseNet-121's convolution shapes (NHWC, batch 16, 224 px by default): forward, backward-data
 * and backward-weights, GFLOP/s of the best of several runs, for
 *   - f32: float32 throughout (what the native backend runs today);
 *   - bf16: bfloat16 activations already on hand (the weights' f32 → bf16 reorder included, as
 *     f32 includes its hwio → blocked one);
 *   - bf16+cvt: the same plus rounding the float32 activations it reads to bfloat16 first
 *     (what a bf16 convolution costs when its producer still writes float32);
 * the bf16 output's relative error from float32 (max |Δ| / max |f32|, inputs ~ N(0, 1)), and the
 * implementation oneDNN picked for each. With `--network`, every distinct convolution of the
 * network, and totals weighted by how often each occurs; with `--compare-torch`, the same shapes
 * in Debian's PyTorch 1.13 (`bench/torch_bf16_convs.py`: channels_last float32, and bfloat16 as
 * autocast runs its convolutions), after ours, on the same thread count.
 * Progress and the table go to stderr; one JSON object to stdout.
 *
 *     deno run --allow-read --allow-env --allow-ffi --allow-run --allow-sys bench/bf16_convs.ts \
 *       [--batch 16] [--image_size 224] [--threads 2] [--network] [--compare-torch] \
 *       [--layouts] [--only TEXT]
 * @module
 */

import { fileURLToPath } from "node:url";
import {
  type ConvDirection,
  type ConvPrecision,
  type ConvShape,
  OneDnn,
} from "../lib/backends/native/onednn.ts";
import { parseFlags } from "../lib/util/cli.ts";
import { runMain, UserError } from "../lib/util/errors.ts";
import { Rng } from "../lib/util/rng.ts";

const SPECS = {
  batch: { kind: "int", default: 16, min: 1, help: "images per batch" },
  image_size: { kind: "int", default: 224, min: 32, help: "side of the square images" },
  threads: { kind: "int", default: 2, min: 1, help: "oneDNN's (and PyTorch's) threads" },
  network: {
    kind: "boolean",
    default: false,
    help: "every distinct convolution of DenseNet-121 and weighted totals (slower)",
  },
  "compare-torch": {
    kind: "boolean",
    default: false,
    help: "also time the shapes in PyTorch (bench/torch_bf16_convs.py, /usr/bin/python3)",
  },
  layouts: {
    kind: "boolean",
    default: false,
    help: "also time each direction on oneDNN's preferred (blocked) activation layouts " +
      "against NHWC, f32 and bf16, and bf16 with a bf16 output (forward, backward-data), on " +
      "buffers of its own (onednn.ts convProbe)",
  },
  only: {
    kind: "string",
    default: "",
    metavar: "TEXT",
    help: "only the shapes whose label contains TEXT (e.g. '3x3')",
  },
  min_seconds: {
    kind: "float",
    default: 0.3,
    min: 0,
    help: "time each measurement for at least this long (best run kept)",
  },
} as const;

/** A convolution of the network, how often it occurs, and a label. */
interface NetConv {
  label: string;
  s: ConvShape;
  count: number;
}

function convShape(n: number, hw: number, ci: number, co: number, k: number, stride: number) {
  const p = Math.floor(k / 2);
  const o = Math.floor((hw + 2 * p - k) / stride) + 1;
  const s: ConvShape = {
    n,
    h: hw,
    w: hw,
    ci,
    oh: o,
    ow: o,
    co,
    fh: k,
    fw: k,
    sh: stride,
    sw: stride,
    pad: [p, p, p, p],
  };
  return s;
}

/**
 * DenseNet-121's convolutions (growth 32, bottleneck 128, blocks 6/12/24/16): every distinct one
 * with its count, or (`all` false) the stem, the first and last bottleneck and the 3×3 of each
 * block, and the transitions.
 */
function denseNetConvs(n: number, size: number, all: boolean): NetConv[] {
  const out: NetConv[] = [];
  let hw = Math.floor((size + 6 - 7) / 2) + 1;
  out.push({ label: `stem 7x7/2 3→64 @${hw}`, s: convShape(n, size, 3, 64, 7, 2), count: 1 });
  hw = Math.floor((hw + 2 - 3) / 2) + 1; // the 3×3/2 max pooling
  let c = 64;
  const blocks = [6, 12, 24, 16];
  blocks.forEach((layers, b) => {
    for (let i = 0; i < layers; i++) {
      const ci = c + 32 * i;
      if (all || i === 0 || i === layers - 1) {
        out.push({
          label: `1x1 ${ci}→128 @${hw}`,
          s: convShape(n, hw, ci, 128, 1, 1),
          count: 1,
        });
      }
    }
    out.push({ label: `3x3 128→32 @${hw}`, s: convShape(n, hw, 128, 32, 3, 1), count: layers });
    c += 32 * layers;
    if (b < blocks.length - 1) {
      out.push({
        label: `trans 1x1 ${c}→${c / 2} @${hw}`,
        s: convShape(n, hw, c, c / 2, 1, 1),
        count: 1,
      });
      c /= 2;
      hw = Math.floor(hw / 2);
    }
  });
  return out;
}

const DIRECTIONS = ["fwd", "bwd-data", "bwd-weights"] as const;
type Direction = typeof DIRECTIONS[number];
const VARIANTS = ["f32", "bf16", "bf16+cvt"] as const;
type Variant = typeof VARIANTS[number];

function flops(s: ConvShape): number {
  return 2 * s.n * s.oh * s.ow * s.co * s.ci * s.fh * s.fw;
}

/** Best wall time of `run` over at least 3 runs and `minSeconds` (after one warm-up run). */
function bestSeconds(run: () => void, minSeconds: number): number {
  run();
  let best = Infinity;
  const start = performance.now();
  for (let i = 0; i < 3 || performance.now() - start < minSeconds * 1000; i++) {
    const t = performance.now();
    run();
    best = Math.min(best, performance.now() - t);
    if (i >= 50) break;
  }
  return best / 1000;
}

function relError(a: Float32Array, ref: Float32Array): number {
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < a.length; i++) {
    diff = Math.max(diff, Math.abs(a[i] - ref[i]));
    scale = Math.max(scale, Math.abs(ref[i]));
  }
  return diff / scale;
}

interface Row {
  label: string;
  count: number;
  gflop: number;
  direction: Direction;
  seconds: Record<Variant, number>;
  relError: number;
  impl: Record<"f32" | "bf16", string>;
  torch?: { f32: number; bf16: number };
  /** With --layouts: seconds and implementation, by precision and activation layout. */
  layouts?: Record<string, { seconds: number; impl: string }>;
}

const PROBE_DIRECTION: Record<Direction, ConvDirection> = {
  fwd: "forward",
  "bwd-data": "backward-data",
  "bwd-weights": "backward-weights",
};

/** The layouts measurement of one row (onednn.ts convProbe). */
function measureLayouts(dnn: OneDnn, s: ConvShape, r: Row, minSeconds: number): void {
  r.layouts = {};
  for (const precision of ["f32", "bf16", "bf16-out"] as const) {
    for (const layout of ["nhwc", "any"] as const) {
      if (precision === "bf16-out" && (layout === "any" || r.direction === "bwd-weights")) continue;
      const probe = dnn.convProbe(PROBE_DIRECTION[r.direction], s, precision, layout);
      r.layouts[`${precision} ${layout}`] = {
        seconds: bestSeconds(probe.run, minSeconds),
        impl: probe.impl,
      };
    }
  }
}

function layoutTable(rows: Row[]): string {
  const head = [
    "shape",
    "dir",
    "f32 nhwc",
    "f32 any",
    "bf16 nhwc",
    "bf16 any",
    "bf16 nhwc, bf16 out",
    "impl (any)",
  ];
  const lines = rows.filter((r) => r.layouts).map((r) => {
    const l = r.layouts!;
    const g = (k: string) => l[k] ? (r.gflop / l[k].seconds).toFixed(1) : "—";
    return [
      r.label,
      r.direction,
      g("f32 nhwc"),
      g("f32 any"),
      g("bf16 nhwc"),
      g("bf16 any"),
      g("bf16-out nhwc"),
      `${l["f32 any"].impl} | ${l["bf16 any"].impl}`,
    ];
  });
  return [head, head.map(() => "---"), ...lines].map((l) => `| ${l.join(" | ")} |`).join("\n");
}

/** Times the three directions of `c` in the three variants. */
function measure(dnn: OneDnn, c: NetConv, minSeconds: number): Row[] {
  const { s } = c;
  const rng = new Rng(21);
  const random = (len: number) => {
    const a = new Float32Array(len);
    for (let i = 0; i < len; i++) a[i] = rng.normal();
    return a;
  };
  const x = random(s.n * s.h * s.w * s.ci);
  const w = random(s.fh * s.fw * s.ci * s.co);
  const dy = random(s.n * s.oh * s.ow * s.co);
  const xb = new Uint16Array(x.length);
  const dyb = new Uint16Array(dy.length);
  const at = (a: ArrayBufferView) => Deno.UnsafePointer.of(a);
  const toBf16 = (from: Float32Array, to: Uint16Array) =>
    dnn.convertBf16(from.length, at(from), at(to));
  toBf16(x, xb);
  toBf16(dy, dyb);
  const plain = { bias: false, relu: false };
  const rows: Row[] = [];
  for (const direction of DIRECTIONS) {
    const outLen = direction === "fwd" ? dy.length : direction === "bwd-data" ? x.length : w.length;
    const outputs = { f32: new Float32Array(outLen), bf16: new Float32Array(outLen) };
    const run = (precision: ConvPrecision, convert: boolean) => {
      const bf = precision === "bf16";
      const out = at(outputs[precision]);
      if (direction === "fwd") {
        if (convert) toBf16(x, xb);
        dnn.convForward(s, plain, at(bf ? xb : x), at(w), null, out, false, precision);
      } else if (direction === "bwd-data") {
        if (convert) toBf16(dy, dyb);
        dnn.convBackwardData(s, at(bf ? dyb : dy), at(w), out, precision);
      } else {
        if (convert) {
          toBf16(x, xb);
          toBf16(dy, dyb);
        }
        dnn.convBackwardWeights(s, at(bf ? xb : x), at(bf ? dyb : dy), out, precision);
      }
    };
    const seconds = {
      f32: bestSeconds(() => run("f32", false), minSeconds),
      bf16: bestSeconds(() => run("bf16", false), minSeconds),
      "bf16+cvt": bestSeconds(() => run("bf16", true), minSeconds),
    };
    const impls = dnn.implementations();
    const key = (p: string) =>
      `${p}${{ fwd: "ft", "bwd-data": "d", "bwd-weights": "w" }[direction]}:${
        JSON.stringify([s.n, s.h, s.w, s.ci, s.oh, s.ow, s.co, s.fh, s.fw, s.sh, s.sw, ...s.pad])
      }`;
    rows.push({
      label: c.label,
      count: c.count,
      gflop: flops(s) / 1e9,
      direction,
      seconds,
      relError: relError(outputs.bf16, outputs.f32),
      impl: { f32: impls.get(key("")) ?? "?", bf16: impls.get(key("bf16-")) ?? "?" },
    });
  }
  return rows;
}

/** PyTorch's times for `convs` (seconds, by label and direction), from torch_bf16_convs.py. */
async function torchTimes(
  convs: NetConv[],
  threads: number,
  minSeconds: number,
): Promise<{ version: string; times: Record<string, Record<Direction, [number, number]>> }> {
  const script = fileURLToPath(new URL("./torch_bf16_convs.py", import.meta.url));
  const child = new Deno.Command("/usr/bin/python3", {
    args: [script, "--threads", String(threads), "--min_seconds", String(minSeconds)],
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(JSON.stringify(convs.map((c) => c.s))));
  await writer.close();
  const out = await child.output();
  if (!out.success) throw new UserError("bench/torch_bf16_convs.py failed (see above)");
  const result = JSON.parse(new TextDecoder().decode(out.stdout)) as {
    version: string;
    times: Record<Direction, [number, number]>[];
  };
  return {
    version: result.version,
    times: Object.fromEntries(convs.map((c, i) => [c.label, result.times[i]])),
  };
}

function table(rows: Row[], torch: boolean): string {
  const g = (r: Row, sec: number) => (r.gflop / sec).toFixed(1);
  const head = [
    "shape",
    "dir",
    "GFLOP",
    "f32",
    "bf16",
    "bf16+cvt",
    "bf16/f32",
    "(+cvt)",
    "rel.err",
    ...(torch ? ["torch f32 cl", "torch bf16", "ours bf16/torch bf16"] : []),
    "impl f32 | bf16",
  ];
  const lines = rows.map((r) => [
    r.label,
    r.direction,
    r.gflop.toFixed(2),
    g(r, r.seconds.f32),
    g(r, r.seconds.bf16),
    g(r, r.seconds["bf16+cvt"]),
    (r.seconds.f32 / r.seconds.bf16).toFixed(2),
    (r.seconds.f32 / r.seconds["bf16+cvt"]).toFixed(2),
    r.relError.toExponential(1),
    ...(torch && r.torch
      ? [g(r, r.torch.f32), g(r, r.torch.bf16), (r.torch.bf16 / r.seconds.bf16).toFixed(2)]
      : []),
    `${r.impl.f32} | ${r.impl.bf16}`,
  ]);
  return [head, head.map(() => "---"), ...lines].map((l) => `| ${l.join(" | ")} |`).join("\n");
}

/** Weighted totals (seconds for one batch through every convolution), by direction. */
function totals(rows: Row[]) {
  return Object.fromEntries(DIRECTIONS.map((d) => {
    const of = rows.filter((r) => r.direction === d);
    const sum = (f: (r: Row) => number) => of.reduce((a, r) => a + r.count * f(r), 0);
    return [d, {
      f32: sum((r) => r.seconds.f32),
      bf16: sum((r) => r.seconds.bf16),
      "bf16+cvt": sum((r) => r.seconds["bf16+cvt"]),
      ...(of.every((r) => r.torch) && of.length > 0
        ? { torch_f32: sum((r) => r.torch!.f32), torch_bf16: sum((r) => r.torch!.bf16) }
        : {}),
    }];
  }));
}

async function main(args: string[]): Promise<void> {
  const flags = parseFlags(
    args,
    SPECS,
    "deno run --allow-read --allow-env --allow-ffi --allow-run --allow-sys bench/bf16_convs.ts [options]",
    "oneDNN float32 vs bfloat16 convolutions on DenseNet-121's shapes",
  );
  const dnn = OneDnn.open();
  dnn.setThreads(flags.threads);
  // Deno reads /proc only with --allow-all; `cat` needs just --allow-run.
  const cpuinfo = await new Deno.Command("cat", { args: ["/proc/cpuinfo"], stderr: "null" })
    .output().then((o) => new TextDecoder().decode(o.stdout)).catch(() => "");
  const cpuFlags = cpuinfo
    .match(/^flags\s*:(.*)$/m)?.[1].trim().split(/\s+/) ?? [];
  const bf16Flags = cpuFlags.filter((f) => /bf16|amx/.test(f));
  console.error(
    `oneDNN ${dnn.version}, ISA ${dnn.isa}; CPU flags: ${bf16Flags.join(" ") || "none with bf16"}` +
      `; ${dnn.threads ?? "default"} threads; load average ${Deno.loadavg().join(" ")}`,
  );
  if (!dnn.bf16Instructions) {
    console.error("no bfloat16 instructions: oneDNN emulates bf16 (expect it slower than f32)");
  }
  const convs = denseNetConvs(flags.batch, flags.image_size, flags.network)
    .filter((c) => c.label.includes(flags.only));
  const rows: Row[] = [];
  for (const c of convs) {
    const r = measure(dnn, c, flags.min_seconds);
    if (flags.layouts) { for (const row of r) measureLayouts(dnn, c.s, row, flags.min_seconds); }
    rows.push(...r);
    console.error(
      `${c.label}: ` +
        r.map((x) => `${x.direction} ${(x.seconds.f32 / x.seconds.bf16).toFixed(2)}×`).join(", "),
    );
  }
  let torchVersion: string | null = null;
  if (flags["compare-torch"]) {
    const t = await torchTimes(convs, flags.threads, flags.min_seconds);
    torchVersion = t.version;
    for (const r of rows) {
      const [f32, bf16] = t.times[r.label][r.direction];
      r.torch = { f32, bf16 };
    }
  }
  console.error(table(rows, torchVersion != null));
  if (flags.layouts) console.error(layoutTable(rows));
  const sums = totals(rows);
  if (flags.network) {
    for (const [d, t] of Object.entries(sums)) {
      console.error(
        `all convolutions, ${d}: ` +
          Object.entries(t).map(([k, v]) => `${k} ${(v * 1000).toFixed(0)} ms`).join(", "),
      );
    }
  }
  console.log(JSON.stringify({
    onednn: dnn.version,
    isa: dnn.isa,
    cpu_bf16_flags: bf16Flags,
    threads: dnn.threads,
    batch: flags.batch,
    image_size: flags.image_size,
    load_average: Deno.loadavg(),
    torch: torchVersion,
    rows,
    ...(flags.network ? { totals: sums } : {}),
  }));
}

if (import.meta.main) await runMain(main);
