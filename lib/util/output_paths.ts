/**
 * Output paths checked before any compute: every file or directory a run will write
 * (`--save_dir`, `--json`, `--predictions`, `--report`, `--cam_dir`, …) must be writable
 * before the first image is decoded, so that no output fails after an hour of evaluation.
 *
 * The tasks grant write access to `data/` only (the narrowest grant that serves the default
 * paths). For a path outside it, Deno's permission API is asked first: on a terminal
 * `Deno.permissions.request` prompts for the output's directory (never a temp file); without
 * one, or when refused, the run stops with the exact command that grants that directory too.
 * Then a probe file is created in the directory and removed, which catches what permissions
 * cannot (a read-only disk, a file where a directory should be, OS permissions).
 *
 * Before all that, no output may be a file the run reads (`--json` naming the checkpoint,
 * `--predictions` naming a shard, `--report` naming an image): each existing output is compared
 * with every input by its real path (links resolved) and by device and inode (hard links), and
 * two outputs may not name one file.
 * @module
 */
import { ensureDir } from "./atomic_file.ts";
import { UserError } from "./errors.ts";
import { shown } from "./shown.ts";

/** One output a run will write. */
export interface OutputPath {
  /** The flag that names it, e.g. `--json` (shown in messages). */
  flag: string;
  /** As the user gave it (null/undefined: not requested, skipped). */
  path: string | null | undefined;
  /** A file (written beside itself: temp name + rename) or a directory the run fills. */
  kind: "file" | "dir";
}

/** A file the run reads: it may not also be an output. */
export interface InputPath {
  /** What it is, for messages, e.g. `the model (-s)`. */
  what: string;
  path: string;
}

/** A file's identity: real path and device/inode; null when it does not exist. */
async function identity(path: string): Promise<{ real: string; dev: number; ino: number } | null> {
  try {
    const info = await Deno.stat(path);
    return { real: await Deno.realPath(path), dev: info.dev, ino: info.ino ?? -1 };
  } catch {
    return null;
  }
}

/** The real path an output will have (its directory resolved), for comparing two outputs. */
async function resolvedOutput(path: string): Promise<string> {
  const found = await identity(path);
  if (found) return found.real;
  const slash = path.lastIndexOf("/");
  const dir = slash < 0 ? "." : slash === 0 ? "/" : path.slice(0, slash);
  const real = await Deno.realPath(dir).catch(() => absolute(dir));
  return `${real}/${path.slice(slash + 1)}`;
}

/**
 * Refuses (exit code 2) an output file that is one of `inputs`, or two outputs that name one
 * file: either would be overwritten by the run. Called by `checkOutputPaths`; no compute runs
 * before it.
 */
export async function checkOutputsAreNotInputs(
  outputs: readonly OutputPath[],
  inputs: readonly InputPath[],
): Promise<void> {
  const files = outputs.filter((o): o is OutputPath & { path: string } =>
    !!o.path && o.kind === "file"
  );
  const ids = await Promise.all(inputs.map(async (i) => ({ ...i, id: await identity(i.path) })));
  for (const out of files) {
    const id = await identity(out.path);
    if (id === null) continue;
    const hit = ids.find((i) =>
      i.id !== null && (i.id.real === id.real || (i.id.dev === id.dev && i.id.ino === id.ino))
    );
    if (hit) {
      throw new UserError(
        `${out.flag} ${shown(out.path)} would overwrite an input of this run: ${hit.what}, ` +
          `${shown(hit.path)}; choose another path`,
        2,
      );
    }
  }
  const seen = new Map<string, OutputPath & { path: string }>();
  for (const out of files) {
    const real = await resolvedOutput(out.path);
    const other = seen.get(real);
    if (other) {
      throw new UserError(
        `${other.flag} and ${out.flag} both name ${shown(out.path)}: one would overwrite the ` +
          `other; give each its own path`,
        2,
      );
    }
    seen.set(real, out);
  }
}

/** The directory that must be writable for `out`: the file's parent, or the directory. */
export function outputDir(out: { path: string; kind: "file" | "dir" }): string {
  if (out.kind === "dir") return out.path.replace(/\/+$/, "") || "/";
  const slash = out.path.lastIndexOf("/");
  return slash < 0 ? "." : slash === 0 ? "/" : out.path.slice(0, slash);
}

function absolute(path: string): string {
  if (path.startsWith("/")) return path;
  const cwd = Deno.cwd();
  const joined = path === "." ? cwd : `${cwd}/${path.replace(/^\.\//, "")}`;
  return joined.replace(/\/+$/, "") || "/";
}

