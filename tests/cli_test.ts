import { assertEquals, assertThrows } from "./assert.ts";
import { helpText, parseFlags } from "../lib/util/cli.ts";
import { UserError } from "../lib/util/errors.ts";

const SPECS = {
  batch_size: { kind: "int", short: "b", default: 8, help: "batch size", min: 1 },
  learning_rate: { kind: "float", short: "l", default: 0.001, help: "learning rate", min: 0 },
  augmentation: { kind: "boolean", short: "a", default: false, help: "augment" },
  backend: { kind: "string", default: "auto", help: "backend", choices: ["auto", "cpu"] },
  saved_model: { kind: "string", short: "s", default: null, help: "model", metavar: "PATH" },
  images: { kind: "list", help: "images", metavar: "FILE" },
} as const;

const parse = (args: string[]) => parseFlags(args, SPECS, "x.ts [options]", "test");

Deno.test("parseFlags: defaults, short and long forms, leading -- from deno task", () => {
  const d = parse([]);
  assertEquals([d.batch_size, d.learning_rate, d.augmentation, d.backend, d.saved_model], [
    8,
    0.001,
    false,
    "auto",
    null,
  ]);
  const f = parse(["--", "-b", "16", "-a", "--learning_rate=0.01", "-s", "m.pt"]);
  assertEquals([f.batch_size, f.learning_rate, f.augmentation, f.saved_model], [
    16,
    0.01,
    true,
    "m.pt",
  ]);
  assertEquals(parse(["--images", "a.png", "--images", "b.png"]).images, ["a.png", "b.png"]);
  // A task with options of its own (`bench: ... bench.ts --batch 12`) run as `deno task bench --
  // --batch 16`: the user's option comes after the `--` and wins.
  assertEquals(parse(["-b", "12", "--", "-b", "16"]).batch_size, 16);
  // argparse's `-b=16` (node's parser alone would read "=16").
  assertEquals(parse(["-b=16"]).batch_size, 16);
  assertEquals(parse(["--batch_size=16"]).batch_size, 16);
});

Deno.test("parseFlags: unknown flags and bad values are usage errors naming the flag", () => {
  const cases: [string[], RegExp][] = [
    [["--bogus"], /bogus/],
    [["-b", "x"], /--batch_size.*'x'.*integer/],
    [["-b", "1.5"], /--batch_size/],
    [["-b", "0"], /--batch_size.*must be ≥ 1/],
    [["-b", "-3"], /--batch_size: -3 \(must be ≥ 1\)/],
    [["-b=-3"], /--batch_size: -3 \(must be ≥ 1\)/],
    [["-b=4x"], /--batch_size: '4x'/],
    [["--backend", "tpu"], /--backend.*'tpu'.*auto, cpu/],
  ];
  for (const [args, pattern] of cases) {
    const err = assertThrows(() => parse(args), UserError) as UserError;
    assertEquals(err.exitCode, 2);
    if (!pattern.test(err.message)) throw new Error(`${err.message} !~ ${pattern}`);
  }
});

Deno.test("helpText lists every flag with its default", () => {
  const text = helpText("x.ts [options]", "test", SPECS);
  for (const line of ["-b, --batch_size INT", "(default: 8)", "--saved_model PATH", "{auto,cpu}"]) {
    if (!text.includes(line)) throw new Error(`help misses '${line}':\n${text}`);
  }
});
