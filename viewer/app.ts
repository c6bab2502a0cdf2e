/// <reference lib="dom" />
/**
 * The viewer's page: loads the exported TF.js graph model from `/model/` (WebGPU, else WebGL,
 * else WebAssembly; `?backend=NAME` picks one), reads dropped or picked PNG, JPEG and DICOM
 * files in the page (DICOM through lib/data/dicom.ts, the CLI's reader), prepares them as the
 * metadata says (resize or resize + center crop, mean/std), and shows each image with its 14
 * probabilities against the thresholds and a class activation map for a chosen finding.
 * Every name from a file is set as text, never as HTML.
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-webgl";
import "@tensorflow/tfjs-backend-webgpu";
import { setWasmPaths } from "@tensorflow/tfjs-backend-wasm";
import { type GraphModel, loadGraphModel } from "@tensorflow/tfjs-converter";
import { displayGrey, isDicom, nativeRgb, readDicom } from "../lib/data/dicom.ts";

/** What the page needs of the model's userDefinedMetadata (export_model.ts writes it). */
interface Metadata {
  labels: string[];
  thresholds: number[];
  mean: number[];
  std: number[];
  image_size: number;
  transform: string;
  cam_output: string;
  output: string;
  architecture: string;
}

interface Rgb {
  data: Uint8Array;
  width: number;
  height: number;
}

/** One image's result, also kept on `window.viewerResults` for scripts and tests. */
interface Result {
  name: string;
  probabilities: number[];
  findings: string[];
  error?: string;
}

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const status = (text: string) => ($("status").textContent = text);
const results: Result[] = [];
(globalThis as unknown as { viewerResults: Result[] }).viewerResults = results;

const BACKENDS = ["webgpu", "webgl", "wasm"];

async function startBackend(): Promise<string> {
  setWasmPaths("/vendor/");
  const wanted = new URLSearchParams(location.search).get("backend");
  for (const name of wanted ? [wanted] : BACKENDS) {
    status(`Starting the ${name} backend…`);
    try {
      if (await tf.setBackend(name)) {
        await tf.ready();
        return name;
      }
    } catch {
      // Not available in this browser: try the next.
    }
  }
  throw new Error(`no backend of ${wanted ?? BACKENDS.join(", ")} starts in this browser`);
}

function greyToRgb(grey: Uint8Array): Uint8Array {
  const out = new Uint8Array(grey.length * 3);
  for (let i = 0; i < grey.length; i++) out[3 * i] = out[3 * i + 1] = out[3 * i + 2] = grey[i];
  return out;
}

/** A PNG or JPEG (or a DICOM's JPEG frame) decoded by the browser, alpha dropped. */
async function decodeRaster(blob: Blob): Promise<Rgb> {
  const bitmap = await createImageBitmap(blob, {
    colorSpaceConversion: "none",
    premultiplyAlpha: "none",
    imageOrientation: "from-image",
  });
  const { width, height } = bitmap;
  const canvas = new OffscreenCanvas(width, height);
  const ctx = canvas.getContext("2d", { colorSpace: "srgb" })!;
  ctx.drawImage(bitmap, 0, 0);
  bitmap.close();
  const rgba = ctx.getImageData(0, 0, width, height).data;
  const data = new Uint8Array(width * height * 3);
  for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) {
    data[j] = rgba[i];
    data[j + 1] = rgba[i + 1];
    data[j + 2] = rgba[i + 2];
  }
  return { data, width, height };
}

/** Decodes a file as the CLI does (lib/data/images.ts): DICOM by content, else PNG/JPEG. */
async function decode(file: File): Promise<Rgb> {
  const bytes = new Uint8Array(await file.arrayBuffer());
  if (!isDicom(bytes)) return await decodeRaster(new Blob([bytes]));
  const dcm = readDicom(bytes, file.name);
  const { width, height } = dcm;
  if (!dcm.jpeg) {
    const data = dcm.samplesPerPixel === 3 ? nativeRgb(dcm) : greyToRgb(displayGrey(dcm));
    return { data, width, height };
  }
  const frame = await decodeRaster(new Blob([dcm.jpeg as BlobPart], { type: "image/jpeg" }));
  if (frame.width !== width || frame.height !== height) {
    throw new Error(
      `the DICOM JPEG frame is ${frame.width}×${frame.height}, not ${width}×${height}`,
    );
  }
  if (dcm.samplesPerPixel === 3) return frame;
  const grey = new Uint8Array(width * height);
  for (let i = 0; i < grey.length; i++) grey[i] = frame.data[3 * i];
  return { data: greyToRgb(displayGrey(dcm, grey)), width, height };
}