/** POSIX shell quoting, only where needed. */
export function shellQuote(arg: string): string {
  return /^[A-Za-z0-9_./=,:@%+-]+$/.test(arg) ? arg : `'${arg.replaceAll("'", `'\\''`)}'`;
}

/** The name of the running entry script, e.g. `validate_model.ts`. */
function scriptName(): string {
  return decodeURIComponent(new URL(Deno.mainModule).pathname.split("/").pop() ?? "");
}

/**
 * The command that runs `script` with `args` and write access to `extraDirs` as well: the
 * script's deno.json task with its `--allow-write` list extended (prefixed with `cd ROOT &&`
 * when the user started the task elsewhere), or, without deno.json, a plain `deno run` line.
 */
export async function commandWithWriteAccess(
  script: string,
  args: readonly string[],
  extraDirs: readonly string[],
): Promise<string> {
  const root = new URL("../../", import.meta.url);
  let task: string | undefined;
  try {
    const config = JSON.parse(await Deno.readTextFile(new URL("deno.json", root)));
    task = Object.values(config.tasks ?? {}).find((t): t is string =>
      typeof t === "string" && t.startsWith("deno run ") && t.split(/\s+/).includes(script)
    );
  } catch { /* no deno.json (compiled binary): fall through */ }
  const argv = args.filter((a) => a !== "--"); // as parseFlags reads them
  const tail = argv.map(shellQuote).join(" ");
  const extra = extraDirs.map(shellQuote).join(",");
  if (task === undefined) {
    const perms = "--allow-read --allow-env --allow-ffi --allow-sys";
    return `deno run ${perms} --allow-write=${extra} ${script}${tail ? " " + tail : ""}`;
  }
  const all = task.split(/\s+/);
  const words = all.slice(0, all.indexOf(script) + 1);
  const rootPath = decodeURIComponent(root.pathname).replace(/\/$/, "");
  const cwd = Deno.cwd().replace(/\/$/, "");
  // The task's own paths (data, the script) are relative to the repository root: run from it
  // (a task's relative arguments were resolved there too), or, for a script started elsewhere
  // with deno run, name them absolutely so the user's relative arguments keep their meaning.
  const fromElsewhere = cwd !== rootPath;
  const rooted = (p: string) =>
    fromElsewhere && !p.startsWith("/") && !p.startsWith("$") ? `${rootPath}/${p}` : p;
  words[words.length - 1] = rooted(script);
  const i = words.findIndex((w) => w.startsWith("--allow-write"));
  if (i < 0) words.splice(2, 0, `--allow-write=${extra}`);
  else if (words[i] !== "--allow-write") {
    const granted = words[i].slice("--allow-write=".length).split(",").map(rooted);
    words[i] = `--allow-write=${[...granted, extra].join(",")}`;
  }
  const started = (Deno.env.get("INIT_CWD") ?? cwd).replace(/\/$/, "");
  const cd = !fromElsewhere && started !== rootPath ? `cd ${shellQuote(rootPath)} && ` : "";
  return `${cd}${words.join(" ")}${tail ? " " + tail : ""}`;
}

async function isDirectory(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isDirectory;
  } catch {
    return false;
  }
}

/** Why a probe write failed, without the probe's own name. */
function reason(e: unknown): string {
  if (e instanceof Deno.errors.PermissionDenied) return "permission denied";
  if (e instanceof Deno.errors.AlreadyExists) return "a file is in the way";
  const msg = e instanceof Error ? e.message : String(e);
  return msg.replace(/[,:] (open|mkdir|remove|stat)? ?'[^']*'.*$/, "").trim();
}

/**
 * Checks that every requested output can be written, before any compute: refuses an output
 * that is one of `opts.inputs` (see `checkOutputsAreNotInputs`), asks for the write
 * permission of each output's directory (prompting on a terminal), creates missing
 * directories, and creates and removes a probe file in each. Throws one UserError line naming
 * the flag, the path and what to do (for a missing permission: the exact command that works).
 */
export async function checkOutputPaths(
  outputs: readonly OutputPath[],
  opts: { args?: readonly string[]; script?: string; inputs?: readonly InputPath[] } = {},
): Promise<void> {
  await checkOutputsAreNotInputs(outputs, opts.inputs ?? []);
  const wanted = outputs.filter((o): o is OutputPath & { path: string } => !!o.path);
  const denied: Array<OutputPath & { path: string; dir: string }> = [];
  for (const out of wanted) {
    if (out.kind === "file" && await isDirectory(out.path)) {
      throw new UserError(
        `cannot write ${out.flag} ${out.path}: it is a directory; give a file name`,
      );
    }
    const dir = outputDir(out);
    const desc = { name: "write", path: dir } as const;
    let state = (await Deno.permissions.query(desc)).state;
    if (state === "prompt") state = (await Deno.permissions.request(desc)).state;
    if (state !== "granted") denied.push({ ...out, dir });
  }
  if (denied.length > 0) {
    const all = [...new Set(denied.map((d) => absolute(d.dir)))];
    // A grant covers everything below it: list only the outermost directories.
    const dirs = all.filter((d) =>
      !all.some((o) => o !== d && d.startsWith(o === "/" ? o : `${o}/`))
    );
    const what = denied.map((d) => `${d.flag} ${d.path}`).join(", ");
    const command = await commandWithWriteAccess(
      opts.script ?? scriptName(),
      opts.args ?? Deno.args,
      dirs,
    );
    // A `deno compile`d executable has its task's permissions built in.
    const compiled = !/^deno(\.exe)?$/.test(Deno.execPath().split(/[\\/]/).pop() ?? "");
    throw new UserError(
      compiled
        ? `no write access for ${what}: this executable may write only under data/ of the ` +
          `working directory; write there, or run from source: ${command}`
        : `no write access for ${what} (this run may write only where its task allows, ` +
          `e.g. data/); run instead: ${command}`,
    );
  }
  for (const out of wanted) {
    const dir = outputDir(out);
    const fail = (why: string) =>
      new UserError(`cannot write ${out.flag} ${out.path}: ${why}; choose another path`);
    try {
      // One mechanism for "a file where a directory should be": ensureDir names the file.
      await ensureDir(dir, out.flag);
    } catch (e) {
      throw e instanceof UserError ? e : fail(reason(e));
    }
    const probe = `${dir}/.write-check.${Deno.pid}.${crypto.randomUUID().slice(0, 8)}`;
    try {
      await Deno.writeFile(probe, new Uint8Array(0), { createNew: true });
    } catch (e) {
      throw fail(reason(e));
    }
    await Deno.remove(probe).catch(() => {});
  }
}
