/**
 * DICOM decode times per transfer syntax for a 3000×3000 16-bit radiograph: NEMA WG04 RG1 (15-bit
 * CR chest, `../shared/fixtures/dicom_real/RG1_J2KI.dcm`) decoded by `gdcmconv --raw` and
 * resampled to 3000×3000 by pydicom/numpy, then encoded by the tools a PACS would use (dcmtk,
 * gdcm, OpenJPH). Each file is read (`readDicom`) and its first frame decoded to stored values
 * (`decodeStored`, or the native frame) `-r` times; the table gives the first run (which loads
 * the codec) and the median of the others, plus `decodeImage` (to 8-bit RGB, as `--images` does).
 *
 * Needs Debian's dcmtk, libgdcm-tools, openjph-tools and python3-pydicom (fixture tools only):
 *   deno run -A bench/dicom_decode.ts [-r 5] [--keep DIR]
 * @module
 */
import { parseFlags } from "../lib/util/cli.ts";
import { runMain, UserError } from "../lib/util/errors.ts";
import { decodeStored, readDicom, storedValues } from "../lib/data/dicom.ts";
import { decodeImage } from "../lib/data/images.ts";

const RG1 = new URL("../../shared/fixtures/dicom_real/RG1_J2KI.dcm", import.meta.url).pathname;
const SIZE = 3000;

async function run(cmd: string, ...args: string[]): Promise<void> {
  let out;
  try {
    out = await new Deno.Command(cmd, { args, stdout: "null", stderr: "piped" }).output();
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new UserError(`${cmd} not found: install dcmtk, libgdcm-tools and openjph-tools`);
    }
    throw e;
  }
  if (!out.success) {
    throw new UserError(`${cmd} ${args.join(" ")} failed: ${new TextDecoder().decode(out.stderr)}`);
  }
}

/** pydicom: the base file, and HTJ2K codestreams (from ojph_compress) encapsulated. */
const PYTHON = `
import sys, numpy as np, pydicom
from pydicom.encaps import encapsulate
for uid in ["1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.203"]:
    pydicom.uid.UID_dictionary[uid] = ("HTJ2K", "Transfer Syntax", "", "", "HTJ2K" + uid[-1])
cmd, src, out = sys.argv[1:4]
ds = pydicom.dcmread(src)
if cmd == "base":
    a = ds.pixel_array.astype(np.float64)
    ys = np.linspace(0, a.shape[0] - 1, ${SIZE}); xs = np.linspace(0, a.shape[1] - 1, ${SIZE})
    y0 = np.floor(ys).astype(int); x0 = np.floor(xs).astype(int)
    y1 = np.minimum(y0 + 1, a.shape[0] - 1); x1 = np.minimum(x0 + 1, a.shape[1] - 1)
    fy = (ys - y0)[:, None]; fx = (xs - x0)[None, :]
    b = (a[y0][:, x0] * (1 - fy) * (1 - fx) + a[y0][:, x1] * (1 - fy) * fx +
         a[y1][:, x0] * fy * (1 - fx) + a[y1][:, x1] * fy * fx)
    for k in ["DerivationCodeSequence", "SourceImageSequence", "ImageComments",
              "LossyImageCompression", "LossyImageCompressionRatio", "LossyImageCompressionMethod"]:
        if k in ds: delattr(ds, k)
    ds.Rows = ds.Columns = ${SIZE}
    ds.PixelData = np.round(b).astype(np.uint16).tobytes()
    ds.save_as(out, write_like_original=False)
    ds.pixel_array.astype("<u2").tofile(out + ".raw")
elif cmd == "12bit":
    ds.PixelData = (ds.pixel_array >> 3).astype(np.uint16).tobytes()
    ds.BitsStored, ds.HighBit = 12, 11
    ds.save_as(out, write_like_original=False)
else:
    ds.PixelData = encapsulate([open(sys.argv[4], "rb").read()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = cmd
    ds.save_as(out, write_like_original=False)
`;

interface Case {
  name: string;
  file: string;
  make: (base: string, out: string) => Promise<void>;
}

