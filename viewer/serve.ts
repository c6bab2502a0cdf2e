/**
 * viewer/serve.ts — serves the browser viewer and one exported TF.js model directory on
 * 127.0.0.1, and nothing else: a fixed set of viewer files, the tfjs WebAssembly binaries, and
 * the regular files directly inside the model directory (names of plain characters only, so
 * `..`, `%2e%2e`, encoded slashes and absolute paths all end in 404). The page's code is
 * bundled at start (`deno bundle`: tfjs, the DICOM reader of lib/data/dicom.ts). Its Content
 * Security Policy lets the page talk only to this server: images never leave the machine.
 *
 *   deno task serve -- data/exports/2022_0319_090507_tfjs
 * @module
 */
import { type FlagSpecs, parseFlags } from "../lib/util/cli.ts";
import { runMain, UserError } from "../lib/util/errors.ts";
import { TFJS_MODEL_JSON } from "../lib/export/export.ts";

const VIEWER = new URL("./", import.meta.url);
const ROOT = new URL("../", import.meta.url);
const WASM_DIR = new URL("node_modules/@tensorflow/tfjs-backend-wasm/dist/", ROOT);
const WASM_FILES = [
  "tfjs-backend-wasm.wasm",
  "tfjs-backend-wasm-simd.wasm",
  "tfjs-backend-wasm-threaded-simd.wasm",
];
/** Where the exports go by default (export_model.ts). */
const EXPORTS_DIR = "data/exports";

/** A model file name the server will serve: plain characters, no dot first. */
const MODEL_FILE = /^[A-Za-z0-9_][A-Za-z0-9_.-]*$/;

const TYPES: Record<string, string> = {
  html: "text/html; charset=utf-8",
  css: "text/css; charset=utf-8",
  js: "text/javascript; charset=utf-8",
  json: "application/json",
  md: "text/markdown; charset=utf-8",
  wasm: "application/wasm",
  bin: "application/octet-stream",
};

/**
 * The response headers: the page may load and fetch only from this server (its one inline
 * script, the import map, allowed by hash); no frames, no forms elsewhere.
 */
export function securityHeaders(importMapHash: string): Record<string, string> {
  return {
    "content-security-policy": `default-src 'self'; script-src 'self' blob: 'wasm-unsafe-eval' ` +
      `'sha256-${importMapHash}'; img-src 'self' blob: data:; style-src 'self'; ` +
      "connect-src 'self'; worker-src 'self' blob:; frame-ancestors 'none'; form-action 'none'; " +
      "base-uri 'none'",
    // Cross-origin isolation lets tfjs use its threaded WebAssembly build.
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-embedder-policy": "require-corp",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
  };
}

/** The base64 SHA-256 of index.html's import map, for the CSP. */
async function importMapHash(): Promise<string> {
  const html = await Deno.readTextFile(new URL("index.html", VIEWER));
  const m = /<script type="importmap">([\s\S]*?)<\/script>/.exec(html);
  if (!m) throw new Error("viewer/index.html has no import map");
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(m[1]));
  return btoa(String.fromCharCode(...new Uint8Array(digest)));
}

/** What a request path maps to: a viewer file, the bundle, a wasm binary, a model file. */
export type Route =
  | { kind: "file"; url: URL; type: string }
  | { kind: "bundle" }
  | { kind: "model"; name: string; type: string };

const typeOf = (name: string) => TYPES[name.split(".").pop() ?? ""] ?? TYPES.bin;

/**
 * The route of a request path as the client sent it (percent-encoded), or null (404). Only
 * these paths exist; a model file name must be plain after decoding, which leaves no way to
 * name anything outside the model directory.
 */
export function routeFor(pathname: string): Route | null {
  switch (pathname) {
    case "/":
    case "/index.html":
      return { kind: "file", url: new URL("index.html", VIEWER), type: TYPES.html };
    case "/viewer.css":
      return { kind: "file", url: new URL("viewer.css", VIEWER), type: TYPES.css };
    case "/zlib_shim.js":
      return { kind: "file", url: new URL("zlib_shim.js", VIEWER), type: TYPES.js };
    case "/app.js":
      return { kind: "bundle" };
  }
  const wasm = /^\/vendor\/([^/]+)$/.exec(pathname);
  if (wasm && WASM_FILES.includes(wasm[1])) {
    return { kind: "file", url: new URL(wasm[1], WASM_DIR), type: TYPES.wasm };
  }
  const model = /^\/model\/([^/]+)$/.exec(pathname);
  if (!model) return null;
  let name: string;
  try {
    name = decodeURIComponent(model[1]);
  } catch {
    return null;
  }
  return MODEL_FILE.test(name) ? { kind: "model", name, type: typeOf(name) } : null;
}

