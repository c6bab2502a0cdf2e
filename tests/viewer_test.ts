/**
 * The browser viewer end to end: viewer/serve.ts serves an exported TF.js model on 127.0.0.1;
 * headless Chromium opens the page, gets three fixture images (PNG, JPEG… and a DICOM) through
 * the file input, and the probabilities it shows equal validate_model.ts --images within 1e-4.
 * The server answers 404 to every way out of its files (`..`, `%2e%2e`, encoded slashes,
 * absolute paths), and a file name with HTML in it is shown as text.
 */
import assert from "node:assert/strict";
import { assertClose } from "./assert.ts";
import {
  closeChromium,
  evaluate,
  hasChromium,
  launchChromium,
  openPage,
  screenshot,
  withTimeout,
} from "./helpers/chromium.ts";
import { cliPredictions, runScript, seedModelPath } from "./helpers/scripts.ts";
import { LABELS } from "../config.ts";
import { routeFor } from "../viewer/serve.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const FIX = `${ROOT}tests/fixtures/`;
const IMAGES = [
  `${FIX}dicom/xray.png`,
  `${FIX}images/rgb8.png`,
  `${FIX}dicom/mono1_12bit.dcm`,
];
/** The task's permissions (deno.json "serve"), the deno binary named as the test runs it. */
const SERVE_PERMISSIONS = [
  "--allow-read",
  "--allow-net=127.0.0.1",
  `--allow-run=${Deno.execPath()}`,
];

/** Starts viewer/serve.ts on a free port; its address and a stop function. */
async function startServer(modelDir: string) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", ...SERVE_PERMISSIONS, `${ROOT}viewer/serve.ts`, "--port", "0", modelDir],
    cwd: ROOT,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let out = "";
  const url = await withTimeout(
    (async () => {
      while (true) {
        const m = /Viewer: (http:\/\/127\.0\.0\.1:\d+\/)/.exec(out);
        if (m) return m[1];
        const { value, done } = await reader.read();
        if (done) throw new Error(`viewer/serve.ts ended: ${out}`);
        out += value;
      }
    })(),
    60_000,
    "the viewer's address",
  );
  return {
    url,
    async stop() {
      child.kill("SIGTERM");
      reader.releaseLock();
      await child.stdout.cancel().catch(() => {});
      await child.stderr.cancel().catch(() => {});
      await child.status;
    },
  };
}

/**
 * The status code of a raw request line, sent as written (no URL normalisation), with the Host
 * header a browser sends for `url` (or `host`).
 */
async function rawStatus(url: string, path: string, host = new URL(url).host): Promise<number> {
  const { port } = new URL(url);
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: Number(port) });
  try {
    const req = `GET ${path} HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`;
    await conn.write(new TextEncoder().encode(req));
    const buf = new Uint8Array(256);
    const n = await conn.read(buf);
    const line = new TextDecoder().decode(buf.subarray(0, n ?? 0)).split("\r\n")[0];
    return Number(line.split(" ")[1]);
  } finally {
    conn.close();
  }
}

Deno.test("viewer server: routes only its files and plain model file names", () => {
  assert.equal(routeFor("/")?.kind, "file");
  assert.equal(routeFor("/app.js")?.kind, "bundle");
  assert.equal(routeFor("/vendor/tfjs-backend-wasm-simd.wasm")?.kind, "file");
  assert.deepEqual(routeFor("/model/group1-shard1of7.bin"), {
    kind: "model",
    name: "group1-shard1of7.bin",
    type: "application/octet-stream",
  });
  assert.equal(routeFor("/model/model.json")?.kind, "model");
  for (
    const path of [
      "/model/%2e%2e",
      "/model/..",
      "/model/%2E%2E%2Fdeno.json",
      "/model/..%2fdeno.json",
      "/model/%2fetc%2fpasswd",
      "/model//etc/passwd",
      "/model/.env",
      "/model/%5c..%5cx",
      "/model/a%00b",
      "/model/%ZZ",
      "/vendor/../deno.json",
      "/vendor/other.wasm",
      "/viewer/serve.ts",
      "/app.ts",
      "/deno.json",
    ]
  ) {
    assert.equal(routeFor(path), null, path);
  }
});

