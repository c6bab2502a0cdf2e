/**
 * The test task's environment keeps the suite's output clean (issue 15 friction 6): Vulkan's
 * Wayland probe prints "XDG_RUNTIME_DIR is invalid or not set" for every WebGPU adapter
 * request on a headless machine; `deno task test` sets XDG_RUNTIME_DIR so the tests that ask
 * for an adapter directly stay quiet.
 */
import assert from "node:assert/strict";

const config = JSON.parse(await Deno.readTextFile(new URL("../deno.json", import.meta.url)));
const env = Object.fromEntries(
  [...(config.tasks.test as string).matchAll(/(?:^|\s)([A-Z_]+)=(\S+)/g)].map((m) => [m[1], m[2]]),
);

async function adapterStderr(extra: Record<string, string>): Promise<string> {
  const clean = { ...Deno.env.toObject() };
  delete clean.XDG_RUNTIME_DIR;
  delete clean.WAYLAND_DISPLAY;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "await navigator.gpu?.requestAdapter().catch(() => null)"],
    env: { ...clean, ...extra },
    clearEnv: true,
    stdout: "null",
    stderr: "piped",
  }).output();
  return new TextDecoder().decode(out.stderr);
}

Deno.test("deno task test sets XDG_RUNTIME_DIR: no Wayland probe errors from adapter requests", async () => {
  assert.ok(env.XDG_RUNTIME_DIR, "the test task sets XDG_RUNTIME_DIR");
  const bare = await adapterStderr({});
  if (!bare.includes("XDG_RUNTIME_DIR")) {
    console.log(
      "this machine's Vulkan loader prints nothing without XDG_RUNTIME_DIR; checked the task only",
    );
    return;
  }
  assert.equal(await adapterStderr(env), "");
});