/** Bundles the page's code (viewer/app.ts) for the browser, in memory. */
export async function bundleApp(): Promise<Uint8Array<ArrayBuffer>> {
  // This deno where allowed, else the `deno` on PATH (the task's --allow-run=deno: an npm
  // install runs the binary through a launcher of that name).
  const self = Deno.permissions.querySync({ name: "run", command: Deno.execPath() });
  const deno = self.state === "granted" ? Deno.execPath() : "deno";
  const out = await new Deno.Command(deno, {
    args: [
      "bundle",
      "--quiet",
      "--platform",
      "browser",
      "--minify",
      // lib/data/dicom.ts inflates deflated DICOM with node:zlib; the page maps it to a shim.
      "--external",
      "node:zlib",
      // The bundle on the pipe: nothing is written to disk.
      "-o",
      "/dev/stdout",
      new URL("app.ts", VIEWER).pathname,
    ],
    cwd: ROOT.pathname,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success || out.stdout.length === 0) {
    const why = new TextDecoder().decode(out.stderr).trim().split("\n").pop();
    throw new UserError(`cannot bundle the viewer (deno bundle viewer/app.ts: ${why})`);
  }
  return out.stdout;
}

/** The newest directory under data/exports with a model.json, for a bare `deno task serve`. */
async function newestExport(): Promise<string> {
  const found: Array<{ path: string; time: number }> = [];
  try {
    for await (const e of Deno.readDir(EXPORTS_DIR)) {
      const path = `${EXPORTS_DIR}/${e.name}`;
      const info = await Deno.stat(`${path}/${TFJS_MODEL_JSON}`).catch(() => null);
      if (e.isDirectory && info) found.push({ path, time: info.mtime?.getTime() ?? 0 });
    }
  } catch {
    // No exports directory: the error below says what to do.
  }
  found.sort((a, b) => b.time - a.time);
  if (!found[0]) {
    throw new UserError(
      `no TF.js export (a directory with ${TFJS_MODEL_JSON}) in ${EXPORTS_DIR}: run ` +
        `deno task export -- --format tfjs, or pass the directory: deno task serve -- DIR`,
      2,
    );
  }
  return found[0].path;
}

/** Serves the viewer and `modelDir`; resolves when the server closes. */
export async function serveViewer(
  modelDir: string,
  app: Uint8Array<ArrayBuffer>,
  opts: { port: number; onListen: (addr: Deno.NetAddr) => void; signal?: AbortSignal },
): Promise<Deno.HttpServer<Deno.NetAddr>> {
  const security = securityHeaders(await importMapHash());
  const notFound = () => new Response("not found\n", { status: 404, headers: { ...security } });
  // Only requests addressed to this server by its loopback name: a page elsewhere that rebinds
  // its own host name to 127.0.0.1 (DNS rebinding) sends its own name, and gets nothing.
  let hosts: string[] = [];
  return Deno.serve({
    hostname: "127.0.0.1",
    port: opts.port,
    signal: opts.signal,
    onListen: (addr) => {
      hosts = [`127.0.0.1:${addr.port}`, `localhost:${addr.port}`];
      opts.onListen(addr);
    },
  }, async (req) => {
    if (req.method !== "GET" && req.method !== "HEAD") return notFound();
    if (!hosts.includes(req.headers.get("host") ?? "")) return notFound();
    // The raw path: URL parsing resolves `..` segments but keeps %2e%2e and %2f encoded.
    const route = routeFor(new URL(req.url).pathname);
    if (!route) return notFound();
    const headers = { ...security, "content-type": "" };
    try {
      if (route.kind === "bundle") {
        headers["content-type"] = TYPES.js;
        return new Response(req.method === "HEAD" ? null : app, {
          headers,
        });
      }
      const path = route.kind === "model" ? `${modelDir}/${route.name}` : route.url.pathname;
      // A regular file itself, not a link out of the directory.
      const info = await Deno.lstat(path);
      if (!info.isFile) return notFound();
      headers["content-type"] = route.type;
      const body = req.method === "HEAD" ? null : await Deno.readFile(path);
      return new Response(body, { headers });
    } catch {
      return notFound();
    }
  });
}

export const FLAGS = {
  model_dir: {
    kind: "list",
    metavar: "MODEL_DIR",
    rest: true,
    help: "the TF.js export to serve (default: the newest in data/exports)",
  },
  port: { kind: "int", default: 8080, min: 0, max: 65535, help: "port on 127.0.0.1 (0: any free)" },
} as const satisfies FlagSpecs;

async function main(args: string[]): Promise<void> {
  const flags = parseFlags(
    args,
    FLAGS,
    "viewer/serve.ts [--port N] [MODEL_DIR]",
    "Serves the browser viewer with an exported TF.js model (export_model.ts --format tfjs)\n" +
      "on 127.0.0.1. Images are read and classified in the browser; nothing leaves the machine.",
  );
  const dirs = [...flags.model_dir, ...flags._];
  if (dirs.length > 1) throw new UserError("give one model directory", 2);
  const modelDir = (dirs[0] ?? await newestExport()).replace(/\/+$/, "");
  if (!(await Deno.stat(`${modelDir}/${TFJS_MODEL_JSON}`).catch(() => null))) {
    throw new UserError(
      `${modelDir} holds no ${TFJS_MODEL_JSON}: pass a directory written by ` +
        `deno task export -- --format tfjs`,
      2,
    );
  }
  const app = await bundleApp();
  const server = await serveViewer(modelDir, app, {
    port: flags.port,
    onListen: ({ port }) =>
      console.log(
        `Viewer: http://127.0.0.1:${port}/ (model: ${modelDir}); images stay in the browser. ` +
          "Ctrl-C stops.",
      ),
  });
  await server.finished;
}

if (import.meta.main) await runMain(main);