async function main(args: string[]): Promise<void> {
  const flags = parseFlags(
    args,
    {
      r: { kind: "int", default: 5, min: 1, help: "decodes per syntax" },
      keep: { kind: "string", default: "", help: "keep the files in this folder" },
    },
    "bench/dicom_decode.ts [options]",
    "DICOM decode times per transfer syntax for a 3000×3000 16-bit radiograph.",
  );
  const dir = flags.keep || await Deno.makeTempDir({ prefix: "cxr_dicom_bench_" });
  await Deno.mkdir(dir, { recursive: true });
  const py = `${dir}/make.py`;
  await Deno.writeTextFile(py, PYTHON);
  const base = `${dir}/native.dcm`;
  const rawRg1 = `${dir}/rg1_raw.dcm`;
  await run("gdcmconv", "--raw", RG1, rawRg1);
  await run("/usr/bin/python3", py, "base", rawRg1, base);
  const htj2k = (uid: string, reversible: boolean) => async (src: string, out: string) => {
    const j2c = `${out}.j2c`;
    await run(
      "ojph_compress",
      ...["-i", `${src}.raw`, "-o", j2c, "-dims", `{${SIZE},${SIZE}}`, "-num_comps", "1"],
      ...["-signed", "false", "-bit_depth", "15", "-downsamp", "{1,1}"],
      ...["-reversible", String(reversible), ...(reversible ? [] : ["-qstep", "0.005"])],
    );
    await run("/usr/bin/python3", py, uid, src, out, j2c);
  };
  const cases: Case[] = [
    { name: "Explicit VR Little Endian (uncompressed)", file: "native.dcm", make: async () => {} },
    {
      name: "JPEG 2000 Lossless (.4.90)",
      file: "j2k.dcm",
      make: (s, o) => run("gdcmconv", "--j2k", s, o),
    },
    {
      name: "JPEG 2000 lossy, rate 10 (.4.91)",
      file: "j2k_lossy.dcm",
      make: (s, o) => run("gdcmconv", "--j2k", "--lossy", "-r", "10", s, o),
    },
    {
      name: "HTJ2K Lossless (.4.201)",
      file: "htj2k.dcm",
      make: htj2k("1.2.840.10008.1.2.4.201", true),
    },
    {
      name: "HTJ2K lossy (.4.203)",
      file: "htj2k_lossy.dcm",
      make: htj2k("1.2.840.10008.1.2.4.203", false),
    },
    { name: "JPEG-LS Lossless (.4.80)", file: "jls.dcm", make: (s, o) => run("dcmcjpls", s, o) },
    {
      name: "JPEG-LS Near-Lossless, NEAR 2 (.4.81)",
      file: "jls_near.dcm",
      make: (s, o) => run("dcmcjpls", "+en", s, o),
    },
    {
      name: "JPEG Lossless Process 14, SV6 (.4.57)",
      file: "p14.dcm",
      make: (s, o) => run("dcmcjpeg", "+el", s, o),
    },
    {
      name: "JPEG Lossless SV1 (.4.70)",
      file: "sv1.dcm",
      make: (s, o) => run("dcmcjpeg", "+e1", s, o),
    },
    { name: "RLE Lossless (.5)", file: "rle.dcm", make: (s, o) => run("dcmcrle", s, o) },
    {
      name: "JPEG Extended 12-bit, quality 90 (.4.51; the base / 8)",
      file: "extended12.dcm",
      make: async (s, o) => {
        await run("/usr/bin/python3", py, "12bit", s, `${o}.native.dcm`);
        await run("dcmcjpeg", "+ee", `${o}.native.dcm`, o);
      },
    },
  ];
  const baseStored = storedValues(readDicom(await Deno.readFile(base)));
  console.log(
    `| syntax | file size | first decode (ms) | median decode (ms, ${flags.r} runs) | to 8-bit RGB (ms) | equal to uncompressed |`,
  );
  console.log("| --- | ---: | ---: | ---: | ---: | --- |");
  for (const c of cases) {
    const path = `${dir}/${c.file}`;
    await c.make(base, path);
    const bytes = await Deno.readFile(path);
    const times: number[] = [];
    let stored: Int32Array | null = null;
    for (let i = 0; i < flags.r; i++) {
      const t = performance.now();
      const img = readDicom(bytes, c.file);
      stored = img.encoded ? await decodeStored(img, c.file) : storedValues(img);
      times.push(performance.now() - t);
    }
    const t = performance.now();
    await decodeImage(bytes, c.file);
    const rgb = performance.now() - t;
    // The 12-bit case is compared with the base scaled as it was made.
    const scale = c.file.startsWith("extended12") ? 8 : 1;
    let maxDiff = 0;
    for (let i = 0; i < baseStored.length; i++) {
      maxDiff = Math.max(maxDiff, Math.abs(Math.floor(baseStored[i] / scale) - stored![i]));
    }
    const rest = times.slice(1).sort((a, b) => a - b);
    const median = rest.length ? rest[Math.floor(rest.length / 2)] : times[0];
    console.log(
      `| ${c.name} | ${(bytes.length / 1e6).toFixed(2)} MB | ${times[0].toFixed(0)} | ` +
        `${median.toFixed(0)} | ${rgb.toFixed(0)} | ${
          maxDiff === 0 ? "yes" : `max diff ${maxDiff}`
        } |`,
    );
  }
  if (!flags.keep) await Deno.remove(dir, { recursive: true });
}

if (import.meta.main) await runMain(main);
