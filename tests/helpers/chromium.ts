/**
 * Headless Chromium for layout checks: the DevTools protocol over `--remote-debugging-pipe`
 * (fds 3 and 4, mapped onto the child's stdin/stdout by /bin/sh), so no network permission is
 * needed; pages opened at a chosen viewport, evaluated, screenshotted.
 * @module
 */

export const CHROMIUM = "/usr/bin/chromium";
export const hasChromium = (() => {
  try {
    return Deno.statSync(CHROMIUM).isFile;
  } catch {
    return false;
  }
})();
if (!hasChromium) {
  console.log(
    `skipping the headless-Chromium checks: ${CHROMIUM} is absent (apt-get install -y chromium)`,
  );
}

// deno-lint-ignore no-explicit-any
export type Json = any;

/** A DevTools-protocol client over Chromium's pipe transport (NUL-terminated JSON). */
export class CdpPipe {
  #id = 0;
  #pending = new Map<number, { resolve: (v: Json) => void; reject: (e: Error) => void }>();
  #waiters: Array<{ method: string; resolve: (p: Json) => void }> = [];
  readonly events: Array<{ method: string; params: Json; sessionId?: string }> = [];
  #writer: WritableStreamDefaultWriter<Uint8Array>;
  #done: Promise<void>;

  constructor(child: Deno.ChildProcess) {
    this.#writer = child.stdin.getWriter();
    this.#done = this.#read(child.stdout);
  }

  async #read(stream: ReadableStream<Uint8Array>): Promise<void> {
    const dec = new TextDecoder();
    let buf = "";
    for await (const chunk of stream) {
      buf += dec.decode(chunk, { stream: true });
      let z;
      while ((z = buf.indexOf("\0")) >= 0) {
        const msg = JSON.parse(buf.slice(0, z));
        buf = buf.slice(z + 1);
        if (msg.id !== undefined) {
          const p = this.#pending.get(msg.id);
          this.#pending.delete(msg.id);
          if (msg.error) p?.reject(new Error(`${msg.error.message} (${msg.error.code})`));
          else p?.resolve(msg.result);
        } else {
          this.events.push(msg);
          this.#waiters = this.#waiters.filter((w) => {
            if (w.method !== msg.method) return true;
            w.resolve(msg.params);
            return false;
          });
        }
      }
    }
  }

  send(method: string, params: Json = {}, sessionId?: string): Promise<Json> {
    const id = ++this.#id;
    const p = new Promise<Json>((resolve, reject) => this.#pending.set(id, { resolve, reject }));
    const msg = JSON.stringify({ id, method, params, ...(sessionId ? { sessionId } : {}) });
    this.#writer.write(new TextEncoder().encode(msg + "\0"));
    return withTimeout(p, 20_000, method);
  }

  waitFor(method: string): Promise<Json> {
    return withTimeout(
      new Promise((resolve) => this.#waiters.push({ method, resolve })),
      20_000,
      method,
    );
  }

  async close(): Promise<void> {
    await this.#writer.close().catch(() => {});
    await this.#done.catch(() => {});
  }
}

export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

/** Opens `url` in a fresh tab, waits for its load event; returns the session and load time. */
export async function openPage(
  cdp: CdpPipe,
  url: string,
  viewport: { width: number; height: number } = { width: 1400, height: 2400 },
): Promise<{ session: string; loadMs: number }> {
  const { targetId } = await cdp.send("Target.createTarget", { url: "about:blank" });
  const { sessionId } = await cdp.send("Target.attachToTarget", { targetId, flatten: true });
  for (const d of ["Runtime", "Log", "Page", "Network"]) {
    await cdp.send(`${d}.enable`, {}, sessionId);
  }
  await cdp.send("Emulation.setDeviceMetricsOverride", {
    ...viewport,
    deviceScaleFactor: 1,
    mobile: false,
  }, sessionId);
  const t0 = performance.now();
  const loaded = cdp.waitFor("Page.loadEventFired");
  await cdp.send("Page.navigate", { url }, sessionId);
  await loaded;
  return { session: sessionId, loadMs: performance.now() - t0 };
}

export async function evaluate(cdp: CdpPipe, session: string, expression: string): Promise<Json> {
  const r = await cdp.send("Runtime.evaluate", { expression, returnByValue: true }, session);
  if (r.exceptionDetails) throw new Error(`in page: ${r.exceptionDetails.text}`);
  return r.result.value;
}

/** Starts headless Chromium with the DevTools protocol on a pipe (no network port). */
export function launchChromium(profileDir: string): { child: Deno.ChildProcess; cdp: CdpPipe } {
  const flags = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--remote-debugging-pipe",
    `--user-data-dir=${profileDir}`,
    "about:blank",
  ];
  const child = new Deno.Command("/bin/sh", {
    args: ["-c", `exec "$0" "$@" 3<&0 4>&1 >/dev/null </dev/null`, CHROMIUM, ...flags],
    stdin: "piped",
    stdout: "piped",
    stderr: "null",
  }).spawn();
  return { child, cdp: new CdpPipe(child) };
}

/** A PNG screenshot of the session's page (the whole page with `full`). */
export async function screenshot(
  cdp: CdpPipe,
  session: string,
  path: string,
  full = false,
): Promise<void> {
  const { data } = await cdp.send("Page.captureScreenshot", {
    format: "png",
    ...(full ? { captureBeyondViewport: true } : {}),
  }, session);
  await Deno.writeFile(path, Uint8Array.from(atob(data), (ch) => ch.charCodeAt(0)));
}

/** Closes the browser and waits for it to exit (killing it after 10 s). */
export async function closeChromium(child: Deno.ChildProcess, cdp: CdpPipe): Promise<void> {
  await cdp.send("Browser.close").catch(() => {});
  await cdp.close();
  await withTimeout(child.status, 10_000, "chromium to exit").catch(() => {
    child.kill("SIGKILL");
    return child.status;
  });
}
