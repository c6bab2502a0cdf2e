/**
 * A test shard whose first keys are hostile to CSV readers (issue 25, class 2): the fixture's 50
 * real samples, renamed. Run as a script it writes one: `deno run -A tests/helpers/hostile_shard.ts DIR`.
 * @module
 */
import { readShard, shardPattern, ShardWriter } from "../../lib/data/webdataset.ts";
import { FIXTURE_SHARD } from "./original_data.ts";
import { collect } from "./scripts.ts";

/** Keys a hostile shard can carry (no dots: a WebDataset key ends at the first one). */
export const HOSTILE_KEYS = [
  '=HYPERLINK("http://evil/x","click")',
  "+1+1",
  "-2+3",
  "@SUM(1)",
  'a"b,c',
  "new\nline",
];

/** A test shard of the fixture's samples, the first ones renamed to `HOSTILE_KEYS`. */
export async function hostileDataset(dir: string): Promise<string[]> {
  const samples = await collect(readShard(FIXTURE_SHARD));
  const writer = new ShardWriter(shardPattern(dir, "test"), 1000);
  const keys = samples.map((s, i) => HOSTILE_KEYS[i] ?? s.key);
  for (const [i, s] of samples.entries()) {
    await writer.write({ key: keys[i], png: s.png, labels: s.labels });
  }
  await writer.close();
  return keys;
}

if (import.meta.main) await hostileDataset(Deno.args[0]);
