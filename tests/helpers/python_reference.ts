/**
 * Running the committed reference script tests/fixtures/intervals/make_intervals.py on inputs a
 * test hands it (scikit-learn / numpy), where a Python with scikit-learn 1.2 is installed.
 * @module
 */

const SCRIPT = new URL("../fixtures/intervals/make_intervals.py", import.meta.url).pathname;

/** A Python interpreter that imports scikit-learn 1.2 and numpy, or null. */
export async function findPythonWithSklearn(): Promise<string | null> {
  for (const python of ["/usr/bin/python3", "python3"]) {
    try {
      const out = await new Deno.Command(python, {
        args: ["-c", "import numpy, sklearn; assert sklearn.__version__.startswith('1.2')"],
        stdout: "null",
        stderr: "null",
      }).output();
      if (out.success) return python;
    } catch {
      // not installed under this name
    }
  }
  return null;
}

/** Runs python code given on the command line with JSON on a temp file; returns its stdout. */
export async function runPython(python: string, args: string[]): Promise<string> {
  const out = await new Deno.Command(python, { args, stdout: "piped", stderr: "piped" }).output();
  const dec = new TextDecoder();
  if (!out.success) throw new Error(`${python} ${args.join(" ")}: ${dec.decode(out.stderr)}`);
  return dec.decode(out.stdout);
}

/**
 * The script's references (`bootstrap`, `ece`, `delong`) for `input`: `labels`, `scores_a`,
 * optional `scores_b` and `thresholds`, `unit_of`, `draws`, `ci`.
 */
// deno-lint-ignore no-explicit-any
export async function runIntervalReference(python: string, input: unknown): Promise<any> {
  const dir = await Deno.makeTempDir({ prefix: "cxr_ref_" });
  try {
    await Deno.writeTextFile(`${dir}/in.json`, JSON.stringify(input));
    await runPython(python, [SCRIPT, "--check", `${dir}/in.json`, `${dir}/out.json`]);
    return JSON.parse(await Deno.readTextFile(`${dir}/out.json`));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** The original tool's Youden thresholds (sklearn `roc_curve`) of `labels` and float32 `scores`. */
export async function runYoudenReference(
  python: string,
  labels: number[][],
  scores: number[][],
): Promise<number[]> {
  const dir = await Deno.makeTempDir({ prefix: "cxr_ref_" });
  try {
    await Deno.writeTextFile(`${dir}/in.json`, JSON.stringify({ labels, scores }));
    await runPython(python, [SCRIPT, "--youden", `${dir}/in.json`, `${dir}/out.json`]);
    return JSON.parse(await Deno.readTextFile(`${dir}/out.json`));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