/** `resize R` or `resize R, center crop S` (the metadata's transform). */
function parseTransform(meta: Metadata): { resize: number; crop: number } {
  const m = /^resize (\d+)(?:, center crop (\d+))?$/.exec(meta.transform);
  if (!m) throw new Error(`unknown transform in the model's metadata: ${meta.transform}`);
  return { resize: Number(m[1]), crop: Number(m[2] ?? m[1]) };
}

/**
 * The network input, as validate_model.ts makes it: [0, 1] floats, bilinear resize with
 * half-pixel centres, the centre crop, then (x - mean) / std.
 */
function networkInput(img: Rgb, meta: Metadata): tf.Tensor4D {
  const { resize, crop } = parseTransform(meta);
  const floats = new Float32Array(img.data.length);
  for (let i = 0; i < floats.length; i++) floats[i] = img.data[i] / 255;
  return tf.tidy(() => {
    const x = tf.tensor4d(floats, [1, img.height, img.width, 3]);
    let r = tf.image.resizeBilinear(x, [resize, resize], false, true);
    if (crop !== resize) {
      const o = Math.floor((resize - crop) / 2);
      r = tf.slice(r, [0, o, o, 0], [1, crop, crop, 3]);
    }
    return tf.div(tf.sub(r, tf.tensor1d(meta.mean)), tf.tensor1d(meta.std)) as tf.Tensor4D;
  });
}

/** Jet colormap (as lib/eval/cam.ts): t in [0, 1] → RGB in [0, 255]. */
function jet(t: number): [number, number, number] {
  const c = (x: number) => Math.round(255 * Math.max(0, Math.min(1, x)));
  return [c(1.5 - Math.abs(4 * t - 3)), c(1.5 - Math.abs(4 * t - 2)), c(1.5 - Math.abs(4 * t - 1))];
}

const VIEW = 320;

/** Draws the image (the region the network sees) with the CAM of `cls` over it. */
async function drawPicture(
  canvas: HTMLCanvasElement,
  input: tf.Tensor4D,
  cams: tf.Tensor4D | null,
  cls: number,
  meta: Metadata,
): Promise<void> {
  const [rgb, heat] = tf.tidy(() => {
    const shown = tf.add(tf.mul(input, tf.tensor1d(meta.std)), tf.tensor1d(meta.mean));
    const picture = tf.image.resizeBilinear(shown as tf.Tensor4D, [VIEW, VIEW], false, true);
    if (!cams) return [picture, null];
    const map = tf.slice(cams, [0, 0, 0, cls], [1, -1, -1, 1]);
    const up = tf.image.resizeBilinear(map as tf.Tensor4D, [VIEW, VIEW], false, true);
    const lo = tf.min(up), range = tf.sub(tf.max(up), lo);
    return [picture, tf.div(tf.sub(up, lo), tf.maximum(range, 1e-12))];
  });
  const px = await rgb.data();
  const h = heat ? await heat.data() : null;
  rgb.dispose();
  heat?.dispose();
  const ctx = canvas.getContext("2d")!;
  const image = ctx.createImageData(VIEW, VIEW);
  for (let p = 0; p < VIEW * VIEW; p++) {
    const base = [0, 1, 2].map((c) => Math.max(0, Math.min(255, px[3 * p + c] * 255)));
    const over = h ? jet(h[p]) : null;
    for (let c = 0; c < 3; c++) {
      image.data[4 * p + c] = over ? 0.55 * base[c] + 0.45 * over[c] : base[c];
    }
    image.data[4 * p + 3] = 255;
  }
  ctx.putImageData(image, 0, 0);
}

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  text?: string,
  cls?: string,
): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

/** The probabilities table: one row per label, findings (above threshold) marked. */
function table(meta: Metadata, probs: number[]): HTMLTableElement {
  const t = el("table");
  const head = t.createTHead().insertRow();
  for (const h of ["finding", "probability", "threshold", ""]) head.appendChild(el("th", h));
  const body = t.createTBody();
  meta.labels.forEach((label, c) => {
    const finding = probs[c] > meta.thresholds[c];
    const row = body.insertRow();
    if (finding) row.className = "finding";
    row.dataset.label = label;
    row.dataset.probability = String(probs[c]);
    row.appendChild(el("td", (finding ? "● " : "") + label));
    row.appendChild(el("td", probs[c].toFixed(4), "num"));
    row.appendChild(el("td", meta.thresholds[c].toFixed(4), "num"));
    const cell = el("td");
    const bar = el("div", undefined, "bar");
    const fill = el("span");
    fill.style.width = `${(100 * probs[c]).toFixed(1)}%`;
    const mark = el("i");
    mark.style.left = `${(100 * meta.thresholds[c]).toFixed(1)}%`;
    mark.title = "threshold";
    bar.append(fill, mark);
    cell.appendChild(bar);
    row.appendChild(cell);
  });
  return t;
}

