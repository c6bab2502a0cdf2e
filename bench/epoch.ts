/**
 * End-to-end comparison with the original tool's PyTorch work on real shards: one
 * `train_model.ts` epoch against a PyTorch epoch over the same images (decode, resize, batch,
 * train; then the validation pass), and `validate_model.ts` over the test shards against
 * PyTorch's decode + resize + forward (`bench/torch_epoch.py`, Debian's /usr/bin/python3).
 * Same batch, decoding workers, threads and precision on both sides (`--precision bf16`: ours
 * rounds what the convolutions read to bfloat16, PyTorch runs channels_last with its forward
 * under bfloat16 autocast). The shards are copies of the fixture shard (50 NIH images each);
 * random initial weights on both sides. Prints one JSON object on stdout; progress on stderr.
 *
 *     deno run --allow-read --allow-write --allow-env --allow-ffi --allow-run --allow-sys \
 *       bench/epoch.ts [--copies 4] [--batch 16] [--workers 2] [--threads 2] [--backend native] \
 *       [--precision f32|bf16]
 * @module
 */

import { fileURLToPath } from "node:url";
import { parseFlags } from "../lib/util/cli.ts";
import { BACKENDS, PRECISIONS } from "../lib/backends/backend.ts";
import { runMain, UserError } from "../lib/util/errors.ts";
import { readShard, type Sample, shardPattern, ShardWriter } from "../lib/data/webdataset.ts";

const SPECS = {
  copies: {
    kind: "int",
    default: 4,
    min: 1,
    help: "copies of the 50-image fixture shard per subset",
  },
  batch: { kind: "int", default: 16, min: 1, help: "batch size (both sides)" },
  workers: { kind: "int", default: 2, min: 1, help: "image decoding workers (both sides)" },
  threads: { kind: "int", default: 2, min: 1, help: "compute threads (both sides)" },
  backend: { kind: "string", default: "native", choices: BACKENDS, help: "our backend" },
  precision: {
    kind: "string",
    default: "f32",
    choices: PRECISIONS,
    help: "both sides: ours' --precision (bf16: native backend); PyTorch's bf16 is autocast + " +
      "channels_last",
  },
  "skip-torch": { kind: "boolean", default: false, help: "only our side" },
  shard: {
    kind: "string",
    default: fileURLToPath(
      new URL("../../shared/fixtures/nih_subset/ChestXray14_val_002.tar", import.meta.url),
    ),
    help: "the shard to copy",
  },
} as const;

const PYTHON = "/usr/bin/python3";
const ROOT = fileURLToPath(new URL("..", import.meta.url));
const log = (line: string) => console.error(line);

/** Wall seconds and stdout of a command run to completion (stderr passed through). */
async function timed(cmd: string, args: string[]): Promise<{ seconds: number; stdout: string }> {
  const t0 = performance.now();
  const out = await new Deno.Command(cmd, { args, cwd: ROOT, stderr: "inherit" }).output();
  const seconds = (performance.now() - t0) / 1000;
  if (!out.success) {
    throw new Error(`${cmd} ${args.slice(0, 3).join(" ")} … failed (exit ${out.code})`);
  }
  return { seconds, stdout: new TextDecoder().decode(out.stdout) };
}

const round = (v: number, digits = 3) => Number(v.toFixed(digits));

