/**
 * The pthread worker of tfjs's threaded wasm build, as a file Deno's `node:worker_threads` can
 * start. tfjs hands emscripten a `blob:` URL for this script, which Deno's `Worker` refuses
 * (ERR_WORKER_PATH); `wasm_threads.ts` points emscripten here instead.
 *
 * The script itself is tfjs's own (`wasmWorkerContents`, so it always matches the installed
 * build). It assigns `location`, `self`, `performance` and `postMessage` onto the global object
 * as Node allows; Deno's worker global has getter-only accessors for some of them, so each is
 * first made a plain writable property. `\n` inside its string literals arrives as real newlines
 * (a template literal in the package), which is re-escaped as tfjs does before making a Blob.
 */
"use strict";

const { wasmWorkerContents } = require(
  "@tensorflow/tfjs-backend-wasm/wasm-out/tfjs-backend-wasm-threaded-simd.worker.js",
);

for (const name of ["location", "self", "performance", "postMessage"]) {
  Object.defineProperty(globalThis, name, {
    value: globalThis[name],
    writable: true,
    configurable: true,
    enumerable: true,
  });
}

// The script expects CommonJS's `require` and `__filename` in scope, as in a Node worker file.
new Function("require", "__filename", wasmWorkerContents.replace(/\n/g, "\\n"))(
  require,
  __filename,
);
