/**
 * The layout rules of lib/README.md, checked on the import lines of every module: which folder
 * may import which, no import of an entry script or of lib/ root from a folder, no tfjs in
 * torch/, data/ and eval/metrics.ts (and the bootstrap, DeLong, calibration modules), no
 * network in data/; and the model's seam: lib/model/ reaches lib/backends/ only through seam.ts
 * and never asks tfjs which kernels a backend has.
 */
import { assertEquals } from "./assert.ts";

function assert(cond: boolean, msg: string): asserts cond {
  if (!cond) throw new Error(msg);
}
import { dirname, join, normalize, relative } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = normalize(fileURLToPath(new URL("../", import.meta.url)));

/** Folder → the lib/ folders it may import (itself always allowed). */
const ALLOWED: Record<string, string[]> = {
  util: [],
  backends: ["util"],
  torch: ["util"],
  data: ["torch", "util"],
  model: ["backends", "torch", "util"],
  eval: ["model", "data", "torch", "backends", "util"],
  report: ["eval", "util"],
  train: ["eval", "model", "data", "torch", "backends", "util"],
  export: ["eval", "model", "data", "torch", "util"],
};

/** Every static or dynamic import specifier of a module's source. */
export function importSpecifiers(source: string): string[] {
  const out: string[] = [];
  const re = /(?:\bfrom\s*|\bimport\s*\(?\s*|\brequire\(\s*)(["'])([^"']+)\1/g;
  for (const m of source.matchAll(re)) out.push(m[2]);
  return out;
}

async function* walk(dir: string): AsyncGenerator<string> {
  for await (const e of Deno.readDir(dir)) {
    const p = join(dir, e.name);
    if (e.isDirectory) yield* walk(p);
    else if (/\.(ts|cjs)$/.test(e.name)) yield p;
  }
}

/** Metrics on host arrays: they work, and are tested, without a tensor backend. */
const HOST_METRICS = new Set([
  "lib/eval/metrics.ts",
  "lib/eval/bootstrap.ts",
  "lib/eval/delong.ts",
  "lib/eval/calibration.ts",
  "lib/eval/uncertainty.ts",
]);

/** The rule violations of one module at `path` (relative to the repository) with `source`. */
export function violations(path: string, source: string): string[] {
  const bad: string[] = [];
  const parts = path.split("/");
  const inLib = parts[0] === "lib";
  const folder = inLib && parts.length > 2 ? parts[1] : null;
  for (const spec of importSpecifiers(source)) {
    const tfjs = spec.startsWith("@tensorflow/");
    if (tfjs && (folder === "torch" || folder === "data" || HOST_METRICS.has(path))) {
      bad.push(`${path} imports ${spec} (no tfjs in torch/, data/, eval/metrics.ts and kin)`);
    }
    if (!spec.startsWith(".")) continue;
    const target = relative(ROOT, normalize(join(ROOT, dirname(path), spec)));
    const tParts = target.split("/");
    if (parts[0] === "transforms") {
      if (tParts[0] === "lib" && !(tParts.length > 2 && tParts[1] === "util")) {
        bad.push(`${path} imports ${target} (transforms/ imports only lib/util/)`);
      }
      continue;
    }
    if (!inLib) continue;
    if (tParts.length === 1 && target !== "config.ts") {
      bad.push(`${path} imports the entry script ${target}`);
    } else if (tParts[0] === "lib" && tParts.length === 2 && folder != null) {
      bad.push(`${path} imports ${target} (lib/ root is entry-script glue)`);
    } else if (tParts[0] === "lib" && tParts.length > 2 && folder != null) {
      const to = tParts[1];
      if (folder === "model" && to === "backends" && target !== "lib/backends/seam.ts") {
        bad.push(`${path} imports ${target} (lib/model/ reaches backends/ only through seam.ts)`);
      }
      if (to !== folder && !(ALLOWED[folder] ?? []).includes(to)) {
        bad.push(
          `${path} imports ${target} (${folder}/ may import ${ALLOWED[folder]?.join(", ")})`,
        );
      }
    }
  }
  if (folder === "model" && /\btf\.(getKernel|getBackend|backend|findBackend)\(/.test(source)) {
    bad.push(`${path} asks tfjs about the backend (the seam decides, lib/backends/seam.ts)`);
  }
  if (folder === "data" && /\bfetch\(|Deno\.connect|node:(http|https|net)\b/.test(source)) {
    bad.push(`${path} uses the network (data/ knows no network)`);
  }
  return bad;
}

Deno.test("lib layout: every folder has an import rule", async () => {
  for await (const e of Deno.readDir(join(ROOT, "lib"))) {
    if (e.isDirectory) assert(e.name in ALLOWED, `lib/${e.name}/ has no rule in this test`);
  }
});

Deno.test("lib layout: imports follow lib/README.md", async () => {
  const bad: string[] = [];
  let modules = 0;
  for (const dir of ["lib", "transforms"]) {
    for await (const file of walk(join(ROOT, dir))) {
      modules++;
      bad.push(...violations(relative(ROOT, file), await Deno.readTextFile(file)));
    }
  }
  assert(modules > 30, `only ${modules} modules found`);
  assertEquals(bad, []);
});

Deno.test("lib layout: the checker catches each kind of violation", () => {
  const cases: [string, string][] = [
    ["lib/torch/pickle.ts", `import * as tf from "@tensorflow/tfjs-core";`],
    ["lib/data/tar.ts", `import { x } from "../model/densenet.ts";`],
    ["lib/model/densenet.ts", `import { y } from "../eval/metrics.ts";`],
    ["lib/util/rng.ts", `import { z } from "../../train_model.ts";`],
    ["lib/eval/cam.ts", `const m = await import("../run_flags.ts");`],
    ["lib/data/images.ts", `const r = await fetch("https://example.org/x.png");`],
    ["lib/eval/metrics.ts", `import type { Tensor } from "@tensorflow/tfjs-core";`],
    ["transforms/preview.ts", `import { a } from "../lib/data/images.ts";`],
    ["lib/model/densenet.ts", `import { K } from "../backends/batchnorm_kernels.ts";`],
    ["lib/model/dense_block.ts", `const fused = tf.getKernel("X", tf.getBackend()) != null;`],
  ];
  for (const [path, src] of cases) {
    assertEquals(violations(path, src).length, 1, `${path}: ${src}`);
  }
  assertEquals(
    violations("lib/train/training.ts", `import { b } from "../eval/inference.ts";`),
    [],
  );
  assertEquals(violations("lib/data/split.ts", `import { C } from "../../config.ts";`), []);
  assertEquals(
    violations("lib/model/densenet.ts", `import { seam } from "../backends/seam.ts";`),
    [],
  );
});