Deno.test({
  name: "viewer: Chromium shows validate's probabilities for PNG and DICOM; no traversal",
  ignore: !hasChromium,
  sanitizeResources: false,
  async fn() {
    // The original's DenseNet-121 where ../shared has it, else the small fixture DenseNet.
    const model = seedModelPath() ?? `${FIX}torch/tiny_zip.pt`;
    const tmp = await Deno.makeTempDir({ prefix: "cxr_viewer_" });
    const exportDir = `${tmp}/model`;
    const r = await runScript(
      "export_model.ts",
      ["-s", model, "--format", "tfjs", "-o", exportDir],
      [exportDir],
    );
    assert.equal(r.code, 0, r.stderr);
    // A file name that is HTML: the page must show it as text.
    const evil = `${tmp}/<img src=x onerror="document.body.dataset.pwned=1">.png`;
    await Deno.copyFile(IMAGES[0], evil);
    const server = await startServer(exportDir);
    const { child, cdp } = launchChromium(`${tmp}/profile`);
    try {
      // Paths out of the served files, sent raw: all 404; the model's own files are served.
      assert.equal(await rawStatus(server.url, "/model/model.json"), 200);
      assert.equal(await rawStatus(server.url, "/"), 200);
      // DNS rebinding: another site's name resolved to 127.0.0.1 gets nothing.
      assert.equal(await rawStatus(server.url, "/model/model.json", "evil.example:8080"), 404);
      assert.equal(await rawStatus(server.url, "/", "evil.example"), 404);
      for (
        const path of [
          "/model/../deno.json",
          "/model/%2e%2e/deno.json",
          "/model/%2E%2E%2Fdeno.json",
          "/model/..%2fdeno.json",
          "/%2e%2e/%2e%2e/etc/passwd",
          "/../../etc/passwd",
          "/model//etc/passwd",
          "/model/%2fetc%2fpasswd",
          "//etc/passwd",
          "/model/%5c..%5cdeno.json",
          "/model/.%2e/viewer/serve.ts",
          "/vendor/../deno.json",
          "/viewer/serve.ts",
          "/app.ts",
          "/model/",
        ]
      ) {
        assert.equal(await rawStatus(server.url, path), 404, path);
      }

      const { session } = await openPage(cdp, `${server.url}?backend=wasm`, {
        width: 1200,
        height: 1400,
      });
      const waitState = async (want: (s: { state: string; n: number }) => boolean) => {
        const t0 = Date.now();
        let last = null;
        while (Date.now() - t0 < 60_000) {
          const s = await evaluate(
            cdp,
            session,
            "({state: document.body.dataset.state, n: (window.viewerResults || []).length, status: document.getElementById('status').textContent})",
          );
          if (s.state === "error") throw new Error(`viewer: ${s.status}`);
          if (want(s)) return s;
          last = s;
          await new Promise((r) => setTimeout(r, 200));
        }
        const logs = cdp.events
          .filter((e) => /consoleAPICalled|exceptionThrown|entryAdded/.test(e.method))
          .map((e) => JSON.stringify(e.params).slice(0, 300));
        throw new Error(
          `the viewer did not finish in 60 s (${JSON.stringify(last)}); page log: ${
            logs.join("\n")
          }`,
        );
      };
      await waitState((s) => s.state === "ready");
      assert.equal(await evaluate(cdp, session, "document.body.dataset.backend"), "wasm");
      const { root } = await cdp.send("DOM.getDocument", {}, session);
      const { nodeId } = await cdp.send(
        "DOM.querySelector",
        { nodeId: root.nodeId, selector: "#files" },
        session,
      );
      await cdp.send("DOM.setFileInputFiles", { nodeId, files: [...IMAGES, evil] }, session);
      await waitState((s) => s.state === "ready" && s.n === IMAGES.length + 1);
      const shown = await evaluate(cdp, session, "window.viewerResults");
      const expected = await cliPredictions(model, [...IMAGES, evil]);
      shown.forEach((rec: { name: string; probabilities: number[]; error?: string }, i: number) => {
        assert.equal(rec.error, undefined, `${rec.name}: ${rec.error}`);
        assertClose(rec.probabilities, expected[i], 1e-4, `viewer vs CLI, ${rec.name}`);
      });
      // The table's numbers are the same values, four decimals; findings marked.
      const rows = await evaluate(
        cdp,
        session,
        "[...document.querySelectorAll('article')[0].querySelectorAll('tbody tr')].map(r => [r.dataset.probability, r.className, r.cells[1].textContent])",
      );
      rows.forEach(([p, cls, text]: [string, string, string], c: number) => {
        assert.equal(Number(p), shown[0].probabilities[c]);
        assert.equal(text, shown[0].probabilities[c].toFixed(4));
        assert.equal(cls === "finding", shown[0].findings.includes(LABELS[c]));
      });
      // The HTML file name: shown literally, nothing injected.
      const names = await evaluate(
        cdp,
        session,
        "[...document.querySelectorAll('article h2')].map(h => h.textContent)",
      );
      assert.equal(names[3], evil.split("/").pop());
      assert.equal(
        await evaluate(cdp, session, "document.querySelectorAll('article img').length"),
        0,
      );
      assert.equal(await evaluate(cdp, session, "document.body.dataset.pwned"), undefined);
      // A CAM was drawn: the canvas is not blank.
      const painted = await evaluate(
        cdp,
        session,
        "(() => { const c = document.querySelector('article canvas'); const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let s = 0; for (let i = 0; i < d.length; i += 4) s += d[i] + d[i + 1] + d[i + 2]; return s; })()",
      );
      assert.ok(painted > 0, "the picture canvas is empty");
      const shot = Deno.env.get("VIEWER_SCREENSHOT");
      if (shot) await screenshot(cdp, session, shot, true);
    } finally {
      await closeChromium(child, cdp);
      await server.stop();
      await Deno.remove(tmp, { recursive: true });
    }
  },
});
