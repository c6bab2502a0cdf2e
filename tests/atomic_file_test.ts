import assert from "node:assert/strict";
import { exists, tempPathFor, writeFileAtomic } from "../lib/util/atomic_file.ts";

Deno.test("writeFileAtomic writes through a temp name and leaves no temp file", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/out.json`;
  await writeFileAtomic(path, "first");
  await writeFileAtomic(path, new TextEncoder().encode("second"));
  assert.equal(await Deno.readTextFile(path), "second");
  assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["out.json"]);
  assert.ok(tempPathFor(path).startsWith(`${dir}/.out.json.`));
  assert.equal(await exists(`${dir}/missing`), false);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("writeFileAtomic keeps the old file when the write fails", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/keep.txt`;
  await writeFileAtomic(path, "old");
  await Deno.mkdir(tempPathFor(path)); // a directory in the way makes the temp write fail
  await assert.rejects(() => writeFileAtomic(path, "new"));
  assert.equal(await Deno.readTextFile(path), "old");
  await Deno.remove(dir, { recursive: true });
});