async function main(argv: string[]) {
  const usage = "deno run -A bench/epoch.ts";
  const flags = parseFlags(argv, SPECS, usage, "End-to-end epoch benchmark against PyTorch.");
  try {
    Deno.statSync(flags.shard);
  } catch {
    throw new UserError(`shard ${flags.shard} not found: pass --shard PATH to a WebDataset .tar`);
  }
  const dir = await Deno.makeTempDir({ prefix: "cxr_epoch_" });
  try {
    const data = `${dir}/datasets`;
    const save = `${dir}/saved_models`;
    await Deno.mkdir(data);
    const shards: Record<string, string[]> = { train: [], val: [], test: [] };
    for (const subset of Object.keys(shards)) {
      shards[subset] = await writeCopies(
        flags.shard,
        shardPattern(data, subset),
        subset === "val" ? 1 : flags.copies,
      );
    }
    const common = [
      ...["-b", `${flags.batch}`, "-w", `${flags.workers}`, "--threads", `${flags.threads}`],
      ...["--backend", flags.backend, "--dataset_dir", data, "--save_dir", save],
      ...["--precision", flags.precision],
    ];
    const perms = [
      "--allow-read",
      "--allow-env",
      "--allow-ffi",
      "--allow-sys",
      `--allow-write=${dir}`,
    ];
    log(`ours: train_model.ts, 1 epoch over ${shards.train.length * 50} images`);
    const train = await timed(Deno.execPath(), [
      "run",
      ...perms,
      "train_model.ts",
      ...common,
      ...["-e", "1", "--weights", "none"],
    ]);
    const results = [...Deno.readDirSync(save)].find((e) => e.name.endsWith("_results.json"))!;
    const epoch = JSON.parse(Deno.readTextFileSync(`${save}/${results.name}`)).epochs[0];
    const model = `${save}/${results.name.replace(/_results\.json$/, "_model.pt")}`;
    log(`ours: validate_model.ts over ${shards.test.length * 50} images`);
    const validate = await timed(Deno.execPath(), [
      "run",
      ...perms,
      "validate_model.ts",
      ...common,
      ...["-s", model],
    ]);
    const ours = {
      train_images_per_s: round(epoch.train_images_per_s),
      epoch_seconds: round(epoch.seconds),
      train_process_seconds: round(train.seconds),
      validate_images: shards.test.length * 50,
      validate_process_seconds: round(validate.seconds),
    };
    const out: Record<string, unknown> = {
      backend: flags.backend,
      precision: flags.precision,
      batch: flags.batch,
      workers: flags.workers,
      threads: flags.threads,
      train_images: shards.train.length * 50,
      load_average: Deno.loadavg()[0],
      ours,
    };
    if (!flags["skip-torch"]) {
      const script = fileURLToPath(new URL("./torch_epoch.py", import.meta.url));
      const sides = ["--batch", `${flags.batch}`, "--workers", `${flags.workers}`];
      sides.push("--threads", `${flags.threads}`, "--precision", flags.precision);
      log("torch: one epoch (train + validation)");
      const tTrain = await timed(PYTHON, [
        script,
        "train",
        "--shards",
        ...shards.train,
        "--val",
        ...shards.val,
        ...sides,
      ]);
      log("torch: evaluation pass over the test shards");
      const tVal = await timed(PYTHON, [script, "validate", "--shards", ...shards.test, ...sides]);
      const t = JSON.parse(tTrain.stdout.trim().split("\n").pop()!);
      const v = JSON.parse(tVal.stdout.trim().split("\n").pop()!);
      out.torch = {
        train_images_per_s: round(t.images_per_s),
        epoch_seconds: round(t.seconds + t.val_seconds),
        train_process_seconds: round(tTrain.seconds),
        validate_process_seconds: round(tVal.seconds),
        validate_images_per_s: round(v.images_per_s),
      };
      out.ratio = {
        train_epoch_images_per_s: round(ours.train_images_per_s / t.images_per_s),
        epoch_seconds: round((t.seconds + t.val_seconds) / ours.epoch_seconds),
        validate_end_to_end: round(tVal.seconds / ours.validate_process_seconds),
      };
    }
    console.log(JSON.stringify(out, null, 2));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/**
 * `copies` copies of the shard at `from`, one shard each: copy i > 0 renames every sample's key
 * `KEY_copyI` (same patient prefix), since a subset may hold each image once.
 */
async function writeCopies(from: string, pattern: string, copies: number): Promise<string[]> {
  const samples: Sample[] = [];
  for await (const sample of readShard(from)) samples.push(sample);
  const writer = new ShardWriter(pattern, samples.length);
  for (let i = 0; i < copies; i++) {
    for (const { key, png, labels } of samples) {
      await writer.write({ key: i === 0 ? key : `${key}_copy${i}`, png, labels });
    }
  }
  return await writer.close();
}

if (import.meta.main) runMain(() => main(Deno.args));
