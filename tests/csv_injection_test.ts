/**
 * Issue 25, class 2: `--predictions` writes shard keys through the project's one CSV writer, so
 * formula cells arrive as text and a quote, comma or newline in a name neither shifts the
 * probabilities nor splits the row. Runs the real validate_model.ts on a shard whose keys are
 * hostile (the fixture's 50 real images, renamed) and reads the CSV back.
 * @module
 */
import assert from "node:assert/strict";
import { LABELS } from "../config.ts";
import { parseCsv, readCell } from "../lib/util/csv.ts";
import { hostileDataset } from "./helpers/hostile_shard.ts";
import { runScript } from "./helpers/scripts.ts";

const TINY = new URL("./fixtures/torch/tiny_zip.pt", import.meta.url).pathname;

Deno.test("class 2: --predictions keeps hostile shard keys as one text field each", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cxr_csv_" });
  try {
    const keys = await hostileDataset(dir);
    const out = `${dir}/p.csv`;
    const r = await runScript("validate_model.ts", [
      "-s",
      TINY,
      "--image_size",
      "48",
      "--backend",
      "wasm",
      "-b",
      "25",
      "--dataset_dir",
      dir,
      "--predictions",
      out,
    ], [dir]);
    assert.equal(r.code, 0, r.stderr);
    const text = await Deno.readTextFile(out);
    const rows = parseCsv(text);
    assert.deepEqual(rows[0], ["Image Index", ...LABELS]);
    assert.equal(rows.length, 51, "one row per image: a newline in a name does not split it");
    for (const row of rows.slice(1)) {
      assert.equal(row.length, 15, JSON.stringify(row));
      // No cell a spreadsheet would run: text cells start with a quote mark instead.
      assert.ok(!/^[=+\-@\t\r]/.test(row[0]), row[0]);
      for (const p of row.slice(1)) assert.ok(Number(p) >= 0 && Number(p) <= 1, p);
    }
    assert.deepEqual(rows.slice(1).map((row) => readCell(row[0])), keys.map((k) => `${k}.png`));
    assert.equal(rows[1][0], `'=HYPERLINK("http://evil/x","click").png`);
    assert.equal(rows[5][0], 'a"b,c.png');
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
