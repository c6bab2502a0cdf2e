import assert from "node:assert/strict";
import {
  downloadWeights,
  hashPrefixOf,
  imagenetWeightsPath,
  weightsCacheDir,
} from "../lib/model/pretrained_weights.ts";
import { UserError } from "../lib/util/errors.ts";

const fixture = await Deno.readFile(new URL("./fixtures/torch/tiny_zip.pt", import.meta.url));
const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", fixture));
const prefix = [...digest.slice(0, 4)].map((b) => b.toString(16).padStart(2, "0")).join("");

/** Serves `body` on a loopback port for the duration of `fn`. */
async function withServer(body: Uint8Array, fn: (url: string) => Promise<void>) {
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    () => new Response(body as Uint8Array<ArrayBuffer>),
  );
  try {
    await fn(`http://127.0.0.1:${server.addr.port}/densenet121-${prefix}.pth`);
  } finally {
    await server.shutdown();
  }
}

Deno.test("weightsCacheDir and hashPrefixOf follow XDG and torchvision's naming", () => {
  const env = (m: Record<string, string>) => (k: string) => m[k];
  assert.equal(weightsCacheDir(env({ XDG_CACHE_HOME: "/x" })), "/x/augmented-chest-xray");
  assert.equal(weightsCacheDir(env({ HOME: "/h" })), "/h/.cache/augmented-chest-xray");
  assert.equal(hashPrefixOf("densenet121-a639ec97.pth"), "a639ec97");
  assert.equal(hashPrefixOf("model.pt"), null);
});

Deno.test("downloadWeights verifies the hash prefix and writes atomically", async () => {
  const dir = await Deno.makeTempDir();
  await withServer(fixture, async (url) => {
    await downloadWeights(url, `${dir}/ok.pth`, prefix, { silent: true });
    assert.deepEqual(await Deno.readFile(`${dir}/ok.pth`), fixture);
    await assert.rejects(
      () => downloadWeights(url, `${dir}/bad.pth`, "00000000", { silent: true }),
      /corrupt/,
    );
  });
  assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["ok.pth"]);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("imagenetWeightsPath without network says where to put the file", async () => {
  const dir = await Deno.makeTempDir();
  const saved = [Deno.env.get("XDG_CACHE_HOME"), Deno.env.get("TORCH_HOME")];
  Deno.env.set("XDG_CACHE_HOME", dir);
  Deno.env.set("TORCH_HOME", `${dir}/torch`);
  try {
    // Port 9 on loopback: connection refused at once, like a machine without network.
    const err = await imagenetWeightsPath({ url: "http://127.0.0.1:9/x.pth", silent: true })
      .then(() => null, (e) => e);
    assert.ok(err instanceof UserError, String(err));
    assert.match(err.message, /cannot download ImageNet weights.*augmented-chest-xray/);
    await Deno.mkdir(`${dir}/augmented-chest-xray`);
    await Deno.writeFile(`${dir}/augmented-chest-xray/densenet121-a639ec97.pth`, fixture);
    assert.equal(
      await imagenetWeightsPath({ url: "http://127.0.0.1:9/x.pth" }),
      `${dir}/augmented-chest-xray/densenet121-a639ec97.pth`,
    );
  } finally {
    ["XDG_CACHE_HOME", "TORCH_HOME"].forEach((name, i) =>
      saved[i] === undefined ? Deno.env.delete(name) : Deno.env.set(name, saved[i]!)
    );
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("downloadWeights: a cache it may not write is a one-line UserError", async () => {
  const dir = await Deno.makeTempDir();
  const lib = new URL("../lib/model/pretrained_weights.ts", import.meta.url).href;
  await Deno.writeTextFile(
    `${dir}/probe.ts`,
    `import { downloadWeights } from "${lib}";\n` +
      `try { await downloadWeights(Deno.args[0], "${dir}/denied/w.pth", null, { silent: true }); }\n` +
      `catch (e) { console.log(e.name + ": " + e.message); }\n`,
  );
  await withServer(fixture, async (url) => {
    // Writes are allowed elsewhere only: saving the weights is refused by Deno's permissions.
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--allow-read",
        "--allow-net=127.0.0.1",
        "--allow-write=/nonexistent",
        `${dir}/probe.ts`,
        url,
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(out.stdout);
    assert.match(text, /^UserError: cannot save the downloaded weights to .*denied\/w\.pth/);
  });
  await Deno.remove(dir, { recursive: true });
});
