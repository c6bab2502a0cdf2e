/**
 * ImageNet-pretrained DenseNet weights: torchvision's published files (`densenet121-a639ec97.pth`,
 * and the other depths' named in densenet.ts `ARCHITECTURES`),
 * found in this tool's cache (or PyTorch's hub cache), else downloaded once with a progress bar,
 * checked against the sha256 prefix in its name and written atomically.
 * @module
 */
import { writeFileAtomic } from "../util/atomic_file.ts";
import { UserError } from "../util/errors.ts";
import { Progress } from "../util/progress.ts";

/** DenseNet-121's file, the default. */
export const IMAGENET_FILE = "densenet121-a639ec97.pth";
const MODELS_URL = "https://download.pytorch.org/models/";
export const IMAGENET_URL = `${MODELS_URL}${IMAGENET_FILE}`;

/** Directory where this tool caches downloaded weights. */
export function weightsCacheDir(env: (name: string) => string | undefined = Deno.env.get): string {
  const base = env("XDG_CACHE_HOME") || `${env("HOME") ?? "."}/.cache`;
  return `${base}/augmented-chest-xray`;
}

/** The sha256 prefix torchvision puts in a weights file name (`name-<hex>.pth`). */
export function hashPrefixOf(fileName: string): string | null {
  return /-([0-9a-f]{6,})\.pth?$/.exec(fileName)?.[1] ?? null;
}

async function sha256Hex(data: Uint8Array): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", data as Uint8Array<ArrayBuffer>);
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** Downloads `url` to `dest`, verifying the sha256 prefix; atomic. */
export async function downloadWeights(
  url: string,
  dest: string,
  expectedPrefix: string | null,
  opts: { silent?: boolean } = {},
): Promise<void> {
  const hint = `download it by hand from ${url} and put it at ${dest}, ` +
    `or pass --weights PATH / --weights none`;
  let response: Response;
  try {
    response = await fetch(url);
  } catch (e) {
    throw new UserError(`cannot download ImageNet weights (${(e as Error).message}): ${hint}`);
  }
  if (!response.ok || !response.body) {
    throw new UserError(`cannot download ImageNet weights (HTTP ${response.status}): ${hint}`);
  }
  const total = Number(response.headers.get("content-length") ?? 0);
  const bar = new Progress("Downloading weights", Math.round(total / 1e6), {
    unit: "MB",
    silent: opts.silent,
  });
  const chunks: Uint8Array[] = [];
  let received = 0, reported = 0;
  for await (const chunk of response.body) {
    chunks.push(chunk);
    received += chunk.length;
    const mb = Math.floor(received / 1e6);
    if (mb > reported) {
      bar.tick(mb - reported);
      reported = mb;
    }
  }
  bar.finish();
  const data = new Uint8Array(received);
  let offset = 0;
  for (const c of chunks) {
    data.set(c, offset);
    offset += c.length;
  }
  const hash = await sha256Hex(data);
  if (expectedPrefix && !hash.startsWith(expectedPrefix)) {
    throw new UserError(
      `downloaded weights from ${url} are corrupt (sha256 ${hash.slice(0, 12)}…, ` +
        `expected ${expectedPrefix}…): try again, or ${hint}`,
    );
  }
  try {
    await Deno.mkdir(dest.slice(0, dest.lastIndexOf("/")) || ".", { recursive: true });
    await writeFileAtomic(dest, data);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotCapable || e instanceof Deno.errors.PermissionDenied)) {
      throw e;
    }
    throw new UserError(
      `cannot save the downloaded weights to ${dest} (${(e as Error).message.split("\n")[0]}): ` +
        `save ${url} there yourself, or pass --weights PATH`,
    );
  }
}

/**
 * Path of the ImageNet weights file `opts.file` (default DenseNet-121's): this tool's cache, else
 * PyTorch's hub cache (`~/.cache/torch/hub/checkpoints`, where the original tool left it), else
 * downloaded.
 */
export async function imagenetWeightsPath(
  opts: { file?: string; url?: string; silent?: boolean } = {},
): Promise<string> {
  const file = opts.file ?? IMAGENET_FILE;
  const cacheDir = weightsCacheDir();
  const home = Deno.env.get("HOME") ?? ".";
  const torchHome = Deno.env.get("TORCH_HOME") ?? `${home}/.cache/torch`;
  const candidates = [
    `${cacheDir}/${file}`,
    `${torchHome}/hub/checkpoints/${file}`,
  ];
  for (const path of candidates) {
    try {
      if ((await Deno.stat(path)).isFile) return path;
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
  }
  await downloadWeights(opts.url ?? MODELS_URL + file, candidates[0], hashPrefixOf(file), opts);
  return candidates[0];
}
