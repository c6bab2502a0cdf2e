import assert from "node:assert/strict";
import {
  newestSavedModel,
  newestUnfinishedRun,
  resolveSavedModel,
  runPaths,
  runPathsOf,
  runStamp,
} from "../lib/util/saved_models.ts";
import { UserError } from "../lib/util/errors.ts";

Deno.test("runStamp and runPaths follow the original tool's naming", () => {
  assert.equal(runStamp(new Date(2022, 2, 19, 9, 5, 7)), "2022_0319_090507");
  const p = runPaths("data/saved_models", "2022_0319_090507", true);
  assert.equal(p.model, "data/saved_models/2022_0319_090507_debug_model.pt");
  assert.equal(p.results, "data/saved_models/2022_0319_090507_debug_results.json");
});

Deno.test("newestSavedModel picks the newest *_model.pt; resolveSavedModel looks in save_dir", async () => {
  const dir = await Deno.makeTempDir();
  await assert.rejects(() => newestSavedModel(dir), UserError);
  await assert.rejects(() => newestSavedModel(`${dir}/missing`), /no saved model/);
  await Deno.writeTextFile(`${dir}/a_model.pt`, "a");
  await Deno.writeTextFile(`${dir}/b_model.pt`, "b");
  await Deno.writeTextFile(`${dir}/c_results.json`, "{}");
  await Deno.utime(`${dir}/a_model.pt`, new Date(2030, 0, 1), new Date(2030, 0, 1));
  assert.equal(await newestSavedModel(dir), `${dir}/a_model.pt`);
  assert.equal(await resolveSavedModel("b_model.pt", dir), `${dir}/b_model.pt`);
  await assert.rejects(() => resolveSavedModel("zzz.pt", dir), /saved model not found: zzz.pt/);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("runPathsOf maps any run file to the run; newestUnfinishedRun skips complete runs", async () => {
  const p = runPathsOf("/d/2022_0319_090507_2_debug_results.json");
  assert.equal(p.stamp, "2022_0319_090507_2");
  assert.equal(p.last, "/d/2022_0319_090507_2_debug_last.pt");
  assert.equal(p.lock, "/d/.2022_0319_090507_2_debug.lock");
  assert.throws(() => runPathsOf("/d/model.pth"), /not a training run's file/);

  const dir = await Deno.makeTempDir();
  const run = (stamp: string, status: string | null, year: number) => {
    const paths = runPaths(dir, stamp, false);
    Deno.writeTextFileSync(paths.last, "x");
    if (status) Deno.writeTextFileSync(paths.results, JSON.stringify({ status }));
    Deno.utimeSync(paths.last, new Date(year, 0, 1), new Date(year, 0, 1));
    return paths;
  };
  run("a", "interrupted", 2020);
  const b = run("b", "running", 2021);
  run("c", "complete", 2022);
  assert.equal(await newestUnfinishedRun(dir), b.last);
  run("d", null, 2023); // killed before its results were written
  assert.equal(await newestUnfinishedRun(dir), `${dir}/d_last.pt`);
  await Deno.remove(dir, { recursive: true });
  await assert.rejects(() => newestUnfinishedRun(dir), /no unfinished run in/);
});