async function showImage(file: File, model: GraphModel, meta: Metadata): Promise<void> {
  const card = el("article", undefined, "image");
  card.appendChild(el("h2", file.name));
  $("results").appendChild(card);
  const result: Result = { name: file.name, probabilities: [], findings: [] };
  let input: tf.Tensor4D | null = null;
  let cams: tf.Tensor4D | null = null;
  try {
    const img = await decode(file);
    input = networkInput(img, meta);
    const [probT, camT] = model.execute(input, [meta.output, meta.cam_output]) as tf.Tensor[];
    const probs = Array.from(await probT.data());
    probT.dispose();
    cams = camT as tf.Tensor4D;
    result.probabilities = probs;
    result.findings = meta.labels.filter((_, c) => probs[c] > meta.thresholds[c]);
    const picture = el("div", undefined, "picture");
    const canvas = el("canvas");
    canvas.width = canvas.height = VIEW;
    const choose = el("label", "Class activation map: ");
    const select = el("select");
    select.appendChild(new Option("none", "-1"));
    meta.labels.forEach((l, c) =>
      select.appendChild(new Option(`${l} (${probs[c].toFixed(3)})`, String(c)))
    );
    // The CAM first shown: the most probable finding, else the most probable label.
    const found = probs.map((p, c) => (p > meta.thresholds[c] ? p : -1));
    const top = Math.max(...found) >= 0
      ? found.indexOf(Math.max(...found))
      : probs.indexOf(Math.max(...probs));
    select.value = String(top);
    choose.appendChild(select);
    picture.append(canvas, choose);
    const keep = { input, cams };
    select.addEventListener("change", () => {
      const c = Number(select.value);
      drawPicture(canvas, keep.input, c < 0 ? null : keep.cams, Math.max(c, 0), meta);
    });
    await drawPicture(canvas, input, cams, top, meta);
    input = cams = null; // kept by the page for the CAM choice
    card.append(
      picture,
      table(meta, probs),
      el(
        "p",
        result.findings.length
          ? `Above threshold: ${result.findings.join(", ")}`
          : "No finding above its threshold.",
        "findings",
      ),
    );
  } catch (e) {
    result.error = e instanceof Error ? e.message : String(e);
    card.appendChild(el("p", `Cannot read this file: ${result.error}`, "error"));
    input?.dispose();
    cams?.dispose();
  }
  results.push(result);
}

/**
 * fetch, with the body read before the response is handed on. tfjs awaits the headers of every
 * shard before it reads any body; over HTTP/1.1 the browser opens 6 connections to a host, so
 * a model of 7 or more shards would wait forever for a connection held by an unread body.
 */
async function bufferedFetch(input: RequestInfo | URL, init?: RequestInit): Promise<Response> {
  const r = await fetch(input, init);
  const body = await r.arrayBuffer();
  return new Response(body, { status: r.status, statusText: r.statusText, headers: r.headers });
}

async function main(): Promise<void> {
  const backend = await startBackend();
  status(`Loading the model on ${backend}…`);
  const model = await loadGraphModel("/model/model.json", { fetchFunc: bufferedFetch });
  const meta = model.metadata as unknown as Metadata;
  if (!meta?.labels || !meta.thresholds || !meta.transform) {
    throw new Error("the model has no export metadata: export it with export_model.ts");
  }
  status(
    `${meta.architecture}, input ${meta.transform} · running on ${backend} in this page · ` +
      `${meta.labels.length} findings`,
  );
  document.body.dataset.backend = backend;
  document.body.dataset.state = "ready";
  let queue = Promise.resolve();
  const take = (files: Iterable<File>) => {
    for (const f of files) {
      document.body.dataset.state = "busy";
      queue = queue.then(() => showImage(f, model, meta));
    }
    queue = queue.then(() => {
      document.body.dataset.state = "ready";
    });
  };
  const input = $<HTMLInputElement>("files");
  input.addEventListener("change", () => {
    take([...(input.files ?? [])]);
    input.value = "";
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    take([...(e.dataTransfer?.files ?? [])]);
  });
}

main().catch((e) => {
  status(`Error: ${e instanceof Error ? e.message : e}`);
  document.body.dataset.state = "error";
});
