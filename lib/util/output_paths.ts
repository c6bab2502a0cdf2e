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
 * @module
 */
import { ensureDir } from "./atomic_file.ts";
import { UserError } from "./errors.ts";

/** One output a run will write. */
export interface OutputPath {
  /** The flag that names it, e.g. `--json` (shown in messages). */
  flag: string;
  /** As the user gave it (null/undefined: not requested, skipped). */
  path: string | null | undefined;
  /** A file (written beside itself: temp name + rename) or a directory the run fills. */
  kind: "file" | "dir";
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
 * Checks that every requested output can be written, before any compute: asks for the write
 * permission of each output's directory (prompting on a terminal), creates missing
 * directories, and creates and removes a probe file in each. Throws one UserError line naming
 * the flag, the path and what to do (for a missing permission: the exact command that works).
 */
export async function checkOutputPaths(
  outputs: readonly OutputPath[],
  opts: { args?: readonly string[]; script?: string } = {},
): Promise<void> {
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
