/**
 * Shards built from the fixture shard for tests that need more than one distinct shard: the same
 * 50 real images and labels under new keys (a suffix), written with the project's ShardWriter.
 * @module
 */
import { readShard, ShardWriter } from "../../lib/data/webdataset.ts";
import { FIXTURE_SHARD } from "./original_data.ts";

/**
 * Writes the fixture shard's samples to `path` with `suffix` appended to every key; with
 * `labels`, each sample gets these labels instead of its own.
 */
export async function fixtureShardRenamed(
  path: string,
  suffix: string,
  labels?: ArrayLike<number>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "cxr_renamed_" });
  const writer = new ShardWriter(`${dir}/shard_%03d.tar`, 1000);
  for await (const s of readShard(FIXTURE_SHARD)) {
    await writer.write({ key: `${s.key}${suffix}`, png: s.png, labels: labels ?? s.labels });
  }
  const [written] = await writer.close();
  await Deno.rename(written, path);
  await Deno.remove(dir, { recursive: true });
}
